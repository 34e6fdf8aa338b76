//! The SFU with real WebRTC peers over loopback UDP.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use common::*;

const LIMIT: Duration = Duration::from_secs(60);

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test exceeded its time limit");
}

/// Publisher → SFU → two subscribers: every packet, in order, with its payload; the msid
/// stream id is the publisher's participant id; a late third subscriber triggers a keyframe
/// request to the publisher; a NACK is answered from the SFU's cache; leaving removes the
/// track from the others with a renegotiation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_between_real_peers() {
    bounded(async {
        let sig = Signaling::start().await;
        let sfu = sig.sfu.clone();

        // alice's path drops one media packet (the 200th), once.
        let proxy = LossyProxy::start(sfu.local_addr(), 200).await;
        sig.route_through("alice", &proxy);
        let alice = Subscriber::new("alice", &sig).await;
        let bob = Subscriber::new("bob", &sig).await;
        sfu.join(ROOM, "alice").await.unwrap();
        sfu.join(ROOM, "bob").await.unwrap();
        assert!(sig.offers_for("alice").is_empty(), "nothing to receive yet: no offer");

        let mut publ = Publisher::new("pub-socket-id", 0x1234_5678).await;
        publ.publish(&sfu).await;
        publ.wait_connected().await;
        publ.start_sending(Duration::from_millis(5));

        // The track shows up at both subscribers with the publisher's id as msid.
        for s in [&alice, &bob] {
            eventually("300 packets at a subscriber", Duration::from_secs(20), || {
                s.received_from("pub-socket-id").len() >= 300
            })
            .await;
        }
        let offer = sig.offers_for("alice").last().cloned().unwrap();
        assert!(
            offer.contains("msid:pub-socket-id "),
            "msid stream id is the publisher's id:\n{offer}"
        );
        assert!(sig.offers_for("pub-socket-id").is_empty(), "own tracks are never sent back");

        // Keyframe requested when a subscriber starts receiving.
        eventually("PLI at publisher", Duration::from_secs(5), || {
            publ.plis.load(Ordering::SeqCst) >= 1
        })
        .await;

        // Every packet, in order, payload intact (counter in the payload, continuous seq).
        let rx = bob.received_from("pub-socket-id");
        assert_consecutive(&rx, "bob");
        assert_ne!(rx[0].ssrc, 0x1234_5678, "SSRC is rewritten per subscriber");
        assert_ne!(
            alice.received()[0].ssrc,
            bob.received()[0].ssrc,
            "each subscriber has its own SSRC"
        );

        // A late third subscriber: a keyframe request reaches the publisher for it.
        tokio::time::sleep(Duration::from_millis(700)).await; // past the 500 ms throttle
        let plis_before = publ.plis.load(Ordering::SeqCst);
        let carol = Subscriber::new("carol", &sig).await;
        sfu.join(ROOM, "carol").await.unwrap();
        eventually("carol receives", Duration::from_secs(20), || {
            carol.received_from("pub-socket-id").len() >= 50
        })
        .await;
        eventually("PLI for the late joiner", Duration::from_secs(5), || {
            publ.plis.load(Ordering::SeqCst) > plis_before
        })
        .await;
        assert_consecutive(&carol.received_from("pub-socket-id"), "carol");
        assert!(sig.metric("callrelay_rtcp_pli_total", Some(("direction", "out"))) >= 2.0);

        // A packet lost between the SFU and alice: her NACK is answered from the SFU's cache.
        let lost = proxy.dropped.lock().unwrap().expect("the proxy dropped a packet");
        eventually("the lost packet reaches alice", Duration::from_secs(5), || {
            alice
                .received_from("pub-socket-id")
                .iter()
                .any(|r| (r.ssrc, r.seq) == lost)
        })
        .await;
        let got = alice.received_from("pub-socket-id");
        let at = got
            .iter()
            .position(|r| (r.ssrc, r.seq) == lost)
            .expect("the lost packet was retransmitted to alice");
        let rtx = &got[at];
        let prev = got.iter().find(|r| r.seq == lost.1.wrapping_sub(1)).unwrap();
        assert_eq!(rtx.counter, prev.counter + 1, "retransmission carries the right payload");
        assert!(
            got[at - 1].counter > rtx.counter,
            "it arrived late, i.e. it was a retransmission"
        );
        let mut counters: Vec<u32> = got.iter().map(|r| r.counter).collect();
        counters.sort_unstable();
        assert!(
            counters.windows(2).all(|w| w[1] == w[0] + 1),
            "alice ends up with every packet"
        );
        eventually("nack metric flushed", Duration::from_secs(2), || {
            sig.metric("callrelay_rtcp_nack_total", Some(("direction", "in"))) >= 1.0
                && sig.metric("callrelay_rtp_retransmissions_total", Some(("kind", "video")))
                    >= 1.0
        })
        .await;

        // Metrics are flushed in batches but do arrive.
        eventually("forwarded metric", Duration::from_secs(2), || {
            sig.metric("callrelay_rtp_packets_forwarded_total", Some(("kind", "video"))) >= 650.0
        })
        .await;
        assert!(sig.metric("callrelay_rtp_packets_received_total", Some(("kind", "video"))) >= 300.0);
        assert!(sig.metric("callrelay_forward_latency_seconds", None) >= 650.0);
        let mean_us = sig.metric("callrelay_forward_latency_seconds_sum", None) * 1e6
            / sig.metric("callrelay_forward_latency_seconds", None);
        eprintln!("mean forward latency (socket read -> copy written): {mean_us:.1} us");
        assert_eq!(sig.metric("callrelay_sfu_tracks", Some(("kind", "video"))), 1.0);
        assert_eq!(sig.metric("callrelay_sfu_peer_connections", None), 4.0);

        let stats = sfu.stats().await.unwrap();
        assert_eq!((stats.peer_connections, stats.video_tracks, stats.subscriptions), (4, 1, 3));

        // The publisher leaves: every subscriber is renegotiated without the track.
        publ.stop_sending();
        let offers_before = sig.offers_for("bob").len();
        sfu.leave(ROOM, "pub-socket-id").await.unwrap();
        eventually("renegotiation after leave", Duration::from_secs(5), || {
            sig.offers_for("bob").len() > offers_before
        })
        .await;
        let last = sig.offers_for("bob").last().cloned().unwrap();
        assert!(!last.contains("msid:pub-socket-id "), "track gone:\n{last}");
        assert!(sig.events.lock().unwrap().iter().any(|e| matches!(e,
            callrelay_media::MediaEvent::TrackUnpublished { participant, .. } if participant == "pub-socket-id")));
        let stats = sfu.stats().await.unwrap();
        assert_eq!((stats.video_tracks, stats.subscriptions, stats.peer_connections), (0, 0, 3));

        for p in ["alice", "bob", "carol"] {
            sfu.leave(ROOM, p).await.unwrap();
        }
        let stats = sfu.stats().await.unwrap();
        assert_eq!(stats, callrelay_media::SfuStats::default());
        sfu.shutdown().await;
    })
    .await;
}

