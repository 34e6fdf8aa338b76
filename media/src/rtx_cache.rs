//! Per-track retransmission cache: the last N packets a publisher sent, by sequence number.
//!
//! A NACK from any subscriber is answered from here (after mapping the subscriber's sequence
//! number back to the publisher's), so retransmissions cost the publisher nothing and the
//! memory is per track, not per subscriber. Slots are reused in place: after warm-up, storing a
//! packet allocates nothing (the payload is a reference-counted `Bytes`).
//!
//! What a NACK may cost is bounded per down-track (one subscriber of one track) by
//! [`RtxLimiter`]: each packet is resent at most once per round trip, duplicates within one
//! NACK count once, and resent octets stay within a budget earned by the octets forwarded to
//! that subscriber (see [`RtxLimiter`] for the figures and why).

use rtc::rtp::packet::Packet;

use crate::forward::seq_newer;

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

/// Retransmission budget: resent octets may use this fraction (numerator / denominator) of the
/// octets forwarded to the same down-track.
pub const BUDGET_NUM: u64 = 1;
pub const BUDGET_DEN: u64 = 2;
/// Retransmission credit available from the start and kept on top of the earned credit: about
/// ten full-size video packets, so a subscriber that has just joined (or a low-rate track) can
/// still repair a lost packet or two.
pub const BURST_OCTETS: u64 = 12_000;
/// The credit a down-track can save up is what its last window of forwarding earned (plus the
/// burst): a quiet minute does not buy a burst of retransmissions later.
pub const WINDOW_US: u64 = 1_000_000;
/// Round-trip time assumed before a receiver report gives one, and the clamp applied to the
/// measured one: the interval within which a packet is not resent twice.
pub const DEFAULT_RTT_US: u64 = 100_000;
pub const MIN_RTT_US: u64 = 20_000;
pub const MAX_RTT_US: u64 = 500_000;

/// Why a packet a NACK named was not resent (`callrelay_rtp_retransmissions_suppressed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppressed {
    /// The down-track's retransmission budget is spent.
    Budget,
    /// Resent less than one round trip ago (the retransmission may still be on its way).
    TooRecent,
    /// Never forwarded to this subscriber, or no longer in the cache.
    NotCached,
}

impl Suppressed {
    pub const ALL: [Suppressed; 3] = [
        Suppressed::Budget,
        Suppressed::TooRecent,
        Suppressed::NotCached,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Suppressed::Budget => "budget",
            Suppressed::TooRecent => "too_recent",
            Suppressed::NotCached => "not_cached",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What [`RtxLimiter::check`] says about one sequence number of a NACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// May be resent, if the budget allows ([`RtxLimiter::affordable`]).
    Resend,
    /// Already named earlier in the same NACK: ignored, not counted again.
    Duplicate,
    Suppressed(Suppressed),
}

#[derive(Clone, Copy, Default)]
struct Slot {
    /// The output sequence number this slot describes (valid if `used`).
    seq: u16,
    used: bool,
    /// The last NACK (see [`RtxLimiter::begin_nack`]) that named it.
    nack: u32,
    /// When it was last resent (µs, the loop's clock).
    sent_at_us: Option<u64>,
}

/// The retransmission limits of one down-track (one subscriber of one track), in the
/// subscriber's own sequence-number space.
///
/// * **Once per round trip**: a ring of `capacity` slots indexed by sequence number remembers
///   when each packet was last resent; a request within the RTT (smoothed from the
///   subscriber's receiver reports, [`DEFAULT_RTT_US`] until one arrives, clamped to
///   [[`MIN_RTT_US`], [`MAX_RTT_US`]]) is suppressed — the first retransmission may still be
///   in flight, and a receiver re-NACKs only after an RTT. The same slot remembers the last
///   NACK that named the packet, so a packet named several times in one NACK (repeated FCIs,
///   overlapping bitmasks) counts once.
/// * **Budget**: a token bucket of octets. Every copy forwarded to the subscriber earns
///   `BUDGET_NUM / BUDGET_DEN` (½) of its size; every retransmission spends its size; at most
///   [`BURST_OCTETS`] plus ½ of what the last [`WINDOW_US`] window forwarded can be saved up.
///   So over any interval, retransmissions are at most half of what was forwarded over that
///   interval and the window before it, plus the burst: whatever a client asks for, the SFU
///   sends it at most 1.5 × its stream — a subscriber whose link is congested enough to lose
///   that much cannot be repaired by retransmission anyway (it needs a lower layer or a
///   keyframe), and half the stream's rate still repairs heavy loss (tens of percent) on a
///   healthy link, which is what NACK is for.
///
/// Everything is preallocated by [`RtxLimiter::new`]; the per-packet calls are a few integer
/// operations.
pub struct RtxLimiter {
    slots: Box<[Slot]>,
    nack: u32,
    tokens: u64,
    window_start_us: u64,
    window_octets: u64,
    srtt_us: Option<u64>,
}

impl RtxLimiter {
    /// `capacity` (rounded up to a power of two) should match the track's [`RtxCache`]: a
    /// packet older than that cannot be resent anyway.
    pub fn new(capacity: usize) -> Self {
        let cap = capacity.max(1).next_power_of_two().min(1 << 15);
        Self {
            slots: vec![Slot::default(); cap].into_boxed_slice(),
            nack: 0,
            tokens: BURST_OCTETS,
            window_start_us: 0,
            window_octets: 0,
            srtt_us: None,
        }
    }

