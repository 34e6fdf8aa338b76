//! Send-side congestion control of one subscribe connection (issue 12): transport-wide
//! sequence numbers on the copies it is sent, a send history, the bandwidth estimate built from
//! the subscriber's transport-cc feedback, and a pacer that spreads its copies over time.
//!
//! Sans-IO and plain: the shard hands in `now`, what it sends and what the subscriber reported.
//! The estimator ([`Gcc`]: delay and loss halves) and the leaky bucket ([`Pacer`]) are
//! rtc-interceptor's. The send history is ours: rtc-interceptor's `History` indexes every packet
//! in three hash maps, which on the forwarding path would be three hash inserts per copy; here
//! a copy is one write into a ring indexed by its transport-wide sequence number.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rtc::interceptor::{BandwidthEstimator, Gcc, Pacer, PacketReport, convert_twcc};
use rtc::rtcp::transport_feedbacks::transport_layer_cc::{PacketStatusChunk, TransportLayerCc};

use crate::demux::Remote;
use crate::room::BitrateMeter;
use crate::shard::Transmit;

/// Copies remembered for feedback, by transport-wide sequence number (a power of two: about
/// two seconds at 1,000 copies a second; browsers report every 50-100 ms).
const HISTORY: usize = 2048;
/// A feedback packet naming more packets than the history holds is not believed (a hostile
/// run length would otherwise make millions of reports).
const MAX_REPORTED: usize = HISTORY;
/// Where the estimate starts (bits per second). Higher than GCC's default (300 kbit/s): the
/// SFU does not probe, and growing from there to a 720p layer would take some 20 s of a good
/// link; a link that carries less brings it down within the first feedback reports.
const INITIAL_ESTIMATE: f64 = 2_500_000.0;
/// The estimate's range (bits per second).
const MIN_ESTIMATE: f64 = 30_000.0;
const MAX_ESTIMATE: f64 = 20_000_000.0;
/// The pacing rate as a multiple of what it follows (libwebrtc's pacing factor).
const PACING_FACTOR: f64 = 2.5;
/// The pacing rate never goes below this (bits per second): audio and a low layer always flow.
const MIN_PACING_RATE: f64 = 300_000.0;
/// A copy never waits in the pacer longer than this: the SFU cannot make a publisher's stream
/// smaller (one layer), so waiting longer would only add delay, not fit the stream to the link.
pub(crate) const MAX_PACING_DELAY: Duration = Duration::from_millis(50);

/// One copy sent, as the history keeps it.
#[derive(Clone, Copy)]
struct Sent {
    /// Counts every stamped copy; its low 16 bits are the transport-wide sequence number.
    id: u64,
    ssrc: u32,
    rtp_seq: u16,
    size: u32,
    departure: Instant,
    /// Not yet reported to the estimator.
    pending: bool,
}

/// A copy waiting in the pacer: the datagram and what the history will record when it leaves.
struct Queued {
    transmit: Transmit,
    stamp: Option<Stamp>,
    queued_at: Instant,
}

/// What a copy stamped with a transport-wide sequence number is, for the history.
#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    pub id: u64,
    pub ssrc: u32,
    pub rtp_seq: u16,
}

/// Whether a copy handed to [`SendSide::send`] left or waits.
#[derive(Debug, PartialEq, Eq)]
pub enum Paced {
    Sent,
    /// Queued behind the pacer; `first` = the queue was empty (the connection now has copies
    /// waiting and must be released on a timeout).
    Queued {
        first: bool,
    },
}

/// A subscribe connection's send side.
pub struct SendSide {
    next_id: u64,
    history: Box<[Option<Sent>]>,
    estimator: Gcc,
    pacer: Pacer,
    queue: VecDeque<Queued>,
    /// Octets sent (copies and retransmissions), for the pacing rate.
    sent: BitrateMeter,
    /// Feedback has been applied at least once (the estimate means something).
    has_feedback: bool,
    /// The client address the copies go to, when last looked at ([`Self::follow_route`]).
    route: Option<Remote>,
    probe: Option<Probe>,
    /// The fraction of copies reported lost, averaged over the last few hundred (GCC's own
    /// average follows each feedback's sample, and a tenth lost at random swings it past a
    /// fifth).
    loss: f64,
}

