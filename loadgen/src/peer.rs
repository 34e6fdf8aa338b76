//! Client peers on webrtc-rs's sans-IO core (`rtc`, the same core the SFU runs), cheap enough
//! that one thread can drive a hundred of them: no interceptors (no reports, NACKs or
//! congestion feedback are generated), one host candidate, VP8 and Opus. The caller owns the
//! socket and the clock: feed datagrams with [`ClientPeer::handle_datagram`], send what
//! [`ClientPeer::poll_transmit`] returns, and honour [`ClientPeer::poll_timeout`].

use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp::packet::Packet;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::LoadError;

/// Payload types the client peers use (the same as the SFU's and browsers').
pub const OPUS_PT: u8 = 111;
pub const VP8_PT: u8 = 96;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Audio,
    Video,
}

/// The codec a track of `kind` is sent with.
pub fn codec(kind: Kind) -> RTCRtpCodec {
    match kind {
        Kind::Audio => RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        Kind::Video => RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: [("nack", ""), ("nack", "pli"), ("ccm", "fir")]
                .iter()
                .map(|(t, p)| RTCPFeedback {
                    typ: (*t).to_owned(),
                    parameter: (*p).to_owned(),
                })
                .collect(),
        },
    }
}

fn media_engine() -> Result<MediaEngine, LoadError> {
    let mut me = MediaEngine::default();
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: codec(Kind::Audio),
            payload_type: OPUS_PT,
        },
        RtpCodecKind::Audio,
    )?;
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: codec(Kind::Video),
            payload_type: VP8_PT,
        },
        RtpCodecKind::Video,
    )?;
    callrelay_media::register_header_extensions(&mut me)
        .map_err(|e| LoadError::Rtc(e.to_string()))?;
    Ok(me)
}

/// One client peer connection.
pub struct ClientPeer {
    rtc: RTCPeerConnection,
    local: SocketAddr,
    state: RTCPeerConnectionState,
}

impl ClientPeer {
    /// A peer whose one host candidate is `local` (the address of the caller's socket).
    pub fn new(local: SocketAddr, now: Instant) -> Result<Self, LoadError> {
        let mut rtc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(SettingEngineBuilder::new().build())
            .with_media_engine(media_engine()?)
            .with_interceptor_registry(Registry::new())
            .build(now)?;
        callrelay_media::add_host_candidates(&mut rtc, &[local])
            .map_err(|e| LoadError::Rtc(e.to_string()))?;
        Ok(Self {
            rtc,
            local,
            state: RTCPeerConnectionState::New,
        })
    }

    /// Adds a track to send; `stream_id` becomes the msid stream id.
    pub fn add_track(
        &mut self,
        kind: Kind,
        ssrc: u32,
        stream_id: &str,
        track_id: &str,
    ) -> Result<(), LoadError> {
        let track = MediaStreamTrack::new(
            stream_id.to_owned(),
            track_id.to_owned(),
            track_id.to_owned(),
            match kind {
                Kind::Audio => RtpCodecKind::Audio,
                Kind::Video => RtpCodecKind::Video,
            },
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec(kind),
                ..Default::default()
            }],
        );
        self.rtc.add_track(track)?;
        Ok(())
    }

    /// Creates and applies an offer (to publish); returns its SDP.
    pub fn create_offer(&mut self, now: Instant) -> Result<String, LoadError> {
        let offer = self.rtc.create_offer(None)?;
        self.rtc.set_local_description(now, offer)?;
        self.local_sdp()
    }

    /// Applies the answer to our offer.
    pub fn apply_answer(&mut self, now: Instant, sdp: String) -> Result<(), LoadError> {
        let answer = RTCSessionDescription::answer(sdp)?;
        self.rtc.set_remote_description(now, answer)?;
        Ok(())
    }

    /// Applies a remote offer (the SFU's subscribe offer) and returns our answer's SDP.
    pub fn answer(&mut self, now: Instant, offer_sdp: String) -> Result<String, LoadError> {
        let offer = RTCSessionDescription::offer(offer_sdp)?;
        self.rtc.set_remote_description(now, offer)?;
        let answer = self.rtc.create_answer(None)?;
        self.rtc.set_local_description(now, answer)?;
        self.local_sdp()
    }

    fn local_sdp(&self) -> Result<String, LoadError> {
        self.rtc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| LoadError::Rtc("no local description".into()))
    }

    /// Feeds one datagram received from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<(), LoadError> {
        self.rtc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        })?;
        Ok(())
    }

    /// The next datagram to send: (destination, bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.rtc
            .poll_write()
            .map(|m| (m.transport.peer_addr, m.message))
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.rtc.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), LoadError> {
        self.rtc.handle_timeout(now)?;
        Ok(())
    }

    /// Drains the core's events and returns the connection state.
    pub fn poll_state(&mut self) -> RTCPeerConnectionState {
        while let Some(ev) = self.rtc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = ev {
                self.state = s;
            }
        }
        self.state
    }

    pub fn is_connected(&self) -> bool {
        self.state == RTCPeerConnectionState::Connected
    }

    pub fn is_failed(&self) -> bool {
        matches!(
            self.state,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
        )
    }

    /// The next decrypted RTP packet received (RTCP and the rest are dropped here).
    pub fn poll_rtp(&mut self) -> Option<Packet> {
        while let Some(msg) = self.rtc.poll_read() {
            if let RTCMessage::RtpPacket(_, p) = msg.message {
                return Some(p);
            }
        }
        None
    }

    /// Queues an RTP packet of one of our tracks (chosen by its SSRC) for sending; the
    /// protected datagram comes out of [`ClientPeer::poll_transmit`].
    pub fn send_rtp(&mut self, now: Instant, packet: Packet) -> Result<(), LoadError> {
        self.rtc.handle_write(TaggedRTCMessage {
            now,
            message: RTCMessage::RtpPacket(String::new(), packet),
        })?;
        Ok(())
    }

    /// The underlying connection (e.g. to close it).
    pub fn rtc(&mut self) -> &mut RTCPeerConnection {
        &mut self.rtc
    }
}
