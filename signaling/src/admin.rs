//! What operators see of live rooms and calls, and what they may do to them (the admin API):
//! remove a participant, close a room, end a call. Each action ends things the way the
//! protocol's own events do, so clients, records, the audit trail and webhooks follow.

use crate::adapter::SocketIo;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::call::MediaPath;
use crate::consult::{LeaveReason, remove_from_room};
use crate::protocol::{ErrorCode, Peer, rfc3339_millis};
use crate::{Signaling, direct, emit_to_socket};

/// A consult room with members.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomView {
    pub appointment_id: String,
    pub participants: Vec<Peer>,
    /// `sfu` once relayed.
    pub media: MediaPath,
    /// Why it is relayed (`p2p-failed`, `room-size`, ...), if it is.
    pub relay_reason: Option<&'static str>,
    /// When relayed: per published track, `participant` (socket id), `trackId`, `kind`,
    /// `bitrateBps`, `packetsReceived`, `packetsLost`.
    pub tracks: Value,
}

/// A direct call that is ringing or active.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallView {
    pub call_id: String,
    pub caller_id: String,
    pub callee_id: String,
    pub call_type: &'static str,
    pub status: &'static str,
    pub appointment_id: Option<String>,
    pub started_at: String,
    pub answered_at: Option<String>,
    pub media: MediaPath,
    /// As [`RoomView::tracks`].
    pub tracks: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("no active consult room for this appointment")]
    NoSuchRoom,
    #[error("this user is not in the room")]
    NotInRoom,
    #[error("no ringing or active call with this id")]
    NoSuchCall,
    /// The call's end could not be stored (nothing changed).
    #[error("{0}")]
    Failed(String),
}

impl From<crate::SharedError> for AdminError {
    fn from(err: crate::SharedError) -> Self {
        AdminError::Failed(err.to_string())
    }
}

impl Signaling {
    /// The per-track figures of a relayed room, or `[]`.
    async fn tracks_of(&self, room_id: &str, relayed: bool) -> Value {
        match &self.relay {
            Some(relay) if relayed => relay.room_stats(room_id).await.unwrap_or_else(|err| {
                tracing::warn!(room_id, error = %err, "room stats unavailable");
                Value::Array(Vec::new())
            }),
            _ => Value::Array(Vec::new()),
        }
    }

    /// Every consult room with members, oldest appointment id first.
    pub async fn active_rooms(&self) -> Result<Vec<RoomView>, AdminError> {
        let mut rooms = Vec::new();
        for id in self.appointments().await? {
            let view = self
                .view(&id, |registry| {
                    registry.get(&id).map(|room| RoomView {
                        appointment_id: id.clone(),
                        participants: room.members.clone(),
                        media: if room.relay.is_some() {
                            MediaPath::Sfu
                        } else {
                            MediaPath::P2p
                        },
                        relay_reason: room.relay.map(|r| r.as_str()),
                        tracks: Value::Null,
                    })
                })
                .await?;
            rooms.extend(view);
        }
        rooms.sort_by(|a, b| a.appointment_id.cmp(&b.appointment_id));
        for room in &mut rooms {
            room.tracks = self
                .tracks_of(&room.appointment_id, room.media == MediaPath::Sfu)
                .await;
        }
        Ok(rooms)
    }

    /// Every ringing or active direct call, oldest first.
    pub async fn live_calls(&self) -> Result<Vec<CallView>, AdminError> {
        let mut calls: Vec<CallView> = self
            .read_calls(|read| {
                read.book
                    .iter()
                    .filter(|c| c.is_live())
                    .map(|c| CallView {
                        call_id: c.id.clone(),
                        caller_id: c.caller_id.clone(),
                        callee_id: c.callee_id.clone(),
                        call_type: c.call_type.as_str(),
                        status: c.status.as_str(),
                        appointment_id: c.appointment_id.clone(),
                        started_at: rfc3339_millis(c.started_at),
                        answered_at: c.answered_at.map(rfc3339_millis),
                        media: c.media,
                        tracks: Value::Null,
                    })
                    .collect()
            })
            .await?;
        calls.sort_by(|a, b| (&a.started_at, &a.call_id).cmp(&(&b.started_at, &b.call_id)));
        for call in &mut calls {
            call.tracks = self
                .tracks_of(&call.call_id, call.media == MediaPath::Sfu)
                .await;
        }
        Ok(calls)
    }

    /// Takes every socket of `user_id` out of the room. Each gets `removed-from-room
    /// {roomId, reason:"removed"}`; the others see `peer-left {reason:"removed"}`. Returns how
    /// many sockets were removed. The user may join again (removal is not a ban), but with the
    /// waiting room on a patient waits to be let in again.
    pub async fn remove_participant(
        &self,
        io: &SocketIo,
        appointment_id: &str,
        user_id: &str,
    ) -> Result<usize, AdminError> {
        let sockets = self
            .member_sockets(appointment_id, |m| m.user_id == user_id)
            .await?;
        if sockets.is_empty() {
            return Err(AdminError::NotInRoom);
        }
        let removed = self
            .remove_sockets(io, appointment_id, &sockets, false)
            .await;
        self.change(appointment_id, |rooms| {
            rooms.lobby.revoke(appointment_id, user_id)
        })
        .await?;
        Ok(removed)
    }

    /// Takes everyone out of the room: each gets `removed-from-room {roomId,
    /// reason:"room-closed"}`. Returns how many sockets were removed.
    pub async fn close_room(
        &self,
        io: &SocketIo,
        appointment_id: &str,
    ) -> Result<usize, AdminError> {
        let sockets = self.member_sockets(appointment_id, |_| true).await?;
        Ok(self
            .remove_sockets(io, appointment_id, &sockets, true)
            .await)
    }

    /// Ends a ringing or active call: both sides get `call-ended {reason:"ended-by-admin"}`, and
    /// the record says so.
    pub async fn end_call(&self, io: &SocketIo, call_id: &str) -> Result<(), AdminError> {
        direct::transition(self, io, call_id, Map::new(), |call, now| {
            call.end_by_admin(now)
        })
        .await
        .map_err(|err| match err.code {
            // Unknown, or over already.
            ErrorCode::NotFound | ErrorCode::Conflict => AdminError::NoSuchCall,
            _ => AdminError::Failed(err.message),
        })
    }

    async fn member_sockets(
        &self,
        appointment_id: &str,
        wanted: impl Fn(&Peer) -> bool,
    ) -> Result<Vec<String>, AdminError> {
        let sockets = self
            .view(appointment_id, |rooms| {
                rooms.get(appointment_id).map(|room| {
                    room.members
                        .iter()
                        .filter(|m| wanted(m))
                        .map(|m| m.socket_id.clone())
                        .collect()
                })
            })
            .await?;
        sockets.ok_or(AdminError::NoSuchRoom)
    }

    async fn remove_sockets(
        &self,
        io: &SocketIo,
        appointment_id: &str,
        sockets: &[String],
        room_closed: bool,
    ) -> usize {
        let reason = if room_closed {
            "room-closed"
        } else {
            "removed"
        };
        let mut removed = 0;
        for socket_id in sockets {
            let reason_left = LeaveReason::Removed { room_closed };
            if !remove_from_room(self, io, socket_id, appointment_id, reason_left).await {
                continue;
            }
            emit_to_socket(
                self,
                io,
                socket_id,
                "removed-from-room",
                &json!({"roomId": appointment_id, "reason": reason}),
            )
            .await;
            removed += 1;
        }
        removed
    }
}
