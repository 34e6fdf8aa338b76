//! The shard: the SFU's state machine, sans-IO. It owns every peer connection and every room
//! through `&mut self` and is fed by its driver ([`crate::driver`]) with datagrams
//! ([`Shard::handle_receive`]), commands ([`Shard::handle_command`]) and timeouts
//! ([`Shard::handle_timeout`]); what it sends is drained with [`Shard::poll_transmit`] and
//! when it next wants to be woken with [`Shard::poll_timeout`]. It has no socket, never reads
//! a clock (every input carries `now`; wall-clock time for RTCP is derived from an epoch given
//! at construction) and draws its randomness (ICE credentials, SSRCs, sequence and timestamp
//! bases) from the seedable generator it was given.
//!
//! State has two homes. The connection table (`pcs`: each webrtc-rs peer connection by
//! [`PcId`], with its timers and liveness) is shard-wide, as the demultiplexer and the timer
//! heap name connections by id. Everything else belongs to a [`Room`] in `rooms`: participants,
//! publications and their layers, subscribers and their down-tracks (see [`crate::room`]). A
//! connection names its room by [`RoomId`], so an operation on a subscriber or a publication
//! touches that room only, and the forwarding path (`fanout.rs`) visits exactly one
//! publication's down-tracks. A publication leaves through [`Shard::remove_publication`], a
//! participant through [`Shard::close_participant`], whatever the cause.
//!
//! Per input the shard (1) hands it to the one peer connection concerned, (2) drains that
//! connection's events, decoded packets and outgoing datagrams (`drive`), which may touch
//! other connections (a forwarded packet, a relayed keyframe request) — those are drained in
//! turn from the `dirty` list — and (3) reschedules the connection's next timeout.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
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
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_RTX};
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent, RTCTrackEventInit};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp::packet::Packet;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::sdp::extmap::TRANSPORT_CC_URI;
use rtc::shared::marshal::MarshalSize;
use rtc::shared::time::SystemInstant;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tracing::{debug, info, warn};

use crate::codec::Vp8Numbering;
use crate::congestion::{Paced, SendSide};
use crate::demux::{Demux, DropReason, Remote};
use crate::forward::{CopyScratch, ExtIdMap, PayloadTypeMap, Rewriter, seq_newer};
use crate::metrics::{ConnectionOutcome, Metrics, kind_index};
use crate::peer::{
    self, CoreCounters, FORWARDED_EXTENSIONS, HostCandidates, MIME_TYPE_RED, PcSetup,
};
use crate::room::{
    Accept, Dormant, DownTrack, DownTrackId, EarlyCandidates, Layer, LayerSelector,
    MAX_PENDING_CANDIDATES, Negotiation, Participant, PcId, Publication, PublicationId, Room,
    RoomId, TrackInfo,
};
use crate::route::{self, AddressChange};
use crate::rtx_cache::{RtxLimiter, Suppressed, Verdict};
use crate::{
    CandidateInit, Command, MediaConfig, MediaError, MediaEvent, MediaKind, PcKind, VideoSize,
};
use crate::{PublicationStats, SfuStats};

mod commands;
mod fanout;
mod housekeeping;
mod layers;
mod publish;
mod rtcp;
mod sdp;
mod subscribe;

pub use fanout::CopyTo;
/// The per-copy step, for the forwarding benchmark (`crate::bench::forward_copy`).
#[cfg(feature = "bench")]
pub use fanout::write_copy;
use fanout::{Body, forwarded_payload, send_copy};
use sdp::{offered_sections, still_sent};

const MAX_ID_LEN: usize = 256;
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// How often dropped datagrams are summarised in the log (one line, only if any were dropped).
const DROP_SUMMARY_EVERY: Duration = Duration::from_secs(60);
const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);
const CLOSED_MEMORY: Duration = Duration::from_secs(60);
const EARLY_CANDIDATE_TTL: Duration = Duration::from_secs(10);

/// One webrtc-rs peer connection and what the loop knows about it: the connection table's
/// entry. What it carries (publications, down-tracks) is its room's state.
struct Pc {
    room: RoomId,
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
    /// A subscribe connection's congestion control: transport-wide sequence numbers, the
    /// bandwidth estimate from its feedback, the pacer its copies leave through.
    send_side: Option<SendSide>,
}

