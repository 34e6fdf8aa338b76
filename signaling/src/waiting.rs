//! The waiting room (issue 14; `consult.waiting_room`, on by default). A patient whose join the
//! appointment's doctor (or an administrator) has not admitted waits in the appointment's lobby
//! instead of entering its room; the hosts see the lobby (`waiting-room`) wherever they are and
//! admit (`admit`) or decline (`decline`) each patient. Doctors and administrators never wait.
//!
//! A patient is admitted for the consultation in progress: once in the room, it enters again
//! without waiting (another device, a reconnection) until the room empties, and a member whose
//! connection ended comes back without waiting within `DEPARTED_KEPT` by naming its old socket
//! (`previousSocketId`). [`Lobby`] is the plain registry (no I/O), kept inside
//! [`Rooms`](crate::rooms::Rooms) so that leaving the lobby and entering the room happen under
//! one lock; the rest of this module is the events and what they tell whom.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::adapter::SocketIo;
use crate::adapter::SocketRef;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::activity::{Activity, Host, Member};
use crate::order::OrderGate;
use crate::protocol::{self, EventError, EventResult};
use crate::rooms::Homed;
use crate::store::{AppointmentAccess, AppointmentStatus};
use crate::{
    Budget, Identity, Role, Signaling, consult, emit_to_socket, identity, in_rooms, payload,
    socket_by_id, socket_room, user_room,
};

/// A socket waiting to be admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub socket_id: String,
    pub user_id: String,
    pub name: String,
    pub role: Role,
    /// What its `join-room` asked for, used when it is admitted.
    pub avatar_seed: String,
    /// Since when it waits (kept when the same user comes back on a new connection).
    pub since: OffsetDateTime,
}

impl From<&Waiter> for Member {
    fn from(w: &Waiter) -> Self {
        Member {
            user_id: w.user_id.clone(),
            name: w.name.clone(),
            role: w.role,
            socket_id: w.socket_id.clone(),
        }
    }
}

/// A waiter as the hosts see it (`waiting-room`'s `waiting`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitingEntry {
    pub user_id: String,
    pub name: String,
    pub socket_id: String,
    /// RFC 3339 UTC with milliseconds.
    pub since: String,
}

impl From<&Waiter> for WaitingEntry {
    fn from(w: &Waiter) -> Self {
        WaitingEntry {
            user_id: w.user_id.clone(),
            name: w.name.clone(),
            socket_id: w.socket_id.clone(),
            since: protocol::rfc3339_millis(w.since),
        }
    }
}

/// One appointment's lobby.
#[derive(Debug)]
struct Queue {
    doctor_id: String,
    /// In arrival order.
    waiters: Vec<Waiter>,
    /// Waiting socket → the node it is connected to.
    homes: HashMap<String, String>,
}

impl Queue {
    fn new(doctor_id: String) -> Queue {
        Queue {
            doctor_id,
            waiters: Vec::new(),
            homes: HashMap::new(),
        }
    }
}

/// A waiter taken out of its lobby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    pub appointment_id: String,
    pub doctor_id: String,
    pub waiter: Waiter,
    /// The node the waiter is connected to.
    pub home: String,
}

/// One appointment's lobby as the nodes of a cluster share it (see
/// [`SharedConsult`](crate::rooms::SharedConsult)).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedLobby {
    doctor_id: String,
    waiters: Vec<Homed<SharedWaiter>>,
}

impl SharedLobby {
    /// The nodes its waiters are connected to.
    pub(crate) fn homes(&self) -> impl Iterator<Item = &str> {
        self.waiters.iter().map(|w| w.node.as_str())
    }