/// The SFU writes the sender reports for the copies it protects itself: about once a second
/// per subscribed track, on the SSRC the subscriber receives, counting what was sent, with an
/// RTP time that continues the forwarded timestamps and an NTP time that is the wall clock;
/// the subscriber's receiver reports on them give the SFU round-trip times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_reports_describe_the_forwarded_stream() {
    bounded(async {
        let sig = Signaling::start().await;
        let (mut publ, sub) = streaming_room(&sig, "pub-1", "sub-1").await;
        eventually("three sender reports", Duration::from_secs(10), || {
            sub.state.sender_reports.lock().unwrap().len() >= 3
        })
        .await;
        let reports = sub.state.sender_reports.lock().unwrap().clone();
        let ssrc = sub.received_from("pub-1")[0].ssrc;
        for r in &reports {
            let sr = &r.report;
            assert_eq!(sr.ssrc, ssrc, "about the SSRC the subscriber receives");
            let counted = i64::from(sr.packet_count) - r.packets_before as i64;
            assert!(
                counted.abs() <= 3,
                "{} packets reported, {} received before the report",
                sr.packet_count,
                r.packets_before
            );
            assert_eq!(sr.octet_count, sr.packet_count * 100, "payload octets");
            let last = r.last_timestamp.expect("packets arrived before the report");
            let ahead = sr.rtp_time.wrapping_sub(last);
            assert!(
                ahead <= 90_000,
                "RTP time {} continues the stream (last packet {last})",
                sr.rtp_time
            );
            let ntp_unix_secs = (sr.ntp_time >> 32) as i64 - 2_208_988_800;
            let at_secs = r.at.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
            assert!(
                (ntp_unix_secs - at_secs).abs() <= 2,
                "NTP time is the wall clock"
            );
        }
        for w in reports.windows(2) {
            assert!(w[1].report.packet_count > w[0].report.packet_count);
            let gap = w[1].at.duration_since(w[0].at).unwrap_or_default();
            assert!(
                gap >= Duration::from_millis(500),
                "not more than about one a second"
            );
        }
        eventually(
            "round-trip times from receiver reports",
            Duration::from_secs(10),
            || sig.metric("callrelay_rtt_seconds", None) >= 1.0,
        )
        .await;
        publ.stop_sending();
        sig.sfu.shutdown().await;
    })
    .await;
}

