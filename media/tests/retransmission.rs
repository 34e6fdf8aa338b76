//! Retransmissions under a NACK flood, with real WebRTC peers over loopback UDP.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};

const LIMIT: Duration = Duration::from_secs(90);

/// Packets the publisher sends per second (one every 5 ms), 100 payload octets each.
const PUBLISH_EVERY: Duration = Duration::from_millis(5);
/// The flood: a NACK every 4 ms (250/s) for 1.5 s, each naming the last 136 sequence numbers
/// the client received twice over (eight full-bitmask FCIs, repeated), plus 17 it never got.
const FLOOD_EVERY: Duration = Duration::from_millis(4);
const FLOOD_FOR: Duration = Duration::from_millis(1_500);

/// The SFU's budget (media/src/rtx_cache.rs): retransmitted octets ≤ half of the octets
/// forwarded to that subscriber over the last ~1 s window, plus a burst. The test checks it
/// with margins for what it cannot see exactly (RTP header octets, window alignment).
const BUDGET_RATIO: f64 = 0.5;
/// The SFU's 12,000-octet burst is counted in RTP octets; in datagram octets (the 10-octet
/// SRTP tag more per 118-octet packet) that is about 13,000.
const BURST_OCTETS: f64 = 13_100.0;
/// The shortest interval between two retransmissions of one packet (the RTT clamp's floor).
const MIN_RTT_WINDOW: Duration = Duration::from_millis(20);

