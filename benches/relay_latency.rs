//! Relay latency and cost: one publisher → the real SFU → N subscribers over loopback UDP, and
//! in the same run the floor — a plain UDP relay doing only what cannot be avoided (SRTP
//! unprotect once, rewrite + SRTP protect + send per copy) through the same socket API.
//!
//! `cargo bench --bench relay_latency`. Knobs (environment):
//! `RELAY_SUBSCRIBERS=1,10,50,100`, `RELAY_SECS=6` (measured window per run),
//! `RELAY_VIDEO_PPS=200`, `RELAY_AUDIO_PPS=50`, `RELAY_MODES=callrelay,floor`,
//! `RELAY_FLOOR_PROFILE=gcm|cm` (default gcm, the profile webrtc-rs negotiates).
//! `RELAY_PIN=0` lets the scheduler place threads (by default the server thread has a CPU of
//! its own and the load shares another). `RELAY_WORKERS=1` is the SFU's `media.workers`; with
//! more than one, the worker that owns the room has the server's CPU and the others share the
//! load's (they need every core).
//! `RELAY_RAMP=1` measures saturation instead: each N and mode at rising forwarding rates
//! (`RELAY_RAMP_OUT_PPS=10000,20000,...,100000` copies per second) until copies are lost,
//! telling where from the kernel's per-socket drop counters (server socket and SFU, or the
//! subscribers' sockets) or that nothing was dropped but copies were still queued.
//!
//! Threads: the server (the SFU's media loop — on the media thread `Sfu::start` spawns,
//! sampled through `bench::on_media_thread` —, or the floor relay) runs alone on its own
//! current-thread runtime so its CPU time is that thread's CPU time; all subscribers share one
//! thread; the publisher has one. Latencies:
//!
//! * **forwarding, in the loop** (per stream, per copy; `p50_us`, `p99_us`...): the packet read
//!   off the socket by the server's loop → each copy handed to the kernel, on the server
//!   thread's own clock (the SFU's `bench` hook; the floor measures itself the same way). This
//!   is the definition: the server's own work, fan-out order included.
//! * **forwarding, on the wire** (`wire_*`): publisher's `sendto` start → the copy queued on the
//!   subscriber's socket (kernel receive timestamp, `SO_TIMESTAMPNS`, `CLOCK_REALTIME` on both
//!   ends). On loopback both ends happen inside `sendto` calls, so this adds to the above the
//!   wait in the server's socket queue (behind earlier packets' fan-out) and the server
//!   thread's wake-up.
//! * **end to end**: publisher's payload stamp (before SRTP) → the subscriber application
//!   holding the decrypted packet.
//!
//! Per run: p50/p99/p99.9/max of these, packets per second, server CPU µs per forwarded packet
//! (thread CPU of the server thread / copies forwarded), allocations per forwarded packet
//! (counting allocator, per thread), loss, and the client threads' own CPU. One JSON line per
//! N at the end.

mod common;

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use callrelay_load::payload::{self, Stamp};
use callrelay_load::peer::{ClientPeer, Kind, OPUS_PT, VP8_PT};
use callrelay_load::stats::{Histogram, thread_cpu};
use callrelay_load::udp;
use callrelay_media::{MediaConfig, MediaEvent, Sfu, SfuHandle, bench};
use common::{Ports, env, metric_sum, since_start, wait_until};
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::{Marshal, MarshalSize, Unmarshal};
use rtc::srtp::context::Context;
use rtc::srtp::option::srtp_no_replay_protection;
use rtc::srtp::protection_profile::ProtectionProfile;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

// ---------------------------------------------------------------- counting allocator

/// Counts allocations per thread (a `const` thread-local: no allocation, no atomics).
struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn thread_allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

// ---------------------------------------------------------------- configuration

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Callrelay,
    Floor,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Callrelay => "callrelay",
            Mode::Floor => "floor",
        }
    }
}

#[derive(Clone, Debug)]
struct Settings {
    subscribers: Vec<usize>,
    window: Duration,
    video_pps: u32,
    audio_pps: u32,
    modes: Vec<Mode>,
    floor_profile: ProtectionProfile,
    /// `media.workers` of the SFU (the floor is one thread whatever this says).
    workers: usize,
}

impl Settings {
    fn from_env() -> Self {
        let list = std::env::var("RELAY_SUBSCRIBERS").unwrap_or_else(|_| "1,10,50,100".into());
        let modes = std::env::var("RELAY_MODES").unwrap_or_else(|_| "callrelay,floor".into());
        Self {
            subscribers: list
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .filter(|n| *n > 0)
                .collect(),
            window: Duration::from_secs_f64(env("RELAY_SECS", 6.0)),
            video_pps: env("RELAY_VIDEO_PPS", 200u32).max(1),
            audio_pps: env("RELAY_AUDIO_PPS", 50u32),
            modes: modes
                .split(',')
                .filter_map(|m| match m.trim() {
                    "callrelay" => Some(Mode::Callrelay),
                    "floor" => Some(Mode::Floor),
                    _ => None,
                })
                .collect(),
            floor_profile: match std::env::var("RELAY_FLOOR_PROFILE").as_deref() {
                Ok("cm") => ProtectionProfile::Aes128CmHmacSha1_80,
                _ => ProtectionProfile::AeadAes128Gcm,
            },
            workers: env("RELAY_WORKERS", 1usize).max(1),
        }
    }
}

// ---------------------------------------------------------------- shared state

const ROOM: &str = "bench-room";
const AUDIO_SSRC: u32 = 0x0A0D_1000;
const VIDEO_SSRC: u32 = 0x0B1D_E000;
/// Largest video payload: with the RTP header, extensions and SRTP tag the datagram stays
/// under 1,200 bytes.
const VIDEO_PAYLOAD_MAX: usize = 1_120;

/// What the publisher knows about every packet it sent (index = the payload's global seq).
#[derive(Clone, Copy, Default)]
struct Sent {
    /// `CLOCK_REALTIME` ns just before the `sendto` of this packet.
    at_ns: u64,
    in_window: bool,
}

/// One copy a subscriber received.
#[derive(Clone, Copy)]
struct Got {
    seq: u32,
    kernel_ns: u64,
    app_ns: u64,
    sent_ns: u64,
}

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    /// Subscribers that have received both streams.
    ready: AtomicUsize,
}

/// CPU and allocation counters of one thread, sampled on that thread.
#[derive(Clone, Copy, Default, Debug)]
struct ThreadSample {
    cpu: Duration,
    allocs: u64,
    /// Copies forwarded (floor relay only; the SFU's come from its metrics).
    forwarded: u64,
    /// When the thread took the sample ([`since_start`]): a saturated server answers its probe
    /// late, so rates use the thread's own interval, not the window's nominal length.
    at: Duration,
}

type ProbeTx = mpsc::UnboundedSender<oneshot::Sender<ThreadSample>>;

/// Where a server thread leaves the in-loop latencies (ns per copy) of the measured window: the
/// first probe of a run (window start) starts recording, the second (window end) stops it.
type LoopLatencies = Arc<std::sync::Mutex<Vec<u32>>>;