/// The weight of one report in [`SendSide::loss`]: about the last 200 copies count.
const LOSS_WEIGHT: f64 = 1.0 / 200.0;

/// What the feedback said since a paused video was tried again.
struct Probe {
    since: Instant,
    delivered_bits: f64,
    reported: usize,
    lost: usize,
}

/// Loss above this fraction pauses video like congestion does (see
/// [`SendSide::congestion_estimate`]): a link that drops nearly a third of what it is sent is
/// too narrow, not noisy (10 % lost at random each way reads as 15-20 % here: retransmissions
/// are lost too).
const HEAVY_LOSS: f64 = 0.3;

/// A probe whose feedback named fewer packets says nothing.
const PROBE_MIN_REPORTS: usize = 50;
/// A probe that lost more than this fraction of its packets found the path still too narrow.
const PROBE_MAX_LOSS: f64 = 0.02;

impl Default for SendSide {
    fn default() -> Self {
        Self::new()
    }
}

impl SendSide {
    pub fn new() -> Self {
        Self {
            next_id: 0,
            history: vec![None; HISTORY].into_boxed_slice(),
            estimator: Gcc::new(INITIAL_ESTIMATE, MIN_ESTIMATE, MAX_ESTIMATE),
            pacer: Pacer::new(INITIAL_ESTIMATE * PACING_FACTOR),
            queue: VecDeque::new(),
            sent: BitrateMeter::default(),
            has_feedback: false,
            route: None,
            probe: None,
            loss: 0.0,
        }
    }

    /// Follows the client's selected route (ICE nominated another pair: an ICE restart, a move
    /// from UDP to TCP, a new network). When it changes, what was learnt of the old path says
    /// nothing of the new one — and an outage before the move has driven the estimate to its
    /// floor, from which it would climb for tens of seconds — so the estimator starts over, as
    /// libwebrtc's does on a network route change.
    pub fn follow_route(&mut self, route: Option<Remote>) {
        let changed = self.route.is_some() && route.is_some() && route != self.route;
        if route.is_some() {
            self.route = route;
        }
        if changed {
            self.estimator = Gcc::new(INITIAL_ESTIMATE, MIN_ESTIMATE, MAX_ESTIMATE);
            self.has_feedback = false;
            self.probe = None;
            self.loss = 0.0;
            // Copies sent on the old path, lost with it, are no news about the new one.
            self.history.fill(None);
        }
    }

    /// The transport-wide sequence number for the next copy of `ssrc` / `rtp_seq`, to write
    /// into it before it is protected; recorded in the history when it leaves ([`Self::send`]).
    #[inline]
    pub fn stamp(&mut self, ssrc: u32, rtp_seq: u16) -> Stamp {
        let id = self.next_id;
        self.next_id += 1;
        Stamp { id, ssrc, rtp_seq }
    }

    /// A protected copy: sent now (pushed to `out`) if the pacer allows and nothing waits
    /// before it, else queued until [`Self::release`].
    #[inline]
    pub fn send(
        &mut self,
        now: Instant,
        now_us: u64,
        transmit: Transmit,
        stamp: Option<Stamp>,
        out: &mut VecDeque<Transmit>,
    ) -> Paced {
        let bits = (transmit.bytes.len() * 8) as f64;
        self.pacer.refill(now);
        if self.queue.is_empty() && self.pacer.can_release(bits) {
            self.depart(now, now_us, transmit, stamp, out);
            return Paced::Sent;
        }
        let first = self.queue.is_empty();
        self.queue.push_back(Queued {
            transmit,
            stamp,
            queued_at: now,
        });
        Paced::Queued { first }
    }

    /// Sends what the pacer allows at `now` (and whatever has waited [`MAX_PACING_DELAY`]).
    /// True while copies still wait.
    pub fn release(&mut self, now: Instant, now_us: u64, out: &mut VecDeque<Transmit>) -> bool {
        self.pacer.refill(now);
        while let Some(q) = self.queue.front() {
            let bits = (q.transmit.bytes.len() * 8) as f64;
            let overdue = now.saturating_duration_since(q.queued_at) >= MAX_PACING_DELAY;
            if !overdue && !self.pacer.can_release(bits) {
                break;
            }
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            self.depart(now, now_us, q.transmit, q.stamp, out);
        }
        !self.queue.is_empty()
    }

