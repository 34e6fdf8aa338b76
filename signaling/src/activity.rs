//! What happened in consult rooms and direct calls, told to the [`Store`](crate::Store) after the
//! change it describes: the server keeps its audit trail and its webhooks' outbox from these.

use serde::Serialize;
use serde_json::{Value, json};

use crate::call::{Call, MediaPath};
use crate::protocol::{Peer, rfc3339_millis};
use crate::rooms::RelayReason;

/// A member of a consult room as the activity names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub user_id: String,
    pub name: String,
    pub role: crate::Role,
    pub socket_id: String,
}

impl From<&Peer> for Member {
    fn from(peer: &Peer) -> Self {
        Member {
            user_id: peer.user_id.clone(),
            name: peer.name.clone(),
            role: peer.role,
            socket_id: peer.socket_id.clone(),
        }
    }
}

/// Who admitted or declined a waiting patient: the appointment's doctor or an administrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    pub user_id: String,
    pub name: String,
    pub role: crate::Role,
}

/// One thing that happened. Each maps to one or two webhook events ([`Activity::webhook_events`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Activity {
    /// A member entered a consult room; `room_started` when the room was empty before.
    /// `media` is the room's path at that moment (`sfu` when it is already relayed).
    ParticipantJoined {
        appointment_id: String,
        member: Member,
        media: MediaPath,
        room_started: bool,
    },
    /// A member's membership ended. `reason` is `peer-left`'s (`left`, `disconnected`,
    /// `replaced`) or `removed` (by an admin) or `server-restart`; `media` is `sfu` when the room
    /// was relayed while it was in it; `room_finished` when it was the last.
    ParticipantLeft {
        appointment_id: String,
        member: Member,
        reason: &'static str,
        media: MediaPath,
        room_finished: bool,
    },
    /// A consult room's or a direct call's media now goes through the SFU.
    RelayActivated {
        room: RelayedRoom,
        reason: RelayReason,
    },
    CallStarted(Call),
    CallAnswered(Call),
    /// Any terminal state: ended, rejected, missed, busy.
    CallEnded(Call),
    /// A chat message was stored (its text stays out of webhooks: id only).
    ChatMessage {
        appointment_id: String,
        message_id: String,
        user_id: String,
    },
    /// A patient's socket began waiting to be admitted (`consult.waiting_room`); `replaces`:
    /// the same user's socket that waited before this connection (its wait carried over).
    WaitingEntered {
        appointment_id: String,
        member: Member,
        replaces: Option<String>,
    },
    /// A host let a waiting socket in (its `room.joined` follows).
    WaitingAdmitted {
        appointment_id: String,
        member: Member,
        by: Host,
    },
    /// A host turned a waiting socket away. The reason given is relayed to the patient only,
    /// never kept (like `reject-call`'s).
    WaitingDeclined {
        appointment_id: String,
        member: Member,
        by: Host,
    },
    /// A socket stopped waiting by itself: `reason` `left` (`leave-room`), `disconnected`,
    /// `replaced` (the same user back on a new connection) or `joined-room` (it entered a
    /// room instead).
    WaitingLeft {
        appointment_id: String,
        member: Member,
        reason: &'static str,
    },
}

/// The room whose media went through the SFU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayedRoom {
    Consult { appointment_id: String },
    Call { call_id: String },
}

/// Every webhook event name, as documented.
pub const WEBHOOK_EVENTS: [&str; 13] = [
    "room_started",
    "room_finished",
    "participant_joined",
    "participant_left",
    "relay_activated",
    "call_started",
    "call_answered",
    "call_ended",
    "chat_message",
    "participant_waiting",
    "participant_admitted",
    "participant_declined",
    "participant_left_waiting",
];

