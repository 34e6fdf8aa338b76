//! `sfu-*` across nodes: every relayed room is served by the SFU of the one node it is pinned to
//! ([`Registry::pin_room`]), whichever node holds the sockets that use it.
//!
//! [`ClusterRelay`] is the [`Relay`] signaling uses on a cluster node: it finds the room's node
//! and runs the call on this node's [`MediaNode`], or sends it over the [`NodeBus`] to that
//! node's, which answers with what its own SFU said (an SDP answer carries that node's ICE
//! candidates, so its own public addresses).
//!
//! [`MediaNode`] wraps a node's local SFU and keeps the registry's room counts right: it knows
//! which participants each of its rooms has (a `join` or `publish` that worked adds one, a
//! `leave` removes it), and unpins a room when it has none left. Calls about one room run one
//! at a time, so an unpin never races a join: a room's first participant claims the pin again
//! ([`Registry::claim_room`]) or, if the room was pinned to another node meanwhile, the call is
//! sent there. Pins that never got a participant (the joining node died before asking, say)
//! are released by [`MediaNode::tidy`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use callrelay_signaling::protocol::ErrorCode;
use callrelay_signaling::relay::PcKind;
use callrelay_signaling::{Relay, RelayError};

use super::Registry;
use super::bus::{BusError, BusHandler, NodeBus};

/// One [`Relay`] call, as sent to the room's node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RelayCall {
    Join {
        room: String,
        participant: String,
    },
    Publish {
        room: String,
        participant: String,
        offer: String,
    },
    SubscribeAnswer {
        room: String,
        participant: String,
        answer: String,
    },
    AddCandidate {
        room: String,
        participant: String,
        pc: PcKind,
        candidate: Option<Value>,
    },
    Leave {
        room: String,
        participant: String,
    },
    RestartIce {
        room: String,
        participant: String,
    },
    SetVideoSize {
        room: String,
        participant: String,
        publisher: String,
        width: u32,
        height: u32,
    },
    RoomStats {
        room: String,
    },
}

impl RelayCall {
    pub fn room(&self) -> &str {
        match self {
            RelayCall::Join { room, .. }
            | RelayCall::Publish { room, .. }
            | RelayCall::SubscribeAnswer { room, .. }
            | RelayCall::AddCandidate { room, .. }
            | RelayCall::Leave { room, .. }
            | RelayCall::RestartIce { room, .. }
            | RelayCall::SetVideoSize { room, .. }
            | RelayCall::RoomStats { room } => room,
        }
    }

    /// The participant the call makes one of the room's: a join or a publish (the SFU creates
    /// the participant).
    fn adds_participant(&self) -> Option<&str> {
        match self {
            RelayCall::Join { participant, .. } | RelayCall::Publish { participant, .. } => {
                Some(participant)
            }
            _ => None,
        }
    }
}

/// What the room's node answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RelayReply {
    Done,
    /// The SDP answer to a publish offer.
    Answer {
        sdp: String,
    },
    Stats {
        stats: Value,
    },
    /// The SFU (or the node) refused: a [`RelayError`], its code as on the wire.
    Refused {
        code: String,
        message: String,
    },
    /// The room is pinned to another node now: ask that one.
    Moved {
        node: String,
    },
}

impl RelayReply {
    fn refused(err: RelayError) -> Self {
        RelayReply::Refused {
            code: err.code.as_str().to_owned(),
            message: err.message,
        }
    }
}

fn unavailable(message: impl Into<String>) -> RelayError {
    RelayError {
        code: ErrorCode::Unavailable,
        message: message.into(),
    }
}

fn registry_failed(err: super::ClusterError) -> RelayError {
    tracing::warn!(error = %err, "cluster registry unavailable for a relay call");
    unavailable("the cluster registry is unavailable: try again")
}

/// A room's participants on this node, and whether the entry was retired (its room unpinned).
#[derive(Default)]
struct RoomEntry {
    participants: HashSet<String>,
    retired: bool,
}

type Entry = Arc<tokio::sync::Mutex<RoomEntry>>;

/// What [`MediaNode::tidy`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tidied {
    /// Rooms unpinned: pinned here, nobody joined.
    pub released: usize,
    /// Rooms pinned here again: they have participants here and had lost their pin.
    pub pinned_again: usize,
}

