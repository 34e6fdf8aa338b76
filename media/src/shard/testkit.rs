//! A test kit for the shard on a manual clock: one [`Shard`], any number of named client peers
//! (sans-IO `RTCPeerConnection`s of the same webrtc-rs core the SFU runs on), an in-memory
//! link per peer that can be cut, and a clock that moves only when the test moves it. Nothing
//! sleeps and nothing touches a socket, so a minute of call takes well under a second.
//!
//! A peer has up to two client connections, as a browser does: `publish` (it offers) and
//! `subscribe` (created at the SFU's first subscribe offer), each at an address of its own, so
//! the shard's demultiplexer sees what it would see on the network. Subscribe offers are
//! answered as they arrive unless the peer says otherwise ([`World::hold_offers`]).
//!
//! The shard is built in [`World::with_config`] and its events are read in
//! [`World::drain_shard_events`] only: adapt those two if the shard's construction or event
//! output changes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::configure_twcc_receiver_only;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::oneshot;

use super::Shard;
use crate::metrics::Metrics;
use crate::{Command, MediaConfig, MediaError, MediaEvent, PcKind, Reply, SfuStats};

/// The shard's one announced address.
pub(crate) const SFU: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50_000);
pub(crate) const ROOM: &str = "room";
/// How far the clock moves per step of [`World::run_for`]; also the interval between two RTP
/// packets of a streaming track (100 packets a second).
pub(crate) const STEP: Duration = Duration::from_millis(10);

/// A shard, its client peers and the manual clock.
pub(crate) struct World {
    pub now: Instant,
    shard: Shard,
    registry: prometheus::Registry,
    /// Every event the shard emitted, in order.
    pub events: Vec<MediaEvent>,
    peers: BTreeMap<String, Peer>,
    /// Client addresses are handed out in order, two per peer.
    next_port: u16,
    next_ssrc: u32,
}

/// One participant's browser, as far as the SFU can tell.
pub(crate) struct Peer {
    publish: Option<Client>,
    subscribe: Option<Client>,
    publish_addr: SocketAddr,
    subscribe_addr: SocketAddr,
    /// Cut: every datagram to or from this peer is lost (signaling still works).
    link_up: bool,
    /// Subscribe offers are answered by the test ([`World::answer_offer`]), not at once.
    holds_offers: bool,
    /// Every subscribe offer the SFU sent this peer, in order.
    pub offers: Vec<String>,
    answered: usize,
    tracks: Vec<SendTrack>,
    /// Remote track id → the publisher it comes from (its msid stream id).
    remote_publishers: HashMap<String, String>,
    /// RTP packets received, per publisher.
    received: HashMap<String, usize>,
    /// The last sequence number received, per remote track, to spot gaps.
    last_seq: HashMap<String, u16>,
    /// Packets that did not follow the previous one of their track (lost or reordered).
    pub gaps: usize,
    /// The payload length of the last packet received, per publisher (which simulcast layer).
    last_payload_len: HashMap<String, usize>,
    /// The last VP8 picture id received per remote track, and how often the next one was not
    /// its successor.
    last_picture: HashMap<String, u16>,
    pub picture_jumps: usize,
    /// The sequence number of an RTP packet the publish connection sends that the link holds
    /// back ([`World::withhold`]) until [`World::release`].
    withhold_seq: Option<u16>,
    /// The datagrams held back, as they were protected.
    withheld: Vec<bytes::BytesMut>,
    /// A bottleneck on everything the SFU sends this peer ([`World::limit_downlink`]).
    downlink: Option<Bottleneck>,
    /// Every RTP datagram the SFU sent this peer: (SSRC, payload type, sequence number), read
    /// from the header SRTP leaves in the clear.
    pub rtp_sent: Vec<(u32, u8, u16)>,
    /// The SSRC of the last RTP packet received, per publisher.
    last_ssrc: HashMap<String, u32>,
    /// The payload type and length of the last RTP packet received, per publisher.
    last_payload: HashMap<String, (u8, usize)>,
    /// Its subscribe connection negotiates RED (as Chrome does; true unless [`World::without_red`]).
    red: bool,
}

/// A link of limited rate with a drop-tail queue: a datagram leaves when the ones before it
/// have been serialised, and is dropped if it would wait longer than the queue holds.
struct Bottleneck {
    bits_per_second: f64,
    max_queueing: Duration,
    /// When the link finishes sending what it holds.
    free_at: Instant,
    /// Datagrams in flight with the time each reaches the peer.
    queue: VecDeque<(Instant, SocketAddr, bytes::BytesMut)>,
    /// Drops this fraction of the datagrams at random (a radio link), whatever the rate.
    loss: f64,
    rng: StdRng,
}

impl Bottleneck {
    fn new(now: Instant, bits_per_second: f64, max_queueing: Duration, loss: f64) -> Self {
        Self {
            bits_per_second,
            max_queueing,
            free_at: now,
            queue: VecDeque::new(),
            loss,
            rng: StdRng::seed_from_u64(12),
        }
    }

    fn enqueue(&mut self, now: Instant, to: SocketAddr, bytes: bytes::BytesMut) {
        use rand::RngExt;
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            return;
        }
        let start = self.free_at.max(now);
        if start.duration_since(now) > self.max_queueing {
            return;
        }
        let serialise = Duration::from_secs_f64(bytes.len() as f64 * 8.0 / self.bits_per_second);
        self.free_at = start + serialise;
        self.queue.push_back((self.free_at, to, bytes));
    }
}

struct Client {
    rtc: RTCPeerConnection,
    addr: SocketAddr,
    /// When a datagram of this connection last reached the shard.
    last_delivered: Option<Instant>,
}

