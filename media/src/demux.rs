//! Which peer connection does a datagram belong to?
//!
//! One UDP socket serves every peer connection. A datagram is classified by its first byte
//! (RFC 7983): STUN is routed by the local ICE username fragment (the part of USERNAME before
//! the colon, which is the ufrag the server put in its SDP). A STUN request is passed on, and
//! its source address learned, only once its MESSAGE-INTEGRITY verifies with that connection's
//! ICE password: anyone who learns a ufrag could otherwise register addresses for a connection
//! (and push its real address out of the table). DTLS, RTP and RTCP are routed by learned
//! address. Anything else is dropped with a reason.
//!
//! The address of the last authenticated request that nominated its pair (USE-CANDIDATE: the
//! selected pair of an ICE-lite agent) is never the one forgotten when a connection has learned
//! too many.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;

use rtc::shared::TransportProtocol;

use rtc::crypto::RTCCryptoProvider;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{CLASS_REQUEST, Message};

use crate::route::AddressChange;

/// How many source addresses one peer connection may have learned at once (a client that moves
/// between networks, or checks on several candidate pairs). Oldest is forgotten first.
const MAX_ADDRS_PER_KEY: usize = 8;
/// Local ufrags one peer connection answers to at once: the current ICE session's and the one
/// before a restart.
pub const UFRAGS_PER_KEY: usize = 2;

/// RFC 7983 classes of datagrams that arrive on the media port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Stun,
    Dtls,
    Rtp,
    Other,
}

impl Class {
    /// Why a datagram of this class that its connection refused was dropped.
    pub fn rejected(self) -> DropReason {
        match self {
            Class::Stun => DropReason::RejectedStun,
            Class::Dtls => DropReason::RejectedDtls,
            Class::Rtp | Class::Other => DropReason::RejectedSrtp,
        }
    }
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
    /// A STUN request naming a live connection whose MESSAGE-INTEGRITY does not verify with
    /// its ICE password (or is missing): a forgery, or a client holding stale credentials.
    StunUnauthenticated,
    /// DTLS/RTP/RTCP (or STUN without USERNAME) from an address no peer connection learned.
    UnknownSource,
    /// The connection refused an authenticated STUN request (e.g. a role conflict).
    RejectedStun,
    /// The connection's DTLS layer refused it.
    RejectedDtls,
    /// The connection's SRTP layer refused it: bad authentication tag, replay, no keys yet.
    RejectedSrtp,
    /// The socket could not take an outgoing datagram (send buffer full).
    SendFailed,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::NotWebrtc,
        DropReason::MalformedStun,
        DropReason::UnknownUfrag,
        DropReason::StunUnauthenticated,
        DropReason::UnknownSource,
        DropReason::RejectedStun,
        DropReason::RejectedDtls,
        DropReason::RejectedSrtp,
        DropReason::SendFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::NotWebrtc => "not_webrtc",
            DropReason::MalformedStun => "malformed_stun",
            DropReason::UnknownUfrag => "unknown_ufrag",
            DropReason::StunUnauthenticated => "stun_unauthenticated",
            DropReason::UnknownSource => "unknown_source",
            DropReason::RejectedStun => "rejected_stun",
            DropReason::RejectedDtls => "rejected_dtls",
            DropReason::RejectedSrtp => "rejected_srtp",
            DropReason::SendFailed => "send_failed",
        }
    }
}

const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const MESSAGE_INTEGRITY_LEN: usize = 20;

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

/// Checks that a STUN message is a request authenticated with the short-term credential `pwd`
/// (RFC 8445 7.2.2: MESSAGE-INTEGRITY keyed with the recipient's password). Returns whether it
/// nominates its candidate pair (USE-CANDIDATE).
fn verify_request(
    datagram: &[u8],
    pwd: &str,
    crypto: &dyn RTCCryptoProvider,
) -> Result<bool, DropReason> {
    let mut msg = Message::new();
    msg.unmarshal_binary(datagram)
        .map_err(|_| DropReason::MalformedStun)?;
    if msg.typ.class != CLASS_REQUEST {
        return Err(DropReason::StunUnauthenticated);
    }
    let integrity = msg
        .get(rtc::stun::attributes::ATTR_MESSAGE_INTEGRITY)
        .map_err(|_| DropReason::StunUnauthenticated)?;
    if integrity.len() != MESSAGE_INTEGRITY_LEN {
        return Err(DropReason::StunUnauthenticated);
    }
    MessageIntegrity::check(&mut msg, pwd.as_bytes(), crypto.crypto())
        .map_err(|_| DropReason::StunUnauthenticated)?;
    Ok(msg.contains(rtc::stun::attributes::AttrType(ATTR_USE_CANDIDATE)))
}

