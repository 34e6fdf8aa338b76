//! The browser client on the networks patients and doctors are on, with headless Chromiums in
//! a network namespace linked to the server's host:
//! - every UDP datagram dropped (nftables), so the only way to the server is TCP: the direct
//!   attempt fails, the room falls back to the relay, and the relay must carry the
//!   consultation over ICE-TCP (video both ways, the page and /metrics saying TCP);
//! - the namespace renumbered mid-call (a device moving to another network): ICE restarts on
//!   both relay connections and the pictures come back without a page reload;
//! - the direct path cut mid-call (UDP between the browsers dropped, the server still reached):
//!   a peer-to-peer consultation falls back to the relay and its video is back within 8 s;
//! - the media path cut for 15 s while Socket.IO stays up: the browsers rebuild their broken
//!   relay connections and both pictures come back once the path is restored.
//!
//! - issue 12's media quality, the two browsers each in its own namespace and the cameras at
//!   720p (three simulcast layers): one's downlink narrowed to 300 kbit/s (it gets the low
//!   layer, the other keeps a high one), and 5 % and 10 % random UDP loss (the pictures keep
//!   moving; with NACK/RTX they freeze less than without). Every figure is printed.
//!
//! Driven by `web/smoke.mjs` (`web/smoke-quality.mjs` for the quality tests), the browsers
//! started inside the namespace.
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
            'l' => 40,
            'f' => 48,
            'x' => 56,
            'y' => 64,
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

    /// A shell command that cuts the namespace's media for `secs` seconds and then restores it,
    /// returning at once: every UDP datagram and every TCP segment not to the server's HTTP port
    /// (`http_port`, Socket.IO) is dropped, so the relay connections break while the signaling
    /// connection stays up (a long outage of the media path alone).
    fn media_outage_command(&self, http_port: u16, secs: u32) -> String {
        let ns = &self.name;
        format!(
            "ip netns exec {ns} nft 'add table inet callrelay_outage; \
             add chain inet callrelay_outage out {{ type filter hook output priority 0; policy accept; }}; \
             add rule inet callrelay_outage out meta l4proto udp drop; \
             add rule inet callrelay_outage out tcp dport != {http_port} drop'; \
             (sleep {secs}; ip netns exec {ns} nft delete table inet callrelay_outage) \
             > /dev/null 2>&1 &"
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

    /// A shell command that narrows what the namespace receives (its downlink) to `kbytes`
    /// per second: a policer, as on a slow line, dropping what comes faster (bursts of one
    /// second's worth pass).
    fn limit_downlink_command(&self, kbytes: u32) -> String {
        format!(
            "ip netns exec {} nft 'add table inet callrelay_quality; \
             add chain inet callrelay_quality in {{ type filter hook input priority 0; policy accept; }}; \
             add rule inet callrelay_quality in limit rate over {kbytes} kbytes/second burst {kbytes} kbytes drop'",
            self.name
        )
    }

    /// A shell command that drops `percent` % of the UDP datagrams the namespace sends and
    /// `percent` % of those it receives, at random: a lossy link both ways.
    fn udp_loss_command(&self, percent: u32) -> String {
        let rule = format!("meta l4proto udp numgen random mod 100 < {percent} drop");
        format!(
            "ip netns exec {} nft 'add table inet callrelay_quality; \
             add chain inet callrelay_quality in {{ type filter hook input priority 0; policy accept; }}; \
             add chain inet callrelay_quality out {{ type filter hook output priority 0; policy accept; }}; \
             add rule inet callrelay_quality in {rule}; add rule inet callrelay_quality out {rule}'",
            self.name
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
    let _turn = support::ONE_BROWSER_SCENARIO_AT_A_TIME.lock().await;
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
    let renumber = |ns: &Namespace, _| ns.renumber_command();
    let what = "the browser tests on changing networks";
    if let Some(passed) = relayed_mid_call('m', what, renumber, &[]).await {
        assert!(
            passed,
            "the consultation did not recover from the network change"
        );
    }
}

/// A relayed consultation (media.mode sfu-only, no direct calls) with the browsers in a
/// namespace tagged `tag`: once both see each other, the shell command `change(namespace, HTTP
/// port)` runs and both pictures must freeze and come back (`after`: more of `web/smoke.mjs`'s
/// checks on what comes back). `None` if skipped.
async fn relayed_mid_call(
    tag: char,
    what: &str,
    change: impl Fn(&Namespace, u16) -> String,
    after: &[&str],
) -> Option<bool> {
    if !prerequisites() {
        return None;
    }
    let _turn = support::ONE_BROWSER_SCENARIO_AT_A_TIME.lock().await;
    let (_server, passed) = smoke_in_namespace(
        Namespace::create(tag, false),
        what,
        &[("CALLRELAY_MEDIA__MODE", "sfu-only")],
        |ns, port| {
            let mut args = strings(&["--expect", "relay", "--no-calls", "--mid-call-cmd"]);
            args.push(change(ns, port));
            args.extend(strings(after));
            args
        },
    )
    .await?;
    Some(passed)
}

/// The relay connections broken for longer than the browser waits before making new ones (6 s
/// of a broken ICE state) while the signaling connection stays up, so the server still holds
/// the old ones when the pages rebuild theirs (`relayLost`: seen at 12-14 s after the cut):
/// both pictures must come back once the media path is restored (measured 17.5-18.9 s after
/// the cut, i.e. 2.5-4 s after the restore).
#[tokio::test]
async fn a_relayed_consultation_comes_back_after_a_long_media_outage() {
    let outage = |ns: &Namespace, port| ns.media_outage_command(port, 15);
    let what = "the browser tests on a long media outage";
    // Restored after 15 s; new connections a few seconds later. The old ones would only go with
    // the server's 30 s liveness timeout.
    let after = ["--after-expect", "relay", "--recover-within-ms", "28000"];
    if let Some(passed) = relayed_mid_call('o', what, outage, &after).await {
        assert!(
            passed,
            "the relayed consultation did not come back after the media outage"
        );
    }
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
    let _turn = support::ONE_BROWSER_SCENARIO_AT_A_TIME.lock().await;
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
    let _turn = support::ONE_BROWSER_SCENARIO_AT_A_TIME.lock().await;
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
    let block_udp = |ns: &Namespace, _| ns.block_udp_command();
    let what = "the browser tests on UDP stopping mid-call";
    let after = ["--after-expect", "relay", "--after-expect-transport", "tcp"];
    if let Some(passed) = relayed_mid_call('t', what, block_udp, &after).await {
        assert!(passed, "the relayed consultation did not recover over TCP");
    }
}

/// One side's received video over the measured window, as `web/smoke-quality.mjs` prints it.
struct Received(serde_json::Value);

impl Received {
    fn num(&self, key: &str) -> f64 {
        self.0[key].as_f64().unwrap_or(f64::NAN)
    }
}

impl Received {
    /// The share of the window's samples that saw a frame height of at most `height`.
    fn share_at_most(&self, height: u64) -> f64 {
        let Some(heights) = self.0["heights"].as_object() else {
            return 0.0;
        };
        let count = |low: bool| -> f64 {
            heights
                .iter()
                .filter(|(h, _)| h.parse::<u64>().is_ok_and(|h| h <= height) == low)
                .filter_map(|(_, n)| n.as_f64())
                .sum()
        };
        let low = count(true);
        low / (low + count(false)).max(1.0)
    }
}

impl std::fmt::Display for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}x{} (heights seen {}), {} fps ({} frames decoded in {} ms, fewest in one second {}), \
             {} freezes ({} s frozen), longest stall {} ms, stalled {} ms; {} packets, {} lost, \
             {} NACKs, \
             {} retransmissions, {} PLIs, {} keyframes; camera {}, tile {}; sending {} \
             (uplink estimate {} kbit/s)",
            self.0["who"].as_str().unwrap_or("?"),
            self.0["frameWidth"],
            self.0["frameHeight"],
            self.0["heights"],
            self.0["fps"],
            self.0["framesDecoded"],
            self.0["windowMs"],
            self.0["minFps1s"],
            self.0["freezeCount"],
            self.0["totalFreezesDuration"],
            self.0["longestStallMs"],
            self.0["stalledMs"],
            self.0["packetsReceived"],
            self.0["packetsLost"],
            self.0["nackCount"],
            self.0["retransmittedPacketsReceived"],
            self.0["pliCount"],
            self.0["keyFramesDecoded"],
            self.0["camera"],
            self.0["tile"],
            self.0["sending"],
            self.0["uplinkKbps"],
        )
    }
}