fn loop_histogram(latencies: &LoopLatencies) -> Histogram {
    let mut h = Histogram::new();
    for ns in latencies.lock().expect("latencies").iter() {
        h.record(u64::from(*ns) / 1_000);
    }
    h
}

async fn probe(tx: &ProbeTx) -> ThreadSample {
    let (reply, rx) = oneshot::channel();
    if tx.send(reply).is_err() {
        return ThreadSample::default();
    }
    rx.await.unwrap_or_default()
}

/// Which CPU a thread runs on: the server alone on one, everything else (subscribers,
/// publisher, the run's own thread) on another, so that the load never preempts the server it
/// measures (on two cores, a woken subscriber thread is otherwise often placed on the server's
/// core). `RELAY_PIN=0` leaves placement to the scheduler; with one usable CPU nothing is pinned.
#[derive(Clone, Copy)]
enum Cpu {
    Server,
    Load,
}

/// The CPUs the process may use, read once before any thread is pinned (a thread inherits its
/// creator's affinity, so reading it later would see only the pinned CPU).
static USABLE_CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

fn usable_cpus() -> &'static [usize] {
    use nix::sched::{CpuSet, sched_getaffinity};
    USABLE_CPUS.get_or_init(|| {
        let Ok(allowed) = sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
            return Vec::new();
        };
        (0..CpuSet::count())
            .filter(|&c| allowed.is_set(c).unwrap_or(false))
            .collect()
    })
}

/// `RELAY_PIN=0`: the scheduler places every thread.
fn pinning_off() -> bool {
    std::env::var("RELAY_PIN").is_ok_and(|v| v == "0")
}

fn pin_current_thread(cpu: Cpu) {
    if !pinning_off() {
        pin_to(cpu);
    }
}

/// With several workers, run on each media thread: the room's owner gets the server's CPU (as
/// the floor has), the other workers (which hand it the datagrams the kernel puts on their
/// sockets) the load's.
fn pin_media_thread(workers: usize) {
    if pinning_off() || workers < 2 {
        return;
    }
    let owner = callrelay_media::route::shard_of_room(ROOM, workers);
    let name = std::thread::current().name().map(str::to_owned);
    let index = name.and_then(|n| n.strip_prefix("callrelay-media-")?.parse::<usize>().ok());
    pin_to(if index == Some(owner) {
        Cpu::Server
    } else {
        Cpu::Load
    });
}

fn pin_to(cpu: Cpu) {
    use nix::sched::{CpuSet, sched_setaffinity};
    let (Some(&server), Some(&load)) = (usable_cpus().first(), usable_cpus().get(1)) else {
        return;
    };
    let mut set = CpuSet::new();
    let chosen = match cpu {
        Cpu::Server => server,
        Cpu::Load => load,
    };
    if set.set(chosen).is_ok() {
        let _ = sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn spawn_thread<F>(name: &str, f: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce(&tokio::runtime::Runtime) + Send + 'static,
{
    // Several SFU workers need every core: each media thread is pinned by `pin_media_thread`
    // (the "sfu" thread only samples them and stays with the load).
    let cpu = match name {
        "sfu" if env("RELAY_WORKERS", 1usize) > 1 => Cpu::Load,
        "sfu" | "floor" => Cpu::Server,
        _ => Cpu::Load,
    };
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            pin_current_thread(cpu);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            f(&rt);
        })
        .expect("thread")
}

// ---------------------------------------------------------------- the packets

/// The paced source: audio and video evenly spaced at their rates (the way a browser's pacer
/// spreads a frame), video frames at 30 fps split into packets of up to `VIDEO_PAYLOAD_MAX`.
struct Source {
    video_every: Duration,
    audio_every: Option<Duration>,
    next_video: Instant,
    next_audio: Instant,
    video_seq: u16,
    audio_seq: u16,
    global_seq: u32,
    video_in_frame: u32,
    per_frame: u32,
    frame: u32,
    buf: Vec<u8>,
}

impl Source {
    fn new(s: &Settings, start: Instant) -> Self {
        Self {
            video_every: Duration::from_secs_f64(1.0 / f64::from(s.video_pps)),
            audio_every: (s.audio_pps > 0)
                .then(|| Duration::from_secs_f64(1.0 / f64::from(s.audio_pps))),
            next_video: start,
            next_audio: start,
            video_seq: 1,
            audio_seq: 1,
            global_seq: 0,
            video_in_frame: 0,
            per_frame: (s.video_pps / 30).max(1),
            frame: 0,
            buf: Vec::with_capacity(1_500),
        }
    }

    fn next_due(&self) -> Instant {
        match self.audio_every {
            Some(_) => self.next_video.min(self.next_audio),
            None => self.next_video,
        }
    }

    /// The next packet due at or before `now`, stamped with the current time.
    fn poll(&mut self, now: Instant) -> Option<(Packet, u32)> {
        let audio_due = self.audio_every.is_some() && self.next_audio <= now;
        let video_due = self.next_video <= now;
        let seq = self.global_seq;
        let stamp = Stamp {
            stream: 0,
            seq,
            sent_ns: payload::now_ns(),
        };
        let packet = if audio_due && (!video_due || self.next_audio <= self.next_video) {
            self.next_audio += self.audio_every.unwrap_or_default();
            let size = 100 + (seq as usize * 7) % 41;
            payload::write(&mut self.buf, false, Stamp { stream: 0, ..stamp }, size);
            self.audio_seq = self.audio_seq.wrapping_add(1);
            Packet {
                header: Header {
                    version: 2,
                    payload_type: OPUS_PT,
                    sequence_number: self.audio_seq,
                    timestamp: seq.wrapping_mul(960),
                    ssrc: AUDIO_SSRC,
                    marker: false,
                    ..Default::default()
                },
                payload: Bytes::copy_from_slice(&self.buf),
            }
        } else if video_due {
            self.next_video += self.video_every;
            let last = self.video_in_frame + 1 == self.per_frame;
            let size = if last {
                300 + (self.frame as usize * 131) % (VIDEO_PAYLOAD_MAX - 300)
            } else {
                VIDEO_PAYLOAD_MAX
            };
            payload::write(&mut self.buf, true, Stamp { stream: 1, ..stamp }, size);
            self.video_seq = self.video_seq.wrapping_add(1);
            let p = Packet {
                header: Header {
                    version: 2,
                    payload_type: VP8_PT,
                    sequence_number: self.video_seq,
                    timestamp: self.frame.wrapping_mul(3_000),
                    ssrc: VIDEO_SSRC,
                    marker: last,
                    ..Default::default()
                },
                payload: Bytes::copy_from_slice(&self.buf),
            };
            self.video_in_frame += 1;
            if last {
                self.video_in_frame = 0;
                self.frame += 1;
            }
            p
        } else {
            return None;
        };
        self.global_seq += 1;
        Some((packet, seq))
    }
}

// ---------------------------------------------------------------- one run

struct RunResult {
    mode: Mode,
    /// Media worker threads: the SFU's `media.workers`; the floor is always one thread.
    workers: usize,
    n: usize,
    window: Duration,
    sent_in_window: u64,
    expected: u64,
    received: u64,
    /// Per-stream forwarding latency as the issue defines it, from the server's own clock:
    /// the packet read off the socket by the server's loop → each copy handed to the kernel.
    in_loop: Histogram,
    /// Publisher's `sendto` → the copy in the subscriber's socket (kernel timestamp): adds the
    /// wait in the server's socket queue and the server thread's wake-up.
    forwarding: Histogram,
    e2e: Histogram,
    /// The server's CPU and allocations over its own sampling interval (`server.at`).
    server: ThreadSample,
    forwarded: u64,
    /// The interval `forwarded` was counted over (the server's, or the metric reads').
    forwarded_over: Duration,
    clients_cpu: Duration,
    server_hist: Option<(f64, f64)>,
    server_drops: u64,
    server_socket_drops: u64,
    client_socket_drops: u64,
    profile: String,
}

fn run_once(mode: Mode, n: usize, s: &Settings) -> Result<RunResult, String> {
    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
    });
    let main_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    main_rt.block_on(async {
        match mode {
            Mode::Callrelay => run_callrelay(n, s, shared).await,
            Mode::Floor => run_floor(n, s, shared).await,
        }
    })
}

