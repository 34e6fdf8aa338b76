//! Relay through the SFU (contract section 3, "Relay through the SFU"): which sockets may use a
//! relayed room, when a room switches to relay, and the mapping of the `sfu-*` events onto the
//! media layer. Media itself is behind [`Relay`], so this crate never touches RTP or webrtc.

use std::sync::Arc;

use crate::adapter::SocketIo;
use crate::adapter::SocketRef;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::activity::{Activity, RelayedRoom};
use crate::payload;
use crate::protocol::{self, ErrorCode, EventError, EventResult};
use crate::rooms::RelayReason;
use crate::{Budget, MediaMode, Signaling, emit_to_socket, identity};

/// Which of a participant's two peer connections (`publish`: the client offers; `subscribe`:
/// the server offers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PcKind {
    Publish,
    Subscribe,
}

/// A refusal from the media layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RelayError {
    pub code: ErrorCode,
    pub message: String,
}

impl From<RelayError> for EventError {
    fn from(err: RelayError) -> Self {
        EventError::new(err.code, err.message)
    }
}

/// The SFU as signaling sees it. Participants are socket ids; rooms are appointment or call ids.
#[async_trait]
pub trait Relay: Send + Sync + 'static {
    /// Makes the participant a subscriber of the room (it receives everyone else's tracks).
    async fn join(&self, room: &str, participant: &str) -> Result<(), RelayError>;
    /// Applies the client's publish offer; returns the answer SDP.
    async fn publish(
        &self,
        room: &str,
        participant: &str,
        offer: String,
    ) -> Result<String, RelayError>;
    async fn subscribe_answer(
        &self,
        room: &str,
        participant: &str,
        answer: String,
    ) -> Result<(), RelayError>;
    /// `None` is the end of candidates.
    async fn add_candidate(
        &self,
        room: &str,
        participant: &str,
        pc: PcKind,
        candidate: Option<Value>,
    ) -> Result<(), RelayError>;
    /// Closes both peer connections; the others stop receiving this member's tracks.
    async fn leave(&self, room: &str, participant: &str) -> Result<(), RelayError>;
    /// Restarts ICE on the participant's subscribe connection (a new subscribe offer with new
    /// credentials): its network changed.
    async fn restart_ice(&self, room: &str, participant: &str) -> Result<(), RelayError>;
    /// The participant renders `publisher`'s video at `width × height` device pixels (`0 × 0`:
    /// not shown), so the SFU can forward it the simulcast layer that fills that size.
    async fn set_video_size(
        &self,
        room: &str,
        participant: &str,
        publisher: &str,
        width: u32,
        height: u32,
    ) -> Result<(), RelayError>;

    /// What the tracks published in `room` bring in, for operators: a JSON array (the SFU's
    /// per-track bitrate and loss). Empty by default.
    async fn room_stats(&self, _room: &str) -> Result<Value, RelayError> {
        Ok(Value::Array(Vec::new()))
    }
}

/// What the media layer tells signaling; delivered with [`Signaling::on_relay_event`].
#[derive(Debug, Clone, PartialEq)]
pub enum RelayEvent {
    SubscribeOffer {
        room: String,
        participant: String,
        sdp: String,
    },
    LocalCandidate {
        room: String,
        participant: String,
        pc: PcKind,
        candidate: Value,
    },
    /// The room's active speaker changed: every member of the consult room (or both parties
    /// of the relayed call) gets `active-speaker`.
    ActiveSpeaker { room: String, participant: String },
}

/// Where a relayed room comes from.
enum RoomKind {
    Consult,
    Call,
}

impl Signaling {
    fn relay_enabled(&self) -> bool {
        self.config.media_mode != MediaMode::P2pOnly
    }