/// A relayed consultation (media.mode sfu-only) between a doctor's Chromium in `doctor` and a
/// patient's in `patient`, both cameras at 1280x720 and 30 fps: once each sees the other,
/// `condition` (a shell command) degrades the network, and after `web/smoke-quality.mjs`'s
/// settling time each side's received video is measured (`extra`: more of its options).
/// Returns the server (for its metrics) and the doctor's and the patient's figures.
async fn measure_quality(
    doctor: &Namespace,
    patient: &Namespace,
    condition: &str,
    extra: &[&str],
) -> (TestServer, Received, Received) {
    let web = support::repo_root().join("web");
    let server = TestServer::start_on_all_interfaces(&[
        ("CALLRELAY_MEDIA__MODE", "sfu-only"),
        (
            "CALLRELAY_SERVER__WEB_DIR",
            web.to_str().expect("utf-8 path"),
        ),
    ])
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new("node")
        .arg(web.join("smoke-quality.mjs"))
        .arg(format!("http://{}:{}", doctor.host_ip, server.port))
        .arg(format!("http://{}:{}", patient.host_ip, server.port))
        .args(["--condition-cmd", condition])
        .args(extra)
        .arg("--out")
        .arg(dir.path())
        .env("CHROMIUM_DOCTOR", doctor.chromium_wrapper(dir.path()))
        .env("CHROMIUM_PATIENT", patient.chromium_wrapper(dir.path()))
        .env(
            "NODE_PATH",
            support::repo_root().join("tests/node/node_modules"),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("run node");
    let mut sides = Vec::new();
    let stdout = child.stdout.take().expect("piped stdout");
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.expect("node's output");
        println!("{line}");
        if let Some(json) = line.strip_prefix("QUALITY ") {
            sides.push(Received(serde_json::from_str(json).expect("QUALITY json")));
        }
    }
    let passed = child.wait().expect("wait for node").success();
    assert!(
        passed && sides.len() == 2,
        "the consultation was not measured (two browsers seeing each other over the relay)"
    );
    let patient_side = sides.pop().expect("two sides");
    let doctor_side = sides.pop().expect("two sides");
    for side in [&doctor_side, &patient_side] {
        println!("RECEIVED {side}");
    }
    (server, doctor_side, patient_side)
}

