//! Real client peers (the async `webrtc` crate, same core) talking to a real SFU over
//! loopback UDP, plus a tiny in-process "signaling" that relays SDP between them.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use callrelay_media::{MediaConfig, MediaEvent, Sfu, SfuHandle};
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{
    Registry, register_default_interceptors,
};
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_VP8, MediaEngine};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCPeerConnectionState,
    RTCSessionDescription,
};

pub const ROOM: &str = "room-1";

pub async fn eventually<F: FnMut() -> bool>(what: &str, limit: Duration, mut f: F) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Marks all inbound RTCP for the application so the test can see PLIs at the publisher.
#[derive(Default)]
struct DeliverAllRtcp {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for DeliverAllRtcp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;
    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if matches!(msg.message.packet, Packet::Rtcp(_)) {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for DeliverAllRtcp {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

pub fn vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

/// One packet a subscriber received.
#[derive(Debug, Clone)]
pub struct Received {
    pub stream_id: String,
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub counter: u32,
    /// When the client read it.
    pub at: Instant,
    /// Payload octets.
    pub len: usize,
}

/// An RTCP sender report as a subscriber got it, with what it had received on that SSRC then.
#[derive(Clone, Debug)]
pub struct ReceivedReport {
    pub report: SenderReport,
    pub packets_before: usize,
    pub last_timestamp: Option<u32>,
    pub at: SystemTime,
}

#[derive(Default)]
pub struct ClientState {
    pub received: Mutex<Vec<Received>>,
    pub sender_reports: Mutex<Vec<ReceivedReport>>,
    pub remote_tracks: Mutex<Vec<Arc<dyn TrackRemote>>>,
    pub connected: Mutex<Vec<RTCPeerConnectionState>>,
}

struct Handler {
    state: Arc<ClientState>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        self.state.connected.lock().unwrap().push(s);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.state
            .remote_tracks
            .lock()
            .unwrap()
            .push(Arc::clone(&track));
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            let stream_id = track.stream_id().await.to_string();
            while let Some(ev) = track.poll().await {
                match ev {
                    TrackRemoteEvent::OnRtpPacket(p) if p.payload.len() >= 4 => {
                        let counter = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                        state.received.lock().unwrap().push(Received {
                            stream_id: stream_id.clone(),
                            ssrc: p.header.ssrc,
                            seq: p.header.sequence_number,
                            timestamp: p.header.timestamp,
                            counter,
                            at: Instant::now(),
                            len: p.payload.len(),
                        });
                    }
                    TrackRemoteEvent::OnRtcpPacket(packets) => {
                        for sr in packets
                            .iter()
                            .filter_map(|p| p.as_any().downcast_ref::<SenderReport>())
                        {
                            let received = state.received.lock().unwrap();
                            let same_ssrc = received.iter().filter(|r| r.ssrc == sr.ssrc);
                            let report = ReceivedReport {
                                report: sr.clone(),
                                packets_before: same_ssrc.clone().count(),
                                last_timestamp: same_ssrc.last().map(|r| r.timestamp),
                                at: SystemTime::now(),
                            };
                            drop(received);
                            state.sender_reports.lock().unwrap().push(report);
                        }
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

pub async fn client_pc(state: Arc<ClientState>) -> Arc<dyn PeerConnection> {
    let mut me = MediaEngine::default();
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: vp8(),
            payload_type: 96,
        },
        RtpCodecKind::Video,
    )
    .unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut me)
        .unwrap()
        .with(Slot::from(14_000), DeliverAllRtcp::default());
    // No SRTP replay window: the NACK test checks that a retransmission of a packet the
    // client already has arrives (a real client would only NACK what it lost).
    let settings = SettingEngineBuilder::new()
        .with_srtp_replay_protection_window(0)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .with_handler(Arc::new(Handler { state }))
        .with_runtime(webrtc::runtime::default_runtime().unwrap())
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await
        .expect("client peer connection");
    Arc::new(pc)
}

/// A publisher: one VP8 track whose packets carry a counter, and a count of the keyframe
/// requests that reach it.
pub struct Publisher {
    pub id: String,
    pub pc: Arc<dyn PeerConnection>,
    pub track: Arc<TrackLocalStaticRTP>,
    pub ssrc: u32,
    pub plis: Arc<AtomicU32>,
    pub state: Arc<ClientState>,
    pub sent: Arc<AtomicU32>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Publisher {
    pub async fn new(id: &str, ssrc: u32) -> Self {
        let state = Arc::new(ClientState::default());
        let pc = client_pc(Arc::clone(&state)).await;
        let track = video_track(&format!("local-stream-{id}"), &format!("video-{id}"), ssrc);
        pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await
            .unwrap();
        let plis = Arc::new(AtomicU32::new(0));
        {
            let plis = Arc::clone(&plis);
            let track = Arc::clone(&track);
            tokio::spawn(async move {
                while let Some(ev) = track.poll().await {
                    if let TrackLocalEvent::OnRtcpPacket(packets) = ev {
                        for p in &packets {
                            if p.as_any().is::<PictureLossIndication>() {
                                plis.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                }
            });
        }
        Self {
            id: id.to_owned(),
            pc,
            track,
            ssrc,
            plis,
            state,
            sent: Arc::new(AtomicU32::new(0)),
            stop: None,
        }
    }

    /// Offers, lets the SFU answer, applies the answer.
    pub async fn publish(&self, sfu: &SfuHandle) {
        self.publish_via(sfu, None).await
    }

    /// Publishes; with `proxy`, the client reaches the SFU through it.
    pub async fn publish_via(&self, sfu: &SfuHandle, proxy: Option<&LossyProxy>) {
        self.publish_in(sfu, ROOM, proxy).await
    }

    /// Publishes into `room`; with `proxy`, the client reaches the SFU through it.
    pub async fn publish_in(&self, sfu: &SfuHandle, room: &str, proxy: Option<&LossyProxy>) {
        let offer = self.pc.create_offer(None).await.unwrap();
        self.pc.set_local_description(offer.clone()).await.unwrap();
        let mut answer = sfu.publish(room, &self.id, offer.sdp).await.unwrap();
        if let Some(proxy) = proxy {
            answer = answer.replace(
                &format!(" {} typ host", sfu.local_addr().port()),
                &format!(" {} typ host", proxy.addr.port()),
            );
        }
        assert!(answer.contains("a=ice-lite"), "the SFU answers as ICE-lite");
        self.pc
            .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
            .await
            .unwrap();
    }

    pub async fn wait_connected(&self) {
        let state = Arc::clone(&self.state);
        eventually("publisher connected", Duration::from_secs(10), || {
            state
                .connected
                .lock()
                .unwrap()
                .contains(&RTCPeerConnectionState::Connected)
        })
        .await;
    }

    /// Sends packet `n` with payload = n (big endian) + 96 bytes, every `every`.
    pub fn start_sending(&mut self, every: Duration) {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        self.stop = Some(tx);
        let track = Arc::clone(&self.track);
        let sent = Arc::clone(&self.sent);
        let ssrc = self.ssrc;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut n: u32 = 0;
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tick.tick() => {}
                }
                let mut payload = n.to_be_bytes().to_vec();
                payload.resize(100, 0xAB);
                let packet = rtc::rtp::packet::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        payload_type: 96,
                        // Publisher numbering starts near the wrap point on purpose.
                        sequence_number: 65_000u16.wrapping_add(n as u16),
                        timestamp: n.wrapping_mul(3_000),
                        ssrc,
                        marker: true,
                        ..Default::default()
                    },
                    payload: bytes::Bytes::from(payload),
                };
                if track.write_rtp(packet).await.is_ok() {
                    sent.store(n + 1, Ordering::SeqCst);
                }
                n += 1;
            }
        });
    }

    pub fn stop_sending(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A member that receives: its subscribe connection answers the SFU's offers (done by the
/// [`Signaling`] task).
pub struct Subscriber {
    pub id: String,
    pub pc: Arc<dyn PeerConnection>,
    pub state: Arc<ClientState>,
}

impl Subscriber {
    pub async fn new(id: &str, signaling: &Signaling) -> Self {
        let state = Arc::new(ClientState::default());
        let pc = client_pc(Arc::clone(&state)).await;
        signaling
            .subscribers
            .lock()
            .unwrap()
            .insert(id.to_owned(), Arc::clone(&pc));
        Self {
            id: id.to_owned(),
            pc,
            state,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn received_from(&self, publisher: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.stream_id == publisher)
            .collect()
    }
}

/// Stands in for the Socket.IO layer: relays the SFU's subscribe offers to the client peers
/// and their answers back, and keeps every event for assertions.
pub struct Signaling {
    pub sfu: SfuHandle,
    pub registry: prometheus::Registry,
    pub subscribers: Arc<Mutex<HashMap<String, Arc<dyn PeerConnection>>>>,
    pub events: Arc<Mutex<Vec<MediaEvent>>>,
    /// participant → (from, to): text replaced in that participant's subscribe offers (to
    /// point its ICE candidate at a [`LossyProxy`]).
    pub offer_rewrites: Arc<Mutex<HashMap<String, (String, String)>>>,
}

impl Signaling {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut MediaConfig)) -> Self {
        let registry = prometheus::Registry::new();
        let mut config = MediaConfig {
            bind: "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
            ..Default::default()
        };
        tweak(&mut config);
        let (sfu, mut rx) = Sfu::start(config, &registry).await.expect("sfu starts");
        let subscribers: Arc<Mutex<HashMap<String, Arc<dyn PeerConnection>>>> = Arc::default();
        let events: Arc<Mutex<Vec<MediaEvent>>> = Arc::default();
        let (offer_tx, mut offer_rx) = mpsc::unbounded_channel::<(String, String, String)>();
        {
            let events = Arc::clone(&events);
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    if let MediaEvent::SubscribeOffer {
                        room,
                        participant,
                        sdp,
                    } = &ev
                    {
                        let _ = offer_tx.send((room.clone(), participant.clone(), sdp.clone()));
                    }
                    events.lock().unwrap().push(ev);
                }
            });
        }
        let offer_rewrites: Arc<Mutex<HashMap<String, (String, String)>>> = Arc::default();
        {
            let subscribers = Arc::clone(&subscribers);
            let sfu = sfu.clone();
            let rewrites = Arc::clone(&offer_rewrites);
            tokio::spawn(async move {
                while let Some((room, participant, mut sdp)) = offer_rx.recv().await {
                    if let Some((from, to)) = rewrites.lock().unwrap().get(&participant) {
                        sdp = sdp.replace(from.as_str(), to);
                    }
                    let pc = subscribers.lock().unwrap().get(&participant).cloned();
                    let Some(pc) = pc else { continue };
                    let offer = RTCSessionDescription::offer(sdp).unwrap();
                    if pc.set_remote_description(offer).await.is_err() {
                        continue;
                    }
                    // The client may be going away at the end of a test.
                    let Ok(answer) = pc.create_answer(None).await else {
                        continue;
                    };
                    if pc.set_local_description(answer.clone()).await.is_err() {
                        continue;
                    }
                    let _ = sfu.subscribe_answer(&room, &participant, answer.sdp).await;
                }
            });
        }
        Self {
            sfu,
            registry,
            subscribers,
            events,
            offer_rewrites,
        }
    }