/// A node's local SFU as the cluster uses it (see the module docs).
pub struct MediaNode {
    local: Arc<dyn Relay>,
    registry: Arc<Registry>,
    rooms: Mutex<HashMap<String, Entry>>,
    /// Rooms pinned here without participants at the last [`Self::tidy`].
    orphans: Mutex<HashSet<String>>,
}

impl MediaNode {
    pub fn new(local: Arc<dyn Relay>, registry: Arc<Registry>) -> Arc<Self> {
        Arc::new(Self {
            local,
            registry,
            rooms: Mutex::new(HashMap::new()),
            orphans: Mutex::new(HashSet::new()),
        })
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rooms this node's SFU has participants in, with their participants (sorted).
    pub async fn participants(&self) -> Vec<(String, Vec<String>)> {
        let entries: Vec<(String, Entry)> = self
            .rooms()
            .iter()
            .map(|(room, entry)| (room.clone(), entry.clone()))
            .collect();
        let mut out = Vec::new();
        for (room, entry) in entries {
            let entry = entry.lock().await;
            if !entry.retired && !entry.participants.is_empty() {
                let mut participants: Vec<String> = entry.participants.iter().cloned().collect();
                participants.sort();
                out.push((room, participants));
            }
        }
        out.sort();
        out
    }

    /// Runs `f` with the room's entry locked (a live one: a retired entry is replaced).
    async fn with_room<T>(&self, room: &str, f: impl AsyncFnOnce(&mut RoomEntry) -> T) -> T {
        loop {
            let entry = self.rooms().entry(room.to_owned()).or_default().clone();
            let mut locked = entry.lock().await;
            if locked.retired {
                continue;
            }
            let out = f(&mut locked).await;
            if locked.participants.is_empty() {
                // Nobody left: unpin the room (if it is ours) before another call may come in.
                if let Err(err) = self.registry.release_room(room).await {
                    tracing::warn!(error = %err, "could not unpin an emptied room (its pin lapses with this node)");
                }
                locked.retired = true;
                let mut rooms = self.rooms();
                if rooms.get(room).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                    rooms.remove(room);
                }
            }
            return out;
        }
    }

    /// Runs one call on this node's SFU.
    ///
    /// An ICE restart of a participant the SFU does not have here is refused (`not_found`): its
    /// room's node died and the room was pinned to this one, so its connections must start
    /// over (`sfu-join`, which subscribes it here, then a new publish connection).
    pub async fn run(&self, call: RelayCall) -> RelayReply {
        let room = call.room().to_owned();
        self.with_room(&room, async |entry: &mut RoomEntry| {
            if let RelayCall::RestartIce { participant, .. } = &call
                && !entry.participants.contains(participant)
            {
                // Its connections were on another node, which died: an ICE restart cannot
                // save them (this node has other DTLS certificates). The client starts over.
                return RelayReply::refused(RelayError {
                    code: ErrorCode::NotFound,
                    message: "the relay does not know you in this room (its media node changed): \
                              sfu-join and publish again on new connections"
                        .into(),
                });
            }
            let joining = call.adds_participant().map(str::to_owned);
            if joining.is_some() && entry.participants.is_empty() {
                match self.registry.claim_room(&room).await {
                    Ok(node) if node == self.registry.node_id() => {}
                    Ok(node) => return RelayReply::Moved { node },
                    Err(err) => return RelayReply::refused(registry_failed(err)),
                }
            }
            let leaving = match &call {
                RelayCall::Leave { participant, .. } => Some(participant.clone()),
                _ => None,
            };
            let reply = self.run_local(call).await;
            if let (Some(participant), RelayReply::Done | RelayReply::Answer { .. }) =
                (joining, &reply)
            {
                entry.participants.insert(participant);
            }
            // Gone whatever the SFU says (it may have closed the participant itself).
            if let Some(participant) = leaving {
                entry.participants.remove(&participant);
            }
            reply
        })
        .await
    }

