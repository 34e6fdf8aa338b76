//! # callrelay-media — the SFU
//!
//! A selective forwarding unit for browser calls: every participant publishes its tracks on
//! one peer connection (it offers, the SFU answers) and receives everyone else's on another
//! (the SFU offers, it answers). This crate knows nothing of Socket.IO, SQL, HTTP or JWT; the
//! signaling layer drives it through [`SfuHandle`] and relays [`MediaEvent`]s.
//!
//! ## The loop: a driver and a shard
//!
//! [`Sfu::start`] binds **one UDP port** and starts **`media.workers` shards**, each on an OS
//! thread of its own, `callrelay-media-N`, with a current-thread tokio runtime of its own
//! (HTTP and Socket.IO never share it). A room lives on one shard ([`route`]: a stable hash of
//! its id), so every command goes to its room's shard and a room's state is never shared
//! between threads. The media state lives in the **shard** (`shard::Shard`), a sans-IO state
//! machine that owns its rooms through `&mut self`, and every webrtc-rs sans-IO peer
//! connection of them (crate `rtc` 0.21.1, with the patch in `vendor/rtc/CALLRELAY-PATCH.md`).
//! A room (`room::Room`) owns all of its state: participants, publications with their layers,
//! and down-tracks (one per subscriber per publication). No mutex, no `Arc` around state. The shard has no socket and reads no
//! clock: every input carries `now`, the NTP time of RTCP is derived from a wall-clock epoch
//! given at construction, and its randomness (ICE credentials, SSRCs, sequence and timestamp
//! bases) comes from the seedable generator it was built with. The **driver**
//! (`driver.rs`) is the only code with threads, sockets, clocks and randomness: per shard it
//! waits on the inputs, reads the clock once per input and hands it to the shard (or, for a
//! datagram of another shard's room that the kernel put on this worker's socket, to that
//! shard's driver), then sends every datagram the shard's `poll_transmit` yields and sleeps
//! until its `poll_timeout`:
//!
//! * **a datagram** → `handle_receive(now, transport, source, destination, bytes)` → [`demux`] picks the
//!   peer connection (STUN by the local ICE ufrag, everything else by the source address
//!   learned from STUN; garbage is dropped and counted) → `handle_read` → the connection is
//!   *driven*: its events (connection state, tracks opening), decoded RTP/RTCP and outgoing
//!   datagrams are drained;
//! * **a command** from [`SfuHandle`] (publish, subscribe answer, candidate, join, leave,
//!   stats) → `handle_command(now, cmd)`, answered on a oneshot channel; shutdown closes every
//!   connection and stops the thread;
//! * **a timeout** → `handle_timeout(now)`: a heap of each connection's `poll_timeout`, plus
//!   a 100 ms housekeeping tick (metrics flush, held-back keyframe requests, liveness).
//!
//! A decoded RTP packet from a publisher goes to `forward_rtp`: it is stored in its layer's
//! [`rtx_cache`] (a simulcast publication has a layer per rid), then for every ready
//! down-track of its publication that forwards that layer (a down-track switches layers at the
//! new layer's keyframe; which layer it wants is chosen every 100 ms from the subscriber's
//! bandwidth estimate and the size it renders the video at) the [`forward::Rewriter`]
//! builds that subscriber's header (SSRC, payload type, sequence number, timestamp,
//! header-extension ids) into a reused buffer; the copy is marshalled there, protected with the
//! subscriber connection's SRTP context (`RTCPeerConnection::protect_rtp`, past the core's
//! handler pipeline and interceptors, which cost several times the encryption per copy); the
//! ciphertext goes through the subscriber's pacer (with its transport-wide sequence number,
//! for the estimate built from its transport-cc feedback) to the queue, and the driver sends
//! the queue in `sendmmsg` batches as soon as the input is handled. Because no interceptor sees those packets, the rewriters count them
//! and the shard writes each subscriber's RTCP sender reports itself, once a second
//! (housekeeping).
//!
//! ## Invariants
//!
//! * The packet path never awaits, never locks, and does no atomic operation: metrics are
//!   `prometheus::local` counters flushed every 100 ms. Per copy, the only allocation is the
//!   ciphertext `protect_rtp` returns, which is what the transmit queue holds (its slots are
//!   reused); the header and plaintext buffers are reused. With several workers, a datagram
//!   the kernel put on another worker's socket costs one copy and one channel push (per
//!   packet, never per copy) to reach its shard.
//! * ICE-lite: the SFU's host candidates (the bound address, or every interface address when
//!   bound to an unspecified one; plus `public_ips`) are in every SDP it produces, so
//!   [`MediaEvent::LocalCandidate`] never fires. Clients' candidates are accepted but not needed.
//! * The msid stream id of every forwarded track is the publisher's participant id; a
//!   participant never receives its own tracks.
//! * At most one subscribe offer per participant is outstanding; changes meanwhile are
//!   coalesced into one more offer after the answer.
//! * A track becomes visible to others when its first RTP packet arrives (that is when the
//!   core reports it with its SSRC and codec).
//! * Keyframe requests reach a publisher at most once per layer per 500 ms ([`keyframe`]);
//!   one is sent whenever a subscriber starts receiving a track or is aimed at another layer,
//!   and when a subscriber NACKs a video packet no longer cached. NACKs from subscribers are
//!   answered from the SFU's per-track cache (on the subscriber's RTX stream where it
//!   negotiated one), within per-subscriber limits
//!   ([`rtx_cache::RtxLimiter`]: each packet once per NACK and per round trip, resent octets at
//!   most half of the forwarded ones over about a second plus a small burst); the SFU's own
//!   NACKs to publishers and receiver
//!   reports to publishers come from the core's interceptors, sender reports to subscribers
//!   from the rewriters (RTP time = last forwarded timestamp advanced at the clock rate).
//! * Leaving, ICE failure, a connection that never connects or goes silent for
//!   [`MediaConfig::liveness_timeout`] closes both of the participant's connections, removes
//!   its tracks from everyone (renegotiating them) and every table entry it had:
//!   [`SfuStats`] returns to zero when everyone has left.
//! * Bad input (SDP, candidates, ids, datagrams) is an error value or a counted drop, never a
//!   panic; calls into the core are additionally guarded with `catch_unwind`, so even a bug
//!   in the core fails one connection, not the loop and every other room.
//!
//! ## Metrics
//!
//! Registered on the registry passed to [`Sfu::start`]: `callrelay_sfu_peer_connections`,
//! `callrelay_sfu_tracks{kind}`, `callrelay_rtp_packets_received_total{kind}`,
//! `callrelay_rtp_packets_forwarded_total{kind}`, `callrelay_rtp_bytes_forwarded_total{kind}`
//! (payload bytes, per copy), `callrelay_rtcp_nack_total{direction}` and
//! `callrelay_rtcp_pli_total{direction}` (`in` = from subscribers, `out` = to publishers),
//! `callrelay_rtp_retransmissions_total{kind}` (packets resent in answer to subscribers' NACKs)
//! and `callrelay_rtp_retransmissions_suppressed_total{reason}` (named in a NACK but not resent:
//! `budget`, `too_recent` — resent less than a round trip ago —, `not_cached`),
//! `callrelay_rtp_packets_lost_total` (gaps in publishers' sequence numbers),
//! `callrelay_subscriber_bandwidth_estimate_bps` (histogram), `callrelay_rtp_packets_paced_total`,
//! `callrelay_sfu_layer_switches_total`, `callrelay_sfu_video_pauses_total`,
//! `callrelay_media_datagrams_dropped_total{reason}` (`queue_full`: dropped by the kernel, the
//! socket's receive queue full — the loop is saturated), and the histograms
//! `callrelay_forward_latency_seconds` (socket read to each copy's socket write) and
//! `callrelay_rtt_seconds` (from subscribers' receiver reports).