    /// Routes `participant`'s subscribe connection through `proxy`.
    pub fn route_through(&self, participant: &str, proxy: &LossyProxy) {
        let sfu_port = self.sfu.local_addr().port();
        self.offer_rewrites.lock().unwrap().insert(
            participant.to_owned(),
            (
                format!(" {sfu_port} typ host"),
                format!(" {} typ host", proxy.addr.port()),
            ),
        );
    }

    /// Every subscribe offer sent to `participant`, oldest first.
    pub fn offers_for(&self, participant: &str) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                MediaEvent::SubscribeOffer {
                    participant: p,
                    sdp,
                    ..
                } if p == participant => Some(sdp.clone()),
                _ => None,
            })
            .collect()
    }

    /// Value of a counter or gauge (or a histogram's sample count) with the given label (or
    /// any labels), summed — read from the Prometheus text exposition, as a scraper would.
    pub fn metric(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let mut total = 0.0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            let wanted = if metric == name {
                true
            } else {
                metric == format!("{name}_count")
            };
            let label_ok = label.is_none_or(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")));
            if wanted && label_ok {
                total += value.parse::<f64>().unwrap_or(0.0);
            }
        }
        total
    }
}

/// Packets of one stream are consecutive: counters and sequence numbers both advance by one,
/// in arrival order, and the payload matches the publisher's counter.
pub fn assert_consecutive(rx: &[Received], what: &str) {
    assert!(!rx.is_empty(), "{what}: nothing received");
    for w in rx.windows(2) {
        assert_eq!(
            w[1].counter,
            w[0].counter + 1,
            "{what}: packet after counter {} is {} (lost or reordered)",
            w[0].counter,
            w[1].counter
        );
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "{what}: sequence numbers not consecutive"
        );
        assert_eq!(w[1].ssrc, w[0].ssrc, "{what}: SSRC changed");
    }
}

