//! The shard: the SFU's state machine, sans-IO. It owns every peer connection and every room
//! through `&mut self` and is fed by its driver ([`crate::driver`]) with datagrams
//! ([`Shard::handle_receive`]), commands ([`Shard::handle_command`]) and timeouts
//! ([`Shard::handle_timeout`]); what it sends is drained with [`Shard::poll_transmit`] and
//! when it next wants to be woken with [`Shard::poll_timeout`]. It has no socket, never reads
//! a clock (every input carries `now`; wall-clock time for RTCP is derived from an epoch given
//! at construction) and draws its randomness (ICE credentials, SSRCs, sequence and timestamp
//! bases) from the seedable generator it was given.
//!
//! Per input the shard (1) hands it to the one peer connection concerned, (2) drains that
//! connection's events, decoded packets and outgoing datagrams (`drive`), which may touch
//! other connections (a forwarded packet, a relayed keyframe request) — those are drained in
//! turn from the `dirty` list — and (3) reschedules the connection's next timeout.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::RngExt;
use rand::rngs::StdRng;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent, RTCTrackEventInit};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp::packet::Packet;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::marshal::MarshalSize;
use rtc::shared::time::SystemInstant;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tracing::{debug, info, warn};

use crate::SfuStats;
use crate::demux::{Demux, DropReason, Remote};
use crate::forward::{CopyScratch, ExtIdMap, PayloadTypeMap, Rewriter, seq_newer};
use crate::keyframe::KeyframeThrottle;
use crate::metrics::{Metrics, kind_index};
use crate::peer::{self, CoreCounters, FORWARDED_EXTENSIONS, PcSetup};
use crate::room::{
    EarlyCandidates, MAX_PENDING_CANDIDATES, Negotiation, Participant, PcId, Room, TrackKey,
};
use crate::route::{self, AddressChange};
use crate::rtx_cache::{DEFAULT_CAPACITY, RtxCache, RtxLimiter, Suppressed, Verdict};
use crate::{CandidateInit, Command, MediaConfig, MediaError, MediaEvent, MediaKind, PcKind};

mod commands;
mod publish;
mod rtcp;
mod sdp;
mod subscribe;

use sdp::{offered_sections, still_sent};

const MAX_ID_LEN: usize = 256;
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// How often dropped datagrams are summarised in the log (one line, only if any were dropped).
const DROP_SUMMARY_EVERY: Duration = Duration::from_secs(60);
const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);
const CLOSED_MEMORY: Duration = Duration::from_secs(60);
const EARLY_CANDIDATE_TTL: Duration = Duration::from_secs(10);

/// One webrtc-rs peer connection and what the loop knows about it.
struct Pc {
    room: String,
    participant: String,
    kind: PcKind,
    rtc: RTCPeerConnection,
    /// The next timeout the loop has scheduled for it (the heap may hold stale ones).
    scheduled: Option<Instant>,
    dirty: bool,
    created: Instant,
    last_rx: Option<Instant>,
    /// An offer/answer has been applied: from now on it must connect and stay alive.
    negotiated: bool,
    connected: bool,
    /// Publish: the publisher's media SSRC → track.
    in_tracks: HashMap<u32, TrackKey>,
    /// Publish: tracks the publisher stopped by renegotiating (media SSRC → what they were),
    /// kept so that they can be published again when their m-section sends again and their
    /// RTP arrives (webrtc-rs does not report a stream it has already opened a second time).
    dormant: HashMap<u32, Dormant>,
    /// Subscribe: the SSRC we send a track with → track.
    out_ssrcs: HashMap<u32, TrackKey>,
    /// Subscribe: an answer for the current offer was applied.
    answered: bool,
}

/// A track its publisher stopped in a renegotiation.
struct Dormant {
    info: TrackInfo,
    /// Its m-section sends again: the next RTP packet on its SSRC publishes it again.
    revivable: bool,
}

/// What publishing a track needs to know about it, learnt from the publish connection.
struct TrackInfo {
    track_id: String,
    /// The m-section (transceiver) the track arrives on, if known.
    mid: Option<String>,
    kind: MediaKind,
    codec: RTCRtpCodec,
    media_ssrc: u32,
    pub_codecs: Vec<RTCRtpCodecParameters>,
    pub_extensions: Vec<(String, u8)>,
}

