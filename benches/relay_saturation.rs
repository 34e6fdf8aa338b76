//! Saturation with many small rooms, the consultation case: `SAT_ROOMS` rooms (100) of one
//! publisher and `SAT_SUBSCRIBERS` subscribers (2) through the real SFU over loopback UDP, at
//! rising total forwarding rates (`SAT_STEPS`, copies per second out) until copies are lost,
//! once per `media.workers` value (`SAT_WORKERS`, "1,2").
//!
//! `cargo bench --bench relay_saturation`. Other knobs: `SAT_SECS=5` (measured window per step),
//! `SAT_WARMUP_SECS=1`, `SAT_MAX_LOSS=0.001` (the loss a sustained step may have).
//!
//! The SFU runs as the server runs it: `Sfu::start` on 127.0.0.1:0, its shards on threads of
//! their own (`callrelay-media-N`), nothing pinned. Signaling goes through `SfuHandle` directly
//! (join, publish, `subscribe_answer` on each `SubscribeOffer`). The load is webrtc-rs sans-IO
//! client peers (`callrelay_load::peer`), one UDP socket each, all on the main thread, and made
//! as cheap per copy as it can be so that the server is what saturates (the SFU and the load
//! share the machine's cores):
//!
//! * publishers send video only, paced together by one task (1 ms ticks), each packet
//!   SRTP-protected with its connection's own context (`protect_rtp`: no rtc pipeline);
//! * a subscriber decrypts only until it has seen its stream once, to learn the SSRC and the
//!   sequence-number offset the SFU gives it; from then on a copy is recognised by that SSRC
//!   and counted by its sequence number, read in clear from the RTP header. Everything else
//!   (STUN, RTCP, DTLS) still goes through the peer, which keeps ICE consent alive.
//!
//! Per step: a warm-up at the step's rate, the measured window, then the publishers stop and the
//! queues drain. A copy counts as received if its packet was sent in the window and it arrived
//! before the drain ended; loss = 1 − received / (sent × S). A step is sustained when the loss is
//! at most `SAT_MAX_LOSS`; one that is not runs once more (the machine is shared) before the ramp
//! stops. Where copies were lost: the kernel's receive-queue drops on the SFU's sockets and on
//! the subscribers' (`drops` in /proc/net/udp), the SFU's own drop counter by reason, and the
//! publishers' failed sends. CPU: every shard thread's (`bench::on_media_threads`, summed) and the
//! load's (the main thread's) as fractions of a core.
//!
//! One JSON line per step while running, then one `relay_saturation` line per worker count.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use callrelay_load::payload::{self, Stamp};
use callrelay_load::peer::{ClientPeer, Kind};
use callrelay_load::stats::{process_cpu, thread_cpu};
use callrelay_media::{MediaConfig, MediaEvent, Sfu, SfuHandle, bench};
use common::{Ports, env, metric_sum, since_start, wait_until};
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;
use rtc::shared::marshal::{Marshal, MarshalSize};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedReceiver;

/// Video payload per packet: with the header and the SRTP tag a datagram of 1,128 bytes, a
/// full-size packet of a browser's video.
const VIDEO_PAYLOAD: usize = 1_100;
const FRAMES_PER_S: f64 = 30.0;
/// Per publisher while the connections come up: enough for the SFU to announce the tracks.
const SETUP_PPS: f64 = 30.0;
const VIDEO_SSRC_BASE: u32 = 0x5A70_0000;
/// Datagrams read per wake-up of a socket before yielding to the other peers.
const RECV_BATCH: usize = 64;
/// A subscriber's received copies are kept by the publisher's 16-bit sequence number, so a
/// step must send fewer packets per publisher than this between reset and read-out.
const SEQ_SPACE: usize = 1 << 16;
/// The drain ends when no copy has arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_millis(200);
const DRAIN_MAX: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- configuration

struct Settings {
    rooms: usize,
    subscribers: usize,
    workers: Vec<usize>,
    /// Total copies per second out of the SFU, rising.
    steps: Vec<u64>,
    window: Duration,
    warmup: Duration,
    max_loss: f64,
}

