//! Which peer connection does a datagram belong to?
//!
//! One UDP socket serves every peer connection. A datagram is classified by its first byte
//! (RFC 7983): STUN is routed by the local ICE username fragment (the part of USERNAME before
//! the colon, which is the ufrag the server put in its SDP), and the source address of a STUN
//! request that routed is learned. DTLS, RTP and RTCP are routed by that learned address.
//! Anything else is dropped with a reason.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

/// How many source addresses one peer connection may have learned at once (a client that moves
/// between networks, or checks on several candidate pairs). Oldest is forgotten first.
const MAX_ADDRS_PER_KEY: usize = 8;

/// RFC 7983 classes of datagrams that arrive on the media port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Stun,
    Dtls,
    Rtp,
    Other,
}

/// RFC 7983 §7: the first byte tells STUN, DTLS and RTP/RTCP apart.
pub fn classify(datagram: &[u8]) -> Class {
    match datagram.first() {
        Some(0..=3) => Class::Stun,
        Some(20..=63) => Class::Dtls,
        Some(128..=191) => Class::Rtp,
        _ => Class::Other,
    }
}

/// Why a datagram was dropped; the label of `callrelay_media_datagrams_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not STUN, DTLS, RTP or RTCP.
    NotWebrtc,
    /// Starts like STUN but is not a well-formed STUN message.
    MalformedStun,
    /// A STUN message whose USERNAME names no live peer connection.
    UnknownUfrag,
    /// DTLS/RTP/RTCP (or STUN without USERNAME) from an address no peer connection learned.
    UnknownSource,
    /// The webrtc-rs core rejected it (bad SRTP auth, DTLS garbage, ...).
    Rejected,
    /// The socket could not take an outgoing datagram (send buffer full).
    SendFailed,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::NotWebrtc,
        DropReason::MalformedStun,
        DropReason::UnknownUfrag,
        DropReason::UnknownSource,
        DropReason::Rejected,
        DropReason::SendFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::NotWebrtc => "not_webrtc",
            DropReason::MalformedStun => "malformed_stun",
            DropReason::UnknownUfrag => "unknown_ufrag",
            DropReason::UnknownSource => "unknown_source",
            DropReason::Rejected => "rejected",
            DropReason::SendFailed => "send_failed",
        }
    }
}

const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;

/// Result of looking inside a STUN message.
#[derive(Debug, PartialEq, Eq)]
pub enum StunUser<'a> {
    /// The recipient's ufrag: the part of USERNAME before the colon.
    Ufrag(&'a str),
    /// Well-formed, but without USERNAME (indications, responses).
    None,
}

/// The datagram starts like STUN but is not a well-formed STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedStun;

/// Parses just enough of a STUN message to find USERNAME.
pub fn stun_local_ufrag(msg: &[u8]) -> Result<StunUser<'_>, MalformedStun> {
    if msg.len() < STUN_HEADER_LEN || msg[0] & 0xC0 != 0 || msg[4..8] != STUN_MAGIC_COOKIE {
        return Err(MalformedStun);
    }
    let body_len = u16::from_be_bytes([msg[2], msg[3]]) as usize;
    if !body_len.is_multiple_of(4) || STUN_HEADER_LEN + body_len > msg.len() {
        return Err(MalformedStun);
    }
    let mut rest = &msg[STUN_HEADER_LEN..STUN_HEADER_LEN + body_len];
    while rest.len() >= 4 {
        let typ = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let padded = len.div_ceil(4) * 4;
        if 4 + len > rest.len() {
            return Err(MalformedStun);
        }
        if typ == ATTR_USERNAME {
            let value = std::str::from_utf8(&rest[4..4 + len]).map_err(|_| MalformedStun)?;
            let local = value.split(':').next().unwrap_or_default();
            return if local.is_empty() {
                Err(MalformedStun)
            } else {
                Ok(StunUser::Ufrag(local))
            };
        }
        rest = &rest[(4 + padded).min(rest.len())..];
    }
    Ok(StunUser::None)
}

/// The routing table: local ufrag → key, learned source address → key.
#[derive(Debug)]
pub struct Demux<K> {
    by_ufrag: HashMap<String, K>,
    by_addr: HashMap<SocketAddr, K>,
    /// Reverse index so that removing a key is exact and cheap.
    owned: HashMap<K, Owned>,
}

#[derive(Debug, Default)]
struct Owned {
    ufrags: Vec<String>,
    addrs: Vec<SocketAddr>,
}