    /// Whether this socket may use `room_id` as a relay room: it is in that consult room, or it
    /// is the placing or answering socket of that live call. Returns whether the room is
    /// already relayed.
    async fn relay_membership(
        &self,
        s: &SocketRef,
        room_id: &str,
    ) -> Result<(RoomKind, bool), EventError> {
        let socket_id = s.id.to_string();
        if self.room_of_socket(&socket_id).await?.as_deref() == Some(room_id) {
            let relayed = self
                .view(room_id, |rooms| {
                    rooms.get(room_id).is_some_and(|r| r.relay.is_some())
                })
                .await?;
            return Ok((RoomKind::Consult, relayed));
        }
        let relayed_call = self
            .read_calls(|read| {
                let call = read.book.by_id(room_id).filter(|c| c.is_live())?;
                let party = call.sockets().any(|s| s == socket_id);
                party.then_some(call.media == crate::call::MediaPath::Sfu)
            })
            .await?;
        match relayed_call {
            Some(relayed) => Ok((RoomKind::Call, relayed)),
            None => Err(EventError::forbidden("not a member of this room")),
        }
    }

    /// Switches a consult room to relay (once), tells every member and subscribes them all.
    /// Returns false when the room was relayed already (nothing done).
    pub(crate) async fn relay_consult_room(
        &self,
        io: &SocketIo,
        room_id: &str,
        reason: RelayReason,
    ) -> bool {
        let activated = self
            .change(room_id, |rooms| {
                rooms
                    .activate_relay(room_id, reason)
                    .then(|| rooms.member_ids(room_id))
            })
            .await;
        let members = match activated {
            Ok(Some(members)) => members,
            Ok(None) => return false,
            Err(err) => {
                tracing::error!(error = %err, room_id, "could not relay a consult room");
                return false;
            }
        };
        self.announce_relay(io, RoomKind::Consult, room_id, reason, &members)
            .await;
        true
    }

    async fn announce_relay(
        &self,
        io: &SocketIo,
        kind: RoomKind,
        room_id: &str,
        reason: RelayReason,
        members: &[String],
    ) {
        self.metrics
            .relay_activations
            .with_label_values(&[reason.as_str()])
            .inc();
        let room = match kind {
            RoomKind::Consult => RelayedRoom::Consult {
                appointment_id: room_id.to_owned(),
            },
            RoomKind::Call => RelayedRoom::Call {
                call_id: room_id.to_owned(),
            },
        };
        self.record_or_log(Activity::RelayActivated { room, reason })
            .await;
        tracing::info!(
            room_id,
            reason = reason.as_str(),
            members = members.len(),
            "relay activated"
        );
        for member in members {
            self.subscribe_member(room_id, member).await;
        }
        let body = json!({"roomId": room_id, "reason": reason.as_str()});
        for member in members {
            emit_to_socket(self, io, member, "relay-activated", &body).await;
        }
    }

    /// After a socket joined a consult room (and its ack was sent): relay the room if it just
    /// reached the relay size (every member is told, even if it was relayed already) or the
    /// server is `sfu-only`, or subscribe the newcomer to an already relayed room.
    pub(crate) async fn after_consult_join(
        &self,
        io: &SocketIo,
        room_id: &str,
        socket_id: &str,
        reached_relay_size: Option<RelayReason>,
    ) {
        if !self.relay_enabled() {
            return;
        }
        if let Some(reason) = reached_relay_size {
            let members = self
                .view(room_id, |rooms| rooms.member_ids(room_id))
                .await
                .unwrap_or_default();
            self.announce_relay(io, RoomKind::Consult, room_id, reason, &members)
                .await;
            return;
        }
        if self.config.media_mode == MediaMode::SfuOnly
            && self
                .relay_consult_room(io, room_id, RelayReason::Forced)
                .await
        {
            return; // the newcomer was among the members told
        }
        let relayed = self
            .view(room_id, |rooms| rooms.get(room_id).and_then(|r| r.relay))
            .await
            .unwrap_or_default();
        // A newcomer to a relayed room is subscribed and told, like the members were.
        if let Some(reason) = relayed {
            self.subscribe_member(room_id, socket_id).await;
            emit_to_socket(
                self,
                io,
                socket_id,
                "relay-activated",
                &json!({"roomId": room_id, "reason": reason.as_str()}),
            )
            .await;
        }
    }