fn list<T: std::str::FromStr>(key: &str, default: &str) -> Vec<T> {
    std::env::var(key)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

impl Settings {
    fn from_env() -> Self {
        Self {
            rooms: env("SAT_ROOMS", 100usize).max(1),
            subscribers: env("SAT_SUBSCRIBERS", 2usize).max(1),
            workers: list("SAT_WORKERS", "1,2"),
            steps: list(
                "SAT_STEPS",
                "20000,25000,30000,35000,40000,45000,50000,55000,60000,65000,70000,75000,\
                 80000,90000,100000,110000,120000,140000,160000,180000,200000",
            ),
            window: Duration::from_secs_f64(env("SAT_SECS", 5.0)),
            warmup: Duration::from_secs_f64(env("SAT_WARMUP_SECS", 1.0)),
            max_loss: env("SAT_MAX_LOSS", 0.001),
        }
    }

    fn copies_per_packet(&self) -> usize {
        self.subscribers
    }
}

// ---------------------------------------------------------------- the load

/// What the load's tasks share (all on the main thread).
#[derive(Default)]
struct Load {
    stop: Cell<bool>,
    /// Video packets per second each publisher sends (0: silent).
    pps_per_publisher: Cell<f64>,
    /// Copies the subscribers counted so far, all steps: tells when the queues have drained.
    copies_counted: Cell<u64>,
    /// Packets a publisher's socket refused (`try_send_to` failed): lost by the load itself.
    publisher_send_errors: Cell<u64>,
}

struct Subscriber {
    room: usize,
    socket: UdpSocket,
    peer: RefCell<ClientPeer>,
    wake: Notify,
    /// The SSRC the SFU sends this subscriber's copy of the video with and its sequence-number
    /// offset (copy − publisher's), learnt from the first packet decrypted.
    stream: Cell<Option<(u32, u16)>>,
    /// By the publisher's sequence number: whether a copy of that packet arrived since the
    /// last reset.
    seen: RefCell<Vec<u8>>,
}

struct Publisher {
    socket: UdpSocket,
    peer: RefCell<ClientPeer>,
    wake: Notify,
    pacing: RefCell<Pacing>,
}

struct Pacing {
    header: Header,
    /// Extended sequence number of the next packet (its low 16 bits are the RTP one); only
    /// packets handed to the kernel advance it.
    next_seq: u32,
    /// Packet slots used since the rate was last set (the pacer's arithmetic).
    slots: u64,
    in_frame: u32,
    frame: u32,
    payload: Vec<u8>,
    plain: Vec<u8>,
}

/// The SFU's SSRC check and sequence number of a datagram, read in clear: `Some(seq)` if it is
/// an RTP packet (not RTCP, RFC 5761) of `ssrc`.
fn copy_seq(datagram: &[u8], ssrc: u32) -> Option<u16> {
    let h = datagram.get(..12)?;
    let is_rtp = h[0] >> 6 == 2 && !(192..=223).contains(&h[1]);
    (is_rtp && u32::from_be_bytes([h[8], h[9], h[10], h[11]]) == ssrc)
        .then(|| u16::from_be_bytes([h[2], h[3]]))
}

fn flush(peer: &mut ClientPeer, socket: &UdpSocket) {
    while let Some((to, datagram)) = peer.poll_transmit() {
        let _ = socket.try_send_to(&datagram, to);
    }
    peer.poll_state();
}

/// Drives one client peer: its timers, what it sends, and the datagrams on its socket. `count`
/// takes a datagram without the peer (a copy to count) or declines it; declined ones go through
/// the peer, and each RTP packet that comes out is given to `on_rtp`.
async fn drive_peer(
    socket: &UdpSocket,
    peer: &RefCell<ClientPeer>,
    wake: &Notify,
    load: &Load,
    mut count: impl FnMut(&[u8]) -> bool,
    mut on_rtp: impl FnMut(Packet),
) {
    // The peer's timers matter only during setup and for ICE consent; a late check is harmless,
    // and re-reading them after every counted copy would cost more than counting it.
    const AT_MOST: Duration = Duration::from_millis(100);
    let mut buf = vec![0u8; 2048];
    let next_deadline = |peer: &RefCell<ClientPeer>| {
        let mut peer = peer.borrow_mut();
        flush(&mut peer, socket);
        let cap = Instant::now() + AT_MOST;
        peer.poll_timeout().map_or(cap, |t| t.min(cap))
    };
    let mut deadline = next_deadline(peer);
    let sleep = tokio::time::sleep_until(deadline.into());
    tokio::pin!(sleep);
    while !load.stop.get() {
        let mut peer_touched = false;
        tokio::select! {
            biased;
            ready = socket.readable() => {
                if ready.is_ok() {
                    for _ in 0..RECV_BATCH {
                        let Ok((len, from)) = socket.try_recv_from(&mut buf) else { break };
                        let datagram = &buf[..len];
                        if count(datagram) {
                            continue;
                        }
                        peer_touched = true;
                        let mut peer = peer.borrow_mut();
                        let _ = peer.handle_datagram(Instant::now(), from, datagram);
                        while let Some(packet) = peer.poll_rtp() {
                            on_rtp(packet);
                        }
                    }
                }
            }
            _ = wake.notified() => peer_touched = true,
            _ = &mut sleep => {}
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = peer.borrow_mut().handle_timeout(now);
            peer_touched = true;
        }
        if peer_touched {
            deadline = next_deadline(peer);
            sleep.as_mut().reset(deadline.into());
        }
    }
}

async fn run_subscriber(sub: Rc<Subscriber>, load: Rc<Load>) {
    let count = |datagram: &[u8]| {
        let Some((ssrc, offset)) = sub.stream.get() else {
            return false;
        };
        let Some(seq) = copy_seq(datagram, ssrc) else {
            return false;
        };
        sub.seen.borrow_mut()[usize::from(seq.wrapping_sub(offset))] = 1;
        load.copies_counted.set(load.copies_counted.get() + 1);
        true
    };
    let on_rtp = |packet: Packet| {
        if sub.stream.get().is_none()
            && let Some(stamp) = payload::read(&packet.payload)
        {
            let source_seq = stamp.seq as u16;
            let offset = packet.header.sequence_number.wrapping_sub(source_seq);
            sub.stream.set(Some((packet.header.ssrc, offset)));
            sub.seen.borrow_mut()[usize::from(source_seq)] = 1;
        }
    };
    drive_peer(&sub.socket, &sub.peer, &sub.wake, &load, count, on_rtp).await;
}

async fn run_publisher(publisher: Rc<Publisher>, load: Rc<Load>) {
    let p = &publisher;
    drive_peer(&p.socket, &p.peer, &p.wake, &load, |_| false, |_| {}).await;
}

/// Sends `publisher`'s next video packet (30 fps frames of `per_frame` packets). False if it
/// could not: not connected yet, or the socket refused it.
fn send_next(publisher: &Publisher, load: &Load, per_frame: u32) -> bool {
    let mut pacing = publisher.pacing.borrow_mut();
    let p = &mut *pacing;
    let seq = p.next_seq;
    p.header.sequence_number = seq as u16;
    p.header.timestamp = p.frame.wrapping_mul(3_000);
    p.header.marker = p.in_frame + 1 >= per_frame;
    let stamp = Stamp {
        stream: 1,
        seq,
        sent_ns: payload::now_ns(),
    };
    payload::write(&mut p.payload, true, stamp, VIDEO_PAYLOAD);
    p.plain.clear();
    p.plain.resize(p.header.marshal_size(), 0);
    if p.header.marshal_to(&mut p.plain).is_err() {
        return false;
    }
    p.plain.extend_from_slice(&p.payload);
    let protected = publisher
        .peer
        .borrow_mut()
        .rtc()
        .protect_rtp(&p.plain, &p.header);
    let Ok(Some((datagram, to, _))) = protected else {
        return false;
    };
    if publisher.socket.try_send_to(&datagram, to).is_err() {
        let errors = &load.publisher_send_errors;
        errors.set(errors.get() + 1);
        return false;
    }
    p.next_seq = seq.wrapping_add(1);
    p.in_frame += 1;
    if p.in_frame >= per_frame {
        p.in_frame = 0;
        p.frame = p.frame.wrapping_add(1);
    }
    true
}

/// One task paces every publisher: each gets `pps_per_publisher` packets a second, the
/// publishers staggered over one packet interval as independent browsers would be.
async fn pace(publishers: Rc<Vec<Rc<Publisher>>>, load: Rc<Load>) {
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut rate, mut epoch) = (0.0, Instant::now());
    let n = publishers.len() as f64;
    while !load.stop.get() {
        tick.tick().await;
        let wanted = load.pps_per_publisher.get();
        if wanted != rate {
            rate = wanted;
            epoch = Instant::now();
            for p in publishers.iter() {
                p.pacing.borrow_mut().slots = 0;
            }
        }
        if rate <= 0.0 {
            continue;
        }
        let elapsed = epoch.elapsed().as_secs_f64();
        let per_frame = ((rate / FRAMES_PER_S).round() as u32).max(1);
        for (i, p) in publishers.iter().enumerate() {
            let due = (elapsed * rate + i as f64 / n).floor() as u64;
            while p.pacing.borrow().slots < due {
                p.pacing.borrow_mut().slots += 1;
                // A packet that cannot go now is skipped, not sent late in a burst.
                if !send_next(p, &load, per_frame) {
                    p.pacing.borrow_mut().slots = due;
                }
            }
        }
    }
}

