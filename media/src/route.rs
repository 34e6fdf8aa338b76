//! Which shard a room, a command or a datagram belongs to, when the SFU runs several
//! (`media.workers`). Sans-IO: plain functions and a table the driver keeps per shard.
//!
//! - A **room** lives on one shard, chosen by a stable hash of its id: every command names its
//!   room, so [`crate::SfuHandle`] sends it straight to the owner.
//! - Every ICE **ufrag** a shard hands out starts with the shard's index ([`tag_ufrag`]), so a
//!   STUN request names its owner in its USERNAME, whichever worker's socket it arrived on.
//! - **DTLS, RTP and RTCP** carry no such name: they are routed by source address. A shard
//!   learns an address only from an authenticated STUN request (the demux's rule) and then
//!   tells every other shard ([`AddressChange`]); each keeps those in its [`Router`].
//!
//! All shards read the one UDP port through sockets of one `SO_REUSEPORT` group. The kernel
//! spreads datagrams over them by source address, so a datagram lands on a given worker
//! whichever room it is for; the router hands it to the owner when that is another shard.

use crate::demux::{Class, Remote, StunUser, classify, stun_local_ufrag};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// How many hex digits of a ufrag name its shard (so at most 256 shards).
const TAG_LEN: usize = 2;
pub const MAX_SHARDS: usize = 256;

/// The shard that owns `room` among `shards`. Stable across runs and processes (SipHash with
/// fixed keys), so any handle computes the same owner.
pub fn shard_of_room(room: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    #[allow(deprecated)] // SipHasher's fixed keys are the point: the same owner everywhere.
    let mut h = std::hash::SipHasher::new();
    room.hash(&mut h);
    (h.finish() % shards as u64) as usize
}

/// Puts `shard`'s index at the start of a random `ufrag` (its first characters are replaced:
/// the ufrag stays the same length and still random in the rest).
pub fn tag_ufrag(ufrag: &mut String, shard: usize) {
    debug_assert!(shard < MAX_SHARDS && ufrag.len() > TAG_LEN + 4);
    ufrag.replace_range(..TAG_LEN, &format!("{shard:02x}"));
}

/// The shard named by a ufrag [`tag_ufrag`] produced, if it is one of `shards`.
pub fn shard_of_ufrag(ufrag: &str, shards: usize) -> Option<usize> {
    let tag = ufrag.get(..TAG_LEN)?;
    let shard = usize::from_str_radix(tag, 16).ok()?;
    (shard < shards).then_some(shard)
}

/// A shard learnt or forgot a client address (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressChange {
    Learned(Remote),
    Forgotten(Remote),
}

/// Where a datagram goes, as one shard's [`Router`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This shard: its own, or garbage it drops and counts.
    Here,
    /// Another shard's.
    Shard(usize),
    /// Media from an address no shard is known to have learnt (this shard drops it, unless an
    /// announcement still queued says otherwise).
    Unknown,
}

/// One shard's view of where datagrams go: its own demux answers for the addresses it learnt;
/// this table holds the addresses the other shards announced.
#[derive(Debug)]
pub struct Router {
    me: usize,
    shards: usize,
    elsewhere: HashMap<Remote, usize>,
}

impl Router {
    pub fn new(me: usize, shards: usize) -> Self {
        Self {
            me,
            shards,
            elsewhere: HashMap::new(),
        }
    }

    /// Records what shard `from` announced.
    pub fn apply(&mut self, from: usize, change: AddressChange) {
        match change {
            AddressChange::Learned(addr) => {
                self.elsewhere.insert(addr, from);
            }
            AddressChange::Forgotten(addr) => {
                if self.elsewhere.get(&addr) == Some(&from) {
                    self.elsewhere.remove(&addr);
                }
            }
        }
    }

    /// The shard that must handle `datagram` from `source`. `known_here` asks this shard's
    /// demux; with one shard nothing is looked up.
    pub fn owner(
        &self,
        source: Remote,
        datagram: &[u8],
        known_here: impl FnOnce(&Remote) -> bool,
    ) -> Owner {
        if self.shards <= 1 {
            return Owner::Here;
        }
        let by_address = || {
            if known_here(&source) {
                Owner::Here
            } else {
                self.elsewhere
                    .get(&source)
                    .map_or(Owner::Unknown, |s| Owner::Shard(*s))
            }
        };
        let owner = match classify(datagram) {
            Class::Stun => match stun_local_ufrag(datagram) {
                Ok(StunUser::Ufrag(ufrag)) => {
                    shard_of_ufrag(ufrag, self.shards).map_or(Owner::Here, Owner::Shard)
                }
                Ok(StunUser::None) => by_address(),
                Err(_) => Owner::Here,
            },
            Class::Dtls | Class::Rtp => by_address(),
            Class::Other => Owner::Here,
        };
        match owner {
            Owner::Shard(s) if s == self.me => Owner::Here,
            other => other,
        }
    }

