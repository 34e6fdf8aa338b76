//! Several nodes sharing a Redis and a PostgreSQL database (`cluster.redis_url`): the registry
//! of live nodes and of the node each room is pinned to, and real `callrelay` processes joining,
//! dying and leaving.
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
