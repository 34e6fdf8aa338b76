//! `callrelay-load`: a load generator that drives a running callrelay over the real contract
//! (HTTP for tokens and appointments, Socket.IO signaling, WebRTC media through the SFU), and the
//! client-side pieces the root crate's benchmarks share with it. A crate of its own, so the
//! server does not link a client stack (websocket and HTTP clients, client peers).
//!
//! * [`peer`]: client peer connections on webrtc-rs's sans-IO core, light enough for one thread
//!   to drive a hundred.
//! * [`payload`]: the synthetic media payload (sequence number and send time inside).
//! * [`udp`]: UDP receive with kernel timestamps.
//! * [`stats`]: latency histograms and CPU clocks.
//! * [`sio`]: a small Socket.IO v5 (engine.io v4) client over a websocket.
//! * [`run`]: the generator itself.

pub mod payload;
pub mod peer;
pub mod run;
pub mod sio;
pub mod stats;
pub mod udp;

pub use run::{LoadArgs, run};

/// Everything that can stop the load generator.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("webrtc: {0}")]
    Rtc(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("socket.io: {0}")]
    Signaling(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<rtc::shared::error::Error> for LoadError {
    fn from(e: rtc::shared::error::Error) -> Self {
        LoadError::Rtc(e.to_string())
    }
}
