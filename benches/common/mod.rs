//! Helpers shared by the loopback benches (`relay_latency`, `relay_saturation`): environment
//! knobs, a process-wide clock for samples taken on different threads, reading the SFU's
//! prometheus counters, and the kernel's per-socket receive-queue drops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// An environment knob, or `default` when unset or unparsable.
pub fn env<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Time since the first call, on a clock every thread shares: a saturated thread answers a
/// probe late, so rates are computed over the interval between the thread's own samples.
pub fn since_start() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}

/// Sums a counter (all label values) in a registry.
pub fn metric_sum(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| {
            if m.get_counter().has_value() {
                m.get_counter().value()
            } else {
                0.0
            }
        })
        .sum()
}

/// Polls `f` every 20 ms until it holds, or fails after `limit`.
pub async fn wait_until(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The local UDP ports of a run: the server's and the subscribers'.
pub struct Ports {
    pub server: u16,
    pub clients: Vec<u16>,
}

impl Ports {
    pub fn new(server: SocketAddr, clients: &[std::net::UdpSocket]) -> Self {
        Self {
            server: server.port(),
            clients: clients
                .iter()
                .filter_map(|s| s.local_addr().ok())
                .map(|a| a.port())
                .collect(),
        }
    }

    /// (server, subscribers) receive-queue drops so far.
    pub fn drops(&self) -> (u64, u64) {
        let by_port = udp_drops_by_port();
        let of = |p: &u16| by_port.get(p).copied().unwrap_or(0);
        (of(&self.server), self.clients.iter().map(of).sum())
    }
}

/// The `drops` column of /proc/net/udp (IPv4; the benches bind 127.0.0.1) by local port,
/// summed over the sockets sharing a port (an `SO_REUSEPORT` group: one per SFU worker).
fn udp_drops_by_port() -> HashMap<u16, u64> {
    let text = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let mut by_port = HashMap::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let port = cols
            .get(1)
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        let drops = cols.last().and_then(|d| d.parse::<u64>().ok());
        if let (Some(port), Some(drops)) = (port, drops) {
            *by_port.entry(port).or_insert(0) += drops;
        }
    }
    by_port
}
