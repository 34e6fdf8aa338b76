//! What the nodes of a cluster share (issue 15): each appointment's consult room and lobby, one
//! JSON document ([`SharedConsult`]) per appointment in the cluster's store, changed under that
//! appointment's lock there. A single node shares nothing: its own registry is the truth, and
//! [`Signaling::view`] and [`Signaling::change`] run on it under its mutex, as before.
//!
//! A change takes the lock, reads the document into a registry of its own, runs the same
//! registry code a single node runs, writes the document back and releases the lock. This node's
//! registry keeps only which room and lobby its own sockets are in (their events name no room).

use std::collections::HashSet;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::json;

use crate::activity::{Activity, Member};
use crate::adapter::SocketIo;
use crate::protocol::{ErrorCode, EventError};
use crate::rooms::{Rooms, SharedConsult};
use crate::{Signaling, consult, waiting};

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("cluster store: {0}")]
    Store(String),
    #[error("{0} stayed locked by another node")]
    Busy(String),
    #[error("the lock on {0} ran out before the change was written")]
    LockLost(String),
    #[error("unreadable shared state of {key}: {error}")]
    Corrupt {
        key: String,
        error: serde_json::Error,
    },
}

impl From<SharedError> for EventError {
    fn from(err: SharedError) -> Self {
        tracing::error!(error = %err, "shared room state unavailable");
        EventError::new(
            ErrorCode::Unavailable,
            "the cluster's shared state does not answer; try again",
        )
    }
}

/// Where a socket is, in the cluster's index of sockets ([`SocketMove`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    Room,
    Lobby,
}

/// A socket that entered (or left) an appointment's room or lobby in a change: the cluster
/// keeps an index of where each socket is, since its events do not name the appointment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketMove {
    pub socket_id: String,
    pub place: Place,
    pub entered: bool,
}

/// A document the nodes share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doc<'a> {
    /// An appointment's consult room and lobby ([`SharedConsult`]).
    Consult(&'a str),
    /// The live direct calls ([`crate::call::CallBook`]).
    Calls,
}

impl std::fmt::Display for Doc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Doc::Consult(id) => write!(f, "appointment {id}"),
            Doc::Calls => f.write_str("the call book"),
        }
    }
}

/// A held lock on one document ([`SharedStore::lock`]).
#[derive(Debug)]
pub struct SharedLock {
    pub token: String,
}

