//! Consult rooms: join, relay of offers/answers/candidates between members, chat, leave.

use crate::adapter::SocketIo;
use crate::adapter::SocketRef;
use serde_json::{Value, json};

use crate::activity::{Activity, Member};
use crate::call::MediaPath;
use crate::payload;
use crate::protocol::{self, EventError, EventResult, Peer};
use crate::rooms::RelayReason;
use crate::store::{AppointmentAccess, AppointmentStatus, ChatMessage, ChatSender};
use crate::{
    Budget, Identity, Outcome, Role, Signaling, consult_room, emit_to_room, identity, socket_by_id,
    waiting,
};

/// `join-room`. The relay work the join calls for (announcing a relay, subscribing the joiner)
/// is left to [`AfterJoin`], run once the ack is sent: it can send the joiner an
/// `sfu-subscribe-offer`, which must never overtake the ack.
pub(crate) async fn join_room(
    sig: &Signaling,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> Outcome {
    match enter_room(sig, io, s, data).await {
        Ok((fields, then)) => Outcome {
            result: Ok(fields),
            then,
        },
        Err(err) => Outcome::from(Err(err)),
    }
}

/// What a join leaves to do after its ack: relay the room or subscribe the newcomer.
pub(crate) struct AfterJoin {
    room_id: String,
    socket_id: String,
    relay_activated: Option<RelayReason>,
}

impl AfterJoin {
    pub(crate) async fn run(self, sig: &Signaling, io: &SocketIo) {
        sig.after_consult_join(io, &self.room_id, &self.socket_id, self.relay_activated)
            .await;
    }
}

async fn enter_room(
    sig: &Signaling,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> Result<(serde_json::Map<String, Value>, Option<AfterJoin>), EventError> {
    let who = identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::join_room(data)?;
    let avatar_seed = req.avatar_seed.unwrap_or_else(|| who.user_id.clone());

    let appointment = sig
        .store
        .appointment(&req.appointment_id)
        .await?
        .ok_or_else(|| EventError::not_found("no such appointment"))?;
    let allowed = who.role == Role::Admin
        || who.user_id == appointment.patient_id
        || who.user_id == appointment.doctor_id;
    if !allowed {
        return Err(EventError::forbidden(
            "not a participant of this appointment",
        ));
    }
    if appointment.status != AppointmentStatus::Confirmed {
        return Err(EventError::forbidden(format!(
            "appointment is {}, rooms open only for confirmed appointments",
            appointment.status.as_str()
        )));
    }

    sig.check_join_while_draining(
        &appointment.id,
        req.previous_socket_id.as_deref(),
        &who.user_id,
    )?;

    let self_id = s.id.to_string();
    if waiting::must_wait(
        sig,
        &who,
        &appointment,
        &self_id,
        req.previous_socket_id.as_deref(),
    ) {
        let fields = waiting::enter_lobby(
            sig,
            io,
            s,
            &who,
            &appointment,
            avatar_seed,
            req.previous_socket_id,
        )
        .await?;
        return Ok((fields, None));
    }
    // Waiting in a lobby (another appointment's, or this one's and admitted meanwhile): over.
    waiting::end_wait(sig, io, &self_id, waiting::WaitEnd::JoinedRoom).await;
    let mut replaces = None;
    if let Some(previous) = req.previous_socket_id
        && end_previous_membership(sig, io, &previous, &self_id, &who.user_id, &appointment.id)
            .await
    {
        replaces = Some(previous);
    }
    // One consult room per socket: joining another one leaves the current one first.
    if sig
        .rooms()
        .room_of(&self_id)
        .is_some_and(|r| r != appointment.id)
    {
        leave_current_room(sig, s, LeaveReason::JoinedAnother).await;
    }

    let entered = enter_as_member(sig, s, &who, &appointment, avatar_seed, replaces).await?;
    // A host sees who waits to be admitted.
    if waiting::is_host(&who, &appointment) {
        waiting::tell_joining_host(sig, s, &appointment.id);
    }
    Ok(entered)
}

/// Puts socket `s` of `who` in `appointment`'s room (a `join-room`, or an admission from the
/// waiting room): recorded, `peer-joined` to the others, `existing-peers` to it. Returns the
/// join ack's fields and what must follow the ack. The caller has checked that it may enter
/// and that it is in no other room.
pub(crate) async fn enter_as_member(
    sig: &Signaling,
    s: &SocketRef,
    who: &Identity,
    appointment: &AppointmentAccess,
    avatar_seed: String,
    replaces: Option<String>,
) -> Result<(serde_json::Map<String, Value>, Option<AfterJoin>), EventError> {
    let self_id = s.id.to_string();
    let me = Peer {
        socket_id: self_id,
        user_id: who.user_id.clone(),
        name: who.name.clone(),
        role: who.role,
        avatar_seed,
        replaces,
        media: None,
    };
    let room = consult_room(&appointment.id);
    let joined = {
        let mut rooms = sig.rooms();
        let joined = rooms.join(&appointment.id, me.clone());
        // Into the broadcast room under the registry's lock: a member joining right after us
        // lists us in its existing-peers, so its peer-joined must find us in the room.
        if joined.is_new {
            s.join(room.clone());
        }
        sig.refresh_room_gauges(&rooms);
        let relayed = rooms
            .get(&appointment.id)
            .is_some_and(|r| r.relay.is_some());
        (joined, relayed)
    };
    let (joined, relayed) = joined;
    if joined.is_new {
        let activity = Activity::ParticipantJoined {
            appointment_id: appointment.id.clone(),
            member: Member::from(&me),
            media: media_path(relayed),
            room_started: joined.existing.is_empty(),
        };
        if let Err(err) = sig.record(activity).await {
            // A join the audit trail does not hold did not happen: undone before anyone
            // but this socket heard of it.
            {
                let mut rooms = sig.rooms();
                rooms.leave(&me.socket_id);
                sig.refresh_room_gauges(&rooms);
            }
            s.leave(room);
            return Err(err.into());
        }
        tracing::info!(
            appointment_id = %appointment.id,
            socket_id = %me.socket_id,
            user_id = %me.user_id,
            role = me.role.as_str(),
            peers = joined.existing.len(),
            "joined consult room"
        );
        let _ = s.to(room.clone()).emit("peer-joined", &me).await;
    }
    let _ = s.emit("existing-peers", &joined.existing);
    let then = joined.is_new.then(|| AfterJoin {
        room_id: appointment.id.clone(),
        socket_id: me.socket_id.clone(),
        relay_activated: joined.relay_activated,
    });

    let mut fields = protocol::ok_fields();
    fields.insert("selfId".into(), json!(me.socket_id));
    fields.insert("peers".into(), json!(joined.existing));
    fields.insert("mode".into(), json!(sig.config.media_mode.as_str()));
    fields.insert("p2pTimeoutMs".into(), json!(sig.config.p2p_timeout_ms));
    fields.insert(
        "iceServers".into(),
        sig.config.ice_servers.for_user(&who.user_id),
    );
    Ok((fields, then))
}

pub(crate) async fn signal(
    sig: &Signaling,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    let who = identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::signal(data, &sig.config.payload_limits())?;
    let from = s.id.to_string();
    if req.to == from || !sig.rooms().share_room(&from, &req.to) {
        return Err(EventError::forbidden(
            "the target is not in your consult room",
        ));
    }
    let target = socket_by_id(io, &req.to)
        .ok_or_else(|| EventError::not_found("the target socket is gone"))?;
    target
        .emit(
            "signal",
            &json!({"from": from, "fromUserId": who.user_id, "type": req.kind, "payload": req.payload}),
        )
        .map_err(|_| EventError::not_found("the target socket is gone"))?;
    Ok(protocol::ok_fields())
}

pub(crate) async fn chat_message(
    sig: &Signaling,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    let who = identity(s)?;
    sig.spend(s, Budget::Chat)?;
    let req = payload::chat_message(data, &sig.config.payload_limits())?;
    let appointment_id = sig
        .rooms()
        .room_of(&s.id.to_string())
        .map(str::to_owned)
        .ok_or_else(|| EventError::forbidden("join a consult room before chatting"))?;

    let message = ChatMessage {
        id: uuid::Uuid::new_v4().to_string(),
        appointment_id: appointment_id.clone(),
        from: ChatSender {
            user_id: who.user_id,
            name: who.name,
            role: who.role,
        },
        text: req.text,
        sent_at: protocol::rfc3339_millis(protocol::now_millis()),
    };
    // Stored before anyone sees it: what was acknowledged or broadcast is in the transcript.
    sig.store.save_chat_message(&message).await?;
    sig.record_or_log(Activity::ChatMessage {
        appointment_id: appointment_id.clone(),
        message_id: message.id.clone(),
        user_id: message.from.user_id.clone(),
    })
    .await;
    sig.metrics.chat_messages.inc();
    emit_to_room(io, consult_room(&appointment_id), "chat-message", &message).await;
    let mut fields = protocol::ok_fields();
    fields.insert("message".into(), json!(message));
    Ok(fields)
}

/// `media-state`: the member's microphone, camera and screen share, relayed to the others as
/// `media-state {roomId, socketId, userId, audio, video, screen, screenTrackId?}` and
/// remembered (the `media`
/// of its Peer in later joiners' `existing-peers` and join acks).
pub(crate) async fn media_state(
    sig: &Signaling,
    _io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    let who = identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::media_state(data)?;
    let socket_id = s.id.to_string();
    let room_id = {
        let mut rooms = sig.rooms();
        let current = rooms.room_of(&socket_id).map(str::to_owned);
        match (&current, &req.room_id) {
            (None, _) => {
                return Err(EventError::forbidden(
                    "join a consult room before sending your media state",
                ));
            }
            (Some(current), Some(named)) if current != named => {
                return Err(EventError::forbidden("you are not in that consult room"));
            }
            _ => {}
        }
        rooms.set_media(&socket_id, req.state.clone());
        current.unwrap_or_default()
    };
    let mut body = json!(req.state);
    body["roomId"] = json!(room_id);
    body["socketId"] = json!(socket_id);
    body["userId"] = json!(who.user_id);
    let _ = s
        .to(consult_room(&room_id))
        .emit("media-state", &body)
        .await;
    Ok(protocol::ok_fields())
}

pub(crate) async fn leave_room(
    sig: &Signaling,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    sig.spend(s, Budget::Signal)?;
    payload::leave_room(data)?;
    leave_current_room(sig, s, LeaveReason::Left).await;
    // Waiting to be admitted: the patient gave up.
    waiting::end_wait(sig, io, &s.id.to_string(), waiting::WaitEnd::Left).await;
    Ok(protocol::ok_fields())
}

/// Why a socket left its consult room (logged).
#[derive(Debug, Clone, Copy)]
pub(crate) enum LeaveReason<'a> {
    Left,
    Disconnected,
    JoinedAnother,
    /// The same user came back on a new connection, socket `by` (`join-room`
    /// `previousSocketId`).
    Replaced {
        by: &'a str,
    },
    /// An administrator removed it (`room_closed`: by closing the whole room).
    Removed {
        room_closed: bool,
    },
}

impl LeaveReason<'_> {
    /// The `reason` of `peer-left`: `left` (it chose to), `disconnected` (its connection
    /// ended: it may come back, see `Peer.replaces`), `replaced` (it is back, `replacedBy`),
    /// `removed` (by an administrator).
    fn announced(self) -> &'static str {
        match self {
            LeaveReason::Left | LeaveReason::JoinedAnother => "left",
            LeaveReason::Disconnected => "disconnected",
            LeaveReason::Replaced { .. } => "replaced",
            LeaveReason::Removed { .. } => "removed",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "leave-room",
            LeaveReason::Disconnected => "disconnect",
            LeaveReason::JoinedAnother => "joined-another-room",
            LeaveReason::Replaced { .. } => "replaced-by-reconnection",
            LeaveReason::Removed { room_closed: false } => "removed-by-admin",
            LeaveReason::Removed { room_closed: true } => "room-closed-by-admin",
        }
    }
}