mod allocate;
mod batch_io;
mod codec;
mod congestion;
mod driver;
mod error;
mod metrics;
mod peer;
mod room;
pub mod route;
mod shard;
mod socket_drops;
mod speaker;
mod tcp;

/// Benchmark hooks (feature `bench`): the SFU's subscribe connection and per-copy forwarding
/// step, for `benches/forwarding.rs`.
#[cfg(feature = "bench")]
pub mod bench;
pub mod demux;
pub mod forward;
pub mod keyframe;
pub mod rtx_cache;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use error::MediaError;
pub use peer::{add_host_candidates, register_header_extensions};

/// How the SFU is set up. `bind` is `ip:media.udp_port`; `public_ips` are announced as extra
/// host candidates (1:1 NAT).
#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub bind: SocketAddr,
    /// ICE-TCP (RFC 6544): the TCP port of passive candidates on `bind`'s address, or None for
    /// UDP only (the default of the library; the server turns it on). Some(0) = a free port.
    pub tcp_port: Option<u16>,
    pub public_ips: Vec<IpAddr>,
    /// A connected peer connection that receives nothing (no STUN consent checks, no media)
    /// for this long is closed, as is one that does not connect within this long after its
    /// offer/answer. Default 30 s.
    pub liveness_timeout: Duration,
    /// Shards, each on a thread of its own, all on the one port (`media.workers`); a room
    /// lives on one of them. 0 (the default) = one per core; at most 256.
    pub workers: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 50_000)),
            tcp_port: None,
            public_ips: Vec::new(),
            liveness_timeout: Duration::from_secs(30),
            workers: 0,
        }
    }
}