/// The store the nodes of a cluster share (Redis; see the server's `cluster` module).
#[async_trait]
pub trait SharedStore: Send + Sync + 'static {
    /// This node's id, as its sockets' homes are tagged.
    fn node_id(&self) -> &str;
    /// Waits (a few seconds at most) for the lock of `doc`, then reads it.
    async fn lock(&self, doc: Doc<'_>) -> Result<(SharedLock, Option<String>), SharedError>;
    /// Writes the document (`None`: deletes it) and the sockets' moves, and releases the lock;
    /// refused, with nothing written, when the lock ran out meanwhile.
    async fn write_unlock(
        &self,
        doc: Doc<'_>,
        lock: SharedLock,
        value: Option<String>,
        moves: &[SocketMove],
    ) -> Result<(), SharedError>;
    /// The appointment whose room socket `socket_id` is in, and the one whose lobby it waits in.
    async fn place_of(
        &self,
        socket_id: &str,
    ) -> Result<(Option<String>, Option<String>), SharedError>;
    /// Releases the lock without writing.
    async fn unlock(&self, doc: Doc<'_>, lock: SharedLock);
    async fn read(&self, doc: Doc<'_>) -> Result<Option<String>, SharedError>;
    /// Every appointment with a document.
    async fn keys(&self) -> Result<Vec<String>, SharedError>;
    /// Which of `nodes` are no longer live (their lease ran out).
    async fn dead_nodes(&self, nodes: &[&str]) -> Result<HashSet<String>, SharedError>;
}

fn owned_sockets(state: &SharedConsult) -> (HashSet<String>, HashSet<String>) {
    let (members, waiters) = state.sockets();
    let owned = |set: HashSet<&str>| set.into_iter().map(str::to_owned).collect();
    (owned(members), owned(waiters))
}

/// The sockets that entered or left `place` between `before` and `after`.
fn socket_moves(
    before: &HashSet<String>,
    after: &HashSet<String>,
    place: Place,
) -> Vec<SocketMove> {
    let entered = after.difference(before).map(|id| (id, true));
    let left = before.difference(after).map(|id| (id, false));
    entered
        .chain(left)
        .map(|(id, entered)| SocketMove {
            socket_id: id.clone(),
            place,
            entered,
        })
        .collect()
}

pub(crate) fn parse<T: serde::de::DeserializeOwned + Default>(
    doc: Doc<'_>,
    value: Option<String>,
) -> Result<T, SharedError> {
    match value {
        None => Ok(T::default()),
        Some(text) => serde_json::from_str(&text).map_err(|error| SharedError::Corrupt {
            key: doc.to_string(),
            error,
        }),
    }
}

impl Signaling {
    /// Reads appointment `id`'s room and lobby: `f` sees them in a registry (a single node's
    /// own, or one holding just them as the cluster shares them).
    pub(crate) async fn view<R>(
        &self,
        id: &str,
        f: impl FnOnce(&Rooms) -> R,
    ) -> Result<R, SharedError> {
        let Some(shared) = &self.shared else {
            return Ok(f(&self.rooms()));
        };
        let doc = Doc::Consult(id);
        let state = parse(doc, shared.read(doc).await?)?;
        let mut rooms = Rooms::on_node(shared.node_id());
        rooms.put_shared(id, state, Instant::now());
        Ok(f(&rooms))
    }

    /// Changes appointment `id`'s room and lobby with `f`, which must not block: on a single
    /// node under the registry's mutex; in a cluster under the appointment's lock, on a
    /// registry holding just them, written back after.
    pub(crate) async fn change<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Rooms) -> R,
    ) -> Result<R, SharedError> {
        let Some(shared) = &self.shared else {
            let mut rooms = self.rooms();
            let result = f(&mut rooms);
            self.refresh_gauges(&rooms);
            return Ok(result);
        };
        let doc = Doc::Consult(id);
        let (lock, value) = shared.lock(doc).await?;
        let state: SharedConsult = match parse(doc, value) {
            Ok(state) => state,
            Err(err) => {
                shared.unlock(doc, lock).await;
                return Err(err);
            }
        };
        let now = Instant::now();
        let (members_before, waiters_before) = owned_sockets(&state);
        let mut rooms = Rooms::on_node(shared.node_id());
        rooms.put_shared(id, state, now);
        let result = f(&mut rooms);
        let state = rooms.take_shared(id, now);
        let (members, waiters) = owned_sockets(&state);
        let mut moves = socket_moves(&members_before, &members, Place::Room);
        moves.extend(socket_moves(&waiters_before, &waiters, Place::Lobby));
        {
            // Still under the appointment's lock: this node's index follows the writes in order.
            let mut local = self.rooms();
            local.index_own_sockets(id, &state);
            self.refresh_gauges(&local);
        }
        let value = (!state.is_empty()).then(|| json!(state).to_string());
        shared.write_unlock(doc, lock, value, &moves).await?;
        Ok(result)
    }

    /// The consult room this node's socket `socket_id` is in.
    pub(crate) async fn room_of_socket(
        &self,
        socket_id: &str,
    ) -> Result<Option<String>, SharedError> {
        match &self.shared {
            None => Ok(self.rooms().room_of(socket_id).map(str::to_owned)),
            Some(shared) => Ok(shared.place_of(socket_id).await?.0),
        }
    }

    /// The appointment whose lobby this node's socket `socket_id` waits in.
    pub(crate) async fn lobby_of_socket(
        &self,
        socket_id: &str,
    ) -> Result<Option<String>, SharedError> {
        match &self.shared {
            None => Ok(self.rooms().lobby.lobby_of(socket_id).map(str::to_owned)),
            Some(shared) => Ok(shared.place_of(socket_id).await?.1),
        }
    }

    /// Every appointment with members or waiters: this node's registry alone, the cluster's
    /// documents in a cluster.
    pub(crate) async fn appointments(&self) -> Result<Vec<String>, SharedError> {
        match &self.shared {
            None => {
                let rooms = self.rooms();
                let mut ids: HashSet<String> = rooms.iter().map(|(id, _)| id.to_owned()).collect();
                ids.extend(rooms.lobby.lobby_ids());
                Ok(ids.into_iter().collect())
            }
            Some(shared) => shared.keys().await,
        }
    }

    /// In a cluster: ends the calls, memberships and waits of sockets whose node died (its
    /// lease ran out), as their disconnects would have on their own node. Returns how many
    /// ended.
    pub async fn sweep_dead_nodes(&self, io: &SocketIo) -> Result<usize, SharedError> {
        let Some(shared) = &self.shared else {
            return Ok(0);
        };
        let mut ended = crate::direct::end_calls_of_dead_nodes(self, io).await?;
        for id in shared.keys().await? {
            let doc = Doc::Consult(&id);
            let state: SharedConsult = parse(doc, shared.read(doc).await?)?;
            let nodes: Vec<&str> = state.nodes().into_iter().collect();
            let dead = shared.dead_nodes(&nodes).await?;
            // A document of departures alone is rewritten too: those past keeping drop out,
            // and with them the document.
            if dead.is_empty() && state.has_people() {
                continue;
            }
            let (left, gone) = self
                .change(&id, |rooms| {
                    rooms.evict(&id, |node| dead.contains(node), Instant::now())
                })
                .await?;
            ended += left.len() + gone.len();
            for left in left {
                tracing::info!(
                    appointment_id = %left.room_id,
                    socket_id = %left.peer.socket_id,
                    "a dead node's member left the consult room"
                );
                consult::announce_left(self, io, &left, consult::LeaveReason::Disconnected).await;
            }
            for gone in gone {
                self.record_or_log(Activity::WaitingLeft {
                    appointment_id: gone.appointment_id.clone(),
                    member: Member::from(&gone.waiter),
                    reason: "disconnected",
                })
                .await;
                waiting::tell_hosts(self, io, &gone.appointment_id, &gone.doctor_id).await;
            }
        }
        Ok(ended)
    }
}
