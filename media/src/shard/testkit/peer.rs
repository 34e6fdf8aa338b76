//! The simulated browsers of the test kit: a [`Peer`] with its publish and subscribe client
//! connections, the tracks it sends (simulcast layers, VP8 frames with keyframes) and what it
//! records of what it receives.

use super::*;

/// One participant's browser, as far as the SFU can tell.
pub(crate) struct Peer {
    pub(super) publish: Option<Client>,
    pub(super) subscribe: Option<Client>,
    pub(super) publish_addr: SocketAddr,
    pub(super) subscribe_addr: SocketAddr,
    /// Cut: every datagram to or from this peer is lost (signaling still works).
    pub(super) link_up: bool,
    /// Subscribe offers are answered by the test ([`World::answer_offer`]), not at once.
    pub(super) holds_offers: bool,
    /// Every subscribe offer the SFU sent this peer, in order.
    pub offers: Vec<String>,
    pub(super) answered: usize,
    pub(super) tracks: Vec<SendTrack>,
    /// Remote track id → the publisher it comes from (its msid stream id).
    pub(super) remote_publishers: HashMap<String, String>,
    /// RTP packets received, per publisher.
    pub(super) received: HashMap<String, usize>,
    /// The last sequence number received, per remote track, to spot gaps.
    pub(super) last_seq: HashMap<String, u16>,
    /// Packets that did not follow the previous one of their track (lost or reordered).
    pub gaps: usize,
    /// The payload length of the last packet received, per publisher (which simulcast layer).
    pub(super) last_payload_len: HashMap<String, usize>,
    /// The last VP8 picture id received per remote track, and how often the next one was not
    /// its successor.
    pub(super) last_picture: HashMap<String, u16>,
    pub picture_jumps: usize,
    /// The sequence number of an RTP packet the publish connection sends that the link holds
    /// back ([`World::withhold`]) until [`World::release`].
    pub(super) withhold_seq: Option<u16>,
    /// The datagrams held back, as they were protected.
    pub(super) withheld: Vec<bytes::BytesMut>,
    /// A bottleneck on everything the SFU sends this peer ([`World::limit_downlink`]).
    pub(super) downlink: Option<Bottleneck>,
    /// Every RTP datagram the SFU sent this peer: (SSRC, payload type, sequence number), read
    /// from the header SRTP leaves in the clear.
    pub rtp_sent: Vec<(u32, u8, u16)>,
    /// The SSRC of the last RTP packet received, per publisher.
    pub(super) last_ssrc: HashMap<String, u32>,
    /// The payload type and length of the last RTP packet received, per publisher.
    pub(super) last_payload: HashMap<String, (u8, usize)>,
    /// Its subscribe connection negotiates RED (as Chrome does; true unless [`World::without_red`]).
    pub(super) red: bool,
}

pub(super) struct Client {
    pub(super) rtc: RTCPeerConnection,
    pub(super) addr: SocketAddr,
    /// When a datagram of this connection last reached the shard.
    pub(super) last_delivered: Option<Instant>,
}

/// A track a peer publishes.
pub(super) struct SendTrack {
    pub(super) id: String,
    pub(super) ssrc: u32,
    pub(super) sender: RTCRtpSenderId,
    /// The client core sends only payload types negotiated for the sender.
    pub(super) payload_type: u8,
    pub(super) next_seq: u16,
    /// [`World::run_for`] sends one packet per step.
    pub(super) streaming: bool,
    /// Octets of payload per packet.
    pub(super) payload_len: usize,
    /// Simulcast encodings ([`World::publish_simulcast`]): one packet each per step, in place
    /// of the track's own.
    pub(super) layers: Vec<SendLayer>,
    /// The negotiated ids of the mid and rid header extensions (simulcast packets carry them,
    /// as a browser's do).
    pub(super) mid_rid_ids: (u8, u8),
    pub(super) mid: String,
    /// An audio track sending RED packets: one redundant copy of the previous frame.
    pub(super) red: bool,
}

/// One simulcast encoding of a track: VP8 packets, one frame each, a keyframe (announcing
/// `size`) every [`KEYFRAME_EVERY`] frames.
pub(super) struct SendLayer {
    pub(super) rid: String,
    pub(super) ssrc: u32,
    pub(super) next_seq: u16,
    pub(super) payload_len: usize,
    pub(super) size: (u16, u16),
}

/// A simulcast layer sends a keyframe every this many packets (a fifth of a second).
const KEYFRAME_EVERY: u16 = 20;

/// A VP8 packet of one frame: the descriptor with picture id `picture` (15 bits), then a frame
/// tag, and for a keyframe the start code and `size`; `len` octets in all.
pub(super) fn vp8_frame(picture: u16, keyframe: bool, size: (u16, u16), len: usize) -> Vec<u8> {
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

impl Client {
    /// A browser-like client connection: the SFU's codecs and header extensions, one host
    /// candidate at `addr`, transport-cc feedback on what it receives (as browsers send) and
    /// no other interceptor (the tests count what arrives, nothing more), and libwebrtc's SRTP
    /// replay window (1024 packets; webrtc-rs keeps 64 by default), so a retransmission
    /// arrives here as it would in Chrome.
    pub(super) fn new(addr: SocketAddr, now: Instant) -> Self {
        Self::with_red(addr, now, true)
    }

    /// [`Client::new`], negotiating RED (RFC 2198) or not.
    pub(super) fn with_red(addr: SocketAddr, now: Instant, red: bool) -> Self {
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
    pub(super) fn clients(&mut self) -> impl Iterator<Item = &mut Client> {
        self.publish.iter_mut().chain(self.subscribe.iter_mut())
    }

    /// A datagram from the SFU reaches the client connection at `to` at `at`. What the client
    /// cannot read it drops, as a browser would.
    pub(super) fn receive(&mut self, at: Instant, to: SocketAddr, bytes: bytes::BytesMut) {
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
    pub(super) fn send_rtp(&mut self, track: &str, now: Instant) {
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
    pub(super) fn read_clients(&mut self) {
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
pub(super) fn rtp_seq(datagram: &[u8]) -> Option<u16> {
    let is_rtp =
        datagram.len() >= 12 && datagram[0] >> 6 == 2 && !(192..=223).contains(&datagram[1]);
    is_rtp.then(|| u16::from_be_bytes([datagram[2], datagram[3]]))
}
