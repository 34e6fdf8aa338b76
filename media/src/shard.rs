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
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::SfuStats;
use crate::demux::{Demux, DropReason};
use crate::forward::{CopyScratch, ExtIdMap, PayloadTypeMap, Rewriter, seq_newer};
use crate::keyframe::KeyframeThrottle;
use crate::metrics::{Metrics, kind_index};
use crate::peer::{self, CoreCounters, FORWARDED_EXTENSIONS, PcSetup};
use crate::room::{
    EarlyCandidates, MAX_PENDING_CANDIDATES, Negotiation, Participant, PcId, Room, TrackKey,
};
use crate::rtx_cache::{DEFAULT_CAPACITY, RtxCache, RtxLimiter, Suppressed, Verdict};
use crate::{CandidateInit, Command, MediaConfig, MediaError, MediaEvent, MediaKind, PcKind};

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

/// One m-section of a publisher's offer, as far as deciding whether it still sends a track.
#[derive(Debug, Default)]
struct OfferedSection {
    mid: Option<String>,
    /// Port non-zero, direction sendrecv/sendonly and a track announced (msid or ssrc).
    sends: bool,
    ssrcs: Vec<u32>,
    track_ids: Vec<String>,
}

/// Parses the m-sections of a (remote) SDP: mid, whether it sends, SSRCs and msid track ids.
fn offered_sections(sdp: &str) -> Vec<OfferedSection> {
    struct Acc {
        section: OfferedSection,
        port_zero: bool,
        direction_sends: bool,
        has_msid: bool,
    }
    fn finish(a: Acc) -> OfferedSection {
        let mut section = a.section;
        let announced = a.has_msid || !section.ssrcs.is_empty();
        section.sends = !a.port_zero && a.direction_sends && announced;
        section
    }
    let mut out = Vec::new();
    let mut cur: Option<Acc> = None;
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            if let Some(a) = cur.take() {
                out.push(finish(a));
            }
            let port = m.split_whitespace().nth(1).unwrap_or("0");
            cur = Some(Acc {
                section: OfferedSection::default(),
                port_zero: port.split('/').next() == Some("0"),
                // RFC 4566: sendrecv unless stated otherwise.
                direction_sends: true,
                has_msid: false,
            });
            continue;
        }
        let Some(a) = cur.as_mut() else { continue };
        let Some(attr) = line.strip_prefix("a=") else {
            continue;
        };
        match attr {
            "sendrecv" | "sendonly" => a.direction_sends = true,
            "recvonly" | "inactive" => a.direction_sends = false,
            _ => {}
        }
        if let Some(mid) = attr.strip_prefix("mid:") {
            a.section.mid = Some(mid.trim().to_owned());
        } else if let Some(msid) = attr.strip_prefix("msid:") {
            a.has_msid = true;
            if let Some(track) = msid.split_whitespace().nth(1) {
                a.section.track_ids.push(track.to_owned());
            }
        } else if let Some(ssrc) = attr.strip_prefix("ssrc:") {
            let mut parts = ssrc.splitn(2, ' ');
            if let Some(Ok(n)) = parts.next().map(str::parse::<u32>) {
                if !a.section.ssrcs.contains(&n) {
                    a.section.ssrcs.push(n);
                }
                if let Some(track) = parts
                    .next()
                    .and_then(|rest| rest.strip_prefix("msid:"))
                    .and_then(|msid| msid.split_whitespace().nth(1))
                {
                    a.section.track_ids.push(track.to_owned());
                }
            }
        }
    }
    if let Some(a) = cur.take() {
        out.push(finish(a));
    }
    out
}