    /// A copy of `octets` was forwarded to this subscriber (the hot path: no allocation).
    #[inline]
    pub fn forwarded(&mut self, octets: usize, now_us: u64) {
        if now_us.saturating_sub(self.window_start_us) >= WINDOW_US {
            let cap = BURST_OCTETS + self.window_octets * BUDGET_NUM / BUDGET_DEN;
            self.tokens = self.tokens.min(cap);
            self.window_start_us = now_us;
            self.window_octets = 0;
        }
        let octets = octets as u64;
        self.window_octets += octets;
        self.tokens += octets * BUDGET_NUM / BUDGET_DEN;
    }

    /// A new NACK starts: sequence numbers it names twice are resent (and counted) once.
    pub fn begin_nack(&mut self) {
        self.nack = self.nack.wrapping_add(1);
    }

    /// Whether `seq` (a packet forwarded to this subscriber) may be resent now, as far as
    /// duplicates and the round trip go. Call [`RtxLimiter::affordable`] and
    /// [`RtxLimiter::sent`] next.
    pub fn check(&mut self, seq: u16, now_us: u64) -> Verdict {
        let window = self.rtt_window_us();
        let nack = self.nack;
        let slot = self.slot_mut(seq);
        if slot.used && slot.seq == seq {
            if slot.nack == nack {
                return Verdict::Duplicate;
            }
            slot.nack = nack;
            return match slot.sent_at_us {
                Some(at) if now_us.saturating_sub(at) < window => {
                    Verdict::Suppressed(Suppressed::TooRecent)
                }
                _ => Verdict::Resend,
            };
        }
        if slot.used && seq_newer(slot.seq, seq) {
            // A packet a whole ring older than one already tracked here: out of the cache too.
            return Verdict::Suppressed(Suppressed::NotCached);
        }
        *slot = Slot {
            seq,
            used: true,
            nack,
            sent_at_us: None,
        };
        Verdict::Resend
    }

    /// Whether the budget covers resending `octets` now.
    pub fn affordable(&self, octets: usize) -> bool {
        self.tokens >= octets as u64
    }

    /// `seq` (`octets` long) was resent at `now_us`: spends the budget, starts its RTT.
    pub fn sent(&mut self, seq: u16, octets: usize, now_us: u64) {
        self.tokens = self.tokens.saturating_sub(octets as u64);
        let slot = self.slot_mut(seq);
        if slot.used && slot.seq == seq {
            slot.sent_at_us = Some(now_us);
        }
    }

    /// A round-trip time measured from the subscriber's receiver report on this down-track.
    pub fn observe_rtt(&mut self, rtt_us: u64) {
        let rtt_us = rtt_us.min(10 * MAX_RTT_US);
        self.srtt_us = Some(match self.srtt_us {
            // RFC 6298's smoothing: 7/8 old, 1/8 new.
            Some(s) => (7 * s + rtt_us) / 8,
            None => rtt_us,
        });
    }

    /// The interval within which a packet is not resent twice.
    pub fn rtt_window_us(&self) -> u64 {
        self.srtt_us
            .unwrap_or(DEFAULT_RTT_US)
            .clamp(MIN_RTT_US, MAX_RTT_US)
    }

    /// Octets that could be resent now (for tests and stats).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    fn slot_mut(&mut self, seq: u16) -> &mut Slot {
        let i = seq as usize & (self.slots.len() - 1);
        &mut self.slots[i]
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