/// Cumulative buckets (upper bound s, count) of a histogram in a registry.
fn histogram_buckets(registry: &prometheus::Registry, name: &str) -> Vec<(f64, u64)> {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .flat_map(|m| {
            m.get_histogram()
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The bucket upper bound (µs) holding quantile `q` of the difference of two snapshots.
fn bucket_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> f64 {
    let total = after.last().map(|b| b.1).unwrap_or(0) - before.last().map(|b| b.1).unwrap_or(0);
    let rank = (q * total as f64).ceil() as u64;
    for (i, (le, c)) in after.iter().enumerate() {
        let c = c - before.get(i).map(|b| b.1).unwrap_or(0);
        if c >= rank.max(1) {
            return le * 1e6;
        }
    }
    f64::INFINITY
}

/// Forwarded copies, latency histogram buckets and dropped datagrams of the SFU at one instant.
type Marks = (f64, Vec<(f64, u64)>, f64);

enum SubCmd {
    Offer(String),
}

/// The subscribers' thread: one task per subscriber, all on one current-thread runtime.
struct Clients {
    probe: ProbeTx,
    got: oneshot::Receiver<Vec<Got>>,
    thread: std::thread::JoinHandle<()>,
}

/// How a subscriber unprotects what it receives.
enum SubscriberKind {
    /// A sans-IO webrtc client peer that answers the SFU's offers.
    Webrtc { handle: SfuHandle, id: String },
    /// The floor: a bare SRTP context.
    Floor(Context),
}

async fn run_subscriber(
    socket: UdpSocket,
    mut kind: SubscriberKind,
    mut cmds: mpsc::UnboundedReceiver<SubCmd>,
    shared: Arc<Shared>,
    out: Arc<std::sync::Mutex<Vec<Got>>>,
) {
    let local = socket.local_addr().expect("local addr");
    let mut peer = match &kind {
        SubscriberKind::Webrtc { .. } => {
            Some(ClientPeer::new(local, Instant::now()).expect("peer"))
        }
        SubscriberKind::Floor(_) => None,
    };
    let mut got: Vec<Got> = Vec::with_capacity(16_384);
    let mut streams_seen = [false; 2];
    let mut counted_ready = false;
    let mut buf = vec![0u8; 2048];
    let far = Instant::now() + Duration::from_secs(3600);
    let mut cmds_open = true;
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(p) = peer.as_mut() {
            while let Some((to, d)) = p.poll_transmit() {
                let _ = socket.try_send_to(&d, to);
            }
            p.poll_state();
        }
        let deadline = peer
            .as_mut()
            .and_then(|p| p.poll_timeout())
            .unwrap_or(far)
            .min(Instant::now() + Duration::from_millis(50));
        tokio::select! {
            biased;
            cmd = cmds.recv(), if cmds_open => {
                cmds_open = cmd.is_some();
                let (Some(SubCmd::Offer(sdp)), Some(p), SubscriberKind::Webrtc { handle, id }) =
                    (cmd, peer.as_mut(), &kind) else { continue };
                match p.answer(Instant::now(), sdp) {
                    Ok(answer) => {
                        if let Err(e) = handle.subscribe_answer(ROOM, id, answer).await {
                            eprintln!("subscribe answer refused: {e}");
                        }
                    }
                    Err(e) => eprintln!("cannot answer the subscribe offer: {e}"),
                }
            }
            r = udp::recv(&socket, &mut buf) => {
                let mut next = r;
                for _ in 0..64 {
                    let Ok((len, from, kernel_ns)) = next else { break };
                    let data = &buf[..len];
                    match (&mut kind, peer.as_mut()) {
                        (SubscriberKind::Webrtc { .. }, Some(p)) => {
                            let _ = p.handle_datagram(Instant::now(), from, data);
                            while let Some(pkt) = p.poll_rtp() {
                                if let Some(st) = payload::read(&pkt.payload) {
                                    streams_seen[(st.stream & 1) as usize] = true;
                                    got.push(Got { seq: st.seq, kernel_ns, app_ns: payload::now_ns(), sent_ns: st.sent_ns });
                                }
                            }
                        }
                        (SubscriberKind::Floor(ctx), _) => {
                            if let Ok(plain) = ctx.decrypt_rtp(data)
                                && let Ok(h) = Header::unmarshal(&mut &plain[..])
                                && let Some(st) = payload::read(&plain[h.marshal_size()..])
                            {
                                streams_seen[(st.stream & 1) as usize] = true;
                                got.push(Got { seq: st.seq, kernel_ns, app_ns: payload::now_ns(), sent_ns: st.sent_ns });
                            }
                        }
                        _ => {}
                    }
                    next = udp::try_recv(&socket, &mut buf);
                }
                if !counted_ready && streams_seen[1] && (streams_seen[0] || !has_audio(&shared)) {
                    counted_ready = true;
                    shared.ready.fetch_add(1, Ordering::SeqCst);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                if let Some(p) = peer.as_mut() {
                    let _ = p.handle_timeout(Instant::now());
                }
            }
        }
    }
    out.lock().expect("lock").append(&mut got);
}

static AUDIO_ON: AtomicBool = AtomicBool::new(true);

fn has_audio(_: &Shared) -> bool {
    AUDIO_ON.load(Ordering::Relaxed)
}

/// Starts the subscribers' thread. `make` builds subscriber `i`'s kind.
fn start_clients(
    sockets: Vec<std::net::UdpSocket>,
    kinds: Vec<SubscriberKind>,
    cmd_rxs: Vec<mpsc::UnboundedReceiver<SubCmd>>,
    shared: Arc<Shared>,
) -> Clients {
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<oneshot::Sender<ThreadSample>>();
    let (got_tx, got_rx) = oneshot::channel();
    let thread = spawn_thread("subscribers", move |rt| {
        rt.block_on(async move {
            let out = Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for ((sock, kind), cmds) in sockets.into_iter().zip(kinds).zip(cmd_rxs) {
                let sock = UdpSocket::from_std(sock).expect("socket");
                tasks.push(tokio::spawn(run_subscriber(
                    sock,
                    kind,
                    cmds,
                    Arc::clone(&shared),
                    Arc::clone(&out),
                )));
            }
            let probe_task = tokio::spawn(async move {
                while let Some(reply) = probe_rx.recv().await {
                    let _ = reply.send(ThreadSample {
                        cpu: thread_cpu(),
                        allocs: thread_allocs(),
                        forwarded: 0,
                        at: since_start(),
                    });
                }
            });
            for t in tasks {
                let _ = t.await;
            }
            probe_task.abort();
            let all = std::mem::take(&mut *out.lock().expect("lock"));
            let _ = got_tx.send(all);
        });
    });
    Clients {
        probe: probe_tx,
        got: got_rx,
        thread,
    }
}

/// Subscriber sockets, bound with receive timestamps.
fn bind_sockets(n: usize) -> Vec<std::net::UdpSocket> {
    (0..n)
        .map(|_| udp::bind_std("127.0.0.1:0".parse().expect("addr")).expect("bind"))
        .collect()
}

/// The publisher's thread: paces the source through `send`.
enum PublisherKind {
    Webrtc(Box<ClientPeer>),
    Floor { ctx: Context, to: SocketAddr },
}

struct Publisher {
    probe: ProbeTx,
    sent: oneshot::Receiver<Vec<Sent>>,
    thread: std::thread::JoinHandle<()>,
}

fn start_publisher(
    socket: std::net::UdpSocket,
    mut kind: PublisherKind,
    s: &Settings,
    shared: Arc<Shared>,
) -> Publisher {
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<oneshot::Sender<ThreadSample>>();
    let (sent_tx, sent_rx) = oneshot::channel();
    let settings = s.clone();
    let thread = spawn_thread("publisher", move |rt| {
        rt.block_on(async move {
            let socket = UdpSocket::from_std(socket).expect("socket");
            let mut sent: Vec<Sent> = Vec::with_capacity(1 << 16);
            let mut source: Option<Source> = None;
            let mut buf = vec![0u8; 2048];
            let mut scratch = Vec::with_capacity(1_500);
            let far = Instant::now() + Duration::from_secs(3600);
            while !shared.stop.load(Ordering::Relaxed) {
                if let PublisherKind::Webrtc(p) = &mut kind {
                    while let Some((to, d)) = p.poll_transmit() {
                        let _ = socket.try_send_to(&d, to);
                    }
                    p.poll_state();
                    if source.is_none() && p.is_connected() {
                        source = Some(Source::new(&settings, Instant::now()));
                    }
                } else if source.is_none() {
                    source = Some(Source::new(&settings, Instant::now()));
                }
                let peer_deadline = match &mut kind {
                    PublisherKind::Webrtc(p) => p.poll_timeout().unwrap_or(far),
                    PublisherKind::Floor { .. } => far,
                };
                let send_deadline = source.as_ref().map(Source::next_due).unwrap_or(far);
                let deadline = peer_deadline
                    .min(send_deadline)
                    .min(Instant::now() + Duration::from_millis(50));
                tokio::select! {
                    biased;
                    Some(reply) = probe_rx.recv() => {
                        let _ = reply.send(ThreadSample { cpu: thread_cpu(), allocs: thread_allocs(), forwarded: 0, at: since_start() });
                    }
                    r = socket.recv_from(&mut buf) => {
                        if let (Ok((len, from)), PublisherKind::Webrtc(p)) = (r, &mut kind) {
                            let _ = p.handle_datagram(Instant::now(), from, &buf[..len]);
                            while p.poll_rtp().is_some() {}
                        }
                    }
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        let now = Instant::now();
                        if let PublisherKind::Webrtc(p) = &mut kind
                            && peer_deadline <= now
                        {
                            let _ = p.handle_timeout(now);
                        }
                        let Some(src) = source.as_mut() else { continue };
                        while let Some((packet, gseq)) = src.poll(now) {
                            let in_window = shared.measuring.load(Ordering::Relaxed);
                            let at_ns = match &mut kind {
                                PublisherKind::Webrtc(p) => {
                                    let _ = p.send_rtp(now, packet);
                                    let mut at = 0;
                                    while let Some((to, d)) = p.poll_transmit() {
                                        if d.first().is_some_and(|b| (128..192).contains(b)) && at == 0 {
                                            at = payload::now_ns();
                                        }
                                        let _ = socket.try_send_to(&d, to);
                                    }
                                    at
                                }
                                PublisherKind::Floor { ctx, to } => {
                                    scratch.clear();
                                    scratch.resize(packet.marshal_size(), 0);
                                    let _ = packet.marshal_to(&mut scratch);
                                    match ctx.encrypt_rtp_with_header(&scratch, &packet.header) {
                                        Ok(d) => {
                                            let at = payload::now_ns();
                                            let _ = socket.try_send_to(&d, *to);
                                            at
                                        }
                                        Err(_) => 0,
                                    }
                                }
                            };
                            let i = gseq as usize;
                            if sent.len() <= i {
                                sent.resize(i + 1, Sent::default());
                            }
                            sent[i] = Sent { at_ns, in_window };
                        }
                    }
                }
            }
            let _ = sent_tx.send(sent);
        });
    });
    Publisher {
        probe: probe_tx,
        sent: sent_rx,
        thread,
    }
}

/// The measured window, common to both modes: returns (server, clients) samples at start and
/// end, and the publisher's and subscribers' records.
struct Window {
    server: (ThreadSample, ThreadSample),
    clients_cpu: Duration,
    sent: Vec<Sent>,
    got: Vec<Got>,
    /// Datagrams the kernel dropped in the window because a receive queue was full: the
    /// server's socket, and the subscribers' sockets.
    server_socket_drops: u64,
    client_socket_drops: u64,
    /// When `on_edge` ran (window start, end), on the measuring thread.
    edges: (Duration, Duration),
}

async fn measure(
    s: &Settings,
    shared: &Arc<Shared>,
    server_probe: &ProbeTx,
    clients: Clients,
    publisher: Publisher,
    ports: &Ports,
    mut on_edge: impl FnMut(bool),
) -> Result<Window, String> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s0 = probe(server_probe).await;
    let c0 = probe(&clients.probe).await;
    let p0 = probe(&publisher.probe).await;
    let drops0 = ports.drops();
    let edge0 = since_start();
    on_edge(true);
    shared.measuring.store(true, Ordering::SeqCst);
    tokio::time::sleep(s.window).await;
    shared.measuring.store(false, Ordering::SeqCst);
    let s1 = probe(server_probe).await;
    let c1 = probe(&clients.probe).await;
    let p1 = probe(&publisher.probe).await;
    let edge1 = since_start();
    on_edge(false);
    // Let the last in-window packets arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let drops1 = ports.drops();
    shared.stop.store(true, Ordering::SeqCst);
    let sent = publisher.sent.await.map_err(|_| "publisher died")?;
    let got = clients.got.await.map_err(|_| "subscribers died")?;
    let _ = publisher.thread.join();
    let _ = clients.thread.join();
    Ok(Window {
        server: (s0, s1),
        clients_cpu: (c1.cpu - c0.cpu) + (p1.cpu - p0.cpu),
        sent,
        got,
        server_socket_drops: drops1.0.saturating_sub(drops0.0),
        client_socket_drops: drops1.1.saturating_sub(drops0.1),
        edges: (edge0, edge1),
    })
}

fn summarise(mode: Mode, n: usize, s: &Settings, w: &Window) -> RunResult {
    let sent_in_window = w.sent.iter().filter(|x| x.in_window).count() as u64;
    let mut forwarding = Histogram::new();
    let mut e2e = Histogram::new();
    let mut received = 0u64;
    for g in &w.got {
        let Some(sent) = w.sent.get(g.seq as usize) else {
            continue;
        };
        if !sent.in_window {
            continue;
        }
        received += 1;
        if g.kernel_ns != 0 && sent.at_ns != 0 {
            forwarding.record(g.kernel_ns.saturating_sub(sent.at_ns) / 1_000);
        }
        e2e.record(g.app_ns.saturating_sub(g.sent_ns) / 1_000);
    }
    let (a, b) = w.server;
    RunResult {
        mode,
        workers: if mode == Mode::Callrelay {
            s.workers
        } else {
            1
        },
        n,
        window: s.window,
        sent_in_window,
        expected: sent_in_window * n as u64,
        received,
        in_loop: Histogram::new(),
        forwarding,
        e2e,
        server: ThreadSample {
            cpu: b.cpu.saturating_sub(a.cpu),
            allocs: b.allocs - a.allocs,
            forwarded: b.forwarded - a.forwarded,
            at: b.at.saturating_sub(a.at),
        },
        forwarded: b.forwarded - a.forwarded,
        forwarded_over: b.at.saturating_sub(a.at),
        clients_cpu: w.clients_cpu,
        server_hist: None,
        server_drops: 0,
        server_socket_drops: w.server_socket_drops,
        client_socket_drops: w.client_socket_drops,
        profile: String::new(),
    }
}

// ---------------------------------------------------------------- callrelay

async fn run_callrelay(n: usize, s: &Settings, shared: Arc<Shared>) -> Result<RunResult, String> {
    let registry = prometheus::Registry::new();
    // The SFU started from a pinned thread of its own: `Sfu::start` runs each shard on a thread
    // it spawns (inheriting that CPU, unless several workers are asked for), sampled through
    // `bench::on_media_threads` and summed.
    let (start_tx, start_rx) = oneshot::channel();
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<oneshot::Sender<ThreadSample>>();
    let reg = registry.clone();
    let latencies = LoopLatencies::default();
    let loop_out = Arc::clone(&latencies);
    let workers = s.workers;
    let server_thread = spawn_thread("sfu", move |rt| {
        rt.block_on(async move {
            let config = MediaConfig {
                bind: "127.0.0.1:0".parse().expect("addr"),
                workers,
                ..Default::default()
            };
            let started = Sfu::start(config, &reg).await;
            let handle = match started {
                Ok((h, events)) => {
                    let _ = start_tx.send(Ok((h.clone(), events)));
                    h
                }
                Err(e) => {
                    let _ = start_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = bench::on_media_threads(&handle, move || pin_media_thread(workers)).await;
            let mut probes = 0;
            while let Some(reply) = probe_rx.recv().await {
                probes += 1;
                let probe = probes;
                let loop_out = Arc::clone(&loop_out);
                // Sampled on each of the SFU's media threads (started by `Sfu::start`).
                let samples = bench::on_media_threads(&handle, move || {
                    let sample = ThreadSample {
                        cpu: thread_cpu(),
                        allocs: thread_allocs(),
                        forwarded: 0,
                        at: since_start(),
                    };
                    match probe {
                        1 => bench::start_recording_copy_latencies(),
                        2 => loop_out
                            .lock()
                            .expect("latencies")
                            .extend(bench::take_copy_latencies()),
                        _ => {}
                    }
                    sample
                })
                .await;
                let sample = samples.map(|all| {
                    all.into_iter()
                        .reduce(|a, b| ThreadSample {
                            cpu: a.cpu + b.cpu,
                            allocs: a.allocs + b.allocs,
                            forwarded: 0,
                            at: a.at.max(b.at),
                        })
                        .unwrap_or_default()
                });
                let Some(sample) = sample else { break };
                let _ = reply.send(sample);
            }
            handle.shutdown().await;
        });
    });
    let (sfu, mut events) = start_rx.await.map_err(|_| "sfu thread died")??;

    // Subscribers: join first (they get an offer as soon as the tracks appear).
    let sockets = bind_sockets(n);
    let mut cmd_txs = HashMap::new();
    let mut cmd_rxs = Vec::new();
    let mut kinds = Vec::new();
    for i in 0..n {
        let id = format!("sub-{i}");
        let (tx, rx) = mpsc::unbounded_channel();
        cmd_txs.insert(id.clone(), tx);
        cmd_rxs.push(rx);
        kinds.push(SubscriberKind::Webrtc {
            handle: sfu.clone(),
            id: id.clone(),
        });
        sfu.join(ROOM, &id).await.map_err(|e| e.to_string())?;
    }
    let pump = tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let MediaEvent::SubscribeOffer {
                participant, sdp, ..
            } = ev
                && let Some(tx) = cmd_txs.get(&participant)
            {
                let _ = tx.send(SubCmd::Offer(sdp));
            }
        }
    });
    let ports = Ports::new(sfu.local_addr(), &sockets);
    let clients = start_clients(sockets, kinds, cmd_rxs, Arc::clone(&shared));

    // The publisher: offer audio + video, get the SFU's answer, connect, then pace.
    let pub_socket = bind_sockets(1).pop().ok_or("bind")?;
    let mut publisher = ClientPeer::new(
        pub_socket.local_addr().map_err(|e| e.to_string())?,
        Instant::now(),
    )
    .map_err(|e| e.to_string())?;
    if s.audio_pps > 0 {
        publisher
            .add_track(Kind::Audio, AUDIO_SSRC, "pub", "pub-audio")
            .map_err(|e| e.to_string())?;
    }
    publisher
        .add_track(Kind::Video, VIDEO_SSRC, "pub", "pub-video")
        .map_err(|e| e.to_string())?;
    let offer = publisher
        .create_offer(Instant::now())
        .map_err(|e| e.to_string())?;
    let answer = sfu
        .publish(ROOM, "pub", offer)
        .await
        .map_err(|e| e.to_string())?;
    publisher
        .apply_answer(Instant::now(), answer)
        .map_err(|e| e.to_string())?;
    let publisher = start_publisher(
        pub_socket,
        PublisherKind::Webrtc(Box::new(publisher)),
        s,
        Arc::clone(&shared),
    );

    let limit = Duration::from_secs(20 + n as u64 / 2);
    if let Err(e) = wait_until("every subscriber receiving", limit, || {
        shared.ready.load(Ordering::SeqCst) >= n
    })
    .await
    {
        shared.stop.store(true, Ordering::SeqCst);
        return Err(format!(
            "{e} ({} of {n} ready)",
            shared.ready.load(Ordering::SeqCst)
        ));
    }

    let hist = "callrelay_forward_latency_seconds";
    let fwd = "callrelay_rtp_packets_forwarded_total";
    // (forwarded, latency buckets, drops) at the window's start and end.
    let mut marks: Vec<Marks> = Vec::new();
    let reg = registry.clone();
    let w = measure(s, &shared, &probe_tx, clients, publisher, &ports, |_| {
        marks.push((
            metric_sum(&reg, fwd),
            histogram_buckets(&reg, hist),
            metric_sum(&reg, "callrelay_media_datagrams_dropped_total"),
        ));
    })
    .await?;
    let mut r = summarise(Mode::Callrelay, n, s, &w);
    r.in_loop = loop_histogram(&latencies);
    if let [(f0, h0, d0), (f1, h1, d1)] = &marks[..] {
        r.forwarded = (f1 - f0) as u64;
        r.forwarded_over = w.edges.1.saturating_sub(w.edges.0);
        r.server.forwarded = r.forwarded;
        r.server_hist = Some((bucket_quantile(h0, h1, 0.5), bucket_quantile(h0, h1, 0.99)));
        r.server_drops = (d1 - d0) as u64;
    }
    r.profile = "negotiated by webrtc-rs (AEAD_AES_128_GCM)".into();
    drop(probe_tx);
    pump.abort();
    let _ = server_thread.join();
    Ok(r)
}