/// One subscriber of one track: where its copies go and how they are rewritten.
struct Fanout {
    sub_pc: PcId,
    sender_id: RTCRtpSenderId,
    rewriter: Rewriter,
    /// What this subscriber's NACKs may make the SFU resend on this track.
    rtx: RtxLimiter,
    /// Negotiated (answered) and connected: copies are sent.
    ready: bool,
    configured: bool,
}

/// A track a publisher sends into the SFU.
struct Track {
    room: String,
    publisher: String,
    track_id: String,
    /// The publisher's m-section carrying it, if known.
    mid: Option<String>,
    kind: MediaKind,
    codec: RTCRtpCodec,
    pub_pc: PcId,
    media_ssrc: u32,
    /// The publisher's negotiated codecs and header extensions (uri, id).
    pub_codecs: Vec<RTCRtpCodecParameters>,
    pub_extensions: Vec<(String, u8)>,
    cache: RtxCache,
    keyframes: KeyframeThrottle,
    keyframe_wanted: bool,
    highest_seq: Option<u16>,
    subscribers: Vec<Fanout>,
}

/// A datagram the shard wants sent.
pub(crate) struct Transmit {
    pub destination: SocketAddr,
    /// Already allocated by the core (SRTP ciphertext, DTLS, STUN); sent as is, then dropped.
    pub bytes: BytesMut,
    /// A forwarded copy: when its publisher packet was received, for the forwarding latency.
    pub received_at: Option<Instant>,
}

pub(crate) struct Shard {
    /// This shard's index among the SFU's shards (its tag in every ufrag it hands out).
    index: usize,
    candidates: Vec<SocketAddr>,
    config: MediaConfig,
    metrics: Metrics,
    counters: Arc<CoreCounters>,
    /// What the signaling layer must hear, drained with [`Shard::poll_event`].
    events: VecDeque<MediaEvent>,
    rng: StdRng,

    demux: Demux<PcId>,
    pcs: HashMap<PcId, Pc>,
    tracks: HashMap<TrackKey, Track>,
    rooms: HashMap<String, Room>,
    timers: BinaryHeap<Reverse<(Instant, PcId)>>,
    dirty: Vec<PcId>,
    transmits: VecDeque<Transmit>,
    early_candidates: EarlyCandidates,
    closed_recently: HashMap<(String, String), Instant>,
    next_id: u64,
    epoch: Instant,
    /// Unix time at `epoch`: wall-clock time (NTP, for RTCP) is `epoch_unix + (now - epoch)`.
    epoch_unix: Duration,
    next_housekeeping: Instant,
    last_liveness_check: Instant,
    last_drop_summary: Instant,
    /// Scratch buffers reused on every drive (no per-packet allocation for bookkeeping).
    scratch_events: Vec<RTCPeerConnectionEvent>,
    scratch_reads: Vec<TaggedRTCMessage>,
    copy_scratch: CopyScratch,
    last_sender_reports: Instant,
}

fn valid_id(s: &str, what: &'static str) -> Result<(), MediaError> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        Err(MediaError::InvalidId(what))
    } else {
        Ok(())
    }
}

fn media_kind(kind: RtpCodecKind) -> MediaKind {
    if kind == RtpCodecKind::Audio {
        MediaKind::Audio
    } else {
        MediaKind::Video
    }
}

fn rtc_kind(kind: MediaKind) -> RtpCodecKind {
    match kind {
        MediaKind::Audio => RtpCodecKind::Audio,
        MediaKind::Video => RtpCodecKind::Video,
    }
}

/// Runs a call into the webrtc-rs core, turning a panic inside it into an error so that
/// hostile input can never take the media loop (and every other room) down.
fn guarded<T>(f: impl FnOnce() -> Result<T, MediaError>) -> Result<T, MediaError> {
    std::panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(MediaError::Rtc("webrtc core panicked".into())))
}