/// A track a peer publishes.
struct SendTrack {
    id: String,
    ssrc: u32,
    sender: RTCRtpSenderId,
    /// The client core sends only payload types negotiated for the sender.
    payload_type: u8,
    next_seq: u16,
    /// [`World::run_for`] sends one packet per step.
    streaming: bool,
    /// Octets of payload per packet.
    payload_len: usize,
    /// Simulcast encodings ([`World::publish_simulcast`]): one packet each per step, in place
    /// of the track's own.
    layers: Vec<SendLayer>,
    /// The negotiated ids of the mid and rid header extensions (simulcast packets carry them,
    /// as a browser's do).
    mid_rid_ids: (u8, u8),
    mid: String,
    /// An audio track sending RED packets: one redundant copy of the previous frame.
    red: bool,
}

/// One simulcast encoding of a track: VP8 packets, one frame each, a keyframe (announcing
/// `size`) every [`KEYFRAME_EVERY`] frames.
struct SendLayer {
    rid: String,
    ssrc: u32,
    next_seq: u16,
    payload_len: usize,
    size: (u16, u16),
}

/// A simulcast layer sends a keyframe every this many packets (a fifth of a second).
const KEYFRAME_EVERY: u16 = 20;

/// A VP8 packet of one frame: the descriptor with picture id `picture` (15 bits), then a frame
/// tag, and for a keyframe the start code and `size`; `len` octets in all.
fn vp8_frame(picture: u16, keyframe: bool, size: (u16, u16), len: usize) -> Vec<u8> {
    let mut p = vec![
        0x90,
        0x80,
        0x80 | ((picture >> 8) as u8 & 0x7f),
        picture as u8,
    ];
    if keyframe {
        p.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a]);
        p.extend_from_slice(&size.0.to_le_bytes());
        p.extend_from_slice(&size.1.to_le_bytes());
    } else {
        p.extend_from_slice(&[0x11, 0x02, 0x00]);
    }
    p.resize(len.max(p.len()), 0xAB);
    p
}

impl World {
    /// A world whose shard closes silent connections after `liveness_timeout`.
    pub fn new(liveness_timeout: Duration) -> Self {
        Self::with_config(MediaConfig {
            bind: SFU,
            liveness_timeout,
            ..Default::default()
        })
    }

    /// The only place the shard is built.
    pub fn with_config(config: MediaConfig) -> Self {
        let now = Instant::now();
        let registry = prometheus::Registry::new();
        let (metrics, _) = Metrics::register(&registry).expect("metrics register once");
        let shard = Shard::new(
            config,
            crate::peer::HostCandidates {
                udp: vec![SFU],
                tcp: Vec::new(),
            },
            metrics,
            StdRng::seed_from_u64(7),
            now,
            Duration::from_secs(1_700_000_000),
        )
        .expect("shard");
        Self {
            now,
            shard,
            registry,
            events: Vec::new(),
            peers: BTreeMap::new(),
            next_port: 40_000,
            next_ssrc: 0x1000_0000,
        }
    }

    /// The only place the shard's events are read: logged in [`World::events`], and subscribe
    /// offers handed to their peer.
    fn drain_shard_events(&mut self) {
        while let Some(event) = self.shard.poll_event() {
            if let MediaEvent::SubscribeOffer {
                participant, sdp, ..
            } = &event
                && let Some(peer) = self.peers.get_mut(participant)
            {
                peer.offers.push(sdp.clone());
            }
            self.events.push(event);
        }
    }