// ---------------------------------------------------------------- floor

fn srtp_context(profile: ProtectionProfile, key: &[u8], salt: &[u8]) -> Context {
    let provider = rtc::crypto::default_provider().expect("crypto provider");
    Context::new(
        key,
        salt,
        profile,
        Some(srtp_no_replay_protection()),
        None,
        provider.crypto(),
    )
    .expect("srtp context")
}

fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

/// The floor relay: one socket, recv → SRTP unprotect once → per subscriber: rewrite SSRC and
/// sequence number, marshal, SRTP protect, `try_send_to`. Same tokio socket calls and batching
/// as the media loop.
struct FloorOut {
    addr: SocketAddr,
    ctx: Context,
    ssrc_base: u32,
    seq_offset: u16,
}

async fn floor_relay(
    socket: UdpSocket,
    mut input: Context,
    mut outs: Vec<FloorOut>,
    mut probe_rx: mpsc::UnboundedReceiver<oneshot::Sender<ThreadSample>>,
    loop_out: LoopLatencies,
) {
    let mut buf = vec![0u8; 2048];
    let mut scratch: Vec<u8> = Vec::with_capacity(2048);
    let mut forwarded = 0u64;
    let mut probes = 0;
    let mut recording: Option<Vec<u32>> = None;
    let mut handle = |data: &[u8], forwarded: &mut u64, recording: &mut Option<Vec<u32>>| {
        let rx_at = Instant::now();
        let plain = match input.decrypt_rtp(data) {
            Ok(p) => p,
            Err(e) => {
                if std::env::var("RELAY_DEBUG").is_ok() {
                    eprintln!("floor: cannot unprotect a datagram: {e}");
                }
                return;
            }
        };
        let Ok(header) = Header::unmarshal(&mut &plain[..]) else {
            return;
        };
        let body = &plain[header.marshal_size()..];
        let mut h = header;
        for o in outs.iter_mut() {
            h.ssrc = o.ssrc_base.wrapping_add(u32::from(h.payload_type));
            h.sequence_number = h.sequence_number.wrapping_add(o.seq_offset);
            scratch.clear();
            scratch.resize(h.marshal_size(), 0);
            if h.marshal_to(&mut scratch).is_err() {
                continue;
            }
            scratch.extend_from_slice(body);
            if let Ok(d) = o.ctx.encrypt_rtp_with_header(&scratch, &h)
                && socket.try_send_to(&d, o.addr).is_ok()
            {
                *forwarded += 1;
                if let Some(v) = recording.as_mut() {
                    v.push(u32::try_from(rx_at.elapsed().as_nanos()).unwrap_or(u32::MAX));
                }
            }
            h.sequence_number = h.sequence_number.wrapping_sub(o.seq_offset);
        }
    };
    loop {
        tokio::select! {
            biased;
            p = probe_rx.recv() => {
                let Some(reply) = p else { break };
                let sample = ThreadSample { cpu: thread_cpu(), allocs: thread_allocs(), forwarded, at: since_start() };
                probes += 1;
                match probes {
                    1 => recording = Some(Vec::with_capacity(1 << 20)),
                    2 => *loop_out.lock().expect("latencies") = recording.take().unwrap_or_default(),
                    _ => {}
                }
                let _ = reply.send(sample);
            }
            r = socket.recv_from(&mut buf) => {
                if let Ok((len, _)) = r {
                    handle(&buf[..len], &mut forwarded, &mut recording);
                    for _ in 0..64 {
                        match socket.try_recv_from(&mut buf) {
                            Ok((len, _)) => handle(&buf[..len], &mut forwarded, &mut recording),
                            Err(_) => break,
                        }
                    }
                }
            }
        }
    }
}

