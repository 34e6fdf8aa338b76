//! Consult rooms: join, relay of offers/answers/candidates between members, chat, leave.

use crate::adapter::SocketIo;
use crate::adapter::SocketRef;
use serde_json::{Value, json};

use crate::activity::{Activity, Member};
use crate::call::MediaPath;
use crate::payload;
use crate::protocol::{self, EventError, EventResult, Peer};
use crate::rooms::Left;
use crate::rooms::RelayReason;
use crate::store::{AppointmentAccess, AppointmentStatus, ChatMessage, ChatSender};
use crate::{
    Budget, Identity, Outcome, Role, Signaling, consult_room, emit_to_room, emit_to_socket,
    identity, in_rooms, socket_by_id, socket_room, waiting,
};

/// A socket entering a consult room: on this node, or (admitted from the waiting room by a host
/// on this node) on another node of the cluster.
pub(crate) enum Joiner<'a> {
    Here(&'a SocketRef),
    Elsewhere(String),
}

impl Joiner<'_> {
    pub(crate) fn id(&self) -> String {
        match self {
            Joiner::Here(s) => s.id.to_string(),
            Joiner::Elsewhere(id) => id.clone(),
        }
    }
}

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
    )
    .await?;

    let self_id = s.id.to_string();
    if waiting::must_wait(
        sig,
        &who,
        &appointment,
        &self_id,
        req.previous_socket_id.as_deref(),
    )
    .await?
    {
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
        .room_of_socket(&self_id)
        .await?
        .is_some_and(|r| r != appointment.id)
    {
        leave_current_room(sig, io, &self_id, LeaveReason::JoinedAnother).await;
    }

    let entered = enter_as_member(
        sig,
        io,
        &Joiner::Here(s),
        &who,
        &appointment,
        avatar_seed,
        replaces,
    )
    .await?;
    // A host sees who waits to be admitted.
    if waiting::is_host(&who, &appointment) {
        waiting::tell_joining_host(sig, s, &appointment.id).await;
    }
    Ok(entered)
}

/// Puts socket `s` of `who` in `appointment`'s room (a `join-room`, or an admission from the
/// waiting room): recorded, `peer-joined` to the others, `existing-peers` to it. Returns the
/// join ack's fields and what must follow the ack. The caller has checked that it may enter
/// and that it is in no other room.
pub(crate) async fn enter_as_member(
    sig: &Signaling,
    io: &SocketIo,
    joiner: &Joiner<'_>,
    who: &Identity,
    appointment: &AppointmentAccess,
    avatar_seed: String,
    replaces: Option<String>,
) -> Result<(serde_json::Map<String, Value>, Option<AfterJoin>), EventError> {
    let self_id = joiner.id();
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
    if let Joiner::Elsewhere(id) = joiner {
        // Into the broadcast room before the registry (its node does it; no lock spans that):
        // a peer-joined may come twice, none is missed.
        if let Some(joiner) = in_rooms(io, socket_room(id)) {
            let _ = joiner.join(room.clone()).await;
        }
    }
    let (joined, relayed) = sig
        .change(&appointment.id, |rooms| {
            let joined = rooms.join(&appointment.id, me.clone());
            // Into the broadcast room under the registry's lock: a member joining right after
            // us lists us in its existing-peers, so its peer-joined must find us in the room.
            if let (true, Joiner::Here(s)) = (joined.is_new, joiner) {
                s.join(room.clone());
            }
            let relayed = rooms
                .get(&appointment.id)
                .is_some_and(|r| r.relay.is_some());
            (joined, relayed)
        })
        .await?;
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
            let _ = sig
                .change(&appointment.id, |rooms| rooms.leave(&me.socket_id))
                .await;
            leave_broadcast_room(io, &me.socket_id, room).await;
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
        if let Some(others) = in_rooms(io, room.clone()) {
            let others = others.except(socket_room(&me.socket_id));
            let _ = others.emit("peer-joined", &me).await;
        }
    }
    emit_to_socket(sig, io, &me.socket_id, "existing-peers", &joined.existing).await;
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
    let not_in_room = || EventError::forbidden("the target is not in your consult room");
    let room_id = sig.room_of_socket(&from).await?.ok_or_else(not_in_room)?;
    if req.to == from
        || !sig
            .view(&room_id, |rooms| rooms.share_room(&from, &req.to))
            .await?
    {
        return Err(not_in_room());
    }
    let body =
        json!({"from": from, "fromUserId": who.user_id, "type": req.kind, "payload": req.payload});
    if !emit_to_socket(sig, io, &req.to, "signal", &body).await {
        return Err(EventError::not_found("the target socket is gone"));
    }
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
    let socket_id = s.id.to_string();
    let not_in_room = || EventError::forbidden("join a consult room before chatting");
    let appointment_id = sig
        .room_of_socket(&socket_id)
        .await?
        .ok_or_else(not_in_room)?;

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
    let current = sig.room_of_socket(&socket_id).await?;
    let room_id = match (current, &req.room_id) {
        (None, _) => {
            return Err(EventError::forbidden(
                "join a consult room before sending your media state",
            ));
        }
        (Some(current), Some(named)) if current != *named => {
            return Err(EventError::forbidden("you are not in that consult room"));
        }
        (Some(current), _) => current,
    };
    let member = sig
        .change(&room_id, |rooms| {
            rooms.set_media(&socket_id, req.state.clone()).is_some()
        })
        .await?;
    if !member {
        return Err(EventError::forbidden("you are not in that consult room"));
    }
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
    leave_current_room(sig, io, &s.id.to_string(), LeaveReason::Left).await;
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
/// its membership ends now, as if it had left, and it is disconnected (on whichever node it
/// is). The others see it go (`peer-left`) and the newcomer join, instead of a frozen ghost for
/// up to the ping timeout. Anything else named (another user's socket, another room, unknown)
/// is ignored. Returns whether a membership ended.
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
    let found = sig
        .view(room_id, |rooms| {
            // Its connection already ended (the server noticed first): nothing to end, but
            // the others are still told whom the newcomer replaces.
            let departed =
                rooms.departed_from(previous, room_id, user_id, std::time::Instant::now());
            let here = rooms.get(room_id).is_some_and(|room| {
                room.members
                    .iter()
                    .any(|m| m.socket_id == previous && m.user_id == user_id)
            });
            (departed, here)
        })
        .await;
    match found {
        Ok((true, _)) => true,
        Ok((false, true)) => {
            let local = socket_by_id(io, previous);
            if local.is_none() && sig.shared.is_none() {
                return false;
            }
            remove_from_room(
                sig,
                io,
                previous,
                room_id,
                LeaveReason::Replaced { by: self_id },
            )
            .await;
            match local {
                Some(old) => {
                    let _ = old.disconnect();
                }
                None => {
                    if let Some(old) = in_rooms(io, socket_room(previous)) {
                        let _ = old.disconnect().await;
                    }
                }
            }
            true
        }
        Ok((false, false)) => false,
        Err(err) => {
            tracing::warn!(error = %err, "could not look up the membership a client came back from");
            false
        }
    }
}

