//! The one error type of the media API.

/// Everything the SFU can refuse. Never a panic: every failure of a command is one of these,
/// and a failure in one room never disturbs another.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Binding or using the UDP socket failed.
    #[error("media socket: {0}")]
    Io(#[from] std::io::Error),

    #[error("media TCP port {port} (ICE-TCP, media.tcp_port): {source}")]
    TcpBind { port: u16, source: std::io::Error },
    /// An SDP the client sent could not be parsed or applied.
    #[error("invalid sdp: {0}")]
    InvalidSdp(String),
    /// An ICE candidate could not be parsed or applied.
    #[error("invalid candidate: {0}")]
    InvalidCandidate(String),
    /// No such room.
    #[error("unknown room {0:?}")]
    UnknownRoom(String),
    /// No such participant in that room.
    #[error("unknown participant {participant:?} in room {room:?}")]
    UnknownParticipant { room: String, participant: String },
    /// The peer connection was closed (left, failed or timed out).
    #[error("peer connection closed")]
    ConnectionClosed,
    /// The request does not fit the negotiation state (e.g. an answer with no offer pending).
    #[error("invalid state: {0}")]
    InvalidState(&'static str),
    /// A room id or participant id that is empty or too long.
    #[error("invalid id: {0}")]
    InvalidId(&'static str),
    /// The webrtc-rs core refused an operation.
    #[error("webrtc: {0}")]
    Rtc(String),
    /// The media loop is gone (shut down).
    #[error("the media loop is not running")]
    Stopped,
}

impl From<rtc::shared::error::Error> for MediaError {
    fn from(err: rtc::shared::error::Error) -> Self {
        MediaError::Rtc(err.to_string())
    }
}
