//! The media driver: the only part of the SFU with threads, sockets, clocks and randomness.
//!
//! [`spawn`] binds the media port, builds `media.workers` shards (each seeded from the OS) and
//! starts one OS thread per shard, `callrelay-media-N`, each with a current-thread tokio
//! runtime of its own: the media never shares a runtime with HTTP and Socket.IO. With one
//! worker the port is one socket; with several, an `SO_REUSEPORT` group of one socket per
//! worker (the kernel spreads datagrams over them by source address).
//!
//! On its thread each driver waits on its socket, its shard's command queue, its inbox (what
//! the other workers hand it) and its shard's next timeout; it reads the clock once per input
//! and hands the input to its [`Shard`]. A datagram read off its socket that belongs to another
//! shard's room ([`crate::route::Router`]: STUN by the shard tagged in the ufrag, the rest by
//! the addresses the shards announce) goes to that shard's inbox instead, copied once. After
//! every input it sends what [`Shard::poll_transmit`] yields on its own socket (same port), in
//! `sendmmsg` batches ([`crate::send_batch`]),
//! counting failed sends and each copy's forwarding latency from the packet's read, and
//! announces the addresses its shard learnt or forgot to the other workers. Worker 0 also
//! runs a task watching the kernel's drops at the port ([`crate::socket_drops`]).
//!
//! With ICE-TCP on (`tcp_port`), worker 0 also accepts TCP connections on the media TCP port
//! and hands each to the worker its first STUN request's ufrag names ([`crate::tcp`]); that
//! worker reads its frames into its shard as it does datagrams and queues the shard's
//! transmits to it.
//!
//! Why a hand-over and not a reader thread: with one worker nothing is handed over (the
//! datagram is read and forwarded by the same thread, as before the split), and with several
//! only datagrams the kernel put on another worker's socket pay one copy and one queue.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rtc::shared::TransportProtocol;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::batch_io::BatchSender;
use crate::demux::Remote;
use crate::metrics::{DriverMetrics, Metrics};
use crate::peer::HostCandidates;
use crate::route::{AddressChange, MAX_SHARDS, Owner, Router};
use crate::shard::{Shard, Transmit};
use crate::tcp::{Accepted, TcpConnections, TcpInput};
use crate::{Command, MediaConfig, MediaError, MediaEvent};

/// Datagrams read off the socket at once before the other inputs and timers get their turn.
const RECV_BATCH: usize = 64;
/// Hand-overs from other workers taken at once before the other inputs and timers.
const INBOX_BATCH: usize = 64;
/// Larger datagrams are truncated (and then refused by whatever parses them): media stays
/// under the path MTU.
const MAX_DATAGRAM: usize = 2048;
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

/// The sockets the shards read: one, or with several shards an `SO_REUSEPORT` group of one
/// per shard on the same address and port (the kernel spreads datagrams over them by source).
/// A fixed port is first bound alone, so a port held by anyone else (even another callrelay
/// with the same group option) is refused instead of silently shared.
fn bind_sockets(bind: SocketAddr, n: usize) -> Result<Vec<std::net::UdpSocket>, MediaError> {
    if n == 1 {
        return Ok(vec![std::net::UdpSocket::bind(bind)?]);
    }
    if bind.port() != 0 {
        drop(std::net::UdpSocket::bind(bind)?);
    }
    let mut sockets: Vec<std::net::UdpSocket> = Vec::with_capacity(n);
    let mut addr = bind;
    for _ in 0..n {
        let socket = reuseport_socket(addr)?;
        addr = socket.local_addr()?; // the first one fixes the port when 0 was asked
        sockets.push(socket);
    }
    Ok(sockets)
}

fn reuseport_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, MediaError> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let io = |e: nix::Error| MediaError::Io(std::io::Error::from(e));
    let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(io)?;
    setsockopt(&fd, sockopt::ReusePort, &true).map_err(io)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(io)?;
    Ok(std::net::UdpSocket::from(fd))
}

