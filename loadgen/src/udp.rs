//! UDP with kernel receive timestamps (`SO_TIMESTAMPNS`): the time a datagram was queued on the
//! receiving socket, independent of when the receiving thread got round to reading it. On
//! loopback that is the moment the sender's `sendto` delivered it.

use std::io;
use std::io::IoSliceMut;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Binds a non-blocking UDP socket with receive timestamps and a large receive buffer.
pub async fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::from_std(bind_std(addr)?)
}

/// [`bind`] without a runtime: the socket is non-blocking, ready for `UdpSocket::from_std`.
pub fn bind_std(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    setsockopt(&socket, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = setsockopt(&socket, sockopt::RcvBuf, &(4 << 20));
    Ok(socket)
}

/// One datagram read without waiting: (length, source, kernel receive time in ns since the
/// Unix epoch, or 0 if the kernel gave none). `WouldBlock` when nothing is queued.
pub fn try_recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, u64)> {
    socket.try_io(Interest::READABLE, || recv_raw(socket, buf))
}

/// Waits for and reads one datagram (see [`try_recv`]).
pub async fn recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, u64)> {
    socket
        .async_io(Interest::READABLE, || recv_raw(socket, buf))
        .await
}

fn recv_raw(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, u64)> {
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut ts = 0u64;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmTimestampns(t) = c {
                ts = t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64;
            }
        }
    }
    let from = msg
        .address
        .and_then(|a| to_std(&a))
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    Ok((msg.bytes, from, ts))
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    if let Some(v6) = a.as_sockaddr_in6() {
        return Some(SocketAddr::V6(SocketAddrV6::from(*v6)));
    }
    let _ = a.len();
    None
}