    fn command<T>(&mut self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, MediaError> {
        let (reply, mut answer) = oneshot::channel();
        self.shard.handle_command(self.now, make(reply));
        answer
            .try_recv()
            .expect("the shard answers every command at once")
    }

    fn peer_entry(&mut self, name: &str) -> &mut Peer {
        if !self.peers.contains_key(name) {
            let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
            let port = self.next_port;
            self.next_port += 2;
            self.peers.insert(
                name.to_owned(),
                Peer {
                    publish: None,
                    subscribe: None,
                    publish_addr: SocketAddr::new(ip, port),
                    subscribe_addr: SocketAddr::new(ip, port + 1),
                    link_up: true,
                    holds_offers: false,
                    offers: Vec::new(),
                    answered: 0,
                    tracks: Vec::new(),
                    remote_publishers: HashMap::new(),
                    received: HashMap::new(),
                    last_seq: HashMap::new(),
                    gaps: 0,
                    last_payload_len: HashMap::new(),
                    last_picture: HashMap::new(),
                    picture_jumps: 0,
                    withhold_seq: None,
                    withheld: Vec::new(),
                    downlink: None,
                    rtp_sent: Vec::new(),
                    last_ssrc: HashMap::new(),
                    last_payload: HashMap::new(),
                    red: true,
                },
            );
        }
        self.peers.get_mut(name).expect("inserted above")
    }

    pub fn peer(&self, name: &str) -> &Peer {
        self.peers
            .get(name)
            .unwrap_or_else(|| panic!("no peer {name}"))
    }

    /// `name` becomes a member of the room that receives everyone else's tracks.
    pub fn join(&mut self, name: &str) {
        self.peer_entry(name);
        self.command(|reply| Command::Join {
            room: ROOM.into(),
            participant: name.into(),
            reply,
        })
        .unwrap_or_else(|e| panic!("{name} joins: {e}"));
        self.settle();
    }

    /// From now on `name` answers subscribe offers only when the test calls
    /// [`World::answer_offer`].
    pub fn hold_offers(&mut self, name: &str) {
        self.peer_entry(name).holds_offers = true;
    }

    /// `name` publishes one video track per id (its first offer: a publish connection is made).
    /// A track is seen by the room once its RTP arrives ([`World::stream`]).
    pub fn publish(&mut self, name: &str, track_ids: &[&str]) {
        let now = self.now;
        let first_ssrc = self.next_ssrc;
        self.next_ssrc += track_ids.len() as u32;
        let peer = self.peer_entry(name);
        assert!(peer.publish.is_none(), "{name} publishes once");
        let mut client = Client::new(peer.publish_addr, now);
        let (codec, _) = crate::peer::codecs()
            .into_iter()
            .find(|(_, kind)| *kind == RtpCodecKind::Video)
            .expect("a video codec");
        for (ssrc, id) in (first_ssrc..).zip(track_ids) {
            let sender = client
                .rtc
                .add_track(MediaStreamTrack::new(
                    name.into(),
                    (*id).into(),
                    (*id).into(),
                    RtpCodecKind::Video,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(ssrc),
                            ..Default::default()
                        },
                        codec: codec.rtp_codec.clone(),
                        ..Default::default()
                    }],
                ))
                .expect("add_track");
            peer.tracks.push(SendTrack {
                id: (*id).into(),
                ssrc,
                sender,
                payload_type: codec.payload_type,
                next_seq: 0,
                streaming: false,
                payload_len: 100,
                layers: Vec::new(),
                mid_rid_ids: (0, 0),
                mid: String::new(),
                red: false,
            });
        }
        peer.publish = Some(client);
        self.offer_publish(name);
        self.settle();
    }

    /// `name`'s publish connection offers (`sfu-publish`) and takes the SFU's answer, which
    /// is returned.
    fn offer_publish(&mut self, name: &str) -> String {
        let now = self.now;
        let client = self
            .peers
            .get_mut(name)
            .and_then(|p| p.publish.as_mut())
            .expect("a publish connection");
        let offer = client.rtc.create_offer(None).expect("offer");
        client
            .rtc
            .set_local_description(now, offer)
            .expect("local offer");
        let sdp = client.rtc.local_description().expect("offer set").sdp;
        let answer = self
            .command(|reply| Command::Publish {
                room: ROOM.into(),
                participant: name.into(),
                sdp,
                reply,
            })
            .unwrap_or_else(|e| panic!("{name} publishes: {e}"));
        self.peers
            .get_mut(name)
            .and_then(|p| p.publish.as_mut())
            .expect("a publish connection")
            .rtc
            .set_remote_description(
                now,
                RTCSessionDescription::answer(answer.clone()).expect("SDP"),
            )
            .expect("remote answer");
        answer
    }

    /// `name` sends one packet on `track` every [`STEP`] of [`World::run_for`] from now on.
    pub fn stream(&mut self, name: &str, track: &str) {
        self.track_mut(name, track).streaming = true;
    }

    /// From now on `name`'s packets on `track` carry `payload_len` octets (100 by default):
    /// at one packet per [`STEP`], 1,000 octets make about 850 kbit/s on the wire.
    pub fn payload_len(&mut self, name: &str, track: &str, payload_len: usize) {
        self.track_mut(name, track).payload_len = payload_len;
    }

    /// `name` publishes one video track in simulcast: one encoding per `(rid, payload octets,
    /// frame size)`, each streaming from now on ([`World::run_for`] sends a packet of each per
    /// step).
    pub fn publish_simulcast(
        &mut self,
        name: &str,
        track: &str,
        layers: &[(&str, usize, (u16, u16))],
    ) {
        let now = self.now;
        let first_ssrc = self.next_ssrc;
        self.next_ssrc += layers.len() as u32;
        let peer = self.peer_entry(name);
        assert!(peer.publish.is_none(), "{name} publishes once");
        let mut client = Client::new(peer.publish_addr, now);
        let (codec, _) = crate::peer::codecs()
            .into_iter()
            .find(|(c, _)| c.rtp_codec.mime_type.eq_ignore_ascii_case("video/vp8"))
            .expect("VP8");
        let encodings = layers
            .iter()
            .zip(first_ssrc..)
            .map(|((rid, _, _), ssrc)| RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    rid: (*rid).into(),
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec.rtp_codec.clone(),
                ..Default::default()
            })
            .collect();
        let sender = client
            .rtc
            .add_track(MediaStreamTrack::new(
                name.into(),
                track.into(),
                track.into(),
                RtpCodecKind::Video,
                encodings,
            ))
            .expect("add_track");
        peer.tracks.push(SendTrack {
            id: track.into(),
            ssrc: first_ssrc,
            sender,
            payload_type: codec.payload_type,
            next_seq: 0,
            streaming: true,
            payload_len: 0,
            layers: layers
                .iter()
                .zip(first_ssrc..)
                .map(|((rid, payload_len, size), ssrc)| SendLayer {
                    rid: (*rid).into(),
                    ssrc,
                    next_seq: 0,
                    payload_len: *payload_len,
                    size: *size,
                })
                .collect(),
            mid_rid_ids: (0, 0),
            mid: String::new(),
            red: false,
        });
        peer.publish = Some(client);
        self.offer_publish(name);
        // What the browser learns from the answer: the ids of mid and rid, and its m-section.
        let peer = self.peers.get_mut(name).expect("publisher");
        let client = peer.publish.as_mut().expect("publish connection");
        let t = peer.tracks.last_mut().expect("the track");
        let params = client
            .rtc
            .rtp_sender(t.sender)
            .expect("sender")
            .get_parameters()
            .clone();
        let id = |uri: &str| {
            params
                .rtp_parameters
                .header_extensions
                .iter()
                .find(|h| h.uri == uri)
                .map(|h| h.id as u8)
                .unwrap_or_else(|| panic!("{uri} negotiated"))
        };
        t.mid_rid_ids = (
            id(rtc::sdp::extmap::SDES_MID_URI),
            id(rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI),
        );
        let transceivers: Vec<_> = client.rtc.get_transceivers().collect();
        t.mid = transceivers
            .into_iter()
            .find_map(|id| {
                let tr = client.rtc.rtp_transceiver(id)?;
                (tr.sender() == Some(t.sender))
                    .then(|| tr.mid().clone())
                    .flatten()
            })
            .expect("the track's m-section has a mid");
        self.settle();
    }

    /// `name` asks the SFU again for the packet `back` packets before the last it received
    /// from `publisher` (a NACK on its subscribe connection); returns the sequence number asked.
    pub fn nack(&mut self, name: &str, publisher: &str, back: u16) -> u16 {
        use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
        let now = self.now;
        let peer = self.peers.get_mut(name).expect("peer");
        let track = peer
            .remote_publishers
            .iter()
            .find(|(_, p)| *p == publisher)
            .map(|(t, _)| t.clone())
            .expect("a track of the publisher");
        let seq = peer.last_seq[&track].wrapping_sub(back);
        let media_ssrc = peer.last_ssrc[publisher];
        let nack = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc,
            nacks: vec![NackPair {
                packet_id: seq,
                lost_packets: 0,
            }],
        };
        let client = peer.subscribe.as_mut().expect("subscribe connection");
        client
            .rtc
            .handle_write(rtc::peer_connection::message::TaggedRTCMessage {
                now,
                message: RTCMessage::RtcpPacket(String::new(), vec![Box::new(nack)]),
            })
            .expect("NACK written");
        self.settle();
        seq
    }

    /// `name`'s subscribe connection will not negotiate RED (call before it joins).
    pub fn without_red(&mut self, name: &str) {
        self.peer_entry(name).red = false;
    }

    /// `name` publishes an Opus track in RED packets (RFC 2198: each carries the previous
    /// frame again, then its own; `frame_len` octets each), streaming from now on.
    pub fn publish_red_audio(&mut self, name: &str, track: &str, frame_len: usize) {
        let now = self.now;
        let ssrc = self.next_ssrc;
        self.next_ssrc += 1;
        let peer = self.peer_entry(name);
        assert!(peer.publish.is_none(), "{name} publishes once");
        let mut client = Client::new(peer.publish_addr, now);
        let codec = |mime: &str| {
            crate::peer::codecs()
                .into_iter()
                .find(|(c, _)| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
                .map(|(c, _)| c)
                .expect("codec")
        };
        let (opus, red) = (codec("audio/opus"), codec(crate::peer::MIME_TYPE_RED));
        let sender = client
            .rtc
            .add_track(MediaStreamTrack::new(
                name.into(),
                track.into(),
                track.into(),
                RtpCodecKind::Audio,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: opus.rtp_codec.clone(),
                    ..Default::default()
                }],
            ))
            .expect("add_track");
        // As Chrome offers it: Opus, and RED around Opus.
        let transceivers: Vec<_> = client.rtc.get_transceivers().collect();
        for t in transceivers {
            if let Some(mut t) = client.rtc.rtp_transceiver(t)
                && t.sender() == Some(sender)
            {
                t.set_codec_preferences(vec![opus.clone(), red.clone()])
                    .expect("Opus and RED");
            }
        }
        peer.tracks.push(SendTrack {
            id: track.into(),
            ssrc,
            sender,
            payload_type: red.payload_type,
            next_seq: 0,
            streaming: true,
            payload_len: frame_len,
            layers: Vec::new(),
            mid_rid_ids: (0, 0),
            mid: String::new(),
            red: true,
        });
        peer.publish = Some(client);
        self.offer_publish(name);
        self.settle();
    }

    /// The payload type and length of the last packet `name` received from `publisher`.
    pub fn last_payload(&self, name: &str, publisher: &str) -> Option<(u8, usize)> {
        self.peer(name).last_payload.get(publisher).copied()
    }

    /// The payload length of the last packet `name` received from `publisher` (which
    /// simulcast layer it gets).
    pub fn last_payload_len(&self, name: &str, publisher: &str) -> Option<usize> {
        self.peer(name).last_payload_len.get(publisher).copied()
    }

    /// `name` renders `publisher`'s video at `height` (16:9), or hides it (0).
    pub fn show_video(&mut self, name: &str, publisher: &str, height: u32) {
        let size = crate::VideoSize {
            width: height * 16 / 9,
            height,
        };
        self.command(|reply| Command::VideoSize {
            room: ROOM.into(),
            participant: name.into(),
            publisher: publisher.into(),
            size,
            reply,
        })
        .unwrap_or_else(|e| panic!("{name} shows {publisher}'s video: {e}"));
    }

    /// Everything the SFU sends `name` from now on crosses a link of `bits_per_second` with
    /// 200 ms of queue (drop-tail), and reaches it when the link has serialised it.
    pub fn limit_downlink(&mut self, name: &str, bits_per_second: f64) {
        let now = self.now;
        self.peer_entry(name).downlink = Some(Bottleneck::new(
            now,
            bits_per_second,
            Duration::from_millis(200),
            0.0,
        ));
    }

    /// Everything the SFU sends `name` from now on crosses a policer of `bits_per_second`
    /// (nftables `limit rate ... drop`, an operator's shaper): what exceeds the rate is dropped
    /// at once, almost nothing queues, so no delay grows before the loss.
    pub fn police_downlink(&mut self, name: &str, bits_per_second: f64) {
        let now = self.now;
        self.peer_entry(name).downlink = Some(Bottleneck::new(
            now,
            bits_per_second,
            Duration::from_millis(10),
            0.0,
        ));
    }

    /// `name` loses `fraction` of what the SFU sends it, at random (a radio link), at any rate.
    pub fn lose_downlink(&mut self, name: &str, fraction: f64) {
        let now = self.now;
        self.peer_entry(name).downlink = Some(Bottleneck::new(
            now,
            1e9,
            Duration::from_millis(200),
            fraction,
        ));
    }

    /// Lifts [`Self::limit_downlink`]: `name`'s link carries whatever it is sent again.
    pub fn unlimit_downlink(&mut self, name: &str) {
        self.peer_entry(name).downlink = None;
    }

    /// The SFU's bandwidth estimate toward `name` (its subscribe connection's send side), once
    /// its transport-cc feedback has said something.
    pub fn estimate(&self, name: &str) -> Option<f64> {
        self.shard
            .pcs
            .values()
            .find(|pc| pc.participant == name && pc.kind == PcKind::Subscribe)?
            .send_side
            .as_ref()?
            .estimate()
    }

    fn track_mut(&mut self, name: &str, track: &str) -> &mut SendTrack {
        self.peers
            .get_mut(name)
            .and_then(|p| p.tracks.iter_mut().find(|t| t.id == track))
            .unwrap_or_else(|| panic!("{name} publishes no track {track}"))
    }

    /// Holds back the packet `name` sends on `track` `ahead` packets from now on its way to
    /// the SFU (lost on the publisher's leg) until [`World::release`]; returns its sequence
    /// number.
    pub fn withhold(&mut self, name: &str, track: &str, ahead: u16) -> u16 {
        let seq = self.track_mut(name, track).next_seq.wrapping_add(ahead);
        self.peer_entry(name).withhold_seq = Some(seq);
        seq
    }

    /// Delivers what the link held back from `name` ([`World::withhold`]) now, datagram for
    /// datagram: what a browser without RTX resends when NACKed, the same packet under the same
    /// SSRC, sequence number and SRTP index.
    pub fn release(&mut self, name: &str) {
        let now = self.now;
        let peer = self.peer_entry(name);
        peer.withhold_seq = None;
        let (addr, held) = (peer.publish_addr, std::mem::take(&mut peer.withheld));
        assert!(!held.is_empty(), "nothing of {name} was held back");
        for datagram in held {
            self.shard
                .handle_receive(now, TransportProtocol::UDP, addr, SFU, &datagram);
        }
        self.settle();
    }

    /// Answers `name`'s oldest unanswered subscribe offer (for a peer that holds its offers).
    pub fn answer_offer(&mut self, name: &str) {
        self.answer_next_offer(name)
            .unwrap_or_else(|e| panic!("{name} answers: {e}"));
        self.settle();
    }

    fn answer_next_offer(&mut self, name: &str) -> Result<(), MediaError> {
        let now = self.now;
        let peer = self.peers.get_mut(name).expect("known peer");
        let offer = peer
            .offers
            .get(peer.answered)
            .cloned()
            .ok_or(MediaError::InvalidState("no offer to answer"))?;
        peer.answered += 1;
        let addr = peer.subscribe_addr;
        let red = peer.red;
        let client = peer
            .subscribe
            .get_or_insert_with(|| Client::with_red(addr, now, red));
        let offer = RTCSessionDescription::offer(offer).expect("offer SDP");
        client
            .rtc
            .set_remote_description(now, offer)
            .expect("remote offer");
        let answer = client.rtc.create_answer(None).expect("answer");
        client
            .rtc
            .set_local_description(now, answer)
            .expect("local answer");
        let sdp = client.rtc.local_description().expect("answer set").sdp;
        self.command(|reply| Command::SubscribeAnswer {
            room: ROOM.into(),
            participant: name.into(),
            sdp,
            reply,
        })
    }

    /// `name` leaves the room and closes its browser tab: its client connections are gone too.
    pub fn leave(&mut self, name: &str) {
        self.command(|reply| Command::Leave {
            room: ROOM.into(),
            participant: name.into(),
            reply,
        })
        .unwrap_or_else(|e| panic!("{name} leaves: {e}"));
        self.peers.remove(name);
        self.settle();
    }

    /// Nothing crosses `name`'s link from now on, either way: it vanished from the network
    /// without leaving.
    pub fn cut(&mut self, name: &str) {
        self.peer_entry(name).link_up = false;
    }

    /// `name`'s device changes networks (Wi-Fi to mobile): its connections now send from new
    /// addresses, with a host candidate there, and nothing reaches the old ones.
    pub fn change_network(&mut self, name: &str) {
        let port = self.next_port;
        self.next_port += 2;
        let peer = self.peer_entry(name);
        peer.publish_addr.set_port(port);
        peer.subscribe_addr.set_port(port + 1);
        let addrs = [peer.publish_addr, peer.subscribe_addr];
        for (client, addr) in [peer.publish.as_mut(), peer.subscribe.as_mut()]
            .into_iter()
            .zip(addrs)
        {
            if let Some(client) = client {
                client.addr = addr;
                crate::add_host_candidates(&mut client.rtc, &[addr]).expect("host candidate");
            }
        }
    }

    /// What Chromium does when it moves a connection to another candidate pair without an ICE
    /// restart (its first pair broke, or a better one validated): it nominates the new pair,
    /// a binding request with USE-CANDIDATE from the connection's current address. The first
    /// request makes the SFU check the pair (the client answers the check), the second
    /// nominates a pair that has succeeded.
    pub fn renominate(&mut self, name: &str, kind: PcKind) {
        for _ in 0..2 {
            let peer = self.peer(name);
            let client = match kind {
                PcKind::Publish => peer.publish.as_ref(),
                PcKind::Subscribe => peer.subscribe.as_ref(),
            }
            .unwrap_or_else(|| panic!("{name} has no {} connection", kind.as_str()));
            let sfu_sdp = client
                .rtc
                .remote_description()
                .expect("negotiated")
                .sdp
                .clone();
            let own_sdp = client
                .rtc
                .local_description()
                .expect("negotiated")
                .sdp
                .clone();
            let attr = |sdp: &str, key: &str| {
                sdp.lines()
                    .find_map(|l| l.trim_end().strip_prefix(key).map(str::to_owned))
                    .unwrap_or_else(|| panic!("no {key}"))
            };
            let user = format!(
                "{}:{}",
                attr(&sfu_sdp, "a=ice-ufrag:"),
                attr(&own_sdp, "a=ice-ufrag:")
            );
            let request = nominating_request(&user, &attr(&sfu_sdp, "a=ice-pwd:"));
            let from = client.addr;
            self.shard
                .handle_receive(self.now, TransportProtocol::UDP, from, SFU, &request);
            self.settle();
        }
    }

    /// What a browser does when its network changed: it re-offers its publish connection with
    /// new ICE credentials and asks the SFU to restart its subscribe connection. Returns the
    /// SFU's answers to the publish offer before and to the re-offer.
    pub fn restart_ice(&mut self, name: &str) -> (String, String) {
        let client = self
            .peers
            .get_mut(name)
            .and_then(|p| p.publish.as_mut())
            .expect("a publisher");
        let before = client
            .rtc
            .remote_description()
            .expect("answered")
            .sdp
            .clone();
        client.rtc.restart_ice();
        let answer = self.offer_publish(name);
        self.command(|reply| Command::RestartIce {
            room: ROOM.into(),
            participant: name.into(),
            reply,
        })
        .unwrap_or_else(|e| panic!("{name} restarts its subscribe connection: {e}"));
        self.settle();
        (before, answer)
    }

    /// Moves the clock on by `duration` in [`STEP`]s. Each step sends one packet per streaming
    /// track, fires whatever timeout of the shard or a client is due, and delivers every
    /// datagram until all is quiet.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        while self.now < until {
            self.now = (self.now + STEP).min(until);
            let now = self.now;
            for peer in self.peers.values_mut() {
                for i in 0..peer.tracks.len() {
                    if peer.tracks[i].streaming {
                        let id = peer.tracks[i].id.clone();
                        peer.send_rtp(&id, now);
                    }
                }
            }
            if self.shard.poll_timeout().is_some_and(|t| t <= now) {
                self.shard.handle_timeout(now);
            }
            for client in self.peers.values_mut().flat_map(Peer::clients) {
                if client.rtc.poll_timeout().is_some_and(|t| t <= now) {
                    // A client's own failure shows up as what it stops sending.
                    let _ = client.rtc.handle_timeout(now);
                }
            }
            self.settle();
        }
    }

    /// Delivers datagrams both ways and answers offers until nothing moves any more.
    fn settle(&mut self) {
        loop {
            let mut moved = self.deliver();
            self.drain_shard_events();
            let due: Vec<String> = self
                .peers
                .iter()
                .filter(|(_, p)| !p.holds_offers && p.offers.len() > p.answered)
                .map(|(name, _)| name.clone())
                .collect();
            for name in due {
                moved = true;
                self.answer_next_offer(&name)
                    .unwrap_or_else(|e| panic!("{name} answers: {e}"));
            }
            if !moved {
                return;
            }
        }
    }

    /// One round of datagrams each way, then what the clients made of them. True if anything
    /// was sent.
    fn deliver(&mut self) -> bool {
        let now = self.now;
        let mut moved = false;
        while let Some(transmit) = self.shard.poll_transmit() {
            moved = true;
            let to = transmit.to.addr;
            let Some(peer) = self
                .peers
                .values_mut()
                .filter(|p| p.link_up)
                .find(|p| p.publish_addr == to || p.subscribe_addr == to)
            else {
                continue;
            };
            if let Some(seq) = rtp_seq(&transmit.bytes) {
                let b = &transmit.bytes;
                let ssrc = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
                peer.rtp_sent.push((ssrc, b[1] & 0x7f, seq));
            }
            match peer.downlink.as_mut() {
                Some(link) => link.enqueue(now, to, transmit.bytes),
                None => peer.receive(now, to, transmit.bytes),
            }
        }
        for peer in self.peers.values_mut() {
            while let Some(link) = peer.downlink.as_mut()
                && let Some((at, to, bytes)) = link.queue.pop_front()
            {
                if at > now {
                    link.queue.push_front((at, to, bytes));
                    break;
                }
                moved = true;
                // It reaches the client when the link delivered it (its arrival time is what
                // the client's transport-cc feedback reports).
                peer.receive(at, to, bytes);
            }
        }
        for peer in self.peers.values_mut() {
            let link_up = peer.link_up;
            let publish_addr = peer.publish_addr;
            for client in peer.publish.iter_mut().chain(peer.subscribe.iter_mut()) {
                while let Some(out) = client.rtc.poll_write() {
                    moved = true;
                    if client.addr == publish_addr
                        && peer.withhold_seq.is_some()
                        && rtp_seq(&out.message) == peer.withhold_seq
                    {
                        peer.withheld.push(out.message);
                        continue;
                    }
                    if link_up && out.transport.peer_addr == SFU {
                        client.last_delivered = Some(now);
                        self.shard.handle_receive(
                            now,
                            TransportProtocol::UDP,
                            client.addr,
                            SFU,
                            &out.message,
                        );
                    }
                }
            }
            peer.read_clients();
        }
        moved
    }

    pub fn stats(&mut self) -> SfuStats {
        self.command(|reply| Command::Stats { reply })
            .expect("stats")
    }

    /// The current value of a gauge or counter, summed over its labels (0 if never set).
    pub fn metric(&self, name: &str) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_gauge().value() + m.get_counter().value())
            .sum()
    }

    /// The current value of a counter, summed over its series whose labels include `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric())
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| m.get_counter().value())
            .sum()
    }

    /// RTP packets `name` received from `publisher`'s tracks.
    pub fn received(&self, name: &str, publisher: &str) -> usize {
        self.peer(name)
            .received
            .get(publisher)
            .copied()
            .unwrap_or(0)
    }

    /// Since when the shard has heard nothing from one of `name`'s connections: the earliest
    /// of their last datagrams to reach it. The liveness timeout runs from there.
    pub fn silent_since(&self, name: &str) -> Instant {
        let peer = self.peer(name);
        peer.publish
            .iter()
            .chain(peer.subscribe.iter())
            .filter_map(|c| c.last_delivered)
            .min()
            .unwrap_or_else(|| panic!("nothing from {name} reached the shard"))
    }

    /// Runs the clock up to `at` ([`World::run_for`]).
    pub fn run_until(&mut self, at: Instant) {
        self.run_for(at.saturating_duration_since(self.now));
    }

    /// The reasons of every `ParticipantClosed` event for `name` so far.
    pub fn closed(&self, name: &str) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                MediaEvent::ParticipantClosed {
                    participant,
                    reason,
                    ..
                } if participant == name => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether `name`'s connection of `kind` has reported `state` (e.g. "connected").
    pub fn reached(&self, name: &str, kind: PcKind, state: &str) -> bool {
        self.events.iter().any(|e| {
            matches!(e, MediaEvent::ConnectionState { participant, pc, state: s, .. }
                if participant == name && *pc == kind && s == state)
        })
    }
}