/// Where a datagram came from: the transport it arrived on and the client's address. Media is
/// routed by it, so a transport other than the UDP port (a TCP connection, a TURN allocation)
/// is one more kind of remote, not a change to rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Remote {
    pub transport: TransportProtocol,
    pub addr: SocketAddr,
}

impl Remote {
    pub fn udp(addr: SocketAddr) -> Self {
        Self {
            transport: TransportProtocol::UDP,
            addr,
        }
    }
}

/// The routing table: local ufrag → (key, ICE password), learned remote → key.
pub struct Demux<K> {
    by_ufrag: HashMap<String, Credentials<K>>,
    by_addr: HashMap<Remote, K>,
    /// Reverse index so that removing a key is exact and cheap.
    owned: HashMap<K, Owned>,
    crypto: Arc<dyn RTCCryptoProvider>,
    /// Addresses learnt and forgotten not yet taken by [`Demux::poll_address_change`], kept
    /// only when other shards must hear of them ([`Demux::report_address_changes`]).
    changes: Option<VecDeque<AddressChange>>,
}

struct Credentials<K> {
    key: K,
    pwd: String,
}

#[derive(Debug, Default)]
struct Owned {
    ufrags: Vec<String>,
    /// Learned addresses, oldest first.
    addrs: Vec<Remote>,
    /// The address of the last authenticated request that nominated its pair.
    selected: Option<Remote>,
}

impl<K> std::fmt::Debug for Demux<K> {
    // Never prints the passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demux")
            .field("ufrags", &self.by_ufrag.len())
            .field("addresses", &self.by_addr.len())
            .finish()
    }
}

impl<K: Copy + Eq + Hash> Demux<K> {
    pub fn new(crypto: Arc<dyn RTCCryptoProvider>) -> Self {
        Self {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            owned: HashMap::new(),
            crypto,
            changes: None,
        }
    }

    /// From now on, keep every address learnt or forgotten for
    /// [`Demux::poll_address_change`].
    pub fn report_address_changes(&mut self) {
        self.changes.get_or_insert_with(VecDeque::new);
    }

    /// The oldest address learnt or forgotten not yet taken, in order.
    pub fn poll_address_change(&mut self) -> Option<AddressChange> {
        self.changes.as_mut()?.pop_front()
    }

    fn note(&mut self, change: AddressChange) {
        if let Some(c) = &mut self.changes {
            c.push_back(change);
        }
    }

    /// The client of `key`'s nominated candidate pair (its last authenticated request with
    /// USE-CANDIDATE): where, and over which transport, its media flows.
    pub fn selected(&self, key: K) -> Option<Remote> {
        self.owned.get(&key)?.selected
    }

    /// Whether datagrams from `addr` are routed here.
    pub fn knows_address(&self, addr: &Remote) -> bool {
        self.by_addr.contains_key(addr)
    }

