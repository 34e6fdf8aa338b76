//! Datagrams to and from the kernel in batches: one `sendmmsg(2)` for up to [`SEND_BATCH`]
//! datagrams, each to its own destination (GSO does not fit: it needs one destination per
//! batch, and a fan-out has one per subscriber), and one `recvmmsg(2)` for up to
//! [`RECV_BATCH`]. Message headers, addresses, I/O vectors and receive buffers are allocated
//! once and reused. (Both are built on a worker's own thread: the system-call buffers hold
//! raw pointers and stay there.)

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};

use crate::shard::Transmit;

/// Datagrams per `sendmmsg` call.
pub(crate) const SEND_BATCH: usize = 64;

pub(crate) struct BatchSender {
    pending: Vec<Transmit>,
    headers: MultiHeaders<SockaddrStorage>,
    addrs: Vec<Option<SockaddrStorage>>,
    /// Reused between calls; empty outside [`BatchSender::send`] (it borrows `pending`).
    slices: Vec<[IoSlice<'static>; 1]>,
}

impl BatchSender {
    pub fn new() -> Self {
        Self {
            pending: Vec::with_capacity(SEND_BATCH),
            headers: MultiHeaders::preallocate(SEND_BATCH, None),
            addrs: Vec::with_capacity(SEND_BATCH),
            slices: Vec::with_capacity(SEND_BATCH),
        }
    }

    pub fn is_full(&self) -> bool {
        self.pending.len() >= SEND_BATCH
    }

    pub fn push(&mut self, transmit: Transmit) {
        self.pending.push(transmit);
    }

    /// Sends every pending datagram on `fd` (non-blocking) and returns how many the kernel
    /// refused (send buffer full, unreachable...): each refused one is dropped, as a single
    /// `try_send_to` would have. The datagrams stay in [`BatchSender::drain_sent`] until taken.
    pub fn send(&mut self, fd: RawFd) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        self.addrs.clear();
        self.addrs.extend(
            self.pending
                .iter()
                .map(|t| Some(SockaddrStorage::from(t.destination))),
        );
        let mut slices = reuse(std::mem::take(&mut self.slices));
        slices.extend(self.pending.iter().map(|t| [IoSlice::new(&t.bytes)]));
        let mut refused = 0;
        let mut from = 0;
        while from < slices.len() {
            let sent = sendmmsg(
                fd,
                &mut self.headers,
                &slices[from..],
                &self.addrs[from..],
                [],
                MsgFlags::MSG_DONTWAIT,
            )
            .map(|results| results.count());
            match sent {
                Ok(n) if n > 0 => from += n,
                // The datagram at `from` was refused: drop it and go on with the next.
                _ => {
                    refused += 1;
                    from += 1;
                }
            }
        }
        self.slices = reuse(slices);
        refused
    }

    /// The datagrams of the last [`BatchSender::send`], for the caller's accounting.
    pub fn drain_sent(&mut self) -> std::vec::Drain<'_, Transmit> {
        self.pending.drain(..)
    }
}

/// Datagrams per `recvmmsg` call.
pub(crate) const RECV_BATCH: usize = 64;
/// Larger datagrams are truncated (and then refused by whatever parses them): media stays
/// under the path MTU.
const MAX_DATAGRAM: usize = 2048;

pub(crate) struct BatchReceiver {
    buffers: Box<[[u8; MAX_DATAGRAM]; RECV_BATCH]>,
    headers: MultiHeaders<SockaddrStorage>,
    /// (buffer, source, length) of each datagram of the last call.
    received: Vec<(usize, SocketAddr, usize)>,
}

impl BatchReceiver {
    pub fn new() -> Self {
        Self {
            buffers: Box::new([[0; MAX_DATAGRAM]; RECV_BATCH]),
            headers: MultiHeaders::preallocate(RECV_BATCH, None),
            received: Vec::with_capacity(RECV_BATCH),
        }
    }