impl Client {
    /// A browser-like client connection: the SFU's codecs and header extensions, one host
    /// candidate at `addr`, transport-cc feedback on what it receives (as browsers send) and
    /// no other interceptor (the tests count what arrives, nothing more), and libwebrtc's SRTP
    /// replay window (1024 packets; webrtc-rs keeps 64 by default), so a retransmission
    /// arrives here as it would in Chrome.
    fn new(addr: SocketAddr, now: Instant) -> Self {
        Self::with_red(addr, now, true)
    }

    /// [`Client::new`], negotiating RED (RFC 2198) or not.
    fn with_red(addr: SocketAddr, now: Instant, red: bool) -> Self {
        let mut media_engine =
            rtc::peer_connection::configuration::media_engine::MediaEngine::default();
        for (codec, kind) in crate::peer::codecs() {
            if red
                || !codec
                    .rtp_codec
                    .mime_type
                    .eq_ignore_ascii_case(crate::peer::MIME_TYPE_RED)
            {
                media_engine.register_codec(codec, kind).expect("codec");
            }
        }
        crate::peer::register_header_extensions(&mut media_engine).expect("header extensions");
        for codec in crate::peer::rtx_codecs() {
            media_engine
                .register_codec(codec, RtpCodecKind::Video)
                .expect("RTX codec");
        }
        let registry = configure_twcc_receiver_only(Registry::new(), &mut media_engine)
            .expect("transport-cc feedback");
        let mut rtc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_srtp_replay_protection_window(1024)
                    .build(),
            )
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .build(now)
            .expect("client connection");
        crate::add_host_candidates(&mut rtc, &[addr]).expect("host candidate");
        Self {
            rtc,
            addr,
            last_delivered: None,
        }
    }
}

