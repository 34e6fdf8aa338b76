//! Consult-room membership: a plain registry with no I/O, owned by the signaling layer behind one
//! short-lived lock. Socket.IO rooms carry the broadcasts; this is the source of truth for who is in.
//!
//! In a cluster each appointment's part of the registry lives in Redis ([`SharedConsult`], see
//! [`crate::shared`]): it is taken into a registry of its own for each change, and this node's
//! registry keeps only which room and lobby its own sockets are in.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::lobby::{Gone, Lobby, SharedLobby};
use crate::protocol::{MediaState, Peer};

/// Why a room's media goes through the SFU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayReason {
    P2pFailed,
    P2pTimeout,
    RoomSize,
    Forced,
}

impl RelayReason {
    pub const ALL: [RelayReason; 4] = [
        RelayReason::P2pFailed,
        RelayReason::P2pTimeout,
        RelayReason::RoomSize,
        RelayReason::Forced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RelayReason::P2pFailed => "p2p-failed",
            RelayReason::P2pTimeout => "p2p-timeout",
            RelayReason::RoomSize => "room-size",
            RelayReason::Forced => "forced",
        }
    }
}

/// Members from this count on are always relayed.
pub const RELAY_ROOM_SIZE: usize = 3;

#[derive(Debug, Default)]
pub struct Room {
    /// In join order.
    pub members: Vec<Peer>,
    pub relay: Option<RelayReason>,
    /// Member socket → the node it is connected to.
    homes: HashMap<String, String>,
}

impl Room {
    /// The node member `socket_id` is connected to.
    pub fn home_of(&self, socket_id: &str) -> Option<&str> {
        self.homes.get(socket_id).map(String::as_str)
    }
}

#[derive(Debug, PartialEq)]
pub struct Joined {
    /// Everyone already in the room, the joiner excluded.
    pub existing: Vec<Peer>,
    /// Set (to `RoomSize`) when this join made the room big enough to be relayed, even if it
    /// was already relayed for another reason: every member is to be told.
    pub relay_activated: Option<RelayReason>,
    /// False when the socket was already in this room (nothing to announce).
    pub is_new: bool,
}

#[derive(Debug, PartialEq)]
pub struct Left {
    pub room_id: String,
    pub peer: Peer,
    pub room_now_empty: bool,
    /// Whether the room was relayed when the member left (a room stays relayed until it
    /// empties, so: whether the member's media went through the SFU at some point).
    pub relayed: bool,
}

/// How long a membership that ended with its connection can still be named by the client
/// coming back (`join-room` `previousSocketId`).
pub const DEPARTED_KEPT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Rooms {
    /// The node whose sockets join through this registry ("" for a single node).
    node: String,
    rooms: HashMap<String, Room>,
    room_of_socket: HashMap<String, String>,
    /// Memberships that ended with their connection, not by leaving: socket id → (room, user,
    /// when), kept [`DEPARTED_KEPT`].
    departed: HashMap<String, (String, String, Instant)>,
    /// The waiting rooms, and who has been in each room since it last emptied (admitted).
    pub lobby: Lobby,
}

impl Rooms {
    /// An empty registry for the sockets of `node`.
    pub fn on_node(node: &str) -> Rooms {
        Rooms {
            node: node.to_owned(),
            lobby: Lobby::on_node(node),
            ..Rooms::default()
        }
    }

    /// Adds `peer` to `room_id`. The caller has already made it leave any other room.
    pub fn join(&mut self, room_id: &str, peer: Peer) -> Joined {
        let room = self.rooms.entry(room_id.to_owned()).or_default();
        if room.members.iter().any(|m| m.socket_id == peer.socket_id) {
            return Joined {
                existing: others(room, &peer.socket_id),
                relay_activated: None,
                is_new: false,
            };
        }
        let existing = room.members.clone();
        self.lobby.admit(room_id, &peer.user_id);
        self.room_of_socket
            .insert(peer.socket_id.clone(), room_id.to_owned());
        room.homes.insert(peer.socket_id.clone(), self.node.clone());
        room.members.push(peer);
        // From the relay size on the room is relayed because of its size, whatever relayed it
        // before (a failed or slow direct path, `sfu-only`): every member is told so once.
        let relay_activated =
            if room.members.len() >= RELAY_ROOM_SIZE && room.relay != Some(RelayReason::RoomSize) {
                room.relay = Some(RelayReason::RoomSize);
                room.relay
            } else {
                None
            };
        Joined {
            existing,
            relay_activated,
            is_new: true,
        }
    }