async fn run_floor(n: usize, s: &Settings, shared: Arc<Shared>) -> Result<RunResult, String> {
    let profile = s.floor_profile;
    let (kl, sl) = (profile.key_len(), profile.salt_len());
    let sub_sockets = bind_sockets(n);
    let pub_socket = bind_sockets(1).pop().ok_or("bind")?;
    let relay_socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    relay_socket
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    // The socket buffers the SFU asks for on its media socket.
    {
        use nix::sys::socket::{setsockopt, sockopt};
        let _ = setsockopt(&relay_socket, sockopt::RcvBuf, &(4 << 20));
        let _ = setsockopt(&relay_socket, sockopt::SndBuf, &(4 << 20));
    }
    let relay_addr = relay_socket.local_addr().map_err(|e| e.to_string())?;

    let (in_key, in_salt) = (random_bytes(kl), random_bytes(sl));
    let mut outs = Vec::new();
    let mut kinds = Vec::new();
    let mut cmd_rxs = Vec::new();
    for (i, sock) in sub_sockets.iter().enumerate() {
        let (key, salt) = (random_bytes(kl), random_bytes(sl));
        outs.push(FloorOut {
            addr: sock.local_addr().map_err(|e| e.to_string())?,
            ctx: srtp_context(profile, &key, &salt),
            ssrc_base: 0x1000_0000 + (i as u32) * 256,
            seq_offset: rand::random(),
        });
        kinds.push(SubscriberKind::Floor(srtp_context(profile, &key, &salt)));
        cmd_rxs.push(mpsc::unbounded_channel().1);
    }
    let (probe_tx, probe_rx) = mpsc::unbounded_channel();
    let input = srtp_context(profile, &in_key, &in_salt);
    let latencies = LoopLatencies::default();
    let loop_out = Arc::clone(&latencies);
    let server_thread = spawn_thread("floor", move |rt| {
        rt.block_on(async move {
            let socket = UdpSocket::from_std(relay_socket).expect("socket");
            floor_relay(socket, input, outs, probe_rx, loop_out).await;
        });
    });
    let ports = Ports::new(relay_addr, &sub_sockets);
    let clients = start_clients(sub_sockets, kinds, cmd_rxs, Arc::clone(&shared));
    let publisher = start_publisher(
        pub_socket,
        PublisherKind::Floor {
            ctx: srtp_context(profile, &in_key, &in_salt),
            to: relay_addr,
        },
        s,
        Arc::clone(&shared),
    );
    wait_until(
        "every floor subscriber receiving",
        Duration::from_secs(20),
        || shared.ready.load(Ordering::SeqCst) >= n,
    )
    .await?;
    let w = measure(s, &shared, &probe_tx, clients, publisher, &ports, |_| {}).await?;
    let mut r = summarise(Mode::Floor, n, s, &w);
    r.in_loop = loop_histogram(&latencies);
    r.profile = format!("{profile:?}");
    drop(probe_tx);
    let _ = server_thread.join();
    Ok(r)
}