    pub(crate) fn socket_ids(&self) -> impl Iterator<Item = &str> {
        self.waiters.iter().map(|w| w.item.socket_id.as_str())
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SharedWaiter {
    socket_id: String,
    user_id: String,
    name: String,
    role: Role,
    avatar_seed: String,
    /// Unix milliseconds.
    since_ms: i64,
}

impl From<Waiter> for SharedWaiter {
    fn from(w: Waiter) -> Self {
        SharedWaiter {
            socket_id: w.socket_id,
            user_id: w.user_id,
            name: w.name,
            role: w.role,
            avatar_seed: w.avatar_seed,
            since_ms: (w.since.unix_timestamp_nanos() / 1_000_000) as i64,
        }
    }
}

impl From<SharedWaiter> for Waiter {
    fn from(w: SharedWaiter) -> Self {
        Waiter {
            socket_id: w.socket_id,
            user_id: w.user_id,
            name: w.name,
            role: w.role,
            avatar_seed: w.avatar_seed,
            since: OffsetDateTime::from_unix_timestamp_nanos(i128::from(w.since_ms) * 1_000_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        }
    }
}

/// Every lobby, and who was admitted to the consultations in progress.
#[derive(Debug, Default)]
pub struct Lobby {
    /// The node whose sockets wait through this lobby ("" for a single node).
    node: String,
    queues: HashMap<String, Queue>,
    queue_of_socket: HashMap<String, String>,
    /// Appointment → the users who have been in its room since it last emptied.
    admitted: HashMap<String, HashSet<String>>,
}

impl Lobby {
    pub(crate) fn on_node(node: &str) -> Lobby {
        Lobby {
            node: node.to_owned(),
            ..Lobby::default()
        }
    }

    /// Puts `waiter` last in the lobby of `appointment_id`, whose doctor is `doctor_id`. False,
    /// and nothing changes, when that socket waits already (here or elsewhere).
    pub fn wait(&mut self, appointment_id: &str, doctor_id: &str, waiter: Waiter) -> bool {
        if self.queue_of_socket.contains_key(&waiter.socket_id) {
            return false;
        }
        self.queue_of_socket
            .insert(waiter.socket_id.clone(), appointment_id.to_owned());
        let queue = self
            .queues
            .entry(appointment_id.to_owned())
            .or_insert_with(|| Queue::new(doctor_id.to_owned()));
        queue
            .homes
            .insert(waiter.socket_id.clone(), self.node.clone());
        queue.waiters.push(waiter);
        true
    }

    /// Puts back a waiter whose admission could not be completed, in its place by `since`.
    pub fn put_back(&mut self, gone: Gone) {
        if self.queue_of_socket.contains_key(&gone.waiter.socket_id) {
            return;
        }
        self.queue_of_socket
            .insert(gone.waiter.socket_id.clone(), gone.appointment_id.clone());
        let queue = self
            .queues
            .entry(gone.appointment_id)
            .or_insert_with(|| Queue::new(gone.doctor_id));
        queue.homes.insert(gone.waiter.socket_id.clone(), gone.home);
        let at = queue
            .waiters
            .iter()
            .position(|w| w.since > gone.waiter.since)
            .unwrap_or(queue.waiters.len());
        queue.waiters.insert(at, gone.waiter);
    }

    /// Takes the socket out of its lobby, if it waits; an emptied lobby is forgotten.
    pub fn leave(&mut self, socket_id: &str) -> Option<Gone> {
        let appointment_id = self.queue_of_socket.remove(socket_id)?;
        let queue = self.queues.get_mut(&appointment_id)?;
        let index = queue
            .waiters
            .iter()
            .position(|w| w.socket_id == socket_id)?;
        let waiter = queue.waiters.remove(index);
        let home = queue.homes.remove(socket_id).unwrap_or_default();
        let doctor_id = if queue.waiters.is_empty() {
            self.queues
                .remove(&appointment_id)
                .map(|q| q.doctor_id)
                .unwrap_or_default()
        } else {
            queue.doctor_id.clone()
        };
        Some(Gone {
            appointment_id,
            doctor_id,
            waiter,
            home,
        })
    }

    /// The appointment whose lobby the socket waits in.
    pub fn lobby_of(&self, socket_id: &str) -> Option<&str> {
        self.queue_of_socket.get(socket_id).map(String::as_str)
    }

    /// The socket's wait, if it waits in `appointment_id`'s lobby.
    pub fn waiter(&self, appointment_id: &str, socket_id: &str) -> Option<&Waiter> {
        self.queues
            .get(appointment_id)?
            .waiters
            .iter()
            .find(|w| w.socket_id == socket_id)
    }

    /// The sockets of `user_id` waiting in `appointment_id`'s lobby, in arrival order.
    pub fn sockets_of(&self, appointment_id: &str, user_id: &str) -> Vec<String> {
        self.queues
            .get(appointment_id)
            .map(|q| {
                q.waiters
                    .iter()
                    .filter(|w| w.user_id == user_id)
                    .map(|w| w.socket_id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The lobby of `appointment_id` as the hosts see it (empty when nobody waits).
    pub fn entries(&self, appointment_id: &str) -> Vec<WaitingEntry> {
        self.queues
            .get(appointment_id)
            .map(|q| q.waiters.iter().map(WaitingEntry::from).collect())
            .unwrap_or_default()
    }

    /// The lobbies, with someone in them, of the appointments whose doctor is `doctor_id`.
    pub fn lobbies_of_doctor(&self, doctor_id: &str) -> Vec<(String, Vec<WaitingEntry>)> {
        let mut lobbies: Vec<_> = self
            .queues
            .iter()
            .filter(|(_, q)| q.doctor_id == doctor_id)
            .map(|(id, q)| {
                (
                    id.clone(),
                    q.waiters.iter().map(WaitingEntry::from).collect(),
                )
            })
            .collect();
        lobbies.sort_by(|a, b| a.0.cmp(&b.0));
        lobbies
    }

    /// Remembers that `user_id` is in `appointment_id`'s room (see [`Lobby::is_admitted`]).
    pub fn admit(&mut self, appointment_id: &str, user_id: &str) {
        self.admitted
            .entry(appointment_id.to_owned())
            .or_default()
            .insert(user_id.to_owned());
    }

    /// Whether `user_id` has been in `appointment_id`'s room since it last emptied.
    pub fn is_admitted(&self, appointment_id: &str, user_id: &str) -> bool {
        self.admitted
            .get(appointment_id)
            .is_some_and(|users| users.contains(user_id))
    }

    /// `user_id` was removed from the room by an administrator: let in again only by a host.
    pub fn revoke(&mut self, appointment_id: &str, user_id: &str) {
        if let Some(users) = self.admitted.get_mut(appointment_id) {
            users.remove(user_id);
        }
    }

    /// The room of `appointment_id` emptied: the consultation is over, the next one starts
    /// with everyone waiting again.
    pub fn forget_admissions(&mut self, appointment_id: &str) {
        self.admitted.remove(appointment_id);
    }

    /// How many sockets of this node wait, in all lobbies.
    pub fn waiting_count(&self) -> usize {
        self.queue_of_socket.len()
    }

    /// Takes `appointment_id`'s lobby and admissions out, as the cluster shares them.
    pub(crate) fn take_shared(
        &mut self,
        appointment_id: &str,
    ) -> (Option<SharedLobby>, Vec<String>) {
        let lobby = self.queues.remove(appointment_id).map(|mut queue| {
            for w in &queue.waiters {
                self.queue_of_socket.remove(&w.socket_id);
            }
            SharedLobby {
                waiters: queue
                    .waiters
                    .into_iter()
                    .map(|w| Homed {
                        node: queue.homes.remove(&w.socket_id).unwrap_or_default(),
                        item: SharedWaiter::from(w),
                    })
                    .collect(),
                doctor_id: queue.doctor_id,
            }
        });
        let mut admitted: Vec<String> = self
            .admitted
            .remove(appointment_id)
            .unwrap_or_default()
            .into_iter()
            .collect();
        admitted.sort();
        (lobby, admitted)
    }

    /// Puts `appointment_id`'s lobby and admissions as the cluster shares them in.
    pub(crate) fn put_shared(
        &mut self,
        appointment_id: &str,
        lobby: Option<SharedLobby>,
        admitted: Vec<String>,
    ) {
        if let Some(lobby) = lobby.filter(|l| !l.waiters.is_empty()) {
            let mut queue = Queue::new(lobby.doctor_id);
            for Homed { item, node } in lobby.waiters {
                self.queue_of_socket
                    .insert(item.socket_id.clone(), appointment_id.to_owned());
                queue.homes.insert(item.socket_id.clone(), node);
                queue.waiters.push(Waiter::from(item));
            }
            self.queues.insert(appointment_id.to_owned(), queue);
        }
        if !admitted.is_empty() {
            self.admitted
                .insert(appointment_id.to_owned(), admitted.into_iter().collect());
        }
    }

    /// See [`Rooms::index_own_sockets`](crate::rooms::Rooms::index_own_sockets).
    pub(crate) fn index_own_sockets(&mut self, appointment_id: &str, lobby: Option<&SharedLobby>) {
        self.queue_of_socket.retain(|_, a| a != appointment_id);
        for w in lobby
            .iter()
            .flat_map(|l| &l.waiters)
            .filter(|w| w.node == self.node)
        {
            self.queue_of_socket
                .insert(w.item.socket_id.clone(), appointment_id.to_owned());
        }
    }

    /// The sockets waiting in `appointment_id`'s lobby from a node `dead` says is gone.
    pub(crate) fn waiters_on(
        &self,
        appointment_id: &str,
        dead: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        self.queues
            .get(appointment_id)
            .map(|q| {
                q.waiters
                    .iter()
                    .filter(|w| q.homes.get(&w.socket_id).is_some_and(|n| dead(n)))
                    .map(|w| w.socket_id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The appointments with someone waiting.
    pub(crate) fn lobby_ids(&self) -> impl Iterator<Item = String> + '_ {
        self.queues.keys().cloned()
    }

    /// The doctor of `appointment_id`'s lobby, while someone waits in it.
    pub fn doctor_of(&self, appointment_id: &str) -> Option<&str> {
        self.queues
            .get(appointment_id)
            .map(|q| q.doctor_id.as_str())
    }
}

/// Why a socket stopped waiting by itself (`WaitingLeft`'s reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitEnd {
    /// `leave-room` (the patient cancelled).
    Left,
    Disconnected,
    /// The same user came back on a new connection that names this one.
    Replaced,
    /// It joined a room instead (another appointment's, or this one once admitted elsewhere).
    JoinedRoom,
}

impl WaitEnd {
    fn as_str(self) -> &'static str {
        match self {
            WaitEnd::Left => "left",
            WaitEnd::Disconnected => "disconnected",
            WaitEnd::Replaced => "replaced",
            WaitEnd::JoinedRoom => "joined-room",
        }
    }
}

/// The doctor of the appointment and administrators admit; they never wait.
pub(crate) fn is_host(who: &Identity, appointment: &AppointmentAccess) -> bool {
    who.role == Role::Admin || who.user_id == appointment.doctor_id
}

/// Whether `who`'s socket `socket_id` must wait before entering `appointment`'s room: the
/// waiting room is on, it is not a host, it has not been in the room since it last emptied,
/// and it does not come back (`previous`) from a membership of it that its connection ended.
pub(crate) async fn must_wait(
    sig: &Signaling,
    who: &Identity,
    appointment: &AppointmentAccess,
    socket_id: &str,
    previous: Option<&str>,
) -> Result<bool, EventError> {
    if !sig.config.waiting_room || is_host(who, appointment) {
        return Ok(false);
    }
    let admitted = sig
        .view(&appointment.id, |rooms| {
            rooms.lobby.is_admitted(&appointment.id, &who.user_id)
                || rooms.room_of(socket_id) == Some(appointment.id.as_str())
                || previous.is_some_and(|previous| {
                    rooms.departed_from(previous, &appointment.id, &who.user_id, Instant::now())
                })
        })
        .await?;
    Ok(!admitted)
}

/// `join-room` of a patient who must wait: into the appointment's lobby (leaving any room or
/// other lobby first), recorded, the hosts told. The ack is `{ok:true, waiting:true, selfId,
/// appointmentId, since}`; `admitted` or `declined` follows. Joining again while waiting changes
/// nothing. A `previous` socket of the same user waiting here is replaced (disconnected) and
/// its wait carried over.
pub(crate) async fn enter_lobby(
    sig: &Signaling,
    io: &SocketIo,
    s: &SocketRef,
    who: &Identity,
    appointment: &AppointmentAccess,
    avatar_seed: String,
    previous: Option<String>,
) -> EventResult {
    let self_id = s.id.to_string();
    if sig.room_of_socket(&self_id).await?.is_some() {
        consult::leave_current_room(sig, io, &self_id, consult::LeaveReason::JoinedAnother).await;
    }
    if sig
        .lobby_of_socket(&self_id)
        .await?
        .is_some_and(|a| a != appointment.id)
    {
        end_wait(sig, io, &self_id, WaitEnd::JoinedRoom).await;
    }
    let previous = previous.filter(|p| *p != self_id);
    let (replaced, waiter, is_new, since) = sig
        .change(&appointment.id, |rooms| {
            let replaced = previous.and_then(|p| {
                let since = rooms
                    .lobby
                    .waiter(&appointment.id, &p)
                    .filter(|w| w.user_id == who.user_id)?
                    .since;
                Some((p, since))
            });
            let waiter = Waiter {
                socket_id: self_id.clone(),
                user_id: who.user_id.clone(),
                name: who.name.clone(),
                role: who.role,
                avatar_seed,
                since: replaced
                    .as_ref()
                    .map_or_else(protocol::now_millis, |(_, since)| *since),
            };
            let is_new = rooms
                .lobby
                .wait(&appointment.id, &appointment.doctor_id, waiter.clone());
            let since = rooms
                .lobby
                .waiter(&appointment.id, &self_id)
                .map_or(waiter.since, |w| w.since);
            (replaced, waiter, is_new, since)
        })
        .await?;
    if is_new {
        let activity = Activity::WaitingEntered {
            appointment_id: appointment.id.clone(),
            member: Member::from(&waiter),
            replaces: replaced.as_ref().map(|(p, _)| p.clone()),
        };
        if let Err(err) = sig.record(activity).await {
            // A wait the audit trail does not hold did not happen.
            let _ = sig
                .change(&appointment.id, |rooms| rooms.lobby.leave(&self_id))
                .await;
            return Err(err.into());
        }
        tracing::info!(
            appointment_id = %appointment.id,
            socket_id = %self_id,
            user_id = %who.user_id,
            replaces = replaced.as_ref().map(|(p, _)| p.as_str()),
            "waiting to be admitted"
        );
        if let Some((old, _)) = &replaced {
            end_wait_in(sig, io, old, &appointment.id, WaitEnd::Replaced).await;
            match socket_by_id(io, old) {
                Some(old) => {
                    let _ = old.disconnect();
                }
                None => {
                    if let Some(old) = in_rooms(io, socket_room(old)) {
                        let _ = old.disconnect().await;
                    }
                }
            }
        }
        tell_hosts(sig, io, &appointment.id, &appointment.doctor_id).await;
    }
    let mut fields = protocol::ok_fields();
    fields.insert("waiting".into(), json!(true));
    fields.insert("selfId".into(), json!(self_id));
    fields.insert("appointmentId".into(), json!(appointment.id));
    fields.insert("since".into(), json!(protocol::rfc3339_millis(since)));
    Ok(fields)
}

/// Ends the wait of socket `socket_id`, if it waits: recorded, the hosts told. Returns whether
/// it waited.
pub(crate) async fn end_wait(
    sig: &Signaling,
    io: &SocketIo,
    socket_id: &str,
    reason: WaitEnd,
) -> bool {
    match sig.lobby_of_socket(socket_id).await {
        Ok(Some(appointment_id)) => end_wait_in(sig, io, socket_id, &appointment_id, reason).await,
        Ok(None) => false,
        Err(err) => {
            tracing::error!(error = %err, "could not find a socket's waiting room");
            false
        }
    }
}

/// Ends the wait of socket `socket_id` (of any node) in `appointment_id`'s lobby, if it waits
/// there: recorded, the hosts told. Returns whether it waited.
async fn end_wait_in(
    sig: &Signaling,
    io: &SocketIo,
    socket_id: &str,
    appointment_id: &str,
    reason: WaitEnd,
) -> bool {
    let gone = sig
        .change(appointment_id, |rooms| rooms.lobby.leave(socket_id))
        .await;
    let gone = match gone {
        Ok(Some(gone)) => gone,
        Ok(None) => return false,
        Err(err) => {
            tracing::error!(error = %err, appointment_id, "could not end a wait");
            return false;
        }
    };
    tracing::info!(
        appointment_id = %gone.appointment_id,
        socket_id,
        user_id = %gone.waiter.user_id,
        reason = reason.as_str(),
        "stopped waiting"
    );
    sig.record_or_log(Activity::WaitingLeft {
        appointment_id: gone.appointment_id.clone(),
        member: Member::from(&gone.waiter),
        reason: reason.as_str(),
    })
    .await;
    tell_hosts(sig, io, &gone.appointment_id, &gone.doctor_id).await;
    true
}

/// Sends the lobby of `appointment_id` as it is now, `waiting-room {appointmentId, waiting}`,
/// to every socket of its doctor (in the room or not) and to the administrators in its room.
pub(crate) async fn tell_hosts(
    sig: &Signaling,
    io: &SocketIo,
    appointment_id: &str,
    doctor_id: &str,
) {
    let seen = sig
        .view(appointment_id, |rooms| {
            let admins: Vec<String> = rooms
                .get(appointment_id)
                .map(|room| {
                    room.members
                        .iter()
                        .filter(|m| m.role == Role::Admin)
                        .map(|m| socket_room(&m.socket_id))
                        .collect()
                })
                .unwrap_or_default();
            (rooms.lobby.entries(appointment_id), admins)
        })
        .await;
    let (waiting, mut hosts) = match seen {
        Ok(seen) => seen,
        Err(err) => {
            tracing::error!(error = %err, appointment_id, "could not tell the hosts who waits");
            return;
        }
    };
    let update = json!({"appointmentId": appointment_id, "waiting": waiting});
    // One broadcast to several rooms reaches each socket once, on every node.
    hosts.push(user_room(doctor_id));
    if let Some(hosts) = in_rooms(io, hosts) {
        let _ = hosts.emit("waiting-room", &update).await;
    }
}

/// A newly connected socket of a doctor learns who waits for it (one `waiting-room` per
/// appointment with someone waiting), so a page that was not open sees them at once.
pub(crate) async fn tell_on_connect(sig: &Signaling, s: &SocketRef, who: &Identity) {
    let lobbies = match lobbies_of_doctor(sig, &who.user_id).await {
        Ok(lobbies) => lobbies,
        Err(err) => {
            tracing::warn!(error = %err, "could not list a doctor's waiting rooms");
            return;
        }
    };
    for (appointment_id, waiting) in lobbies {
        let _ = s.emit(
            "waiting-room",
            &json!({"appointmentId": appointment_id, "waiting": waiting}),
        );
    }
}

/// The lobbies with someone in them of `doctor_id`'s appointments (in a cluster, every node's).
async fn lobbies_of_doctor(
    sig: &Signaling,
    doctor_id: &str,
) -> Result<Vec<(String, Vec<WaitingEntry>)>, crate::SharedError> {
    if sig.shared.is_none() {
        return Ok(sig.rooms().lobby.lobbies_of_doctor(doctor_id));
    }
    let mut lobbies = Vec::new();
    for id in sig.appointments().await? {
        let waiting = sig
            .view(&id, |rooms| {
                (rooms.lobby.doctor_of(&id) == Some(doctor_id)).then(|| rooms.lobby.entries(&id))
            })
            .await?;
        lobbies.extend(waiting.map(|w| (id, w)));
    }
    lobbies.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(lobbies)
}

/// A host joined the room: it sees who waits (when someone does).
pub(crate) async fn tell_joining_host(sig: &Signaling, s: &SocketRef, appointment_id: &str) {
    let waiting = sig
        .view(appointment_id, |rooms| rooms.lobby.entries(appointment_id))
        .await
        .unwrap_or_default();
    if !waiting.is_empty() {
        let _ = s.emit(
            "waiting-room",
            &json!({"appointmentId": appointment_id, "waiting": waiting}),
        );
    }
}

/// The appointment an `admit` or `decline` names, if `who` may decide for it: its doctor or
/// an administrator, not waiting in a lobby itself.
async fn host_of(
    sig: &Signaling,
    s: &SocketRef,
    who: &Identity,
    appointment_id: &str,
) -> Result<AppointmentAccess, EventError> {
    if sig.lobby_of_socket(&s.id.to_string()).await?.is_some() {
        return Err(EventError::forbidden(
            "you are waiting to be admitted yourself",
        ));
    }
    let appointment = sig
        .store
        .appointment(appointment_id)
        .await?
        .ok_or_else(|| EventError::not_found("no such appointment"))?;
    if !is_host(who, &appointment) {
        return Err(EventError::forbidden(
            "only the appointment's doctor or an administrator admits or declines",
        ));
    }
    if appointment.status != AppointmentStatus::Confirmed {
        return Err(EventError::forbidden(format!(
            "appointment is {}, rooms open only for confirmed appointments",
            appointment.status.as_str()
        )));
    }
    Ok(appointment)
}

fn host(who: &Identity) -> Host {
    Host {
        user_id: who.user_id.clone(),
        name: who.name.clone(),
        role: who.role,
    }
}

fn nobody_waiting() -> EventError {
    EventError::not_found("nobody of that id is waiting to be admitted")
}

/// `admit {appointmentId, userId}`: every socket of that user waiting in the lobby enters the
/// room as a `join-room` would have: `existing-peers`, then `admitted {appointmentId, selfId,
/// peers, mode, p2pTimeoutMs, iceServers}` (the join ack's fields), then what the join sets
/// off (relay); the members get `peer-joined`. Each admission is recorded before the join.
/// Ack `{ok, admitted: n}`; `not_found` when that user does not wait.
pub(crate) async fn admit(
    sig: &Signaling,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    let who = identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::admit(data)?;
    let appointment = host_of(sig, s, &who, &req.appointment_id).await?;
    let sockets = sig
        .view(&appointment.id, |rooms| {
            rooms.lobby.sockets_of(&appointment.id, &req.user_id)
        })
        .await?;
    if sockets.is_empty() {
        return Err(nobody_waiting());
    }
    // While draining only a consultation in progress takes anyone in.
    sig.check_join_while_draining(&appointment.id, None, &req.user_id)
        .await?;
    let mut admitted = 0;
    for socket_id in sockets {
        if admit_socket(sig, io, &who, &appointment, &socket_id).await? {
            admitted += 1;
        }
    }
    if admitted == 0 {
        return Err(nobody_waiting());
    }
    tell_hosts(sig, io, &appointment.id, &appointment.doctor_id).await;
    let mut fields = protocol::ok_fields();
    fields.insert("admitted".into(), json!(admitted));
    Ok(fields)
}

/// Moves one waiting socket into the room, in that socket's turn (after the events it sent
/// before, and before its disconnect clean-up), so that a socket gone meanwhile is never put
/// in a room. A socket of another node of the cluster is moved from here; a disconnect racing
/// the admission is cleaned up by its node's leave. Returns whether it was still waiting. A
/// store failure puts it back and refuses.
async fn admit_socket(
    sig: &Signaling,
    io: &SocketIo,
    by: &Identity,
    appointment: &AppointmentAccess,
    socket_id: &str,
) -> Result<bool, EventError> {
    let patient = socket_by_id(io, socket_id);
    if patient.is_none() && sig.shared.is_none() {
        return Ok(false);
    }
    let _turn = match patient
        .as_ref()
        .and_then(|p| p.extensions.get::<OrderGate>())
    {
        Some(gate) => Some(gate.enqueue().turn().await),
        None => None,
    };
    let gone = sig
        .change(&appointment.id, |rooms| {
            if rooms.lobby.lobby_of(socket_id) != Some(appointment.id.as_str()) {
                return None;
            }
            rooms.lobby.leave(socket_id)
        })
        .await?;
    let Some(gone) = gone else {
        return Ok(false);
    };
    let admission = Activity::WaitingAdmitted {
        appointment_id: appointment.id.clone(),
        member: Member::from(&gone.waiter),
        by: host(by),
    };
    if let Err(err) = sig.record(admission).await {
        put_back(sig, gone).await;
        return Err(err.into());
    }
    let patient_who = Identity {
        user_id: gone.waiter.user_id.clone(),
        name: gone.waiter.name.clone(),
        role: gone.waiter.role,
    };
    let joiner = match &patient {
        Some(p) => consult::Joiner::Here(p),
        None => consult::Joiner::Elsewhere(socket_id.to_owned()),
    };
    let entered = consult::enter_as_member(
        sig,
        io,
        &joiner,
        &patient_who,
        appointment,
        gone.waiter.avatar_seed.clone(),
        None,
    )
    .await;
    let (mut fields, then) = match entered {
        Ok(entered) => entered,
        Err(err) => {
            put_back(sig, gone).await;
            return Err(err);
        }
    };
    tracing::info!(
        appointment_id = %appointment.id,
        socket_id,
        user_id = %gone.waiter.user_id,
        by = %by.user_id,
        "admitted from the waiting room"
    );
    fields.insert("appointmentId".into(), json!(appointment.id));
    emit_to_socket(sig, io, socket_id, "admitted", &fields).await;
    if let Some(then) = then {
        then.run(sig, io).await;
    }
    Ok(true)
}

/// Puts a waiter whose admission or decline could not be completed back in its lobby.
async fn put_back(sig: &Signaling, gone: Gone) {
    let appointment_id = gone.appointment_id.clone();
    if let Err(err) = sig
        .change(&appointment_id, |rooms| rooms.lobby.put_back(gone))
        .await
    {
        tracing::error!(error = %err, appointment_id, "could not put a waiter back");
    }
}

/// `decline {appointmentId, userId, reason?}`: every socket of that user waiting in the lobby
/// leaves it and gets `declined {appointmentId, reason}` (`reason` null when none was given; it
/// is relayed, never stored). It may ask again. Ack `{ok, declined: n}`; `not_found` when that
/// user does not wait.
pub(crate) async fn decline(
    sig: &Signaling,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    let who = identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::decline(data)?;
    let appointment = host_of(sig, s, &who, &req.appointment_id).await?;
    let gone: Vec<Gone> = sig
        .change(&appointment.id, |rooms| {
            let sockets = rooms.lobby.sockets_of(&appointment.id, &req.user_id);
            sockets
                .iter()
                .filter_map(|id| rooms.lobby.leave(id))
                .collect()
        })
        .await?;
    if gone.is_empty() {
        return Err(nobody_waiting());
    }
    // Recorded one by one; a store failure leaves that socket and the rest waiting.
    let mut declined = Vec::with_capacity(gone.len());
    let mut failure = None;
    let mut gone = gone.into_iter();
    for g in gone.by_ref() {
        let activity = Activity::WaitingDeclined {
            appointment_id: appointment.id.clone(),
            member: Member::from(&g.waiter),
            by: host(&who),
        };
        match sig.record(activity).await {
            Ok(()) => declined.push(g),
            Err(err) => {
                failure = Some(err);
                put_back(sig, g).await;
                break;
            }
        }
    }
    for g in gone {
        put_back(sig, g).await;
    }
    for g in &declined {
        tracing::info!(
            appointment_id = %appointment.id,
            socket_id = %g.waiter.socket_id,
            user_id = %g.waiter.user_id,
            by = %who.user_id,
            "declined from the waiting room"
        );
        emit_to_socket(
            sig,
            io,
            &g.waiter.socket_id,
            "declined",
            &json!({"appointmentId": appointment.id, "reason": req.reason}),
        )
        .await;
    }
    tell_hosts(sig, io, &appointment.id, &appointment.doctor_id).await;
    if let Some(err) = failure {
        return Err(err.into());
    }
    let mut fields = protocol::ok_fields();
    fields.insert("declined".into(), json!(declined.len()));
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn waiter(socket: &str, user: &str, secs: i64) -> Waiter {
        Waiter {
            socket_id: socket.into(),
            user_id: user.into(),
            name: format!("{user} name"),
            role: Role::Patient,
            avatar_seed: user.into(),
            since: OffsetDateTime::UNIX_EPOCH + Duration::seconds(secs),
        }
    }

    #[test]
    fn waiters_are_listed_in_arrival_order_for_their_doctor() {
        let mut lobby = Lobby::default();
        assert!(lobby.wait("a1", "doc", waiter("s1", "pat", 1)));
        assert!(lobby.wait("a1", "doc", waiter("s2", "pat", 2)));
        assert!(lobby.wait("a2", "doc", waiter("s3", "kim", 3)));
        assert!(lobby.wait("a3", "other", waiter("s4", "lee", 4)));
        assert!(
            !lobby.wait("a1", "doc", waiter("s1", "pat", 9)),
            "waits already"
        );
        assert_eq!(lobby.waiting_count(), 4);
        assert_eq!(lobby.lobby_of("s2"), Some("a1"));
        let entries = lobby.entries("a1");
        assert_eq!(
            entries
                .iter()
                .map(|e| e.socket_id.as_str())
                .collect::<Vec<_>>(),
            ["s1", "s2"]
        );
        assert_eq!(entries[0].since, "1970-01-01T00:00:01.000Z");
        assert_eq!(entries[0].name, "pat name");
        let mine = lobby.lobbies_of_doctor("doc");
        assert_eq!(
            mine.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["a1", "a2"]
        );
        assert!(lobby.lobbies_of_doctor("nobody").is_empty());
        assert_eq!(lobby.sockets_of("a1", "pat"), ["s1", "s2"]);
        assert!(lobby.sockets_of("a1", "kim").is_empty());
        assert!(lobby.entries("a9").is_empty());
    }

    #[test]
    fn leaving_forgets_an_emptied_lobby_and_names_its_doctor() {
        let mut lobby = Lobby::default();
        lobby.wait("a1", "doc", waiter("s1", "pat", 1));
        lobby.wait("a1", "doc", waiter("s2", "kim", 2));
        let gone = lobby.leave("s1").expect("waited");
        assert_eq!(
            (gone.appointment_id.as_str(), gone.doctor_id.as_str()),
            ("a1", "doc")
        );
        assert_eq!(gone.waiter.socket_id, "s1");
        assert!(lobby.leave("s1").is_none());
        let last = lobby.leave("s2").expect("waited");
        assert_eq!(last.doctor_id, "doc", "known even when the lobby empties");
        assert!(lobby.lobbies_of_doctor("doc").is_empty());
        assert_eq!(lobby.waiting_count(), 0);
        assert!(lobby.waiter("a1", "s2").is_none());
    }

    #[test]
    fn a_waiter_put_back_takes_its_place_by_arrival() {
        let mut lobby = Lobby::default();
        lobby.wait("a1", "doc", waiter("s1", "pat", 1));
        lobby.wait("a1", "doc", waiter("s2", "kim", 2));
        lobby.wait("a1", "doc", waiter("s3", "lee", 3));
        let gone = lobby.leave("s2").unwrap();
        lobby.put_back(gone.clone());
        let order: Vec<_> = lobby
            .entries("a1")
            .into_iter()
            .map(|e| e.socket_id)
            .collect();
        assert_eq!(order, ["s1", "s2", "s3"]);
        // Into an emptied (forgotten) lobby too, with its doctor.
        let mut lobby = Lobby::default();
        lobby.put_back(gone);
        assert_eq!(lobby.lobbies_of_doctor("doc").len(), 1);
        assert_eq!(lobby.lobby_of("s2"), Some("a1"));
    }

    #[test]
    fn admissions_last_until_they_are_forgotten_and_are_per_appointment() {
        let mut lobby = Lobby::default();
        assert!(!lobby.is_admitted("a1", "pat"));
        lobby.admit("a1", "pat");
        assert!(lobby.is_admitted("a1", "pat"));
        assert!(!lobby.is_admitted("a2", "pat"));
        assert!(!lobby.is_admitted("a1", "kim"));
        lobby.admit("a1", "kim");
        lobby.revoke("a1", "kim");
        assert!(!lobby.is_admitted("a1", "kim"));
        assert!(lobby.is_admitted("a1", "pat"), "others stay admitted");
        lobby.forget_admissions("a1");
        assert!(!lobby.is_admitted("a1", "pat"));
    }
}
