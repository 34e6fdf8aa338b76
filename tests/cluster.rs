//! Several nodes sharing a Redis and a PostgreSQL database (`cluster.redis_url`): the registry
//! of live nodes and of the node each room is pinned to, the node bus, `sfu-*` run on the room's
//! pinned node, and real `callrelay` processes joining, dying and leaving, and relaying a room
//! on one node for sockets on another.
//!
//! Needs Redis (`CALLRELAY_TEST_REDIS_URL`, e.g. redis://127.0.0.1:6379) and, for the processes,
//! PostgreSQL (`CALLRELAY_TEST_POSTGRES_URL`); without them each test says loudly that it
//! skipped. Each test has a Redis database of its own (one cluster per database), emptied first.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use callrelay::cluster::{Duty, NodeInfo, Registry};
use support::TestServer;

/// The test Redis, database `db` (emptied), or None after saying it skipped.
async fn redis_database(db: u8) -> Option<String> {
    let url = support::redis_database(db).await;
    if url.is_none() {
        support::skip(
            "the cluster tests",
            "CALLRELAY_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379)",
        );
    }
    url
}

fn node(id: &str) -> NodeInfo {
    NodeInfo {
        id: id.to_owned(),
        started_at: 0,
    }
}

/// Nodes "a" and "b" joined to the cluster of `url`, neither sending heartbeats on its own.
async fn nodes_a_and_b(url: &str, lease: Duration) -> (Arc<Registry>, Arc<Registry>) {
    let a = Registry::join(url, node("a"), lease)
        .await
        .expect("a joins");
    let b = Registry::join(url, node("b"), lease)
        .await
        .expect("b joins");
    (a, b)
}

async fn live_ids(registry: &Registry) -> Vec<(String, u64)> {
    registry
        .live_nodes()
        .await
        .expect("live nodes")
        .into_iter()
        .map(|n| (n.info.id, n.rooms))
        .collect()
}