/// Whether the m-section a track arrives on still sends it. The section is found by mid if
/// known, else by SSRC, else by msid track id; a track with no section no longer sends.
fn still_sent(sections: &[OfferedSection], mid: Option<&str>, ssrc: u32, track_id: &str) -> bool {
    let by_mid = mid.and_then(|mid| sections.iter().find(|s| s.mid.as_deref() == Some(mid)));
    by_mid
        .or_else(|| sections.iter().find(|s| s.ssrcs.contains(&ssrc)))
        .or_else(|| {
            sections
                .iter()
                .find(|s| s.track_ids.iter().any(|t| t == track_id))
        })
        .is_some_and(|s| s.sends)
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
    candidates: Vec<SocketAddr>,
    config: MediaConfig,
    metrics: Metrics,
    counters: Arc<CoreCounters>,
    events: mpsc::UnboundedSender<MediaEvent>,
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
        events: mpsc::UnboundedSender<MediaEvent>,
        rng: StdRng,
        now: Instant,
        unix_now: Duration,
    ) -> Result<Self, MediaError> {
        Ok(Self {
            candidates,
            config,
            metrics,
            counters: Arc::new(CoreCounters::default()),
            events,
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

    /// A datagram from `source` that arrived on local address `destination` (one of the
    /// announced candidates) at `now`.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        let from = source;
        let id = match self.demux.route(from, data) {
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
                transport_protocol: TransportProtocol::UDP,
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
        if now.duration_since(self.last_drop_summary) >= DROP_SUMMARY_EVERY {
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

    fn emit(&self, ev: MediaEvent) {
        let _ = self.events.send(ev);
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

    /// RTCP the interceptors delivered: feedback from subscribers about tracks we send them.
    fn handle_rtcp(&mut self, id: PcId, packets: &[Box<dyn rtc::rtcp::Packet>], now: Instant) {
        let Some(pc) = self.pcs.get(&id) else { return };
        if pc.kind != PcKind::Subscribe {
            return;
        }
        for p in packets {
            let any = p.as_any();
            if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                self.metrics.pli_in.inc();
                if let Some(key) = self.out_track(id, pli.media_ssrc) {
                    self.request_keyframe(key, now);
                }
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                self.metrics.pli_in.inc();
                let keys: Vec<TrackKey> = fir
                    .fir
                    .iter()
                    .filter_map(|e| self.out_track(id, e.ssrc))
                    .collect();
                for key in keys {
                    self.request_keyframe(key, now);
                }
            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                self.metrics.nack_in.inc();
                self.answer_nack(id, nack, now);
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                self.observe_rtt(id, rr, now);
            }
        }
    }

    fn out_track(&self, sub: PcId, ssrc: u32) -> Option<TrackKey> {
        self.pcs.get(&sub)?.out_ssrcs.get(&ssrc).copied()
    }

    /// Answers a subscriber's NACK from the track's retransmission cache, within the
    /// down-track's limits ([`RtxLimiter`]): every sequence number named (the FCI's packet id
    /// and each bit of its bitmask) is resent at most once per NACK and per round trip, and only
    /// while the retransmission budget lasts; what is not resent is counted by reason.
    fn answer_nack(&mut self, sub_id: PcId, nack: &TransportLayerNack, now: Instant) {
        let Some(key) = self.out_track(sub_id, nack.media_ssrc) else {
            return;
        };
        let now_us = now.duration_since(self.epoch).as_micros() as u64;
        let Self {
            pcs,
            tracks,
            transmits,
            metrics,
            copy_scratch,
            ..
        } = self;
        let Some(Track {
            subscribers,
            cache,
            media_ssrc,
            kind,
            ..
        }) = tracks.get_mut(&key)
        else {
            return;
        };
        let kind = kind_index(*kind);
        let Some(f) = subscribers.iter_mut().find(|f| f.sub_pc == sub_id) else {
            return;
        };
        let Some(sub) = pcs.get_mut(&sub_id) else {
            return;
        };
        f.rtx.begin_nack();
        for pair in &nack.nacks {
            let lost = std::iter::once(pair.packet_id).chain(
                (0..16u16)
                    .filter(|i| pair.lost_packets & (1 << i) != 0)
                    .map(|i| pair.packet_id.wrapping_add(i + 1)),
            );
            for out_seq in lost {
                let suppressed = |reason: Suppressed| {
                    metrics.retransmissions_suppressed[reason.index()].inc();
                };
                // Only what was forwarded to this subscriber (its segment, up to the highest
                // sent) reaches the limiter's ring, so made-up numbers cannot disturb it.
                let Some(src_seq) = f.rewriter.source_seq(out_seq) else {
                    suppressed(Suppressed::NotCached);
                    continue;
                };
                match f.rtx.check(out_seq, now_us) {
                    Verdict::Resend => {}
                    Verdict::Duplicate => continue,
                    Verdict::Suppressed(reason) => {
                        suppressed(reason);
                        continue;
                    }
                }
                let Some(original) = cache.get(*media_ssrc, src_seq) else {
                    suppressed(Suppressed::NotCached);
                    continue;
                };
                if !f
                    .rewriter
                    .rewrite_retransmission_into(&original.header, &mut copy_scratch.header)
                {
                    suppressed(Suppressed::NotCached);
                    continue;
                }
                let octets = copy_scratch.header.marshal_size() + original.payload.len();
                if !f.rtx.affordable(octets) {
                    suppressed(Suppressed::Budget);
                    continue;
                }
                let sent = send_copy(
                    &mut f.rewriter,
                    &mut sub.rtc,
                    &original.payload,
                    copy_scratch,
                    |bytes, destination| {
                        transmits.push_back(Transmit {
                            destination,
                            bytes,
                            received_at: None,
                        });
                    },
                );
                if sent {
                    f.rtx.sent(out_seq, octets, now_us);
                    metrics.retransmissions[kind].inc();
                }
            }
        }
    }

    /// The NTP time (RFC 3550) at `now`, from the wall-clock epoch given at construction.
    fn ntp(&self, now: Instant) -> u64 {
        SystemInstant::unix2ntp(self.epoch_unix + now.saturating_duration_since(self.epoch))
    }

    /// Sends every connected subscriber an RTCP sender report per track it receives, once a
    /// second (what rtc's sender-report interceptor did before the SFU protected its copies
    /// itself): browsers need them for audio/video sync and for their round-trip time.
    fn send_sender_reports(&mut self, now: Instant) {
        if now.duration_since(self.last_sender_reports) < SENDER_REPORT_INTERVAL {
            return;
        }
        self.last_sender_reports = now;
        let now_us = now.duration_since(self.epoch).as_micros() as u64;
        let ntp_now = self.ntp(now);
        let Self {
            pcs, tracks, dirty, ..
        } = self;
        for track in tracks.values() {
            for f in track.subscribers.iter().filter(|f| f.ready) {
                let Some(sr) = f.rewriter.sender_report(now_us, ntp_now) else {
                    continue;
                };
                let Some(sub) = pcs.get_mut(&f.sub_pc) else {
                    continue;
                };
                let rtc = &mut sub.rtc;
                let written = guarded(|| {
                    rtc.handle_write(TaggedRTCMessage {
                        now,
                        message: RTCMessage::RtcpPacket(String::new(), vec![Box::new(sr)]),
                    })
                    .map_err(MediaError::from)
                });
                if written.is_ok() {
                    Self::mark_dirty(dirty, sub, f.sub_pc);
                }
            }
        }
    }

    /// Round-trip times from a subscriber's receiver report: into the histogram, and into the
    /// retransmission limits of the down-track each report block is about.
    fn observe_rtt(&mut self, sub_id: PcId, rr: &ReceiverReport, now: Instant) {
        let now_ntp = self.ntp(now);
        let Some(pc) = self.pcs.get(&sub_id) else {
            return;
        };
        let mid = (now_ntp >> 16) as u32;
        for r in &rr.reports {
            if r.last_sender_report == 0 {
                continue;
            }
            let Some(key) = pc.out_ssrcs.get(&r.ssrc) else {
                continue;
            };
            let rtt = mid.wrapping_sub(r.last_sender_report).wrapping_sub(r.delay);
            if rtt < 0x8000_0000 {
                self.metrics.rtt.observe(f64::from(rtt) / 65_536.0);
                let fanout = self
                    .tracks
                    .get_mut(key)
                    .and_then(|t| t.subscribers.iter_mut().find(|f| f.sub_pc == sub_id));
                if let Some(f) = fanout {
                    // 1/65536 s units to µs.
                    f.rtx.observe_rtt(u64::from(rtt) * 1_000_000 / 65_536);
                }
            }
        }
    }

    /// Asks the publisher of `key` for a keyframe, at most once per throttle interval; a
    /// request held back is sent when the interval has passed.
    fn request_keyframe(&mut self, key: TrackKey, now: Instant) {
        let Some(track) = self.tracks.get_mut(&key) else {
            return;
        };
        if track.kind != MediaKind::Video {
            track.keyframe_wanted = false;
            return;
        }
        if !track.keyframes.allow(now) {
            track.keyframe_wanted = true;
            return;
        }
        track.keyframe_wanted = false;
        let media_ssrc = track.media_ssrc;
        let pub_id = track.pub_pc;
        let Some(pc) = self.pcs.get_mut(&pub_id) else {
            return;
        };
        let rtc = &mut pc.rtc;
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        if guarded(|| {
            rtc.handle_write(TaggedRTCMessage {
                now,
                message: RTCMessage::RtcpPacket(String::new(), vec![Box::new(pli)]),
            })
            .map_err(MediaError::from)
        })
        .is_ok()
        {
            self.metrics.pli_out.inc();
            Self::mark_dirty(&mut self.dirty, pc, pub_id);
        }
    }

    // ------------------------------------------------------------------ tracks

    fn publish_track(&mut self, pub_id: PcId, init: RTCTrackEventInit, now: Instant) {
        let Some(pc) = self.pcs.get_mut(&pub_id) else {
            return;
        };
        if pc.in_tracks.contains_key(&init.ssrc) {
            return;
        }
        let (room, publisher) = (pc.room.clone(), pc.participant.clone());
        let info = guarded(|| {
            let transceivers: Vec<_> = pc.rtc.get_transceivers().collect();
            let mid = transceivers.into_iter().find_map(|t| {
                let t = pc.rtc.rtp_transceiver(t)?;
                if t.receiver() == Some(init.receiver_id) {
                    t.mid().clone()
                } else {
                    None
                }
            });
            let mut receiver = pc
                .rtc
                .rtp_receiver(init.receiver_id)
                .ok_or(MediaError::InvalidState("no receiver"))?;
            let track = receiver.track();
            let kind = track.kind();
            let codec = track.codec(init.ssrc).cloned();
            let params = receiver.get_parameters();
            let codecs = params.rtp_parameters.codecs.clone();
            let exts: Vec<(String, u8)> = params
                .rtp_parameters
                .header_extensions
                .iter()
                .map(|h| (h.uri.clone(), h.id as u8))
                .collect();
            Ok((mid, kind, codec, codecs, exts))
        });
        let Ok((mid, kind, Some(codec), pub_codecs, pub_extensions)) = info else {
            warn!(%room, %publisher, "track opened without a usable codec; ignored");
            return;
        };
        let info = TrackInfo {
            track_id: init.track_id.to_string(),
            mid,
            kind: media_kind(kind),
            codec,
            media_ssrc: init.ssrc,
            pub_codecs,
            pub_extensions,
        };
        self.insert_track(pub_id, info, now);
    }

    /// Publishes a track of `pub_id` into its room: every other member renegotiates.
    fn insert_track(&mut self, pub_id: PcId, info: TrackInfo, now: Instant) -> Option<TrackKey> {
        let pc = self.pcs.get_mut(&pub_id)?;
        if pc.in_tracks.contains_key(&info.media_ssrc) {
            return None;
        }
        // Whatever was stopped on this SSRC or under this track id is superseded.
        pc.dormant
            .retain(|ssrc, d| *ssrc != info.media_ssrc && d.info.track_id != info.track_id);
        let (room, publisher) = (pc.room.clone(), pc.participant.clone());
        // The same track id on a new SSRC (the publisher restarted it): replace the old one.
        let old = self
            .tracks
            .iter()
            .find_map(|(k, t)| (t.pub_pc == pub_id && t.track_id == info.track_id).then_some(*k));
        if let Some(old) = old {
            self.unpublish_track(old, now);
        }
        let key = TrackKey(self.next_id());
        let TrackInfo {
            track_id,
            mid,
            kind,
            codec,
            media_ssrc,
            pub_codecs,
            pub_extensions,
        } = info;
        info!(%room, %publisher, track = %track_id, kind = kind.as_str(), codec = %codec.mime_type, "track published");
        self.tracks.insert(
            key,
            Track {
                room: room.clone(),
                publisher: publisher.clone(),
                track_id: track_id.clone(),
                mid,
                kind,
                codec,
                pub_pc: pub_id,
                media_ssrc,
                pub_codecs,
                pub_extensions,
                cache: RtxCache::new(if kind == MediaKind::Video {
                    DEFAULT_CAPACITY
                } else {
                    64
                }),
                keyframes: KeyframeThrottle::default(),
                keyframe_wanted: false,
                highest_seq: None,
                subscribers: Vec::new(),
            },
        );
        if let Some(pc) = self.pcs.get_mut(&pub_id) {
            pc.in_tracks.insert(media_ssrc, key);
        }
        if let Some(p) = self
            .rooms
            .get_mut(&room)
            .and_then(|r| r.participants.get_mut(&publisher))
        {
            p.published.push(key);
        }
        self.update_track_gauges();
        self.emit(MediaEvent::TrackPublished {
            room: room.clone(),
            participant: publisher.clone(),
            kind,
            track_id,
        });
        self.sync_room(&room, Some(&publisher), now);
        Some(key)
    }

    /// A packet on an SSRC the publish connection does not forward: if it belongs to a track
    /// the publisher stopped and has since re-enabled, publish that track again. Off the
    /// forwarding path proper: it runs only for packets that would otherwise be dropped.
    #[cold]
    fn revive_track(&mut self, pub_id: PcId, ssrc: u32, now: Instant) -> Option<TrackKey> {
        let pc = self.pcs.get_mut(&pub_id)?;
        if !pc.dormant.get(&ssrc).is_some_and(|d| d.revivable) {
            return None;
        }
        let d = pc.dormant.remove(&ssrc)?;
        self.insert_track(pub_id, d.info, now)
    }

    /// After a new offer on an existing publish connection: every track whose m-section no
    /// longer sends (direction inactive/recvonly, port 0, no msid/ssrc, or gone) leaves the
    /// room exactly as on a leave; stopped tracks whose m-section sends again become
    /// publishable again when their RTP arrives. webrtc-rs does not report these changes.
    fn reconcile_published(&mut self, pub_id: PcId, now: Instant) {
        let Some(pc) = self.pcs.get_mut(&pub_id) else {
            return;
        };
        let rtc = &pc.rtc;
        let Ok(Some(sdp)) = guarded(|| Ok(rtc.remote_description().map(|d| d.sdp.clone()))) else {
            return;
        };
        let sections = offered_sections(&sdp);
        for d in pc.dormant.values_mut() {
            let i = &d.info;
            d.revivable = still_sent(&sections, i.mid.as_deref(), i.media_ssrc, &i.track_id);
        }
        let stopped: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.pub_pc == pub_id)
            .filter(|(_, t)| !still_sent(&sections, t.mid.as_deref(), t.media_ssrc, &t.track_id))
            .map(|(k, _)| *k)
            .collect();
        if stopped.is_empty() {
            return;
        }
        let mut room = None;
        for key in stopped {
            let Some(track) = self.remove_track(key) else {
                continue;
            };
            info!(room = %track.room, publisher = %track.publisher, track = %track.track_id, "track stopped by renegotiation");
            room = Some((track.room.clone(), track.publisher.clone()));
            if let Some(pc) = self.pcs.get_mut(&pub_id) {
                pc.dormant.insert(
                    track.media_ssrc,
                    Dormant {
                        info: TrackInfo {
                            track_id: track.track_id,
                            mid: track.mid,
                            kind: track.kind,
                            codec: track.codec,
                            media_ssrc: track.media_ssrc,
                            pub_codecs: track.pub_codecs,
                            pub_extensions: track.pub_extensions,
                        },
                        revivable: false,
                    },
                );
            }
        }
        if let Some((room, publisher)) = room {
            self.sync_room(&room, Some(&publisher), now);
        }
    }

    fn unpublish_track(&mut self, key: TrackKey, now: Instant) {
        let Some(track) = self.remove_track(key) else {
            return;
        };
        self.sync_room(&track.room, Some(&track.publisher), now);
    }

    /// Takes a track out of the SFU (forwarding entries, the publisher's list, gauges, event)
    /// without renegotiating its subscribers yet: the caller syncs the room.
    fn remove_track(&mut self, key: TrackKey) -> Option<Track> {
        let track = self.tracks.remove(&key)?;
        if let Some(pc) = self.pcs.get_mut(&track.pub_pc) {
            pc.in_tracks.retain(|_, k| *k != key);
        }
        for f in &track.subscribers {
            if let Some(pc) = self.pcs.get_mut(&f.sub_pc) {
                pc.out_ssrcs.retain(|_, k| *k != key);
            }
        }
        if let Some(p) = self
            .rooms
            .get_mut(&track.room)
            .and_then(|r| r.participants.get_mut(&track.publisher))
        {
            p.published.retain(|k| *k != key);
        }
        self.update_track_gauges();
        self.emit(MediaEvent::TrackUnpublished {
            room: track.room.clone(),
            participant: track.publisher.clone(),
            kind: track.kind,
            track_id: track.track_id.clone(),
        });
        Some(track)
    }

    fn update_track_gauges(&self) {
        let mut n = [0i64; 2];
        for t in self.tracks.values() {
            n[kind_index(t.kind)] += 1;
        }
        self.metrics.tracks[0].set(n[0]);
        self.metrics.tracks[1].set(n[1]);
        self.metrics.peer_connections.set(self.pcs.len() as i64);
    }

    // ------------------------------------------------------------------ subscribe side

    /// Re-synchronises every member of `room` except `except` with the room's tracks.
    fn sync_room(&mut self, room: &str, except: Option<&str>, now: Instant) {
        let members: Vec<String> = match self.rooms.get(room) {
            Some(r) => r
                .participants
                .keys()
                .filter(|p| Some(p.as_str()) != except)
                .cloned()
                .collect(),
            None => return,
        };
        for m in members {
            if let Err(e) = self.sync_subscriptions(room, &m, now) {
                warn!(%room, participant = %m, "renegotiation failed: {e}");
            }
        }
    }

    /// Makes `participant`'s subscribe connection carry exactly the room's other tracks, and
    /// sends an offer if that changed anything. While an offer is outstanding, only notes that
    /// another round is needed.
    fn sync_subscriptions(
        &mut self,
        room: &str,
        participant: &str,
        now: Instant,
    ) -> Result<(), MediaError> {
        let r = self
            .rooms
            .get_mut(room)
            .ok_or_else(|| MediaError::UnknownRoom(room.to_owned()))?;
        let p = r
            .participants
            .get_mut(participant)
            .ok_or_else(|| unknown(room, participant))?;
        if let Negotiation::OfferPending { again } = &mut p.negotiation {
            *again = true;
            return Ok(());
        }
        let desired: HashSet<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.room == room && t.publisher != participant)
            .map(|(k, _)| *k)
            .collect();
        let r = self.rooms.get(room).expect("room checked above");
        let p = &r.participants[participant];
        let to_remove: Vec<(TrackKey, RTCRtpSenderId)> = p
            .subscribed
            .iter()
            .filter(|(k, _)| !desired.contains(k))
            .map(|(k, s)| (*k, *s))
            .collect();
        let mut to_add: Vec<TrackKey> = desired
            .iter()
            .filter(|k| !p.subscribed.contains_key(k))
            .copied()
            .collect();
        to_add.sort();
        if to_remove.is_empty() && to_add.is_empty() {
            return Ok(());
        }
        let sub_id = match p.subscribe_pc {
            Some(id) => id,
            None => self.create_pc(room, participant, PcKind::Subscribe, now)?,
        };
        for (key, sender) in &to_remove {
            if let Some(t) = self.tracks.get_mut(key) {
                t.subscribers.retain(|f| f.sub_pc != sub_id);
            }
            if let Some(pc) = self.pcs.get_mut(&sub_id) {
                pc.out_ssrcs.retain(|_, k| k != key);
                let rtc = &mut pc.rtc;
                let sender = *sender;
                let _ = guarded(|| rtc.remove_track(sender).map_err(MediaError::from));
            }
            self.participant_mut(room, participant)
                .map(|p| p.subscribed.remove(key));
        }
        for key in to_add {
            let Some(track) = self.tracks.get_mut(&key) else {
                continue;
            };
            let Some(pc) = self.pcs.get_mut(&sub_id) else {
                break;
            };
            let out_ssrc = loop {
                let s = self.rng.random::<u32>();
                if s != 0 && !pc.out_ssrcs.contains_key(&s) {
                    break s;
                }
            };
            let media_track = MediaStreamTrack::new(
                track.publisher.clone(),
                track.track_id.clone(),
                format!("{}-{}", track.publisher, track.kind.as_str()),
                rtc_kind(track.kind),
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(out_ssrc),
                        ..Default::default()
                    },
                    codec: track.codec.clone(),
                    ..Default::default()
                }],
            );
            let rtc = &mut pc.rtc;
            let sender_id = match guarded(|| rtc.add_track(media_track).map_err(MediaError::from)) {
                Ok(s) => s,
                Err(e) => {
                    warn!(%room, %participant, "add_track: {e}");
                    continue;
                }
            };
            pc.out_ssrcs.insert(out_ssrc, key);
            track.subscribers.push(Fanout {
                sub_pc: sub_id,
                sender_id,
                rewriter: Rewriter::new(
                    out_ssrc,
                    track.codec.clock_rate,
                    self.rng.random(),
                    self.rng.random(),
                    PayloadTypeMap::new(),
                    ExtIdMap::new(),
                ),
                rtx: RtxLimiter::new(track.cache.capacity()),
                ready: false,
                configured: false,
            });
            if let Some(p) = self.participant_mut(room, participant) {
                p.subscribed.insert(key, sender_id);
            }
        }
        self.send_offer(room, participant, sub_id, now)
    }

    fn send_offer(
        &mut self,
        room: &str,
        participant: &str,
        sub_id: PcId,
        now: Instant,
    ) -> Result<(), MediaError> {
        let pc = self
            .pcs
            .get_mut(&sub_id)
            .ok_or(MediaError::ConnectionClosed)?;
        let rtc = &mut pc.rtc;
        let sdp = guarded(|| {
            let offer = rtc.create_offer(None)?;
            rtc.set_local_description(now, offer)?;
            rtc.local_description()
                .map(|d| d.sdp)
                .ok_or(MediaError::InvalidState("no local description"))
        })?;
        pc.negotiated = true;
        pc.answered = false;
        Self::mark_dirty(&mut self.dirty, pc, sub_id);
        for t in self.tracks.values_mut() {
            for f in t.subscribers.iter_mut().filter(|f| f.sub_pc == sub_id) {
                // Keep forwarding tracks already negotiated; new ones wait for the answer.
                if !f.configured {
                    f.ready = false;
                }
            }
        }
        if let Some(p) = self.participant_mut(room, participant) {
            p.negotiation = Negotiation::OfferPending { again: false };
        }
        self.emit(MediaEvent::SubscribeOffer {
            room: room.to_owned(),
            participant: participant.to_owned(),
            sdp,
        });
        Ok(())
    }

    /// After an answer: learn what each subscriber negotiated (payload types, extension ids)
    /// and start forwarding once connected.
    fn configure_fanouts(&mut self, sub_id: PcId) {
        let Some(pc) = self.pcs.get_mut(&sub_id) else {
            return;
        };
        for t in self.tracks.values_mut() {
            for f in t.subscribers.iter_mut().filter(|f| f.sub_pc == sub_id) {
                let rtc = &mut pc.rtc;
                let sender_id = f.sender_id;
                let params = guarded(|| {
                    let mut sender = rtc
                        .rtp_sender(sender_id)
                        .ok_or(MediaError::InvalidState("no sender"))?;
                    let p = sender.get_parameters();
                    Ok((
                        p.rtp_parameters.codecs.clone(),
                        p.rtp_parameters
                            .header_extensions
                            .iter()
                            .map(|h| (h.uri.clone(), h.id as u8))
                            .collect::<Vec<_>>(),
                    ))
                });
                let Ok((codecs, exts)) = params else { continue };
                let mut pts = PayloadTypeMap::new();
                for pc_codec in &t.pub_codecs {
                    let same_mime = |c: &&RTCRtpCodecParameters| {
                        c.rtp_codec
                            .mime_type
                            .eq_ignore_ascii_case(&pc_codec.rtp_codec.mime_type)
                    };
                    let found = codecs
                        .iter()
                        .filter(same_mime)
                        .find(|c| c.rtp_codec.sdp_fmtp_line == pc_codec.rtp_codec.sdp_fmtp_line)
                        .or_else(|| codecs.iter().find(same_mime));
                    if let Some(c) = found {
                        pts.set(pc_codec.payload_type, c.payload_type);
                    }
                }
                let mut ext_map = ExtIdMap::new();
                for uri in FORWARDED_EXTENSIONS {
                    let from = t.pub_extensions.iter().find(|(u, _)| u == uri);
                    let to = exts.iter().find(|(u, _)| u == uri);
                    if let (Some((_, from)), Some((_, to))) = (from, to) {
                        ext_map.set(*from, *to);
                    }
                }
                f.rewriter.payload_types = pts;
                f.rewriter.extensions = ext_map;
                f.configured = true;
            }
        }
    }

    /// Starts forwarding every configured track of a connected subscribe connection, asking
    /// each publisher for a keyframe so the new subscriber can start decoding.
    fn activate_fanouts(&mut self, sub_id: PcId, now: Instant) {
        let Some(pc) = self.pcs.get(&sub_id) else {
            return;
        };
        if !pc.connected || !pc.answered {
            return;
        }
        let mut started = Vec::new();
        for (key, t) in self.tracks.iter_mut() {
            for f in t.subscribers.iter_mut().filter(|f| f.sub_pc == sub_id) {
                if f.configured && !f.ready {
                    f.ready = true;
                    started.push(*key);
                }
            }
        }
        for key in started {
            self.request_keyframe(key, now);
        }
    }

    // ------------------------------------------------------------------ commands

    /// A command from [`crate::SfuHandle`], answered on its reply channel. `Shutdown` is the
    /// driver's: it calls [`Shard::close_all`] and stops.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Publish {
                room,
                participant,
                sdp,
                reply,
            } => {
                let r = self.publish(&room, &participant, sdp, now);
                let _ = reply.send(r);
            }
            Command::SubscribeAnswer {
                room,
                participant,
                sdp,
                reply,
            } => {
                let r = self.subscribe_answer(&room, &participant, sdp, now);
                let _ = reply.send(r);
            }
            Command::AddCandidate {
                room,
                participant,
                pc,
                candidate,
                reply,
            } => {
                let r = self.add_candidate(&room, &participant, pc, candidate, now);
                let _ = reply.send(r);
            }
            Command::Join {
                room,
                participant,
                reply,
            } => {
                let r = self.join(&room, &participant, now);
                let _ = reply.send(r);
            }
            Command::Leave {
                room,
                participant,
                reply,
            } => {
                let r = self.leave(&room, &participant, now);
                let _ = reply.send(r);
            }
            Command::Stats { reply } => {
                let _ = reply.send(Ok(self.stats()));
            }
            Command::Shutdown { .. } => {}
            #[cfg(feature = "bench")]
            Command::OnMediaThread(_) => {}
        }
        self.drive_dirty(now);
    }

    fn participant_mut(&mut self, room: &str, participant: &str) -> Option<&mut Participant> {
        self.rooms.get_mut(room)?.participants.get_mut(participant)
    }

    /// Adds the participant (and room) if needed; true if it is new.
    fn ensure_participant(&mut self, room: &str, participant: &str) -> Result<bool, MediaError> {
        valid_id(room, "room")?;
        valid_id(participant, "participant")?;
        let r = self.rooms.entry(room.to_owned()).or_default();
        Ok(match r.participants.entry(participant.to_owned()) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(Participant::new());
                self.closed_recently
                    .remove(&(room.to_owned(), participant.to_owned()));
                true
            }
        })
    }

    fn join(&mut self, room: &str, participant: &str, now: Instant) -> Result<(), MediaError> {
        if self.ensure_participant(room, participant)? {
            self.sync_subscriptions(room, participant, now)?;
        }
        Ok(())
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn create_pc(
        &mut self,
        room: &str,
        participant: &str,
        kind: PcKind,
        now: Instant,
    ) -> Result<PcId, MediaError> {
        let (ufrag, pwd) = peer::ice_credentials(&mut self.rng);
        let setup = PcSetup {
            kind,
            ufrag: &ufrag,
            pwd: &pwd,
            candidates: &self.candidates,
            counters: &self.counters,
            ice_disconnected_timeout: Duration::from_secs(5),
            ice_failed_timeout: self.config.liveness_timeout,
        };
        let rtc = guarded(|| peer::build(&setup, now))?;
        let id = PcId(self.next_id());
        self.pcs.insert(
            id,
            Pc {
                room: room.to_owned(),
                participant: participant.to_owned(),
                kind,
                rtc,
                scheduled: None,
                dirty: false,
                created: now,
                last_rx: None,
                negotiated: false,
                connected: false,
                in_tracks: HashMap::new(),
                dormant: HashMap::new(),
                out_ssrcs: HashMap::new(),
                answered: false,
            },
        );
        self.demux.add_ufrag(&ufrag, &pwd, id);
        if let Some(p) = self.participant_mut(room, participant) {
            match kind {
                PcKind::Publish => p.publish_pc = Some(id),
                PcKind::Subscribe => p.subscribe_pc = Some(id),
            }
        }
        self.update_track_gauges();
        self.schedule(id, now);
        Ok(id)
    }

    fn publish(
        &mut self,
        room: &str,
        participant: &str,
        sdp: String,
        now: Instant,
    ) -> Result<String, MediaError> {
        valid_id(room, "room")?;
        valid_id(participant, "participant")?;
        // Parse before creating anything: bad SDP leaves no trace.
        let offer = guarded(|| {
            RTCSessionDescription::offer(sdp).map_err(|e| MediaError::InvalidSdp(e.to_string()))
        })?;
        let is_new = self.ensure_participant(room, participant)?;
        let existing = self
            .participant_mut(room, participant)
            .and_then(|p| p.publish_pc);
        let (id, created) = match existing {
            Some(id) => (id, false),
            None => match self.create_pc(room, participant, PcKind::Publish, now) {
                Ok(id) => (id, true),
                Err(e) => {
                    if is_new {
                        self.remove_participant_entry(room, participant);
                    }
                    return Err(e);
                }
            },
        };
        let pc = self.pcs.get_mut(&id).ok_or(MediaError::ConnectionClosed)?;
        let rtc = &mut pc.rtc;
        let answer = guarded(|| {
            rtc.set_remote_description(now, offer)
                .map_err(|e| MediaError::InvalidSdp(e.to_string()))?;
            let answer = rtc.create_answer(None)?;
            rtc.set_local_description(now, answer)?;
            rtc.local_description()
                .map(|d| d.sdp)
                .ok_or(MediaError::InvalidState("no local description"))
        });
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                if created {
                    self.close_pc(id);
                    if let Some(p) = self.participant_mut(room, participant) {
                        p.publish_pc = None;
                    }
                    if is_new {
                        self.remove_participant_entry(room, participant);
                    }
                }
                return Err(e);
            }
        };
        pc.negotiated = true;
        Self::mark_dirty(&mut self.dirty, pc, id);
        if !created {
            // A re-offer: tracks the publisher stopped leave the room.
            self.reconcile_published(id, now);
        }
        // Candidates that arrived before the connection existed.
        let mut pending = self.early_candidates.take(room, participant);
        if let Some(p) = self.participant_mut(room, participant) {
            pending.append(&mut p.pending_publish_candidates);
        }
        for c in pending {
            let _ = self.apply_candidate(id, c);
        }
        if is_new {
            self.sync_subscriptions(room, participant, now)?;
        }
        Ok(answer)
    }

    fn subscribe_answer(
        &mut self,
        room: &str,
        participant: &str,
        sdp: String,
        now: Instant,
    ) -> Result<(), MediaError> {
        let p = self.existing_participant(room, participant)?;
        if !matches!(p.negotiation, Negotiation::OfferPending { .. }) {
            return Err(MediaError::InvalidState("no subscribe offer outstanding"));
        }
        let sub_id = p.subscribe_pc.ok_or(MediaError::ConnectionClosed)?;
        let answer = guarded(|| {
            RTCSessionDescription::answer(sdp).map_err(|e| MediaError::InvalidSdp(e.to_string()))
        })?;
        let pc = self
            .pcs
            .get_mut(&sub_id)
            .ok_or(MediaError::ConnectionClosed)?;
        let rtc = &mut pc.rtc;
        guarded(|| {
            rtc.set_remote_description(now, answer)
                .map_err(|e| MediaError::InvalidSdp(e.to_string()))
        })?;
        pc.answered = true;
        Self::mark_dirty(&mut self.dirty, pc, sub_id);
        let again = match self.participant_mut(room, participant) {
            Some(p) => {
                let again = matches!(p.negotiation, Negotiation::OfferPending { again: true });
                p.negotiation = Negotiation::Stable;
                again
            }
            None => false,
        };
        self.configure_fanouts(sub_id);
        self.activate_fanouts(sub_id, now);
        if again {
            self.sync_subscriptions(room, participant, now)?;
        }
        Ok(())
    }

    fn existing_participant(
        &self,
        room: &str,
        participant: &str,
    ) -> Result<&Participant, MediaError> {
        if self
            .closed_recently
            .contains_key(&(room.to_owned(), participant.to_owned()))
        {
            return Err(MediaError::ConnectionClosed);
        }
        self.rooms
            .get(room)
            .ok_or_else(|| MediaError::UnknownRoom(room.to_owned()))?
            .participants
            .get(participant)
            .ok_or_else(|| unknown(room, participant))
    }

    fn add_candidate(
        &mut self,
        room: &str,
        participant: &str,
        kind: PcKind,
        candidate: Option<CandidateInit>,
        now: Instant,
    ) -> Result<(), MediaError> {
        valid_id(room, "room")?;
        valid_id(participant, "participant")?;
        let key = (room.to_owned(), participant.to_owned());
        if self.closed_recently.contains_key(&key) {
            return Err(MediaError::ConnectionClosed);
        }
        let candidate = candidate.filter(|c| !c.candidate.trim().is_empty());
        if let Some(c) = &candidate
            && c.candidate.len() > 1024
        {
            return Err(MediaError::InvalidCandidate("too long".into()));
        }
        let p = match self.existing_participant(room, participant) {
            Ok(p) => p,
            Err(MediaError::UnknownRoom(_) | MediaError::UnknownParticipant { .. })
                if kind == PcKind::Publish =>
            {
                // May precede sfu-publish: keep it for a few seconds.
                if let Some(c) = candidate {
                    self.early_candidates.push(room, participant, c, now);
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let id = match kind {
            PcKind::Publish => p.publish_pc,
            PcKind::Subscribe => p.subscribe_pc,
        };
        let Some(c) = candidate else {
            return Ok(()); // end of candidates: nothing to do for an ICE-lite server
        };
        match id {
            Some(id) => self.apply_candidate(id, c),
            None if kind == PcKind::Publish => {
                if let Some(p) = self.participant_mut(room, participant)
                    && p.pending_publish_candidates.len() < MAX_PENDING_CANDIDATES
                {
                    p.pending_publish_candidates.push(c);
                }
                Ok(())
            }
            None => Err(MediaError::InvalidState("no subscribe connection yet")),
        }
    }

    fn apply_candidate(&mut self, id: PcId, c: CandidateInit) -> Result<(), MediaError> {
        let pc = self.pcs.get_mut(&id).ok_or(MediaError::ConnectionClosed)?;
        let rtc = &mut pc.rtc;
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: c.username_fragment,
            ..Default::default()
        };
        guarded(|| {
            rtc.add_remote_candidate(init)
                .map_err(|e| MediaError::InvalidCandidate(e.to_string()))
        })
    }

    fn leave(&mut self, room: &str, participant: &str, now: Instant) -> Result<(), MediaError> {
        self.existing_participant(room, participant)?;
        self.close_participant(room, participant, None, now);
        Ok(())
    }

    fn remove_participant_entry(&mut self, room: &str, participant: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.participants.remove(participant);
            if r.participants.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Closes both connections of a participant, removes its tracks from every subscriber
    /// (renegotiating them) and forgets it. `reason` = closed by the SFU (event sent).
    fn close_participant(
        &mut self,
        room: &str,
        participant: &str,
        reason: Option<&str>,
        now: Instant,
    ) {
        let Some(p) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.participants.remove(participant))
        else {
            return;
        };
        info!(%room, %participant, reason = reason.unwrap_or("leave"), "participant closed");
        self.closed_recently
            .insert((room.to_owned(), participant.to_owned()), now);
        // Stop receiving: drop this participant's fanouts from the remaining tracks.
        if let Some(sub) = p.subscribe_pc {
            for key in p.subscribed.keys() {
                if let Some(t) = self.tracks.get_mut(key) {
                    t.subscribers.retain(|f| f.sub_pc != sub);
                }
            }
        }
        for id in [p.publish_pc, p.subscribe_pc].into_iter().flatten() {
            self.close_pc(id);
        }
        // Its tracks leave the room: everyone else renegotiates.
        for key in &p.published {
            if let Some(track) = self.tracks.remove(key) {
                self.emit(MediaEvent::TrackUnpublished {
                    room: track.room.clone(),
                    participant: track.publisher.clone(),
                    kind: track.kind,
                    track_id: track.track_id.clone(),
                });
                for f in &track.subscribers {
                    if let Some(pc) = self.pcs.get_mut(&f.sub_pc) {
                        pc.out_ssrcs.retain(|_, k| k != key);
                    }
                }
            }
        }
        if self
            .rooms
            .get(room)
            .is_some_and(|r| r.participants.is_empty())
        {
            self.rooms.remove(room);
        }
        self.update_track_gauges();
        if !p.published.is_empty() {
            self.sync_room(room, None, now);
        }
        if let Some(reason) = reason {
            self.emit(MediaEvent::ParticipantClosed {
                room: room.to_owned(),
                participant: participant.to_owned(),
                reason: reason.to_owned(),
            });
        }
    }

    fn close_pc(&mut self, id: PcId) {
        if let Some(pc) = self.pcs.get_mut(&id) {
            let rtc = &mut pc.rtc;
            let _ = guarded(|| rtc.close().map_err(MediaError::from));
            self.flush_writes(id);
        }
        self.pcs.remove(&id);
        self.demux.remove(id);
        self.update_track_gauges();
    }

    /// Closes every connection (DTLS close_notify queued for sending) and flushes the metrics:
    /// the shard's end, before its driver stops.
    pub fn close_all(&mut self, now: Instant) {
        let all: Vec<(String, String)> = self
            .rooms
            .iter()
            .flat_map(|(r, room)| {
                room.participants
                    .keys()
                    .map(move |p| (r.clone(), p.clone()))
            })
            .collect();
        for (r, p) in all {
            self.close_participant(&r, &p, None, now);
        }
        self.metrics.flush();
    }

    fn stats(&self) -> SfuStats {
        let (demux_ufrags, demux_addresses) = self.demux.len();
        SfuStats {
            rooms: self.rooms.len(),
            participants: self.rooms.values().map(|r| r.participants.len()).sum(),
            peer_connections: self.pcs.len(),
            audio_tracks: self
                .tracks
                .values()
                .filter(|t| t.kind == MediaKind::Audio)
                .count(),
            video_tracks: self
                .tracks
                .values()
                .filter(|t| t.kind == MediaKind::Video)
                .count(),
            subscriptions: self.tracks.values().map(|t| t.subscribers.len()).sum(),
            demux_ufrags,
            demux_addresses,
        }
    }
}

fn unknown(room: &str, participant: &str) -> MediaError {
    MediaError::UnknownParticipant {
        room: room.to_owned(),
        participant: participant.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2 3 4\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\na=msid:s a1\r\na=ssrc:11 cname:x\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=inactive\r\na=msid:s v1\r\na=ssrc:22 msid:s v1\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=sendonly\r\na=msid:s v3\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:4\r\na=sendonly\r\na=ssrc:55 cname:x\r\n";

    #[test]
    fn offered_sections_tell_which_still_send() {
        let s = offered_sections(OFFER);
        let sends: Vec<(Option<&str>, bool)> =
            s.iter().map(|s| (s.mid.as_deref(), s.sends)).collect();
        assert_eq!(
            sends,
            [
                (Some("0"), true),
                (Some("1"), false), // inactive
                (Some("2"), false), // recvonly, no msid (removeTrack)
                (Some("3"), false), // port 0
                (Some("4"), true),  // sendonly, ssrc without msid
            ]
        );
        assert_eq!(s[1].ssrcs, [22]);
        assert_eq!(s[1].track_ids, ["v1", "v1"]);
        // Found by mid, else SSRC, else msid track id; a track with no section stops.
        assert!(still_sent(&s, Some("0"), 1, "x"));
        assert!(!still_sent(&s, Some("1"), 11, "a1"));
        assert!(still_sent(&s, None, 11, "x"));
        assert!(!still_sent(&s, None, 22, "a1"));
        assert!(still_sent(&s, None, 9, "a1"));
        assert!(!still_sent(&s, Some("9"), 9, "gone"));
    }
}

/// The shard on a manual clock: no socket, no sleeping.
#[cfg(test)]
mod clock_tests;
