//! Shared test harness: runs the real `callrelay` binary on free ports with a temporary database.
#![allow(dead_code)]

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "integration-test-secret";

/// A free TCP port on loopback (released just before the server binds it).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free loopback UDP port")
}

/// A port free for UDP and for TCP on every interface: the SFU serves ICE-TCP on its UDP
/// port's number and refuses to start when that TCP port is taken (an outgoing connection's
/// ephemeral port can be).
pub fn free_media_port() -> u16 {
    (0..50)
        .map(|_| free_udp_port())
        .find(|port| TcpListener::bind(("0.0.0.0", *port)).is_ok())
        .expect("a port free for both UDP and TCP")
}

pub struct TestServer {
    pub base: String,
    /// The HTTP port (on 127.0.0.1, and on every interface after `start_on_all_interfaces`).
    pub port: u16,
    bind_ip: &'static str,
    pub db_url: String,
    /// `server.data_dir`, in the temporary folder (a test's env may name another).
    pub data_dir: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server on SQLite in a fresh temporary folder, with `env` on top of the defaults.
    pub async fn start(env: &[(&str, &str)]) -> TestServer {
        Self::start_bound(env, "127.0.0.1").await
    }

    /// Like `start`, with HTTP on every interface (for clients in other network namespaces).
    pub async fn start_on_all_interfaces(env: &[(&str, &str)]) -> TestServer {
        Self::start_bound(env, "0.0.0.0").await
    }

    async fn start_bound(env: &[(&str, &str)], bind_ip: &'static str) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let db_url = format!("sqlite://{}/callrelay.db?mode=rwc", dir.path().display());
        let mut server = TestServer {
            base: String::new(),
            port: 0,
            bind_ip,
            db_url,
            data_dir: dir.path().join("data"),
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _dir: dir,
        };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        let port = free_tcp_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_callrelay"));
        for (key, _) in std::env::vars() {
            if key.starts_with("CALLRELAY_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("CALLRELAY_SERVER__BIND", format!("{}:{port}", self.bind_ip))
            .env("CALLRELAY_DATABASE__URL", &self.db_url)
            .env("CALLRELAY_AUTH__JWT_SECRET", SECRET)
            // Never the repository's data/, whatever a test sets the secret to.
            .env("CALLRELAY_SERVER__DATA_DIR", &self.data_dir)
            .env("CALLRELAY_MEDIA__UDP_PORT", free_media_port().to_string())
            .env("CALLRELAY_SERVER__WEB_DIR", "")
            // SIGTERM ends what is left at once: tests stop servers mid-call.
            .env("CALLRELAY_SERVER__DRAIN_TIMEOUT_SECS", "0")
            // Patients enter rooms at once; the waiting room's own tests turn it on.
            .env("CALLRELAY_CONSULT__WAITING_ROOM", "false")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn callrelay"));
        self.base = format!("http://127.0.0.1:{port}");
        self.port = port;
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{}/livez", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("callrelay exited during start-up: {status}");
            }
            assert!(Instant::now() < deadline, "callrelay did not start in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for the process to exit; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Stops the server (SIGTERM) and starts it again with the same settings, database and data
    /// directory, on a new port.
    pub async fn restart(&mut self) {
        assert!(self.stop(), "callrelay exits 0 after SIGTERM");
        self.launch().await;
    }

    /// Kills the process without letting it drain (a crash).
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn token(&self, sub: &str, name: &str, role: &str) -> String {
        let body: serde_json::Value = reqwest::Client::new()
            .post(self.url("/api/dev/token"))
            .json(&serde_json::json!({"sub": sub, "name": name, "role": role}))
            .send()
            .await
            .expect("token request")
            .json()
            .await
            .expect("token json");
        body["token"].as_str().expect("token").to_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.crash();
    }
}

/// A test that cannot run here: in CI that is a failure (CI installs everything), elsewhere
/// it says so loudly. Written straight to stderr: libtest swallows `eprintln!` of passing tests.
pub fn skip(what: &str, hint: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{what} cannot run in CI: {hint}");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {what}: {hint} ***\n");
}

/// The PostgreSQL server to test against, from `CALLRELAY_TEST_POSTGRES_URL`. Without it the
/// caller skips, saying so loudly.
pub fn postgres_url() -> Option<String> {
    match std::env::var("CALLRELAY_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            skip(
                "the PostgreSQL half",
                "CALLRELAY_TEST_POSTGRES_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test)",
            );
            None
        }
    }
}

/// A fresh, empty PostgreSQL database on the server of `admin_url`; dropped by `drop_database`.
pub async fn fresh_postgres_database(admin_url: &str, label: &str) -> String {
    use sqlx::Connection;
    let name = format!("callrelay_{label}_{}_{}", std::process::id(), uuid_suffix());
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(admin_url);
    format!("{base}/{name}")
}

pub async fn drop_database(admin_url: &str, db_url: &str) {
    use sqlx::Connection;
    let Some((_, name)) = db_url.rsplit_once('/') else {
        return;
    };
    if let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
}

fn uuid_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{nanos}_{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Database `db` of the test Redis (`CALLRELAY_TEST_REDIS_URL`, e.g. redis://127.0.0.1:6379),
/// emptied; None when the variable is not set (the caller says it skipped).
pub async fn redis_database(db: u8) -> Option<String> {
    let base = std::env::var("CALLRELAY_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let url = format!("{}/{db}", base.trim_end_matches('/'));
    let client = redis::Client::open(url.as_str()).expect("a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test Redis");
    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut conn)
        .await
        .expect("FLUSHDB");
    Some(url)
}

/// Held by each browser scenario of a test binary, so they run one at a time: each starts two
/// or three Chromiums, and on two cores four at once starved them (a relayed join took 12 s in
/// CI, 2026-12-07). A user's machine runs one call, so each scenario is timed as one call.
pub static ONE_BROWSER_SCENARIO_AT_A_TIME: tokio::sync::Mutex<()> =
    tokio::sync::Mutex::const_new(());

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
