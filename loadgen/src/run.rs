//! The load generator: rooms of publishers and subscribers against a running callrelay, over
//! the real contract, with a progress line per second and a summary at the end.
//!
//! Per room: a doctor creates and confirms an appointment (HTTP, dev token); participant 0 is
//! that doctor, the others admins: roles allowed in a consult room that never wait in its
//! waiting room (`consult.waiting_room`, on by default), so joins measure the server and media,
//! not an admission. The appointment's patient does not take part. Every participant connects
//! Socket.IO with `auth: {token}`, emits `join-room` and
//! `sfu-join {reason:"forced"}`, answers every `sfu-subscribe-offer`; the first `--publishers`
//! of each room also `sfu-publish` one paced VP8-payload track at `--video-kbps`.
//! Media peers are webrtc-rs sans-IO client peers ([`super::peer`]), one UDP socket each.
//!
//! Several `--url`s (the nodes of a cluster): the appointments are made on the first, and the
//! participants of each room take the nodes in turn, so every room spans them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::LoadError;
use super::payload::{self, Stamp};
use super::peer::{ClientPeer, Kind, VP8_PT};
use super::sio::{Event, SioClient};
use super::stats::{Histogram, process_cpu};
use super::udp;

/// `callrelay-load` options.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "callrelay-load",
    version,
    about = "Load generator: rooms of WebRTC publishers and subscribers against a running callrelay"
)]
pub struct LoadArgs {
    /// Base URL of the running server (HTTP and Socket.IO); several, comma-separated or
    /// repeated, for the nodes of a cluster (each room's participants take them in turn)
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:3000")]
    pub url: Vec<String>,
    /// Where to read Prometheus metrics (default: the first URL's /metrics)
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// Number of consult rooms
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publishers per room (each sends one video track)
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribe-only participants per room
    #[arg(long, default_value_t = 2)]
    pub subscribers: usize,
    /// How long media flows once everyone joined, e.g. 30, 30s, 2m
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Bitrate of each published video track
    #[arg(long, default_value_t = 1000)]
    pub video_kbps: u32,
    /// Local address of the media sockets (keep it on loopback when testing locally)
    #[arg(long, default_value = "127.0.0.1")]
    pub media_ip: IpAddr,
    /// Limit for connecting and joining everyone
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub setup_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s}"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("not a duration: {s}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Counters shared by every task (relaxed atomics: read once per second for the progress line).
#[derive(Default)]
struct Counters {
    sockets: AtomicU64,
    joined: AtomicU64,
    pub_connected: AtomicU64,
    sub_connected: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    rx_expected: AtomicU64,
    errors: AtomicU64,
}

#[derive(Default)]
struct Results {
    join: Histogram,
    first_media: Histogram,
    e2e: Histogram,
    network: Histogram,
}

struct Ctx {
    args: LoadArgs,
    counters: Counters,
    results: Mutex<Results>,
    /// Media flows until then (set once everyone joined).
    media_until: Mutex<Option<Instant>>,
    hard_deadline: Instant,
}

impl Ctx {
    fn done(&self) -> bool {
        let until = *self.media_until.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        now >= self.hard_deadline || until.is_some_and(|u| now >= u)
    }

    fn sending(&self) -> bool {
        self.media_until
            .lock()
            .map(|u| u.is_some_and(|u| Instant::now() < u))
            .unwrap_or(false)
    }
}

