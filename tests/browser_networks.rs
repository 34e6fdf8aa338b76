//! The browser client on the networks patients and doctors are on, with headless Chromiums in
//! a network namespace linked to the server's host:
//! - every UDP datagram dropped (nftables), so the only way to the server is TCP: the direct
//!   attempt fails, the room falls back to the relay, and the relay must carry the
//!   consultation over ICE-TCP (video both ways, the page and /metrics saying TCP);
//! - the namespace renumbered mid-call (a device moving to another network): ICE restarts on
//!   both relay connections and the pictures come back without a page reload;
//! - the direct path cut mid-call (UDP between the browsers dropped, the server still reached):
//!   a peer-to-peer consultation falls back to the relay and its video is back within 8 s.
//!
//! Driven by `web/smoke.mjs`, the browsers started inside the namespace.
//!
//! Needs root, iproute2 and nftables (`.ci/run` installs them); elsewhere it says loudly that
//! it skipped.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::TestServer;

/// A network namespace linked to the host by a veth pair (host .1, namespace .2 of a /29),
/// optionally dropping every UDP datagram it sends. Removed on drop.
struct Namespace {
    name: String,
    host_link: String,
    inner_link: String,
    subnet: String,
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

impl Namespace {
    fn create(tag: char, block_udp: bool) -> Result<Self, String> {
        // Unique per process and test, short enough for interface names (15 characters).
        let id = std::process::id() % 100_000;
        let third = std::process::id() % 250;
        let fourth = match tag {
            'u' => 0,
            'm' => 8,
            'p' => 16,
            's' => 24,
            _ => 32,
        };
        let subnet = format!("10.213.{third}.{fourth}");
        let ns = Self {
            name: format!("cr{tag}{id}"),
            host_link: format!("cr{tag}h{id}"),
            inner_link: format!("cr{tag}n{id}"),
            host_ip: format!("10.213.{third}.{}", fourth + 1),
            subnet,
        };
        let inner = ns.inner_link.clone();
        let guest_ip = ns.guest_ip(2);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", &ns.name];
            all.extend_from_slice(args);
            run(&all)
        };
        run(&["ip", "netns", "add", &ns.name])?;
        run(&[
            "ip",
            "link",
            "add",
            &ns.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
        ])?;
        run(&["ip", "link", "set", &inner, "netns", &ns.name])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/29", ns.host_ip),
            "dev",
            &ns.host_link,
        ])?;
        run(&["ip", "link", "set", &ns.host_link, "up"])?;
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{guest_ip}/29"),
            "dev",
            &inner,
        ])?;
        in_ns(&["ip", "link", "set", &inner, "up"])?;
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        in_ns(&["ip", "route", "add", "default", "via", &ns.host_ip])?;
        if !block_udp {
            return Ok(ns);
        }
        in_ns(&[
            "nft",
            "add table inet callrelay_test; \
             add chain inet callrelay_test out { type filter hook output priority 0; policy accept; }; \
             add rule inet callrelay_test out meta l4proto udp drop",
        ])?;
        Ok(ns)
    }

    /// The namespace's address number `n` of the /29.
    fn guest_ip(&self, n: u32) -> String {
        let (base, last) = self.subnet.rsplit_once('.').expect("dotted subnet");
        format!("{base}.{}", last.parse::<u32>().expect("number") + n)
    }

    /// A shell command that moves the namespace from its address .2 to .3 (a device moving to
    /// another network: its old address is gone).
    fn renumber_command(&self) -> String {
        let (ns, dev, host) = (&self.name, &self.inner_link, &self.host_ip);
        format!(
            "ip -n {ns} addr del {}/29 dev {dev} && ip -n {ns} addr add {}/29 dev {dev} \
             && ip -n {ns} route replace default via {host}",
            self.guest_ip(2),
            self.guest_ip(3)
        )
    }

    /// A shell command that cuts the browsers' direct path and nothing else: inside the
    /// namespace, every UDP datagram not addressed to the host (the server, its SFU included)
    /// is dropped, IPv6 too. Separate rules: nftables 1.0.6 does not combine two `!=`.
    fn cut_direct_path_command(&self) -> String {
        let (ns, host) = (&self.name, &self.host_ip);
        format!(
            "ip netns exec {ns} nft 'add table inet callrelay_test; \
             add chain inet callrelay_test out {{ type filter hook output priority 0; policy accept; }}; \
             add rule inet callrelay_test out ip daddr != {host} meta l4proto udp drop; \
             add rule inet callrelay_test out meta nfproto ipv6 meta l4proto udp drop'"
        )
    }

    /// A shell command that drops all UDP from the namespace (to the server included) and
    /// leaves TCP alone: a network that stops passing UDP mid-call.
    fn block_udp_command(&self) -> String {
        format!(
            "ip netns exec {} nft 'add table inet callrelay_test; \
             add chain inet callrelay_test out {{ type filter hook output priority 0; policy accept; }}; \
             add rule inet callrelay_test out meta l4proto udp drop'",
            self.name
        )
    }

    /// Undoes `cut_direct_path_command`.
    fn restore_direct_path_command(&self) -> String {
        format!(
            "ip netns exec {} nft delete table inet callrelay_test",
            self.name
        )
    }

    /// A shell command that kills the namespace's TCP connections to the server's HTTP port
    /// (Socket.IO), as a network blip does, leaving everything else alone.
    fn kill_signaling_command(&self, port: u16) -> String {
        format!(
            "ip netns exec {} ss -K dst {} dport = {port}",
            self.name, self.host_ip
        )
    }

    /// Chromium started inside the namespace (playwright talks to it over a pipe).
    fn chromium_wrapper(&self, dir: &Path) -> std::path::PathBuf {
        let wrapper = dir.join(format!("chromium-in-{}", self.name));
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec ip netns exec {} /usr/bin/chromium \"$@\"\n",
                self.name
            ),
        )
        .expect("write wrapper");
        run(&["chmod", "+x", wrapper.to_str().expect("utf-8 path")]).expect("chmod");
        wrapper
    }
}

