//! Datagrams the kernel dropped because the media socket's receive queue was full: the first
//! sign that the media loop cannot keep up (saturation), invisible to the loop itself since the
//! datagrams never reach it. Read from the `drops` column of `/proc/net/udp` and
//! `/proc/net/udp6` (cumulative per socket) once a second, off the media loop, and added to
//! `callrelay_media_datagrams_dropped_total{reason="queue_full"}`.

use std::time::Duration;

use prometheus::IntCounter;

const INTERVAL: Duration = Duration::from_secs(1);

/// The `drops` of the sockets bound to local `port` in a `/proc/net/udp`-format table, summed;
/// `None` if no such socket is listed.
pub(crate) fn drops_on_port(table: &str, port: u16) -> Option<u64> {
    let mut found = None;
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let local_port = cols
            .get(1)
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if local_port != Some(port) {
            continue;
        }
        if let Some(drops) = cols.last().and_then(|d| d.parse::<u64>().ok()) {
            *found.get_or_insert(0) += drops;
        }
    }
    found
}

async fn read_drops(port: u16) -> Option<u64> {
    let mut total = None;
    for path in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(table) = tokio::fs::read_to_string(path).await
            && let Some(d) = drops_on_port(&table, port)
        {
            *total.get_or_insert(0) += d;
        }
    }
    total
}

/// Adds the media socket's kernel drops to `counter` every second, until aborted. Does nothing
/// where `/proc/net/udp` is not available.
pub(crate) async fn watch(port: u16, counter: IntCounter) {
    let Some(mut last) = read_drops(port).await else {
        return;
    };
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tick.tick().await;
        if let Some(now) = read_drops(port).await {
            counter.inc_by(now.saturating_sub(last));
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 00000000:C350 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17
  124: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 5
  125: 0100007F:9C40 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4244 2 0000000000000000 9
";

    #[test]
    fn reads_the_drops_of_the_socket_bound_to_the_port() {
        assert_eq!(
            drops_on_port(TABLE, 50_000),
            Some(17),
            "0xC350 = 50000, local side only"
        );
        assert_eq!(drops_on_port(TABLE, 53), Some(5));
        assert_eq!(drops_on_port(TABLE, 40_000), Some(9));
        assert_eq!(drops_on_port(TABLE, 3_000), None);
        assert_eq!(drops_on_port("", 50_000), None);
    }

    #[test]
    fn reads_ipv6_addresses() {
        let table = "header\n   7: 00000000000000000000000000000000:C350 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2 0000000000000000 3\n";
        assert_eq!(drops_on_port(table, 50_000), Some(3));
    }

    /// A socket nobody reads, with the smallest receive queue the kernel allows: a burst to it
    /// is mostly dropped by the kernel, and the watcher counts exactly those drops.
    #[tokio::test]
    async fn counts_what_the_kernel_drops_on_the_socket() {
        use nix::sys::socket::{setsockopt, sockopt};
        let full = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        setsockopt(&full, sockopt::RcvBuf, &1).unwrap();
        let port = full.local_addr().unwrap().port();
        let counter = IntCounter::new("drops", "test").unwrap();
        let watcher = tokio::spawn(watch(port, counter.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await; // baseline read
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            sender.send_to(&[0u8; 1_000], ("127.0.0.1", port)).unwrap();
        }
        let kernel = drops_on_port(&std::fs::read_to_string("/proc/net/udp").unwrap(), port);
        let dropped = kernel.expect("the socket is listed");
        assert!(
            dropped > 100,
            "a 1-byte queue drops most of 200 datagrams: {dropped}"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while counter.get() < dropped && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(counter.get(), dropped);
        watcher.abort();
    }
}