/// Answers the SFU's subscribe offers for the subscribers in `by_id`.
async fn answer_offers(
    sfu: SfuHandle,
    mut events: UnboundedReceiver<MediaEvent>,
    by_id: HashMap<String, Rc<Subscriber>>,
    load: Rc<Load>,
) {
    // At the end the SFU's shutdown closes the publishers, and re-offers nobody will answer.
    while let Some(event) = events.recv().await
        && !load.stop.get()
    {
        let MediaEvent::SubscribeOffer {
            room,
            participant,
            sdp,
        } = event
        else {
            continue;
        };
        let Some(sub) = by_id.get(&participant) else {
            continue;
        };
        let answer = sub.peer.borrow_mut().answer(Instant::now(), sdp);
        match answer {
            Ok(answer) => {
                if let Err(e) = sfu.subscribe_answer(&room, &participant, answer).await {
                    eprintln!("{participant}: subscribe answer refused: {e}");
                }
            }
            Err(e) => eprintln!("{participant}: cannot answer the subscribe offer: {e}"),
        }
        sub.wake.notify_one();
    }
}

/// A client socket: non-blocking, with the receive buffer the SFU asks for too (the kernel caps
/// it at `net.core.rmem_max`).
fn bind_client_socket() -> std::net::UdpSocket {
    use nix::sys::socket::{setsockopt, sockopt};
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a client socket");
    socket.set_nonblocking(true).expect("non-blocking");
    let _ = setsockopt(&socket, sockopt::RcvBuf, &(4 << 20));
    socket
}