// ---------------------------------------------------------------- report

impl RunResult {
    fn window_secs(&self) -> f64 {
        self.window.as_secs_f64()
    }

    /// Copies forwarded per second.
    fn out_pps(&self) -> f64 {
        self.forwarded as f64 / self.forwarded_over.as_secs_f64().max(1e-9)
    }

    /// The server thread's share of one core.
    fn server_core(&self) -> f64 {
        self.server.cpu.as_secs_f64() / self.server.at.as_secs_f64().max(1e-9)
    }

    /// Server CPU per forwarded copy (µs), from the two rates so that a late probe skews
    /// neither.
    fn cpu_us_per_pkt(&self) -> f64 {
        if self.forwarded == 0 {
            f64::NAN
        } else {
            self.server_core() * 1e6 / self.out_pps()
        }
    }

    fn allocs_per_pkt(&self) -> f64 {
        self.server.allocs as f64 / self.forwarded.max(1) as f64
    }
}

fn print_run(r: &RunResult) {
    let secs = r.window_secs();
    let lost = loss(r);
    println!(
        "{:>9} N={:<3} in {:>6.0} pps, out {:>8.0} pps | in-loop µs p50 {:>5} p99 {:>5} p99.9 {:>6} max {:>6} | wire µs p50 {:>5} p99 {:>5} p99.9 {:>6} | e2e µs p50 {:>5} p99 {:>6} | server CPU {:>6.2} µs/pkt ({:>4.1} % of a core), {:>5.1} allocs/pkt | clients CPU {:>4.1} % of a core | loss {:.4} %{}",
        r.mode.name(),
        r.n,
        r.sent_in_window as f64 / secs,
        r.out_pps(),
        r.in_loop.quantile(0.5),
        r.in_loop.quantile(0.99),
        r.in_loop.quantile(0.999),
        r.in_loop.max(),
        r.forwarding.quantile(0.5),
        r.forwarding.quantile(0.99),
        r.forwarding.quantile(0.999),
        r.e2e.quantile(0.5),
        r.e2e.quantile(0.99),
        r.cpu_us_per_pkt(),
        r.server_core() * 100.0,
        r.allocs_per_pkt(),
        r.clients_cpu.as_secs_f64() * 100.0 / secs,
        lost * 100.0,
        match r.server_hist {
            Some((p50, p99)) => format!(
                " | SFU histogram p50 ≤ {p50:.0} µs, p99 ≤ {p99:.0} µs, drops {}",
                r.server_drops
            ),
            None => String::new(),
        }
    );
    if r.server_socket_drops + r.client_socket_drops > 0 {
        println!(
            "          kernel receive-queue drops: server socket {}, subscriber sockets {}",
            r.server_socket_drops, r.client_socket_drops
        );
    }
}