/// Takes this node's socket `socket_id` out of its consult room, if any, and tells the others.
pub(crate) async fn leave_current_room(
    sig: &Signaling,
    io: &SocketIo,
    socket_id: &str,
    reason: LeaveReason<'_>,
) {
    match sig.room_of_socket(socket_id).await {
        Ok(Some(room_id)) => {
            remove_from_room(sig, io, socket_id, &room_id, reason).await;
        }
        Ok(None) => {}
        Err(err) => tracing::error!(error = %err, "could not find a socket's consult room"),
    }
}

/// Takes socket `socket_id` (of any node) out of consult room `room_id`, if it is in it, and
/// tells the others. Returns whether it was in it.
pub(crate) async fn remove_from_room(
    sig: &Signaling,
    io: &SocketIo,
    socket_id: &str,
    room_id: &str,
    reason: LeaveReason<'_>,
) -> bool {
    let left = sig
        .change(room_id, |rooms| {
            let left = rooms.leave(socket_id);
            if let (Some(left), LeaveReason::Disconnected) = (&left, reason) {
                rooms.note_departed(left, std::time::Instant::now());
            }
            left
        })
        .await;
    let left = match left {
        Ok(Some(left)) => left,
        Ok(None) => return false,
        Err(err) => {
            tracing::error!(error = %err, appointment_id = room_id, "could not leave a consult room");
            return false;
        }
    };
    leave_broadcast_room(io, socket_id, consult_room(room_id)).await;
    announce_left(sig, io, &left, reason).await;
    true
}

/// Takes socket `socket_id` out of Socket.IO room `room`, on whichever node it is.
async fn leave_broadcast_room(io: &SocketIo, socket_id: &str, room: String) {
    match socket_by_id(io, socket_id) {
        Some(s) => s.leave(room),
        None => {
            if let Some(socket) = in_rooms(io, socket_room(socket_id)) {
                let _ = socket.leave(room).await;
            }
        }
    }
}

/// Records a membership that ended, ends its relay connections and tells the others
/// (`peer-left`).
pub(crate) async fn announce_left(
    sig: &Signaling,
    io: &SocketIo,
    left: &Left,
    reason: LeaveReason<'_>,
) {
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
    if let Some(others) = in_rooms(io, consult_room(&left.room_id)) {
        let others = others.except(socket_room(&left.peer.socket_id));
        let _ = others.emit("peer-left", &gone).await;
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