/// Which of a participant's two peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PcKind {
    /// The client offers and sends its tracks.
    Publish,
    /// The server offers and sends everyone else's tracks.
    Subscribe,
}

impl PcKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PcKind::Publish => "publish",
            PcKind::Subscribe => "subscribe",
        }
    }
}

/// The browser's `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CandidateInit {
    pub candidate: String,
    #[serde(default)]
    pub sdp_mid: Option<String>,
    #[serde(default, rename = "sdpMLineIndex")]
    pub sdp_mline_index: Option<u16>,
    #[serde(default)]
    pub username_fragment: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

/// What the SFU tells the signaling layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// Send to the participant as `sfu-subscribe-offer`; answer with
    /// [`SfuHandle::subscribe_answer`]. At most one is outstanding per participant.
    SubscribeOffer {
        room: String,
        participant: String,
        sdp: String,
    },
    /// A server candidate to trickle. The server is ICE-lite with its candidates in the SDP, so
    /// this does not fire today.
    LocalCandidate {
        room: String,
        participant: String,
        pc: PcKind,
        candidate: CandidateInit,
    },
    /// A peer connection changed state: "new", "connecting", "connected", "disconnected",
    /// "failed", "closed".
    ConnectionState {
        room: String,
        participant: String,
        pc: PcKind,
        state: String,
    },
    /// Media of a new track arrived; every other member of the room gets a subscribe offer.
    TrackPublished {
        room: String,
        participant: String,
        kind: MediaKind,
        track_id: String,
    },
    TrackUnpublished {
        room: String,
        participant: String,
        kind: MediaKind,
        track_id: String,
    },
    /// The SFU closed the participant's connections by itself ("ice-failed",
    /// "connection-failed", "consent-timeout", "ice-timeout", "internal-error").
    /// Not sent after [`SfuHandle::leave`].
    ParticipantClosed {
        room: String,
        participant: String,
        reason: String,
    },
    /// The room's active speaker changed (from the audio levels its publishers send, RFC 6464):
    /// at most once a second per room, and only to someone who spoke clearly louder than the
    /// last speaker for about a second; silence keeps the last speaker.
    ActiveSpeaker { room: String, participant: String },
}

/// Counts of everything the SFU holds; all return to zero when every participant has left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SfuStats {
    pub rooms: usize,
    pub participants: usize,
    pub peer_connections: usize,
    pub audio_tracks: usize,
    pub video_tracks: usize,
    /// (track, subscriber) forwarding entries.
    pub subscriptions: usize,
    /// Demultiplexer entries (ufrags, learned addresses).
    pub demux_ufrags: usize,
    pub demux_addresses: usize,
}

/// The size a subscriber renders a video at, in device pixels (0 × 0 = not shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VideoSize {
    pub width: u32,
    pub height: u32,
}

impl VideoSize {
    pub fn hidden(self) -> bool {
        self.width == 0 || self.height == 0
    }
}

