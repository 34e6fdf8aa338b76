//! ICE-TCP (RFC 6544): the SFU's passive TCP candidates, for clients whose networks let no UDP
//! out. Each TCP connection carries one client's ICE, DTLS and SRTP as RFC 4571 frames (a
//! 16-bit length, then one datagram), and its frames take the same path as UDP datagrams:
//! the shard's demultiplexer, keyed by [`Remote`] with transport TCP.
//!
//! Worker 0 accepts. A connection's first frame must be a STUN request whose ufrag is one of
//! ours ([`crate::route`]: the ufrag names its shard); the connection is then handed to that
//! shard's worker, which reads and writes it from then on ([`TcpConnections`]), so a room's
//! traffic stays on its worker whatever the transport.
//!
//! Nothing here can stall a worker: reading and writing run in tasks of the worker's runtime;
//! each connection's write queue is bounded and a datagram that finds it full is dropped and
//! counted (`tcp_queue_full`), as a full UDP send buffer would drop it. A connection that
//! sends no authenticated STUN soon after it opens, or goes silent, is closed, and the number
//! open at once is capped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::debug;

use crate::demux::{Class, Remote, StunUser, classify, stun_local_ufrag};
use crate::metrics::{DriverMetrics, TcpRefusal};
use crate::route::shard_of_ufrag;
use rtc::shared::TransportProtocol;

/// The largest frame accepted. RFC 4571 allows 65535; WebRTC datagrams stay under the path
/// MTU, so anything near this is not a WebRTC client.
const MAX_FRAME: usize = 8192;
/// How long a new connection may take to send its first frame.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may go without an authenticated STUN request reaching its shard.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connections open at once (handed to a worker or waiting for their first frame), over
/// all workers: each holds a socket and two small tasks.
const MAX_CONNECTIONS: usize = 8192;
/// Datagrams queued for one connection's writer. About two seconds of a video call: a reader
/// slower than that loses datagrams (counted) rather than memory growing without end.
const WRITE_QUEUE: usize = 512;
/// Frames read from all of a worker's connections not yet taken by it: a busy worker slows
/// its readers down (TCP flow control) instead of queueing without end.
const READ_QUEUE: usize = 1024;

/// A connection accepted on worker 0, with its first frame, for the worker that frame named.
pub(crate) struct Accepted {
    pub stream: std::net::TcpStream,
    pub first: Vec<u8>,
    pub read_at: Instant,
}

/// Reads one RFC 4571 frame into `buf`; `Ok(false)` at a clean end of stream.
async fn read_frame(
    stream: &mut (impl AsyncReadExt + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 || len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame length out of range",
        ));
    }
    buf.resize(len, 0);
    stream.read_exact(buf).await?;
    Ok(true)
}

/// The shard a connection's first frame names, if it is a STUN message with one of our ufrags.
fn owner_of_first_frame(frame: &[u8], shards: usize) -> Option<usize> {
    if classify(frame) != Class::Stun {
        return None;
    }
    match stun_local_ufrag(frame) {
        Ok(StunUser::Ufrag(ufrag)) => shard_of_ufrag(ufrag, shards),
        _ => None,
    }
}

