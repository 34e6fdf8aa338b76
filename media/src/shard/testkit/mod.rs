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
//! Here the world: the shard, the clock, joining, publishing, commands and what the tests read
//! back; `peer.rs` the simulated browsers; `link.rs` the network between them and the SFU.
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

mod link;
mod peer;

use super::Shard;
use crate::metrics::Metrics;
use crate::{Command, MediaConfig, MediaError, MediaEvent, PcKind, Reply, SfuStats};
use link::Bottleneck;
use peer::{Client, Peer, SendLayer, SendTrack, rtp_seq};

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

    /// `name` stops sending on `track` (until [`World::stream`] again); its connection stays.
    pub fn pause(&mut self, name: &str, track: &str) {
        self.track_mut(name, track).streaming = false;
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
