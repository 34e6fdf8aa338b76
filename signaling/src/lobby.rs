//! The waiting rooms' registry: who waits in which appointment's lobby, since when, for which
//! doctor, and who has been in each room since it last emptied. A plain type with no I/O, kept
//! inside [`Rooms`](crate::rooms::Rooms) so that leaving a lobby and entering the room happen
//! under one lock; [`crate::waiting`] holds the events. `SharedLobby` is one appointment's lobby
//! as a cluster shares it.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::Role;
use crate::activity::Member;
use crate::protocol;
use crate::rooms::Homed;

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