    /// Whether no address of another shard is known (so once everyone has left).
    pub fn is_empty(&self) -> bool {
        self.elsewhere.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn addr(port: u16) -> Remote {
        Remote::udp(SocketAddr::from(([192, 0, 2, 1], port)))
    }

    /// A STUN binding request whose USERNAME is `user` (integrity is the owner's business).
    fn binding_request(user: &str) -> Vec<u8> {
        let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xA4, 0x42];
        m.extend_from_slice(&[9u8; 12]);
        m.extend_from_slice(&0x0006u16.to_be_bytes());
        m.extend_from_slice(&(user.len() as u16).to_be_bytes());
        m.extend_from_slice(user.as_bytes());
        while m.len() % 4 != 0 {
            m.push(0);
        }
        let body = (m.len() - 20) as u16;
        m[2..4].copy_from_slice(&body.to_be_bytes());
        m
    }

    const RTP: [u8; 12] = [0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 7];

    #[test]
    fn rooms_spread_over_shards_and_stay_put() {
        let mut per_shard = [0usize; 4];
        for i in 0..400 {
            let room = format!("appointment-{i}");
            let s = shard_of_room(&room, 4);
            assert_eq!(s, shard_of_room(&room, 4), "stable");
            per_shard[s] += 1;
        }
        assert!(per_shard.iter().all(|n| *n > 60), "{per_shard:?}");
        assert_eq!(shard_of_room("any", 1), 0);
    }

    #[test]
    fn a_tagged_ufrag_names_its_shard() {
        for shard in [0, 1, 9, 200, 255] {
            let mut ufrag = "AbCdEfGhIjKlMnOp".to_owned();
            tag_ufrag(&mut ufrag, shard);
            assert_eq!(ufrag.len(), 16);
            assert_eq!(shard_of_ufrag(&ufrag, 256), Some(shard));
            assert!(ufrag.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        assert_eq!(shard_of_ufrag("05xyzw", 4), None, "not one of the shards");
        assert_eq!(shard_of_ufrag("zzxyzw", 4), None, "not a tag");
    }

    #[test]
    fn stun_goes_to_the_shard_its_ufrag_names() {
        let router = Router::new(0, 2);
        let to_1 = binding_request("01abcdefgh:client");
        assert_eq!(router.owner(addr(1), &to_1, |_| false), Owner::Shard(1));
        let to_me = binding_request("00abcdefgh:client");
        assert_eq!(router.owner(addr(1), &to_me, |_| false), Owner::Here);
        let nobody = binding_request("7fabcdefgh:client");
        assert_eq!(router.owner(addr(1), &nobody, |_| false), Owner::Here);
        assert_eq!(
            router.owner(addr(1), &[0, 1, 2], |_| false),
            Owner::Here,
            "malformed"
        );
    }

    #[test]
    fn media_follows_the_address_another_shard_announced() {
        let mut router = Router::new(0, 3);
        assert_eq!(
            router.owner(addr(7), &RTP, |_| false),
            Owner::Unknown,
            "unknown: dropped here"
        );
        router.apply(2, AddressChange::Learned(addr(7)));
        assert_eq!(router.owner(addr(7), &RTP, |_| false), Owner::Shard(2));
        assert_eq!(
            router.owner(addr(7), &RTP, |_| true),
            Owner::Here,
            "own demux first"
        );
        // A stale forget from a shard that no longer owns it changes nothing.
        router.apply(1, AddressChange::Forgotten(addr(7)));
        assert_eq!(router.owner(addr(7), &RTP, |_| false), Owner::Shard(2));
        router.apply(2, AddressChange::Forgotten(addr(7)));
        assert_eq!(router.owner(addr(7), &RTP, |_| false), Owner::Unknown);
        assert!(router.is_empty());
    }

    #[test]
    fn one_shard_routes_nothing() {
        let mut router = Router::new(0, 1);
        router.apply(0, AddressChange::Learned(addr(7)));
        let no_lookup = |_: &Remote| panic!("one shard looks nothing up on the packet path");
        assert_eq!(router.owner(addr(7), &RTP, no_lookup), Owner::Here);
        assert_eq!(router.owner(addr(8), &RTP, no_lookup), Owner::Here);
    }
}
