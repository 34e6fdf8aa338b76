//! The per-packet forwarding path of `callrelay-media` in isolation: one publisher packet fanned
//! out to 1, 10 and 100 subscribers through the SFU's own code — `forward_copy` (header
//! rewrite, marshal, SRTP protect with the connection's context, hand-off to the socket) on
//! subscribe connections built exactly as the media loop builds them and connected (ICE-lite,
//! DTLS-SRTP) to in-memory client peers.
//!
//! `cargo bench --bench forwarding`. Groups (time per publisher packet; the throughput column is
//! subscriber-packets per second):
//! * `sfu_core`: rewrite + marshal + SRTP, datagrams discarded (CPU of the path alone);
//! * `sfu_core_udp`: the same plus a real `sendto` per copy on loopback (to a socket nobody
//!   reads, so the kernel drops it after delivery);
//! * `floor_srtp` / `floor_srtp_udp`: the floor — rewrite SSRC/sequence, marshal, protect with a
//!   bare `rtc::srtp` context of the same profile (AEAD_AES_128_GCM), and the same hand-off.
//!
//! `FORWARD_SUBSCRIBERS=1,10,100` picks the fan-outs.

use std::collections::VecDeque;
use std::hint::black_box;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use callrelay_load::peer::{ClientPeer, Kind, VP8_PT, codec};
use callrelay_media::bench::{
    CopyScratch, CopyTo, SendSide, Vp8Numbering, forward_copy, subscribe_connection,
};
use callrelay_media::forward::{ExtIdMap, PayloadTypeMap, Rewriter};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtp::header::{EXTENSION_PROFILE_ONE_BYTE, Extension, Header};
use rtc::rtp::packet::Packet;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::sdp::extmap::{ABS_SEND_TIME_URI, TRANSPORT_CC_URI};
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

const SFU: &str = "127.0.0.1:50000";
/// The publisher's abs-send-time id (forwarded, remapped to the subscriber's).
const PUB_ABS_SEND_TIME: u8 = 3;

/// One subscriber of the fan-out: the SFU's connection and what the media loop keeps for it.
struct Sub {
    rtc: RTCPeerConnection,
    rewriter: Rewriter,
    vp8: Vp8Numbering,
    send_side: SendSide,
}

fn tagged(now: Instant, local: SocketAddr, peer: SocketAddr, data: &[u8]) -> TaggedBytesMut {
    TaggedBytesMut {
        now,
        transport: TransportContext {
            local_addr: local,
            peer_addr: peer,
            ecn: None,
            transport_protocol: TransportProtocol::UDP,
        },
        message: BytesMut::from(data),
    }
}

