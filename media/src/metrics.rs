//! Prometheus metrics of the SFU, counted locally on the packet path and flushed in batches.
//!
//! The media loop owns `Local*` counters and histograms (plain integers, no atomics) and
//! [`Metrics::flush`] adds them to the shared prometheus values every 100 ms — so a forwarded
//! packet costs a few non-atomic increments, never an atomic operation or a lock.
//!
//! Directions of `callrelay_rtcp_nack_total` and `callrelay_rtcp_pli_total`:
//! `in` = received from subscribers (about the tracks the SFU sends them);
//! `out` = sent by the SFU to publishers (keyframe requests, and NACKs for packets the SFU
//! did not receive from a publisher). A subscriber's NACK is answered from the SFU's own
//! retransmission cache, so it counts as `in` only and produces no `out`; each sequence number
//! it names is counted once in `callrelay_rtp_retransmissions_total` (resent) or
//! `callrelay_rtp_retransmissions_suppressed_total` (not, by reason; repeats of a number within
//! one NACK are not counted again). Every label value of every series is created at
//! registration, so all series exist (at 0) from the start.
//!
//! `callrelay_sfu_connections_total{pc,outcome,transport}` counts what became of each peer
//! connection: `connected` (the first time it connects), `failed` (DTLS/ICE failure reported by
//! the stack), `timed_out` (closed by the liveness check: never connected, or silent past
//! `liveness_timeout`). A connection may count `connected` and later `failed` or `timed_out`;
//! the participant's other connection, closed with it, counts nothing more.
//! `transport` is the one the media flows over, `udp` or `tcp` (ICE-TCP, RFC 6544: the client's
//! nominated candidate pair), so `sum by (transport) (rate(...{outcome="connected"}[5m]))`
//! shows how many clients reach the SFU only over TCP.
//!
//! ICE-TCP: `callrelay_sfu_tcp_connections` (open TCP connections a shard serves),
//! `callrelay_sfu_tcp_connections_refused_total{reason}` (`not_ice`: the first frame was not a
//! STUN request for one of our ufrags; `timeout`: no first frame in time; `limit`: too many
//! open; `unauthenticated`: no authenticated STUN on it in time) and, in
//! `callrelay_media_datagrams_dropped_total`, `tcp_queue_full` (a slow reader's bounded write
//! queue was full: the datagram was dropped, not queued without end).

use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use rtc::shared::TransportProtocol;

use crate::demux::DropReason;
use crate::rtx_cache::Suppressed;
use crate::{MediaKind, PcKind};

/// The drop reason the kernel's own drops at the socket are counted under (read off the loop,
/// so not a [`DropReason`] of the demux).
const QUEUE_FULL: &str = "queue_full";
/// The drop reason of datagrams for a TCP connection whose write queue is full (counted by the
/// driver, which owns the connections).
const TCP_QUEUE_FULL: &str = "tcp_queue_full";

pub(crate) struct Metrics {
    series: Series,
    peer_connections: IntGauge,
    tracks: [IntGauge; 2],
    /// What this shard last added to the gauges (connections, audio, video tracks): every
    /// shard adds its own share, so each reports changes, never absolute values.
    reported: [i64; 3],
    pub packets_received: [LocalIntCounter; 2],
    pub bytes_received: [LocalIntCounter; 2],
    pub packets_forwarded: [LocalIntCounter; 2],
    pub bytes_forwarded: [LocalIntCounter; 2],
    pub nack_in: LocalIntCounter,
    pub nack_out: LocalIntCounter,
    pub pli_in: LocalIntCounter,
    pub pli_out: LocalIntCounter,
    pub packets_lost: LocalIntCounter,
    /// Packets resent in answer to subscribers' NACKs, by kind.
    pub retransmissions: [LocalIntCounter; 2],
    /// Packets subscribers' NACKs named that were not resent, by [`Suppressed::index`].
    pub retransmissions_suppressed: [LocalIntCounter; 3],
    dropped: Vec<LocalIntCounter>,
    /// `callrelay_sfu_connections_total`, by [`pc_index`] then [`ConnectionOutcome`].
    /// By [pc kind][outcome][transport: udp, tcp].
    connections: [[[LocalIntCounter; 2]; 3]; 2],
    /// The shared totals of `dropped`, the driver's `send_failed` and `socket_queue_full`, and
    /// what they were at the last log summary.
    dropped_totals: Vec<(&'static str, IntCounter, u64)>,
    pub rtt: LocalHistogram,
    /// Each subscribe connection's bandwidth estimate, once a second (bits per second).
    pub estimate: LocalHistogram,
    /// Copies that waited in a subscriber's pacer before leaving.
    pub paced: LocalIntCounter,
    /// Down-tracks that switched simulcast layers (at the new layer's keyframe).
    pub layer_switches: LocalIntCounter,
    /// Down-tracks whose video the layer choice paused: the estimate could not carry even the
    /// smallest layer.
    pub video_pauses: LocalIntCounter,
}

/// What the driver counts: it owns the socket, so it sees the sends that fail, the kernel's
/// drops and when each copy actually left.
pub(crate) struct DriverMetrics {
    /// `callrelay_media_datagrams_dropped_total{reason="send_failed"}`.
    pub send_failed: LocalIntCounter,
    /// Kernel drops at the media socket (receive queue full), counted off the loop.
    pub socket_queue_full: IntCounter,
    pub forward_latency: LocalHistogram,
    /// `callrelay_media_datagrams_dropped_total{reason="tcp_queue_full"}`.
    pub tcp_queue_full: LocalIntCounter,
    /// `callrelay_sfu_tcp_connections`: this worker adds and removes its own.
    pub tcp_open: IntGauge,
    /// `callrelay_sfu_tcp_connections_refused_total`, by [`TcpRefusal`].
    pub tcp_refused: [IntCounter; 4],
}

/// Why a TCP connection to the media port was closed before (or without) carrying media.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TcpRefusal {
    NotIce,
    Timeout,
    Limit,
    Unauthenticated,
}

