//! The synthetic media payload: every packet carries who sent it, its sequence number and its
//! send time, so a receiver can count loss and measure latency without decoding anything.
//!
//! Layout (big-endian): a one-byte VP8 payload descriptor (`0x10`: start of partition 0) for
//! video or `0x00` for audio, the magic `CRLY`, the stream number (u32), the sequence number
//! (u32), the send time in nanoseconds since the Unix epoch (u64, `CLOCK_REALTIME`, so two
//! processes on one machine share the clock), then filler up to the requested size.

use std::time::{SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 4] = b"CRLY";
/// Bytes of the stamp, descriptor included; payloads are never smaller.
pub const STAMP_LEN: usize = 1 + 4 + 4 + 4 + 8;

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub stream: u32,
    pub seq: u32,
    pub sent_ns: u64,
}

/// Nanoseconds since the Unix epoch (`CLOCK_REALTIME`, the clock of kernel receive timestamps).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Fills `out` with a payload of `size` bytes (at least [`STAMP_LEN`]).
pub fn write(out: &mut Vec<u8>, video: bool, stamp: Stamp, size: usize) {
    out.clear();
    out.push(if video { 0x10 } else { 0x00 });
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&stamp.stream.to_be_bytes());
    out.extend_from_slice(&stamp.seq.to_be_bytes());
    out.extend_from_slice(&stamp.sent_ns.to_be_bytes());
    let size = size.max(STAMP_LEN);
    let filler = (stamp.seq as u8).wrapping_mul(31);
    out.resize(size, filler);
}

/// Reads the stamp of a payload made by [`write`]; `None` for anything else.
pub fn read(payload: &[u8]) -> Option<Stamp> {
    if payload.len() < STAMP_LEN || &payload[1..5] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes(payload[i..i + 4].try_into().unwrap_or_default());
    Some(Stamp {
        stream: u32_at(5),
        seq: u32_at(9),
        sent_ns: u64::from_be_bytes(payload[13..21].try_into().unwrap_or_default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut buf = Vec::new();
        let s = Stamp {
            stream: 7,
            seq: 123_456,
            sent_ns: now_ns(),
        };
        write(&mut buf, true, s, 1_000);
        assert_eq!(buf.len(), 1_000);
        assert_eq!(buf[0], 0x10);
        assert_eq!(read(&buf), Some(s));
        write(&mut buf, false, s, 3);
        assert_eq!(buf.len(), STAMP_LEN);
        assert_eq!(read(&buf), Some(s));
        assert_eq!(read(&buf[..10]), None);
        assert_eq!(read(&[0u8; 40]), None);
    }
}