    /// When the first waiting copy may leave; `None` if none waits.
    pub fn next_release(&self) -> Option<Instant> {
        let q = self.queue.front()?;
        let bits = (q.transmit.bytes.len() * 8) as f64;
        let by_rate = self.pacer.releasable_at(bits).unwrap_or(q.queued_at);
        Some(by_rate.min(q.queued_at + MAX_PACING_DELAY))
    }

    /// Copies waiting in the pacer.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn depart(
        &mut self,
        now: Instant,
        now_us: u64,
        transmit: Transmit,
        stamp: Option<Stamp>,
        out: &mut VecDeque<Transmit>,
    ) {
        let size = transmit.bytes.len();
        self.pacer.consume((size * 8) as f64);
        self.sent.add(size, now_us);
        if let Some(s) = stamp {
            self.history[(s.id as usize) % HISTORY] = Some(Sent {
                id: s.id,
                ssrc: s.ssrc,
                rtp_seq: s.rtp_seq,
                size: size as u32,
                departure: now,
                pending: true,
            });
        }
        out.push_back(transmit);
    }

    /// Transport-cc feedback from the subscriber: each packet it names that the history still
    /// holds is reported, in sending order, to the estimator. Returns how many were.
    pub fn on_feedback(&mut self, now: Instant, feedback: &TransportLayerCc) -> usize {
        let named: usize = feedback
            .packet_chunks
            .iter()
            .map(|c| match c {
                PacketStatusChunk::RunLengthChunk(r) => usize::from(r.run_length),
                PacketStatusChunk::StatusVectorChunk(v) => v.symbol_list.len(),
            })
            .sum();
        if named > MAX_REPORTED || self.next_id == 0 {
            return 0;
        }
        let newest = self.next_id - 1;
        let mut reports: Vec<PacketReport> = convert_twcc(feedback)
            .into_iter()
            .filter_map(|ack| {
                // The id whose low 16 bits are this sequence number, at or before the newest.
                let back = (newest as u16).wrapping_sub(ack.sequence_number);
                let id = newest.checked_sub(u64::from(back))?;
                let slot = self.history[(id as usize) % HISTORY].as_mut()?;
                if slot.id != id || !slot.pending {
                    return None;
                }
                slot.pending = false;
                Some(PacketReport {
                    ssrc: slot.ssrc,
                    id,
                    rtp_sequence_number: slot.rtp_seq,
                    is_twcc: true,
                    twcc_sequence_number: ack.sequence_number,
                    size: slot.size as usize,
                    arrived: ack.arrived,
                    departure: slot.departure,
                    arrival: ack.arrival,
                    ecn: ack.ecn,
                })
            })
            .collect();
        reports.sort_by_key(|r| r.id);
        if !reports.is_empty() {
            self.estimator.on_reports(now, &reports);
            self.has_feedback = true;
        }
        for r in &reports {
            let lost = if r.arrived { 0.0 } else { 1.0 };
            self.loss += (lost - self.loss) * LOSS_WEIGHT;
        }
        if let Some(probe) = self.probe.as_mut() {
            for r in &reports {
                probe.reported += 1;
                if r.arrived {
                    probe.delivered_bits += (r.size * 8) as f64;
                } else {
                    probe.lost += 1;
                }
            }
        }
        reports.len()
    }

    /// A paused video is being tried again (see `shard/layers.rs`): from now on the feedback
    /// is also read as the result of a probe of the path.
    pub fn start_probe(&mut self, now: Instant) {
        if self.probe.is_none() {
            self.probe = Some(Probe {
                since: now,
                delivered_bits: 0.0,
                reported: 0,
                lost: 0,
            });
        }
    }

    /// Ends the probe [`Self::start_probe`] began. If what it carried arrived (enough reports,
    /// under [`PROBE_MAX_LOSS`] lost), the path carries at least that rate, which the estimate
    /// — driven down by the collapse, climbing a few percent per step, and over a probe that
    /// sends no more than the video needs — may be far below: it restarts from twice the rate
    /// delivered, as libwebrtc's does from a probe's result. A failed probe changes nothing.
    /// Returns the new estimate, if it changed.
    pub fn finish_probe(&mut self, now: Instant) -> Option<f64> {
        let probe = self.probe.take()?;
        let seconds = now.saturating_duration_since(probe.since).as_secs_f64();
        if probe.reported < PROBE_MIN_REPORTS
            || probe.lost as f64 > probe.reported as f64 * PROBE_MAX_LOSS
            || seconds <= 0.0
        {
            return None;
        }
        let restart_at = (2.0 * probe.delivered_bits / seconds).min(INITIAL_ESTIMATE);
        if self.estimate().is_some_and(|e| e >= restart_at) {
            return None;
        }
        self.estimator = Gcc::new(restart_at, MIN_ESTIMATE, MAX_ESTIMATE);
        Some(restart_at)
    }

    /// The bandwidth estimate toward this subscriber (bits per second), once its feedback has
    /// said something.
    pub fn estimate(&self) -> Option<f64> {
        self.has_feedback.then(|| self.estimator.target_bitrate())
    }

    /// The fraction of recent copies reported lost (about the last 200).
    pub fn loss(&self) -> f64 {
        self.loss
    }

    /// What a pause is decided on: whether the path can carry even a smallest layer. Random
    /// loss (a radio link) drives GCC's loss-based half down although sending less cures
    /// nothing, and a paused picture is worse than a small one that NACKs repair; so below
    /// [`HEAVY_LOSS`] only the delay-based half (queues growing: real congestion) counts.
    pub fn congestion_estimate(&self) -> Option<f64> {
        if !self.has_feedback {
            return None;
        }
        if self.loss > HEAVY_LOSS {
            return self.estimate();
        }
        self.estimator
            .stats()
            .delay_based_bitrate
            .or_else(|| self.estimate())
    }

    /// Re-aims the pacer (every housekeeping tick): a multiple of the estimate or of what was
    /// actually sent over the last second, whichever is higher — one layer cannot be made to
    /// fit the estimate, so pacing smooths bursts rather than holding the stream back.
    pub fn update_pacing_rate(&mut self, now_us: u64) {
        let sent_bps = (self.sent.bytes_last_second(now_us) * 8) as f64;
        // Before any feedback (or from a subscriber that sends none), the initial estimate, as
        // libwebrtc paces at its start bitrate: the minimum would hold back a call's first
        // second (and its keyframe) by up to the longest wait.
        let base = self
            .estimate()
            .unwrap_or(INITIAL_ESTIMATE)
            .max(sent_bps)
            .max(MIN_PACING_RATE);
        self.pacer.set_target_bitrate(base * PACING_FACTOR);
    }

    /// The rate the pacer releases at (bits per second).
    #[cfg(test)]
    pub fn pacing_rate(&self) -> f64 {
        self.pacer.target_bitrate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demux::Remote;
    use bytes::BytesMut;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        RecvDelta, RunLengthChunk, StatusChunkTypeTcc, SymbolTypeTcc,
    };
    use rtc::shared::TransportProtocol;

    fn copy(len: usize) -> Transmit {
        Transmit {
            to: Remote {
                transport: TransportProtocol::UDP,
                addr: "127.0.0.1:9".parse().unwrap(),
            },
            bytes: BytesMut::zeroed(len),
            received_at: None,
        }
    }

    fn us(t0: Instant, t: Instant) -> u64 {
        t.duration_since(t0).as_micros() as u64
    }

    /// Feedback for `count` packets from `base`, all received, `delta_ms` apart (after a first
    /// arrival at `reference` × 64 ms).
    fn feedback(base: u16, count: u16, reference: u32, delta_ms: i64) -> TransportLayerCc {
        TransportLayerCc {
            base_sequence_number: base,
            packet_status_count: count,
            reference_time: reference,
            packet_chunks: vec![PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
                run_length: count,
            })],
            recv_deltas: (0..count)
                .map(|i| RecvDelta {
                    type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
                    delta: if i == 0 { 0 } else { delta_ms * 1000 },
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_burst_beyond_the_budget_waits_and_leaves_at_the_pacing_rate() {
        let t0 = Instant::now();
        let mut side = SendSide::new();
        let mut out = VecDeque::new();
        // 100 copies of 1,200 octets at once: 960 kbit; before any feedback the pacer runs at
        // 2.5 × the initial estimate (6.25 Mbit/s) with a tenth of a second of it as budget
        // (625 kbit), so about a third of them wait.
        let results: Vec<Paced> = (0..100)
            .map(|_| side.send(t0, 0, copy(1200), None, &mut out))
            .collect();
        assert_eq!(results[0], Paced::Sent);
        let waiting = side.queued();
        assert!((30..=40).contains(&waiting), "{waiting} copies wait");
        assert!(results.contains(&Paced::Queued { first: true }));
        assert_eq!(out.len() + waiting, 100);
        // 20 ms later 125 kbit more may leave: about 13 copies.
        let at = t0 + Duration::from_millis(20);
        let before = out.len();
        assert!(side.next_release().is_some_and(|t| t <= at));
        side.release(at, us(t0, at), &mut out);
        let released = out.len() - before;
        assert!(
            (11..=15).contains(&released),
            "{released} released after 20 ms"
        );
        // Whatever has waited the longest delay leaves then, however small the budget.
        let late = t0 + MAX_PACING_DELAY;
        assert!(!side.release(late, us(t0, late), &mut out));
        assert_eq!(out.len(), 100);
        assert_eq!(side.next_release(), None);
    }

    #[test]
    fn the_pacing_rate_follows_what_is_sent_when_it_exceeds_the_estimate() {
        let t0 = Instant::now();
        let mut side = SendSide::new();
        let mut out = VecDeque::new();
        side.update_pacing_rate(0);
        assert_eq!(side.pacing_rate(), INITIAL_ESTIMATE * PACING_FACTOR);
        // 4 Mbit/s sent for a second, above the initial estimate.
        for i in 0..200u64 {
            let at = t0 + Duration::from_millis(i * 5);
            side.send(at, us(t0, at), copy(2500), None, &mut out);
            side.release(at, us(t0, at), &mut out);
        }
        side.update_pacing_rate(999_000);
        let rate = side.pacing_rate();
        assert!(
            (9_000_000.0..=10_200_000.0).contains(&rate),
            "2.5 × 4 Mbit/s, got {rate}"
        );
    }

    #[test]
    fn feedback_reaches_the_estimator_once_per_packet_in_sending_order() {
        let t0 = Instant::now();
        let mut side = SendSide::new();
        let mut out = VecDeque::new();
        assert_eq!(side.estimate(), None);
        for i in 0..10u16 {
            let stamp = side.stamp(7, 100 + i);
            assert_eq!(stamp.id, u64::from(i));
            let at = t0 + Duration::from_millis(u64::from(i) * 10);
            side.send(at, us(t0, at), copy(200), Some(stamp), &mut out);
        }
        let fb = feedback(0, 10, 1, 10);
        assert_eq!(side.on_feedback(t0 + Duration::from_millis(150), &fb), 10);
        assert!(side.estimate().is_some());
        // The same feedback again reports nothing new.
        assert_eq!(side.on_feedback(t0 + Duration::from_millis(160), &fb), 0);
        // Unknown sequence numbers (never sent) are ignored.
        assert_eq!(side.on_feedback(t0, &feedback(500, 5, 2, 10)), 0);
    }

    #[test]
    fn a_feedback_naming_more_packets_than_the_history_is_refused() {
        let t0 = Instant::now();
        let mut side = SendSide::new();
        let mut out = VecDeque::new();
        let stamp = side.stamp(1, 1);
        side.send(t0, 0, copy(100), Some(stamp), &mut out);
        let mut hostile = feedback(0, 1, 0, 0);
        hostile.packet_chunks = vec![
            PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: SymbolTypeTcc::PacketNotReceived,
                run_length: 8191,
            });
            64
        ];
        assert_eq!(side.on_feedback(t0, &hostile), 0);
        assert_eq!(side.estimate(), None);
    }

    #[test]
    fn sequence_numbers_wrap_and_still_match_their_copies() {
        let t0 = Instant::now();
        let mut side = SendSide::new();
        let mut out = VecDeque::new();
        let mut last = None;
        for i in 0..70_000u32 {
            let stamp = side.stamp(1, i as u16);
            // Only the last few are kept long enough to be reported.
            if i >= 69_990 {
                let at = t0 + Duration::from_millis(u64::from(i - 69_990));
                side.send(at, us(t0, at), copy(100), Some(stamp), &mut out);
                last.get_or_insert(stamp.id as u16);
            }
        }
        let base = last.expect("stamped");
        assert_eq!(base, (69_990u32 % 65_536) as u16);
        assert_eq!(side.on_feedback(t0, &feedback(base, 10, 0, 1)), 10);
    }
}