    /// Removes the socket from its room, if any; an emptied room is forgotten (relay state too).
    pub fn leave(&mut self, socket_id: &str) -> Option<Left> {
        let room_id = self.room_of_socket.remove(socket_id)?;
        let room = self.rooms.get_mut(&room_id)?;
        let index = room.members.iter().position(|m| m.socket_id == socket_id)?;
        let peer = room.members.remove(index);
        room.homes.remove(socket_id);
        let room_now_empty = room.members.is_empty();
        let relayed = room.relay.is_some();
        if room_now_empty {
            self.rooms.remove(&room_id);
            self.lobby.forget_admissions(&room_id);
        }
        Some(Left {
            relayed,
            room_id,
            peer,
            room_now_empty,
        })
    }

    /// Remembers that `left` ended with its connection (see [`Rooms::departed_from`]).
    pub fn note_departed(&mut self, left: &Left, now: Instant) {
        self.departed
            .retain(|_, (_, _, at)| now.duration_since(*at) < DEPARTED_KEPT);
        self.departed.insert(
            left.peer.socket_id.clone(),
            (left.room_id.clone(), left.peer.user_id.clone(), now),
        );
    }

    /// Whether `socket_id` was `user_id`'s in `room_id` and ended with its connection less
    /// than [`DEPARTED_KEPT`] ago.
    pub fn departed_from(
        &self,
        socket_id: &str,
        room_id: &str,
        user_id: &str,
        now: Instant,
    ) -> bool {
        self.departed
            .get(socket_id)
            .is_some_and(|(room, user, at)| {
                room == room_id && user == user_id && now.duration_since(*at) < DEPARTED_KEPT
            })
    }

    /// Whether `room_id` is in progress for a joiner (`user_id`, naming `previous_socket_id`
    /// if it came back on a new connection): someone is in it, or the joiner names its own
    /// membership of it that ended with its connection (see [`Rooms::departed_from`]).
    pub fn in_progress_for(
        &self,
        room_id: &str,
        previous_socket_id: Option<&str>,
        user_id: &str,
        now: Instant,
    ) -> bool {
        self.rooms.contains_key(room_id)
            || previous_socket_id
                .is_some_and(|previous| self.departed_from(previous, room_id, user_id, now))
    }

    /// Remembers a member's last media state (so later joiners see it in their peers).
    /// Returns its room, or `None` for a socket in no room (nothing changes).
    pub fn set_media(&mut self, socket_id: &str, media: MediaState) -> Option<&str> {
        let room_id = self.room_of_socket.get(socket_id)?;
        let member = self
            .rooms
            .get_mut(room_id)?
            .members
            .iter_mut()
            .find(|m| m.socket_id == socket_id)?;
        member.media = Some(media);
        Some(room_id)
    }

    pub fn room_of(&self, socket_id: &str) -> Option<&str> {
        self.room_of_socket.get(socket_id).map(String::as_str)
    }

    pub fn get(&self, room_id: &str) -> Option<&Room> {
        self.rooms.get(room_id)
    }

    /// True when both sockets are members of the same room.
    pub fn share_room(&self, a: &str, b: &str) -> bool {
        match (self.room_of(a), self.room_of(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        }
    }

    /// Marks the room relayed; returns true only the first time (so activation is announced once).
    pub fn activate_relay(&mut self, room_id: &str, reason: RelayReason) -> bool {
        match self.rooms.get_mut(room_id) {
            Some(room) if room.relay.is_none() => {
                room.relay = Some(reason);
                true
            }
            _ => false,
        }
    }

    /// Every room with members, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Room)> {
        self.rooms.iter().map(|(id, room)| (id.as_str(), room))
    }

    /// The socket ids of a room's members, in join order (empty for an unknown room).
    pub fn member_ids(&self, room_id: &str) -> Vec<String> {
        self.rooms
            .get(room_id)
            .map(|r| r.members.iter().map(|m| m.socket_id.clone()).collect())
            .unwrap_or_default()
    }

