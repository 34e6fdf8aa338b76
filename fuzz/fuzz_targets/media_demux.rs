//! The SFU's demultiplexer: which peer connection a datagram arriving on the one media socket
//! belongs to (RFC 7983 classes; STUN by local ufrag once its MESSAGE-INTEGRITY verifies with
//! that connection's ICE password, DTLS/RTP/RTCP by the address STUN taught it).
//!
//! The input is a script of datagrams, each `[op] [len: u16 BE] [len bytes]`:
//! * `op & 7` picks one of eight source addresses (IPv4 and IPv6), so addresses get learned,
//!   move between connections and overflow a connection's address limit;
//! * `op & 0x08`: the datagram is first re-encoded as an authenticated binding request from a
//!   client of connection `op >> 4 & 1` (its transaction id and attributes kept, USERNAME
//!   replaced by that connection's, MESSAGE-INTEGRITY and FINGERPRINT added), so the fuzzer also reaches what happens after a
//!   request verifies (learning, USE-CANDIDATE) rather than stopping at the HMAC;
//! * `op & 0x20`: connection `op >> 6 & 1` is removed (and registered again) before routing.
//!
//! Checked: no panic; a route only ever names a registered connection; a correctly signed
//! request naming a live connection is routed to it; removing every connection empties the
//! tables.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};

use callrelay_media::demux::{Demux, Remote};
use libfuzzer_sys::fuzz_target;
use rtc::crypto::RTCCryptoProvider;
use rtc::stun::attributes::{ATTR_FINGERPRINT, ATTR_MESSAGE_INTEGRITY, ATTR_USERNAME};
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{BINDING_REQUEST, Message, Setter};
use rtc::stun::textattrs::TextAttribute;

/// (local ufrag, local ICE password) of the two connections, as the SFU puts them in its SDP.
/// The first pair is the one in the committed seeds.
const CREDENTIALS: [(&str, &str); 2] = [
    ("srvA", "fuzzpasswordfuzzpasswordA"),
    ("srvB", "fuzzpasswordfuzzpasswordB"),
];

static CRYPTO: LazyLock<Arc<dyn RTCCryptoProvider>> =
    LazyLock::new(|| rtc::crypto::default_provider().expect("crypto provider"));

fn source(i: u8) -> SocketAddr {
    let port = 40_000 + u16::from(i);
    if i < 5 {
        SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1 + i % 2), port))
    } else {
        SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), port))
    }
}

/// `datagram`'s attributes in a binding request (an ICE connectivity check) authenticated for
/// connection `key`, or `None` if it does not even parse as STUN.
fn signed_request(datagram: &[u8], key: usize) -> Option<Vec<u8>> {
    let mut parsed = Message::new();
    parsed.unmarshal_binary(datagram).ok()?;
    let (ufrag, pwd) = CREDENTIALS[key];
    let mut m = Message::new();
    m.typ = BINDING_REQUEST;
    m.transaction_id = parsed.transaction_id;
    m.write_header();
    TextAttribute::new(ATTR_USERNAME, format!("{ufrag}:client"))
        .add_to(&mut m)
        .ok()?;
    for a in &parsed.attributes.0 {
        if a.typ != ATTR_USERNAME && a.typ != ATTR_MESSAGE_INTEGRITY && a.typ != ATTR_FINGERPRINT {
            m.add(a.typ, &a.value);
        }
    }
    MessageIntegrity::new_short_term_integrity_with_provider(pwd.to_owned(), CRYPTO.crypto())
        .add_to(&mut m)
        .ok()?;
    FINGERPRINT.add_to(&mut m).ok()?;
    Some(m.raw)
}

fuzz_target!(|data: &[u8]| {
    let mut demux: Demux<usize> = Demux::new(Arc::clone(&CRYPTO));
    for (key, (ufrag, pwd)) in CREDENTIALS.iter().enumerate() {
        demux.add_ufrag(ufrag, pwd, key);
    }
    let mut rest = data;
    while let [op, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        if op & 0x20 != 0 {
            let key = usize::from(op >> 6 & 1);
            demux.remove(key);
            let (ufrag, pwd) = CREDENTIALS[key];
            demux.add_ufrag(ufrag, pwd, key);
        }
        let from = Remote::udp(source(op & 7));
        let signed_for = usize::from(op >> 4 & 1);
        let signed = if op & 0x08 != 0 {
            signed_request(datagram, signed_for)
        } else {
            None
        };
        match signed {
            Some(request) => {
                let routed = demux.route(from, &request);
                assert_eq!(
                    routed,
                    Ok(signed_for),
                    "a correctly signed request for a live ufrag was not routed to it"
                );
            }
            None => {
                if let Ok(key) = demux.route(from, datagram) {
                    assert!(key < CREDENTIALS.len(), "routed to an unknown key {key}");
                }
            }
        }
    }
    demux.remove(0);
    demux.remove(1);
    assert!(
        demux.is_empty(),
        "tables not empty after removing every key"
    );
});