    /// Resends `seqs` as one NACK, `octets` each, at `now_us`; returns what was resent and
    /// the verdicts.
    fn nack(
        l: &mut RtxLimiter,
        seqs: &[u16],
        octets: usize,
        now_us: u64,
    ) -> (Vec<u16>, Vec<Verdict>) {
        l.begin_nack();
        let mut sent = Vec::new();
        let mut verdicts = Vec::new();
        for &s in seqs {
            let mut v = l.check(s, now_us);
            if v == Verdict::Resend {
                if l.affordable(octets) {
                    l.sent(s, octets, now_us);
                    sent.push(s);
                } else {
                    v = Verdict::Suppressed(Suppressed::Budget);
                }
            }
            verdicts.push(v);
        }
        (sent, verdicts)
    }

    #[test]
    fn duplicates_in_one_nack_count_once_and_a_packet_is_resent_once_per_rtt() {
        let mut l = RtxLimiter::new(512);
        l.forwarded(1_000_000, 0); // plenty of budget
        let (sent, v) = nack(&mut l, &[7, 7, 8, 7, 8], 100, 1_000);
        assert_eq!(sent, [7, 8]);
        assert_eq!(v[1], Verdict::Duplicate);
        assert_eq!(v[4], Verdict::Duplicate);
        // No receiver report yet: 100 ms.
        assert_eq!(l.rtt_window_us(), DEFAULT_RTT_US);
        let (sent, v) = nack(&mut l, &[7, 8, 9], 100, 1_000 + 99_999);
        assert_eq!(sent, [9]);
        assert_eq!(v[0], Verdict::Suppressed(Suppressed::TooRecent));
        let (sent, _) = nack(&mut l, &[7, 8, 9], 100, 1_000 + 100_000);
        assert_eq!(sent, [7, 8]);
        // The measured RTT, smoothed and clamped.
        l.observe_rtt(1_000);
        assert_eq!(l.rtt_window_us(), MIN_RTT_US);
        let mut l2 = RtxLimiter::new(64);
        l2.observe_rtt(300_000);
        l2.observe_rtt(300_000);
        assert_eq!(l2.rtt_window_us(), 300_000);
        l2.observe_rtt(5_000_000);
        assert_eq!(l2.rtt_window_us(), MAX_RTT_US);
        let (sent, _) = nack(&mut l, &[7], 100, 1_000 + 100_000 + MIN_RTT_US);
        assert_eq!(sent, [7]);
    }

    #[test]
    fn the_budget_is_half_of_what_was_forwarded_plus_a_burst() {
        let mut l = RtxLimiter::new(512);
        assert_eq!(l.tokens(), BURST_OCTETS);
        // 1,000 octets forwarded every 10 ms for 1 s: 50,000 octets of credit.
        for i in 0..100u64 {
            l.forwarded(1_000, i * 10_000);
        }
        assert_eq!(l.tokens(), BURST_OCTETS + 50_000);
        // A flood naming every packet, every millisecond, never gets more than that.
        let mut resent = 0usize;
        for round in 0..1_000u64 {
            let seqs: Vec<u16> = (0..100).collect();
            resent += nack(&mut l, &seqs, 1_000, 1_000_000 + round * 1_000)
                .0
                .len();
        }
        assert_eq!(resent as u64 * 1_000, BURST_OCTETS / 1_000 * 1_000 + 50_000);
        // Saving up is capped at the last window's half plus the burst.
        let mut l = RtxLimiter::new(512);
        for s in 0..10u64 {
            for i in 0..100u64 {
                l.forwarded(1_000, s * 1_000_000 + i * 10_000);
            }
        }
        l.forwarded(0, 10_000_000);
        assert_eq!(l.tokens(), BURST_OCTETS + 50_000);
    }

    #[test]
    fn packets_a_ring_older_than_a_tracked_one_are_not_resent() {
        let mut l = RtxLimiter::new(64);
        l.forwarded(1_000_000, 0);
        assert_eq!(nack(&mut l, &[100], 10, 0).0, [100]);
        let (sent, v) = nack(&mut l, &[36, 100u16.wrapping_add(64)], 10, 0);
        assert_eq!(v[0], Verdict::Suppressed(Suppressed::NotCached));
        assert_eq!(sent, [164]);
        // Wrap-around: 65,535 and 63 share a slot; 63 is the newer.
        assert_eq!(nack(&mut l, &[63], 10, 0).0, [63]);
        assert_eq!(
            nack(&mut l, &[65_535], 10, 0).1,
            [Verdict::Suppressed(Suppressed::NotCached)]
        );
    }
}