    /// Makes a member of a relayed room a subscriber; failures are logged, not fatal: the
    /// member can still publish and will be subscribed on its next join.
    pub(crate) async fn subscribe_member(&self, room_id: &str, socket_id: &str) {
        if let Some(relay) = &self.relay
            && let Err(err) = relay.join(room_id, socket_id).await
        {
            tracing::warn!(room_id, error = %err, "could not subscribe a member to the relay");
        }
    }

    /// Drops a socket's peer connections in a room (leave, disconnect, call over).
    pub(crate) async fn leave_relay(&self, room_id: &str, socket_id: &str) {
        if let Some(relay) = &self.relay
            && let Err(err) = relay.leave(room_id, socket_id).await
        {
            tracing::debug!(room_id, error = %err, "relay leave");
        }
    }

    /// `active-speaker {roomId, socketId}` to the members of the relayed consult room, or to
    /// the placing and answering sockets of the relayed call.
    async fn announce_speaker(&self, io: &SocketIo, room: &str, participant: &str) {
        let mut members = self
            .view(room, |rooms| rooms.member_ids(room))
            .await
            .unwrap_or_default();
        if members.is_empty()
            && let Ok(Some(sockets)) = self
                .read_calls(|read| {
                    let call = read.book.by_id(room).filter(|c| c.is_live())?;
                    Some(call.sockets().map(str::to_owned).collect())
                })
                .await
        {
            members = sockets;
        }
        let body = json!({"roomId": room, "socketId": participant});
        for member in &members {
            emit_to_socket(self, io, member, "active-speaker", &body).await;
        }
    }

    /// Forwards what the media layer says to the socket it concerns.
    pub async fn on_relay_event(&self, io: &SocketIo, event: RelayEvent) {
        let (participant, name, body) = match event {
            RelayEvent::SubscribeOffer {
                room,
                participant,
                sdp,
            } => (
                participant,
                "sfu-subscribe-offer",
                json!({"roomId": room, "sdp": sdp}),
            ),
            RelayEvent::LocalCandidate {
                room,
                participant,
                pc,
                candidate,
            } => (
                participant,
                "sfu-candidate",
                json!({"roomId": room, "pc": pc, "candidate": candidate}),
            ),
            RelayEvent::ActiveSpeaker { room, participant } => {
                self.announce_speaker(io, &room, &participant).await;
                return;
            }
        };
        emit_to_socket(self, io, &participant, name, &body).await;
    }
}

fn relay_of(sig: &Signaling) -> Result<&Arc<dyn Relay>, EventError> {
    match &sig.relay {
        Some(relay) if sig.relay_enabled() => Ok(relay),
        _ => Err(EventError::forbidden(
            "relay through the SFU is disabled on this server (media.mode = p2p-only)",
        )),
    }
}

pub(crate) async fn sfu_join(
    sig: &Arc<Signaling>,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::sfu_join(data)?;
    relay_of(sig)?;
    let (kind, relayed) = sig.relay_membership(s, &req.room_id).await?;
    if relayed {
        // Nothing changes for a member the relay knows. One it lost (its media node died and
        // the room moved to another, or it left the relay) is subscribed anew: a fresh
        // sfu-subscribe-offer follows.
        relay_of(sig)?.join(&req.room_id, &s.id.to_string()).await?;
        return Ok(protocol::ok_fields());
    }
    match kind {
        RoomKind::Consult => {
            sig.relay_consult_room(io, &req.room_id, req.reason).await;
        }
        RoomKind::Call => relay_call(sig, io, &req.room_id, req.reason).await?,
    }
    Ok(protocol::ok_fields())
}

