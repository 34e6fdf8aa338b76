//! Hooks for callrelay's benchmarks (feature `bench`; off in the server build).
//!
//! They expose the SFU's own pieces so that `benches/forwarding.rs` measures the code the media
//! loop runs rather than a copy of it: a subscribe connection built exactly as the loop builds
//! one, the per-copy step of the forwarding path (rewrite, marshal, SRTP, hand-off to the
//! socket), and a recorder of each copy's forwarding latency. Nothing here changes how the SFU
//! behaves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::peer_connection::RTCPeerConnection;

/// The exact `rtc` core the SFU is built on, so a benchmark's client peers use the same version.
pub use rtc;

pub use crate::codec::Vp8Numbering;
pub use crate::congestion::{Paced, SendSide};
pub use crate::forward::CopyScratch;
use crate::peer::{self, CoreCounters, PcSetup};
pub use crate::shard::{CopyTo, Transmit};
use crate::{Command, MediaError, PcKind, SfuHandle};

/// A subscribe connection as the media loop creates one (ICE-lite with fresh credentials, the
/// SFU's codecs, header extensions and interceptors), announcing `candidates` as its host
/// candidates. Add tracks, offer and drive it like any `RTCPeerConnection`.
pub fn subscribe_connection(
    candidates: &[SocketAddr],
    now: Instant,
) -> Result<RTCPeerConnection, MediaError> {
    let (ufrag, pwd) = peer::ice_credentials(&mut rand::rng());
    let counters = Arc::new(CoreCounters::default());
    peer::build(
        &PcSetup {
            kind: PcKind::Subscribe,
            ufrag: &ufrag,
            pwd: &pwd,
            candidates: &peer::HostCandidates {
                udp: candidates.to_vec(),
                tcp: Vec::new(),
            },
            counters: &counters,
            ice_disconnected_timeout: Duration::from_secs(5),
            ice_failed_timeout: Duration::from_secs(30),
        },
        now,
    )
}

/// The media loop's per-copy forwarding step (`forward_rtp` runs it once per ready subscriber):
/// see `write_copy` in the SFU.
pub use crate::shard::write_copy as forward_copy;

/// Runs `f` on each of the SFU's media threads (one per shard, between two inputs of its
/// loop) and returns the results in shard order; `None` if the SFU has stopped. The shards run
/// on threads of their own, so this is how a benchmark samples them (CPU time, allocations)
/// or records their copies' latencies.
pub async fn on_media_threads<T: Send + 'static>(
    sfu: &SfuHandle,
    f: impl Fn() -> T + Send + Sync + 'static,
) -> Option<Vec<T>> {
    let f = Arc::new(f);
    let mut replies = Vec::with_capacity(sfu.shards.len());
    for shard in sfu.shards.iter() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let f = Arc::clone(&f);
        let job = Box::new(move || {
            let _ = tx.send(f());
        });
        shard.send(Command::OnMediaThread(job)).await.ok()?;
        replies.push(rx);
    }
    let mut out = Vec::with_capacity(replies.len());
    for rx in replies {
        out.push(rx.await.ok()?);
    }
    Some(out)
}

thread_local! {
    /// Per-copy forwarding latencies (ns) recorded on the media loop's thread, while switched on.
    static COPY_LATENCIES: std::cell::RefCell<Option<Vec<u32>>> =
        const { std::cell::RefCell::new(None) };
}

/// Starts (or restarts, dropping what was recorded) recording, on the calling thread, the
/// forwarding latency of every copy the media loop sends: from its packet read off the socket
/// to the copy handed to the kernel. Call it on the thread that runs the media loop, i.e. from
/// a closure given to [`on_media_threads`].
pub fn start_recording_copy_latencies() {
    COPY_LATENCIES.with(|r| *r.borrow_mut() = Some(Vec::with_capacity(1 << 20)));
}

/// Stops recording and returns what was recorded (ns per copy, in sending order).
pub fn take_copy_latencies() -> Vec<u32> {
    COPY_LATENCIES.with(|r| r.borrow_mut().take().unwrap_or_default())
}

/// The media loop's hook: a no-op unless recording was started on this thread.
#[inline]
pub(crate) fn observe_copy(latency: Duration) {
    COPY_LATENCIES.with(|r| {
        if let Some(v) = r.borrow_mut().as_mut() {
            v.push(u32::try_from(latency.as_nanos()).unwrap_or(u32::MAX));
        }
    });
}
