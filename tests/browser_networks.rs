//! The browser client on networks that block what WebRTC prefers: two headless Chromiums in a
//! network namespace whose every UDP datagram is dropped (nftables), so the only way to the
//! server is TCP. The direct attempt fails, the room falls back to the relay, and the relay
//! must carry the consultation over ICE-TCP (video both ways, the page and /metrics saying
//! TCP). Driven by `web/smoke.mjs`, the browsers started inside the namespace.
//!
//! Needs root, iproute2 and nftables (`.ci/run` installs them); elsewhere it says loudly that
//! it skipped.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::TestServer;

/// A network namespace linked to the host by a veth pair, dropping every UDP datagram it sends.
/// Removed on drop.
struct UdpBlockedNamespace {
    name: String,
    host_link: String,
    /// The host's address on the link: how the namespace reaches the server.
    host_ip: String,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl UdpBlockedNamespace {
    fn create() -> Result<Self, String> {
        // Unique per process, short enough for interface names (15 characters).
        let id = std::process::id() % 100_000;
        let subnet = (std::process::id() % 250) as u8;
        let ns = Self {
            name: format!("crudp{id}"),
            host_link: format!("crh{id}"),
            host_ip: format!("10.213.{subnet}.1"),
        };
        let inner = format!("crn{id}");
        let guest_ip = format!("10.213.{subnet}.2");
        let in_ns = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", &ns.name];
            all.extend_from_slice(args);
            run(&all)
        };
        run(&["ip", "netns", "add", &ns.name])?;
        run(&[
            "ip", "link", "add", &ns.host_link, "type", "veth", "peer", "name", &inner,
        ])?;
        run(&["ip", "link", "set", &inner, "netns", &ns.name])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_link,
        ])?;
        run(&["ip", "link", "set", &ns.host_link, "up"])?;
        in_ns(&["ip", "addr", "add", &format!("{guest_ip}/30"), "dev", &inner])?;
        in_ns(&["ip", "link", "set", &inner, "up"])?;
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        in_ns(&["ip", "route", "add", "default", "via", &ns.host_ip])?;
        in_ns(&[
            "nft",
            "add table inet callrelay_test; \
             add chain inet callrelay_test out { type filter hook output priority 0; policy accept; }; \
             add rule inet callrelay_test out meta l4proto udp drop",
        ])?;
        Ok(ns)
    }
}

impl Drop for UdpBlockedNamespace {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = run(&["ip", "link", "del", &self.host_link]);
    }
}

fn prerequisites() -> bool {
    let chromium = Path::new("/usr/bin/chromium").exists();
    let playwright = support::repo_root()
        .join("tests/node/node_modules/playwright-core")
        .is_dir();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let tools = ["ip", "nft"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let ok = chromium && playwright && root && tools;
    if !ok {
        support::skip(
            "the browser tests on UDP-blocked networks",
            "need root, ip (iproute2), nft (nftables), /usr/bin/chromium and playwright-core \
             (npm ci --prefix tests/node); .ci/run installs them",
        );
    }
    ok
}

#[tokio::test]
async fn two_browsers_without_udp_meet_through_the_relay_over_ice_tcp() {
    if !prerequisites() {
        return;
    }
    let ns = match UdpBlockedNamespace::create() {
        Ok(ns) => ns,
        Err(e) => {
            support::skip("the browser tests on UDP-blocked networks", &e);
            return;
        }
    };
    let web = support::repo_root().join("web");
    let server = TestServer::start_on_all_interfaces(&[
        ("CALLRELAY_SERVER__WEB_DIR", web.to_str().expect("utf-8 path")),
        ("CALLRELAY_MEDIA__P2P_TIMEOUT_MS", "2000"),
    ])
    .await;

    // Chromium started inside the namespace (playwright talks to it over a pipe).
    let dir = tempfile::tempdir().expect("temp dir");
    let wrapper = dir.path().join("chromium-without-udp");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec ip netns exec {} /usr/bin/chromium \"$@\"\n",
            ns.name
        ),
    )
    .expect("write wrapper");
    run(&["chmod", "+x", wrapper.to_str().expect("utf-8 path")]).expect("chmod");

    let base = format!("http://{}:{}", ns.host_ip, server.port);
    let status = Command::new("node")
        .arg(web.join("smoke.mjs"))
        .arg(&base)
        .args(["--expect", "relay", "--expect-transport", "tcp", "--no-calls"])
        .arg("--out")
        .arg(dir.path())
        .env("CHROMIUM", &wrapper)
        .env("NODE_PATH", support::repo_root().join("tests/node/node_modules"))
        .status()
        .expect("run node");
    assert!(
        status.success(),
        "two browsers without UDP did not meet over the relay's TCP candidates"
    );

    // What an operator sees: every relay connection of both browsers went over TCP.
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let connected = |pc: &str, transport: &str| -> f64 {
        let series = format!(
            "callrelay_sfu_connections_total{{outcome=\"connected\",pc=\"{pc}\",transport=\"{transport}\"}}"
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    for pc in ["publish", "subscribe"] {
        assert_eq!(connected(pc, "tcp"), 2.0, "both browsers' {pc} connections over TCP");
        assert_eq!(connected(pc, "udp"), 0.0, "no {pc} connection over UDP");
    }
}