fn loss(r: &RunResult) -> f64 {
    if r.expected == 0 {
        0.0
    } else {
        1.0 - r.received as f64 / r.expected as f64
    }
}

/// Saturation: the same run at rising forwarding rates (`RELAY_RAMP_OUT_PPS`, copies per
/// second out; the video rate in is that / N less the audio) until copies are lost, per N and
/// mode. Prints one JSON line per step and a summary: the highest sustained rate (no loss, no
/// growing queue: [`SUSTAINED_WIRE_P99_US`]), the server
/// thread's share of a core there, and what the first loss was: datagrams dropped by the
/// kernel at the server's socket (or by the SFU), at the subscribers' sockets (the clients,
/// on the same two cores, ran out first), or copies still queued when the window closed
/// (nothing dropped, but latency no longer bounded).
/// A rate is sustained only if nothing is lost and copies do not queue up: a wire p99 over
/// 50 ms means the server's socket queue (4 MiB, seconds of packets) is filling, which ends in
/// loss if the rate holds.
const SUSTAINED_WIRE_P99_US: u64 = 50_000;

fn ramp(s: &Settings) {
    let steps: Vec<u32> = std::env::var("RELAY_RAMP_OUT_PPS")
        .unwrap_or_else(|_| "10000,20000,30000,40000,50000,60000,70000,80000,100000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    for &n in &s.subscribers {
        for &mode in &s.modes {
            let mut sustained: Option<(f64, f64, f64, f64)> = None;
            let mut first_unsustained = String::from("\"none\"");
            // A step counts as unsustained only if it fails twice in a row: on a shared machine
            // one stall of the host is not the server's saturation point.
            let mut attempt = 0;
            let mut steps_left = steps.iter().copied().peekable();
            while let Some(&out_pps) = steps_left.peek() {
                let per_subscriber = out_pps / n.max(1) as u32;
                let step = Settings {
                    video_pps: per_subscriber.saturating_sub(s.audio_pps).max(1),
                    ..s.clone()
                };
                let r = match run_once(mode, n, &step) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("{} N={n} at {out_pps} copies/s: FAILED: {e}", mode.name());
                        break;
                    }
                };
                print_run(&r);
                let secs = r.window_secs();
                let (in_pps, out_pps) = (r.sent_in_window as f64 / secs, r.out_pps());
                let server_core = r.server_core();
                let client_core = r.clients_cpu.as_secs_f64() / secs;
                println!(
                    "{{\"bench\":\"relay_latency_ramp_step\",\"mode\":\"{}\",\"subscribers\":{n},\"in_pps\":{in_pps:.0},\"out_pps\":{out_pps:.0},\"server_core_frac\":{server_core:.3},\"client_core_frac\":{client_core:.3},\"loss\":{:.6},\"server_socket_drops\":{},\"server_drops\":{},\"client_socket_drops\":{},\"p99_us\":{},\"wire_p99_us\":{}}}",
                    mode.name(),
                    loss(&r),
                    r.server_socket_drops,
                    r.server_drops,
                    r.client_socket_drops,
                    r.in_loop.quantile(0.99),
                    r.forwarding.quantile(0.99),
                );
                let queueing = r.forwarding.quantile(0.99) > SUSTAINED_WIRE_P99_US;
                if r.received >= r.expected && !queueing {
                    sustained = Some((in_pps, out_pps, server_core, client_core));
                    steps_left.next();
                    attempt = 0;
                    continue;
                }
                attempt += 1;
                if attempt < 2 {
                    println!("          not sustained; running the same rate once more");
                    continue;
                }
                let what = if r.server_socket_drops + r.server_drops > 0 {
                    "dropped at the server"
                } else if r.client_socket_drops > 0 {
                    "dropped at the subscribers"
                } else if r.received < r.expected {
                    "queued past the window"
                } else {
                    "queue growing (wire p99 over 50 ms)"
                };
                first_unsustained = format!(
                    "{{\"in_pps\":{in_pps:.0},\"out_pps\":{out_pps:.0},\"loss\":{:.6},\"what\":\"{what}\",\"wire_p99_us\":{},\"server_core_frac\":{server_core:.3},\"client_core_frac\":{client_core:.3}}}",
                    loss(&r),
                    r.forwarding.quantile(0.99),
                );
                break;
            }
            let (in_pps, out_pps, server_core, client_core) = sustained.unwrap_or_default();
            println!(
                "{{\"bench\":\"relay_latency_ramp\",\"mode\":\"{}\",\"subscribers\":{n},\"max_sustained_in_pps\":{in_pps:.0},\"max_sustained_out_pps\":{out_pps:.0},\"server_core_frac\":{server_core:.3},\"client_core_frac\":{client_core:.3},\"out_pps_per_server_core\":{:.0},\"first_unsustained\":{first_unsustained}}}",
                mode.name(),
                if server_core > 0.0 {
                    out_pps / server_core
                } else {
                    0.0
                },
            );
        }
    }
}