impl Activity {
    /// The appointment this activity concerns, if any.
    pub fn appointment_id(&self) -> Option<&str> {
        match self {
            Activity::ParticipantJoined { appointment_id, .. }
            | Activity::ParticipantLeft { appointment_id, .. }
            | Activity::ChatMessage { appointment_id, .. }
            | Activity::WaitingEntered { appointment_id, .. }
            | Activity::WaitingAdmitted { appointment_id, .. }
            | Activity::WaitingDeclined { appointment_id, .. }
            | Activity::WaitingLeft { appointment_id, .. }
            | Activity::RelayActivated {
                room: RelayedRoom::Consult { appointment_id },
                ..
            } => Some(appointment_id),
            Activity::RelayActivated {
                room: RelayedRoom::Call { .. },
                ..
            } => None,
            Activity::CallStarted(call)
            | Activity::CallAnswered(call)
            | Activity::CallEnded(call) => call.appointment_id.as_deref(),
        }
    }

    /// The webhook events (name, data) this activity makes, in the order they happened.
    pub fn webhook_events(&self) -> Vec<(&'static str, Value)> {
        match self {
            Activity::ParticipantJoined {
                appointment_id,
                member,
                media,
                room_started,
            } => {
                let mut events = Vec::with_capacity(2);
                if *room_started {
                    events.push(("room_started", json!({"appointmentId": appointment_id})));
                }
                events.push((
                    "participant_joined",
                    json!({"appointmentId": appointment_id, "participant": member, "media": media}),
                ));
                events
            }
            Activity::ParticipantLeft {
                appointment_id,
                member,
                reason,
                media,
                room_finished,
            } => {
                let mut events = vec![(
                    "participant_left",
                    json!({"appointmentId": appointment_id, "participant": member,
                           "reason": reason, "media": media}),
                )];
                if *room_finished {
                    events.push(("room_finished", json!({"appointmentId": appointment_id})));
                }
                events
            }
            Activity::RelayActivated { room, reason } => {
                let mut data = json!({"reason": reason.as_str()});
                match room {
                    RelayedRoom::Consult { appointment_id } => {
                        data["appointmentId"] = json!(appointment_id)
                    }
                    RelayedRoom::Call { call_id } => data["callId"] = json!(call_id),
                }
                vec![("relay_activated", data)]
            }
            Activity::CallStarted(call) => vec![("call_started", call_data(call))],
            Activity::CallAnswered(call) => vec![("call_answered", call_data(call))],
            Activity::CallEnded(call) => vec![("call_ended", call_data(call))],
            Activity::ChatMessage {
                appointment_id,
                message_id,
                user_id,
            } => vec![(
                "chat_message",
                json!({"appointmentId": appointment_id, "messageId": message_id, "userId": user_id}),
            )],
            Activity::WaitingEntered {
                appointment_id,
                member,
                ..
            } => vec![(
                "participant_waiting",
                json!({"appointmentId": appointment_id, "participant": member}),
            )],
            Activity::WaitingAdmitted {
                appointment_id,
                member,
                by,
            } => vec![(
                "participant_admitted",
                json!({"appointmentId": appointment_id, "participant": member, "by": by}),
            )],
            Activity::WaitingDeclined {
                appointment_id,
                member,
                by,
            } => vec![(
                "participant_declined",
                json!({"appointmentId": appointment_id, "participant": member, "by": by}),
            )],
            Activity::WaitingLeft {
                appointment_id,
                member,
                reason,
            } => vec![(
                "participant_left_waiting",
                json!({"appointmentId": appointment_id, "participant": member, "reason": reason}),
            )],
        }
    }
}