    async fn run_local(&self, call: RelayCall) -> RelayReply {
        let local = &self.local;
        let done = |r: Result<(), RelayError>| match r {
            Ok(()) => RelayReply::Done,
            Err(err) => RelayReply::refused(err),
        };
        match call {
            RelayCall::Join { room, participant } => done(local.join(&room, &participant).await),
            RelayCall::Publish {
                room,
                participant,
                offer,
            } => match local.publish(&room, &participant, offer).await {
                Ok(sdp) => RelayReply::Answer { sdp },
                Err(err) => RelayReply::refused(err),
            },
            RelayCall::SubscribeAnswer {
                room,
                participant,
                answer,
            } => done(local.subscribe_answer(&room, &participant, answer).await),
            RelayCall::AddCandidate {
                room,
                participant,
                pc,
                candidate,
            } => done(
                local
                    .add_candidate(&room, &participant, pc, candidate)
                    .await,
            ),
            RelayCall::Leave { room, participant } => done(local.leave(&room, &participant).await),
            RelayCall::RestartIce { room, participant } => {
                done(local.restart_ice(&room, &participant).await)
            }
            RelayCall::SetVideoSize {
                room,
                participant,
                publisher,
                width,
                height,
            } => done(
                local
                    .set_video_size(&room, &participant, &publisher, width, height)
                    .await,
            ),
            RelayCall::RoomStats { room } => match local.room_stats(&room).await {
                Ok(stats) => RelayReply::Stats { stats },
                Err(err) => RelayReply::refused(err),
            },
        }
    }

    /// The SFU closed `participant` by itself (its connection failed): it is no longer one of
    /// the room's, which is unpinned if that was its last participant.
    pub async fn participant_closed(&self, room: &str, participant: &str) {
        self.with_room(room, async |entry: &mut RoomEntry| {
            entry.participants.remove(participant);
        })
        .await;
    }

    /// Keeps this node's pins true to its SFU; call it every lease or so. Releases the rooms
    /// pinned here that had no participant here at two tidy-ups in a row (a pin taken for a
    /// join that never came), and pins again the rooms that have participants here but lost
    /// their pin (Redis lost it, or this node's heartbeats failed for a lease): until then, the
    /// other nodes would find them pinned nowhere. A room with participants here that is
    /// pinned to another node (split while this node seemed dead) is logged.
    pub async fn tidy(&self) -> Result<Tidied, super::ClusterError> {
        let pinned = self.registry.pinned_rooms().await?;
        let (empty, held): (HashSet<String>, Vec<String>) = {
            let rooms = self.rooms();
            let empty = pinned
                .iter()
                .filter(|room| !rooms.contains_key(*room))
                .cloned()
                .collect();
            let held = rooms
                .keys()
                .filter(|room| !pinned.contains(*room))
                .cloned()
                .collect();
            (empty, held)
        };
        let before = std::mem::replace(
            &mut *self.orphans.lock().unwrap_or_else(|e| e.into_inner()),
            empty.clone(),
        );
        let mut tidied = Tidied::default();
        for room in empty.intersection(&before) {
            // An empty entry, locked: released by `with_room` unless a join got there first.
            self.with_room(room, async |_: &mut RoomEntry| {}).await;
            tidied.released += 1;
        }
        for room in held {
            let claimed = self
                .with_room(&room, async |entry: &mut RoomEntry| {
                    if entry.participants.is_empty() {
                        return Ok(None);
                    }
                    self.registry.claim_room(&room).await.map(Some)
                })
                .await?;
            match claimed {
                Some(node) if node == self.registry.node_id() => tidied.pinned_again += 1,
                Some(node) => tracing::warn!(
                    room,
                    node,
                    "a room with participants on this node's SFU is pinned to another node"
                ),
                None => {}
            }
        }
        Ok(tidied)
    }

    /// Runs [`Self::tidy`] every `every` until aborted.
    pub fn keep_tidy(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let node = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match node.tidy().await {
                    Ok(Tidied {
                        released,
                        pinned_again,
                    }) if released + pinned_again > 0 => tracing::info!(
                        released,
                        pinned_again,
                        "tidied this node's pins (rooms nobody joined here unpinned, rooms that \
                         lost their pin pinned again)"
                    ),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "could not tidy this node's pins"),
                }
            }
        })
    }
}

