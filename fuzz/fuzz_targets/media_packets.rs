//! What the SFU parses out of datagrams after the demultiplexer, and its own code that acts on
//! the result. The input is a script of datagrams, `[op] [len: u16 BE] [len bytes]`, through
//! one publisher track and one subscriber of it; each datagram goes where its first byte sends
//! it (RFC 7983, the demultiplexer's `classify`):
//!
//! * STUN: rtc's STUN decoder (the ICE agent's) and the demultiplexer's USERNAME scan;
//! * DTLS: a DTLS server endpoint of rtc configured as a WebRTC peer connection's (the SFU
//!   answers, so it is the DTLS server), fed every DTLS datagram of the script from one address;
//! * RTP/RTCP (as they are after SRTP): an RTP packet goes the forwarding path — the track's
//!   retransmission cache, the subscriber's `Rewriter` (SSRC, payload type, numbering, header
//!   extension ids) and `CopyScratch::marshal`; an RTCP compound packet is decoded and its NACKs
//!   answered as the SFU does (sequence numbers mapped back, cache, retransmission header).
//!
//! `op & 1` pauses the rewriter first (a new segment), `op >> 1` advances the clock (ms).
//! Checked: no panic; every copy the SFU would send parses as RTP with the subscriber's SSRC,
//! the payload it was given, and, for a retransmission, the sequence number that was NACKed.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use callrelay_media::demux::{Class, classify, stun_local_ufrag};
use callrelay_media::forward::{CopyScratch, ExtIdMap, PayloadTypeMap, Rewriter};
use callrelay_media::rtx_cache::RtxCache;
use libfuzzer_sys::fuzz_target;
use rtc::dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig};
use rtc::dtls::crypto::Certificate;
use rtc::dtls::endpoint::Endpoint;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp::packet::Packet;
use rtc::shared::TransportProtocol;
use rtc::shared::marshal::Unmarshal;
use rtc::stun::message::Message;

const OUT_SSRC: u32 = 0x5EED_0001;

/// The DTLS server side of a WebRTC peer connection, as rtc's DTLS transport configures it.
static DTLS_SERVER: LazyLock<Arc<HandshakeConfig>> = LazyLock::new(|| {
    let provider = rtc::crypto::default_provider().expect("crypto provider");
    let certificate =
        Certificate::generate_self_signed(vec!["callrelay".to_owned()], provider.crypto())
            .expect("certificate");
    Arc::new(
        ConfigBuilder::default()
            .with_crypto_provider(provider)
            .with_certificates(vec![certificate])
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            .with_insecure_skip_verify(true)
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .build(false, None)
            .expect("DTLS server config"),
    )
});

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A subscriber that negotiated every payload type (renumbered) and some header extensions,
/// some renumbered past the one-byte range, some dropped.
fn rewriter() -> Rewriter {
    let mut pts = PayloadTypeMap::new();
    for pt in 0..128u8 {
        pts.set(pt, (pt + 7) % 128);
    }
    let mut exts = ExtIdMap::new();
    for id in 1..=255u8 {
        exts.set(id, [0, id, id.saturating_add(20)][usize::from(id % 3)]);
    }
    Rewriter::new(OUT_SSRC, 90_000, 65_500, u32::MAX - 10_000, pts, exts)
}

/// The copy in `scratch` must be RTP the subscriber can read.
fn check_copy(scratch: &CopyScratch, payload: &[u8], seq: Option<u16>) {
    let copy = Packet::unmarshal(&mut scratch.bytes.as_slice()).unwrap_or_else(|e| {
        panic!(
            "the SFU would send unparsable RTP ({e}): {:02x?}",
            scratch.bytes
        )
    });
    assert_eq!(copy.header.ssrc, OUT_SSRC);
    assert_eq!(&copy.payload[..], payload, "payload changed in the copy");
    if let Some(seq) = seq {
        assert_eq!(
            copy.header.sequence_number, seq,
            "retransmission renumbered"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rewriter = rewriter();
    let mut cache = RtxCache::new(64);
    let mut scratch = CopyScratch::default();
    let mut media_ssrc = None;
    let mut dtls = Endpoint::new(
        SocketAddr::from(([127, 0, 0, 1], 50_000)),
        TransportProtocol::UDP,
        Some(Arc::clone(&DTLS_SERVER)),
    );
    let client = SocketAddr::from(([192, 0, 2, 7], 40_000));
    let mut now_us = 0u64;

    let mut rest = data;
    while let [op, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        if op & 1 != 0 {
            rewriter.pause();
        }
        now_us += u64::from(op >> 1) * 1_000;
        let now = *EPOCH + Duration::from_micros(now_us);

        match classify(datagram) {
            Class::Stun => {
                let _ = stun_local_ufrag(datagram);
                let _ = Message::new().unmarshal_binary(datagram);
            }
            Class::Dtls => {
                let _ = dtls.read(now, client, None, BytesMut::from(datagram));
                while dtls.poll_transmit().is_some() {}
                let _ = dtls.handle_timeout(client, now);
                while dtls.poll_transmit().is_some() {}
            }
            // After SRTP, the core tells RTCP from RTP by the payload-type byte (RFC 5761).
            Class::Rtp if !rtc::shared::util::is_rtcp(datagram) => {
                let Ok(packet) = Packet::unmarshal(&mut Bytes::copy_from_slice(datagram)) else {
                    continue;
                };
                cache.insert(&packet);
                media_ssrc = Some(packet.header.ssrc);
                if rewriter.rewrite_into(&packet.header, now_us, &mut scratch.header)
                    && scratch.marshal(&packet.payload)
                {
                    check_copy(&scratch, &packet.payload, None);
                    rewriter.count_sent(packet.payload.len());
                }
            }
            Class::Rtp => {
                let Ok(rtcp) = rtc::rtcp::packet::unmarshal(&mut Bytes::copy_from_slice(datagram))
                else {
                    continue;
                };
                let _ = rewriter.sender_report(now_us, now_us);
                let Some(media_ssrc) = media_ssrc else {
                    continue;
                };
                for p in &rtcp {
                    let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() else {
                        continue;
                    };
                    for out_seq in nack.nacks.iter().flat_map(|pair| pair.packet_list()) {
                        let Some(src_seq) = rewriter.source_seq(out_seq) else {
                            continue;
                        };
                        let Some(original) = cache.get(media_ssrc, src_seq) else {
                            continue;
                        };
                        if rewriter
                            .rewrite_retransmission_into(&original.header, &mut scratch.header)
                            && scratch.marshal(&original.payload)
                        {
                            check_copy(&scratch, &original.payload, Some(out_seq));
                        }
                    }
                }
            }
            Class::Other => {}
        }
    }
});
