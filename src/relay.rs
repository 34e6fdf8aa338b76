//! Connects signaling's [`Relay`] to the SFU of `callrelay-media`, and pumps the SFU's events
//! back to the sockets they concern.

use std::sync::Arc;

use async_trait::async_trait;
use callrelay_signaling::SocketIo;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use callrelay_media::{CandidateInit, MediaError, MediaEvent, PcKind, SfuHandle, VideoSize};
use callrelay_signaling::protocol::ErrorCode;
use callrelay_signaling::relay::PcKind as SignalPc;
use callrelay_signaling::{Relay, RelayError, RelayEvent, Signaling};

use crate::cluster::relay::MediaNode;

pub struct SfuRelay(pub SfuHandle);

fn refusal(err: MediaError) -> RelayError {
    let code = match &err {
        MediaError::InvalidSdp(_) | MediaError::InvalidCandidate(_) | MediaError::InvalidId(_) => {
            ErrorCode::InvalidPayload
        }
        MediaError::UnknownRoom(_) | MediaError::UnknownParticipant { .. } => ErrorCode::NotFound,
        MediaError::ConnectionClosed | MediaError::InvalidState(_) => ErrorCode::Conflict,
        MediaError::Io(_)
        | MediaError::TcpBind { .. }
        | MediaError::Rtc(_)
        | MediaError::Stopped => {
            tracing::error!(error = %err, "SFU failure");
            return RelayError {
                code: ErrorCode::Internal,
                message: "the media relay failed".into(),
            };
        }
    };
    RelayError {
        code,
        message: err.to_string(),
    }
}

fn media_pc(pc: SignalPc) -> PcKind {
    match pc {
        SignalPc::Publish => PcKind::Publish,
        SignalPc::Subscribe => PcKind::Subscribe,
    }
}

fn signal_pc(pc: PcKind) -> SignalPc {
    match pc {
        PcKind::Publish => SignalPc::Publish,
        PcKind::Subscribe => SignalPc::Subscribe,
    }
}

#[async_trait]
impl Relay for SfuRelay {
    async fn join(&self, room: &str, participant: &str) -> Result<(), RelayError> {
        self.0.join(room, participant).await.map_err(refusal)
    }

    async fn publish(
        &self,
        room: &str,
        participant: &str,
        offer: String,
    ) -> Result<String, RelayError> {
        self.0
            .publish(room, participant, offer)
            .await
            .map_err(refusal)
    }

    async fn subscribe_answer(
        &self,
        room: &str,
        participant: &str,
        answer: String,
    ) -> Result<(), RelayError> {
        self.0
            .subscribe_answer(room, participant, answer)
            .await
            .map_err(refusal)
    }

    async fn add_candidate(
        &self,
        room: &str,
        participant: &str,
        pc: SignalPc,
        candidate: Option<Value>,
    ) -> Result<(), RelayError> {
        let candidate = match candidate {
            Some(value) => {
                Some(
                    serde_json::from_value::<CandidateInit>(value).map_err(|e| RelayError {
                        code: ErrorCode::InvalidPayload,
                        message: format!("invalid candidate: {e}"),
                    })?,
                )
            }
            None => None,
        };
        self.0
            .add_candidate(room, participant, media_pc(pc), candidate)
            .await
            .map_err(refusal)
    }

    async fn leave(&self, room: &str, participant: &str) -> Result<(), RelayError> {
        self.0.leave(room, participant).await.map_err(refusal)
    }

    async fn restart_ice(&self, room: &str, participant: &str) -> Result<(), RelayError> {
        self.0.restart_ice(room, participant).await.map_err(refusal)
    }

    async fn set_video_size(
        &self,
        room: &str,
        participant: &str,
        publisher: &str,
        width: u32,
        height: u32,
    ) -> Result<(), RelayError> {
        self.0
            .set_video_size(room, participant, publisher, VideoSize { width, height })
            .await
            .map_err(refusal)
    }

    async fn room_stats(&self, room: &str) -> Result<Value, RelayError> {
        let stats = self.0.room_stats(room).await.map_err(refusal)?;
        Ok(serde_json::to_value(stats).unwrap_or(Value::Null))
    }
}

/// Delivers the SFU's events until the SFU stops. On a cluster node, `media` learns of the
/// participants the SFU closed by itself (so that an emptied room is unpinned).
pub async fn pump_media_events(
    mut events: UnboundedReceiver<MediaEvent>,
    signaling: Arc<Signaling>,
    io: SocketIo,
    media: Option<Arc<MediaNode>>,
) {
    while let Some(event) = events.recv().await {
        let relay_event = match event {
            MediaEvent::SubscribeOffer {
                room,
                participant,
                sdp,
            } => RelayEvent::SubscribeOffer {
                room,
                participant,
                sdp,
            },
            MediaEvent::LocalCandidate {
                room,
                participant,
                pc,
                candidate,
            } => RelayEvent::LocalCandidate {
                room,
                participant,
                pc: signal_pc(pc),
                candidate: serde_json::to_value(candidate).unwrap_or(Value::Null),
            },
            MediaEvent::ActiveSpeaker { room, participant } => {
                RelayEvent::ActiveSpeaker { room, participant }
            }
            MediaEvent::ParticipantClosed {
                room,
                participant,
                reason,
            } => {
                tracing::info!(room, participant, reason, "SFU closed a participant");
                if let Some(media) = &media {
                    let media = media.clone();
                    tokio::spawn(
                        async move { media.participant_closed(&room, &participant).await },
                    );
                }
                continue;
            }
            other => {
                tracing::debug!(event = ?other, "SFU event");
                continue;
            }
        };
        signaling.on_relay_event(&io, relay_event).await;
    }
}