#[tokio::test]
async fn rooms_go_to_the_least_loaded_live_node_and_leave_a_dead_one() {
    let Some(url) = redis_database(11).await else {
        return;
    };
    let lease = Duration::from_secs(2);
    let (a, b) = nodes_a_and_b(&url, lease).await;
    assert_eq!(
        live_ids(&b).await,
        [("a".to_owned(), 0), ("b".to_owned(), 0)]
    );

    // Least loaded first, ties by name; a pinned room stays where it is, whoever asks.
    assert_eq!(a.pin_room("r1").await.unwrap(), "a");
    assert_eq!(b.pin_room("r2").await.unwrap(), "b");
    assert_eq!(b.pin_room("r3").await.unwrap(), "a");
    assert_eq!(b.pin_room("r1").await.unwrap(), "a");
    assert_eq!(
        live_ids(&a).await,
        [("b".to_owned(), 1), ("a".to_owned(), 2)]
    );

    // Two nodes placing one new room at once agree.
    let (x, y) = tokio::join!(a.pin_room("r4"), b.pin_room("r4"));
    assert_eq!(x.unwrap(), y.unwrap());

    // a dies (no more heartbeats): once its lease runs out, b alone is live and a's rooms move
    // to b when next asked for; b's own heartbeat keeps b and its rooms.
    let pinned_to_a: Vec<&str> = {
        let mut rooms = Vec::new();
        for room in ["r1", "r3", "r4"] {
            if a.room_node(room).await.unwrap().as_deref() == Some("a") {
                rooms.push(room);
            }
        }
        rooms
    };
    assert!(pinned_to_a.contains(&"r1"));
    drop(a);
    let deadline = Instant::now() + lease * 3;
    while live_ids(&b).await.len() > 1 {
        assert!(Instant::now() < deadline, "a's lease did not run out");
        b.heartbeat().await.expect("b's heartbeat");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.heartbeat().await.expect("b's heartbeat");
    for room in &pinned_to_a {
        assert_eq!(b.pin_room(room).await.unwrap(), "b", "{room} moves to b");
    }
    assert_eq!(b.pin_room("r2").await.unwrap(), "b");
    assert_eq!(live_ids(&b).await, [("b".to_owned(), 4)]);

    // A room whose last member left is unpinned; a node that leaves takes its pins along.
    b.release_room("r2").await.unwrap();
    assert_eq!(b.room_node("r2").await.unwrap(), None);
    b.leave().await.unwrap();
    assert_eq!(b.room_node("r1").await.unwrap(), None);
    let c = Registry::join(&url, node("c"), lease)
        .await
        .expect("c joins");
    assert_eq!(live_ids(&c).await, [("c".to_owned(), 0)]);
}

#[tokio::test]
async fn one_live_node_at_a_time_does_a_duty() {
    let Some(url) = redis_database(14).await else {
        return;
    };
    let lease = Duration::from_secs(2);
    let (a, b) = nodes_a_and_b(&url, lease).await;
    assert!(a.lead(Duty::Webhooks).await.unwrap());
    assert!(!b.lead(Duty::Webhooks).await.unwrap());
    // Renewed by its holder before the lease runs out: still a's.
    tokio::time::sleep(a.renew_every()).await;
    assert!(a.lead(Duty::Webhooks).await.unwrap());
    assert!(!b.lead(Duty::Webhooks).await.unwrap());
    // A holder that dies keeps it only until its lease runs out...
    drop(a);
    let deadline = Instant::now() + lease * 2;
    while !b.lead(Duty::Webhooks).await.unwrap() {
        assert!(Instant::now() < deadline, "a dead node kept its duty");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...one that leaves hands it over at once.
    let c = Registry::join(&url, node("c"), lease)
        .await
        .expect("c joins");
    assert!(!c.lead(Duty::Webhooks).await.unwrap());
    b.leave().await.unwrap();
    assert!(c.lead(Duty::Webhooks).await.unwrap());
}

#[tokio::test]
async fn a_node_alone_in_its_cluster_pins_everything_to_itself() {
    let Some(url) = redis_database(12).await else {
        return;
    };
    let only = Registry::join(&url, node("only"), Duration::from_secs(2))
        .await
        .expect("join");
    for room in ["x", "y", "z"] {
        assert_eq!(only.pin_room(room).await.unwrap(), "only");
    }
    assert_eq!(only.heartbeat().await.unwrap(), 3);
}

/// The live nodes as node `server` reports them (`GET /api/admin/cluster`).
async fn cluster_view(server: &TestServer) -> (Option<String>, Vec<String>) {
    let token = server.token("ops", "Operator", "admin").await;
    let body: serde_json::Value = reqwest::Client::new()
        .get(server.url("/api/admin/cluster"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /api/admin/cluster")
        .json()
        .await
        .expect("json");
    let ids = body["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["id"].as_str().expect("id").to_owned())
        .collect();
    (body["node"].as_str().map(str::to_owned), ids)
}

async fn metric(server: &TestServer, name: &str) -> Option<f64> {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn nodes_find_each_other_and_forget_one_that_dies() {
    let Some(redis) = redis_database(13).await else {
        return;
    };
    let Some(pg) = support::postgres_url() else {
        return;
    };
    let db = support::fresh_postgres_database(&pg, "cluster").await;
    let lease = 3;
    let start = |id: &'static str| {
        let (redis, db) = (redis.clone(), db.clone());
        async move {
            TestServer::start(&[
                ("CALLRELAY_CLUSTER__REDIS_URL", &redis),
                ("CALLRELAY_CLUSTER__NODE_ID", id),
                ("CALLRELAY_CLUSTER__LEASE_SECS", &lease.to_string()),
                ("CALLRELAY_DATABASE__URL", &db),
            ])
            .await
        }
    };
    let one = start("one").await;
    let two = start("two").await;
    let mut three = start("three").await;
    let all = ["one", "three", "two"].map(str::to_owned).to_vec();
    for server in [&one, &two, &three] {
        let (node, mut ids) = cluster_view(server).await;
        ids.sort();
        assert_eq!(ids, all);
        assert!(node.is_some_and(|n| all.contains(&n)));
    }

    // Killed: gone from the others' view once its lease runs out, and from their gauge at
    // their next heartbeat.
    three.crash();
    let deadline = Instant::now() + Duration::from_secs(lease * 3);
    loop {
        let (_, ids) = cluster_view(&one).await;
        let gauge = metric(&one, "callrelay_cluster_nodes").await;
        if ids.len() == 2 && gauge == Some(2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a killed node is still listed ({ids:?}, gauge {gauge:?}) {} s after it died",
            lease * 3
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Stopped cleanly: gone at once.
    let mut two = two;
    assert!(two.stop(), "a node exits 0 after SIGTERM");
    let (_, ids) = cluster_view(&one).await;
    assert_eq!(ids, ["one"]);
    drop(one);
    support::drop_database(&pg, &db).await;
}

#[test]
fn a_cluster_node_refuses_the_embedded_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callrelay"))
        .env("CALLRELAY_CLUSTER__REDIS_URL", "redis://127.0.0.1:6379")
        .env("CALLRELAY_AUTH__JWT_SECRET", support::SECRET)
        .env("CALLRELAY_SERVER__DATA_DIR", dir.path())
        .env(
            "CALLRELAY_DATABASE__URL",
            format!("sqlite://{}/x.db?mode=rwc", dir.path().display()),
        )
        .output()
        .expect("run callrelay");
    assert!(!out.status.success(), "started on SQLite in cluster mode");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("database.url") && stderr.contains("postgres://"),
        "{stderr}"
    );
}

/// The shared documents' lock (`SharedRooms`): changes from two nodes at once are applied one
/// after the other, none lost; a write without the lock is refused and writes nothing; the
/// socket index follows the moves written with a document.
#[tokio::test]
async fn shared_documents_change_one_at_a_time_and_index_their_sockets() {
    use callrelay_signaling::{Doc, Place, SharedError, SharedLock, SharedStore, SocketMove};

    let Some(url) = redis_database(6).await else {
        return;
    };
    let (a, b) = nodes_a_and_b(&url, Duration::from_secs(5)).await;
    let stores: [Arc<dyn SharedStore>; 2] =
        [Arc::new(a.shared_rooms()), Arc::new(b.shared_rooms())];
    let doc = Doc::Consult("appt-1");
    let mut increments = Vec::new();
    for i in 0..40 {
        let store = stores[i % 2].clone();
        increments.push(tokio::spawn(async move {
            let (lock, value) = store.lock(doc).await.expect("locked");
            let n: u32 = value.map_or(0, |v| v.parse().expect("a number"));
            // Another node reading now would see the old value: the lock keeps it waiting.
            tokio::task::yield_now().await;
            store
                .write_unlock(doc, lock, Some((n + 1).to_string()), &[])
                .await
                .expect("written");
        }));
    }
    for task in increments {
        task.await.expect("no panic");
    }
    assert_eq!(stores[1].read(doc).await.unwrap().as_deref(), Some("40"));
    assert_eq!(stores[0].keys().await.unwrap(), ["appt-1"]);

    let forged = SharedLock {
        token: "not-the-lock".into(),
    };
    let refused = stores[0]
        .write_unlock(doc, forged, Some("0".into()), &[])
        .await;
    assert!(
        matches!(refused, Err(SharedError::LockLost(_))),
        "{refused:?}"
    );
    assert_eq!(stores[0].read(doc).await.unwrap().as_deref(), Some("40"));

    let moved = |socket: &str, place, entered| SocketMove {
        socket_id: socket.into(),
        place,
        entered,
    };
    let (lock, _) = stores[0].lock(doc).await.unwrap();
    let moves = [
        moved("s1", Place::Room, true),
        moved("s2", Place::Lobby, true),
    ];
    stores[0]
        .write_unlock(doc, lock, Some("41".into()), &moves)
        .await
        .unwrap();
    assert_eq!(
        stores[1].place_of("s1").await.unwrap(),
        (Some("appt-1".into()), None)
    );
    assert_eq!(
        stores[1].place_of("s2").await.unwrap(),
        (None, Some("appt-1".into()))
    );
    // A socket leaving one appointment is not unindexed from another it has entered since.
    let other = Doc::Consult("appt-2");
    let (lock, _) = stores[1].lock(other).await.unwrap();
    stores[1]
        .write_unlock(
            other,
            lock,
            Some("1".into()),
            &[moved("s1", Place::Room, true)],
        )
        .await
        .unwrap();
    let (lock, _) = stores[0].lock(doc).await.unwrap();
    let gone = [
        moved("s1", Place::Room, false),
        moved("s2", Place::Lobby, false),
    ];
    stores[0]
        .write_unlock(doc, lock, None, &gone)
        .await
        .unwrap();
    assert_eq!(
        stores[0].place_of("s1").await.unwrap(),
        (Some("appt-2".into()), None)
    );
    assert_eq!(stores[0].place_of("s2").await.unwrap(), (None, None));
    assert_eq!(stores[0].read(doc).await.unwrap(), None, "deleted");
    assert_eq!(stores[0].keys().await.unwrap(), ["appt-2"]);

    // Dead nodes: those whose lease ran out (or that never were).
    b.leave().await.unwrap();
    let dead = stores[0].dead_nodes(&["a", "b", "zz"]).await.unwrap();
    assert_eq!(
        dead,
        std::collections::HashSet::from(["b".to_owned(), "zz".to_owned()])
    );
}

// The node bus and `sfu-*` routing (src/cluster/bus.rs, src/cluster/relay.rs).

use std::sync::Mutex;

use async_trait::async_trait;
use callrelay::cluster::bus::{
    BusError, BusHandler, BusKey, BusOptions, Dropped, Envelope, Kind, NodeBus,
};
use callrelay::cluster::relay::{ClusterRelay, MediaNode, RelayCall, RelayReply, Tidied};
use callrelay_signaling::protocol::ErrorCode;
use callrelay_signaling::relay::PcKind;
use callrelay_signaling::{Relay, RelayError};
use serde_json::{Value, json};

const BUS_SECRET: &[u8] = b"the cluster's jwt secret";

/// A node's answers on the bus: who it is, who asked and what; every request kept.
struct Echo {
    node: &'static str,
    asked: Mutex<Vec<(String, Value)>>,
}

#[async_trait]
impl BusHandler for Echo {
    async fn handle(&self, from: &str, body: Value) -> Value {
        self.asked
            .lock()
            .unwrap()
            .push((from.to_owned(), body.clone()));
        json!({"node": self.node, "from": from, "echo": body})
    }
}

fn echo(node: &'static str) -> Arc<Echo> {
    Arc::new(Echo {
        node,
        asked: Mutex::new(Vec::new()),
    })
}

async fn bus(url: &str, node: &str, handler: Arc<dyn BusHandler>, timeout: Duration) -> NodeBus {
    NodeBus::start(
        url,
        node,
        BusKey::derive(BUS_SECRET),
        handler,
        BusOptions { timeout },
    )
    .await
    .expect("the bus starts")
}

fn unix_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

/// Publishes raw bytes on a channel, as anyone with access to the Redis could.
async fn publish_raw(url: &str, channel: &str, bytes: Vec<u8>) {
    let client = redis::Client::open(url).expect("a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(bytes)
        .query_async(&mut conn)
        .await
        .expect("PUBLISH");
}

/// Waits (2 s at most) until `bus` has dropped `count` messages for `reason`.
async fn dropped(bus: &NodeBus, reason: Dropped, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while bus.dropped(reason) < count {
        assert!(
            Instant::now() < deadline,
            "{} dropped {} messages as {}, not {count}",
            bus.node_id(),
            bus.dropped(reason),
            reason.as_str()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bus.dropped(reason), count, "{}", reason.as_str());
}

/// The node bus (one Redis database, emptied before each part).
#[tokio::test]
async fn the_node_bus() {
    let Some(url) = redis_database(10).await else {
        return;
    };
    answers_from_the_asked_node_and_ignores_forgeries(&url).await;
    let url = redis_database(10).await.expect("the same Redis");
    a_request_to_a_dead_or_silent_node_fails_quickly(&url).await;
}

async fn answers_from_the_asked_node_and_ignores_forgeries(url: &str) {
    let url = url.to_owned();
    let (echo_a, echo_b) = (echo("a"), echo("b"));
    let a = bus(&url, "a", echo_a.clone(), Duration::from_secs(2)).await;
    let b = bus(&url, "b", echo_b.clone(), Duration::from_secs(2)).await;
    assert_eq!(b.channel("b"), "callrelay-db10-node-bus:b");

    let answer = a.request("b", json!({"n": 1})).await.expect("b answers");
    assert_eq!(answer, json!({"node": "b", "from": "a", "echo": {"n": 1}}));
    let answer = b.request("a", json!({"n": 2})).await.expect("a answers");
    assert_eq!(answer, json!({"node": "a", "from": "b", "echo": {"n": 2}}));
    assert_eq!(echo_b.asked.lock().unwrap().len(), 1);

    let request = |at: i64, id: &str| Envelope {
        kind: Kind::Request,
        id: id.to_owned(),
        from: "a".to_owned(),
        to: "b".to_owned(),
        at,
        body: json!({"forged": true}),
    };
    // Signed with another secret, or not signed at all: dropped unread.
    let forged = BusKey::derive(b"not the cluster's secret").seal(&request(unix_ms(), "f1"));
    publish_raw(&url, &b.channel("b"), forged).await;
    dropped(&b, Dropped::BadMac, 1).await;
    let unsigned = serde_json::to_vec(&request(unix_ms(), "f2")).unwrap();
    publish_raw(&url, &b.channel("b"), unsigned).await;
    dropped(&b, Dropped::BadMac, 2).await;
    // Signed right but 60 s old: dropped too.
    let stale = BusKey::derive(BUS_SECRET).seal(&request(unix_ms() - 60_000, "f3"));
    publish_raw(&url, &b.channel("b"), stale).await;
    dropped(&b, Dropped::Stale, 1).await;
    // A genuine request sent twice is answered once (its reply, which a never asked for, is
    // dropped by a).
    let genuine = BusKey::derive(BUS_SECRET).seal(&request(unix_ms(), "g1"));
    publish_raw(&url, &b.channel("b"), genuine.clone()).await;
    publish_raw(&url, &b.channel("b"), genuine).await;
    dropped(&b, Dropped::Replayed, 1).await;
    dropped(&a, Dropped::Unmatched, 1).await;
    let asked: Vec<Value> = echo_b
        .asked
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| body.clone())
        .collect();
    assert_eq!(asked, [json!({"n": 1}), json!({"forged": true})]);

    // Still answering after all that.
    let answer = a.request("b", json!({"n": 3})).await.expect("b answers");
    assert_eq!(answer["echo"], json!({"n": 3}));
}

/// A node that takes requests and never answers.
struct Mute;

#[async_trait]
impl BusHandler for Mute {
    async fn handle(&self, _from: &str, _body: Value) -> Value {
        std::future::pending().await
    }
}

async fn a_request_to_a_dead_or_silent_node_fails_quickly(url: &str) {
    let url = url.to_owned();
    let a = bus(&url, "a", echo("a"), Duration::from_millis(500)).await;
    let b = bus(&url, "b", echo("b"), Duration::from_millis(500)).await;
    a.request("b", json!(1)).await.expect("b answers");
    drop(b);
    // As when its process dies: Redis sees its connection close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let err = a.request("b", json!(2)).await.expect_err("b is gone");
    assert!(matches!(err, BusError::NotListening { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_millis(400));

    let _mute = bus(&url, "mute", Arc::new(Mute), Duration::from_millis(500)).await;
    let started = Instant::now();
    let err = a.request("mute", json!(3)).await.expect_err("no answer");
    assert!(matches!(err, BusError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A node's "SFU": records every call; its publish answer names the node.
struct FakeSfu {
    node: &'static str,
    calls: Mutex<Vec<String>>,
}

impl FakeSfu {
    fn new(node: &'static str) -> Arc<Self> {
        Arc::new(Self {
            node,
            calls: Mutex::new(Vec::new()),
        })
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Relay for FakeSfu {
    async fn join(&self, room: &str, participant: &str) -> Result<(), RelayError> {
        self.record(format!("join {room} {participant}"));
        Ok(())
    }
    async fn publish(
        &self,
        room: &str,
        participant: &str,
        _: String,
    ) -> Result<String, RelayError> {
        self.record(format!("publish {room} {participant}"));
        Ok(format!("v=0 answer from {}", self.node))
    }
    async fn subscribe_answer(
        &self,
        room: &str,
        participant: &str,
        _: String,
    ) -> Result<(), RelayError> {
        self.record(format!("subscribe-answer {room} {participant}"));
        Ok(())
    }
    async fn add_candidate(
        &self,
        room: &str,
        participant: &str,
        pc: PcKind,
        _: Option<Value>,
    ) -> Result<(), RelayError> {
        self.record(format!("candidate {room} {participant} {pc:?}"));
        Ok(())
    }
    async fn leave(&self, room: &str, participant: &str) -> Result<(), RelayError> {
        self.record(format!("leave {room} {participant}"));
        Ok(())
    }
    async fn restart_ice(&self, room: &str, participant: &str) -> Result<(), RelayError> {
        self.record(format!("restart-ice {room} {participant}"));
        Ok(())
    }
    async fn set_video_size(
        &self,
        room: &str,
        participant: &str,
        publisher: &str,
        width: u32,
        height: u32,
    ) -> Result<(), RelayError> {
        self.record(format!(
            "video-size {room} {participant} {publisher} {width}x{height}"
        ));
        Ok(())
    }
    async fn room_stats(&self, room: &str) -> Result<Value, RelayError> {
        Ok(json!([{"room": room, "node": self.node}]))
    }
}

/// One in-process cluster node: its registry (with heartbeats), its fake SFU, its relay.
struct TestNode {
    registry: Arc<Registry>,
    sfu: Arc<FakeSfu>,
    media: Arc<MediaNode>,
    relay: ClusterRelay,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl TestNode {
    async fn start(url: &str, id: &'static str, lease: Duration) -> Self {
        let registry = Registry::join(url, node(id), lease).await.expect("joins");
        let gauge = prometheus::IntGauge::new("test_nodes", "live nodes").unwrap();
        let heartbeat = registry.keep_alive(gauge);
        let sfu = FakeSfu::new(id);
        let media = MediaNode::new(sfu.clone(), registry.clone());
        let bus = bus(url, id, media.clone(), Duration::from_secs(2)).await;
        let relay = ClusterRelay::new(media.clone(), registry.clone(), Arc::new(bus));
        TestNode {
            registry,
            sfu,
            media,
            relay,
            heartbeat,
        }
    }

    /// Dies: no more heartbeats, nothing listening.
    fn crash(self) {}
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// `sfu-*` routing between two in-process nodes (one Redis database, emptied before each part).
#[tokio::test]
async fn sfu_calls_across_nodes() {
    let Some(url) = redis_database(9).await else {
        return;
    };
    run_on_the_rooms_node_and_a_dead_nodes_room_moves_on_the_next_join(&url).await;
    let url = redis_database(9).await.expect("the same Redis");
    a_media_node_sends_joins_on_and_unpins_rooms_nobody_joined(&url).await;
}

async fn run_on_the_rooms_node_and_a_dead_nodes_room_moves_on_the_next_join(url: &str) {
    let url = url.to_owned();
    let lease = Duration::from_secs(2);
    let a = TestNode::start(&url, "a", lease).await;
    let b = TestNode::start(&url, "b", lease).await;

    // A new room goes to the least loaded node (ties by name), whoever asks.
    a.relay.join("r1", "p1").await.expect("join r1");
    b.relay.join("r2", "p2").await.expect("join r2");
    assert_eq!(
        a.registry.room_node("r1").await.unwrap().as_deref(),
        Some("a")
    );
    assert_eq!(
        a.registry.room_node("r2").await.unwrap().as_deref(),
        Some("b")
    );
    assert_eq!(a.sfu.calls(), ["join r1 p1"]);
    assert_eq!(b.sfu.calls(), ["join r2 p2"]);

    // Every call about r2 made on a runs on b's SFU, and b's answers come back.
    let answer = a.relay.publish("r2", "p3", "v=0 offer".into()).await;
    assert_eq!(answer.as_deref(), Ok("v=0 answer from b"));
    a.relay
        .add_candidate("r2", "p3", PcKind::Publish, None)
        .await
        .unwrap();
    a.relay
        .subscribe_answer("r2", "p3", "v=0 answer".into())
        .await
        .unwrap();
    a.relay.restart_ice("r2", "p3").await.unwrap();
    a.relay
        .set_video_size("r2", "p3", "p2", 640, 360)
        .await
        .unwrap();
    assert_eq!(
        a.relay.room_stats("r2").await.unwrap(),
        json!([{"room": "r2", "node": "b"}])
    );
    assert_eq!(
        b.sfu.calls(),
        [
            "join r2 p2",
            "publish r2 p3",
            "candidate r2 p3 Publish",
            "subscribe-answer r2 p3",
            "restart-ice r2 p3",
            "video-size r2 p3 p2 640x360",
        ]
    );
    assert_eq!(a.sfu.calls(), ["join r1 p1"]);
    assert_eq!(
        live_ids(&a.registry).await,
        [("a".to_owned(), 1), ("b".to_owned(), 1)]
    );

    // The room's last participant leaving unpins it on its node.
    a.relay.leave("r2", "p3").await.unwrap();
    assert_eq!(
        a.registry.room_node("r2").await.unwrap().as_deref(),
        Some("b")
    );
    b.relay.leave("r2", "p2").await.unwrap();
    assert_eq!(a.registry.room_node("r2").await.unwrap(), None);
    assert_eq!(
        live_ids(&a.registry).await,
        [("b".to_owned(), 0), ("a".to_owned(), 1)]
    );
    // Leaving a room pinned nowhere is nothing to do; its stats are empty.
    a.relay.leave("r2", "p2").await.unwrap();
    assert_eq!(a.relay.room_stats("r2").await.unwrap(), json!([]));
    let err = a
        .relay
        .set_video_size("r2", "p2", "p3", 0, 0)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);

    // r3 goes to b (the least loaded); then b dies.
    a.relay.join("r3", "p4").await.expect("join r3");
    assert_eq!(
        a.registry.room_node("r3").await.unwrap().as_deref(),
        Some("b")
    );
    let b_sfu = b.sfu.clone();
    b.crash();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Until its lease runs out the room stays b's, and calls fail at once, saying why.
    let started = Instant::now();
    let err = a
        .relay
        .publish("r3", "p4", "v=0 offer".into())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err}");
    assert!(err.message.contains("media node b"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    let deadline = Instant::now() + lease * 3;
    while live_ids(&a.registry).await.len() > 1 {
        assert!(Instant::now() < deadline, "b's lease did not run out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An ICE restart (the participant's connections failed with its node) reaches a live node,
    // which does not know the participant: `not_found`, start over. So it joins again, which
    // pins the room to a live node, and publishes anew there.
    let err = a.relay.restart_ice("r3", "p4").await.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
    a.relay.join("r3", "p4").await.expect("join r3 again");
    assert_eq!(
        a.registry.room_node("r3").await.unwrap().as_deref(),
        Some("a")
    );
    let answer = a.relay.publish("r3", "p4", "v=0 offer".into()).await;
    assert_eq!(answer.as_deref(), Ok("v=0 answer from a"));
    a.relay.join("r3", "p5").await.expect("join r3");
    assert_eq!(
        a.sfu.calls(),
        ["join r1 p1", "join r3 p4", "publish r3 p4", "join r3 p5"]
    );
    // Once joined, an ICE restart is one.
    a.relay.restart_ice("r3", "p5").await.unwrap();
    assert_eq!(
        a.sfu.calls().last().map(String::as_str),
        Some("restart-ice r3 p5")
    );
    assert_eq!(b_sfu.calls().last().map(String::as_str), Some("join r3 p4"));
    assert_eq!(
        a.media.participants().await,
        [
            ("r1".to_owned(), vec!["p1".to_owned()]),
            ("r3".to_owned(), vec!["p4".to_owned(), "p5".to_owned()])
        ]
    );
}

async fn a_media_node_sends_joins_on_and_unpins_rooms_nobody_joined(url: &str) {
    let url = url.to_owned();
    let lease = Duration::from_secs(5);
    let a = TestNode::start(&url, "a", lease).await;
    let b = TestNode::start(&url, "b", lease).await;

    // A join that reaches b for a room pinned to a meanwhile is sent on to a.
    assert_eq!(a.registry.pin_room("moved").await.unwrap(), "a");
    let call = RelayCall::Join {
        room: "moved".into(),
        participant: "p1".into(),
    };
    assert_eq!(
        b.media.run(call).await,
        RelayReply::Moved { node: "a".into() }
    );
    assert!(b.sfu.calls().is_empty());

    // A pin whose join never came (the asking node died first) goes at b's second tidy-up.
    assert_eq!(a.registry.pin_room("orphan").await.unwrap(), "b");
    assert_eq!(b.media.tidy().await.unwrap(), Tidied::default());
    let call = RelayCall::Join {
        room: "kept".into(),
        participant: "p2".into(),
    };
    assert_eq!(b.media.run(call).await, RelayReply::Done);
    assert_eq!(
        a.registry.room_node("kept").await.unwrap().as_deref(),
        Some("b")
    );
    assert_eq!(
        b.media.tidy().await.unwrap(),
        Tidied {
            released: 1,
            pinned_again: 0
        }
    );
    assert_eq!(a.registry.room_node("orphan").await.unwrap(), None);
    assert_eq!(
        a.registry.room_node("kept").await.unwrap().as_deref(),
        Some("b")
    );
    assert_eq!(b.media.tidy().await.unwrap(), Tidied::default());

    // A room with a participant here that lost its pin (b's heartbeats failed for a lease, say)
    // is pinned to b again at the next tidy-up.
    b.registry.release_room("kept").await.unwrap();
    assert_eq!(a.registry.room_node("kept").await.unwrap(), None);
    assert_eq!(
        b.media.tidy().await.unwrap(),
        Tidied {
            released: 0,
            pinned_again: 1
        }
    );
    assert_eq!(
        a.registry.room_node("kept").await.unwrap().as_deref(),
        Some("b")
    );

    // The SFU closing the room's last participant by itself (its connection failed) unpins it.
    b.media.participant_closed("kept", "p2").await;
    assert_eq!(a.registry.room_node("kept").await.unwrap(), None);
    assert!(b.media.participants().await.is_empty());
}

/// Creates and confirms an appointment of `doctor` on `server`; returns its id.
async fn appointment(server: &TestServer, doctor_token: &str, doctor: &str) -> String {
    let http = reqwest::Client::new();
    let appt: Value = http
        .post(server.url("/api/appointments"))
        .bearer_auth(doctor_token)
        .json(&json!({
            "patientId": "pat-1", "doctorId": doctor,
            "scheduledAt": "2030-01-01T09:00:00Z",
            "patientName": "Pat", "doctorName": "Doc",
        }))
        .send()
        .await
        .expect("POST /api/appointments")
        .error_for_status()
        .expect("appointment created")
        .json()
        .await
        .expect("json");
    let id = appt["id"].as_str().expect("an id").to_owned();
    http.post(server.url(&format!("/api/appointments/{id}/confirm")))
        .bearer_auth(doctor_token)
        .send()
        .await
        .expect("confirm")
        .error_for_status()
        .expect("confirmed");
    id
}

/// The rooms pinned to each live node, as `server` reports them.
async fn pinned_rooms(server: &TestServer) -> Vec<(String, u64)> {
    let token = server.token("ops", "Operator", "admin").await;
    let body: Value = reqwest::Client::new()
        .get(server.url("/api/admin/cluster"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /api/admin/cluster")
        .json()
        .await
        .expect("json");
    let mut nodes: Vec<(String, u64)> = body["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            let id = n["id"].as_str().expect("id").to_owned();
            (id, n["rooms"].as_u64().expect("rooms"))
        })
        .collect();
    nodes.sort();
    nodes
}

/// Publishes one video track from a client socket; returns the SFU's answer SDP.
async fn publish(sio: &callrelay_load::sio::SioClient, room: &str) -> Result<String, String> {
    use callrelay_load::peer::{ClientPeer, Kind as TrackKind};
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], support::free_udp_port()));
    let mut peer = ClientPeer::new(local, std::time::Instant::now()).expect("a client peer");
    peer.add_track(TrackKind::Video, 0x1234_5679, sio.sid(), "camera")
        .expect("a track");
    let offer = peer
        .create_offer(std::time::Instant::now())
        .expect("an offer");
    let ack = sio
        .call(
            "sfu-publish",
            &json!({"roomId": room, "sdp": offer}),
            Duration::from_secs(10),
        )
        .await
        .expect("sfu-publish acked");
    match ack["sdp"].as_str() {
        Some(sdp) => Ok(sdp.to_owned()),
        None => Err(ack.to_string()),
    }
}

/// The ports of the host candidates in `sdp`.
fn candidate_ports(sdp: &str) -> Vec<u16> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .filter_map(|c| c.split_whitespace().nth(5)?.parse().ok())
        .collect()
}

/// Publishes a live video track from `sio` (a client peer that connects to the SFU that
/// answered and sends VP8-payload RTP, so that the track opens in the room) until `events`, the
/// events of another socket of the room, bring an `sfu-subscribe-offer`. Returns the publish
/// answer's SDP and the offer's.
async fn publish_live_until_offered(
    sio: &callrelay_load::sio::SioClient,
    room: &str,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<callrelay_load::sio::Event>,
) -> (String, String) {
    use callrelay_load::payload::{self, Stamp};
    use callrelay_load::peer::{ClientPeer, Kind as TrackKind, VP8_PT};
    use rtc::rtp::header::Header;
    use rtc::rtp::packet::Packet;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("a UDP socket");
    let local = socket.local_addr().expect("its address");
    let mut peer = ClientPeer::new(local, std::time::Instant::now()).expect("a client peer");
    let ssrc = 0x2468_ace1;
    peer.add_track(TrackKind::Video, ssrc, sio.sid(), "camera")
        .expect("a track");
    let offer = peer
        .create_offer(std::time::Instant::now())
        .expect("an offer");
    let ack = sio
        .call_ok(
            "sfu-publish",
            &json!({"roomId": room, "sdp": offer}),
            Duration::from_secs(10),
        )
        .await
        .expect("sfu-publish");
    let answer = ack["sdp"].as_str().expect("an SDP answer").to_owned();
    peer.apply_answer(std::time::Instant::now(), answer.clone())
        .expect("the answer applies");
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut buf, mut pl) = (vec![0u8; 2048], Vec::new());
    let (mut seq, mut next_send) = (0u32, std::time::Instant::now());
    loop {
        assert!(
            Instant::now() < deadline,
            "no sfu-subscribe-offer reached the other socket in 15 s (publisher connected: {})",
            peer.is_connected()
        );
        while let Some((to, datagram)) = peer.poll_transmit() {
            let _ = socket.try_send_to(&datagram, to);
        }
        peer.poll_state();
        let now = std::time::Instant::now();
        let peer_wake = peer
            .poll_timeout()
            .unwrap_or(now + Duration::from_millis(100));
        let wake = peer_wake
            .min(next_send)
            .min(now + Duration::from_millis(100));
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                if let Ok((len, from)) = received {
                    let _ = peer.handle_datagram(std::time::Instant::now(), from, &buf[..len]);
                    while peer.poll_rtp().is_some() {}
                }
            }
            event = events.recv() => {
                let (name, body) = event.expect("the other socket is open");
                if name == "sfu-subscribe-offer" {
                    let sdp = body["sdp"].as_str().expect("an offer's SDP").to_owned();
                    return (answer, sdp);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = std::time::Instant::now();
                if peer_wake <= now {
                    let _ = peer.handle_timeout(now);
                }
                if next_send <= now {
                    next_send = now + Duration::from_millis(33);
                    if peer.is_connected() {
                        seq += 1;
                        let stamp = Stamp { stream: 0, seq, sent_ns: payload::now_ns() };
                        payload::write(&mut pl, true, stamp, 200);
                        let packet = Packet {
                            header: Header {
                                version: 2,
                                payload_type: VP8_PT,
                                sequence_number: seq as u16,
                                timestamp: seq.wrapping_mul(3_000),
                                ssrc,
                                ..Default::default()
                            },
                            payload: bytes::Bytes::copy_from_slice(&pl),
                        };
                        let _ = peer.send_rtp(now, packet);
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_rooms_media_runs_on_its_pinned_node_whichever_node_the_socket_is_on() {
    let Some(redis) = redis_database(8).await else {
        return;
    };
    let Some(pg) = support::postgres_url() else {
        return;
    };
    let db = support::fresh_postgres_database(&pg, "cluster_relay").await;
    let lease = 3;
    let start = |id: &'static str, media_port: u16| {
        let (redis, db) = (redis.clone(), db.clone());
        async move {
            TestServer::start(&[
                ("CALLRELAY_CLUSTER__REDIS_URL", &redis),
                ("CALLRELAY_CLUSTER__NODE_ID", id),
                ("CALLRELAY_CLUSTER__LEASE_SECS", &lease.to_string()),
                ("CALLRELAY_DATABASE__URL", &db),
                ("CALLRELAY_MEDIA__UDP_PORT", &media_port.to_string()),
            ])
            .await
        }
    };
    let (port_one, port_two) = (support::free_media_port(), support::free_media_port());
    let mut one = start("one", port_one).await;
    let two = start("two", port_two).await;

    // The doctor and the patient are on two; the new room goes to the least loaded node, one
    // (ties by name). The doctor's publish answer comes from one's SFU, with one's media port;
    // its camera, live there, is offered to the patient by one (through the Socket.IO adapter:
    // the socket is on two), with one's media port too.
    let token = two.token("doc-1", "Doc", "doctor").await;
    let room = appointment(&two, &token, "doc-1").await;
    let limit = Duration::from_secs(10);
    let connect = async |token: &str| {
        callrelay_load::sio::SioClient::connect(&two.base, json!({"token": token}), limit)
            .await
            .expect("connect to two")
    };
    let (sio, _events) = connect(&token).await;
    sio.call_ok("join-room", &json!({"appointmentId": room}), limit)
        .await
        .expect("join-room");
    sio.call_ok(
        "sfu-join",
        &json!({"roomId": room, "reason": "forced"}),
        limit,
    )
    .await
    .expect("sfu-join");
    let patient_token = two.token("pat-1", "Pat", "patient").await;
    let (patient, mut patient_events) = connect(&patient_token).await;
    patient
        .call_ok("join-room", &json!({"appointmentId": room}), limit)
        .await
        .expect("the patient joins");
    let (answer, offer) = publish_live_until_offered(&sio, &room, &mut patient_events).await;
    for (what, sdp) in [("answer", &answer), ("offer", &offer)] {
        let ports = candidate_ports(sdp);
        assert!(
            !ports.is_empty() && ports.iter().all(|p| *p == port_one),
            "the {what}'s candidates: {ports:?}, one's port is {port_one}"
        );
    }
    assert_eq!(
        pinned_rooms(&two).await,
        [("one".to_owned(), 1), ("two".to_owned(), 0)]
    );
    patient
        .call_ok("leave-room", &json!({}), limit)
        .await
        .expect("the patient leaves");
    patient.close();

    // Leaving empties the room on one: unpinned.
    sio.call_ok("leave-room", &json!({}), limit)
        .await
        .expect("leave");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pinned_rooms(&two).await != [("one".to_owned(), 0), ("two".to_owned(), 0)] {
        assert!(Instant::now() < deadline, "the emptied room stays pinned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back in, relayed on one again; then one dies. Calls about its room fail, saying so, until
    // its lease runs out; then the socket's ICE restart (its connections failed with one) pins
    // the room to two, which does not know it (`not_found`): it joins the relay again there
    // and two's SFU answers its next publish.
    sio.call_ok("join-room", &json!({"appointmentId": room}), limit)
        .await
        .expect("join-room again");
    sio.call_ok(
        "sfu-join",
        &json!({"roomId": room, "reason": "forced"}),
        limit,
    )
    .await
    .expect("sfu-join again");
    assert_eq!(pinned_rooms(&two).await[0], ("one".to_owned(), 1));
    one.crash();
    let refused = publish(&sio, &room).await.expect_err("one is dead");
    assert!(refused.contains("unavailable"), "{refused}");
    let deadline = Instant::now() + Duration::from_secs(lease * 3);
    while pinned_rooms(&two).await.len() > 1 {
        assert!(Instant::now() < deadline, "one's lease did not run out");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let unknown = sio
        .call_ok("sfu-restart-ice", &json!({"roomId": room}), limit)
        .await
        .expect_err("two does not know the socket");
    assert!(unknown.to_string().contains("not_found"), "{unknown}");
    sio.call_ok(
        "sfu-join",
        &json!({"roomId": room, "reason": "forced"}),
        limit,
    )
    .await
    .expect("sfu-join on two");
    let answer = publish(&sio, &room).await.expect("an SDP answer from two");
    let ports = candidate_ports(&answer);
    assert!(
        !ports.is_empty() && ports.iter().all(|p| *p == port_two),
        "{ports:?}"
    );
    assert_eq!(pinned_rooms(&two).await, [("two".to_owned(), 1)]);
    sio.close();
    drop(two);
    support::drop_database(&pg, &db).await;
}
