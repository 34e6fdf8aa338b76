//! Per-track retransmission cache: the last N packets a publisher sent, by sequence number.
//!
//! A NACK from any subscriber is answered from here (after mapping the subscriber's sequence
//! number back to the publisher's), so retransmissions cost the publisher nothing and the
//! memory is per track, not per subscriber. Slots are reused in place: after warm-up, storing a
//! packet allocates nothing (the payload is a reference-counted `Bytes`).

use rtc::rtp::packet::Packet;

/// Packets kept per track: about 1.7 s of 720p video at 300 packets/s.
pub const DEFAULT_CAPACITY: usize = 512;

pub struct RtxCache {
    slots: Box<[Option<Packet>]>,
    stored: usize,
}

impl RtxCache {
    /// `capacity` is rounded up to a power of two.
    pub fn new(capacity: usize) -> Self {
        let cap = capacity.max(1).next_power_of_two().min(1 << 15);
        Self {
            slots: (0..cap).map(|_| None).collect(),
            stored: 0,
        }
    }

    fn index(&self, seq: u16) -> usize {
        seq as usize & (self.slots.len() - 1)
    }

    /// Keeps `packet`, overwriting whatever was `capacity` sequence numbers older.
    pub fn insert(&mut self, packet: &Packet) {
        let i = self.index(packet.header.sequence_number);
        match &mut self.slots[i] {
            Some(old) => {
                // Reuse the slot's header allocations.
                old.header.clone_from(&packet.header);
                old.payload = packet.payload.clone();
            }
            empty @ None => {
                *empty = Some(packet.clone());
                self.stored += 1;
            }
        }
    }

    /// The packet with this sequence number and SSRC, if it is still cached.
    pub fn get(&self, ssrc: u32, seq: u16) -> Option<&Packet> {
        self.slots[self.index(seq)]
            .as_ref()
            .filter(|p| p.header.sequence_number == seq && p.header.ssrc == ssrc)
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Occupied slots (for tests and stats).
    pub fn len(&self) -> usize {
        self.stored
    }

    pub fn is_empty(&self) -> bool {
        self.stored == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn pkt(ssrc: u32, seq: u16) -> Packet {
        let mut p = Packet::default();
        p.header.ssrc = ssrc;
        p.header.sequence_number = seq;
        p.payload = Bytes::from(seq.to_be_bytes().to_vec());
        p
    }

    #[test]
    fn returns_recent_packets_by_sequence_number() {
        let mut c = RtxCache::new(100);
        assert_eq!(c.capacity(), 128);
        for s in 0..300u16 {
            c.insert(&pkt(5, s));
        }
        assert_eq!(
            c.get(5, 299).unwrap().payload.as_ref(),
            &299u16.to_be_bytes()
        );
        assert_eq!(c.get(5, 172).unwrap().header.sequence_number, 172);
        assert!(c.get(5, 171).is_none(), "overwritten by 299");
        assert!(c.get(6, 299).is_none(), "other SSRC");
        assert!(c.get(5, 300).is_none(), "never sent");
        assert_eq!(c.len(), 128);
    }

    #[test]
    fn survives_sequence_wrap_around() {
        let mut c = RtxCache::new(64);
        for i in 0..40u16 {
            c.insert(&pkt(1, 65_520u16.wrapping_add(i)));
        }
        for s in [65_520u16, 65_535, 0, 23] {
            assert_eq!(c.get(1, s).unwrap().header.sequence_number, s);
        }
        assert!(c.get(1, 24).is_none());
        // 24 more packets push the oldest (65520..) out.
        for s in 24..49u16 {
            c.insert(&pkt(1, s));
        }
        assert!(c.get(1, 65_520).is_none());
        assert!(c.get(1, 65_521).is_some() && c.get(1, 48).is_some());
    }
}
