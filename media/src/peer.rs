//! Building webrtc-rs peer connections the way the SFU needs them: ICE-lite with known
//! credentials (so the demultiplexer can route by ufrag), host candidates for our one socket,
//! the codecs and header extensions browsers use, and interceptor chains split by role.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rtc::ice::tcp_type::TcpType;
use rtc::interceptor::{
    Attribute, Interceptor, NackGeneratorBuilder, Packet, ReceiverReportBuilder, Registry, Slot,
    StreamInfo, TaggedPacket,
};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::configure_twcc_receiver_only;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_RTX, MIME_TYPE_VP8, MIME_TYPE_VP9, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sdp::extmap::{
    ABS_SEND_TIME_URI, AUDIO_LEVEL_URI, SDES_MID_URI, SDES_REPAIR_RTP_STREAM_ID_URI,
    SDES_RTP_STREAM_ID_URI, TRANSPORT_CC_URI,
};

use crate::{MediaError, PcKind};

/// Redundant audio (RFC 2198).
pub(crate) const MIME_TYPE_RED: &str = "audio/red";

/// Header extensions whose values mean the same thing end to end and are therefore forwarded
/// (with the id remapped). mid, rid and transport-cc are hop-by-hop and are not.
pub(crate) const FORWARDED_EXTENSIONS: [&str; 2] = [AUDIO_LEVEL_URI, ABS_SEND_TIME_URI];

/// Counters the interceptors inside the core bump (rarely: once per generated NACK).
#[derive(Default, Debug)]
pub(crate) struct CoreCounters {
    pub nack_out: AtomicU64,
}

/// How far back, in packets, the SFU asks a publisher for what it lost (the NACK generator's
/// receive log).
const NACK_WINDOW: u16 = 512;

/// How many times the SFU asks a publisher for one lost packet (a NACK every 100 ms while it
/// is missing) before giving it up, as libwebrtc's receiver does (`kMaxNackRetries`): a packet
/// whose every resend is lost is not asked for until it leaves the window.
const MAX_NACKS_PER_PACKET: u16 = 10;

/// The SRTP replay window on what the SFU receives, in packets (libwebrtc's; webrtc-rs's
/// default is 64). A browser without RTX answers a NACK by resending the packet with its own
/// sequence number (the same SRTP index), one NACK interval and a round trip after it was
/// lost: behind more than 64 newer packets at a few hundred packets a second. A window of 64
/// refused every such resend as a replay (`srtp ... duplicated`), the NACK generator kept
/// asking, and the subscribers' copies never came (issue 12). It must cover at least
/// [`NACK_WINDOW`], so whatever the SFU asks for it can accept.
const SRTP_REPLAY_WINDOW: usize = 1024;
const _: () = assert!(SRTP_REPLAY_WINDOW >= NACK_WINDOW as usize);

pub(crate) struct PcSetup<'a> {
    pub kind: PcKind,
    pub ufrag: &'a str,
    pub pwd: &'a str,
    pub candidates: &'a HostCandidates,
    pub counters: &'a Arc<CoreCounters>,
    pub ice_disconnected_timeout: Duration,
    pub ice_failed_timeout: Duration,
}

pub(crate) fn codecs() -> Vec<(RTCRtpCodecParameters, RtpCodecKind)> {
    let video_fb = || {
        [
            ("nack", ""),
            ("nack", "pli"),
            ("ccm", "fir"),
            ("transport-cc", ""),
        ]
        .iter()
        .map(|(t, p)| RTCPFeedback {
            typ: (*t).to_owned(),
            parameter: (*p).to_owned(),
        })
        .collect::<Vec<_>>()
    };
    let video = |mime: &str, pt: u8, fmtp: &str| {
        (
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime.to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: fmtp.to_owned(),
                    rtcp_feedback: video_fb(),
                },
                payload_type: pt,
            },
            RtpCodecKind::Video,
        )
    };
    vec![
        (
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_OPUS.to_owned(),
                    clock_rate: 48_000,
                    channels: 2,
                    sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                    rtcp_feedback: vec![RTCPFeedback {
                        typ: "transport-cc".to_owned(),
                        parameter: String::new(),
                    }],
                },
                payload_type: 111,
            },
            RtpCodecKind::Audio,
        ),
        // RED (RFC 2198) around Opus: forwarded as it comes to subscribers that negotiated it,
        // and as its primary Opus packet to those that did not.
        (
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_RED.to_owned(),
                    clock_rate: 48_000,
                    channels: 2,
                    sdp_fmtp_line: "111/111".to_owned(),
                    rtcp_feedback: Vec::new(),
                },
                payload_type: 63,
            },
            RtpCodecKind::Audio,
        ),
        video(MIME_TYPE_VP8, 96, ""),
        video(MIME_TYPE_VP9, 98, "profile-id=0"),
        video(
            MIME_TYPE_H264,
            102,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        ),
        video(
            MIME_TYPE_H264,
            125,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        ),
    ]
}