/// What one published track brings in, for operators (`GET /api/admin/rooms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicationStats {
    pub participant: String,
    pub track_id: String,
    /// `audio` or `video`.
    pub kind: &'static str,
    /// Over the last second.
    pub bitrate_bps: u64,
    pub packets_received: u64,
    /// Sequence numbers that never arrived (gaps), since the track was published.
    pub packets_lost: u64,
}

impl std::ops::AddAssign for SfuStats {
    fn add_assign(&mut self, o: Self) {
        self.rooms += o.rooms;
        self.participants += o.participants;
        self.peer_connections += o.peer_connections;
        self.audio_tracks += o.audio_tracks;
        self.video_tracks += o.video_tracks;
        self.subscriptions += o.subscriptions;
        self.demux_ufrags += o.demux_ufrags;
        self.demux_addresses += o.demux_addresses;
    }
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, MediaError>>;

pub(crate) enum Command {
    Publish {
        room: String,
        participant: String,
        sdp: String,
        reply: Reply<String>,
    },
    SubscribeAnswer {
        room: String,
        participant: String,
        sdp: String,
        reply: Reply<()>,
    },
    AddCandidate {
        room: String,
        participant: String,
        pc: PcKind,
        candidate: Option<CandidateInit>,
        reply: Reply<()>,
    },
    Join {
        room: String,
        participant: String,
        reply: Reply<()>,
    },
    Leave {
        room: String,
        participant: String,
        reply: Reply<()>,
    },
    RestartIce {
        room: String,
        participant: String,
        reply: Reply<()>,
    },
    VideoSize {
        room: String,
        participant: String,
        publisher: String,
        size: VideoSize,
        reply: Reply<()>,
    },
    RoomStats {
        room: String,
        reply: Reply<Vec<PublicationStats>>,
    },
    Stats {
        reply: Reply<SfuStats>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Runs a closure on a shard's thread (benchmarks sample each thread's CPU time).
    #[cfg(feature = "bench")]
    OnMediaThread(Box<dyn FnOnce() + Send>),
}

/// The SFU. [`Sfu::start`] binds the port and starts the media threads.
pub struct Sfu;

impl Sfu {
    /// Binds `config.bind`, registers the metrics on `registry` and starts `config.workers`
    /// shards, each on a thread of its own (`callrelay-media-N`, with its own current-thread
    /// runtime), not on the caller's runtime. They stop on [`SfuHandle::shutdown`] or when
    /// every handle is dropped.
    pub async fn start(
        config: MediaConfig,
        registry: &prometheus::Registry,
    ) -> Result<(SfuHandle, mpsc::UnboundedReceiver<MediaEvent>), MediaError> {
        let metrics = metrics::Metrics::register(registry)
            .map_err(|e| MediaError::Rtc(format!("metrics: {e}")))?;
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let (local_addr, shards) = driver::spawn(config, metrics, event_tx)?;
        let handle = SfuHandle {
            shards: shards.into(),
            local_addr,
        };
        Ok((handle, event_rx))
    }
}

/// Talks to the media shards. Cheap to clone, `Send + Sync`.
#[derive(Clone, Debug)]
pub struct SfuHandle {
    /// Each shard's command queue; a room's commands go to the shard that owns it.
    shards: std::sync::Arc<[mpsc::Sender<Command>]>,
    local_addr: SocketAddr,
}

impl SfuHandle {
    /// The bound media socket address (the actual port if 0 was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many shards (media worker threads) run.
    pub fn workers(&self) -> usize {
        self.shards.len()
    }