/// A UDP relay between one client and the SFU that drops the `drop_nth` RTP media packet
/// going to the client, once — a real loss the client's own NACK generator will notice.
pub struct LossyProxy {
    pub addr: SocketAddr,
    /// (SSRC, sequence number) of the packet it dropped, once it has.
    pub dropped: Arc<Mutex<Option<(u32, u16)>>>,
    /// Set to drop everything in both directions (the client vanished from the network).
    pub cut: Arc<std::sync::atomic::AtomicBool>,
    /// Every RTP datagram passed on to the client, as seen on the wire.
    pub media: Arc<Mutex<Vec<WireRtp>>>,
}

/// An (SRTP) RTP datagram as a [`LossyProxy`] saw it: the header is in the clear.
#[derive(Clone, Copy, Debug)]
pub struct WireRtp {
    pub ssrc: u32,
    pub seq: u16,
    /// Datagram length (header, payload, SRTP tag).
    pub len: usize,
    pub at: Instant,
}

impl LossyProxy {
    pub async fn start(sfu: SocketAddr, drop_nth: u32) -> Self {
        let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let dropped: Arc<Mutex<Option<(u32, u16)>>> = Arc::default();
        let out = Arc::clone(&dropped);
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut_flag = Arc::clone(&cut);
        let media: Arc<Mutex<Vec<WireRtp>>> = Arc::default();
        let media_log = Arc::clone(&media);
        tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut media_seen = 0u32;
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let d = &buf[..n];
                if cut_flag.load(Ordering::SeqCst) {
                    continue;
                }
                if from == sfu {
                    let Some(client) = client else { continue };
                    // RTP (not RTCP: payload types 72..=76 with the marker bit are RTCP).
                    let is_media = n >= 12
                        && (128..=191).contains(&d[0])
                        && (96..=127).contains(&(d[1] & 0x7f));
                    if is_media {
                        media_seen += 1;
                        let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
                        let seq = u16::from_be_bytes([d[2], d[3]]);
                        if media_seen == drop_nth {
                            *out.lock().unwrap() = Some((ssrc, seq));
                            continue;
                        }
                        media_log.lock().unwrap().push(WireRtp {
                            ssrc,
                            seq,
                            len: n,
                            at: Instant::now(),
                        });
                    }
                    let _ = socket.send_to(d, client).await;
                } else {
                    client = Some(from);
                    let _ = socket.send_to(d, sfu).await;
                }
            }
        });
        Self {
            addr,
            dropped,
            cut,
            media,
        }
    }
}