/// A connected publisher sending into ROOM and one subscriber receiving it.
async fn streaming_room(
    sig: &Signaling,
    publisher: &str,
    subscriber: &str,
) -> (Publisher, Subscriber) {
    let sub = Subscriber::new(subscriber, sig).await;
    sig.sfu.join(ROOM, subscriber).await.unwrap();
    let mut publ = Publisher::new(publisher, 0x0BAD_CAFE).await;
    publ.publish(&sig.sfu).await;
    publ.wait_connected().await;
    publ.start_sending(Duration::from_millis(5));
    eventually("subscriber receives", Duration::from_secs(20), || {
        sub.received_from(publisher).len() >= 20
    })
    .await;
    (publ, sub)
}

/// Hostile SDP, candidates and datagrams get errors or are dropped and counted; the SFU does
/// not panic and the room next door keeps streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_without_disturbing_others() {
    use callrelay_media::{CandidateInit, MediaError, PcKind};
    bounded(async {
        let sig = Signaling::start().await;
        let sfu = sig.sfu.clone();
        let (mut publ, sub) = streaming_room(&sig, "pub", "sub").await;
        let base = sfu.stats().await.unwrap();

        let good = Publisher::new("x", 7)
            .await
            .pc
            .create_offer(None)
            .await
            .unwrap()
            .sdp;
        let hostile = [
            String::new(),
            "v=0".to_owned(),
            "garbage\r\n\r\n\0\u{7f}".to_owned(),
            "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
                .to_owned(),
            good.replace("a=ice-ufrag", "a=x-ufrag"),
            good.replace("a=fingerprint", "a=x-fingerprint"),
            good.replace("a=mid:", "a=x:"),
            good.replace("m=video 9", "m=video 99999999999999"),
            good.replace("96", "999"),
            "m=".repeat(100_000),
            good.chars().rev().collect(),
        ];
        for (i, sdp) in hostile.into_iter().enumerate() {
            let r = sfu.publish("other-room", &format!("evil-{i}"), sdp).await;
            assert!(r.is_err(), "hostile SDP #{i} was accepted");
        }
        assert_eq!(
            sfu.stats().await.unwrap(),
            base,
            "refused offers leave nothing behind"
        );

        // Unknown room / participant, no offer outstanding, bad ids.
        assert!(matches!(
            sfu.subscribe_answer("nope", "nobody", good.clone()).await,
            Err(MediaError::UnknownRoom(_))
        ));
        assert!(matches!(
            sfu.subscribe_answer(ROOM, "nobody", good.clone()).await,
            Err(MediaError::UnknownParticipant { .. })
        ));
        assert!(matches!(
            sfu.subscribe_answer(ROOM, "pub", good.clone()).await,
            Err(MediaError::InvalidState(_))
        ));
        assert!(matches!(
            sfu.join("", "a").await,
            Err(MediaError::InvalidId(_))
        ));
        assert!(matches!(
            sfu.join("r", &"a".repeat(10_000)).await,
            Err(MediaError::InvalidId(_))
        ));
        // An answer that is not SDP for a pending offer.
        sfu.join(ROOM, "lurker").await.unwrap(); // gets an offer (there is a track)
        assert!(matches!(
            sfu.subscribe_answer(ROOM, "lurker", "not sdp".into()).await,
            Err(MediaError::InvalidSdp(_))
        ));
        // Candidates: garbage on a live connection, and for a closed one.
        let garbage = CandidateInit {
            candidate: "candidate:1 1 udp x y z".into(),
            ..Default::default()
        };
        assert!(
            sfu.add_candidate(ROOM, "pub", PcKind::Publish, Some(garbage.clone()))
                .await
                .is_err()
        );
        sfu.add_candidate(ROOM, "pub", PcKind::Publish, None)
            .await
            .unwrap();
        sfu.leave(ROOM, "lurker").await.unwrap();
        assert!(matches!(
            sfu.add_candidate(ROOM, "lurker", PcKind::Subscribe, Some(garbage.clone()))
                .await,
            Err(MediaError::ConnectionClosed)
        ));
        assert!(matches!(
            sfu.leave(ROOM, "lurker").await,
            Err(MediaError::ConnectionClosed)
        ));
        assert!(matches!(
            sfu.add_candidate(ROOM, "ghost", PcKind::Subscribe, None)
                .await,
            Err(MediaError::UnknownParticipant { .. })
        ));

        // Garbage datagrams at the media port: dropped and counted.
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut x: u32 = 0x1234_5678;
        for i in 0..2_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = (x % 1_400) as usize + 1;
            let mut d: Vec<u8> = (0..len)
                .map(|j| (x.rotate_left(j as u32 % 32) & 0xff) as u8)
                .collect();
            d[0] = (i % 256) as u8; // every first byte: STUN, DTLS, RTP ranges and the rest
            if i % 7 == 0 && len >= 20 {
                d[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]); // looks like STUN
            }
            sock.send_to(&d, sfu.local_addr()).await.unwrap();
            if i % 50 == 0 {
                // Do not overrun the socket buffer: loss there would not be the SFU's.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        eventually("drops counted", Duration::from_secs(5), || {
            sig.metric("callrelay_media_datagrams_dropped_total", None) >= 1_500.0
        })
        .await;
        assert!(
            sig.metric(
                "callrelay_media_datagrams_dropped_total",
                Some(("reason", "not_webrtc"))
            ) > 0.0
        );
        assert!(
            sig.metric(
                "callrelay_media_datagrams_dropped_total",
                Some(("reason", "malformed_stun"))
            ) > 0.0
        );

        // The room kept streaming throughout.
        let before = sub.received_from("pub").len();
        eventually("stream continues", Duration::from_secs(5), || {
            sub.received_from("pub").len() > before + 50
        })
        .await;
        // The flood may overrun socket buffers (ours or the clients'); NACKs repair that.
        eventually("no packet lost for good", Duration::from_secs(5), || {
            complete_up_to_slack(&sub.received_from("pub"), 20)
        })
        .await;
        assert_eq!(sfu.stats().await.unwrap(), base);
        publ.stop_sending();
        sfu.shutdown().await;
        assert!(matches!(sfu.stats().await, Err(MediaError::Stopped)));
    })
    .await;
}