    /// Routes STUN whose USERNAME starts with `ufrag` and whose MESSAGE-INTEGRITY verifies
    /// with `pwd` (the local ICE password of the same SDP) to `key`. A key keeps its last
    /// [`UFRAGS_PER_KEY`] ufrags: after an ICE restart the previous session's checks still
    /// arrive until the new one is up, and a client restarting without end cannot grow the
    /// table.
    pub fn add_ufrag(&mut self, ufrag: &str, pwd: &str, key: K) {
        let owned = self.owned.entry(key).or_default();
        if owned.ufrags.len() >= UFRAGS_PER_KEY {
            let oldest = owned.ufrags.remove(0);
            if self.by_ufrag.get(&oldest).is_some_and(|c| c.key == key) {
                self.by_ufrag.remove(&oldest);
            }
        }
        let credentials = Credentials {
            key,
            pwd: pwd.to_owned(),
        };
        if let Some(old) = self.by_ufrag.insert(ufrag.to_owned(), credentials)
            && old.key != key
            && let Some(o) = self.owned.get_mut(&old.key)
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
                if self.by_ufrag.get(&u).is_some_and(|c| c.key == key) {
                    self.by_ufrag.remove(&u);
                }
            }
            for a in owned.addrs {
                if self.by_addr.get(&a) == Some(&key) {
                    self.by_addr.remove(&a);
                    self.note(AddressChange::Forgotten(a));
                }
            }
        }
    }

    /// The peer connection this datagram from `from` belongs to.
    pub fn route(&mut self, from: Remote, datagram: &[u8]) -> Result<K, DropReason> {
        match classify(datagram) {
            Class::Other => Err(DropReason::NotWebrtc),
            Class::Stun => match stun_local_ufrag(datagram) {
                Err(MalformedStun) => Err(DropReason::MalformedStun),
                Ok(StunUser::Ufrag(ufrag)) => {
                    let credentials = self.by_ufrag.get(ufrag).ok_or(DropReason::UnknownUfrag)?;
                    let key = credentials.key;
                    // The decoder is third-party code fed by anyone: a panic in it must not
                    // stop the media loop (as everywhere the core is handed a datagram).
                    let pwd = &credentials.pwd;
                    let crypto = self.crypto.as_ref();
                    let nominates = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        verify_request(datagram, pwd, crypto)
                    }))
                    .unwrap_or(Err(DropReason::MalformedStun))?;
                    self.learn(from, key, nominates);
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

    fn learn(&mut self, from: Remote, key: K, nominates: bool) {
        match self.by_addr.insert(from, key) {
            None => self.note(AddressChange::Learned(from)),
            Some(old) if old != key => {
                if let Some(o) = self.owned.get_mut(&old) {
                    o.addrs.retain(|a| *a != from);
                    if o.selected == Some(from) {
                        o.selected = None;
                    }
                }
            }
            _ => {}
        }
        let owned = self.owned.entry(key).or_default();
        if nominates {
            owned.selected = Some(from);
        }
        if owned.addrs.contains(&from) {
            return;
        }
        owned.addrs.push(from);
        if owned.addrs.len() > MAX_ADDRS_PER_KEY {
            let selected = owned.selected;
            if let Some(i) = owned.addrs.iter().position(|a| Some(*a) != selected) {
                let oldest = owned.addrs.remove(i);
                if self.by_addr.get(&oldest) == Some(&key) {
                    self.by_addr.remove(&oldest);
                    self.note(AddressChange::Forgotten(oldest));
                }
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
    use rtc::stun::attributes::ATTR_USERNAME as USERNAME;
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::message::{
        BINDING_REQUEST, BINDING_SUCCESS, MessageType, Setter, TransactionId,
    };
    use rtc::stun::textattrs::TextAttribute;

    fn crypto() -> Arc<dyn RTCCryptoProvider> {
        rtc::crypto::default_provider().unwrap()
    }

    fn demux() -> Demux<u32> {
        Demux::new(crypto())
    }

    /// A STUN binding request with USERNAME `user` and no MESSAGE-INTEGRITY.
    fn unsigned_request(user: &str) -> Vec<u8> {
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

    struct UseCandidate;
    impl Setter for UseCandidate {
        fn add_to(&self, m: &mut Message) -> rtc::shared::error::Result<()> {
            m.add(rtc::stun::attributes::AttrType(ATTR_USE_CANDIDATE), &[]);
            Ok(())
        }
    }

    /// A STUN message as a browser sends it: USERNAME, optional USE-CANDIDATE,
    /// MESSAGE-INTEGRITY keyed with `pwd`, FINGERPRINT.
    fn signed(typ: MessageType, user: &str, pwd: &str, nominate: bool) -> Vec<u8> {
        let crypto = crypto();
        let mut setters: Vec<Box<dyn Setter + '_>> = vec![
            Box::new(typ),
            Box::new(TransactionId::new()),
            Box::new(TextAttribute::new(USERNAME, user.to_owned())),
        ];
        if nominate {
            setters.push(Box::new(UseCandidate));
        }
        setters.push(Box::new(
            MessageIntegrity::new_short_term_integrity_with_provider(
                pwd.to_owned(),
                crypto.crypto(),
            ),
        ));
        setters.push(Box::new(FINGERPRINT));
        let mut m = Message::new();
        m.build(&setters).unwrap();
        m.raw
    }

    fn request(user: &str, pwd: &str) -> Vec<u8> {
        signed(BINDING_REQUEST, user, pwd, false)
    }

    fn addr(port: u16) -> Remote {
        Remote::udp(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    const RTP: [u8; 4] = [0x80, 96, 0, 1];

    /// Every change is reported, in order, however many one call made: removing a connection
    /// forgets all of its addresses at once.
    #[test]
    fn every_address_change_is_reported_once_in_order() {
        let mut d = demux();
        d.report_address_changes();
        let pwd = "pwd-of-the-connection-0123456";
        d.add_ufrag("srv", pwd, 1);
        for port in [4000, 4001, 4002] {
            assert_eq!(d.route(addr(port), &request("srv:cli", pwd)), Ok(1));
        }
        d.remove(1);
        let changes: Vec<_> = std::iter::from_fn(|| d.poll_address_change()).collect();
        assert_eq!(
            changes,
            [4000, 4001, 4002]
                .map(|p| AddressChange::Learned(addr(p)))
                .into_iter()
                .chain([4000, 4001, 4002].map(|p| AddressChange::Forgotten(addr(p))))
                .collect::<Vec<_>>()
        );
        assert_eq!(d.poll_address_change(), None);
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
    fn authenticated_stun_routes_by_local_ufrag_and_learns_the_address() {
        let mut d = demux();
        d.add_ufrag("srvA", "pwdA-0123456789abcdef01234", 1);
        d.add_ufrag("srvB", "pwdB-0123456789abcdef01234", 2);
        // Before any STUN, media from that address is unknown.
        assert_eq!(d.route(addr(5000), &RTP), Err(DropReason::UnknownSource));
        let b = request("srvB:cli1", "pwdB-0123456789abcdef01234");
        assert_eq!(d.route(addr(5000), &b), Ok(2));
        let a = request("srvA:cli2", "pwdA-0123456789abcdef01234");
        assert_eq!(d.route(addr(6000), &a), Ok(1));
        // Now DTLS and RTP from those addresses route by address.
        assert_eq!(d.route(addr(5000), &[22, 254, 253, 0]), Ok(2));
        assert_eq!(d.route(addr(6000), &[0x80, 111, 0, 1]), Ok(1));
        // An unknown local ufrag is refused whatever the integrity.
        let nope = request("nope:srvA", "pwdA-0123456789abcdef01234");
        assert_eq!(d.route(addr(7000), &nope), Err(DropReason::UnknownUfrag));
        // A client moving to a new address keeps working through STUN.
        assert_eq!(d.route(addr(5001), &b), Ok(2));
        assert_eq!(d.route(addr(5001), &RTP), Ok(2));
    }

    /// After ICE restarts a connection answers to its current ufrag and the one before (late
    /// checks of the old session), never to older ones: restarts cannot grow the table.
    #[test]
    fn an_ice_restart_keeps_the_previous_ufrag_and_forgets_older_ones() {
        let mut d = demux();
        let pwd = |i: u32| format!("pwd{i}-0123456789abcdef01234");
        for i in 0..4 {
            d.add_ufrag(&format!("srv{i}"), &pwd(i), 1);
        }
        let check = |d: &mut Demux<u32>, i: u32| {
            d.route(
                addr(5000 + i as u16),
                &request(&format!("srv{i}:cli"), &pwd(i)),
            )
        };
        assert_eq!(check(&mut d, 3), Ok(1), "the current session");
        assert_eq!(check(&mut d, 2), Ok(1), "the session before the restart");
        assert_eq!(check(&mut d, 1), Err(DropReason::UnknownUfrag));
        assert_eq!(check(&mut d, 0), Err(DropReason::UnknownUfrag));
        assert_eq!(d.len().0, UFRAGS_PER_KEY);
    }

    #[test]
    fn unauthenticated_stun_is_dropped_and_learns_nothing() {
        let mut d = demux();
        d.add_ufrag("srv", "the-real-password-0123456789", 1);
        let forgeries = [
            unsigned_request("srv:x"),
            request("srv:x", "a-guessed-password-012345678"),
            // Signed with the right password, but a response, not a request.
            signed(
                BINDING_SUCCESS,
                "srv:x",
                "the-real-password-0123456789",
                false,
            ),
        ];
        for (i, forged) in forgeries.iter().enumerate() {
            let from = addr(9000 + i as u16);
            assert_eq!(d.route(from, forged), Err(DropReason::StunUnauthenticated));
            assert_eq!(d.route(from, &RTP), Err(DropReason::UnknownSource));
        }
        // A valid request whose integrity was tampered with after signing.
        let mut tampered = request("srv:x", "the-real-password-0123456789");
        let last = tampered.len() - 9; // inside the MESSAGE-INTEGRITY value
        tampered[last] ^= 1;
        assert_eq!(
            d.route(addr(9100), &tampered),
            Err(DropReason::StunUnauthenticated)
        );
        assert_eq!(d.len(), (1, 0), "no address learned");
    }

    /// The attack of the hardening issue: many source ports sending requests with the right
    /// ufrag and a bogus integrity must not displace the address the client's media comes from.
    #[test]
    fn forged_requests_cannot_displace_the_clients_address() {
        let mut d = demux();
        let pwd = "pwd-of-the-connection-0123456";
        d.add_ufrag("srv", pwd, 1);
        let client = addr(4000);
        let nominating = signed(BINDING_REQUEST, "srv:cli", pwd, true);
        assert_eq!(d.route(client, &nominating), Ok(1));
        for port in 0..64 {
            let forged = request("srv:cli", "not-the-password-00000000000");
            let _ = d.route(addr(20_000 + port), &forged);
        }
        assert_eq!(d.route(client, &RTP), Ok(1));
        // The client itself checking many other pairs (authenticated) still keeps the
        // nominated one.
        for port in 0..(2 * MAX_ADDRS_PER_KEY as u16) {
            assert_eq!(
                d.route(addr(30_000 + port), &request("srv:cli", pwd)),
                Ok(1)
            );
        }
        assert_eq!(
            d.route(client, &RTP),
            Ok(1),
            "the selected pair's address stays"
        );
        assert_eq!(
            d.len().1,
            MAX_ADDRS_PER_KEY,
            "addresses per key stay bounded"
        );
    }

    #[test]
    fn garbage_is_dropped_with_a_reason_and_never_panics() {
        let mut d = demux();
        let pwd = "pwd-of-the-connection-0123456";
        d.add_ufrag("srv", pwd, 9);
        assert_eq!(
            d.route(addr(1), b"GET / HTTP/1.1"),
            Err(DropReason::NotWebrtc)
        );
        assert_eq!(d.route(addr(1), &[0, 1, 0]), Err(DropReason::MalformedStun));
        // Length field larger than the datagram.
        let mut m = unsigned_request("srv:x");
        m[3] = 200;
        assert_eq!(d.route(addr(1), &m), Err(DropReason::MalformedStun));
        // Attribute length running past the end.
        let mut m = unsigned_request("srv:x");
        m[23] = 250;
        assert_eq!(d.route(addr(1), &m), Err(DropReason::MalformedStun));
        // Every prefix and every single-byte corruption of a valid request: no panic, and
        // nothing but the untouched request authenticates.
        let good = signed(BINDING_REQUEST, "srv:client", pwd, true);
        for n in 0..good.len() {
            assert!(d.route(addr(2), &good[..n]).is_err());
            for b in [0u8, 0xff, 0x3a] {
                let mut m = good.clone();
                if m[n] == b {
                    continue;
                }
                m[n] = b;
                let routed = d.route(addr(3), &m);
                // FINGERPRINT is not checked here (the ICE agent checks it): a corrupted
                // fingerprint alone may still route.
                assert!(
                    routed.is_err() || n >= good.len() - 8,
                    "byte {n} set to {b} still authenticated"
                );
            }
        }
    }

    #[test]
    fn remove_forgets_ufrags_and_learned_addresses() {
        let mut d = demux();
        d.add_ufrag("a", "password-of-a-0000000000000", 1);
        d.add_ufrag("b", "password-of-b-0000000000000", 2);
        let a = request("a:x", "password-of-a-0000000000000");
        for port in 0..20 {
            d.route(addr(1000 + port), &a).unwrap();
        }
        d.route(addr(2000), &request("b:y", "password-of-b-0000000000000"))
            .unwrap();
        let (_, addrs) = d.len();
        assert_eq!(
            addrs,
            MAX_ADDRS_PER_KEY + 1,
            "addresses per key are bounded"
        );
        d.remove(1);
        assert_eq!(d.route(addr(1019), &a), Err(DropReason::UnknownUfrag));
        assert_eq!(d.route(addr(2000), &[0x80, 0]), Ok(2));
        d.remove(2);
        assert!(d.is_empty());
    }
}