/// The payload type of the RTX codec (RFC 4588) paired with each video codec of [`codecs`], and
/// that video codec's: offered on subscribe connections only. A publisher's retransmissions
/// stay on its media SSRC (the core's NACK generator asks for them there), while a subscriber
/// that negotiates RTX gets the SFU's on a stream of their own.
pub(crate) fn rtx_codecs() -> Vec<RTCRtpCodecParameters> {
    [(96, 97), (98, 99), (102, 103), (125, 107)]
        .into_iter()
        .map(|(apt, payload_type)| RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_RTX.to_owned(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: format!("apt={apt}"),
                rtcp_feedback: Vec::new(),
            },
            payload_type,
        })
        .collect()
}

pub(crate) fn media_engine() -> Result<MediaEngine, MediaError> {
    let mut me = MediaEngine::default();
    for (codec, kind) in codecs() {
        me.register_codec(codec, kind)?;
    }
    register_header_extensions(&mut me)?;
    Ok(me)
}

/// The RTP header extensions the SFU negotiates (mid, abs-send-time, transport-cc, audio
/// level, and the simulcast rids on video), registered on a media engine: the SFU's own, or a client peer's on the same core
/// (the load generator). On subscribe connections the SFU writes the transport-wide sequence
/// numbers itself (`crate::congestion`), so subscribers send transport-cc feedback.
pub fn register_header_extensions(me: &mut MediaEngine) -> Result<(), MediaError> {
    let ext = |uri: &str| RTCRtpHeaderExtensionCapability {
        uri: uri.to_owned(),
    };
    for k in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        me.register_header_extension(ext(SDES_MID_URI), k, None)?;
        me.register_header_extension(ext(ABS_SEND_TIME_URI), k, None)?;
        me.register_header_extension(ext(TRANSPORT_CC_URI), k, None)?;
    }
    me.register_header_extension(ext(AUDIO_LEVEL_URI), RtpCodecKind::Audio, None)?;
    // Simulcast: which encoding (rid) a packet belongs to, and its repair stream's.
    me.register_header_extension(ext(SDES_RTP_STREAM_ID_URI), RtpCodecKind::Video, None)?;
    me.register_header_extension(
        ext(SDES_REPAIR_RTP_STREAM_ID_URI),
        RtpCodecKind::Video,
        None,
    )?;
    Ok(())
}

/// Interceptor chains by role. Publish (we receive): NACK generator (asks the publisher for
/// what we lost), receiver reports, transport-cc feedback. Subscribe (we send): none of its
/// own — the SFU protects forwarded copies itself, past the interceptors (`protect_rtp`),
/// numbers them for transport-cc and writes their sender reports itself; NACKs are answered
/// from the SFU's per-track cache. Both: inbound keyframe requests, NACKs and receiver reports go to the application.
fn registry(
    kind: PcKind,
    me: &mut MediaEngine,
    counters: &Arc<CoreCounters>,
) -> Result<Registry, MediaError> {
    let r = Registry::new().with(Slot::from(14_000), RtcpToApplication::default());
    Ok(match kind {
        PcKind::Publish => {
            let r = r
                .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
                .with(
                    Slot::NackGenerator,
                    NackGeneratorBuilder::new()
                        .with_size(NACK_WINDOW)
                        .with_max_nacks_per_packet(MAX_NACKS_PER_PACKET)
                        .build(),
                )
                .with(
                    Slot::from(500),
                    NackCounter {
                        counters: Arc::clone(counters),
                        ..Default::default()
                    },
                );
            configure_twcc_receiver_only(r, me)?
        }
        PcKind::Subscribe => {
            for codec in rtx_codecs() {
                me.register_codec(codec, RtpCodecKind::Video)?;
            }
            r
        }
    })
}