impl TcpRefusal {
    const ALL: [TcpRefusal; 4] = [
        TcpRefusal::NotIce,
        TcpRefusal::Timeout,
        TcpRefusal::Limit,
        TcpRefusal::Unauthenticated,
    ];

    fn label(self) -> &'static str {
        match self {
            TcpRefusal::NotIce => "not_ice",
            TcpRefusal::Timeout => "timeout",
            TcpRefusal::Limit => "limit",
            TcpRefusal::Unauthenticated => "unauthenticated",
        }
    }
}

impl DriverMetrics {
    pub fn tcp_refused(&self, why: TcpRefusal) {
        self.tcp_refused[why as usize].inc();
    }

    pub fn flush(&mut self) {
        self.send_failed.flush();
        self.tcp_queue_full.flush();
        self.forward_latency.flush();
    }
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: C,
) -> Result<C, prometheus::Error> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

/// The registered series, from which each shard takes its own local counters.
#[derive(Clone)]
struct Series {
    peer_connections: IntGauge,
    tracks: IntGaugeVec,
    received: IntCounterVec,
    received_bytes: IntCounterVec,
    forwarded: IntCounterVec,
    bytes: IntCounterVec,
    nack: IntCounterVec,
    pli: IntCounterVec,
    lost: IntCounter,
    retransmissions: IntCounterVec,
    suppressed: IntCounterVec,
    dropped: IntCounterVec,
    connections: IntCounterVec,
    latency: Histogram,
    rtt: Histogram,
    estimate: Histogram,
    paced: IntCounter,
    layer_switches: IntCounter,
    video_pauses: IntCounter,
    tcp_open: IntGauge,
    tcp_refused: IntCounterVec,
}