/// `n` SFU subscribe connections, each carrying one VP8 track, negotiated with and connected
/// to an in-memory client peer (datagrams passed by hand, no sockets).
fn connected_subscribers(n: usize) -> Vec<Sub> {
    let sfu: SocketAddr = SFU.parse().expect("addr");
    let now = Instant::now();
    let mut pairs = Vec::new();
    for i in 0..n {
        let mut rtc = subscribe_connection(&[sfu], now).expect("subscribe connection");
        let out_ssrc = 0x5000_0000 + i as u32;
        let track = MediaStreamTrack::new(
            "publisher".into(),
            "video".into(),
            "publisher-video".into(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(out_ssrc),
                    ..Default::default()
                },
                codec: codec(Kind::Video),
                ..Default::default()
            }],
        );
        let sender = rtc.add_track(track).expect("add_track");
        let offer = rtc.create_offer(None).expect("offer");
        rtc.set_local_description(now, offer).expect("local");
        let offer_sdp = rtc.local_description().expect("sdp").sdp;
        let client_addr = SocketAddr::from(([127, 0, 0, 1], 20_000 + i as u16));
        let mut client = ClientPeer::new(client_addr, now).expect("client");
        let answer = client.answer(now, offer_sdp).expect("answer");
        rtc.set_remote_description(now, RTCSessionDescription::answer(answer).expect("sdp"))
            .expect("remote");
        // What the media loop's configure_down_tracks learns from the negotiated parameters.
        let params = {
            let mut sender = rtc.rtp_sender(sender).expect("sender");
            sender.get_parameters().clone()
        };
        let mut pts = PayloadTypeMap::new();
        let pt = params
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("video/VP8"))
            .map(|c| c.payload_type)
            .expect("VP8 negotiated");
        pts.set(VP8_PT, pt);
        let mut exts = ExtIdMap::new();
        if let Some(h) = params
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|h| h.uri == ABS_SEND_TIME_URI)
        {
            exts.set(PUB_ABS_SEND_TIME, h.id as u8);
        }
        let mut rewriter =
            Rewriter::new(out_ssrc, 90_000, rand::random(), rand::random(), pts, exts);
        rewriter.transport_cc_id = params
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|h| h.uri == TRANSPORT_CC_URI)
            .map(|h| h.id as u8)
            .expect("transport-cc negotiated");
        let send_side = SendSide::new();
        pairs.push((
            Sub {
                rtc,
                rewriter,
                vp8: Vp8Numbering::default(),
                send_side,
            },
            client,
            client_addr,
            false,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while pairs.iter().any(|p| !p.3) {
        assert!(
            Instant::now() < deadline,
            "in-memory connections did not connect"
        );
        let now = Instant::now();
        for (sub, client, client_addr, connected) in pairs.iter_mut() {
            while let Some(out) = sub.rtc.poll_write() {
                let _ = client.handle_datagram(now, sfu, &out.message);
            }
            while let Some((_, d)) = client.poll_transmit() {
                let _ = sub.rtc.handle_read(tagged(now, sfu, *client_addr, &d));
            }
            if sub.rtc.poll_timeout().is_some_and(|t| t <= now) {
                let _ = sub.rtc.handle_timeout(now);
            }
            if client.poll_timeout().is_some_and(|t| t <= now) {
                let _ = client.handle_timeout(now);
            }
            client.poll_state();
            while let Some(ev) = sub.rtc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                    RTCPeerConnectionState::Connected,
                ) = ev
                {
                    *connected = true;
                }
            }
            while sub.rtc.poll_read().is_some() {}
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    pairs.into_iter().map(|p| p.0).collect()
}

/// A 1,100-byte VP8 packet with one forwarded header extension, like a browser's.
fn publisher_packet() -> Packet {
    Packet {
        header: Header {
            version: 2,
            payload_type: VP8_PT,
            sequence_number: 1,
            timestamp: 90_000,
            ssrc: 0x1234_5678,
            extension: true,
            extension_profile: EXTENSION_PROFILE_ONE_BYTE,
            extensions: vec![Extension {
                id: PUB_ABS_SEND_TIME,
                payload: Bytes::from_static(&[1, 2, 3]),
            }],
            ..Default::default()
        },
        payload: Bytes::from(vec![0x10; 1_100]),
    }
}

/// A loopback socket nobody reads (a tiny receive buffer: the kernel drops what does not fit)
/// and a socket to send to it from.
fn blackhole() -> (UdpSocket, UdpSocket, SocketAddr) {
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let _ = nix::sys::socket::setsockopt(&sink, nix::sys::socket::sockopt::RcvBuf, &4096);
    let addr = sink.local_addr().expect("addr");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    tx.set_nonblocking(true).expect("nonblocking");
    (sink, tx, addr)
}

struct FloorSub {
    ctx: Context,
    ssrc: u32,
    seq_offset: u16,
}

fn floor_subscribers(n: usize) -> Vec<FloorSub> {
    let profile = ProtectionProfile::AeadAes128Gcm;
    let provider = rtc::crypto::default_provider().expect("crypto");
    (0..n)
        .map(|i| {
            let key: Vec<u8> = (0..profile.key_len()).map(|_| rand::random()).collect();
            let salt: Vec<u8> = (0..profile.salt_len()).map(|_| rand::random()).collect();
            FloorSub {
                ctx: Context::new(&key, &salt, profile, None, None, provider.crypto())
                    .expect("srtp"),
                ssrc: 0x6000_0000 + i as u32,
                seq_offset: rand::random(),
            }
        })
        .collect()
}

fn fanouts() -> Vec<usize> {
    std::env::var("FORWARD_SUBSCRIBERS")
        .unwrap_or_else(|_| "1,10,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn bench_forwarding(c: &mut Criterion) {
    let (_sink, tx, sink_addr) = blackhole();
    let epoch = Instant::now();
    for n in fanouts() {
        let mut subs = connected_subscribers(n);
        let mut floor = floor_subscribers(n);
        let mut packet = publisher_packet();
        let mut group = c.benchmark_group(format!("forward_{n}"));
        group.throughput(Throughput::Elements(n as u64));
        group.measurement_time(Duration::from_secs(4));
        group.warm_up_time(Duration::from_secs(1));
        group.sample_size(30);

        let mut copy_scratch = CopyScratch::default();
        let mut out = VecDeque::new();
        let mut pacing_updated = epoch;
        for (name, udp) in [("sfu_core", false), ("sfu_core_udp", true)] {
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    packet.header.sequence_number = packet.header.sequence_number.wrapping_add(1);
                    packet.header.timestamp = packet.header.timestamp.wrapping_add(3_000);
                    let now = Instant::now();
                    let now_us = now.duration_since(epoch).as_micros() as u64;
                    // The loop's housekeeping re-aims each pacer every 100 ms.
                    if now.duration_since(pacing_updated) >= Duration::from_millis(100) {
                        pacing_updated = now;
                        for s in subs.iter_mut() {
                            s.send_side.update_pacing_rate(now_us);
                        }
                    }
                    let mut sent = 0usize;
                    for s in subs.iter_mut() {
                        let to = CopyTo {
                            rewriter: &mut s.rewriter,
                            strip_red: None,
                            vp8: Some(&mut s.vp8),
                            rtc: &mut s.rtc,
                            send_side: &mut s.send_side,
                        };
                        let paced =
                            forward_copy(to, &packet, now, now_us, &mut copy_scratch, &mut out);
                        sent += usize::from(paced.is_some());
                        // What the pacer holds back leaves on a later iteration, as in the loop.
                        s.send_side.release(now, now_us, &mut out);
                    }
                    for t in out.drain(..) {
                        if udp {
                            let _ = tx.send_to(&t.bytes, sink_addr);
                        } else {
                            black_box(t);
                        }
                    }
                    assert_eq!(sent, n, "every subscriber got its copy");
                })
            });
        }

        let mut scratch = Vec::with_capacity(1_500);
        for (name, udp) in [("floor_srtp", false), ("floor_srtp_udp", true)] {
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    packet.header.sequence_number = packet.header.sequence_number.wrapping_add(1);
                    let mut h = packet.header.clone();
                    let src_seq = h.sequence_number;
                    for f in floor.iter_mut() {
                        h.ssrc = f.ssrc;
                        h.sequence_number = src_seq.wrapping_add(f.seq_offset);
                        scratch.clear();
                        scratch.resize(h.marshal_size(), 0);
                        let _ = h.marshal_to(&mut scratch);
                        scratch.extend_from_slice(&packet.payload);
                        let d = f
                            .ctx
                            .encrypt_rtp_with_header(&scratch, &h)
                            .expect("protect");
                        if udp {
                            let _ = tx.send_to(&d, sink_addr);
                        } else {
                            black_box(&d);
                        }
                    }
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_forwarding);
criterion_main!(benches);