impl Drop for Namespace {
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

/// One browser test at a time: each runs two Chromiums, and several at once on a small machine
/// measure the machine, not the client.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server reachable from a namespace (mode and other settings in `env`), and
/// `web/smoke.mjs` with `args` (given the namespace and the server's HTTP port) run by two
/// Chromiums inside it. Returns the server (for its
/// metrics) and whether the smoke run passed; None (after saying so) when the namespace
/// cannot be made here.
async fn smoke_in_namespace(
    ns: Result<Namespace, String>,
    what: &str,
    env: &[(&str, &str)],
    args: impl Fn(&Namespace, u16) -> Vec<String>,
) -> Option<(TestServer, bool)> {
    let ns = match ns {
        Ok(ns) => ns,
        Err(e) => {
            support::skip(what, &e);
            return None;
        }
    };
    let web = support::repo_root().join("web");
    let mut env = env.to_vec();
    env.push((
        "CALLRELAY_SERVER__WEB_DIR",
        web.to_str().expect("utf-8 path"),
    ));
    let server = TestServer::start_on_all_interfaces(&env).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let wrapper = ns.chromium_wrapper(dir.path());
    let base = format!("http://{}:{}", ns.host_ip, server.port);
    let status = Command::new("node")
        .arg(web.join("smoke.mjs"))
        .arg(&base)
        .args(args(&ns, server.port))
        .arg("--out")
        .arg(dir.path())
        .env("CHROMIUM", &wrapper)
        .env(
            "NODE_PATH",
            support::repo_root().join("tests/node/node_modules"),
        )
        .status()
        .expect("run node");
    Some((server, status.success()))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

#[tokio::test]
async fn two_browsers_without_udp_meet_through_the_relay_over_ice_tcp() {
    if !prerequisites() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((server, passed)) = smoke_in_namespace(
        Namespace::create('u', true),
        "the browser tests on UDP-blocked networks",
        &[("CALLRELAY_MEDIA__P2P_TIMEOUT_MS", "2000")],
        |_, _| {
            strings(&[
                "--expect",
                "relay",
                "--expect-transport",
                "tcp",
                "--no-calls",
            ])
        },
    )
    .await
    else {
        return;
    };
    assert!(
        passed,
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
        assert_eq!(
            connected(pc, "tcp"),
            2.0,
            "both browsers' {pc} connections over TCP"
        );
        assert_eq!(connected(pc, "udp"), 0.0, "no {pc} connection over UDP");
    }
}

#[tokio::test]
async fn a_relayed_consultation_survives_the_browsers_changing_networks() {
    if !prerequisites() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((_server, passed)) = smoke_in_namespace(
        Namespace::create('m', false),
        "the browser tests on changing networks",
        &[("CALLRELAY_MEDIA__MODE", "sfu-only")],
        |ns, _| {
            let mut args = strings(&["--expect", "relay", "--no-calls", "--mid-call-cmd"]);
            args.push(ns.renumber_command());
            args
        },
    )
    .await
    else {
        return;
    };
    assert!(
        passed,
        "the consultation did not recover from the network change"
    );
}

/// How long the test lets the relay take to bring video back after the direct path is cut.
/// The figure is 8 s, measured at 5.4-7.6 s here and printed by every run; the bound
/// is looser because a test must not fail on a busy machine's timing (before the fallback on
/// `disconnected` the picture stayed frozen until Chromium declared the path failed, ~30 s).
const RELAY_BACK_WITHIN_MS: &str = "15000";

#[tokio::test]
async fn a_direct_consultation_falls_back_to_the_relay_when_its_path_is_cut() {
    if !prerequisites() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    // Both browsers meet directly (their traffic stays between the namespace's own
    // addresses), then only that path is cut: the page must notice within its grace time,
    // fall back to the relay, and show moving video again, the tiles saying "Reconnecting…"
    // meanwhile. Then the same for a direct call (web/calls.js): the path restored, the
    // doctor calls the patient, they meet directly, the path is cut mid-call.
    let Some((_server, passed)) = smoke_in_namespace(
        Namespace::create('p', false),
        "the browser tests on a cut direct path",
        &[("CALLRELAY_MEDIA__MODE", "p2p-first")],
        |ns, _| {
            let mut args = strings(&["--expect", "p2p", "--mid-call-cmd"]);
            args.push(ns.cut_direct_path_command());
            args.push("--restore-cmd".into());
            args.push(ns.restore_direct_path_command());
            args.extend(strings(&[
                "--after-expect",
                "relay",
                "--recover-within-ms",
                RELAY_BACK_WITHIN_MS,
            ]));
            args
        },
    )
    .await
    else {
        return;
    };
    assert!(
        passed,
        "the consultation did not fall back to the relay within {RELAY_BACK_WITHIN_MS} ms of \
         its direct path being cut"
    );
}

/// A signaling blip (both browsers' Socket.IO connections killed) in a direct consultation:
/// the pages reconnect and rejoin, and the direct connection, which needs no server, carries
/// on: the picture never stops and the tiles stay (`previousSocketId`, `Peer.replaces`).
#[tokio::test]
async fn a_direct_consultation_keeps_its_picture_across_a_signaling_reconnection() {
    if !prerequisites() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((_server, passed)) = smoke_in_namespace(
        Namespace::create('s', false),
        "the browser tests on a signaling blip",
        &[("CALLRELAY_MEDIA__MODE", "p2p-first")],
        |ns, port| {
            let mut args = strings(&["--expect", "p2p", "--no-calls", "--signaling-cut-cmd"]);
            args.push(ns.kill_signaling_command(port));
            args
        },
    )
    .await
    else {
        return;
    };
    assert!(
        passed,
        "the direct consultation did not carry on across the signaling reconnection"
    );
}

/// UDP stops passing mid-call while TCP (signaling included) goes on, as on a network whose
/// firewall turns strict: the relay's connections move to ICE-TCP (the browser renominates,
/// or the page restarts ICE) and the pictures come back without a reload.
#[tokio::test]
async fn a_relayed_consultation_moves_to_tcp_when_udp_stops_mid_call() {
    if !prerequisites() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some((_server, passed)) = smoke_in_namespace(
        Namespace::create('t', false),
        "the browser tests on UDP stopping mid-call",
        &[("CALLRELAY_MEDIA__MODE", "sfu-only")],
        |ns, _| {
            let mut args = strings(&["--expect", "relay", "--no-calls", "--mid-call-cmd"]);
            args.push(ns.block_udp_command());
            args.extend(strings(&[
                "--after-expect",
                "relay",
                "--after-expect-transport",
                "tcp",
            ]));
            args
        },
    )
    .await
    else {
        return;
    };
    assert!(passed, "the relayed consultation did not recover over TCP");
}