fn room_id(room: usize) -> String {
    format!("room-{room}")
}

// ---------------------------------------------------------------- one worker count

/// The SFU and its load, connected.
struct Fleet {
    sfu: SfuHandle,
    registry: prometheus::Registry,
    load: Rc<Load>,
    publishers: Rc<Vec<Rc<Publisher>>>,
    subscribers: Vec<Rc<Subscriber>>,
    ports: Ports,
}

async fn start_fleet(workers: usize, s: &Settings) -> Result<Fleet, String> {
    let registry = prometheus::Registry::new();
    let config = MediaConfig {
        bind: "127.0.0.1:0".parse().expect("addr"),
        workers,
        ..Default::default()
    };
    let (sfu, events) = Sfu::start(config, &registry)
        .await
        .map_err(|e| format!("sfu: {e}"))?;
    let load = Rc::new(Load::default());

    // Subscribers first: they join, and get an offer once their room's video arrives.
    let sub_sockets: Vec<std::net::UdpSocket> = (0..s.rooms * s.subscribers)
        .map(|_| bind_client_socket())
        .collect();
    let ports = Ports::new(sfu.local_addr(), &sub_sockets);
    let mut subscribers = Vec::new();
    let mut by_id = HashMap::new();
    for (i, socket) in sub_sockets.into_iter().enumerate() {
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        let sub = Rc::new(Subscriber {
            room: i / s.subscribers,
            socket: UdpSocket::from_std(socket).map_err(|e| e.to_string())?,
            peer: RefCell::new(ClientPeer::new(local, Instant::now()).map_err(|e| e.to_string())?),
            wake: Notify::new(),
            stream: Cell::new(None),
            seen: RefCell::new(vec![0; SEQ_SPACE]),
        });
        let id = format!("r{}-sub{}", sub.room, i % s.subscribers);
        sfu.join(&room_id(sub.room), &id)
            .await
            .map_err(|e| format!("join {id}: {e}"))?;
        by_id.insert(id, Rc::clone(&sub));
        tokio::task::spawn_local(run_subscriber(Rc::clone(&sub), Rc::clone(&load)));
        subscribers.push(sub);
    }
    let offers = answer_offers(sfu.clone(), events, by_id, Rc::clone(&load));
    tokio::task::spawn_local(offers);

    let mut publishers = Vec::new();
    for room in 0..s.rooms {
        let socket = bind_client_socket();
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        let ssrc = VIDEO_SSRC_BASE + room as u32;
        let mut peer = ClientPeer::new(local, Instant::now()).map_err(|e| e.to_string())?;
        let id = format!("r{room}-pub");
        peer.add_track(Kind::Video, ssrc, &id, &format!("{id}-video"))
            .map_err(|e| e.to_string())?;
        let offer = peer
            .create_offer(Instant::now())
            .map_err(|e| e.to_string())?;
        let answer = sfu
            .publish(&room_id(room), &id, offer)
            .await
            .map_err(|e| format!("publish {id}: {e}"))?;
        peer.apply_answer(Instant::now(), answer)
            .map_err(|e| e.to_string())?;
        let publisher = Rc::new(Publisher {
            socket: UdpSocket::from_std(socket).map_err(|e| e.to_string())?,
            peer: RefCell::new(peer),
            wake: Notify::new(),
            pacing: RefCell::new(Pacing {
                header: Header {
                    version: 2,
                    payload_type: callrelay_load::peer::VP8_PT,
                    ssrc,
                    ..Default::default()
                },
                next_seq: 1,
                slots: 0,
                in_frame: 0,
                frame: 0,
                payload: Vec::with_capacity(VIDEO_PAYLOAD),
                plain: Vec::with_capacity(1_500),
            }),
        });
        tokio::task::spawn_local(run_publisher(Rc::clone(&publisher), Rc::clone(&load)));
        publishers.push(publisher);
    }
    let publishers = Rc::new(publishers);
    load.pps_per_publisher.set(SETUP_PPS);
    tokio::task::spawn_local(pace(Rc::clone(&publishers), Rc::clone(&load)));

    let peers = s.rooms * (s.subscribers + 1);
    let limit = Duration::from_secs(30) + Duration::from_millis(200) * peers as u32;
    let ready = || subscribers.iter().all(|sub| sub.stream.get().is_some());
    if let Err(e) = wait_until("every subscriber receiving", limit, ready).await {
        let n = subscribers.iter().filter(|x| x.stream.get().is_some());
        return Err(format!(
            "{e} ({} of {} ready)",
            n.count(),
            subscribers.len()
        ));
    }
    Ok(Fleet {
        sfu,
        registry,
        load,
        publishers,
        subscribers,
        ports,
    })
}