impl Peer {
    fn clients(&mut self) -> impl Iterator<Item = &mut Client> {
        self.publish.iter_mut().chain(self.subscribe.iter_mut())
    }

    /// A datagram from the SFU reaches the client connection at `to` at `at`. What the client
    /// cannot read it drops, as a browser would.
    fn receive(&mut self, at: Instant, to: SocketAddr, bytes: bytes::BytesMut) {
        if let Some(client) = self.clients().find(|c| c.addr == to) {
            let _ = client.rtc.handle_read(TaggedBytesMut {
                now: at,
                transport: TransportContext {
                    local_addr: client.addr,
                    peer_addr: SFU,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message: bytes,
            });
        }
    }

    /// One packet on `track`. Before DTLS is up the client core refuses it: it is lost, as a
    /// browser's would be.
    fn send_rtp(&mut self, track: &str, now: Instant) {
        let (Some(client), Some(t)) = (
            self.publish.as_mut(),
            self.tracks.iter_mut().find(|t| t.id == track),
        ) else {
            panic!("no published track {track}");
        };
        if !t.layers.is_empty() {
            let (mid_id, rid_id) = t.mid_rid_ids;
            for l in &mut t.layers {
                let picture = l.next_seq & 0x7fff;
                let keyframe = l.next_seq % KEYFRAME_EVERY == 0;
                let mut header = Header {
                    version: 2,
                    payload_type: t.payload_type,
                    sequence_number: l.next_seq,
                    timestamp: u32::from(l.next_seq).wrapping_mul(900),
                    ssrc: l.ssrc,
                    marker: true,
                    ..Default::default()
                };
                let _ = header.set_extension(mid_id, Bytes::from(t.mid.clone().into_bytes()));
                let _ = header.set_extension(rid_id, Bytes::from(l.rid.clone().into_bytes()));
                let payload = vp8_frame(picture, keyframe, l.size, l.payload_len);
                l.next_seq = l.next_seq.wrapping_add(1);
                if let Some(mut sender) = client.rtc.rtp_sender(t.sender) {
                    let _ = sender.write_rtp(
                        now,
                        Packet {
                            header,
                            payload: Bytes::from(payload),
                        },
                    );
                }
            }
            return;
        }
        let payload = if t.red {
            // A redundant block (the previous 20 ms frame, 960 ticks earlier), then the primary.
            let mut p = vec![0x80 | 111, (960 >> 6) as u8, ((960 & 0x3f) << 2) as u8, 0];
            p[3] = t.payload_len as u8;
            p[2] |= ((t.payload_len >> 8) & 0x03) as u8;
            p.push(111);
            p.extend(std::iter::repeat_n(0xEE, t.payload_len));
            p.extend(std::iter::repeat_n(0xCD, t.payload_len));
            p
        } else {
            vec![0xAB; t.payload_len]
        };
        let packet = Packet {
            header: Header {
                version: 2,
                payload_type: t.payload_type,
                sequence_number: t.next_seq,
                timestamp: u32::from(t.next_seq).wrapping_mul(900),
                ssrc: t.ssrc,
                marker: true,
                ..Default::default()
            },
            payload: Bytes::from(payload),
        };
        t.next_seq = t.next_seq.wrapping_add(1);
        if let Some(mut sender) = client.rtc.rtp_sender(t.sender) {
            let _ = sender.write_rtp(now, packet);
        }
    }

    /// Drains the client connections' events and packets, counting the RTP that arrived.
    fn read_clients(&mut self) {
        for client in self.publish.iter_mut().chain(self.subscribe.iter_mut()) {
            while let Some(event) = client.rtc.poll_event() {
                if let RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) = event
                    && let Some(publisher) = init.stream_ids.first()
                {
                    self.remote_publishers
                        .insert(init.track_id, publisher.clone());
                }
            }
            while let Some(read) = client.rtc.poll_read() {
                let RTCMessage::RtpPacket(track, packet) = read.message else {
                    continue;
                };
                let publisher = self
                    .remote_publishers
                    .get(&track)
                    .cloned()
                    .unwrap_or_default();
                *self.received.entry(publisher.clone()).or_default() += 1;
                self.last_ssrc.insert(publisher.clone(), packet.header.ssrc);
                self.last_payload.insert(
                    publisher.clone(),
                    (packet.header.payload_type, packet.payload.len()),
                );
                self.last_payload_len
                    .insert(publisher, packet.payload.len());
                if let [0x90, 0x80, hi, lo, ..] = packet.payload[..] {
                    let picture = u16::from_be_bytes([hi & 0x7f, lo]);
                    if let Some(last) = self.last_picture.insert(track.clone(), picture)
                        && picture != last.wrapping_add(1) & 0x7fff
                    {
                        self.picture_jumps += 1;
                    }
                }
                let seq = packet.header.sequence_number;
                if let Some(last) = self.last_seq.insert(track, seq)
                    && seq != last.wrapping_add(1)
                {
                    self.gaps += 1;
                }
            }
        }
    }
}