/// A publisher with two tracks stops one by renegotiating (`removeTrack`: its m-section
/// becomes recvonly without msid): the subscriber is renegotiated without that track while the
/// other keeps flowing, and the stats and gauges count one track. Re-adding it publishes it
/// again once its RTP arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_stops_one_track_by_renegotiation() {
    bounded(async {
        let sig = Signaling::start().await;
        let sfu = sig.sfu.clone();
        let sub = Subscriber::new("sub", &sig).await;
        sfu.join(ROOM, "sub").await.unwrap();

        let state = std::sync::Arc::new(ClientState::default());
        let pc = client_pc(std::sync::Arc::clone(&state)).await;
        let cam_a = video_track("pub", "cam-a", 0xA1A1);
        let cam_b = video_track("pub", "cam-b", 0xB2B2);
        pc.add_track(
            cam_a.clone() as std::sync::Arc<dyn webrtc::media_stream::track_local::TrackLocal>
        )
        .await
        .unwrap();
        let sender_b = pc
            .add_track(
                cam_b.clone() as std::sync::Arc<dyn webrtc::media_stream::track_local::TrackLocal>
            )
            .await
            .unwrap();
        publish_pc(&sfu, &pc, "pub").await;
        let _a = send_counter(cam_a.clone(), 0xA1A1, 0, Duration::from_millis(5));
        let b = send_counter(cam_b.clone(), 0xB2B2, 1_000_000, Duration::from_millis(5));
        let from_a = |s: &Subscriber| {
            s.received_from("pub")
                .iter()
                .filter(|r| r.counter < 1_000_000)
                .count()
        };
        let from_b = |s: &Subscriber| {
            s.received_from("pub")
                .iter()
                .filter(|r| r.counter >= 1_000_000)
                .count()
        };
        eventually(
            "both tracks at the subscriber",
            Duration::from_secs(20),
            || from_a(&sub) >= 50 && from_b(&sub) >= 50,
        )
        .await;
        let stats = sfu.stats().await.unwrap();
        assert_eq!((stats.video_tracks, stats.subscriptions), (2, 2));
        let offers = sig.offers_for("sub").len();

        // Stop cam-b: removeTrack and renegotiate.
        b.send(()).ok();
        pc.remove_track(&sender_b).await.unwrap();
        let offer = publish_pc(&sfu, &pc, "pub").await;
        assert!(
            !offer.contains("cam-b"),
            "the re-offer no longer announces cam-b:\n{offer}"
        );
        eventually("subscriber renegotiated", Duration::from_secs(5), || {
            sig.offers_for("sub").len() > offers
        })
        .await;
        let last = sig.offers_for("sub").last().cloned().unwrap();
        assert!(last.contains("msid:pub cam-a"), "cam-a stays:\n{last}");
        assert!(!last.contains("msid:pub cam-b"), "cam-b is gone:\n{last}");
        let stats = sfu.stats().await.unwrap();
        assert_eq!((stats.video_tracks, stats.subscriptions), (1, 1));
        eventually("gauge flushed", Duration::from_secs(2), || {
            sig.metric("callrelay_sfu_tracks", Some(("kind", "video"))) == 1.0
        })
        .await;
        assert!(
            sig.events.lock().unwrap().iter().any(|e| matches!(e,
            callrelay_media::MediaEvent::TrackUnpublished { track_id, .. } if track_id == "cam-b"))
        );
        // cam-a keeps flowing.
        let a_before = from_a(&sub);
        eventually("cam-a still flows", Duration::from_secs(5), || {
            from_a(&sub) >= a_before + 50
        })
        .await;

        // cam-b comes back: published again when its RTP arrives.
        let offers = sig.offers_for("sub").len();
        pc.add_track(
            cam_b.clone() as std::sync::Arc<dyn webrtc::media_stream::track_local::TrackLocal>
        )
        .await
        .unwrap();
        publish_pc(&sfu, &pc, "pub").await;
        let _b = send_counter(cam_b.clone(), 0xB2B2, 2_000_000, Duration::from_millis(5));
        eventually("cam-b published again", Duration::from_secs(10), || {
            sig.offers_for("sub").last().is_some_and(|o| {
                sig.offers_for("sub").len() > offers && o.contains("msid:pub cam-b")
            })
        })
        .await;
        eventually("cam-b flows again", Duration::from_secs(20), || {
            sub.received_from("pub")
                .iter()
                .filter(|r| r.counter >= 2_000_000)
                .count()
                >= 20
        })
        .await;
        let stats = sfu.stats().await.unwrap();
        assert_eq!((stats.video_tracks, stats.subscriptions), (2, 2));
        sfu.shutdown().await;
    })
    .await;
}