/// The counters of one instant of a step.
struct Edge {
    at: Instant,
    /// Each publisher's next sequence number.
    seqs: Vec<u32>,
    /// Each shard thread's (CPU time, when it was sampled on that thread).
    shards: Vec<(Duration, Duration)>,
    client_cpu: Duration,
    forwarded: f64,
    machine: MachineCpu,
    process_cpu: Duration,
}

/// The whole machine's CPU time from /proc/stat: what other processes take from the cores
/// the bench shares (builds, tests) shows in the figures instead of hiding in them.
#[derive(Clone, Copy, Default)]
struct MachineCpu {
    /// user + nice + system + irq + softirq, all CPUs.
    busy: Duration,
    /// Time the hypervisor ran something else while this machine wanted to run.
    steal: Duration,
}

impl MachineCpu {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|t| t.parse().ok())
            .collect();
        // USER_HZ is 100 on Linux.
        let at = |i: usize| Duration::from_millis(ticks.get(i).copied().unwrap_or(0) * 10);
        Self {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            steal: at(7),
        }
    }
}

impl Edge {
    async fn take(f: &Fleet) -> Self {
        let seqs = f.publishers.iter().map(|p| p.pacing.borrow().next_seq);
        let seqs = seqs.collect();
        let client_cpu = thread_cpu();
        let at = Instant::now();
        let shards = bench::on_media_threads(&f.sfu, || (thread_cpu(), since_start())).await;
        Self {
            at,
            seqs,
            shards: shards.unwrap_or_default(),
            client_cpu,
            forwarded: metric_sum(&f.registry, "callrelay_rtp_packets_forwarded_total"),
            machine: MachineCpu::now(),
            process_cpu: process_cpu(),
        }
    }
}