impl Metrics {
    /// Registers every series; returns the first shard's counters and its driver's (more with
    /// [`Metrics::another_shard`]).
    pub fn register(r: &Registry) -> Result<(Self, DriverMetrics), prometheus::Error> {
        let peer_connections = reg(
            r,
            IntGauge::new(
                "callrelay_sfu_peer_connections",
                "Open SFU peer connections (publish and subscribe)",
            )?,
        )?;
        let tracks = reg(
            r,
            IntGaugeVec::new(
                Opts::new("callrelay_sfu_tracks", "Tracks published into the SFU"),
                &["kind"],
            )?,
        )?;
        let kinds = |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
            reg(r, IntCounterVec::new(Opts::new(name, help), &["kind"])?)
        };
        let received = kinds(
            "callrelay_rtp_packets_received_total",
            "RTP packets received from publishers",
        )?;
        let received_bytes = kinds(
            "callrelay_rtp_bytes_received_total",
            "RTP payload bytes received from publishers",
        )?;
        let forwarded = kinds(
            "callrelay_rtp_packets_forwarded_total",
            "RTP packets forwarded to subscribers (one per copy)",
        )?;
        let bytes = kinds(
            "callrelay_rtp_bytes_forwarded_total",
            "RTP payload bytes forwarded to subscribers (one per copy)",
        )?;
        let dir = |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), &["direction"])?,
            )
        };
        let nack = dir(
            "callrelay_rtcp_nack_total",
            "RTCP NACKs: in = from subscribers, out = to publishers",
        )?;
        let pli = dir(
            "callrelay_rtcp_pli_total",
            "RTCP keyframe requests (PLI/FIR): in = from subscribers, out = to publishers",
        )?;
        let lost = reg(
            r,
            IntCounter::new(
                "callrelay_rtp_packets_lost_total",
                "RTP packets from publishers that never arrived (sequence gaps)",
            )?,
        )?;
        let retransmissions = kinds(
            "callrelay_rtp_retransmissions_total",
            "RTP packets resent to subscribers in answer to their NACKs",
        )?;
        let suppressed = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "callrelay_rtp_retransmissions_suppressed_total",
                    "Packets named in subscribers' NACKs and not resent, by reason",
                ),
                &["reason"],
            )?,
        )?;
        let dropped = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "callrelay_media_datagrams_dropped_total",
                    "Datagrams on the media port dropped, by reason",
                ),
                &["reason"],
            )?,
        )?;
        let connections = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "callrelay_sfu_connections_total",
                    "SFU peer connections by what became of them (connected, failed, timed_out), \
                     kind (publish, subscribe) and transport (udp, tcp)",
                ),
                &["pc", "outcome", "transport"],
            )?,
        )?;
        let latency = reg(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "callrelay_forward_latency_seconds",
                    "Time from an RTP packet read from the socket to each copy written to it",
                )
                .buckets(vec![
                    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5,
                    0.005, 0.01, 0.025,
                ]),
            )?,
        )?;
        let rtt = reg(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "callrelay_rtt_seconds",
                    "Round-trip time to subscribers, from RTCP receiver reports",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6,
                ]),
            )?,
        )?;
        let estimate = reg(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "callrelay_subscriber_bandwidth_estimate_bps",
                    "Bandwidth estimate toward each subscriber (transport-cc feedback, GCC), \
                     sampled once a second per subscribe connection",
                )
                .buckets(vec![
                    50e3, 100e3, 200e3, 300e3, 500e3, 750e3, 1e6, 1.5e6, 2.5e6, 4e6, 6e6, 10e6,
                ]),
            )?,
        )?;
        let paced = reg(
            r,
            IntCounter::new(
                "callrelay_rtp_packets_paced_total",
                "Copies to subscribers that waited in the subscriber's pacer before leaving",
            )?,
        )?;
        let layer_switches = reg(
            r,
            IntCounter::new(
                "callrelay_sfu_layer_switches_total",
                "Simulcast layer switches of subscribers' video (made at the new layer's keyframe)",
            )?,
        )?;
        let video_pauses = reg(
            r,
            IntCounter::new(
                "callrelay_sfu_video_pauses_total",
                "Subscribers' videos paused because their bandwidth estimate could not carry the \
                 smallest layer (audio continues)",
            )?,
        )?;
        let tcp_open = reg(
            r,
            IntGauge::new(
                "callrelay_sfu_tcp_connections",
                "Open ICE-TCP connections to the media port that reached a worker",
            )?,
        )?;
        let tcp_refused = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "callrelay_sfu_tcp_connections_refused_total",
                    "ICE-TCP connections closed before carrying media, by reason (not_ice, \
                     timeout, limit, unauthenticated)",
                ),
                &["reason"],
            )?,
        )?;
        let series = Series {
            peer_connections,
            tracks,
            received,
            received_bytes,
            forwarded,
            bytes,
            nack,
            pli,
            lost,
            retransmissions,
            suppressed,
            dropped,
            connections,
            latency,
            rtt,
            estimate,
            paced,
            layer_switches,
            video_pauses,
            tcp_open,
            tcp_refused,
        };
        Ok(series.instance())
    }

    /// Counters of their own for one more shard and its driver, on the same series.
    pub fn another_shard(&self) -> (Self, DriverMetrics) {
        self.series.instance()
    }

    /// Sets this shard's share of the connection and track gauges.
    pub fn report_sizes(&mut self, peer_connections: usize, tracks: [usize; 2]) {
        let now = [peer_connections, tracks[0], tracks[1]].map(|n| n as i64);
        let gauges = [&self.peer_connections, &self.tracks[0], &self.tracks[1]];
        for ((gauge, now), reported) in gauges.into_iter().zip(now).zip(&mut self.reported) {
            gauge.add(now - *reported);
            *reported = now;
        }
    }

    /// Counts what became of a peer connection whose media flows over `transport`.
    pub fn connection(&self, pc: PcKind, outcome: ConnectionOutcome, transport: TransportProtocol) {
        self.connections[pc_index(pc)][outcome as usize][transport_index(transport)].inc();
    }

    #[inline]
    pub fn dropped(&self, reason: DropReason) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.dropped[i].inc();
    }

    /// Datagrams dropped since the previous call, by reason (only reasons with drops), so the
    /// loop can log one summary line instead of one line per bad datagram.
    pub fn drops_since_last_summary(&mut self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        for (label, total, seen) in &mut self.dropped_totals {
            let now = total.get();
            if now > *seen {
                out.push((*label, now - *seen));
            }
            *seen = now;
        }
        out
    }

    /// Adds everything counted locally to the shared prometheus values.
    pub fn flush(&mut self) {
        for c in self
            .packets_received
            .iter()
            .chain(&self.bytes_received)
            .chain(&self.packets_forwarded)
            .chain(&self.bytes_forwarded)
            .chain([
                &self.nack_in,
                &self.nack_out,
                &self.pli_in,
                &self.pli_out,
                &self.packets_lost,
                &self.paced,
                &self.layer_switches,
                &self.video_pauses,
            ])
            .chain(&self.retransmissions)
            .chain(&self.retransmissions_suppressed)
            .chain(&self.dropped)
            .chain(self.connections.iter().flatten().flatten())
        {
            c.flush();
        }
        self.rtt.flush();
        self.estimate.flush();
    }
}