/// The sequence number of an (S)RTP datagram, whose header travels in the clear; `None` for
/// anything else (STUN, DTLS, RTCP).
fn rtp_seq(datagram: &[u8]) -> Option<u16> {
    let is_rtp =
        datagram.len() >= 12 && datagram[0] >> 6 == 2 && !(192..=223).contains(&datagram[1]);
    is_rtp.then(|| u16::from_be_bytes([datagram[2], datagram[3]]))
}

/// A STUN binding request as a controlling browser nominates a pair with: USERNAME, PRIORITY,
/// ICE-CONTROLLING, USE-CANDIDATE, MESSAGE-INTEGRITY keyed with the SFU's password,
/// FINGERPRINT.
fn nominating_request(user: &str, pwd: &str) -> Vec<u8> {
    use rtc::stun::attributes::{ATTR_USERNAME, AttrType};
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{BINDING_REQUEST, Message, Setter, TransactionId};
    use rtc::stun::textattrs::TextAttribute;

    /// A raw attribute (type, value).
    struct Raw(u16, Vec<u8>);
    impl Setter for Raw {
        fn add_to(&self, m: &mut Message) -> rtc::shared::error::Result<()> {
            m.add(AttrType(self.0), &self.1);
            Ok(())
        }
    }
    const PRIORITY: u16 = 0x0024;
    const USE_CANDIDATE: u16 = 0x0025;
    const ICE_CONTROLLING: u16 = 0x802A;
    let crypto = rtc::crypto::default_provider().expect("crypto provider");
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(TextAttribute::new(ATTR_USERNAME, user.to_owned())),
        Box::new(Raw(PRIORITY, 1_853_817_087u32.to_be_bytes().to_vec())),
        Box::new(Raw(ICE_CONTROLLING, 7u64.to_be_bytes().to_vec())),
        Box::new(Raw(USE_CANDIDATE, Vec::new())),
        Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
            pwd.to_owned(),
            crypto.crypto(),
        )),
        Box::new(FINGERPRINT),
    ];
    let mut m = Message::new();
    m.build(&setters).expect("binding request");
    m.raw
}