#[async_trait]
impl BusHandler for MediaNode {
    async fn handle(&self, from: &str, body: Value) -> Value {
        let reply = match serde_json::from_value::<RelayCall>(body) {
            Ok(call) => self.run(call).await,
            Err(_) => {
                tracing::debug!(from, "node bus: not a relay call");
                RelayReply::Refused {
                    code: ErrorCode::InvalidPayload.as_str().to_owned(),
                    message: "not a relay call".to_owned(),
                }
            }
        };
        serde_json::to_value(reply).unwrap_or(Value::Null)
    }
}

/// The [`Relay`] of a cluster node (see the module docs).
pub struct ClusterRelay {
    media: Arc<MediaNode>,
    registry: Arc<Registry>,
    bus: Arc<NodeBus>,
}

/// How a call finds its room's node.
#[derive(Clone, Copy)]
enum Placement {
    /// Pinned now if it is not, or re-pinned if its node died (calls that add a participant).
    Pin,
    /// Wherever it is pinned; an unpinned room is not relayed anywhere.
    Existing,
}

impl ClusterRelay {
    pub fn new(media: Arc<MediaNode>, registry: Arc<Registry>, bus: Arc<NodeBus>) -> Self {
        Self {
            media,
            registry,
            bus,
        }
    }

    /// Runs `call` on `node` (this one, or another over the bus).
    async fn call_on(&self, node: &str, call: &RelayCall) -> Result<RelayReply, RelayError> {
        if node == self.registry.node_id() {
            return Ok(self.media.run(call.clone()).await);
        }
        let body = serde_json::to_value(call).expect("a relay call serializes");
        match self.bus.request(node, body).await {
            Ok(reply) => serde_json::from_value(reply).map_err(|_| {
                tracing::warn!(
                    node,
                    "node bus: the media node's answer is not a relay reply"
                );
                unavailable(format!(
                    "the media node {node} gave an answer this node cannot read"
                ))
            }),
            Err(err @ (BusError::NotListening { .. } | BusError::Timeout { .. })) => {
                tracing::warn!(node, error = %err, "the room's media node does not answer");
                Err(unavailable(format!(
                    "the media node {node} of this room does not answer: try again in a few \
                     seconds (sfu-join)"
                )))
            }
            Err(err) => {
                tracing::warn!(node, error = %err, "node bus failure");
                Err(unavailable("the node bus is unavailable: try again"))
            }
        }
    }

    /// The room's node answer to `call`, following one move. `None`: the room is pinned
    /// nowhere (only with [`Placement::Existing`]).
    async fn route(
        &self,
        call: RelayCall,
        placement: Placement,
    ) -> Result<Option<RelayReply>, RelayError> {
        let room = call.room();
        let node = match placement {
            Placement::Pin => self
                .registry
                .pin_room(room)
                .await
                .map_err(registry_failed)?,
            Placement::Existing => match self.registry.room_node(room).await {
                Ok(Some(node)) => node,
                Ok(None) => return Ok(None),
                Err(err) => return Err(registry_failed(err)),
            },
        };
        let mut reply = self.call_on(&node, &call).await?;
        if let RelayReply::Moved { node } = &reply {
            let node = node.clone();
            reply = self.call_on(&node, &call).await?;
        }
        Ok(Some(reply))
    }

    async fn done(&self, call: RelayCall, placement: Placement) -> Result<(), RelayError> {
        match self.route(call, placement).await? {
            None => Err(RelayError {
                code: ErrorCode::NotFound,
                message: "the room is not relayed".into(),
            }),
            Some(reply) => expect_done(reply),
        }
    }
}

fn refusal(code: &str, message: String) -> RelayError {
    let code = ErrorCode::ALL
        .into_iter()
        .find(|c| c.as_str() == code)
        .unwrap_or(ErrorCode::Internal);
    RelayError { code, message }
}

fn unexpected(reply: RelayReply) -> RelayError {
    match reply {
        RelayReply::Refused { code, message } => refusal(&code, message),
        RelayReply::Moved { .. } => unavailable("the room is moving to another node: try again"),
        _ => RelayError {
            code: ErrorCode::Internal,
            message: "the media node answered something else".into(),
        },
    }
}