/// Nothing is missing for good: every counter from the first received to (latest - slack) has
/// arrived, in whatever order (retransmissions repair losses late).
pub fn complete_up_to_slack(rx: &[Received], slack: u32) -> bool {
    let mut c: Vec<u32> = rx.iter().map(|r| r.counter).collect();
    c.sort_unstable();
    c.dedup();
    let (Some(&first), Some(&last)) = (c.first(), c.last()) else {
        return false;
    };
    let upto = last.saturating_sub(slack);
    c.iter().take_while(|&&x| x <= upto).count() as u32 == upto - first + 1
}

/// A VP8 track of a hand-built publisher (stream id, track id, SSRC).
pub fn video_track(stream_id: &str, track_id: &str, ssrc: u32) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream_id.to_owned(),
        track_id.to_owned(),
        "camera".to_owned(),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: vp8(),
            ..Default::default()
        }],
    )))
}

/// Sends VP8 packets on `track` every `every`, the payload starting with `base + n` (big
/// endian), until the returned sender is dropped or fired.
pub fn send_counter(
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    base: u32,
    every: Duration,
) -> tokio::sync::oneshot::Sender<()> {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut n: u32 = 0;
        loop {
            tokio::select! {
                _ = &mut rx => break,
                _ = tick.tick() => {}
            }
            let mut payload = (base + n).to_be_bytes().to_vec();
            payload.resize(100, 0xCD);
            let packet = rtc::rtp::packet::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    payload_type: 96,
                    sequence_number: n as u16,
                    timestamp: n.wrapping_mul(3_000),
                    ssrc,
                    marker: true,
                    ..Default::default()
                },
                payload: bytes::Bytes::from(payload),
            };
            let _ = track.write_rtp(packet).await;
            n += 1;
        }
    });
    tx
}

/// Offers from `pc`, lets the SFU answer as `participant`'s publish connection, applies it.
/// Returns the offer sent.
pub async fn publish_pc(
    sfu: &SfuHandle,
    pc: &Arc<dyn PeerConnection>,
    participant: &str,
) -> String {
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer.clone()).await.unwrap();
    let answer = sfu
        .publish(ROOM, participant, offer.sdp.clone())
        .await
        .unwrap();
    pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap())
        .await
        .unwrap();
    offer.sdp
}