pub(crate) fn build(setup: &PcSetup<'_>, now: Instant) -> Result<RTCPeerConnection, MediaError> {
    let mut me = media_engine()?;
    let registry = registry(setup.kind, &mut me, setup.counters)?;
    let settings = SettingEngineBuilder::new()
        .with_lite(true)
        .with_ice_credentials(setup.ufrag.to_owned(), setup.pwd.to_owned())
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .with_srtp_replay_protection_window(SRTP_REPLAY_WINDOW)
        .with_ice_timeouts(
            Some(setup.ice_disconnected_timeout),
            Some(setup.ice_failed_timeout),
            Some(Duration::from_secs(2)),
        )
        .build();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .build(now)?;
    add_host_candidates(&mut pc, &setup.candidates.udp)?;
    add_passive_tcp_candidates(&mut pc, &setup.candidates.tcp)?;
    Ok(pc)
}

/// The SFU's host candidates: its UDP port and, with ICE-TCP, its TCP port, on each announced
/// address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HostCandidates {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
}

/// ICE-TCP host candidates (RFC 6544) of `tcptype passive`: the client connects, the SFU
/// accepts. Their priority (the core's RFC 6544 formula: local preference 40959 against
/// 65535 for UDP hosts) keeps UDP first wherever UDP gets through.
fn add_passive_tcp_candidates(
    pc: &mut RTCPeerConnection,
    addrs: &[SocketAddr],
) -> Result<(), MediaError> {
    add_candidates(pc, addrs, "tcp", TcpType::Passive)
}

/// Announces host candidates on a peer connection of the `rtc` core: the SFU's own addresses,
/// or, for client peers on the same core (the load generator, the benches), the client's socket.
pub fn add_host_candidates(
    pc: &mut RTCPeerConnection,
    addrs: &[SocketAddr],
) -> Result<(), MediaError> {
    add_candidates(pc, addrs, "udp", TcpType::Unspecified)
}

fn add_candidates(
    pc: &mut RTCPeerConnection,
    addrs: &[SocketAddr],
    network: &str,
    tcp_type: TcpType,
) -> Result<(), MediaError> {
    for addr in addrs {
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: network.to_owned(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            tcp_type,
        }
        .new_candidate_host()?;
        pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
    }
    Ok(())
}

/// Marks the inbound RTCP the SFU acts on for the application: keyframe requests and NACKs
/// (relayed / answered per track), receiver reports (RTT) and transport-cc feedback (the
/// subscriber's bandwidth estimate). The rest stops in the chain.
#[derive(Default)]
struct RtcpToApplication {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

fn wanted_by_application(p: &dyn rtc::rtcp::Packet) -> bool {
    let a = p.as_any();
    a.is::<PictureLossIndication>()
        || a.is::<FullIntraRequest>()
        || a.is::<TransportLayerNack>()
        || a.is::<ReceiverReport>()
        || a.is::<TransportLayerCc>()
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for RtcpToApplication {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| wanted_by_application(p.as_ref()))
        {
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

impl Interceptor for RtcpToApplication {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

/// Wire-most on publish connections: counts the NACKs the core's generator sends publishers.
#[derive(Default)]
struct NackCounter {
    counters: Arc<CoreCounters>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl rtc::sansio::Protocol<TaggedPacket, TaggedPacket, ()> for NackCounter {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let n = packets
                .iter()
                .filter(|p| p.as_any().is::<TransportLayerNack>())
                .count() as u64;
            if n > 0 {
                self.counters.nack_out.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for NackCounter {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

/// Random ICE credentials (RFC 8445 §5.3: ufrag ≥ 4 chars, pwd ≥ 22 chars of ice-char), drawn
/// from `rng` (the shard's; seeded from the OS by the driver: the password keys STUN integrity).
pub(crate) fn ice_credentials<R: rand::Rng + ?Sized>(rng: &mut R) -> (String, String) {
    use rand::RngExt;
    const ICE_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut gen_str = |n: usize| {
        (0..n)
            .map(|_| ICE_CHARS[(rng.random::<u32>() as usize) % ICE_CHARS.len()] as char)
            .collect::<String>()
    };
    (gen_str(16), gen_str(32))
}