/// Marks a direct call relayed (stored media `sfu`) and tells both parties.
async fn relay_call(
    sig: &Signaling,
    io: &SocketIo,
    call_id: &str,
    reason: RelayReason,
) -> Result<(), EventError> {
    let mut book = sig.open_calls().await?;
    let relayed = match book.call_mut(call_id) {
        Ok(call) if call.media != crate::call::MediaPath::Sfu => {
            let before = call.clone();
            call.relayed();
            Some((before, call.clone()))
        }
        Ok(_) => None,
        Err(err) => {
            sig.close_calls(book, false).await?;
            return Err(err.into());
        }
    };
    let Some((before, snapshot)) = relayed else {
        sig.close_calls(book, false).await?;
        return Ok(());
    };
    if let Err(err) = sig.store.save_call(&snapshot).await {
        if let Ok(call) = book.call_mut(call_id) {
            *call = before;
        }
        sig.close_calls(book, false).await?;
        return Err(err.into());
    }
    sig.close_calls(book, true).await?;
    let members: Vec<String> = snapshot.sockets().map(str::to_owned).collect();
    sig.announce_relay(io, RoomKind::Call, call_id, reason, &members)
        .await;
    Ok(())
}

pub(crate) async fn sfu_publish(
    sig: &Arc<Signaling>,
    _io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::sfu_publish(data, &sig.config.payload_limits())?;
    let relay = relay_of(sig)?;
    let (_, relayed) = sig.relay_membership(s, &req.room_id).await?;
    if !relayed {
        return Err(EventError::new(
            ErrorCode::Conflict,
            "the room is not relayed: send sfu-join first",
        ));
    }
    let answer = relay.publish(&req.room_id, s.id.as_str(), req.sdp).await?;
    let mut fields = protocol::ok_fields();
    fields.insert("sdp".into(), json!(answer));
    Ok(fields)
}

pub(crate) async fn sfu_subscribe_answer(
    sig: &Arc<Signaling>,
    _io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::sfu_subscribe_answer(data, &sig.config.payload_limits())?;
    let relay = relay_of(sig)?;
    sig.relay_membership(s, &req.room_id).await?;
    relay
        .subscribe_answer(&req.room_id, s.id.as_str(), req.sdp)
        .await?;
    Ok(protocol::ok_fields())
}

pub(crate) async fn sfu_candidate(
    sig: &Arc<Signaling>,
    _io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::sfu_candidate(data, &sig.config.payload_limits())?;
    let relay = relay_of(sig)?;
    sig.relay_membership(s, &req.room_id).await?;
    relay
        .add_candidate(&req.room_id, s.id.as_str(), req.pc, req.candidate)
        .await?;
    Ok(protocol::ok_fields())
}

/// `sfu-restart-ice {roomId}`: the client's network changed (its relay connections went
/// `disconnected`); the server re-offers its subscribe connection with new ICE credentials.
/// The client restarts its publish connection itself, with a re-offer (`sfu-publish`).
pub(crate) async fn sfu_restart_ice(
    sig: &Arc<Signaling>,
    _io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::sfu_restart_ice(data)?;
    let relay = relay_of(sig)?;
    sig.relay_membership(s, &req.room_id).await?;
    relay.restart_ice(&req.room_id, s.id.as_str()).await?;
    Ok(protocol::ok_fields())
}

/// `sfu-video-size {roomId, publisherId, width, height}`: the size at which the client renders
/// one publisher's video (`0 × 0`: hidden); the SFU picks that subscriber's layer from it. The
/// same checks as `sfu-leave` (member of the room, signal budget); a publisher the SFU does not
/// know in the room is `not_found`.
pub(crate) async fn sfu_video_size(
    sig: &Arc<Signaling>,
    _io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::sfu_video_size(data)?;
    let relay = relay_of(sig)?;
    sig.relay_membership(s, &req.room_id).await?;
    relay
        .set_video_size(
            &req.room_id,
            s.id.as_str(),
            &req.publisher_id,
            req.width,
            req.height,
        )
        .await?;
    Ok(protocol::ok_fields())
}

pub(crate) async fn sfu_leave(
    sig: &Arc<Signaling>,
    _io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::sfu_leave(data)?;
    relay_of(sig)?;
    sig.relay_membership(s, &req.room_id).await?;
    sig.leave_relay(&req.room_id, s.id.as_str()).await;
    Ok(protocol::ok_fields())
}