/// Accepts connections on `listener` (worker 0) and hands each, with its first frame, to the
/// worker its ufrag names through `hand_over`.
pub(crate) async fn accept(
    listener: TcpListener,
    shards: usize,
    open: Arc<AtomicUsize>,
    refused: [prometheus::IntCounter; 4],
    hand_over: impl Fn(usize, Accepted) + Clone + Send + 'static,
) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most often: wait rather than spin.
                debug!("media TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::Relaxed);
            refused[TcpRefusal::Limit as usize].inc();
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (open, refused, hand_over) = (Arc::clone(&open), refused.clone(), hand_over.clone());
        tokio::spawn(async move {
            let mut first = Vec::new();
            let why = match tokio::time::timeout(
                FIRST_FRAME_TIMEOUT,
                read_frame(&mut stream, &mut first),
            )
            .await
            {
                Ok(Ok(true)) => match owner_of_first_frame(&first, shards) {
                    Some(owner) => match stream.into_std() {
                        Ok(stream) => {
                            let read_at = Instant::now();
                            hand_over(
                                owner,
                                Accepted {
                                    stream,
                                    first,
                                    read_at,
                                },
                            );
                            return;
                        }
                        Err(_) => TcpRefusal::NotIce,
                    },
                    None => TcpRefusal::NotIce,
                },
                // Closed before saying anything: a client dropping the connections to the
                // candidates it did not pick. Not a refusal.
                Ok(Ok(false)) => {
                    open.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                Ok(Err(_)) => TcpRefusal::NotIce,
                Err(_) => TcpRefusal::Timeout,
            };
            debug!(%peer, reason = ?why, "media TCP connection refused");
            refused[why as usize].inc();
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// A frame read off one of a worker's connections, or the end of one.
pub(crate) enum TcpInput {
    Frame {
        peer: SocketAddr,
        bytes: Vec<u8>,
        read_at: Instant,
    },
    Closed {
        peer: SocketAddr,
        id: u64,
    },
}

struct Connection {
    id: u64,
    /// The local address the ICE agent knows it by (one of the TCP candidates).
    local: SocketAddr,
    writes: mpsc::Sender<BytesMut>,
    reader: AbortHandle,
    opened: Instant,
    /// An authenticated STUN request on it reached the shard (its address was learnt).
    authenticated: bool,
}

/// One worker's TCP connections, by client address.
pub(crate) struct TcpConnections {
    by_peer: HashMap<SocketAddr, Connection>,
    next_id: u64,
    inputs_tx: mpsc::Sender<TcpInput>,
    pub inputs: mpsc::Receiver<TcpInput>,
    open: Arc<AtomicUsize>,
    /// Closes connections silent for this long (the client's consent checks stopped).
    idle_timeout: Duration,
}

impl TcpConnections {
    pub fn new(open: Arc<AtomicUsize>, idle_timeout: Duration) -> Self {
        let (inputs_tx, inputs) = mpsc::channel(READ_QUEUE);
        Self {
            by_peer: HashMap::new(),
            next_id: 0,
            inputs_tx,
            inputs,
            open,
            idle_timeout,
        }
    }

    /// The count of open connections over all workers (the accept loop's cap).
    pub fn open(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.open)
    }

    /// Takes over a connection accepted for this worker; returns the client's address and
    /// the local address to hand its frames to the shard with. Must run on the worker's
    /// runtime (its reader and writer become tasks there).
    pub fn adopt(
        &mut self,
        stream: std::net::TcpStream,
        local: SocketAddr,
        metrics: &DriverMetrics,
        now: Instant,
    ) -> Option<SocketAddr> {
        let Ok(stream) = TcpStream::from_std(stream) else {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        };
        let Ok(peer) = stream.peer_addr() else {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        };
        let id = self.next_id;
        self.next_id += 1;
        let (read_half, write_half) = stream.into_split();
        let (writes, queued) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_frames(write_half, queued));
        let reader = tokio::spawn(read_frames(
            read_half,
            peer,
            id,
            self.inputs_tx.clone(),
            self.idle_timeout,
        ))
        .abort_handle();
        let connection = Connection {
            id,
            local,
            writes,
            reader,
            opened: now,
            authenticated: false,
        };
        if let Some(old) = self.by_peer.insert(peer, connection) {
            self.close(old, metrics);
        }
        metrics.tcp_open.inc();
        Some(peer)
    }

    /// The local address frames from `peer` are handed to the shard with.
    pub fn local_of(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.by_peer.get(&peer).map(|c| c.local)
    }

    /// Queues one datagram for `peer`'s connection; false if it was dropped (no such
    /// connection, or its write queue full: a reader too slow for the call).
    pub fn send(&mut self, peer: SocketAddr, bytes: BytesMut, metrics: &mut DriverMetrics) -> bool {
        let Some(c) = self.by_peer.get(&peer) else {
            metrics.send_failed.inc();
            return false;
        };
        match c.writes.try_send(bytes) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.tcp_queue_full.inc();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics.send_failed.inc();
                false
            }
        }
    }

    /// The reader of connection `id` to `peer` stopped (end of stream, error, silence).
    pub fn closed(&mut self, peer: SocketAddr, id: u64, metrics: &DriverMetrics) {
        if self.by_peer.get(&peer).is_some_and(|c| c.id == id)
            && let Some(c) = self.by_peer.remove(&peer)
        {
            self.close(c, metrics);
        }
    }

    /// Closes connections whose client never authenticated (`authenticated` asks the shard
    /// whether it learnt the address from an authenticated STUN request).
    pub fn sweep(
        &mut self,
        now: Instant,
        authenticated: impl Fn(&Remote) -> bool,
        metrics: &DriverMetrics,
    ) {
        let mut expired = Vec::new();
        for (peer, c) in &mut self.by_peer {
            if c.authenticated {
                continue;
            }
            if authenticated(&Remote {
                transport: TransportProtocol::TCP,
                addr: *peer,
            }) {
                c.authenticated = true;
            } else if now.duration_since(c.opened) > AUTH_TIMEOUT {
                expired.push(*peer);
            }
        }
        for peer in expired {
            if let Some(c) = self.by_peer.remove(&peer) {
                metrics.tcp_refused(TcpRefusal::Unauthenticated);
                self.close(c, metrics);
            }
        }
    }

    /// Closes every connection (the SFU is stopping).
    pub fn close_all(&mut self, metrics: &DriverMetrics) {
        for (_, c) in std::mem::take(&mut self.by_peer) {
            self.close(c, metrics);
        }
    }

    /// Stops the reader; the writer sends what is queued, then ends when its queue's sender
    /// (dropped here) is gone, closing the socket.
    fn close(&self, c: Connection, metrics: &DriverMetrics) {
        c.reader.abort();
        metrics.tcp_open.dec();
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn read_frames(
    mut stream: tokio::net::tcp::OwnedReadHalf,
    peer: SocketAddr,
    id: u64,
    inputs: mpsc::Sender<TcpInput>,
    idle_timeout: Duration,
) {
    loop {
        let mut bytes = Vec::new();
        match tokio::time::timeout(idle_timeout, read_frame(&mut stream, &mut bytes)).await {
            Ok(Ok(true)) => {
                let frame = TcpInput::Frame {
                    peer,
                    bytes,
                    read_at: Instant::now(),
                };
                if inputs.send(frame).await.is_err() {
                    return;
                }
            }
            Ok(Ok(false)) | Ok(Err(_)) | Err(_) => break,
        }
    }
    let _ = inputs.send(TcpInput::Closed { peer, id }).await;
}

async fn write_frames(
    stream: tokio::net::tcp::OwnedWriteHalf,
    mut queued: mpsc::Receiver<BytesMut>,
) {
    let mut out = BufWriter::new(stream);
    while let Some(bytes) = queued.recv().await {
        // A datagram is at most MAX_DATAGRAM bytes (the core's own), far below u16::MAX.
        let Ok(len) = u16::try_from(bytes.len()) else {
            continue;
        };
        if out.write_all(&len.to_be_bytes()).await.is_err() || out.write_all(&bytes).await.is_err()
        {
            return;
        }
        // Flush once the queue is empty: a burst (a keyframe) goes out in few segments.
        if queued.is_empty() && out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(user: &str) -> Vec<u8> {
        let mut msg = rtc::stun::message::Message::new();
        msg.build(&[
            Box::new(rtc::stun::message::BINDING_REQUEST),
            Box::new(rtc::stun::textattrs::TextAttribute::new(
                rtc::stun::attributes::ATTR_USERNAME,
                user.to_owned(),
            )),
        ])
        .expect("stun");
        msg.raw
    }

    #[test]
    fn the_first_frame_must_be_stun_naming_one_of_our_shards() {
        assert_eq!(
            owner_of_first_frame(&binding_request("01abcdef:x"), 2),
            Some(1)
        );
        assert_eq!(
            owner_of_first_frame(&binding_request("00abcdef:x"), 1),
            Some(0)
        );
        // A shard that does not exist, DTLS, HTTP, nothing.
        assert_eq!(
            owner_of_first_frame(&binding_request("07abcdef:x"), 2),
            None
        );
        assert_eq!(owner_of_first_frame(&[22, 254, 253, 0, 0], 1), None);
        assert_eq!(owner_of_first_frame(b"GET / HTTP/1.1\r\n\r\n", 1), None);
        assert_eq!(owner_of_first_frame(&[], 1), None);
    }

    /// Worker 0 accepts; each connection goes to the worker its first STUN request's ufrag
    /// names, with that frame. Anything else is refused and counted, and costs nothing more.
    #[tokio::test]
    async fn accepted_connections_go_to_the_worker_their_ufrag_names() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let registry = prometheus::Registry::new();
        let (_, metrics) = crate::metrics::Metrics::register(&registry).unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let (tx, mut handed) = mpsc::unbounded_channel();
        let accept_loop = tokio::spawn(accept(
            listener,
            2,
            Arc::clone(&open),
            metrics.tcp_refused.clone(),
            move |owner, accepted: Accepted| {
                let _ = tx.send((owner, accepted.first));
            },
        ));
        let framed = |frame: &[u8]| {
            let mut out = (frame.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(frame);
            out
        };
        for (ufrag, worker) in [("01abcdef:c", 1), ("00abcdef:c", 0)] {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let stun = binding_request(ufrag);
            client.write_all(&framed(&stun)).await.unwrap();
            let (owner, first) = handed.recv().await.expect("handed over");
            assert_eq!((owner, first), (worker, stun));
            std::mem::forget(client); // kept open: the worker owns it now
        }
        // Not WebRTC: refused, not handed over.
        let mut http = tokio::net::TcpStream::connect(addr).await.unwrap();
        http.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), http.read_to_end(&mut rest)).await;
        assert!(rest.is_empty(), "closed without an answer");
        assert_eq!(metrics.tcp_refused[TcpRefusal::NotIce as usize].get(), 1);
        assert!(handed.try_recv().is_err());
        assert_eq!(
            open.load(Ordering::Relaxed),
            2,
            "two handed over, the refused one released"
        );
        accept_loop.abort();
    }

    /// A client that stops reading (a stalled phone, a hostile peer) must cost the worker
    /// neither time nor memory: sends never wait, and once its queue is full datagrams are
    /// dropped and counted while the worker goes on.
    #[tokio::test]
    async fn a_client_that_never_reads_gets_drops_not_a_stalled_worker() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        server_side.set_nonblocking(true).unwrap();
        let registry = prometheus::Registry::new();
        let (_, mut metrics) = crate::metrics::Metrics::register(&registry).unwrap();
        let mut conns = TcpConnections::new(Arc::new(AtomicUsize::new(1)), Duration::from_secs(30));
        let local = server_side.local_addr().unwrap();
        let peer = conns
            .adopt(server_side, local, &metrics, Instant::now())
            .expect("adopted");
        assert_eq!(peer, client.local_addr().unwrap());

        // 40 MB at once, far beyond the kernel's buffers and the queue: the client reads none.
        let started = Instant::now();
        let mut sent = 0;
        for _ in 0..40_000 {
            if conns.send(peer, BytesMut::from(&[0x80u8; 1000][..]), &mut metrics) {
                sent += 1;
            }
            tokio::task::yield_now().await; // the writer task runs meanwhile
        }
        metrics.flush();
        let dropped = registry
            .gather()
            .iter()
            .find(|f| f.name() == "callrelay_media_datagrams_dropped_total")
            .and_then(|f| {
                f.get_metric().iter().find(|m| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == "reason" && l.value() == "tcp_queue_full")
                })
            })
            .map_or(0.0, |m| m.get_counter().value());
        assert!(sent < 40_000, "the queue is bounded");
        assert_eq!(
            dropped,
            f64::from(40_000 - sent),
            "every datagram not queued is counted"
        );
        println!(
            "stuck reader: {sent} queued (kernel buffers + {WRITE_QUEUE}), {dropped} dropped, {:?} for 40,000 sends",
            started.elapsed()
        );
        drop(client);
    }

    #[tokio::test]
    async fn frames_are_read_as_rfc4571_length_and_datagram() {
        let mut input: &[u8] = &[0, 3, 1, 2, 3, 0, 1, 9];
        let mut buf = Vec::new();
        assert!(read_frame(&mut input, &mut buf).await.unwrap());
        assert_eq!(buf, [1, 2, 3]);
        assert!(read_frame(&mut input, &mut buf).await.unwrap());
        assert_eq!(buf, [9]);
        assert!(
            !read_frame(&mut input, &mut buf).await.unwrap(),
            "clean end"
        );
        // A zero or oversized length is not a WebRTC frame: the connection is refused.
        let mut zero: &[u8] = &[0, 0];
        assert!(read_frame(&mut zero, &mut buf).await.is_err());
        let mut huge: &[u8] = &[0xff, 0xff, 0];
        assert!(read_frame(&mut huge, &mut buf).await.is_err());
        // A frame cut short is an error, not a frame.
        let mut short: &[u8] = &[0, 4, 1, 2];
        assert!(read_frame(&mut short, &mut buf).await.is_err());
    }
}