    /// Reads what is queued on `fd` (non-blocking), up to a batch; returns how many
    /// datagrams were read, or the error (`WouldBlock` when none were queued).
    pub fn recv(&mut self, fd: RawFd) -> std::io::Result<usize> {
        self.received.clear();
        // On the stack: the I/O vectors borrow the buffers for the call only.
        let mut slices = self.buffers.each_mut().map(|b| [IoSliceMut::new(b)]);
        recvmmsg(
            fd,
            &mut self.headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map(|results| {
            for (buffer, msg) in results.enumerate() {
                // Only IP sockets are read here: every datagram has an IP source.
                if let Some(source) = msg.address.as_ref().and_then(std_addr) {
                    self.received.push((buffer, source, msg.bytes));
                }
            }
        })
        .map_err(std::io::Error::from)?;
        Ok(self.received.len())
    }

    /// Datagram `i` of the last [`BatchReceiver::recv`]: its source and bytes.
    pub fn datagram(&self, i: usize) -> (SocketAddr, &[u8]) {
        let (buffer, source, len) = self.received[i];
        (source, &self.buffers[buffer][..len.min(MAX_DATAGRAM)])
    }
}

fn std_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        Some(SocketAddr::V4((*v4).into()))
    } else {
        addr.as_sockaddr_in6()
            .map(|v6| SocketAddr::V6((*v6).into()))
    }
}

/// The same allocation, emptied, for slices of another lifetime (the standard library reuses
/// a vector's buffer when collecting an empty one into elements of the same layout).
fn reuse<'a, 'b>(mut v: Vec<[IoSlice<'a>; 1]>) -> Vec<[IoSlice<'b>; 1]> {
    v.clear();
    v.into_iter().map(|_| unreachable!("emptied")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    fn transmit(to: std::net::SocketAddr, payload: &[u8]) -> Transmit {
        Transmit {
            destination: to,
            bytes: BytesMut::from(payload),
            received_at: None,
        }
    }

    #[test]
    fn a_batch_reaches_every_destination_in_order() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let receivers: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut batch = BatchSender::new();
        // More than one batch's worth, spread over three destinations.
        for i in 0..(SEND_BATCH + 10) {
            let to = receivers[i % 3].local_addr().unwrap();
            batch.push(transmit(to, &(i as u32).to_be_bytes()));
            if batch.is_full() {
                assert_eq!(batch.send(sender.as_raw_fd()), 0);
                assert_eq!(batch.drain_sent().count(), SEND_BATCH);
            }
        }
        assert_eq!(batch.send(sender.as_raw_fd()), 0);
        assert_eq!(batch.drain_sent().count(), 10);
        for (r, receiver) in receivers.iter().enumerate() {
            receiver.set_nonblocking(true).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            while let Ok(n) = receiver.recv(&mut buf) {
                got.push(u32::from_be_bytes(buf[..n].try_into().unwrap()));
            }
            let expected: Vec<u32> = (0..(SEND_BATCH + 10) as u32)
                .filter(|i| *i as usize % 3 == r)
                .collect();
            assert_eq!(got, expected, "receiver {r}");
        }
    }

    #[test]
    fn a_batch_is_read_with_each_source() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let senders: Vec<UdpSocket> = (0..2)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let to = receiver.local_addr().unwrap();
        for i in 0..(RECV_BATCH + 5) {
            senders[i % 2].send_to(&[i as u8; 3], to).unwrap();
        }
        let mut batch = BatchReceiver::new();
        assert_eq!(batch.recv(receiver.as_raw_fd()).unwrap(), RECV_BATCH);
        for i in 0..RECV_BATCH {
            let (source, bytes) = batch.datagram(i);
            assert_eq!(source, senders[i % 2].local_addr().unwrap());
            assert_eq!(bytes, &[i as u8; 3]);
        }
        assert_eq!(batch.recv(receiver.as_raw_fd()).unwrap(), 5, "the rest");
        assert_eq!(batch.datagram(4).1, &[(RECV_BATCH + 4) as u8; 3]);
        let empty = batch.recv(receiver.as_raw_fd()).unwrap_err();
        assert_eq!(empty.kind(), std::io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_refused_datagram_is_counted_and_the_rest_still_go() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = BatchSender::new();
        batch.push(transmit(receiver.local_addr().unwrap(), b"one"));
        // Too big for UDP: the kernel refuses this one (EMSGSIZE).
        batch.push(transmit(receiver.local_addr().unwrap(), &vec![0u8; 70_000]));
        batch.push(transmit(receiver.local_addr().unwrap(), b"three"));
        assert_eq!(batch.send(sender.as_raw_fd()), 1);
        receiver.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"one");
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"three");
    }
}