/// One subscriber's copy of a publisher packet: rewrites the header for this subscriber into
/// `scratch`, then protects and sends it ([`send_copy`]). Returns whether a datagram went out:
/// not if the subscriber did not negotiate the payload type or its DTLS-SRTP is not up yet.
///
/// This is the whole per-copy cost of the forwarding path; the media loop calls it once per
/// ready subscriber, and the `bench` feature exposes it to the forwarding benchmark.
pub fn write_copy(
    rewriter: &mut Rewriter,
    rtc: &mut RTCPeerConnection,
    packet: &Packet,
    now_us: u64,
    scratch: &mut CopyScratch,
    send: impl FnMut(BytesMut, SocketAddr),
) -> bool {
    rewriter.rewrite_into(&packet.header, now_us, &mut scratch.header)
        && send_copy(rewriter, rtc, &packet.payload, scratch, send)
}

/// Marshals `scratch.header` with `payload`, protects it with the subscriber connection's
/// SRTP context directly (`RTCPeerConnection::protect_rtp`, our patch of rtc: no handler
/// pipeline, no interceptors — the rewriter counts the packet for our own sender reports)
/// and hands the datagram (the ciphertext the core allocated) to `send`.
fn send_copy(
    rewriter: &mut Rewriter,
    rtc: &mut RTCPeerConnection,
    payload: &[u8],
    scratch: &mut CopyScratch,
    mut send: impl FnMut(BytesMut, SocketAddr),
) -> bool {
    if !scratch.marshal(payload) {
        return false;
    }
    let CopyScratch { header, bytes } = scratch;
    match guarded(|| rtc.protect_rtp(bytes, header).map_err(MediaError::from)) {
        Ok(Some((datagram, to))) => {
            send(datagram, to);
            rewriter.count_sent(payload.len());
            true
        }
        _ => false,
    }
}

impl Shard {
    /// A shard announcing `candidates` as its host candidates. `now` and `unix_now` (the wall
    /// clock at `now`, since the Unix epoch) fix the mapping from the monotonic clock of every
    /// later input to the NTP time of RTCP; `rng` is its only source of randomness.
    pub fn new(
        config: MediaConfig,
        candidates: Vec<SocketAddr>,
        metrics: Metrics,
        rng: StdRng,
        now: Instant,
        unix_now: Duration,
    ) -> Result<Self, MediaError> {
        Ok(Self {
            index: 0,
            candidates,
            config,
            metrics,
            counters: Arc::new(CoreCounters::default()),
            events: VecDeque::new(),
            rng,
            demux: Demux::new(
                rtc::crypto::default_provider().map_err(|e| MediaError::Rtc(e.to_string()))?,
            ),
            pcs: HashMap::new(),
            tracks: HashMap::new(),
            rooms: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            transmits: VecDeque::new(),
            early_candidates: EarlyCandidates::default(),
            closed_recently: HashMap::new(),
            next_id: 1,
            epoch: now,
            epoch_unix: unix_now,
            next_housekeeping: now + HOUSEKEEPING,
            last_liveness_check: now,
            last_drop_summary: now,
            scratch_events: Vec::new(),
            scratch_reads: Vec::new(),
            copy_scratch: CopyScratch::default(),
            last_sender_reports: now,
        })
    }

    /// Makes this shard number `index` of `shards` ([`crate::route`]): its ufrags carry the
    /// index, and with more than one shard it reports the client addresses it learns and
    /// forgets ([`Shard::poll_address_change`]) so the others can hand it their datagrams.
    pub fn with_index(mut self, index: usize, shards: usize) -> Self {
        self.index = index;
        if shards > 1 {
            self.demux.report_address_changes();
        }
        self
    }

    /// A client address this shard learnt or forgot since the last call (only with more than
    /// one shard), for the other shards' routers.
    pub fn poll_address_change(&mut self) -> Option<AddressChange> {
        self.demux.drain_address_changes().next()
    }

    /// Whether datagrams from `source` are this shard's (it learnt the address from STUN).
    pub fn knows_address(&self, source: &Remote) -> bool {
        self.demux.knows_address(source)
    }