/// A call as webhooks carry it: the stored record's fields (contract: Call), no sockets.
fn call_data(call: &Call) -> Value {
    json!({
        "callId": call.id,
        "callerId": call.caller_id,
        "calleeId": call.callee_id,
        "callType": call.call_type.as_str(),
        "appointmentId": call.appointment_id,
        "status": call.status.as_str(),
        "startedAt": rfc3339_millis(call.started_at),
        "answeredAt": call.answered_at.map(rfc3339_millis),
        "endedAt": call.ended_at.map(rfc3339_millis),
        "endReason": call.end_reason.map(|r| r.as_str()),
        "media": call.media.as_str(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    fn member() -> Member {
        Member {
            user_id: "pat-1".into(),
            name: "Pat Smith".into(),
            role: Role::Patient,
            socket_id: "s1".into(),
        }
    }

    fn host() -> Host {
        Host {
            user_id: "doc-1".into(),
            name: "Dr Who".into(),
            role: Role::Doctor,
        }
    }

    #[test]
    fn a_wait_and_its_end_name_the_patient_and_who_decided() {
        let admitted = Activity::WaitingAdmitted {
            appointment_id: "a1".into(),
            member: member(),
            by: host(),
        };
        assert_eq!(admitted.appointment_id(), Some("a1"));
        let (name, data) = &admitted.webhook_events()[0];
        assert_eq!(*name, "participant_admitted");
        assert_eq!(data["participant"]["userId"], "pat-1");
        assert_eq!(
            data["by"],
            json!({"userId": "doc-1", "name": "Dr Who", "role": "doctor"})
        );
        let left = Activity::WaitingLeft {
            appointment_id: "a1".into(),
            member: member(),
            reason: "disconnected",
        };
        let (name, data) = &left.webhook_events()[0];
        assert_eq!(*name, "participant_left_waiting");
        assert_eq!(data["reason"], "disconnected");
    }

    #[test]
    fn the_first_join_starts_the_room_and_the_last_leave_finishes_it() {
        let joined = Activity::ParticipantJoined {
            appointment_id: "a1".into(),
            member: member(),
            media: MediaPath::P2p,
            room_started: true,
        };
        let names: Vec<_> = joined.webhook_events().iter().map(|e| e.0).collect();
        assert_eq!(names, ["room_started", "participant_joined"]);
        let (_, data) = &joined.webhook_events()[1];
        assert_eq!(data["participant"]["userId"], "pat-1");
        assert_eq!(data["media"], "p2p");

        let left = Activity::ParticipantLeft {
            appointment_id: "a1".into(),
            member: member(),
            reason: "left",
            media: MediaPath::Sfu,
            room_finished: true,
        };
        let names: Vec<_> = left.webhook_events().iter().map(|e| e.0).collect();
        assert_eq!(names, ["participant_left", "room_finished"]);
        assert_eq!(left.appointment_id(), Some("a1"));
    }

    #[test]
    fn a_chat_message_event_carries_its_id_but_never_its_text() {
        let chat = Activity::ChatMessage {
            appointment_id: "a1".into(),
            message_id: "m1".into(),
            user_id: "pat-1".into(),
        };
        let (name, data) = &chat.webhook_events()[0];
        assert_eq!(*name, "chat_message");
        assert_eq!(data["messageId"], "m1");
        assert!(data.get("text").is_none());
    }

    #[test]
    fn every_event_made_is_a_documented_name() {
        let activities = [
            Activity::RelayActivated {
                room: RelayedRoom::Call {
                    call_id: "c1".into(),
                },
                reason: RelayReason::P2pFailed,
            },
            Activity::ChatMessage {
                appointment_id: "a".into(),
                message_id: "m".into(),
                user_id: "u".into(),
            },
            Activity::WaitingEntered {
                appointment_id: "a".into(),
                member: member(),
                replaces: None,
            },
            Activity::WaitingAdmitted {
                appointment_id: "a".into(),
                member: member(),
                by: host(),
            },
            Activity::WaitingDeclined {
                appointment_id: "a".into(),
                member: member(),
                by: host(),
            },
            Activity::WaitingLeft {
                appointment_id: "a".into(),
                member: member(),
                reason: "left",
            },
        ];
        for activity in activities {
            for (name, _) in activity.webhook_events() {
                assert!(WEBHOOK_EVENTS.contains(&name), "{name}");
            }
        }
    }
}