    /// Rooms with a member on this node.
    pub fn room_count(&self) -> usize {
        self.room_of_socket.values().collect::<HashSet<_>>().len()
    }

    pub fn participant_count(&self) -> usize {
        self.room_of_socket.len()
    }
}

/// One appointment's room and lobby as the nodes of a cluster share them (JSON in Redis).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SharedConsult {
    #[serde(default)]
    members: Vec<Homed<Peer>>,
    #[serde(default)]
    relay: Option<RelayReason>,
    #[serde(default)]
    lobby: Option<SharedLobby>,
    /// See [`Lobby::is_admitted`].
    #[serde(default)]
    admitted: Vec<String>,
    /// See [`Rooms::departed_from`].
    #[serde(default)]
    departed: Vec<Departure>,
}

impl SharedConsult {
    /// Nothing left to share: no member, nobody waiting, no departure to remember.
    pub fn is_empty(&self) -> bool {
        !self.has_people() && self.departed.is_empty()
    }

    /// Whether someone is in the room or waits in its lobby.
    pub fn has_people(&self) -> bool {
        !self.members.is_empty() || self.lobby.is_some()
    }

    /// The sockets in the room, and the sockets waiting in its lobby.
    pub fn sockets(&self) -> (HashSet<&str>, HashSet<&str>) {
        let members = self.members.iter().map(|m| m.item.socket_id.as_str());
        let waiters = self.lobby.iter().flat_map(|l| l.socket_ids());
        (members.collect(), waiters.collect())
    }

    /// The nodes its members and waiters are connected to.
    pub fn nodes(&self) -> HashSet<&str> {
        let waiters = self.lobby.iter().flat_map(|l| l.homes());
        self.members
            .iter()
            .map(|m| m.node.as_str())
            .chain(waiters)
            .collect()
    }
}

/// Something of a socket, and the node the socket is connected to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Homed<T> {
    #[serde(flatten)]
    pub item: T,
    pub node: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Departure {
    socket_id: String,
    user_id: String,
    /// How long ago, when written (instants do not cross processes).
    age_ms: u64,
}

impl Rooms {
    /// Takes everything of `room_id` out of this registry (its room, lobby, admissions and
    /// departures), as the cluster shares it.
    pub fn take_shared(&mut self, room_id: &str, now: Instant) -> SharedConsult {
        let room = self.rooms.remove(room_id).unwrap_or_default();
        for member in &room.members {
            self.room_of_socket.remove(&member.socket_id);
        }
        let mut departed = Vec::new();
        self.departed.retain(|socket_id, (room, user_id, at)| {
            if room != room_id {
                return true;
            }
            let age = now.saturating_duration_since(*at);
            if age < DEPARTED_KEPT {
                departed.push(Departure {
                    socket_id: socket_id.clone(),
                    user_id: user_id.clone(),
                    age_ms: age.as_millis() as u64,
                });
            }
            false
        });
        let (lobby, admitted) = self.lobby.take_shared(room_id);
        let mut homes = room.homes;
        SharedConsult {
            members: room
                .members
                .into_iter()
                .map(|peer| Homed {
                    node: homes.remove(&peer.socket_id).unwrap_or_default(),
                    item: peer,
                })
                .collect(),
            relay: room.relay,
            lobby,
            admitted,
            departed,
        }
    }

    /// Puts `room_id` as the cluster shares it into this registry (which holds nothing of it).
    pub fn put_shared(&mut self, room_id: &str, shared: SharedConsult, now: Instant) {
        if !shared.members.is_empty() {
            let mut room = Room {
                relay: shared.relay,
                ..Room::default()
            };
            for Homed { item: peer, node } in shared.members {
                self.room_of_socket
                    .insert(peer.socket_id.clone(), room_id.to_owned());
                room.homes.insert(peer.socket_id.clone(), node);
                room.members.push(peer);
            }
            self.rooms.insert(room_id.to_owned(), room);
        }
        for d in shared.departed {
            let at = now
                .checked_sub(Duration::from_millis(d.age_ms))
                .unwrap_or(now);
            self.departed
                .insert(d.socket_id, (room_id.to_owned(), d.user_id, at));
        }
        self.lobby
            .put_shared(room_id, shared.lobby, shared.admitted);
    }