/// A client back on a new signaling connection names the socket it had in the room: if that
/// socket is the same user's and still in this room (its dead connection not yet timed out),
/// its membership ends now, as if it had left, and it is disconnected. The others see it go
/// (`peer-left`) and the newcomer join, instead of a frozen ghost for up to the ping timeout.
/// Anything else named (another user's socket, another room, unknown) is ignored. Returns
/// whether a membership ended.
async fn end_previous_membership(
    sig: &Signaling,
    io: &SocketIo,
    previous: &str,
    self_id: &str,
    user_id: &str,
    room_id: &str,
) -> bool {
    if previous == self_id {
        return false;
    }
    // Its connection already ended (the server noticed first): nothing to end, but the
    // others are still told whom the newcomer replaces.
    if sig
        .rooms()
        .departed_from(previous, room_id, user_id, std::time::Instant::now())
    {
        return true;
    }
    let same_user_here = sig.rooms().get(room_id).is_some_and(|room| {
        room.members
            .iter()
            .any(|m| m.socket_id == previous && m.user_id == user_id)
    });
    if !same_user_here {
        return false;
    }
    let Some(old) = socket_by_id(io, previous) else {
        return false;
    };
    leave_current_room(sig, &old, LeaveReason::Replaced { by: self_id }).await;
    let _ = old.disconnect();
    true
}