fn json_line(c: &RunResult, f: Option<&RunResult>) -> String {
    let secs = c.window_secs();
    let cpu = c.cpu_us_per_pkt();
    let mut fields = vec![
        ("bench", "\"relay_latency\"".to_owned()),
        ("workers", c.workers.to_string()),
        ("subscribers", c.n.to_string()),
        ("p50_us", c.in_loop.quantile(0.5).to_string()),
        ("p99_us", c.in_loop.quantile(0.99).to_string()),
        ("p999_us", c.in_loop.quantile(0.999).to_string()),
        ("max_us", c.in_loop.max().to_string()),
        ("wire_p50_us", c.forwarding.quantile(0.5).to_string()),
        ("wire_p99_us", c.forwarding.quantile(0.99).to_string()),
        ("wire_p999_us", c.forwarding.quantile(0.999).to_string()),
        ("wire_max_us", c.forwarding.max().to_string()),
        ("e2e_p50_us", c.e2e.quantile(0.5).to_string()),
        ("e2e_p99_us", c.e2e.quantile(0.99).to_string()),
        ("e2e_p999_us", c.e2e.quantile(0.999).to_string()),
        ("in_pps", format!("{:.0}", c.sent_in_window as f64 / secs)),
        ("out_pps", format!("{:.0}", c.out_pps())),
        ("cpu_us_per_pkt", format!("{cpu:.3}")),
        ("allocs_per_pkt", format!("{:.2}", c.allocs_per_pkt())),
        ("loss", format!("{:.6}", loss(c))),
        (
            "client_cpu_core_frac",
            format!("{:.3}", c.clients_cpu.as_secs_f64() / secs),
        ),
    ];
    if let Some((p50, p99)) = c.server_hist {
        fields.push(("sfu_hist_p50_le_us", format!("{p50:.0}")));
        fields.push(("sfu_hist_p99_le_us", format!("{p99:.0}")));
        fields.push(("server_drops", c.server_drops.to_string()));
    }
    fields.push(("server_socket_drops", c.server_socket_drops.to_string()));
    fields.push(("client_socket_drops", c.client_socket_drops.to_string()));
    if let Some(f) = f {
        let fcpu = f.cpu_us_per_pkt();
        fields.push(("floor_cpu_us_per_pkt", format!("{fcpu:.3}")));
        fields.push(("ratio_cpu", format!("{:.2}", cpu / fcpu)));
        let ratio = |a: &Histogram, b: &Histogram| {
            format!(
                "{:.2}",
                a.quantile(0.99) as f64 / b.quantile(0.99).max(1) as f64
            )
        };
        fields.push(("floor_p50_us", f.in_loop.quantile(0.5).to_string()));
        fields.push(("floor_p99_us", f.in_loop.quantile(0.99).to_string()));
        fields.push(("ratio_p99", ratio(&c.in_loop, &f.in_loop)));
        fields.push(("floor_wire_p50_us", f.forwarding.quantile(0.5).to_string()));
        fields.push(("floor_wire_p99_us", f.forwarding.quantile(0.99).to_string()));
        fields.push(("ratio_wire_p99", ratio(&c.forwarding, &f.forwarding)));
        fields.push(("floor_loss", format!("{:.6}", loss(f))));
        fields.push(("floor_allocs_per_pkt", format!("{:.2}", f.allocs_per_pkt())));
        fields.push(("floor_srtp", format!("\"{}\"", f.profile)));
    }
    fields.push(("saturation_pps_per_core_est", format!("{:.0}", 1e6 / cpu)));
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let s = Settings::from_env();
    pin_current_thread(Cpu::Load);
    AUDIO_ON.store(s.audio_pps > 0, Ordering::Relaxed);
    println!(
        "relay_latency: subscribers {:?}, {:.0} s window per run, video {} pps + audio {} pps, modes {:?}",
        s.subscribers,
        s.window.as_secs_f64(),
        s.video_pps,
        s.audio_pps,
        s.modes.iter().map(|m| m.name()).collect::<Vec<_>>()
    );
    if std::env::var("RELAY_RAMP").is_ok_and(|v| v == "1") {
        ramp(&s);
        return;
    }
    let started = Instant::now();
    let mut results: Vec<RunResult> = Vec::new();
    for &n in &s.subscribers {
        for &mode in &s.modes {
            match run_once(mode, n, &s) {
                Ok(r) => {
                    print_run(&r);
                    results.push(r);
                }
                Err(e) => eprintln!("{} N={n}: FAILED: {e}", mode.name()),
            }
        }
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    for &n in &s.subscribers {
        let c = results
            .iter()
            .find(|r| r.n == n && r.mode == Mode::Callrelay);
        let f = results.iter().find(|r| r.n == n && r.mode == Mode::Floor);
        if let Some(c) = c.or(f) {
            println!("{}", json_line(c, f.filter(|_| c.mode == Mode::Callrelay)));
        }
    }
}