/// Drops counted on the way: kernel receive queues, the SFU, the publishers' sockets.
struct Drops {
    server_socket: u64,
    client_socket: u64,
    sfu_by_reason: HashMap<String, f64>,
    publisher_send_errors: u64,
}

impl Drops {
    fn now(f: &Fleet) -> Self {
        let (server_socket, client_socket) = f.ports.drops();
        Self {
            server_socket,
            client_socket,
            sfu_by_reason: counter_by_label(&f.registry, "callrelay_media_datagrams_dropped_total"),
            publisher_send_errors: f.load.publisher_send_errors.get(),
        }
    }
}

/// A counter's values by its (single) label's value.
fn counter_by_label(registry: &prometheus::Registry, name: &str) -> HashMap<String, f64> {
    let families = registry.gather();
    let metrics = families
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter());
    metrics
        .map(|m| {
            let label = m.get_label().first().map(|l| l.value().to_owned());
            (label.unwrap_or_default(), m.get_counter().value())
        })
        .collect()
}

struct Step {
    asked_copies_per_s: u64,
    window: Duration,
    sent: u64,
    expected: u64,
    received: u64,
    sfu_forwarded: f64,
    /// Each shard thread's share of a core over its own sampling interval.
    shard_core_fracs: Vec<f64>,
    client_cpu: Duration,
    /// CPU time of other processes on the machine, and stolen by the hypervisor.
    others_cpu: Duration,
    steal: Duration,
    server_socket_drops: u64,
    client_socket_drops: u64,
    sfu_drops: Vec<(String, u64)>,
    publisher_send_errors: u64,
    /// From the publishers' stop to the last copy counted.
    drain: Duration,
}