/// The ICE-TCP listener on `bind`'s address. Port 0 asks for the UDP port's number
/// (`udp_port`, as bound): a fixed UDP port's number or an error (the firewall is opened for
/// that number), while for a free UDP port (tests) another free port will do.
fn bind_tcp(
    bind: SocketAddr,
    port: u16,
    udp_port: u16,
) -> Result<std::net::TcpListener, MediaError> {
    let at = |port| {
        std::net::TcpListener::bind(SocketAddr::new(bind.ip(), port))
            .map_err(|source| MediaError::TcpBind { port, source })
    };
    let listener = match port {
        0 if bind.port() == 0 => at(udp_port).or_else(|_| at(0))?,
        0 => at(udp_port)?,
        port => at(port)?,
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Binds `config.bind` (and the ICE-TCP port), builds `config.workers` shards and starts a
/// thread for each. Returns the bound address and each shard's command queue.
pub(crate) fn spawn(
    config: MediaConfig,
    (first_metrics, first_driver_metrics): (Metrics, DriverMetrics),
    events: mpsc::UnboundedSender<MediaEvent>,
) -> Result<(SocketAddr, Vec<mpsc::Sender<Command>>), MediaError> {
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, MAX_SHARDS);
    let sockets = bind_sockets(config.bind, workers)?;
    let mut buffers = (0, 0);
    for socket in &sockets {
        socket.set_nonblocking(true)?;
        buffers = grow_socket_buffers(socket);
    }
    let (rcvbuf, sndbuf) = buffers;
    let local_addr = sockets[0].local_addr()?;
    let mut listener = config
        .tcp_port
        .map(|port| bind_tcp(config.bind, port, local_addr.port()))
        .transpose()?;
    let tcp_addr = listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let candidates = HostCandidates {
        udp: candidate_addrs(local_addr, &config.public_ips),
        tcp: tcp_addr.map_or_else(Vec::new, |a| candidate_addrs(a, &config.public_ips)),
    };
    let tcp_open = Arc::new(AtomicUsize::new(0));
    info!(
        %local_addr,
        tcp = ?tcp_addr,
        candidates = candidates.udp.len() + candidates.tcp.len(),
        workers,
        rcvbuf,
        sndbuf,
        "media socket bound"
    );
    let mut metrics: Vec<_> = (1..workers)
        .map(|_| first_metrics.another_shard())
        .collect();
    metrics.insert(0, (first_metrics, first_driver_metrics));
    let (inbox_txs, inbox_rxs): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
    let peers: Arc<[mpsc::UnboundedSender<Handoff>]> = inbox_txs.into();
    let now = Instant::now();
    let mut commands = Vec::with_capacity(workers);
    for (index, ((socket, inbox), (shard_metrics, driver_metrics))) in
        sockets.into_iter().zip(inbox_rxs).zip(metrics).enumerate()
    {
        let shard = Shard::new(
            config.clone(),
            candidates.clone(),
            shard_metrics,
            rand::make_rng::<StdRng>(),
            now,
            unix_now(),
        )?
        .with_index(index, workers);
        let (cmd_tx, cmd_rx) = mpsc::channel(1024);
        commands.push(cmd_tx);
        let candidates = candidates.clone();
        let peers = Arc::clone(&peers);
        let listener = if index == 0 { listener.take() } else { None };
        let tcp = TcpConnections::new(Arc::clone(&tcp_open), config.liveness_timeout);
        let events = events.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("callrelay-media-{index}"))
            .spawn(move || {
                // Built on its thread: the batch's system-call buffers stay there.
                let driver = Driver {
                    index,
                    local_addr,
                    candidates,
                    shard,
                    metrics: driver_metrics,
                    cmd_rx,
                    router: Router::new(index, workers),
                    inbox,
                    peers,
                    events,
                    batch: BatchSender::new(),
                    tcp,
                };
                runtime.block_on(async move {
                    match UdpSocket::from_std(socket) {
                        Ok(socket) => driver.run(socket, listener).await,
                        Err(e) => tracing::error!("media socket: {e}"),
                    }
                });
            })?;
    }
    Ok((local_addr, commands))
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// What one shard's driver hands another.
enum Handoff {
    /// A datagram that arrived on this worker's socket for a room of the other shard.
    Datagram {
        source: SocketAddr,
        bytes: Vec<u8>,
        read_at: Instant,
    },
    /// Shard `from` learnt or forgot a client address.
    Address { from: usize, change: AddressChange },
    /// An ICE-TCP connection whose first frame named this shard.
    Tcp(Accepted),
}

/// A forwarded copy's latency: from its packet's read off a socket (`waited` before the shard
/// saw it, if another worker read it) to its hand-off to the kernel.
fn observe_copy(metrics: &mut DriverMetrics, waited: Duration, t: &Transmit) {
    if let Some(received_at) = t.received_at {
        let latency = received_at.elapsed() + waited;
        metrics.forward_latency.observe(latency.as_secs_f64());
        #[cfg(feature = "bench")]
        crate::bench::observe_copy(latency);
    }
}

struct Driver {
    index: usize,
    local_addr: SocketAddr,
    candidates: HostCandidates,
    shard: Shard,
    metrics: DriverMetrics,
    cmd_rx: mpsc::Receiver<Command>,
    router: Router,
    inbox: mpsc::UnboundedReceiver<Handoff>,
    /// Every shard's inbox, this one's included (so `inbox` never closes while it runs).
    peers: Arc<[mpsc::UnboundedSender<Handoff>]>,
    events: mpsc::UnboundedSender<MediaEvent>,
    batch: BatchSender,
    tcp: TcpConnections,
}

impl Driver {
    async fn run(mut self, socket: UdpSocket, listener: Option<std::net::TcpListener>) {
        let accept = listener.and_then(|l| match tokio::net::TcpListener::from_std(l) {
            Ok(listener) => Some(tokio::spawn(crate::tcp::accept(
                listener,
                self.peers.len(),
                self.tcp.open(),
                self.metrics.tcp_refused.clone(),
                {
                    let peers = Arc::clone(&self.peers);
                    move |owner, accepted| {
                        let _ = peers[owner].send(Handoff::Tcp(accepted));
                    }
                },
            ))),
            Err(e) => {
                tracing::error!("media TCP listener: {e}");
                None
            }
        });
        // One watcher for the port: the kernel's table lists every socket of the group.
        let drops = (self.index == 0).then(|| {
            tokio::spawn(crate::socket_drops::watch(
                self.local_addr.port(),
                self.metrics.socket_queue_full.clone(),
            ))
        });
        let mut buf = vec![0u8; MAX_DATAGRAM];
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
                            self.transmit(&socket, Duration::ZERO);
                            self.tcp.close_all(&self.metrics);
                            self.metrics.flush();
                            let _ = reply.send(());
                            break;
                        }
                        #[cfg(feature = "bench")]
                        Command::OnMediaThread(f) => f(),
                        cmd => {
                            self.shard.handle_command(now, cmd);
                            self.transmit(&socket, Duration::ZERO);
                        }
                    }
                }
                // The inbox and the socket take turns: each wake-up on one also takes a batch
                // of the other, so neither can starve the other under load.
                Some(handoff) = self.inbox.recv() => {
                    self.take(handoff, &socket);
                    self.drain_inbox(&socket);
                    self.read_socket(&mut buf, &socket);
                }
                Some(input) = self.tcp.inputs.recv() => {
                    self.take_tcp(input, &socket);
                    for _ in 1..INBOX_BATCH {
                        match self.tcp.inputs.try_recv() {
                            Ok(input) => self.take_tcp(input, &socket),
                            Err(_) => break,
                        }
                    }
                    self.read_socket(&mut buf, &socket);
                }
                ready = socket.readable() => {
                    if let Err(e) = ready {
                        debug!("media socket: {e}");
                        continue;
                    }
                    self.read_socket(&mut buf, &socket);
                    self.drain_inbox(&socket);
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
                self.transmit(&socket, Duration::ZERO);
            }
            if now >= next_flush {
                let shard = &self.shard;
                self.tcp
                    .sweep(now, |remote| shard.knows_address(remote), &self.metrics);
                self.metrics.flush();
                next_flush = now + FLUSH_EVERY;
            }
        }
        for task in [drops, accept].into_iter().flatten() {
            task.abort();
        }
        info!(worker = self.index, "media loop stopped");
    }

    /// Reads up to a batch off the socket, if any is queued, and handles or hands over each.
    /// One `recvfrom` each: `recvmmsg` was measured and did not help (benches/README.md).
    fn read_socket(&mut self, buf: &mut [u8], socket: &UdpSocket) {
        for _ in 0..RECV_BATCH {
            match socket.try_recv_from(buf) {
                Ok((n, from)) => self.receive(from, &buf[..n], socket),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!("media socket recv error: {e}");
                    break;
                }
            }
        }
    }

    /// A datagram read off this worker's socket: handled here, or handed to the shard that
    /// owns it.
    fn receive(&mut self, source: SocketAddr, data: &[u8], socket: &UdpSocket) {
        let read_at = Instant::now();
        let mut owner = self.owner(source, data);
        if owner == Owner::Unknown {
            // Perhaps another shard learnt this address a moment ago: its announcement was
            // queued before the client could send this (the client answers our STUN reply).
            self.drain_inbox(socket);
            owner = self.owner(source, data);
        }
        match owner {
            Owner::Shard(owner) => {
                let handoff = Handoff::Datagram {
                    source,
                    bytes: data.to_vec(),
                    read_at,
                };
                // A stopped shard (shutting down) drops it.
                let _ = self.peers[owner].send(handoff);
            }
            Owner::Here | Owner::Unknown => {
                self.handle_datagram(source, data, read_at, Duration::ZERO, socket)
            }
        }
    }

    fn owner(&self, source: SocketAddr, data: &[u8]) -> Owner {
        let shard = &self.shard;
        self.router.owner(Remote::udp(source), data, |remote| {
            shard.knows_address(remote)
        })
    }

    /// Hands a datagram to the shard at `now`; `waited` is how long it sat in an inbox after
    /// its read (its copies' forwarding latency counts from the read).
    fn handle_datagram(
        &mut self,
        source: SocketAddr,
        data: &[u8],
        now: Instant,
        waited: Duration,
        socket: &UdpSocket,
    ) {
        let destination = self.local_addr_for(source);
        self.shard
            .handle_receive(now, TransportProtocol::UDP, source, destination, data);
        self.transmit(socket, waited);
    }

    fn take(&mut self, handoff: Handoff, socket: &UdpSocket) {
        match handoff {
            Handoff::Datagram {
                source,
                bytes,
                read_at,
            } => {
                let now = Instant::now();
                let waited = now.saturating_duration_since(read_at);
                self.handle_datagram(source, &bytes, now, waited, socket)
            }
            Handoff::Address { from, change } => self.router.apply(from, change),
            Handoff::Tcp(Accepted {
                stream,
                first,
                read_at,
            }) => {
                let local = stream
                    .local_addr()
                    .map_or(self.local_addr, |a| self.tcp_local_addr_for(a));
                if let Some(peer) = self.tcp.adopt(stream, local, &self.metrics, Instant::now()) {
                    self.take_tcp(
                        TcpInput::Frame {
                            peer,
                            bytes: first,
                            read_at,
                        },
                        socket,
                    );
                }
            }
        }
    }

    /// A frame read off one of this worker's TCP connections, or the end of one.
    fn take_tcp(&mut self, input: TcpInput, socket: &UdpSocket) {
        match input {
            TcpInput::Frame {
                peer,
                bytes,
                read_at,
            } => {
                let Some(local) = self.tcp.local_of(peer) else {
                    return; // closed meanwhile
                };
                let now = Instant::now();
                let waited = now.saturating_duration_since(read_at);
                self.shard
                    .handle_receive(now, TransportProtocol::TCP, peer, local, &bytes);
                self.transmit(socket, waited);
            }
            TcpInput::Closed { peer, id } => self.tcp.closed(peer, id, &self.metrics),
        }
    }

    /// Handles what other shards handed over, up to a batch.
    fn drain_inbox(&mut self, socket: &UdpSocket) {
        for _ in 0..INBOX_BATCH {
            match self.inbox.try_recv() {
                Ok(handoff) => self.take(handoff, socket),
                Err(_) => break,
            }
        }
    }

    /// Sends everything the shard queued, in order, in `sendmmsg` batches (measured: 11-14%
    /// less CPU per copy than one `sendto` each, see benches/README.md), passes its events on
    /// and tells the other shards about the addresses it learnt or forgot.
    fn transmit(&mut self, socket: &UdpSocket, waited: Duration) {
        while let Some(t) = self.shard.poll_transmit() {
            if t.to.transport != TransportProtocol::UDP {
                observe_copy(&mut self.metrics, waited, &t);
                self.tcp.send(t.to.addr, t.bytes, &mut self.metrics);
                continue;
            }
            self.batch.push(t);
            if self.batch.is_full() {
                self.send_batch(socket, waited);
            }
        }
        self.send_batch(socket, waited);
        while let Some(event) = self.shard.poll_event() {
            let _ = self.events.send(event);
        }
        while let Some(change) = self.shard.poll_address_change() {
            for (i, peer) in self.peers.iter().enumerate() {
                if i != self.index {
                    let _ = peer.send(Handoff::Address {
                        from: self.index,
                        change,
                    });
                }
            }
        }
    }

    fn send_batch(&mut self, socket: &UdpSocket, waited: Duration) {
        let refused = self.batch.send(socket.as_raw_fd());
        self.metrics.send_failed.inc_by(refused as u64);
        for t in self.batch.drain_sent() {
            observe_copy(&mut self.metrics, waited, &t);
        }
    }

    /// The local address the ICE agent should see a datagram arrive on: one of the announced
    /// host candidates (the socket may be bound to an unspecified address).
    fn local_addr_for(&self, from: SocketAddr) -> SocketAddr {
        if !self.local_addr.ip().is_unspecified() {
            return self.local_addr;
        }
        let same_family = |a: &&SocketAddr| a.is_ipv4() == from.is_ipv4();
        let udp = &self.candidates.udp;
        udp.iter()
            .filter(same_family)
            .find(|a| a.ip().is_loopback() == from.ip().is_loopback())
            .or_else(|| udp.iter().find(same_family))
            .copied()
            .unwrap_or(self.local_addr)
    }

    /// The TCP candidate the ICE agent knows a connection's local address `local` by: itself
    /// when announced, else the first announced one of its family (a public IP in front).
    fn tcp_local_addr_for(&self, local: SocketAddr) -> SocketAddr {
        let tcp = &self.candidates.tcp;
        if tcp.contains(&local) {
            return local;
        }
        tcp.iter()
            .find(|a| a.is_ipv4() == local.is_ipv4())
            .copied()
            .unwrap_or(local)
    }
}