impl Series {
    fn instance(&self) -> (Metrics, DriverMetrics) {
        let by_kind = |v: &IntCounterVec| {
            [
                v.with_label_values(&["audio"]).local(),
                v.with_label_values(&["video"]).local(),
            ]
        };
        let driver = DriverMetrics {
            send_failed: self
                .dropped
                .with_label_values(&[DropReason::SendFailed.label()])
                .local(),
            socket_queue_full: self.dropped.with_label_values(&[QUEUE_FULL]),
            forward_latency: self.latency.local(),
            tcp_queue_full: self.dropped.with_label_values(&[TCP_QUEUE_FULL]).local(),
            tcp_open: self.tcp_open.clone(),
            tcp_refused: TcpRefusal::ALL
                .map(|why| self.tcp_refused.with_label_values(&[why.label()])),
        };
        let shard = Metrics {
            series: self.clone(),
            peer_connections: self.peer_connections.clone(),
            tracks: [
                self.tracks.with_label_values(&["audio"]),
                self.tracks.with_label_values(&["video"]),
            ],
            reported: [0; 3],
            packets_received: by_kind(&self.received),
            bytes_received: by_kind(&self.received_bytes),
            packets_forwarded: by_kind(&self.forwarded),
            bytes_forwarded: by_kind(&self.bytes),
            nack_in: self.nack.with_label_values(&["in"]).local(),
            nack_out: self.nack.with_label_values(&["out"]).local(),
            pli_in: self.pli.with_label_values(&["in"]).local(),
            pli_out: self.pli.with_label_values(&["out"]).local(),
            packets_lost: self.lost.local(),
            retransmissions: by_kind(&self.retransmissions),
            retransmissions_suppressed: Suppressed::ALL
                .map(|reason| self.suppressed.with_label_values(&[reason.label()]).local()),
            dropped: DropReason::ALL
                .iter()
                .map(|r| self.dropped.with_label_values(&[r.label()]).local())
                .collect(),
            connections: [PcKind::Publish, PcKind::Subscribe].map(|pc| {
                ConnectionOutcome::ALL.map(|outcome| {
                    TRANSPORTS.map(|transport| {
                        self.connections
                            .with_label_values(&[pc.as_str(), outcome.label(), transport])
                            .local()
                    })
                })
            }),
            dropped_totals: DropReason::ALL
                .iter()
                .map(|r| r.label())
                .chain([QUEUE_FULL, TCP_QUEUE_FULL])
                .map(|label| (label, self.dropped.with_label_values(&[label]), 0))
                .collect(),
            rtt: self.rtt.local(),
            estimate: self.estimate.local(),
            paced: self.paced.local(),
            layer_switches: self.layer_switches.local(),
            video_pauses: self.video_pauses.local(),
        };
        (shard, driver)
    }
}

/// What became of a peer connection, the `outcome` of `callrelay_sfu_connections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnectionOutcome {
    Connected = 0,
    Failed = 1,
    TimedOut = 2,
}

impl ConnectionOutcome {
    pub const ALL: [ConnectionOutcome; 3] = [Self::Connected, Self::Failed, Self::TimedOut];

    pub fn label(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
        }
    }
}

/// The `transport` labels of `callrelay_sfu_connections_total`, by [`transport_index`].
const TRANSPORTS: [&str; 2] = ["udp", "tcp"];

fn transport_index(transport: TransportProtocol) -> usize {
    match transport {
        TransportProtocol::UDP => 0,
        _ => 1,
    }
}

fn pc_index(pc: PcKind) -> usize {
    match pc {
        PcKind::Publish => 0,
        PcKind::Subscribe => 1,
    }
}

pub(crate) fn kind_index(kind: MediaKind) -> usize {
    match kind {
        MediaKind::Audio => 0,
        MediaKind::Video => 1,
    }
}