    /// The next event for the signaling layer, in the order they happened.
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// The next datagram to send, in the order the shard produced them.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`Shard::handle_timeout`] must next be called: the earliest connection timeout or
    /// the next 100 ms housekeeping tick (metrics flush, held-back keyframe requests, sender
    /// reports, liveness). Never more than 100 ms ahead.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next = self
            .timers
            .peek()
            .map(|Reverse((t, _))| *t)
            .unwrap_or(self.next_housekeeping)
            .min(self.next_housekeeping);
        Some(next)
    }

    /// Runs whatever is due at `now`: connection timeouts (RTCP, retransmissions, ICE) and, if
    /// its time has come, housekeeping.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.run_timers(now);
        if now >= self.next_housekeeping {
            self.housekeeping(now);
            self.next_housekeeping = now + HOUSEKEEPING;
        }
        self.drive_dirty(now);
    }

    // ------------------------------------------------------------------ inputs

    /// A datagram from `source` over `transport` that arrived on local address `destination`
    /// (one of the announced candidates) at `now`.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        transport: TransportProtocol,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        let from = source;
        let id = match self.demux.route(
            Remote {
                transport,
                addr: from,
            },
            data,
        ) {
            Ok(id) => id,
            Err(reason) => {
                self.metrics.dropped(reason);
                return;
            }
        };
        let Some(pc) = self.pcs.get_mut(&id) else {
            self.metrics.dropped(DropReason::UnknownSource);
            return;
        };
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: destination,
                peer_addr: from,
                ecn: None,
                transport_protocol: transport,
            },
            message: BytesMut::from(data),
        };
        let rtc = &mut pc.rtc;
        if guarded(|| rtc.handle_read(msg).map_err(MediaError::from)).is_err() {
            self.metrics
                .dropped(crate::demux::classify(data).rejected());
        } else {
            // Only what the connection accepted (authenticated STUN, DTLS, SRTP) proves the
            // client is alive: a spoofed datagram must not keep a dead connection open.
            pc.last_rx = Some(now);
        }
        self.drive(id, now);
        self.drive_dirty(now);
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(pc) = self.pcs.get_mut(&id) else {
                continue;
            };
            if pc.scheduled != Some(t) {
                continue; // stale entry
            }
            pc.scheduled = None;
            let rtc = &mut pc.rtc;
            if let Err(e) = guarded(|| rtc.handle_timeout(now).map_err(MediaError::from)) {
                debug!("handle_timeout: {e}");
            }
            self.drive(id, now);
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        let nack_out = self.counters.nack_out.swap(0, Ordering::Relaxed);
        if nack_out > 0 {
            self.metrics.nack_out.inc_by(nack_out);
        }
        // Keyframe requests that the throttle held back.
        let wanted: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.keyframe_wanted)
            .map(|(k, _)| *k)
            .collect();
        for key in wanted {
            self.request_keyframe(key, now);
        }
        self.send_sender_reports(now);
        self.metrics.flush();
        // The summary reads the totals every shard adds to: the first shard speaks for all.
        if self.index == 0 && now.duration_since(self.last_drop_summary) >= DROP_SUMMARY_EVERY {
            self.last_drop_summary = now;
            self.log_drop_summary();
        }
        if now.duration_since(self.last_liveness_check) >= Duration::from_secs(1) {
            self.last_liveness_check = now;
            self.check_liveness(now);
            self.early_candidates
                .prune(now.checked_sub(EARLY_CANDIDATE_TTL).unwrap_or(now));
            self.closed_recently
                .retain(|_, t| now.duration_since(*t) < CLOSED_MEMORY);
        }
    }

    /// One line for every datagram dropped in the last interval: garbage on a public UDP port is
    /// routine, and a line per datagram would let anyone fill the disk.
    fn log_drop_summary(&mut self) {
        let drops = self.metrics.drops_since_last_summary();
        if drops.is_empty() {
            return;
        }
        let total: u64 = drops.iter().map(|(_, n)| n).sum();
        let by_reason = drops
            .iter()
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        warn!(
            total,
            by_reason,
            interval_secs = DROP_SUMMARY_EVERY.as_secs(),
            "media port dropped datagrams (callrelay_media_datagrams_dropped_total)"
        );
    }

    /// Closes participants whose connections went silent (consent freshness, RFC 7675) or
    /// never connected.
    fn check_liveness(&mut self, now: Instant) {
        let timeout = self.config.liveness_timeout;
        let mut dead: Vec<(String, String, &'static str)> = Vec::new();
        for pc in self.pcs.values() {
            if !pc.negotiated {
                continue;
            }
            let reason = match (pc.connected, pc.last_rx) {
                (true, Some(rx)) if now.duration_since(rx) > timeout => Some("consent-timeout"),
                (false, rx) if now.duration_since(rx.unwrap_or(pc.created)) > timeout => {
                    Some("ice-timeout")
                }
                _ => None,
            };
            if let Some(reason) = reason {
                dead.push((pc.room.clone(), pc.participant.clone(), reason));
            }
        }
        for (room, participant, reason) in dead {
            self.close_participant(&room, &participant, Some(reason), now);
        }
    }

    // ------------------------------------------------------------------ driving

    fn mark_dirty(dirty: &mut Vec<PcId>, pc: &mut Pc, id: PcId) {
        if !pc.dirty {
            pc.dirty = true;
            dirty.push(id);
        }
    }

    fn drive_dirty(&mut self, now: Instant) {
        while let Some(id) = self.dirty.pop() {
            if let Some(pc) = self.pcs.get_mut(&id) {
                pc.dirty = false;
                self.drive(id, now);
            }
        }
    }

    /// Drains one connection: events, decoded packets, outgoing datagrams, next timeout.
    fn drive(&mut self, id: PcId, now: Instant) {
        for _ in 0..64 {
            let mut events = std::mem::take(&mut self.scratch_events);
            let mut reads = std::mem::take(&mut self.scratch_reads);
            {
                let Some(pc) = self.pcs.get_mut(&id) else {
                    return;
                };
                let rtc = &mut pc.rtc;
                let _ = guarded(|| {
                    while let Some(ev) = rtc.poll_event() {
                        events.push(ev);
                    }
                    while let Some(msg) = rtc.poll_read() {
                        reads.push(msg);
                    }
                    Ok(())
                });
            }
            let idle = events.is_empty() && reads.is_empty();
            for ev in events.drain(..) {
                self.handle_pc_event(id, ev, now);
            }
            for msg in reads.drain(..) {
                match msg.message {
                    RTCMessage::RtpPacket(_, packet) => self.forward_rtp(id, packet, now),
                    RTCMessage::RtcpPacket(_, packets) => self.handle_rtcp(id, &packets, now),
                    _ => {}
                }
            }
            self.scratch_events = events;
            self.scratch_reads = reads;
            self.flush_writes(id);
            if idle {
                break;
            }
        }
        self.schedule(id, now);
    }

    fn flush_writes(&mut self, id: PcId) {
        let Some(pc) = self.pcs.get_mut(&id) else {
            return;
        };
        let rtc = &mut pc.rtc;
        let transmits = &mut self.transmits;
        let _ = guarded(|| {
            while let Some(out) = rtc.poll_write() {
                transmits.push_back(Transmit {
                    destination: out.transport.peer_addr,
                    bytes: out.message,
                    received_at: None,
                });
            }
            Ok(())
        });
    }

    fn schedule(&mut self, id: PcId, now: Instant) {
        let Some(pc) = self.pcs.get_mut(&id) else {
            return;
        };
        let rtc = &mut pc.rtc;
        let Ok(Some(mut t)) = guarded(|| Ok(rtc.poll_timeout())) else {
            return;
        };
        if t <= now {
            t = now + Duration::from_millis(1);
        }
        if pc.scheduled.is_none_or(|s| t < s) {
            pc.scheduled = Some(t);
            self.timers.push(Reverse((t, id)));
        }
    }

    fn emit(&mut self, ev: MediaEvent) {
        self.events.push_back(ev);
    }

    fn handle_pc_event(&mut self, id: PcId, ev: RTCPeerConnectionEvent, now: Instant) {
        let Some(pc) = self.pcs.get_mut(&id) else {
            return;
        };
        let (room, participant, kind) = (pc.room.clone(), pc.participant.clone(), pc.kind);
        match ev {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                debug!(%room, %participant, pc = kind.as_str(), %state, "connection state");
                if state == RTCPeerConnectionState::Connected {
                    pc.connected = true;
                }
                self.emit(MediaEvent::ConnectionState {
                    room: room.clone(),
                    participant: participant.clone(),
                    pc: kind,
                    state: state.to_string(),
                });
                match state {
                    RTCPeerConnectionState::Connected if kind == PcKind::Subscribe => {
                        self.activate_fanouts(id, now);
                    }
                    RTCPeerConnectionState::Failed => {
                        self.close_participant(&room, &participant, Some("connection-failed"), now);
                    }
                    // We remove a connection before closing it ourselves, so this is the
                    // client closing (DTLS close_notify).
                    RTCPeerConnectionState::Closed => {
                        self.close_participant(&room, &participant, Some("remote-closed"), now);
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                RTCIceConnectionState::Failed,
            ) => {
                self.close_participant(&room, &participant, Some("ice-failed"), now);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init))
                if kind == PcKind::Publish =>
            {
                self.publish_track(id, init, now);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id))
                if kind == PcKind::Publish =>
            {
                let key = self.tracks.iter().find_map(|(k, t)| {
                    (t.pub_pc == id && t.track_id == track_id.as_str()).then_some(*k)
                });
                if let Some(key) = key {
                    self.unpublish_track(key, now);
                }
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------------ media path

    /// The hot path: one publisher packet in, one rewritten copy per ready subscriber out.
    fn forward_rtp(&mut self, pub_id: PcId, packet: Packet, rx_at: Instant) {
        let ssrc = packet.header.ssrc;
        // OnOpen (handled before reads in `drive`) registered every SSRC we forward, and a
        // track stopped by renegotiation and re-enabled is published again on its first
        // packet; anything else (an SSRC we did not negotiate) is dropped.
        let known = self
            .pcs
            .get(&pub_id)
            .and_then(|pc| pc.in_tracks.get(&ssrc))
            .copied();
        let Some(key) = known.or_else(|| self.revive_track(pub_id, ssrc, rx_at)) else {
            return;
        };
        let Self {
            pcs,
            tracks,
            metrics,
            transmits,
            epoch,
            copy_scratch,
            ..
        } = self;
        let Some(track) = tracks.get_mut(&key) else {
            return;
        };
        let kind = kind_index(track.kind);
        metrics.packets_received[kind].inc();
        let seq = packet.header.sequence_number;
        match track.highest_seq {
            Some(h) if seq_newer(seq, h) => {
                let gap = seq.wrapping_sub(h) - 1;
                if gap > 0 {
                    metrics.packets_lost.inc_by(u64::from(gap));
                }
                track.highest_seq = Some(seq);
            }
            Some(_) => {}
            None => track.highest_seq = Some(seq),
        }
        track.cache.insert(&packet);
        let now_us = rx_at.duration_since(*epoch).as_micros() as u64;
        let payload_len = packet.payload.len() as u64;
        for f in track.subscribers.iter_mut().filter(|f| f.ready) {
            let Some(sub) = pcs.get_mut(&f.sub_pc) else {
                continue;
            };
            let written = write_copy(
                &mut f.rewriter,
                &mut sub.rtc,
                &packet,
                now_us,
                copy_scratch,
                |bytes, destination| {
                    transmits.push_back(Transmit {
                        destination,
                        bytes,
                        received_at: Some(rx_at),
                    });
                },
            );
            if written {
                f.rtx.forwarded(copy_scratch.bytes.len(), now_us);
                metrics.packets_forwarded[kind].inc();
                metrics.bytes_forwarded[kind].inc_by(payload_len);
            }
        }
    }
}

fn unknown(room: &str, participant: &str) -> MediaError {
    MediaError::UnknownParticipant {
        room: room.to_owned(),
        participant: participant.to_owned(),
    }
}

/// The shard on a manual clock: no socket, no sleeping.
#[cfg(test)]
mod clock_tests;
/// The test kit: the shard and client peers on a manual clock, in memory.
#[cfg(test)]
mod testkit;
