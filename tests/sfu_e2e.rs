//! Runs the suite in tests/e2e: aiortc, a WebRTC stack nobody on the team wrote, publishes and
//! decodes real VP8/Opus media relayed by the SFU, driven through the Socket.IO contract
//! (python-socketio). Each test module starts its own server from `CALLRELAY_BIN` (the cluster
//! module three, sharing the test PostgreSQL and Redis).

mod support;

use std::process::Command;

#[test]
fn aiortc_relay_suite() {
    let root = support::repo_root();
    let python = root.join("tests/e2e/.venv/bin/python");
    if !python.is_file() {
        let hint = "tests/e2e/.venv is missing: run `python3 -m venv tests/e2e/.venv && \
                    tests/e2e/.venv/bin/pip install -q -r tests/e2e/requirements.txt` \
                    (scripts/test does it)";
        support::skip("the aiortc relay suite", hint);
        return;
    }
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pytest", "-x", "-q", "tests/e2e"])
        .current_dir(&root)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    // The servers get only the settings the suite gives them.
    for (key, _) in std::env::vars() {
        if key.starts_with("CALLRELAY_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("CALLRELAY_BIN", env!("CARGO_BIN_EXE_callrelay"));
    // The cluster tests (test_cluster_relay.py): the shared PostgreSQL and an emptied Redis
    // database of their own; without them they say they skipped (and fail in CI).
    let redis = tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(support::redis_database(7));
    if let (Ok(pg), Some(redis)) = (std::env::var("CALLRELAY_TEST_POSTGRES_URL"), redis) {
        cmd.env("CALLRELAY_E2E_PG_URL", pg)
            .env("CALLRELAY_E2E_REDIS_URL", redis);
    }
    let status = cmd.status().expect("run tests/e2e/.venv/bin/python");
    assert!(status.success(), "the aiortc relay suite failed");
}
