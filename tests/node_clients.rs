//! Runs the suite in tests/node: the official socket.io-client v4 under Node against the real
//! binary. Each Node test file starts its own servers from `CALLRELAY_BIN`.

mod support;

use std::process::Command;

#[tokio::test]
async fn official_socketio_client_suite() {
    let node_dir = support::repo_root().join("tests/node");
    if !node_dir.join("node_modules/socket.io-client").is_dir() {
        let hint = "tests/node/node_modules is missing: run `npm ci --prefix tests/node` \
                    (scripts/test does it)";
        support::skip("the socket.io-client suite", hint);
        return;
    }
    let admin = support::postgres_url();
    let pg_url = match &admin {
        Some(admin) => Some(support::fresh_postgres_database(admin, "node").await),
        None => None,
    };
    let mut files: Vec<_> = std::fs::read_dir(&node_dir)
        .expect("tests/node")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no tests/node/*.test.mjs files");
    let mut cmd = Command::new("node");
    cmd.args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
        .args(&files)
        .current_dir(&node_dir)
        .env("CALLRELAY_BIN", env!("CARGO_BIN_EXE_callrelay"));
    if let Some(url) = &pg_url {
        cmd.env("CALLRELAY_NODE_PG_URL", url);
    }
    if let Some(url) = support::redis_database(15).await {
        cmd.env("CALLRELAY_NODE_REDIS_URL", url);
    }
    let status = cmd.status().expect("run node (is Node.js 20+ installed?)");
    if let (Some(admin), Some(url)) = (&admin, &pg_url) {
        support::drop_database(admin, url).await;
    }
    assert!(status.success(), "the socket.io-client suite failed");
}