/// The server's value of an unlabelled counter.
async fn counter(server: &TestServer, name: &str) -> f64 {
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The server's histogram of its subscribers' bandwidth estimates (one sample per subscribe
/// connection per second), as "at most X kbit/s: N samples" for each bucket that has some.
async fn estimates(server: &TestServer) -> String {
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let mut below = 0.0;
    let mut out = Vec::new();
    for line in metrics.lines() {
        let Some(rest) =
            line.strip_prefix("callrelay_subscriber_bandwidth_estimate_bps_bucket{le=\"")
        else {
            continue;
        };
        let Some((le, count)) = rest.split_once("\"} ") else {
            continue;
        };
        let count: f64 = count.trim().parse().unwrap_or(0.0);
        if count > below {
            let le = le
                .parse::<f64>()
                .map_or(le.to_owned(), |b| format!("{}k", b / 1000.0));
            out.push(format!("<={le}: {}", count - below));
        }
        below = count;
    }
    out.join(", ")
}

/// Both namespaces of a quality test, or None after saying loudly why not.
fn two_namespaces(tags: (char, char), what: &str) -> Option<(Namespace, Namespace)> {
    match (
        Namespace::create(tags.0, false),
        Namespace::create(tags.1, false),
    ) {
        (Ok(a), Ok(b)) => Some((a, b)),
        (Err(e), _) | (_, Err(e)) => {
            support::skip(what, &e);
            None
        }
    }
}

/// Issue 12: a patient whose downlink carries 300 kbit/s gets the doctor's smallest simulcast
/// layer (180 p of the 720 p camera) and a moving picture (at least 15 decoded frames per
/// second), while the doctor, on a good link, keeps getting a high layer of the patient's (at
/// least 360 p: the 720 p one only while Chromium's own uplink estimate carries it, which on a
/// busy 2-core machine it often does not; "sending" in the output says what it sends).
///
/// On this policer (no queue: the estimate gets no warning before the loss) the SFU's
/// estimate climbs while nothing is lost; a move up that then loses is undone at once and the
/// next one waits longer (`allocate::UpgradeGate`), and a switch whose keyframe request was
/// lost asks again.
#[tokio::test]
async fn a_subscriber_on_a_narrow_downlink_gets_the_low_layer_and_the_other_keeps_the_high_one() {
    if !prerequisites() {
        return;
    }
    let _turn = support::ONE_BROWSER_SCENARIO_AT_A_TIME.lock().await;
    let Some((doctor, patient)) = two_namespaces(('f', 'l'), "the browser quality tests") else {
        return;
    };
    // 37 kbytes/s: about 300 kbit/s.
    let condition = patient.limit_downlink_command(37);
    let (server, doctor_side, patient_side) =
        measure_quality(&doctor, &patient, &condition, &[]).await;
    let switches = counter(&server, "callrelay_sfu_layer_switches_total").await;
    let pauses = counter(&server, "callrelay_sfu_video_pauses_total").await;
    println!(
        "layer switches {switches}, video pauses {pauses}; estimates {}",
        estimates(&server).await
    );
    assert!(
        patient_side.share_at_most(180) >= 0.75,
        "the narrow downlink gets the low layer (at least three quarters of the time): \
         {patient_side}"
    );
    assert!(
        patient_side.num("fps") >= 15.0,
        "the narrow downlink's picture moves: {patient_side}"
    );
    // Most of the time: a good link's estimate may dip (a busy machine delays the browser's
    // packets), and a move down holds a while before the next move up.
    assert!(
        1.0 - doctor_side.share_at_most(180) >= 0.5,
        "the good link keeps a high layer: {doctor_side}"
    );
    assert!(
        doctor_side.num("fps") >= 15.0,
        "the good link's picture moves: {doctor_side}"
    );
    assert!(switches > 0.0, "the server counted no layer switch");
}

/// Both sides of a consultation with `percent` % of its UDP lost each way on both browsers'
/// links (a video crosses two such links: the publisher's up, the subscriber's down), measured
/// with the pages' NACKs (`nack`) or without (neither browser asks for nor answers
/// retransmissions: the picture then rests on keyframe requests alone). None: skipped (said).
async fn under_loss(percent: u32, nack: bool) -> Option<[Received; 2]> {
    let (doctor, patient) = two_namespaces(('x', 'y'), "the browser quality tests")?;
    let condition = format!(
        "{} && {}",
        doctor.udp_loss_command(percent),
        patient.udp_loss_command(percent)
    );
    let extra: &[&str] = if nack { &[] } else { &["--no-nack"] };
    println!(
        "--- {percent} % UDP loss each way, {}",
        if nack {
            "with NACK/RTX"
        } else {
            "without NACK/RTX"
        }
    );
    let (server, doctor_side, patient_side) =
        measure_quality(&doctor, &patient, &condition, extra).await;
    println!(
        "layer switches {}, video pauses {}, packets paced {}; estimates {}",
        counter(&server, "callrelay_sfu_layer_switches_total").await,
        counter(&server, "callrelay_sfu_video_pauses_total").await,
        counter(&server, "callrelay_rtp_packets_paced_total").await,
        estimates(&server).await
    );
    Some([doctor_side, patient_side])
}

/// Issue 12: under 10 % random loss each way on both links, video keeps decoding on both
/// sides, and freezes less than the same call without NACK/RTX (the issue measured the old
/// server at 2.6-5.4 decoded frames per second and 11 freezes in 20 s on one side).
///
/// 10 % is GCC's loss threshold: random loss, which sending less does not cure, drives the
/// loss-based estimate to its floor, below the smallest layer; the SFU keeps that layer rather
/// than pausing, since no queue grows (`SendSide::congestion_estimate`).
#[tokio::test]
async fn video_keeps_decoding_under_10_percent_loss_and_freezes_less_than_without_nack() {
    if !prerequisites() {
        return;
    }
    let _turn = support::ONE_BROWSER_SCENARIO_AT_A_TIME.lock().await;
    let Some(with) = under_loss(10, true).await else {
        return;
    };
    let Some(without) = under_loss(10, false).await else {
        return;
    };
    // Freezes as getStats counts them, and the time the pictures stood still (which also
    // counts a stall not over yet when the window ends).
    let total = |sides: &[Received; 2], key: &str| sides.iter().map(|s| s.num(key)).sum::<f64>();
    println!(
        "both sides: {} freezes ({:.2} s) and {} ms stalled with NACK/RTX; {} freezes ({:.2} s) \
         and {} ms stalled without",
        total(&with, "freezeCount"),
        total(&with, "totalFreezesDuration"),
        total(&with, "stalledMs"),
        total(&without, "freezeCount"),
        total(&without, "totalFreezesDuration"),
        total(&without, "stalledMs"),
    );
    for side in &with {
        assert!(side.num("fps") >= 10.0, "video keeps decoding: {side}");
        assert!(
            side.num("longestStallMs") < 2000.0,
            "the picture never stops for 2 s: {side}"
        );
    }
    assert!(
        total(&with, "stalledMs") < total(&without, "stalledMs"),
        "NACK/RTX make the pictures stand still less"
    );
}

/// The same at 5 % loss each way: both pictures keep moving.
#[tokio::test]
async fn video_keeps_decoding_under_5_percent_loss() {
    if !prerequisites() {
        return;
    }
    let _turn = support::ONE_BROWSER_SCENARIO_AT_A_TIME.lock().await;
    let Some(sides) = under_loss(5, true).await else {
        return;
    };
    for side in &sides {
        assert!(side.num("fps") >= 15.0, "video keeps decoding: {side}");
        assert!(
            side.num("longestStallMs") < 2000.0,
            "the picture never stops for 2 s: {side}"
        );
    }
}
