//! Several media workers (shards) on the one UDP port, with real WebRTC peers over loopback.

mod common;

use std::time::Duration;

use callrelay_media::route::shard_of_room;
use common::*;

const WORKERS: usize = 2;

/// A room name that lives on `shard`.
fn room_on(shard: usize) -> String {
    (0..)
        .map(|i| format!("consult-{i}"))
        .find(|room| shard_of_room(room, WORKERS) == shard)
        .expect("some room hashes to every shard")
}

/// One room on each worker, each with a publisher and a subscriber: every subscriber receives
/// its own room's stream, complete and in order, and nothing of the other room; the gauges sum
/// both workers' shares; after everyone leaves nothing is left on either worker.
///
/// The kernel spreads the clients' datagrams over the workers' sockets by source address, so
/// with four clients some of them arrive on the socket of the worker that does not own their
/// room and must be handed over (STUN by the worker named in the ufrag, DTLS and SRTP by the
/// address that worker announced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_each_worker_relays_and_leaves_nothing_behind() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let sig = Signaling::start_with(|c| c.workers = WORKERS).await;
        let sfu = sig.sfu.clone();
        assert_eq!(sfu.workers(), WORKERS);
        let rooms = [room_on(0), room_on(1)];

        let mut publishers = Vec::new();
        let mut subscribers = Vec::new();
        for (i, room) in rooms.iter().enumerate() {
            let sub = Subscriber::new(&format!("sub-{i}"), &sig).await;
            sfu.join(room, &sub.id).await.unwrap();
            let mut publ = Publisher::new(&format!("pub-{i}"), 0x1000 + i as u32).await;
            publ.publish_in(&sfu, room, None).await;
            publ.wait_connected().await;
            publ.start_sending(Duration::from_millis(5));
            publishers.push(publ);
            subscribers.push(sub);
        }

        for (i, sub) in subscribers.iter().enumerate() {
            let own = format!("pub-{i}");
            eventually(
                "200 packets of its own room",
                Duration::from_secs(20),
                || sub.received_from(&own).len() >= 200,
            )
            .await;
            assert_consecutive(&sub.received_from(&own), &own);
            let other = format!("pub-{}", 1 - i);
            assert!(
                sub.received_from(&other).is_empty(),
                "{} received the other room's stream",
                sub.id
            );
        }
        assert_eq!(
            sig.metric("callrelay_sfu_peer_connections", None),
            4.0,
            "each worker adds its own connections to the gauge"
        );
        let stats = sfu.stats().await.unwrap();
        assert_eq!((stats.rooms, stats.peer_connections), (2, 4));

        for (i, room) in rooms.iter().enumerate() {
            publishers[i].stop_sending();
            sfu.leave(room, &publishers[i].id).await.unwrap();
            sfu.leave(room, &subscribers[i].id).await.unwrap();
        }
        assert_eq!(sfu.stats().await.unwrap(), Default::default());
        assert_eq!(sig.metric("callrelay_sfu_peer_connections", None), 0.0);
        sfu.shutdown().await;
    })
    .await
    .expect("test exceeded its time limit");
}