/// One subscriber floods the SFU with NACKs for everything it has just received (repeated
/// FCIs, full bitmasks, hundreds of NACKs per second): what the SFU sends it in answer stays
/// within the retransmission budget (relative to what it forwards to that subscriber), no
/// packet is resent more than once per round-trip window, and the retransmission metrics
/// count what was sent and what was suppressed. Another subscriber in the room is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_flood_is_answered_within_the_budget() {
    tokio::time::timeout(LIMIT, async {
        let sig = Signaling::start().await;
        let sfu = sig.sfu.clone();
        // mallory's datagrams pass a proxy that logs every RTP packet sent to her (their
        // headers are in the clear): what the SFU sent, not what her stack chose to deliver.
        let proxy = LossyProxy::start(sfu.local_addr(), 0).await;
        sig.route_through("mallory", &proxy);
        let mallory = Subscriber::new("mallory", &sig).await;
        let bob = Subscriber::new("bob", &sig).await;
        sfu.join(ROOM, "mallory").await.unwrap();
        sfu.join(ROOM, "bob").await.unwrap();

        let mut publ = Publisher::new("pub", 0x0BAD_F00D).await;
        publ.publish(&sfu).await;
        publ.wait_connected().await;
        publ.start_sending(PUBLISH_EVERY);
        for s in [&mallory, &bob] {
            eventually(
                "400 packets at a subscriber",
                Duration::from_secs(20),
                || s.received_from("pub").len() >= 400,
            )
            .await;
        }
        let track = mallory.state.remote_tracks.lock().unwrap()[0].clone();
        let ssrc = mallory.received_from("pub")[0].ssrc;

        let flood_start = Instant::now();
        let mut nacks_sent = 0u32;
        let mut seqs_named = 0u64;
        let mut tick = tokio::time::interval(FLOOD_EVERY);
        while flood_start.elapsed() < FLOOD_FOR {
            tick.tick().await;
            let highest = {
                let wire = proxy.media.lock().unwrap();
                wire.iter().rev().find(|r| r.ssrc == ssrc).map(|r| r.seq)
            };
            let Some(highest) = highest else { continue };
            // 136 sequence numbers up to the highest received, each named twice, and 17 the
            // SFU never sent.
            let first = highest.wrapping_sub(135);
            let mut nacks: Vec<NackPair> = (0..8u16)
                .map(|i| NackPair {
                    packet_id: first.wrapping_add(i * 17),
                    lost_packets: 0xFFFF,
                })
                .collect();
            nacks.extend_from_within(..);
            nacks.push(NackPair {
                packet_id: highest.wrapping_add(1_000),
                lost_packets: 0xFFFF,
            });
            seqs_named += 17 * nacks.len() as u64;
            let nack = TransportLayerNack {
                sender_ssrc: 1,
                media_ssrc: ssrc,
                nacks,
            };
            if track.write_rtcp(vec![Box::new(nack)]).await.is_ok() {
                nacks_sent += 1;
            }
        }
        let flood_end = Instant::now();
        // Let what was sent during the flood arrive.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let settled = Instant::now();

        // First appearance of a sequence number = the forwarded copy; later ones = resent.
        let rx: Vec<WireRtp> = proxy
            .media
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.ssrc == ssrc)
            .copied()
            .collect();
        let mut copies: HashMap<u16, Vec<Instant>> = HashMap::new();
        let (mut forwarded, mut forwarded_octets) = (0u64, 0u64);
        let (mut forwarded_before, mut forwarded_before_octets) = (0u64, 0u64);
        let (mut resent, mut resent_octets) = (0u64, 0u64);
        for r in &rx {
            let seen = copies.entry(r.seq).or_default();
            let first = seen.is_empty();
            seen.push(r.at);
            let octets = r.len as u64;
            if r.at < flood_start {
                if first && r.at >= flood_start - Duration::from_secs(2) {
                    forwarded_before += 1;
                    forwarded_before_octets += octets;
                }
                continue;
            }
            if first {
                forwarded += 1;
                forwarded_octets += octets;
            } else {
                resent += 1;
                resent_octets += octets;
            }
        }
        let worst_per_seq = copies.values().map(|c| c.len() - 1).max().unwrap_or(0);
        // Between two retransmissions of one packet (the forwarded copy may be followed at
        // once by the first retransmission: the flood names packets as soon as they arrive).
        let min_gap = copies
            .values()
            .filter(|c| c.len() > 2)
            .flat_map(|c| c[1..].windows(2).map(|w| w[1] - w[0]))
            .min();
        eprintln!(
            "flood: {nacks_sent} NACKs in {:?} naming {seqs_named} sequence numbers; mallory \
             received {forwarded} forwarded ({forwarded_octets} B) and {resent} resent \
             ({resent_octets} B) packets from the flood's start to {:?} after its end; \
             {forwarded_before} forwarded in the 2 s before; most copies of one packet: {}; \
             shortest gap between two retransmissions of one packet: {min_gap:?}",
            flood_end - flood_start,
            settled - flood_end,
            worst_per_seq + 1,
        );
        assert!(
            nacks_sent >= 200,
            "the flood was a flood ({nacks_sent} NACKs)"
        );

        // The budget: half of what mallory was forwarded over the window (the flood and the
        // half-second after it, plus up to two seconds of credit from before), plus the burst.
        // Octets here are whole datagrams (the SFU counts RTP packets without the SRTP tag,
        // a constant few octets more per packet on both sides).
        let budget =
            BUDGET_RATIO * (forwarded_octets + forwarded_before_octets) as f64 + BURST_OCTETS;
        assert!(
            (resent_octets as f64) <= budget,
            "resent {resent_octets} B ({resent} packets) > budget {budget:.0} B: \
             {forwarded_octets} B forwarded during the flood, {forwarded_before_octets} B before"
        );
        assert!(
            resent > 0,
            "NACKs for packets in the cache are still answered"
        );

        // Once per round-trip window: over the flood, a packet can be resent at most once per
        // 20 ms (the floor of the RTT clamp) — with one extra for arrival jitter.
        let per_window = (settled - flood_start).as_millis() / MIN_RTT_WINDOW.as_millis() + 1;
        assert!(
            (worst_per_seq as u128) <= per_window,
            "a packet was resent {worst_per_seq} times in {:?}",
            settled - flood_start
        );

        // The shortest gap is printed, not asserted: the proxy's task stamps a datagram when it
        // reads it, and on a loaded machine a starved task reads two datagrams queued 20 ms
        // apart in the same microsecond (seen: 29 µs while builds held both cores). The rule
        // itself, once per round trip, is asserted on exact times in rtx_cache's unit tests,
        // and here by the count per window above.

        // The metrics: what was resent, what was held back and why.
        eventually(
            "retransmission metrics flushed",
            Duration::from_secs(2),
            || {
                sig.metric(
                    "callrelay_rtp_retransmissions_total",
                    Some(("kind", "video")),
                ) >= resent as f64
            },
        )
        .await;
        let counted = sig.metric(
            "callrelay_rtp_retransmissions_total",
            Some(("kind", "video")),
        );
        let suppressed = |reason| {
            sig.metric(
                "callrelay_rtp_retransmissions_suppressed_total",
                Some(("reason", reason)),
            )
        };
        eprintln!(
            "metrics: retransmissions {counted}, suppressed budget {} too_recent {} not_cached {}",
            suppressed("budget"),
            suppressed("too_recent"),
            suppressed("not_cached")
        );
        assert!(
            counted <= resent as f64 + 50.0,
            "the SFU counted {counted} retransmissions, mallory received {resent}"
        );
        assert!(suppressed("budget") > 0.0, "the budget held some back");
        assert!(
            suppressed("too_recent") > 0.0,
            "repeated requests within the RTT held back"
        );
        assert!(
            suppressed("not_cached") > 0.0,
            "sequence numbers never sent are not resent"
        );
        assert_eq!(
            sig.metric(
                "callrelay_rtp_retransmissions_total",
                Some(("kind", "audio"))
            ),
            0.0,
            "the series of every kind exists from the start"
        );
        assert!(
            sig.metric("callrelay_rtcp_nack_total", Some(("direction", "in")))
                >= f64::from(nacks_sent) * 0.9,
            "every NACK is counted"
        );

        // The other subscriber got every packet and nothing twice.
        let bob_rx = bob.received_from("pub");
        assert_consecutive(&bob_rx, "bob");

        publ.stop_sending();
        for p in ["pub", "mallory", "bob"] {
            sfu.leave(ROOM, p).await.unwrap();
        }
        sfu.shutdown().await;
    })
    .await
    .expect("test exceeded its time limit");
}