    async fn call_shard<T>(
        &self,
        shard: usize,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, MediaError> {
        let (tx, rx) = oneshot::channel();
        self.shards[shard]
            .send(make(tx))
            .await
            .map_err(|_| MediaError::Stopped)?;
        rx.await.map_err(|_| MediaError::Stopped)?
    }

    /// Sends a command about `room` to the shard that owns it.
    async fn call<T>(
        &self,
        room: &str,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, MediaError> {
        let shard = route::shard_of_room(room, self.shards.len());
        self.call_shard(shard, make).await
    }

    /// Applies the client's publish offer and returns the answer. Creates the participant
    /// (and the room) if needed; a later call renegotiates (tracks added or removed).
    pub async fn publish(
        &self,
        room: &str,
        participant: &str,
        offer_sdp: String,
    ) -> Result<String, MediaError> {
        self.call(room, |reply| Command::Publish {
            room: room.to_owned(),
            participant: participant.to_owned(),
            sdp: offer_sdp,
            reply,
        })
        .await
    }

    /// Applies the client's answer to the last [`MediaEvent::SubscribeOffer`].
    pub async fn subscribe_answer(
        &self,
        room: &str,
        participant: &str,
        answer_sdp: String,
    ) -> Result<(), MediaError> {
        self.call(room, |reply| Command::SubscribeAnswer {
            room: room.to_owned(),
            participant: participant.to_owned(),
            sdp: answer_sdp,
            reply,
        })
        .await
    }

    /// Adds a client ICE candidate (`None` or an empty candidate string = end of candidates).
    /// A publish candidate may arrive before [`SfuHandle::publish`]; it is kept for a while and
    /// applied when the connection exists.
    pub async fn add_candidate(
        &self,
        room: &str,
        participant: &str,
        pc: PcKind,
        candidate: Option<CandidateInit>,
    ) -> Result<(), MediaError> {
        self.call(room, |reply| Command::AddCandidate {
            room: room.to_owned(),
            participant: participant.to_owned(),
            pc,
            candidate,
            reply,
        })
        .await
    }

    /// Makes `participant` a member of `room` that receives everyone else's tracks, whether or
    /// not it ever publishes.
    pub async fn join(&self, room: &str, participant: &str) -> Result<(), MediaError> {
        self.call(room, |reply| Command::Join {
            room: room.to_owned(),
            participant: participant.to_owned(),
            reply,
        })
        .await
    }

    /// Closes both connections of `participant`; the others stop receiving its tracks (and get
    /// a new subscribe offer).
    pub async fn leave(&self, room: &str, participant: &str) -> Result<(), MediaError> {
        self.call(room, |reply| Command::Leave {
            room: room.to_owned(),
            participant: participant.to_owned(),
            reply,
        })
        .await
    }

    /// Restarts ICE on `participant`'s subscribe connection (a new subscribe offer with new
    /// credentials): its network changed. Its publish connection restarts with its own
    /// re-offer to [`SfuHandle::publish`], which the SFU answers with new credentials too.
    pub async fn restart_ice(&self, room: &str, participant: &str) -> Result<(), MediaError> {
        self.call(room, |reply| Command::RestartIce {
            room: room.to_owned(),
            participant: participant.to_owned(),
            reply,
        })
        .await
    }

    /// How large `participant` renders `publisher`'s video (CSS pixels times the device pixel
    /// ratio; 0 × 0 = not shown): the SFU forwards it the smallest simulcast layer that fills
    /// that size, within its bandwidth estimate, and nothing while it is not shown. Until a
    /// size is given every video is wanted at its largest.
    pub async fn set_video_size(
        &self,
        room: &str,
        participant: &str,
        publisher: &str,
        size: VideoSize,
    ) -> Result<(), MediaError> {
        self.call(room, |reply| Command::VideoSize {
            room: room.to_owned(),
            participant: participant.to_owned(),
            publisher: publisher.to_owned(),
            size,
            reply,
        })
        .await
    }

    /// The tracks published in `room` (empty for a room the SFU does not have).
    pub async fn room_stats(&self, room: &str) -> Result<Vec<PublicationStats>, MediaError> {
        self.call(room, |reply| Command::RoomStats {
            room: room.to_owned(),
            reply,
        })
        .await
    }

    /// Everything the shards hold, summed.
    pub async fn stats(&self) -> Result<SfuStats, MediaError> {
        let mut total = SfuStats::default();
        for shard in 0..self.shards.len() {
            total += self
                .call_shard(shard, |reply| Command::Stats { reply })
                .await?;
        }
        Ok(total)
    }

    /// Closes every connection and stops the media threads. Later calls return
    /// [`MediaError::Stopped`].
    pub async fn shutdown(&self) {
        let mut stopped = Vec::new();
        for shard in self.shards.iter() {
            let (tx, rx) = oneshot::channel();
            if shard.send(Command::Shutdown { reply: tx }).await.is_ok() {
                stopped.push(rx);
            }
        }
        for rx in stopped {
            let _ = rx.await;
        }
    }
}