async fn run_step(f: &Fleet, s: &Settings, copies_per_s: u64) -> Step {
    let pps = copies_per_s as f64 / (s.rooms * s.copies_per_packet()) as f64;
    for sub in &f.subscribers {
        sub.seen.borrow_mut().fill(0);
    }
    f.load.pps_per_publisher.set(pps);
    tokio::time::sleep(s.warmup).await;
    let drops0 = Drops::now(f);
    let e0 = Edge::take(f).await;
    tokio::time::sleep(s.window).await;
    let e1 = Edge::take(f).await;
    f.load.pps_per_publisher.set(0.0);

    let stopped = Instant::now();
    let (mut last_count, mut last_change) = (f.load.copies_counted.get(), stopped);
    while last_change.elapsed() < DRAIN_QUIET && stopped.elapsed() < DRAIN_MAX {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let count = f.load.copies_counted.get();
        if count != last_count {
            (last_count, last_change) = (count, Instant::now());
        }
    }
    // The SFU reads its sockets' kernel drops once a second (its `queue_full`); wait for that
    // read, and let the shards go idle before the next rate.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let drops1 = Drops::now(f);

    let mut received = 0u64;
    for sub in &f.subscribers {
        let seen = sub.seen.borrow();
        let (from, to) = (e0.seqs[sub.room], e1.seqs[sub.room]);
        let in_window = (0..to.wrapping_sub(from)).map(|k| from.wrapping_add(k) as u16);
        received += in_window
            .map(|seq| u64::from(seen[usize::from(seq)]))
            .sum::<u64>();
    }
    let sent: u64 = e0
        .seqs
        .iter()
        .zip(&e1.seqs)
        .map(|(a, b)| u64::from(b.wrapping_sub(*a)))
        .sum();
    let shard_core_fracs = e0
        .shards
        .iter()
        .zip(&e1.shards)
        .map(|((cpu0, at0), (cpu1, at1))| {
            cpu1.saturating_sub(*cpu0).as_secs_f64() / at1.saturating_sub(*at0).as_secs_f64()
        })
        .collect();
    let mut sfu_drops: Vec<(String, u64)> = drops1
        .sfu_by_reason
        .iter()
        .map(|(reason, n)| {
            let before = drops0.sfu_by_reason.get(reason).copied().unwrap_or(0.0);
            (reason.clone(), (n - before) as u64)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    sfu_drops.sort();
    Step {
        asked_copies_per_s: copies_per_s,
        window: e1.at - e0.at,
        sent,
        expected: sent * s.copies_per_packet() as u64,
        received,
        sfu_forwarded: e1.forwarded - e0.forwarded,
        shard_core_fracs,
        client_cpu: e1.client_cpu.saturating_sub(e0.client_cpu),
        others_cpu: (e1.machine.busy.saturating_sub(e0.machine.busy))
            .saturating_sub(e1.process_cpu.saturating_sub(e0.process_cpu)),
        steal: e1.machine.steal.saturating_sub(e0.machine.steal),
        server_socket_drops: drops1.server_socket.saturating_sub(drops0.server_socket),
        client_socket_drops: drops1.client_socket.saturating_sub(drops0.client_socket),
        sfu_drops,
        publisher_send_errors: drops1
            .publisher_send_errors
            .saturating_sub(drops0.publisher_send_errors),
        drain: last_change.saturating_duration_since(stopped),
    }
}

impl Step {
    fn secs(&self) -> f64 {
        self.window.as_secs_f64().max(1e-9)
    }

    fn loss(&self) -> f64 {
        if self.expected == 0 {
            1.0
        } else {
            1.0 - self.received as f64 / self.expected as f64
        }
    }

    fn copies_per_s(&self) -> f64 {
        self.received as f64 / self.secs()
    }

    fn server_core_frac(&self) -> f64 {
        self.shard_core_fracs.iter().sum()
    }

    /// Server CPU per copy the SFU forwarded (µs): its threads' share of a core over their copy
    /// rate.
    fn cpu_us_per_copy(&self) -> f64 {
        let forwarded_per_s = self.sfu_forwarded / self.secs();
        self.server_core_frac() * 1e6 / forwarded_per_s.max(1e-9)
    }

    fn client_core_frac(&self) -> f64 {
        self.client_cpu.as_secs_f64() / self.secs()
    }

    /// Where datagrams were dropped, as a JSON array of names.
    fn lost_at(&self) -> String {
        let mut at = Vec::new();
        if self.server_socket_drops > 0 {
            at.push("server_socket");
        }
        if self.sfu_drops.iter().any(|(r, _)| r != "queue_full") {
            at.push("sfu");
        }
        if self.client_socket_drops > 0 {
            at.push("subscriber_sockets");
        }
        if self.publisher_send_errors > 0 {
            at.push("publisher_sockets");
        }
        if at.is_empty() && self.received < self.expected {
            // Nothing dropped anywhere we can see: still queued when the drain gave up.
            at.push("late");
        }
        let quoted: Vec<String> = at.iter().map(|a| format!("\"{a}\"")).collect();
        format!("[{}]", quoted.join(","))
    }

    /// The step's figures as JSON fields (no braces).
    fn fields(&self) -> String {
        let shards: Vec<String> = self
            .shard_core_fracs
            .iter()
            .map(|c| format!("{c:.3}"))
            .collect();
        let sfu_drops: Vec<String> = self
            .sfu_drops
            .iter()
            .map(|(r, n)| format!("\"{r}\":{n}"))
            .collect();
        format!(
            "\"asked_copies_per_s\":{},\"copies_per_s\":{:.0},\"sfu_forwarded_per_s\":{:.0},\"loss\":{:.6},\"sent\":{},\"expected\":{},\"received\":{},\"server_cpu_core_frac\":{:.3},\"shard_cpu_core_fracs\":[{}],\"cpu_us_per_copy\":{:.2},\"client_cpu_core_frac\":{:.3},\"other_processes_cpu_core_frac\":{:.3},\"steal_core_frac\":{:.3},\"server_socket_drops\":{},\"sfu_drops\":{{{}}},\"client_socket_drops\":{},\"publisher_send_errors\":{},\"drain_ms\":{},\"lost_at\":{}",
            self.asked_copies_per_s,
            self.copies_per_s(),
            self.sfu_forwarded / self.secs(),
            self.loss(),
            self.sent,
            self.expected,
            self.received,
            self.server_core_frac(),
            shards.join(","),
            self.cpu_us_per_copy(),
            self.client_core_frac(),
            self.others_cpu.as_secs_f64() / self.secs(),
            self.steal.as_secs_f64() / self.secs(),
            self.server_socket_drops,
            sfu_drops.join(","),
            self.client_socket_drops,
            self.publisher_send_errors,
            self.drain.as_millis(),
            self.lost_at(),
        )
    }
}

struct Ramp {
    workers: usize,
    sustained: Option<Step>,
    first_unsustained: Option<Step>,
}

async fn ramp(workers: usize, s: &Settings) -> Result<Ramp, String> {
    let setup = Instant::now();
    let fleet = start_fleet(workers, s).await?;
    println!(
        "workers={workers}: {} rooms × (1 publisher + {} subscribers) connected in {:.1} s",
        s.rooms,
        s.subscribers,
        setup.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut sustained = None;
    let mut first_unsustained = None;
    'steps: for &copies_per_s in &s.steps {
        let pps = copies_per_s as f64 / (s.rooms * s.copies_per_packet()) as f64;
        let per_publisher = pps * (s.warmup + s.window + DRAIN_MAX).as_secs_f64();
        if per_publisher >= (SEQ_SPACE - 1_000) as f64 {
            eprintln!("{copies_per_s} copies/s: too many packets per publisher for one step");
            break;
        }
        for attempt in 1..=2 {
            let step = run_step(&fleet, s, copies_per_s).await;
            println!(
                "{{\"bench\":\"relay_saturation_step\",\"workers\":{workers},\"attempt\":{attempt},{}}}",
                step.fields()
            );
            if step.loss() <= s.max_loss {
                sustained = Some(step);
                continue 'steps;
            }
            if attempt == 2 {
                first_unsustained = Some(step);
                break 'steps;
            }
        }
    }
    fleet.load.stop.set(true);
    fleet.sfu.shutdown().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(Ramp {
        workers,
        sustained,
        first_unsustained,
    })
}

impl Ramp {
    fn json(&self, s: &Settings) -> String {
        let sustained = self.sustained.as_ref();
        let mut out = format!(
            "{{\"bench\":\"relay_saturation\",\"workers\":{},\"rooms\":{},\"subscribers\":{},\"sustained_copies_per_s\":{:.0},\"loss\":{:.6}",
            self.workers,
            s.rooms,
            s.subscribers,
            sustained.map_or(0.0, Step::copies_per_s),
            sustained.map_or(1.0, Step::loss),
        );
        if let Some(step) = sustained {
            out += &format!(
                ",\"server_cpu_core_frac\":{:.3},\"cpu_us_per_copy\":{:.2},\"client_cpu_core_frac\":{:.3},\"sustained\":{{{}}}",
                step.server_core_frac(),
                step.cpu_us_per_copy(),
                step.client_core_frac(),
                step.fields()
            );
        }
        match &self.first_unsustained {
            Some(step) => out += &format!(",\"first_unsustained\":{{{}}}", step.fields()),
            None => out += ",\"first_unsustained\":null",
        }
        out + "}"
    }
}

fn main() {
    // `cargo bench` passes `--bench`; no filter argument is supported.
    let s = Settings::from_env();
    since_start();
    println!(
        "relay_saturation: {} rooms × (1 publisher + {} subscribers), workers {:?}, steps {:?} copies/s, {:.0} s window, sustained at loss ≤ {}",
        s.rooms,
        s.subscribers,
        s.workers,
        s.steps,
        s.window.as_secs_f64(),
        s.max_loss
    );
    let mut ramps = Vec::new();
    for &workers in &s.workers {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        match local.block_on(&runtime, ramp(workers, &s)) {
            Ok(r) => ramps.push(r),
            Err(e) => eprintln!("workers={workers}: FAILED: {e}"),
        }
    }
    let sustained = |r: &Ramp| r.sustained.as_ref().map_or(0.0, Step::copies_per_s);
    if let (Some(one), Some(two)) = (
        ramps.iter().find(|r| r.workers == 1),
        ramps.iter().find(|r| r.workers == 2),
    ) && sustained(one) > 0.0
    {
        println!(
            "sustained copies/s, workers=2 / workers=1: {:.2}",
            sustained(two) / sustained(one)
        );
    }
    for r in &ramps {
        println!("{}", r.json(&s));
    }
}