fn expect_done(reply: RelayReply) -> Result<(), RelayError> {
    match reply {
        RelayReply::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

#[async_trait]
impl Relay for ClusterRelay {
    async fn join(&self, room: &str, participant: &str) -> Result<(), RelayError> {
        let call = RelayCall::Join {
            room: room.to_owned(),
            participant: participant.to_owned(),
        };
        self.done(call, Placement::Pin).await
    }

    async fn publish(
        &self,
        room: &str,
        participant: &str,
        offer: String,
    ) -> Result<String, RelayError> {
        let call = RelayCall::Publish {
            room: room.to_owned(),
            participant: participant.to_owned(),
            offer,
        };
        match self.route(call, Placement::Pin).await? {
            Some(RelayReply::Answer { sdp }) => Ok(sdp),
            Some(other) => Err(unexpected(other)),
            None => Err(unexpected(RelayReply::Done)),
        }
    }

    async fn subscribe_answer(
        &self,
        room: &str,
        participant: &str,
        answer: String,
    ) -> Result<(), RelayError> {
        let call = RelayCall::SubscribeAnswer {
            room: room.to_owned(),
            participant: participant.to_owned(),
            answer,
        };
        self.done(call, Placement::Existing).await
    }

    async fn add_candidate(
        &self,
        room: &str,
        participant: &str,
        pc: PcKind,
        candidate: Option<Value>,
    ) -> Result<(), RelayError> {
        let call = RelayCall::AddCandidate {
            room: room.to_owned(),
            participant: participant.to_owned(),
            pc,
            candidate,
        };
        self.done(call, Placement::Existing).await
    }

    async fn leave(&self, room: &str, participant: &str) -> Result<(), RelayError> {
        let call = RelayCall::Leave {
            room: room.to_owned(),
            participant: participant.to_owned(),
        };
        match self.route(call, Placement::Existing).await {
            // Pinned nowhere: no SFU has it.
            Ok(None) => Ok(()),
            Ok(Some(reply)) => expect_done(reply),
            Err(err) => Err(err),
        }
    }

    async fn restart_ice(&self, room: &str, participant: &str) -> Result<(), RelayError> {
        let call = RelayCall::RestartIce {
            room: room.to_owned(),
            participant: participant.to_owned(),
        };
        // Re-pinned if its node died; the new node answers `not_found` (see MediaNode::run).
        self.done(call, Placement::Pin).await
    }

    async fn set_video_size(
        &self,
        room: &str,
        participant: &str,
        publisher: &str,
        width: u32,
        height: u32,
    ) -> Result<(), RelayError> {
        let call = RelayCall::SetVideoSize {
            room: room.to_owned(),
            participant: participant.to_owned(),
            publisher: publisher.to_owned(),
            width,
            height,
        };
        self.done(call, Placement::Existing).await
    }

    async fn room_stats(&self, room: &str) -> Result<Value, RelayError> {
        let call = RelayCall::RoomStats {
            room: room.to_owned(),
        };
        match self.route(call, Placement::Existing).await? {
            None => Ok(Value::Array(Vec::new())),
            Some(RelayReply::Stats { stats }) => Ok(stats),
            Some(other) => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_and_replies_travel_as_tagged_json() {
        let call = RelayCall::AddCandidate {
            room: "r".into(),
            participant: "p".into(),
            pc: PcKind::Subscribe,
            candidate: None,
        };
        let wire = serde_json::to_value(&call).unwrap();
        assert_eq!(
            wire,
            json!({"op": "add_candidate", "room": "r", "participant": "p",
                   "pc": "subscribe", "candidate": null})
        );
        assert_eq!(serde_json::from_value::<RelayCall>(wire).unwrap(), call);
        let reply = RelayReply::refused(RelayError {
            code: ErrorCode::NotFound,
            message: "unknown participant".into(),
        });
        let wire = serde_json::to_value(&reply).unwrap();
        assert_eq!(
            wire,
            json!({"outcome": "refused", "code": "not_found", "message": "unknown participant"})
        );
        let err = unexpected(serde_json::from_value(wire).unwrap());
        assert_eq!(err.code, ErrorCode::NotFound);
        assert_eq!(err.message, "unknown participant");
        // A code this node does not know is an internal error, its message kept.
        assert_eq!(refusal("teapot", "x".into()).code, ErrorCode::Internal);
    }
}
