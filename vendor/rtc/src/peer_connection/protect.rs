//! callrelay patch — not in upstream rtc 0.21.1 (see vendor/rtc/CALLRELAY-PATCH.md).
//!
//! RTP the application protects itself, outside the handler pipeline. A forwarding server
//! writes one packet to many connections; through `handle_write`/`poll_write` every copy
//! crosses eight handlers and the interceptor chain, queued and moved at each step, which
//! costs several times the SRTP encryption itself.

use std::net::SocketAddr;

use bytes::BytesMut;
use shared::TransportProtocol;
use shared::error::Result;

use super::RTCPeerConnection;

impl RTCPeerConnection {
    /// Protects `packet` (one marshalled RTP packet whose parsed header is `header`) with this
    /// connection's outbound SRTP context and returns the datagram with the remote address and
    /// transport (UDP, or TCP for ICE-TCP) of the selected ICE candidate pair, or `Ok(None)`
    /// while DTLS-SRTP or ICE is not up yet.
    ///
    /// No interceptor sees the packet and no statistics count it: the caller takes over what
    /// the interceptors would have done for these packets (sender reports, for one).
    pub fn protect_rtp(
        &mut self,
        packet: &[u8],
        header: &rtp::Header,
    ) -> Result<Option<(BytesMut, SocketAddr, TransportProtocol)>> {
        let ctx = &mut self.pipeline_context;
        let Some(srtp) = ctx.srtp_handler_context.local_srtp_context.as_mut() else {
            return Ok(None);
        };
        let Some((local, remote)) = ctx
            .ice_handler_context
            .ice_transport
            .agent
            .get_selected_candidate_pair()
        else {
            return Ok(None);
        };
        let (to, transport) = (remote.addr(), local.network_type().to_protocol());
        Ok(Some((
            srtp.encrypt_rtp_with_header(packet, header)?,
            to,
            transport,
        )))
    }

    /// Sets the local ICE credentials the next ICE restart installs: one this side starts
    /// ([`RTCPeerConnection::restart_ice`], then an offer) or one the remote starts (a
    /// re-offer with new credentials, answered). The connection's current session keeps its
    /// credentials until then. Without this the restart reuses the configured credentials
    /// (`SettingEngineBuilder::with_ice_credentials`), which RFC 8839 §4.4.1.1.1 forbids and a
    /// remote answerer does not treat as a restart at all.
    pub fn set_ice_credentials_for_restart(&mut self, ufrag: String, pwd: String) {
        self.setting_engine.candidates.username_fragment = ufrag;
        self.setting_engine.candidates.password = pwd;
    }
}