impl<K: Copy + Eq + Hash> Default for Demux<K> {
    fn default() -> Self {
        Self {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            owned: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Demux<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes STUN whose USERNAME starts with `ufrag` to `key`.
    pub fn add_ufrag(&mut self, ufrag: &str, key: K) {
        if let Some(old) = self.by_ufrag.insert(ufrag.to_owned(), key)
            && old != key
            && let Some(o) = self.owned.get_mut(&old)
        {
            o.ufrags.retain(|u| u != ufrag);
        }
        self.owned
            .entry(key)
            .or_default()
            .ufrags
            .push(ufrag.to_owned());
    }

    /// Forgets everything routed to `key`.
    pub fn remove(&mut self, key: K) {
        if let Some(owned) = self.owned.remove(&key) {
            for u in owned.ufrags {
                if self.by_ufrag.get(&u) == Some(&key) {
                    self.by_ufrag.remove(&u);
                }
            }
            for a in owned.addrs {
                if self.by_addr.get(&a) == Some(&key) {
                    self.by_addr.remove(&a);
                }
            }
        }
    }

    /// The peer connection this datagram from `from` belongs to.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Result<K, DropReason> {
        match classify(datagram) {
            Class::Other => Err(DropReason::NotWebrtc),
            Class::Stun => match stun_local_ufrag(datagram) {
                Err(MalformedStun) => Err(DropReason::MalformedStun),
                Ok(StunUser::Ufrag(ufrag)) => {
                    let key = *self.by_ufrag.get(ufrag).ok_or(DropReason::UnknownUfrag)?;
                    self.learn(from, key);
                    Ok(key)
                }
                Ok(StunUser::None) => self
                    .by_addr
                    .get(&from)
                    .copied()
                    .ok_or(DropReason::UnknownSource),
            },
            Class::Dtls | Class::Rtp => self
                .by_addr
                .get(&from)
                .copied()
                .ok_or(DropReason::UnknownSource),
        }
    }

    fn learn(&mut self, from: SocketAddr, key: K) {
        match self.by_addr.insert(from, key) {
            Some(old) if old == key => return,
            Some(old) => {
                if let Some(o) = self.owned.get_mut(&old) {
                    o.addrs.retain(|a| *a != from);
                }
            }
            None => {}
        }
        let owned = self.owned.entry(key).or_default();
        owned.addrs.push(from);
        if owned.addrs.len() > MAX_ADDRS_PER_KEY {
            let oldest = owned.addrs.remove(0);
            if self.by_addr.get(&oldest) == Some(&key) {
                self.by_addr.remove(&oldest);
            }
        }
    }

    /// (ufrag entries, address entries): both return to zero when every key is removed.
    pub fn len(&self) -> (usize, usize) {
        (self.by_ufrag.len(), self.by_addr.len())
    }

    pub fn is_empty(&self) -> bool {
        self.by_ufrag.is_empty() && self.by_addr.is_empty() && self.owned.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal STUN binding request with USERNAME `user` (no integrity: the demultiplexer
    /// does not check it, the ICE agent does).
    pub(crate) fn binding_request(user: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&(user.len() as u16).to_be_bytes());
        attr.extend_from_slice(user.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        m.extend_from_slice(&STUN_MAGIC_COOKIE);
        m.extend_from_slice(&[7u8; 12]);
        m.extend_from_slice(&attr);
        m
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&[0x00, 0x01]), Class::Stun);
        assert_eq!(classify(&[22, 254, 253]), Class::Dtls);
        assert_eq!(classify(&[0x80, 96]), Class::Rtp);
        assert_eq!(classify(&[0x47]), Class::Other);
        assert_eq!(classify(&[]), Class::Other);
    }

    #[test]
    fn stun_routes_by_local_ufrag_and_learns_the_address() {
        let mut d = Demux::new();
        d.add_ufrag("srvA", 1u32);
        d.add_ufrag("srvB", 2u32);
        // Before any STUN, media from that address is unknown.
        assert_eq!(
            d.route(addr(5000), &[0x80, 96, 0, 1]),
            Err(DropReason::UnknownSource)
        );
        assert_eq!(d.route(addr(5000), &binding_request("srvB:cli1")), Ok(2));
        assert_eq!(d.route(addr(6000), &binding_request("srvA:cli2")), Ok(1));
        // Now DTLS and RTP from those addresses route by address.
        assert_eq!(d.route(addr(5000), &[22, 254, 253, 0]), Ok(2));
        assert_eq!(d.route(addr(6000), &[0x80, 111, 0, 1]), Ok(1));
        // The remote ufrag part is ignored; an unknown local ufrag is refused.
        assert_eq!(
            d.route(addr(7000), &binding_request("nope:srvA")),
            Err(DropReason::UnknownUfrag)
        );
        // A client moving to a new address keeps working through STUN.
        assert_eq!(d.route(addr(5001), &binding_request("srvB:cli1")), Ok(2));
        assert_eq!(d.route(addr(5001), &[0x80, 96, 0, 2]), Ok(2));
    }

    #[test]
    fn garbage_is_dropped_with_a_reason_and_never_panics() {
        let mut d: Demux<u32> = Demux::new();
        d.add_ufrag("srv", 9);
        assert_eq!(
            d.route(addr(1), b"GET / HTTP/1.1"),
            Err(DropReason::NotWebrtc)
        );
        assert_eq!(d.route(addr(1), &[0, 1, 0]), Err(DropReason::MalformedStun));
        // Length field larger than the datagram.
        let mut m = binding_request("srv:x");
        m[3] = 200;
        assert_eq!(d.route(addr(1), &m), Err(DropReason::MalformedStun));
        // Attribute length running past the end.
        let mut m = binding_request("srv:x");
        m[23] = 250;
        assert_eq!(d.route(addr(1), &m), Err(DropReason::MalformedStun));
        // Every prefix and every single-byte corruption of a valid request: no panic.
        let good = binding_request("srv:client");
        for n in 0..good.len() {
            let _ = d.route(addr(2), &good[..n]);
            for b in [0u8, 0xff, 0x3a] {
                let mut m = good.clone();
                m[n] = b;
                let _ = d.route(addr(2), &m);
            }
        }
    }

    #[test]
    fn remove_forgets_ufrags_and_learned_addresses() {
        let mut d = Demux::new();
        d.add_ufrag("a", 1u32);
        d.add_ufrag("b", 2u32);
        for port in 0..20 {
            d.route(addr(1000 + port), &binding_request("a:x")).unwrap();
        }
        d.route(addr(2000), &binding_request("b:y")).unwrap();
        let (_, addrs) = d.len();
        assert_eq!(
            addrs,
            MAX_ADDRS_PER_KEY + 1,
            "addresses per key are bounded"
        );
        d.remove(1);
        assert_eq!(
            d.route(addr(1019), &binding_request("a:x")),
            Err(DropReason::UnknownUfrag)
        );
        assert_eq!(d.route(addr(2000), &[0x80, 0]), Ok(2));
        d.remove(2);
        assert!(d.is_empty());
    }
}
