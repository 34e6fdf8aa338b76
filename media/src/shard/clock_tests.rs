//! The shard driven through its sans-IO API on a manual clock: a client peer of the same core
//! (in memory, no socket) connects to it, then falls silent; thirty seconds of liveness pass in
//! a few milliseconds of test time, proving that the shard's notion of time is only the `now`
//! it is given.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::{mpsc, oneshot};

use super::Shard;
use crate::metrics::Metrics;
use crate::{Command, MediaConfig, MediaError, MediaEvent, PcKind, SfuStats};

const SFU: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50_000);
const CLIENT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40_000);
const ROOM: &str = "room";

/// A shard and one client peer joined by an in-memory link that can be cut, on a clock that
/// moves only when the test says so.
struct World {
    now: Instant,
    shard: Shard,
    client: RTCPeerConnection,
    events: mpsc::UnboundedReceiver<MediaEvent>,
    link_up: bool,
}

impl World {
    fn new(liveness_timeout: Duration) -> Self {
        let now = Instant::now();
        let (metrics, _) = Metrics::register(&prometheus::Registry::new()).unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let config = MediaConfig {
            bind: SFU,
            liveness_timeout,
            ..Default::default()
        };
        let shard = Shard::new(
            config,
            vec![SFU],
            metrics,
            tx,
            StdRng::seed_from_u64(7),
            now,
            Duration::from_secs(1_700_000_000),
        )
        .unwrap();
        let mut client = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(SettingEngineBuilder::new().build())
            .with_media_engine(crate::peer::media_engine().unwrap())
            .with_interceptor_registry(Registry::new())
            .build(now)
            .unwrap();
        crate::add_host_candidates(&mut client, &[CLIENT]).unwrap();
        let codec = crate::peer::codecs()
            .into_iter()
            .find(|(_, k)| *k == RtpCodecKind::Video)
            .unwrap()
            .0
            .rtp_codec;
        client
            .add_track(MediaStreamTrack::new(
                "ghost".into(),
                "v".into(),
                "v".into(),
                RtpCodecKind::Video,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(0x6057),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            ))
            .unwrap();
        Self {
            now,
            shard,
            client,
            events,
            link_up: true,
        }
    }

    fn command<T>(
        &mut self,
        make: impl FnOnce(crate::Reply<T>) -> Command,
    ) -> Result<T, MediaError> {
        let (tx, mut rx) = oneshot::channel();
        self.shard.handle_command(self.now, make(tx));
        self.pump();
        rx.try_recv().expect("answered at once")
    }

    fn publish(&mut self) {
        let offer = self.client.create_offer(None).unwrap();
        self.client.set_local_description(self.now, offer).unwrap();
        let sdp = self.client.local_description().unwrap().sdp;
        let answer = self
            .command(|reply| Command::Publish {
                room: ROOM.into(),
                participant: "ghost".into(),
                sdp,
                reply,
            })
            .unwrap();
        let answer = RTCSessionDescription::answer(answer).unwrap();
        self.client
            .set_remote_description(self.now, answer)
            .unwrap();
        self.pump();
    }

    /// Moves datagrams both ways until neither side has anything to send.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(t) = self.shard.poll_transmit() {
                moved = true;
                if self.link_up && t.destination == CLIENT {
                    let _ = self.client.handle_read(TaggedBytesMut {
                        now: self.now,
                        transport: TransportContext {
                            local_addr: CLIENT,
                            peer_addr: SFU,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: t.bytes,
                    });
                }
            }
            while let Some(w) = self.client.poll_write() {
                moved = true;
                if self.link_up && w.transport.peer_addr == SFU {
                    self.shard.handle_receive(self.now, CLIENT, SFU, &w.message);
                }
            }
            while self.client.poll_event().is_some() {}
            while self.client.poll_read().is_some() {}
            if !moved {
                break;
            }
        }
    }

    /// Advances the clock to `until`, stopping at every timeout of the shard and the client.
    fn advance_to(&mut self, until: Instant) {
        loop {
            // Each step moves the clock on by at least a millisecond.
            let next = [self.shard.poll_timeout(), self.client.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(until)
                .max(self.now + Duration::from_millis(1))
                .min(until);
            self.now = next;
            if self.shard.poll_timeout().is_some_and(|t| t <= self.now) {
                self.shard.handle_timeout(self.now);
            }
            if self.client.poll_timeout().is_some_and(|t| t <= self.now) {
                let _ = self.client.handle_timeout(self.now);
            }
            self.pump();
            if self.now >= until {
                break;
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        self.advance_to(self.now + by);
    }

    fn drain_events(&mut self) -> Vec<MediaEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    fn stats(&mut self) -> SfuStats {
        self.command(|reply| Command::Stats { reply }).unwrap()
    }
}

/// The relay test `silent_participant_times_out`, on the manual clock: a publisher connects
/// (ICE, DTLS) through the shard's API, vanishes from the network, and is closed once the
/// liveness timeout (30 s, the default) has passed on the shard's clock — not before — while the
/// test itself takes well under a second of wall-clock time per simulated half minute.
#[test]
fn silent_participant_times_out_on_a_manual_clock() {
    let wall = Instant::now();
    let timeout = Duration::from_secs(30);
    let mut w = World::new(timeout);
    w.publish();
    w.advance(Duration::from_secs(3));
    let connected = w.drain_events().into_iter().any(|e| {
        matches!(e, MediaEvent::ConnectionState { pc: PcKind::Publish, ref state, .. }
            if state == "connected")
    });
    assert!(
        connected,
        "the publish connection connects on the manual clock"
    );
    // Alive while the link is up: consent checks keep it open long past the timeout.
    w.advance(timeout + Duration::from_secs(5));
    assert_eq!(w.stats().peer_connections, 1);

    // Vanish: nothing crosses the link any more.
    w.link_up = false;
    let cut = w.now;
    w.advance(timeout - Duration::from_secs(2));
    let early: Vec<_> = w
        .drain_events()
        .into_iter()
        .filter(|e| matches!(e, MediaEvent::ParticipantClosed { .. }))
        .collect();
    assert!(early.is_empty(), "closed before the timeout: {early:?}");
    w.advance_to(cut + timeout + Duration::from_secs(2));
    let closed: Vec<String> = w
        .drain_events()
        .into_iter()
        .filter_map(|e| match e {
            MediaEvent::ParticipantClosed {
                participant,
                reason,
                ..
            } if participant == "ghost" => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(closed, ["consent-timeout"], "closed once, as silent");
    assert_eq!(w.stats(), SfuStats::default(), "nothing left");
    assert!(
        wall.elapsed() < timeout,
        "a manual clock: {:?} of wall-clock time",
        wall.elapsed()
    );
}