    /// Makes this node's index of its own sockets (which room, which lobby) agree with
    /// `shared`, the state of `room_id` just written.
    pub fn index_own_sockets(&mut self, room_id: &str, shared: &SharedConsult) {
        self.room_of_socket.retain(|_, room| room != room_id);
        for member in shared.members.iter().filter(|m| m.node == self.node) {
            self.room_of_socket
                .insert(member.item.socket_id.clone(), room_id.to_owned());
        }
        self.lobby.index_own_sockets(room_id, shared.lobby.as_ref());
    }

    /// Takes the members and waiters of `room_id` connected to a node `dead` says is gone out
    /// of the room and lobby: their memberships ended with their connections.
    pub fn evict(
        &mut self,
        room_id: &str,
        dead: impl Fn(&str) -> bool,
        now: Instant,
    ) -> (Vec<Left>, Vec<Gone>) {
        let members: Vec<String> = self
            .rooms
            .get(room_id)
            .map(|room| {
                room.members
                    .iter()
                    .filter(|m| room.home_of(&m.socket_id).is_some_and(&dead))
                    .map(|m| m.socket_id.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut left = Vec::new();
        for socket_id in members {
            if let Some(l) = self.leave(&socket_id) {
                self.note_departed(&l, now);
                left.push(l);
            }
        }
        let gone = self
            .lobby
            .waiters_on(room_id, &dead)
            .into_iter()
            .filter_map(|socket_id| self.lobby.leave(&socket_id))
            .collect();
        (left, gone)
    }
}

fn others(room: &Room, socket_id: &str) -> Vec<Peer> {
    room.members
        .iter()
        .filter(|m| m.socket_id != socket_id)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    fn peer(socket: &str, user: &str) -> Peer {
        Peer {
            socket_id: socket.into(),
            user_id: user.into(),
            name: user.into(),
            role: Role::Patient,
            avatar_seed: user.into(),
            replaces: None,
            media: None,
        }
    }

    #[test]
    fn joiners_see_earlier_members_in_order() {
        let mut rooms = Rooms::default();
        assert!(rooms.join("r", peer("s1", "u1")).existing.is_empty());
        let j = rooms.join("r", peer("s2", "u2"));
        assert_eq!(j.existing, vec![peer("s1", "u1")]);
        assert!(j.is_new);
        assert_eq!(rooms.participant_count(), 2);
        assert_eq!(rooms.room_count(), 1);
        assert!(rooms.share_room("s1", "s2"));
        assert_eq!(rooms.member_ids("r"), vec!["s1", "s2"]);
        assert!(rooms.member_ids("elsewhere").is_empty());
    }

    #[test]
    fn a_members_media_state_is_kept_for_later_joiners() {
        let mut rooms = Rooms::default();
        rooms.join("r", peer("s1", "u1"));
        let off = MediaState {
            audio: false,
            video: false,
            screen: true,
            screen_track_id: Some("t1".into()),
        };
        assert_eq!(rooms.set_media("s1", off.clone()), Some("r"));
        let later = rooms.join("r", peer("s2", "u2"));
        assert_eq!(later.existing[0].media, Some(off.clone()));
        // A socket in no room changes nothing.
        assert_eq!(rooms.set_media("s9", off), None);
        assert_eq!(rooms.get("r").unwrap().members[1].media, None);
        // Gone with the membership: the same user back on a new socket starts without one.
        rooms.leave("s1");
        rooms.join("r", peer("s3", "u1"));
        assert!(
            rooms
                .get("r")
                .unwrap()
                .members
                .iter()
                .all(|m| m.media.is_none())
        );
    }

    #[test]
    fn joining_twice_announces_nothing_new() {
        let mut rooms = Rooms::default();
        rooms.join("r", peer("s1", "u1"));
        rooms.join("r", peer("s2", "u2"));
        let again = rooms.join("r", peer("s2", "u2"));
        assert!(!again.is_new);
        assert_eq!(again.existing, vec![peer("s1", "u1")]);
        assert_eq!(rooms.participant_count(), 2);
    }

    #[test]
    fn the_third_member_relays_the_room_once() {
        let mut rooms = Rooms::default();
        rooms.join("r", peer("s1", "u1"));
        assert_eq!(rooms.join("r", peer("s2", "u2")).relay_activated, None);
        assert_eq!(
            rooms.join("r", peer("s3", "u3")).relay_activated,
            Some(RelayReason::RoomSize)
        );
        assert_eq!(rooms.join("r", peer("s4", "u4")).relay_activated, None);
        assert!(!rooms.activate_relay("r", RelayReason::Forced));
    }

    #[test]
    fn the_third_member_turns_a_room_relayed_for_another_reason_into_room_size() {
        let mut rooms = Rooms::default();
        rooms.join("r", peer("s1", "u1"));
        rooms.join("r", peer("s2", "u2"));
        assert!(rooms.activate_relay("r", RelayReason::P2pFailed));
        assert_eq!(
            rooms.join("r", peer("s3", "u3")).relay_activated,
            Some(RelayReason::RoomSize)
        );
        assert_eq!(
            rooms.get("r").and_then(|r| r.relay),
            Some(RelayReason::RoomSize)
        );
        // Told once: a fourth member, or a third coming back, finds it relayed by size already.
        assert_eq!(rooms.join("r", peer("s4", "u4")).relay_activated, None);
        rooms.leave("s4");
        rooms.leave("s3");
        assert_eq!(rooms.join("r", peer("s5", "u5")).relay_activated, None);
    }

    #[test]
    fn explicit_relay_activation_is_reported_once() {
        let mut rooms = Rooms::default();
        rooms.join("r", peer("s1", "u1"));
        assert!(rooms.activate_relay("r", RelayReason::P2pFailed));
        assert!(!rooms.activate_relay("r", RelayReason::P2pTimeout));
        assert!(!rooms.activate_relay("missing", RelayReason::Forced));
        assert_eq!(
            rooms.get("r").and_then(|r| r.relay),
            Some(RelayReason::P2pFailed)
        );
    }

    #[test]
    fn leaving_forgets_empty_rooms_and_their_relay_state() {
        let mut rooms = Rooms::default();
        rooms.join("r", peer("s1", "u1"));
        rooms.join("r", peer("s2", "u2"));
        rooms.activate_relay("r", RelayReason::Forced);
        let left = rooms.leave("s1").unwrap();
        assert_eq!(left.room_id, "r");
        assert!(!left.room_now_empty);
        assert!(!rooms.share_room("s1", "s2"));
        assert!(rooms.leave("s1").is_none());
        assert!(rooms.leave("s2").unwrap().room_now_empty);
        assert_eq!(rooms.room_count(), 0);
        rooms.join("r", peer("s3", "u3"));
        assert_eq!(rooms.get("r").and_then(|r| r.relay), None);
    }

    #[test]
    fn a_membership_ended_by_its_connection_is_remembered_for_a_while_by_room_and_user() {
        let mut rooms = Rooms::default();
        rooms.join("a1", peer("s1", "u1"));
        let left = rooms.leave("s1").expect("left");
        let t0 = Instant::now();
        rooms.note_departed(&left, t0);
        assert!(rooms.departed_from("s1", "a1", "u1", t0 + Duration::from_secs(5)));
        assert!(!rooms.departed_from("s1", "a1", "u2", t0), "another user");
        assert!(!rooms.departed_from("s1", "a2", "u1", t0), "another room");
        assert!(!rooms.departed_from("s9", "a1", "u1", t0), "another socket");
        assert!(
            !rooms.departed_from("s1", "a1", "u1", t0 + DEPARTED_KEPT),
            "too late"
        );
        // Old entries go as new ones come: the table does not grow without end.
        rooms.join("a1", peer("s2", "u1"));
        let left = rooms.leave("s2").expect("left");
        rooms.note_departed(&left, t0 + DEPARTED_KEPT);
        assert_eq!(rooms.departed.len(), 1);
    }

    #[test]
    fn a_room_is_in_progress_while_someone_is_in_it_or_for_a_member_coming_back() {
        let mut rooms = Rooms::default();
        let t0 = Instant::now();
        assert!(!rooms.in_progress_for("a1", None, "u1", t0), "nobody in it");
        rooms.join("a1", peer("s1", "u1"));
        assert!(rooms.in_progress_for("a1", None, "u2", t0));
        assert!(!rooms.in_progress_for("a2", None, "u1", t0), "another room");
        let left = rooms.leave("s1").expect("left");
        rooms.note_departed(&left, t0);
        assert!(!rooms.in_progress_for("a1", None, "u1", t0), "empty again");
        assert!(
            rooms.in_progress_for("a1", Some("s1"), "u1", t0),
            "its member, back"
        );
        assert!(
            !rooms.in_progress_for("a1", Some("s1"), "u2", t0),
            "another user"
        );
        assert!(
            !rooms.in_progress_for("a1", Some("s9"), "u1", t0),
            "another socket"
        );
    }

    #[test]
    fn an_appointment_shared_through_json_comes_back_whole_and_keeps_each_sockets_node() {
        let t0 = Instant::now();
        let mut a = Rooms::on_node("a");
        a.join("r", peer("s1", "u1"));
        a.set_media(
            "s1",
            MediaState {
                audio: false,
                video: true,
                screen: false,
                screen_track_id: None,
            },
        );
        a.activate_relay("r", RelayReason::P2pFailed);
        a.join("r", peer("s2", "u2"));
        let left = a.leave("s2").expect("left");
        a.note_departed(&left, t0);
        let waiter = crate::lobby::Waiter {
            socket_id: "w1".into(),
            user_id: "u3".into(),
            name: "u3".into(),
            role: Role::Patient,
            avatar_seed: "u3".into(),
            since: time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        };
        a.lobby.wait("r", "doc", waiter.clone());

        let text = serde_json::to_string(&a.take_shared("r", t0)).unwrap();
        assert_eq!(a.participant_count(), 0, "nothing of it left behind");
        assert_eq!(a.lobby.waiting_count(), 0);
        let mut b = Rooms::on_node("b");
        b.put_shared("r", serde_json::from_str(&text).unwrap(), t0);
        b.join("r", peer("s4", "u4"));
        let room = b.get("r").unwrap();
        assert_eq!(room.members[0].media.as_ref().map(|m| m.audio), Some(false));
        assert_eq!(room.relay, Some(RelayReason::P2pFailed));
        assert_eq!(
            (room.home_of("s1"), room.home_of("s4")),
            (Some("a"), Some("b"))
        );
        assert!(b.departed_from("s2", "r", "u2", t0 + Duration::from_secs(1)));
        assert_eq!(b.lobby.waiter("r", "w1"), Some(&waiter));
        assert_eq!(b.lobby.doctor_of("r"), Some("doc"));
        assert!(b.lobby.is_admitted("r", "u1"));

        // Each node indexes only its own sockets.
        let shared = b.take_shared("r", t0);
        let mut local_a = Rooms::on_node("a");
        local_a.index_own_sockets("r", &shared);
        assert_eq!(local_a.room_of("s1"), Some("r"));
        assert_eq!(local_a.room_of("s4"), None);
        assert_eq!(local_a.lobby.lobby_of("w1"), Some("r"));
        assert_eq!(local_a.room_count(), 1);
    }

    #[test]
    fn a_dead_nodes_members_and_waiters_are_evicted_as_disconnected() {
        let t0 = Instant::now();
        let mut a = Rooms::on_node("a");
        a.join("r", peer("s1", "u1"));
        let mut shared = a.take_shared("r", t0);
        let mut b = Rooms::on_node("b");
        b.put_shared("r", shared, t0);
        b.join("r", peer("s2", "u2"));
        shared = b.take_shared("r", t0);
        assert_eq!(shared.nodes(), HashSet::from(["a", "b"]));

        let mut c = Rooms::on_node("c");
        c.put_shared("r", shared, t0);
        let (left, gone) = c.evict("r", |node| node == "a", t0);
        assert_eq!(
            left.iter()
                .map(|l| l.peer.socket_id.as_str())
                .collect::<Vec<_>>(),
            ["s1"]
        );
        assert!(gone.is_empty());
        assert_eq!(c.member_ids("r"), ["s2"]);
        assert!(
            c.departed_from("s1", "r", "u1", t0),
            "it may come back naming its socket"
        );
        // Departures past keeping are not written back.
        let later = c.take_shared("r", t0 + DEPARTED_KEPT);
        assert!(later.has_people());
        c.put_shared("r", later, t0 + DEPARTED_KEPT);
        assert!(!c.departed_from("s1", "r", "u1", t0 + DEPARTED_KEPT));
    }
}