async fn dev_token(
    http: &reqwest::Client,
    url: &str,
    sub: &str,
    role: &str,
) -> Result<String, LoadError> {
    let r: Value = http
        .post(format!("{url}/api/dev/token"))
        .json(&json!({"sub": sub, "name": sub, "role": role}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    r["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| LoadError::Invalid(format!("no token in {r}")))
}

/// Creates and confirms one appointment; returns (appointment id, tokens of its members).
async fn make_room(
    http: &reqwest::Client,
    url: &str,
    run: &str,
    room: usize,
    members: usize,
) -> Result<(String, Vec<String>), LoadError> {
    let doc = format!("load-{run}-r{room}-doc");
    let pat = format!("load-{run}-r{room}-pat");
    let doc_token = dev_token(http, url, &doc, "doctor").await?;
    let appt: Value = http
        .post(format!("{url}/api/appointments"))
        .bearer_auth(&doc_token)
        .json(&json!({
            "patientId": pat, "doctorId": doc,
            "scheduledAt": "2030-01-01T09:00:00Z",
            "patientName": pat, "doctorName": doc,
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = appt["id"]
        .as_str()
        .ok_or_else(|| LoadError::Invalid(format!("no appointment id in {appt}")))?
        .to_owned();
    http.post(format!("{url}/api/appointments/{id}/confirm"))
        .bearer_auth(&doc_token)
        .send()
        .await?
        .error_for_status()?;
    let mut tokens = vec![doc_token];
    for j in 1..members {
        tokens.push(dev_token(http, url, &format!("load-{run}-r{room}-p{j}"), "admin").await?);
    }
    Ok((id, tokens))
}

/// Sends what the peer wants sent, honours its timers; returns when `ctx` says stop.
struct PeerIo {
    peer: ClientPeer,
    socket: UdpSocket,
}

impl PeerIo {
    async fn new(ip: IpAddr) -> Result<Self, LoadError> {
        let socket = udp::bind(SocketAddr::new(ip, 0)).await?;
        let peer = ClientPeer::new(socket.local_addr()?, Instant::now())?;
        Ok(Self { peer, socket })
    }

    fn flush(&mut self) {
        while let Some((to, d)) = self.peer.poll_transmit() {
            let _ = self.socket.try_send_to(&d, to);
        }
    }
}

/// Per received stream: first and highest sequence seen, to count what should have arrived.
#[derive(Default)]
struct StreamSeen {
    highest: Option<u32>,
}

async fn subscriber_task(
    ctx: Arc<Ctx>,
    sio: SioClient,
    room: String,
    mut offers: mpsc::UnboundedReceiver<String>,
    joined_at: Instant,
) -> Result<(), LoadError> {
    let mut io = PeerIo::new(ctx.args.media_ip).await?;
    let mut buf = vec![0u8; 2048];
    let mut seen: HashMap<u32, StreamSeen> = HashMap::new();
    let mut e2e = Histogram::new();
    let mut network = Histogram::new();
    let mut first_media: Option<Duration> = None;
    let mut was_connected = false;
    while !ctx.done() {
        io.flush();
        io.peer.poll_state();
        if io.peer.is_connected() != was_connected {
            was_connected = io.peer.is_connected();
            if was_connected {
                ctx.counters.sub_connected.fetch_add(1, Ordering::Relaxed);
            } else {
                ctx.counters.sub_connected.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let deadline = io
            .peer
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(100))
            .min(Instant::now() + Duration::from_millis(100));
        tokio::select! {
            offer = offers.recv() => {
                let Some(sdp) = offer else { break };
                let answer = io.peer.answer(Instant::now(), sdp)?;
                sio.call_ok("sfu-subscribe-answer", &json!({"roomId": room, "sdp": answer}), Duration::from_secs(10)).await?;
            }
            r = udp::recv(&io.socket, &mut buf) => {
                let Ok((len, from, kernel_ns)) = r else { continue };
                let _ = io.peer.handle_datagram(Instant::now(), from, &buf[..len]);
                while let Some(p) = io.peer.poll_rtp() {
                    let Some(st) = payload::read(&p.payload) else { continue };
                    let now_ns = payload::now_ns();
                    ctx.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
                    ctx.counters.rx_bytes.fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                    let s = seen.entry(st.stream).or_default();
                    let add = match s.highest {
                        None => 1,
                        Some(h) if st.seq > h => u64::from(st.seq - h),
                        Some(_) => 0,
                    };
                    if add > 0 {
                        s.highest = Some(st.seq);
                        ctx.counters.rx_expected.fetch_add(add, Ordering::Relaxed);
                    }
                    if ctx.sending() {
                        e2e.record(now_ns.saturating_sub(st.sent_ns) / 1_000);
                        if kernel_ns != 0 {
                            network.record(kernel_ns.saturating_sub(st.sent_ns) / 1_000);
                        }
                    }
                    if first_media.is_none() {
                        first_media = Some(joined_at.elapsed());
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let _ = io.peer.handle_timeout(Instant::now());
            }
        }
    }
    if was_connected {
        ctx.counters.sub_connected.fetch_sub(1, Ordering::Relaxed);
    }
    let mut r = ctx.results.lock().unwrap_or_else(|e| e.into_inner());
    r.e2e.merge(&e2e);
    r.network.merge(&network);
    if let Some(t) = first_media {
        r.first_media.record_duration(t);
    }
    Ok(())
}

/// Packet size and rate for a video track of `kbps`: 30 frames per second, packets of at most
/// 1,100 payload bytes, evenly paced.
fn video_pacing(kbps: u32) -> (Duration, usize) {
    let bytes_per_sec = f64::from(kbps.max(8)) * 125.0;
    let pps = (bytes_per_sec / 1_100.0).ceil().max(30.0);
    let size = (bytes_per_sec / pps).round() as usize;
    (
        Duration::from_secs_f64(1.0 / pps),
        size.max(payload::STAMP_LEN),
    )
}

async fn publisher_task(
    ctx: Arc<Ctx>,
    sio: SioClient,
    room: String,
    stream: u32,
) -> Result<(), LoadError> {
    let mut io = PeerIo::new(ctx.args.media_ip).await?;
    let ssrc: u32 = rand::random::<u32>() | 1;
    io.peer
        .add_track(Kind::Video, ssrc, sio.sid(), &format!("video-{stream}"))?;
    let offer = io.peer.create_offer(Instant::now())?;
    let ack = sio
        .call_ok(
            "sfu-publish",
            &json!({"roomId": room, "sdp": offer}),
            Duration::from_secs(10),
        )
        .await?;
    let answer = ack["sdp"]
        .as_str()
        .ok_or_else(|| LoadError::Signaling(format!("sfu-publish ack without sdp: {ack}")))?;
    io.peer.apply_answer(Instant::now(), answer.to_owned())?;

    let (every, size) = video_pacing(ctx.args.video_kbps);
    let frame_every = Duration::from_secs_f64(1.0 / 30.0);
    let mut next_send = Instant::now();
    let mut seq: u32 = 0;
    let mut rtp_seq: u16 = rand::random();
    let ts_base: u32 = rand::random();
    let started = Instant::now();
    let mut buf = vec![0u8; 2048];
    let mut pl = Vec::with_capacity(1_500);
    let mut was_connected = false;
    while !ctx.done() {
        io.flush();
        io.peer.poll_state();
        if io.peer.is_connected() && !was_connected {
            was_connected = true;
            ctx.counters.pub_connected.fetch_add(1, Ordering::Relaxed);
        }
        let peer_deadline = io
            .peer
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(100));
        let deadline = peer_deadline
            .min(next_send)
            .min(Instant::now() + Duration::from_millis(100));
        tokio::select! {
            r = io.socket.recv_from(&mut buf) => {
                if let Ok((len, from)) = r {
                    let _ = io.peer.handle_datagram(Instant::now(), from, &buf[..len]);
                    while io.peer.poll_rtp().is_some() {}
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                if peer_deadline <= now {
                    let _ = io.peer.handle_timeout(now);
                }
                while next_send <= now {
                    next_send += every;
                    // Media flows as soon as the connection is up: a track becomes visible to
                    // the others with its first packet. The summary counts the run only.
                    if !io.peer.is_connected() {
                        continue;
                    }
                    payload::write(&mut pl, true, Stamp { stream, seq, sent_ns: payload::now_ns() }, size);
                    let frame = (now - started).as_secs_f64() / frame_every.as_secs_f64();
                    rtp_seq = rtp_seq.wrapping_add(1);
                    let packet = Packet {
                        header: Header {
                            version: 2,
                            payload_type: VP8_PT,
                            sequence_number: rtp_seq,
                            timestamp: ts_base.wrapping_add((frame as u32).wrapping_mul(3_000)),
                            ssrc,
                            ..Default::default()
                        },
                        payload: Bytes::copy_from_slice(&pl),
                    };
                    seq += 1;
                    if io.peer.send_rtp(now, packet).is_ok() {
                        ctx.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
                        ctx.counters.tx_bytes.fetch_add(pl.len() as u64, Ordering::Relaxed);
                    }
                    io.flush();
                }
            }
        }
    }
    if was_connected {
        ctx.counters.pub_connected.fetch_sub(1, Ordering::Relaxed);
    }
    Ok(())
}

/// One participant: signaling, then its subscribe peer and (if publishing) its publish peer.
async fn participant(
    ctx: Arc<Ctx>,
    url: String,
    token: String,
    room: String,
    publish_as: Option<u32>,
) -> Result<(), LoadError> {
    let limit = Duration::from_secs(15);
    let t0 = Instant::now();
    let (sio, mut events) = SioClient::connect(&url, json!({ "token": token }), limit).await?;
    ctx.counters.sockets.fetch_add(1, Ordering::Relaxed);
    let result = async {
        sio.call_ok("join-room", &json!({ "appointmentId": room }), limit)
            .await?;
        sio.call_ok(
            "sfu-join",
            &json!({ "roomId": room, "reason": "forced" }),
            limit,
        )
        .await?;
        let joined_at = Instant::now();
        ctx.results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join
            .record_duration(t0.elapsed());
        ctx.counters.joined.fetch_add(1, Ordering::Relaxed);

        let (offer_tx, offer_rx) = mpsc::unbounded_channel();
        let sub = tokio::spawn(subscriber_task(
            Arc::clone(&ctx),
            sio.clone(),
            room.clone(),
            offer_rx,
            joined_at,
        ));
        let publ = publish_as.map(|stream| {
            tokio::spawn(publisher_task(
                Arc::clone(&ctx),
                sio.clone(),
                room.clone(),
                stream,
            ))
        });
        // Route server events until the run ends.
        while !ctx.done() {
            let ev: Option<Event> = tokio::time::timeout(Duration::from_millis(200), events.recv())
                .await
                .unwrap_or(Some((String::new(), Value::Null)));
            let Some((name, arg)) = ev else { break };
            if name == "sfu-subscribe-offer"
                && arg["roomId"].as_str() == Some(room.as_str())
                && let Some(sdp) = arg["sdp"].as_str()
            {
                let _ = offer_tx.send(sdp.to_owned());
            }
        }
        drop(offer_tx);
        let mut errors = Vec::new();
        if let Ok(Err(e)) = sub.await {
            errors.push(e);
        }
        if let Some(p) = publ
            && let Ok(Err(e)) = p.await
        {
            errors.push(e);
        }
        let _ = sio
            .call(
                "sfu-leave",
                &json!({ "roomId": room }),
                Duration::from_secs(2),
            )
            .await;
        let _ = sio
            .call("leave-room", &json!({}), Duration::from_secs(2))
            .await;
        errors.into_iter().next().map_or(Ok(()), Err)
    }
    .await;
    sio.close();
    ctx.counters.sockets.fetch_sub(1, Ordering::Relaxed);
    result
}

/// Values of one metric (summed over labels) in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let v: Option<f64> = rest.rsplit(' ').next().and_then(|v| v.parse().ok());
        if let Some(v) = v {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

async fn scrape(http: &reqwest::Client, url: &str) -> Option<String> {
    http.get(url).send().await.ok()?.text().await.ok()
}

fn kbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / 1_000.0 / secs.max(1e-9)
}

/// Runs the generator to completion and prints the summary.
pub async fn run(args: LoadArgs) -> Result<(), LoadError> {
    if args.rooms == 0 || args.publishers + args.subscribers == 0 {
        return Err(LoadError::Invalid(
            "nothing to do: --rooms and participants must be > 0".into(),
        ));
    }
    let urls: Vec<String> = args
        .url
        .iter()
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    let Some(url) = urls.first().cloned() else {
        return Err(LoadError::Invalid("no --url".into()));
    };
    let metrics_url = args
        .metrics_url
        .clone()
        .unwrap_or_else(|| format!("{url}/metrics"));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let members = args.publishers + args.subscribers;
    let total = args.rooms * members;
    println!(
        "callrelay-load {run_id}: {} rooms × ({} publishers + {} subscribers) = {total} participants, {} kbps video, {:.0} s against {}",
        args.rooms,
        args.publishers,
        args.subscribers,
        args.video_kbps,
        args.duration.as_secs_f64(),
        urls.join(", ")
    );
    let ctx = Arc::new(Ctx {
        hard_deadline: Instant::now() + args.setup_timeout + args.duration + Duration::from_secs(5),
        args: args.clone(),
        counters: Counters::default(),
        results: Mutex::default(),
        media_until: Mutex::new(None),
    });

    let mut rooms = Vec::new();
    for r in 0..args.rooms {
        rooms.push(make_room(&http, &url, &run_id, r, members).await?);
    }
    let mut tasks = Vec::new();
    let mut stream = 0u32;
    for (room, tokens) in rooms {
        for (j, token) in tokens.into_iter().enumerate() {
            let publish_as = (j < args.publishers).then(|| {
                stream += 1;
                stream
            });
            tasks.push(tokio::spawn(participant(
                Arc::clone(&ctx),
                urls[j % urls.len()].clone(),
                token,
                room.clone(),
                publish_as,
            )));
        }
    }

    // Setup: everyone joined and every media peer connected (or the setup limit).
    let setup_started = Instant::now();
    // Everyone receives the room's other publishers: a lone publisher receives nothing.
    let receivers_per_room = match args.publishers {
        0 => 0,
        1 => args.subscribers,
        _ => members,
    };
    let expected_subs = (args.rooms * receivers_per_room) as u64;
    let expected_pubs = (args.rooms * args.publishers) as u64;
    let c = &ctx.counters;
    loop {
        let joined = c.joined.load(Ordering::Relaxed);
        let pubs = c.pub_connected.load(Ordering::Relaxed);
        let subs = c.sub_connected.load(Ordering::Relaxed);
        let publish_ready = pubs >= expected_pubs;
        // A subscribe connection exists once there is something to receive.
        let subs_ready = expected_pubs == 0
            || subs >= expected_subs.min(if args.publishers > 0 { total as u64 } else { 0 });
        if joined >= total as u64 && publish_ready && subs_ready {
            break;
        }
        if setup_started.elapsed() > args.setup_timeout || tasks.iter().all(|t| t.is_finished()) {
            println!(
                "setup incomplete after {:.1} s: joined {joined}/{total}, publish peers {pubs}/{expected_pubs}, subscribe peers {subs}/{expected_subs}; running anyway",
                setup_started.elapsed().as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("setup {:.2} s", setup_started.elapsed().as_secs_f64());

    let page0 = scrape(&http, &metrics_url).await;
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let snapshot = |c: &Counters| {
        [
            c.tx_packets.load(Ordering::Relaxed),
            c.tx_bytes.load(Ordering::Relaxed),
            c.rx_packets.load(Ordering::Relaxed),
            c.rx_bytes.load(Ordering::Relaxed),
            c.rx_expected.load(Ordering::Relaxed),
        ]
    };
    let base = snapshot(&ctx.counters);
    *ctx.media_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(t0 + args.duration);
    let mut last = (t0, base[1], base[3]);
    while !ctx.done() {
        tokio::time::sleep(Duration::from_secs(1).min(args.duration)).await;
        let now = Instant::now();
        let (tx, rx) = (
            c.tx_bytes.load(Ordering::Relaxed),
            c.rx_bytes.load(Ordering::Relaxed),
        );
        let dt = (now - last.0).as_secs_f64();
        let (rxp, exp) = (
            c.rx_packets.load(Ordering::Relaxed),
            c.rx_expected.load(Ordering::Relaxed),
        );
        println!(
            "t={:>5.1}s sockets {}/{total} media pub {}/{expected_pubs} sub {}/{expected_subs} | out {:>8.0} kbps in {:>8.0} kbps | loss {:.3} % | own CPU {:.0} %",
            (now - t0).as_secs_f64(),
            c.sockets.load(Ordering::Relaxed),
            c.pub_connected.load(Ordering::Relaxed),
            c.sub_connected.load(Ordering::Relaxed),
            kbps(tx - last.1, dt),
            kbps(rx - last.2, dt),
            if exp == 0 {
                0.0
            } else {
                100.0 * (1.0 - rxp as f64 / exp as f64)
            },
            (process_cpu() - cpu0).as_secs_f64() * 100.0 / (now - t0).as_secs_f64(),
        );
        last = (now, tx, rx);
    }
    let secs = t0.elapsed().as_secs_f64();
    let own_cpu = (process_cpu() - cpu0).as_secs_f64();
    let end = snapshot(c);
    let [tx_packets, tx_bytes, rxp, rx_bytes, exp] =
        std::array::from_fn(|i| end[i].saturating_sub(base[i]));
    let page1 = scrape(&http, &metrics_url).await;
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            Ok(Ok(Err(e))) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("participant failed: {e}");
            }
            Ok(Err(e)) => eprintln!("participant panicked: {e}"),
            Err(_) => eprintln!("participant did not finish in time"),
            Ok(Ok(Ok(()))) => {}
        }
    }

    let r = ctx.results.lock().unwrap_or_else(|e| e.into_inner());
    let loss = if exp == 0 {
        0.0
    } else {
        1.0 - rxp as f64 / exp as f64
    };
    let ms = |us: u64| us as f64 / 1_000.0;
    println!("---- summary ({secs:.1} s of media)");
    println!(
        "join (connect → join-room → sfu-join acked): n={} p50 {:.1} ms p99 {:.1} ms max {:.1} ms; first media after join p50 {:.1} ms p99 {:.1} ms",
        r.join.count(),
        ms(r.join.quantile(0.5)),
        ms(r.join.quantile(0.99)),
        ms(r.join.max()),
        ms(r.first_media.quantile(0.5)),
        ms(r.first_media.quantile(0.99)),
    );
    println!(
        "bitrate: sent {:.0} kbps ({} packets), received {:.0} kbps ({} packets); loss {:.4} % ({} of {} expected)",
        kbps(tx_bytes, secs),
        tx_packets,
        kbps(rx_bytes, secs),
        rxp,
        loss * 100.0,
        exp.saturating_sub(rxp),
        exp
    );
    println!(
        "latency publisher stamp → subscriber socket (kernel timestamp): {}",
        r.network.summary_us()
    );
    println!(
        "latency end to end (stamp → decrypted at subscriber): {}",
        r.e2e.summary_us()
    );
    match (page0, page1) {
        (Some(a), Some(b)) => {
            let d = |n: &str| metric(&b, n).unwrap_or(0.0) - metric(&a, n).unwrap_or(0.0);
            let server_cpu = d("process_cpu_seconds_total");
            let fwd = d("callrelay_rtp_packets_forwarded_total");
            println!(
                "server: CPU {:.2} s = {:.1} % of a core; RSS {:.1} MiB; forwarded {:.0} packets ({:.0}/s){}",
                server_cpu,
                server_cpu * 100.0 / secs,
                metric(&b, "process_resident_memory_bytes").unwrap_or(0.0) / 1_048_576.0,
                fwd,
                fwd / secs,
                match (fwd > 0.0, server_cpu < 10.0) {
                    (true, false) => format!(
                        ", {:.1} µs CPU per forwarded packet (whole process)",
                        server_cpu * 1e6 / fwd
                    ),
                    (true, true) => format!(
                        ", ~{:.1} µs CPU per forwarded packet (whole process; \
                         process_cpu_seconds_total counts whole seconds: run longer for a precise figure)",
                        server_cpu * 1e6 / fwd
                    ),
                    _ => String::new(),
                }
            );
        }
        _ => println!("server: metrics not readable at {metrics_url}"),
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    println!(
        "generator: CPU {:.2} s = {:.1} % of a core{}",
        own_cpu,
        own_cpu * 100.0 / secs,
        if own_cpu / secs > 0.8 * cores {
            " — SATURATED: the generator, not the server, may be the limit"
        } else {
            ""
        }
    );
    let errors = c.errors.load(Ordering::Relaxed);
    if errors > 0 {
        println!("{errors} participants failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_pacing() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("x").is_err());
        let (every, size) = video_pacing(1_000);
        let kbps = size as f64 * 8.0 / every.as_secs_f64() / 1_000.0;
        assert!((kbps - 1_000.0).abs() < 20.0, "{kbps}");
        assert!(size <= 1_100);
        let (every, _) = video_pacing(100);
        assert!((every.as_secs_f64() - 1.0 / 30.0).abs() < 1e-6);
    }

    #[test]
    fn reads_prometheus_text() {
        let page = "# HELP x\nprocess_cpu_seconds_total 12.5\nfoo_total{kind=\"a\"} 2\nfoo_total{kind=\"b\"} 3\nfoo_total_other 9\n";
        assert_eq!(metric(page, "process_cpu_seconds_total"), Some(12.5));
        assert_eq!(metric(page, "foo_total"), Some(5.0));
        assert_eq!(metric(page, "missing"), None);
    }
}