/// One NACK that names 68 recent packets twice over (four full-bitmask FCIs, repeated) and
/// one of them five more times in FCIs of its own: each of the 68 is resent once — duplicates
/// in a NACK count once — with its payload, and a second identical NACK right after it (well
/// within any round trip) resends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_requests_in_a_nack_are_resent_once() {
    tokio::time::timeout(LIMIT, async {
        let sig = Signaling::start().await;
        let sfu = sig.sfu.clone();
        let proxy = LossyProxy::start(sfu.local_addr(), 0).await;
        sig.route_through("mallory", &proxy);
        let mallory = Subscriber::new("mallory", &sig).await;
        sfu.join(ROOM, "mallory").await.unwrap();
        let mut publ = Publisher::new("pub", 0x0BAD_F00D).await;
        publ.publish(&sfu).await;
        publ.wait_connected().await;
        publ.start_sending(PUBLISH_EVERY);
        eventually("400 packets at mallory", Duration::from_secs(20), || {
            mallory.received_from("pub").len() >= 400
        })
        .await;
        let track = mallory.state.remote_tracks.lock().unwrap()[0].clone();
        let ssrc = mallory.received_from("pub")[0].ssrc;

        let wire_len = || proxy.media.lock().unwrap().len();
        let resent_since = |from: usize| -> Vec<WireRtp> {
            let wire = proxy.media.lock().unwrap();
            let mut seen: std::collections::HashSet<u16> =
                wire[..from].iter().map(|r| r.seq).collect();
            wire[from..]
                .iter()
                .filter(|r| r.ssrc == ssrc && !seen.insert(r.seq))
                .copied()
                .collect()
        };
        let nack = |highest: u16| {
            let first = highest.wrapping_sub(80);
            let mut nacks: Vec<NackPair> = (0..4u16)
                .map(|i| NackPair {
                    packet_id: first.wrapping_add(i * 17),
                    lost_packets: 0xFFFF,
                })
                .collect();
            nacks.extend_from_within(..);
            for _ in 0..5 {
                nacks.push(NackPair {
                    packet_id: first.wrapping_add(3),
                    lost_packets: 0,
                });
            }
            TransportLayerNack {
                sender_ssrc: 1,
                media_ssrc: ssrc,
                nacks,
            }
        };
        let highest = {
            let wire = proxy.media.lock().unwrap();
            wire.iter().rev().find(|r| r.ssrc == ssrc).unwrap().seq
        };
        let mark = wire_len();
        track
            .write_rtcp(vec![Box::new(nack(highest))])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        track
            .write_rtcp(vec![Box::new(nack(highest))])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let resent = resent_since(mark);
        let mut distinct: Vec<u16> = resent.iter().map(|r| r.seq).collect();
        distinct.sort_unstable();
        distinct.dedup();
        eprintln!(
            "two NACKs naming 68 packets (13 FCIs, 141 entries each): {} datagrams resent, {} distinct",
            resent.len(),
            distinct.len()
        );
        assert_eq!(distinct.len(), 68, "every packet named is resent");
        assert_eq!(resent.len(), 68, "each once");
        publ.stop_sending();
        sfu.shutdown().await;
    })
    .await
    .expect("test exceeded its time limit");
}