/// Takes the socket out of its consult room, if any, and tells the others.
pub(crate) async fn leave_current_room(sig: &Signaling, s: &SocketRef, reason: LeaveReason<'_>) {
    let left = {
        let mut rooms = sig.rooms();
        let left = rooms.leave(&s.id.to_string());
        if let (Some(left), LeaveReason::Disconnected) = (&left, reason) {
            rooms.note_departed(left, std::time::Instant::now());
        }
        sig.refresh_room_gauges(&rooms);
        left
    };
    if let Some(left) = left {
        tracing::info!(
            appointment_id = %left.room_id,
            socket_id = %left.peer.socket_id,
            user_id = %left.peer.user_id,
            reason = reason.as_str(),
            "left consult room"
        );
        sig.record_or_log(Activity::ParticipantLeft {
            appointment_id: left.room_id.clone(),
            member: Member::from(&left.peer),
            reason: reason.announced(),
            media: media_path(left.relayed),
            room_finished: left.room_now_empty,
        })
        .await;
        sig.leave_relay(&left.room_id, &left.peer.socket_id).await;
        let room = consult_room(&left.room_id);
        s.leave(room.clone());
        let mut gone = json!({
            "socketId": left.peer.socket_id,
            "userId": left.peer.user_id,
            "reason": reason.announced(),
        });
        if let LeaveReason::Replaced { by } = reason {
            // The others may keep what they had with it (a working peer-to-peer connection)
            // under its new id.
            gone["replacedBy"] = json!(by);
        }
        let _ = s.to(room).emit("peer-left", &gone).await;
    }
}

/// A consult member's media path: `sfu` once the room is relayed.
fn media_path(relayed: bool) -> MediaPath {
    if relayed {
        MediaPath::Sfu
    } else {
        MediaPath::P2p
    }
}
