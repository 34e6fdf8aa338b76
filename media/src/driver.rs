//! The media driver: the only part of the SFU with a thread, a socket, clocks and randomness.
//!
//! [`spawn`] binds the one UDP socket (its buffers grown), seeds the shard's generator from the
//! OS and starts one OS thread, `callrelay-media`, with a current-thread tokio runtime of its
//! own: the media never shares a runtime with HTTP and Socket.IO. On that thread the driver
//! waits on the socket, the command channel and the shard's next timeout, reads the clock once
//! per input, hands the input to the [`Shard`] and sends what [`Shard::poll_transmit`] yields
//! (counting failed sends and each copy's forwarding latency). Beside it, on the same runtime,
//! a task watches the kernel's drops at the socket ([`crate::socket_drops`]).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::metrics::{DriverMetrics, Metrics};
use crate::shard::Shard;
use crate::{Command, MediaConfig, MediaError, MediaEvent};

/// Datagrams drained from the socket after a wake-up before timers are looked at.
const RECV_BATCH: usize = 64;
/// How often the driver's own counters are flushed.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The addresses announced as host candidates: the bound address (or, if unspecified, every
/// interface address of that family, loopback included) plus the configured public IPs.
fn candidate_addrs(local: SocketAddr, public_ips: &[IpAddr]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    if local.ip().is_unspecified() {
        if let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() {
            for ifa in ifaddrs {
                let Some(addr) = ifa.address else { continue };
                let ip = if let Some(v4) = addr.as_sockaddr_in() {
                    IpAddr::V4(v4.ip())
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    IpAddr::V6(v6.ip())
                } else {
                    continue;
                };
                let same_family = ip.is_ipv4() == local.is_ipv4();
                let link_local_v6 =
                    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
                if same_family && !link_local_v6 {
                    out.push(SocketAddr::new(ip, local.port()));
                }
            }
        }
        if out.is_empty() {
            let lo: IpAddr = if local.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            out.push(SocketAddr::new(lo, local.port()));
        }
    } else {
        out.push(local);
    }
    for ip in public_ips {
        let a = SocketAddr::new(*ip, local.port());
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// Every publisher shares the one socket, so its receive queue must absorb their bursts (a
/// keyframe is dozens of packets at once) while the loop fans out the previous packet: the
/// kernel default (208 KiB, ~170 datagrams) drops under load long before the CPU is busy.
/// Asks for 4 MiB each way; the kernel caps it at `net.core.rmem_max`/`wmem_max`, so the sizes
/// obtained are returned (and logged, as the kernel reports them: twice the usable size) for
/// the operator to raise those if needed.
fn grow_socket_buffers(socket: &std::net::UdpSocket) -> (usize, usize) {
    use nix::sys::socket::{setsockopt, sockopt};
    const WANTED: usize = 4 << 20;
    let _ = setsockopt(socket, sockopt::RcvBuf, &WANTED);
    let _ = setsockopt(socket, sockopt::SndBuf, &WANTED);
    (
        nix::sys::socket::getsockopt(socket, sockopt::RcvBuf).unwrap_or(0),
        nix::sys::socket::getsockopt(socket, sockopt::SndBuf).unwrap_or(0),
    )
}

/// Binds `config.bind`, builds the shard and starts the media thread. Returns the bound address.
pub(crate) fn spawn(
    config: MediaConfig,
    metrics: Metrics,
    driver_metrics: DriverMetrics,
    cmd_rx: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<MediaEvent>,
) -> Result<SocketAddr, MediaError> {
    let socket = std::net::UdpSocket::bind(config.bind)?;
    socket.set_nonblocking(true)?;
    let (rcvbuf, sndbuf) = grow_socket_buffers(&socket);
    let local_addr = socket.local_addr()?;
    let candidates = candidate_addrs(local_addr, &config.public_ips);
    info!(
        %local_addr,
        candidates = candidates.len(),
        rcvbuf,
        sndbuf,
        "media socket bound"
    );
    let now = Instant::now();
    let shard = Shard::new(
        config,
        candidates.clone(),
        metrics,
        events,
        rand::make_rng::<StdRng>(),
        now,
        unix_now(),
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("callrelay-media".into())
        .spawn(move || {
            runtime.block_on(async move {
                let socket = match UdpSocket::from_std(socket) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("media socket: {e}");
                        return;
                    }
                };
                Driver {
                    socket,
                    local_addr,
                    candidates,
                    shard,
                    metrics: driver_metrics,
                    cmd_rx,
                }
                .run()
                .await;
            });
        })?;
    Ok(local_addr)
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

struct Driver {
    socket: UdpSocket,
    local_addr: SocketAddr,
    candidates: Vec<SocketAddr>,
    shard: Shard,
    metrics: DriverMetrics,
    cmd_rx: mpsc::Receiver<Command>,
}

impl Driver {
    async fn run(mut self) {
        let drops = tokio::spawn(crate::socket_drops::watch(
            self.local_addr.port(),
            self.metrics.socket_queue_full.clone(),
        ));
        let mut buf = vec![0u8; 2048];
        let mut next_flush = Instant::now() + FLUSH_EVERY;
        loop {
            let next_timeout = self
                .shard
                .poll_timeout()
                .unwrap_or(next_flush)
                .min(next_flush);
            tokio::select! {
                biased;
                cmd = self.cmd_rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    let now = Instant::now();
                    match cmd {
                        Command::Shutdown { reply } => {
                            self.shard.close_all(now);
                            self.transmit();
                            self.metrics.flush();
                            let _ = reply.send(());
                            break;
                        }
                        #[cfg(feature = "bench")]
                        Command::OnMediaThread(f) => f(),
                        cmd => {
                            self.shard.handle_command(now, cmd);
                            self.transmit();
                        }
                    }
                }
                res = self.socket.recv_from(&mut buf) => {
                    match res {
                        Ok((n, from)) => {
                            self.receive(from, &buf[..n]);
                            // Drain what else is already queued before looking at timers.
                            for _ in 0..RECV_BATCH {
                                match self.socket.try_recv_from(&mut buf) {
                                    Ok((n, from)) => self.receive(from, &buf[..n]),
                                    Err(_) => break,
                                }
                            }
                        }
                        Err(e) => debug!("media socket recv error: {e}"),
                    }
                }
                _ = tokio::time::sleep_until(next_timeout.into()) => {}
            }
            // Timeouts run whenever they are due, not only when the select picks the sleep:
            // under sustained load the socket is always readable, the biased select never
            // reaches the sleep, and the connections' own timeouts (RTCP, retransmissions),
            // metrics flushes and sender reports would stop exactly when the server is busiest.
            let now = Instant::now();
            if self.shard.poll_timeout().is_some_and(|t| t <= now) {
                self.shard.handle_timeout(now);
                self.transmit();
            }
            if now >= next_flush {
                self.metrics.flush();
                next_flush = now + FLUSH_EVERY;
            }
        }
        drops.abort();
        info!("media loop stopped");
    }

    fn receive(&mut self, source: SocketAddr, data: &[u8]) {
        let now = Instant::now();
        let destination = self.local_addr_for(source);
        self.shard.handle_receive(now, source, destination, data);
        self.transmit();
    }

    /// Sends everything the shard queued, in order. A forwarded copy's latency runs from its
    /// packet's receipt to its hand-off to the kernel.
    fn transmit(&mut self) {
        while let Some(t) = self.shard.poll_transmit() {
            if self.socket.try_send_to(&t.bytes, t.destination).is_err() {
                self.metrics.send_failed.inc();
            }
            if let Some(received_at) = t.received_at {
                let latency = received_at.elapsed();
                self.metrics.forward_latency.observe(latency.as_secs_f64());
                #[cfg(feature = "bench")]
                crate::bench::observe_copy(latency);
            }
        }
    }

    /// The local address the ICE agent should see a datagram arrive on: one of the announced
    /// host candidates (the socket may be bound to an unspecified address).
    fn local_addr_for(&self, from: SocketAddr) -> SocketAddr {
        if !self.local_addr.ip().is_unspecified() {
            return self.local_addr;
        }
        let same_family = |a: &&SocketAddr| a.is_ipv4() == from.is_ipv4();
        self.candidates
            .iter()
            .filter(same_family)
            .find(|a| a.ip().is_loopback() == from.ip().is_loopback())
            .or_else(|| self.candidates.iter().find(same_family))
            .copied()
            .unwrap_or(self.local_addr)
    }
}