/// A datagram the shard wants sent.
pub struct Transmit {
    /// The client, over UDP or over its ICE-TCP connection.
    pub to: Remote,
    /// Already allocated by the core (SRTP ciphertext, DTLS, STUN); sent as is, then dropped.
    pub bytes: BytesMut,
    /// A forwarded copy: when its publisher packet was received, for the forwarding latency.
    pub received_at: Option<Instant>,
}

pub(crate) struct Shard {
    /// This shard's index among the SFU's shards (its tag in every ufrag it hands out).
    index: usize,
    candidates: HostCandidates,
    config: MediaConfig,
    metrics: Metrics,
    counters: Arc<CoreCounters>,
    /// What the signaling layer must hear, drained with [`Shard::poll_event`].
    events: VecDeque<MediaEvent>,
    rng: StdRng,

    demux: Demux<PcId>,
    /// The connection table (the demultiplexer and the timer heap name connections by id).
    pcs: HashMap<PcId, Pc>,
    /// Every room and, inside it, all of its state ([`Room`]).
    rooms: HashMap<RoomId, Room>,
    room_ids: HashMap<String, RoomId>,
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
    /// Subscribe connections with copies waiting in their pacer (each listed once).
    paced_pcs: Vec<PcId>,
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

impl Shard {
    /// A shard announcing `candidates` as its host candidates. `now` and `unix_now` (the wall
    /// clock at `now`, since the Unix epoch) fix the mapping from the monotonic clock of every
    /// later input to the NTP time of RTCP; `rng` is its only source of randomness.
    pub fn new(
        config: MediaConfig,
        candidates: HostCandidates,
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
            rooms: HashMap::new(),
            room_ids: HashMap::new(),
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
            paced_pcs: Vec::new(),
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
        self.demux.poll_address_change()
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
        let paced = self
            .paced_pcs
            .iter()
            .filter_map(|id| self.pcs.get(id)?.send_side.as_ref()?.next_release())
            .min();
        Some(paced.map_or(next, |p| p.min(next)))
    }

    /// Runs whatever is due at `now`: connection timeouts (RTCP, retransmissions, ICE) and, if
    /// its time has come, housekeeping.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.release_paced(now);
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
                    to: Remote {
                        transport: out.transport.transport_protocol,
                        addr: out.transport.peer_addr,
                    },
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

    /// The transport a connection's media flows over (UDP until a client nominated a pair).
    fn transport_of(&self, id: PcId) -> TransportProtocol {
        self.demux
            .selected(id)
            .map_or(TransportProtocol::UDP, |r| r.transport)
    }

    fn emit(&mut self, ev: MediaEvent) {
        self.events.push_back(ev);
    }

    fn handle_pc_event(&mut self, id: PcId, ev: RTCPeerConnectionEvent, now: Instant) {
        let transport = self.transport_of(id);
        let Some(pc) = self.pcs.get_mut(&id) else {
            return;
        };
        let (rid, participant, kind) = (pc.room, pc.participant.clone(), pc.kind);
        let Some(room) = self.rooms.get(&rid).map(|r| r.name.clone()) else {
            return;
        };
        match ev {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                debug!(%room, %participant, pc = kind.as_str(), %state, "connection state");
                if state == RTCPeerConnectionState::Connected && !pc.connected {
                    pc.connected = true;
                    self.metrics
                        .connection(kind, ConnectionOutcome::Connected, transport);
                }
                self.emit(MediaEvent::ConnectionState {
                    room: room.clone(),
                    participant: participant.clone(),
                    pc: kind,
                    state: state.to_string(),
                });
                match state {
                    RTCPeerConnectionState::Connected if kind == PcKind::Subscribe => {
                        self.activate_down_tracks(id, now);
                    }
                    RTCPeerConnectionState::Failed => {
                        self.metrics
                            .connection(kind, ConnectionOutcome::Failed, transport);
                        self.close_participant(rid, &participant, Some("connection-failed"), now);
                    }
                    // We remove a connection before closing it ourselves, so this is the
                    // client closing (DTLS close_notify).
                    RTCPeerConnectionState::Closed => {
                        self.close_participant(rid, &participant, Some("remote-closed"), now);
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                RTCIceConnectionState::Failed,
            ) => {
                self.metrics
                    .connection(kind, ConnectionOutcome::Failed, transport);
                self.close_participant(rid, &participant, Some("ice-failed"), now);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init))
                if kind == PcKind::Publish =>
            {
                self.publish_track(id, init, now);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id))
                if kind == PcKind::Publish =>
            {
                if let Some(publication) = self.publication_of(id, track_id.as_str()) {
                    self.unpublish(rid, publication, now);
                }
            }
            _ => {}
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
