//! A worker's datagrams handed to the kernel in batches: one `sendmmsg(2)` for up to
//! [`SEND_BATCH`] datagrams, each to its own destination (GSO does not fit: it needs one
//! destination per batch, and a fan-out has one per subscriber). Message headers, addresses
//! and I/O vectors are allocated once and reused; the sender is built on the worker's own
//! thread (its system-call buffers hold raw pointers and stay there).
//!
//! Receiving stays one `recvfrom` per datagram: `recvmmsg` was measured and did not help
//! (benches/README.md, "Batched I/O").

use std::io::IoSlice;
use std::os::fd::RawFd;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};

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
                .map(|t| Some(SockaddrStorage::from(t.to.addr))),
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
            to: crate::demux::Remote::udp(to),
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
