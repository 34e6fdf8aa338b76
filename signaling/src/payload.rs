//! The stateless half of every event: its payload, checked completely (shape, ids, SDP,
//! candidates, text, sizes) into a typed request, with no socket, store or clock involved.
//!
//! Each handler starts with the function of its event here, so [`validate_event_payload`] (the
//! fuzzing entry point) runs exactly the checks the server runs. What needs state (who the caller
//! is, rooms, calls, appointments) stays in the handlers.

use serde::Deserialize;
use serde_json::Value;

use crate::call::CallType;
use crate::protocol::{self, EventError, MediaState, SdpType, SignalType, check_id};
use crate::relay::PcKind;
use crate::rooms::RelayReason;

/// Longest `avatarSeed`, in characters.
pub const MAX_AVATAR_SEED_CHARS: usize = 64;
/// Longest `reject-call` reason, in characters.
pub const MAX_REJECT_REASON_CHARS: usize = 200;
/// Longest `decline` reason, in characters.
pub const MAX_DECLINE_REASON_CHARS: usize = 200;

/// The configurable payload limits (`limits.*`); `Default` is `config/default.toml`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLimits {
    pub max_chat_chars: usize,
    pub max_sdp_bytes: usize,
    pub max_candidate_bytes: usize,
}

impl Default for PayloadLimits {
    fn default() -> Self {
        Self {
            max_chat_chars: 2000,
            max_sdp_bytes: 65536,
            max_candidate_bytes: 2048,
        }
    }
}

/// Every event a client may emit, in the order of the contract.
pub const EVENTS: &[&str] = &[
    "join-room",
    "signal",
    "chat-message",
    "leave-room",
    "join",
    "call-user",
    "answer-call",
    "reject-call",
    "end-call",
    "ice-candidate",
    "sfu-join",
    "sfu-publish",
    "sfu-subscribe-answer",
    "sfu-candidate",
    "sfu-leave",
    "sfu-restart-ice",
    "media-state",
    "call-media-state",
    "admit",
    "decline",
    "sfu-video-size",
];

/// Runs the payload checks the handler of `event` runs, with the default limits, and nothing
/// else (no state is read or changed). An unknown event is `not_found`, as the server answers.
pub fn validate_event_payload(event: &str, data: Value) -> Result<(), EventError> {
    let limits = PayloadLimits::default();
    match event {
        "join-room" => join_room(data).map(drop),
        "signal" => signal(data, &limits).map(drop),
        "chat-message" => chat_message(data, &limits).map(drop),
        "leave-room" => leave_room(data),
        "join" => join(data).map(drop),
        "call-user" => call_user(data, &limits).map(drop),
        "answer-call" => answer_call(data, &limits).map(drop),
        "reject-call" => reject_call(data).map(drop),
        "end-call" => end_call(data).map(drop),
        "ice-candidate" => ice_candidate(data, &limits).map(drop),
        "sfu-join" => sfu_join(data).map(drop),
        "sfu-publish" => sfu_publish(data, &limits).map(drop),
        "sfu-subscribe-answer" => sfu_subscribe_answer(data, &limits).map(drop),
        "sfu-candidate" => sfu_candidate(data, &limits).map(drop),
        "sfu-leave" => sfu_leave(data).map(drop),
        "sfu-restart-ice" => sfu_restart_ice(data).map(drop),
        "media-state" => media_state(data).map(drop),
        "call-media-state" => call_media_state(data).map(drop),
        "admit" => admit(data).map(drop),
        "decline" => decline(data).map(drop),
        "sfu-video-size" => sfu_video_size(data).map(drop),
        _ => Err(unknown_event()),
    }
}

/// The refusal of an event nobody handles.
pub fn unknown_event() -> EventError {
    EventError::not_found("no such event")
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRoom {
    pub appointment_id: String,
    /// `None` when not given or blank (the user id is used instead).
    #[serde(default)]
    pub avatar_seed: Option<String>,
    /// The socket id this client had in the room before its signaling connection was replaced
    /// (a reconnection): that membership, if it is the same user's, is ended now rather than
    /// when its dead connection times out.
    #[serde(default)]
    pub previous_socket_id: Option<String>,
}

pub fn join_room(data: Value) -> Result<JoinRoom, EventError> {
    let mut req: JoinRoom = protocol::parse(data)?;
    check_id("appointmentId", &req.appointment_id)?;
    if let Some(previous) = &req.previous_socket_id {
        check_id("previousSocketId", previous)?;
    }
    if let Some(seed) = &req.avatar_seed {
        if seed.trim().is_empty() {
            req.avatar_seed = None;
        } else {
            protocol::check_text("avatarSeed", seed, MAX_AVATAR_SEED_CHARS, false)
                .map_err(|e| EventError::invalid(e.message))?;
        }
    }
    Ok(req)
}

#[derive(Debug, Deserialize)]
pub struct Signal {
    pub to: String,
    #[serde(rename = "type")]
    pub kind: SignalType,
    pub payload: Value,
}

pub fn signal(data: Value, limits: &PayloadLimits) -> Result<Signal, EventError> {
    let req: Signal = protocol::parse(data)?;
    check_id("to", &req.to)?;
    match req.kind {
        SignalType::Offer => protocol::check_description(
            "payload",
            &req.payload,
            SdpType::Offer,
            limits.max_sdp_bytes,
        )?,
        SignalType::Answer => protocol::check_description(
            "payload",
            &req.payload,
            SdpType::Answer,
            limits.max_sdp_bytes,
        )?,
        SignalType::IceCandidate => {
            protocol::check_candidate("payload", &req.payload, limits.max_candidate_bytes)?
        }
    }
    Ok(req)
}

#[derive(Debug, Deserialize)]
pub struct ChatIn {
    pub text: String,
}

pub fn chat_message(data: Value, limits: &PayloadLimits) -> Result<ChatIn, EventError> {
    let req: ChatIn = protocol::parse(data)?;
    protocol::check_text("text", &req.text, limits.max_chat_chars, true)?;
    Ok(req)
}

/// `{}` or no payload; what the object holds is ignored.
pub fn leave_room(data: Value) -> Result<(), EventError> {
    if matches!(data, Value::Null | Value::Object(_)) {
        Ok(())
    } else {
        Err(EventError::invalid("leave-room takes {} or no payload"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinUser {
    pub user_id: String,
}

pub fn join(data: Value) -> Result<JoinUser, EventError> {
    let req: JoinUser = protocol::parse(data)?;
    check_id("userId", &req.user_id)?;
    Ok(req)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallUser {
    pub to: String,
    pub call_type: CallType,
    pub offer: Value,
    #[serde(default)]
    pub appointment_id: Option<String>,
}

pub fn call_user(data: Value, limits: &PayloadLimits) -> Result<CallUser, EventError> {
    let req: CallUser = protocol::parse(data)?;
    check_id("to", &req.to)?;
    if let Some(appointment_id) = &req.appointment_id {
        check_id("appointmentId", appointment_id)?;
    }
    protocol::check_description("offer", &req.offer, SdpType::Offer, limits.max_sdp_bytes)?;
    Ok(req)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnswerCall {
    pub call_id: String,
    pub answer: Value,
}

pub fn answer_call(data: Value, limits: &PayloadLimits) -> Result<AnswerCall, EventError> {
    let req: AnswerCall = protocol::parse(data)?;
    check_id("callId", &req.call_id)?;
    protocol::check_description("answer", &req.answer, SdpType::Answer, limits.max_sdp_bytes)?;
    Ok(req)
}

/// An optional one-line `reason`: blank is `None`, else at most `max` characters.
fn optional_reason(reason: &mut Option<String>, max: usize) -> Result<(), EventError> {
    match reason.as_deref() {
        Some(text) if text.trim().is_empty() => *reason = None,
        Some(text) => protocol::check_text("reason", text, max, false)
            .map_err(|e| EventError::invalid(e.message))?,
        None => {}
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectCall {
    pub call_id: String,
    /// Relayed to the caller; `None` ("rejected") when not given or blank.
    #[serde(default)]
    pub reason: Option<String>,
}

pub fn reject_call(data: Value) -> Result<RejectCall, EventError> {
    let mut req: RejectCall = protocol::parse(data)?;
    check_id("callId", &req.call_id)?;
    optional_reason(&mut req.reason, MAX_REJECT_REASON_CHARS)?;
    Ok(req)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndCall {
    pub call_id: String,
}

pub fn end_call(data: Value) -> Result<EndCall, EventError> {
    let req: EndCall = protocol::parse(data)?;
    check_id("callId", &req.call_id)?;
    Ok(req)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallCandidate {
    pub call_id: String,
    /// Required: `null` (end of candidates) must be sent explicitly.
    pub candidate: Value,
}

pub fn ice_candidate(data: Value, limits: &PayloadLimits) -> Result<CallCandidate, EventError> {
    let req: CallCandidate = protocol::parse(data)?;
    check_id("callId", &req.call_id)?;
    protocol::check_candidate("candidate", &req.candidate, limits.max_candidate_bytes)?;
    Ok(req)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SfuJoin {
    pub room_id: String,
    pub reason: RelayReason,
}

pub fn sfu_join(data: Value) -> Result<SfuJoin, EventError> {
    let req: SfuJoin = protocol::parse(data)?;
    check_id("roomId", &req.room_id)?;
    Ok(req)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SfuSdp {
    pub room_id: String,
    pub sdp: String,
}

/// `sfu-publish {roomId, sdp}`: the client's offer, a plain SDP string.
pub fn sfu_publish(data: Value, limits: &PayloadLimits) -> Result<SfuSdp, EventError> {
    sfu_sdp(data, limits)
}

/// `sfu-subscribe-answer {roomId, sdp}`: the client's answer, a plain SDP string.
pub fn sfu_subscribe_answer(data: Value, limits: &PayloadLimits) -> Result<SfuSdp, EventError> {
    sfu_sdp(data, limits)
}

fn sfu_sdp(data: Value, limits: &PayloadLimits) -> Result<SfuSdp, EventError> {
    let req: SfuSdp = protocol::parse(data)?;
    check_id("roomId", &req.room_id)?;
    protocol::check_sdp("sdp", &req.sdp, limits.max_sdp_bytes)?;
    Ok(req)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SfuCandidateIn {
    room_id: String,
    pc: PcKind,
    /// A `Value`, not an `Option`: a missing field is refused, only `null` ends candidates.
    candidate: Value,
}

#[derive(Debug)]
pub struct SfuCandidate {
    pub room_id: String,
    pub pc: PcKind,
    /// `None` is the end of candidates.
    pub candidate: Option<Value>,
}

pub fn sfu_candidate(data: Value, limits: &PayloadLimits) -> Result<SfuCandidate, EventError> {
    let req: SfuCandidateIn = protocol::parse(data)?;
    check_id("roomId", &req.room_id)?;
    protocol::check_candidate("candidate", &req.candidate, limits.max_candidate_bytes)?;
    Ok(SfuCandidate {
        room_id: req.room_id,
        pc: req.pc,
        candidate: (!req.candidate.is_null()).then_some(req.candidate),
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SfuLeave {
    pub room_id: String,
}

pub fn sfu_leave(data: Value) -> Result<SfuLeave, EventError> {
    let req: SfuLeave = protocol::parse(data)?;
    check_id("roomId", &req.room_id)?;
    Ok(req)
}

/// `sfu-restart-ice` takes the same `{roomId}` as `sfu-leave`.
pub fn sfu_restart_ice(data: Value) -> Result<SfuLeave, EventError> {
    sfu_leave(data)
}

/// Largest `width` and `height` of `sfu-video-size`, in device pixels (16K).
pub const MAX_VIDEO_DIMENSION: u32 = 16384;

/// `sfu-video-size {roomId, publisherId, width, height}`: the size, in device pixels, at which
/// the sender renders the video of `publisherId` (that publisher's socket id, the msid stream id
/// of its forwarded tracks) in a relayed room; `0 × 0`: not shown. The SFU forwards the
/// smallest simulcast layer that fills it. Nothing else may be in the object.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SfuVideoSize {
    pub room_id: String,
    pub publisher_id: String,
    /// Integers only: serde refuses `1.5`, `-1` and anything past `u32` as a `u32`.
    pub width: u32,
    pub height: u32,
}

pub fn sfu_video_size(data: Value) -> Result<SfuVideoSize, EventError> {
    let req: SfuVideoSize = protocol::parse(data)?;
    check_id("roomId", &req.room_id)?;
    check_id("publisherId", &req.publisher_id)?;
    if req.width > MAX_VIDEO_DIMENSION || req.height > MAX_VIDEO_DIMENSION {
        return Err(EventError::invalid(format!(
            "width and height are 0 to {MAX_VIDEO_DIMENSION} device pixels"
        )));
    }
    Ok(req)
}

/// Longest `screenTrackId` of `media-state` and `call-media-state`, in bytes.
pub const MAX_TRACK_ID_BYTES: usize = 128;

/// `media-state {roomId?, audio, video, screen?, screenTrackId?}`: a consult member's
/// microphone and camera on or off, and whether it shares its screen (and that track's id).
/// Nothing else may be in the object.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MediaStateIn {
    #[serde(default)]
    room_id: Option<String>,
    audio: bool,
    video: bool,
    #[serde(default)]
    screen: bool,
    #[serde(default)]
    screen_track_id: Option<String>,
}

#[derive(Debug)]
pub struct MediaStateReq {
    /// The consult room (appointment id) it is meant for; `None`: the sender's room.
    pub room_id: Option<String>,
    pub state: MediaState,
}

pub fn media_state(data: Value) -> Result<MediaStateReq, EventError> {
    let req: MediaStateIn = protocol::parse(data)?;
    if let Some(room_id) = &req.room_id {
        check_id("roomId", room_id)?;
    }
    Ok(MediaStateReq {
        room_id: req.room_id,
        state: checked_state(req.audio, req.video, req.screen, req.screen_track_id)?,
    })
}

/// `call-media-state {callId, audio, video, screen?, screenTrackId?}`: the same for a direct
/// call.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CallMediaStateIn {
    call_id: String,
    audio: bool,
    video: bool,
    #[serde(default)]
    screen: bool,
    #[serde(default)]
    screen_track_id: Option<String>,
}

#[derive(Debug)]
pub struct CallMediaState {
    pub call_id: String,
    pub state: MediaState,
}

pub fn call_media_state(data: Value) -> Result<CallMediaState, EventError> {
    let req: CallMediaStateIn = protocol::parse(data)?;
    check_id("callId", &req.call_id)?;
    Ok(CallMediaState {
        call_id: req.call_id,
        state: checked_state(req.audio, req.video, req.screen, req.screen_track_id)?,
    })
}

/// A screen track id comes only with `screen`, and is 1 to [`MAX_TRACK_ID_BYTES`] visible
/// ASCII characters (browsers' track ids: UUIDs, in braces for Firefox).
fn checked_state(
    audio: bool,
    video: bool,
    screen: bool,
    screen_track_id: Option<String>,
) -> Result<MediaState, EventError> {
    if let Some(id) = &screen_track_id {
        if !screen {
            return Err(EventError::invalid(
                "screenTrackId comes only with screen: true",
            ));
        }
        let fine = !id.is_empty()
            && id.len() <= MAX_TRACK_ID_BYTES
            && id.bytes().all(|b| b.is_ascii_graphic());
        if !fine {
            return Err(EventError::invalid("screenTrackId is not a valid track id"));
        }
    }
    Ok(MediaState {
        audio,
        video,
        screen,
        screen_track_id,
    })
}

/// `admit {appointmentId, userId}`: a host lets a waiting patient (every socket of that user
/// waiting in the appointment's lobby) into the room. Nothing else may be in the object.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Admit {
    pub appointment_id: String,
    pub user_id: String,
}

pub fn admit(data: Value) -> Result<Admit, EventError> {
    let req: Admit = protocol::parse(data)?;
    check_id("appointmentId", &req.appointment_id)?;
    check_id("userId", &req.user_id)?;
    Ok(req)
}

/// `decline {appointmentId, userId, reason?}`: a host turns a waiting patient away; the reason
/// (up to [`MAX_DECLINE_REASON_CHARS`], one line) goes to the patient only.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Decline {
    pub appointment_id: String,
    pub user_id: String,
    /// `None` when not given or blank.
    #[serde(default)]
    pub reason: Option<String>,
}

pub fn decline(data: Value) -> Result<Decline, EventError> {
    let mut req: Decline = protocol::parse(data)?;
    check_id("appointmentId", &req.appointment_id)?;
    check_id("userId", &req.user_id)?;
    optional_reason(&mut req.reason, MAX_DECLINE_REASON_CHARS)?;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;
    use serde_json::json;

    fn sdp() -> String {
        include_str!("../testdata/chrome_offer.sdp").replace('\n', "\r\n")
    }

    fn candidate() -> Value {
        json!({"candidate": "candidate:1 1 udp 2130706431 10.0.0.1 50000 typ host",
               "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"})
    }

    /// One payload each event accepts.
    fn good(event: &str) -> Value {
        match event {
            "join-room" => json!({"appointmentId": "a1", "avatarSeed": "fox"}),
            "signal" => {
                json!({"to": "s1", "type": "offer", "payload": {"type": "offer", "sdp": sdp()}})
            }
            "chat-message" => json!({"text": "hello\nthere"}),
            "leave-room" => json!({}),
            "join" => json!({"userId": "u1"}),
            "call-user" => {
                json!({"to": "u2", "callType": "video", "offer": {"type": "offer", "sdp": sdp()}})
            }
            "answer-call" => json!({"callId": "c1", "answer": sdp()}),
            "reject-call" => json!({"callId": "c1", "reason": "in surgery"}),
            "end-call" => json!({"callId": "c1"}),
            "ice-candidate" => json!({"callId": "c1", "candidate": candidate()}),
            "sfu-join" => json!({"roomId": "r1", "reason": "p2p-failed"}),
            "sfu-publish" | "sfu-subscribe-answer" => json!({"roomId": "r1", "sdp": sdp()}),
            "sfu-candidate" => json!({"roomId": "r1", "pc": "publish", "candidate": candidate()}),
            "sfu-leave" | "sfu-restart-ice" => json!({"roomId": "r1"}),
            "sfu-video-size" => {
                json!({"roomId": "r1", "publisherId": "s2", "width": 640, "height": 360})
            }
            "media-state" => {
                json!({"roomId": "a1", "audio": false, "video": true, "screen": false})
            }
            "call-media-state" => json!({"callId": "c1", "audio": true, "video": false}),
            "admit" => json!({"appointmentId": "a1", "userId": "pat-1"}),
            "decline" => {
                json!({"appointmentId": "a1", "userId": "pat-1", "reason": "Please rebook"})
            }
            _ => unreachable!("{event}"),
        }
    }

    fn code(event: &str, data: Value) -> ErrorCode {
        validate_event_payload(event, data.clone())
            .expect_err(&format!("{event} {data}"))
            .code
    }

    #[test]
    fn every_event_accepts_its_documented_shape() {
        for event in EVENTS {
            validate_event_payload(event, good(event)).unwrap_or_else(|e| panic!("{event}: {e}"));
        }
    }

    #[test]
    fn positional_arrays_are_refused_by_every_event() {
        for event in EVENTS {
            let Value::Object(fields) = good(event) else {
                unreachable!()
            };
            let positional = Value::Array(fields.into_values().collect());
            assert_eq!(
                code(event, positional),
                ErrorCode::InvalidPayload,
                "{event}"
            );
            assert_eq!(
                code(event, json!("x")),
                ErrorCode::InvalidPayload,
                "{event}"
            );
        }
        assert_eq!(
            code("chat-message", json!(["hi"])),
            ErrorCode::InvalidPayload
        );
    }

    #[test]
    fn unknown_events_are_not_found() {
        assert_eq!(code("no-such-event", json!({})), ErrorCode::NotFound);
        assert_eq!(code("", json!(null)), ErrorCode::NotFound);
    }

    #[test]
    fn only_an_explicit_null_ends_candidates() {
        let end = sfu_candidate(
            json!({"roomId": "r1", "pc": "subscribe", "candidate": null}),
            &PayloadLimits::default(),
        )
        .unwrap();
        assert_eq!(end.candidate, None);
        let one = sfu_candidate(good("sfu-candidate"), &PayloadLimits::default()).unwrap();
        assert_eq!(one.candidate, Some(candidate()));
        assert_eq!(
            code("sfu-candidate", json!({"roomId": "r1", "pc": "publish"})),
            ErrorCode::InvalidPayload
        );
        assert_eq!(
            code("ice-candidate", json!({"callId": "c1"})),
            ErrorCode::InvalidPayload
        );
        validate_event_payload("ice-candidate", json!({"callId": "c1", "candidate": null}))
            .unwrap();
    }

    #[test]
    fn sdps_are_parsed_for_every_event_that_carries_one() {
        let garbage = format!("v=0\r\n{}", "x=y ".repeat(1000));
        let nul = sdp().replacen("a=mid:0", "a=mid:0\0", 1);
        for bad in [garbage, nul] {
            for (event, data) in [
                (
                    "signal",
                    json!({"to": "s1", "type": "offer", "payload": bad}),
                ),
                (
                    "signal",
                    json!({"to": "s1", "type": "answer", "payload": {"type": "answer", "sdp": bad}}),
                ),
                (
                    "call-user",
                    json!({"to": "u2", "callType": "audio", "offer": bad}),
                ),
                (
                    "answer-call",
                    json!({"callId": "c1", "answer": {"type": "answer", "sdp": bad}}),
                ),
                ("sfu-publish", json!({"roomId": "r1", "sdp": bad})),
                ("sfu-subscribe-answer", json!({"roomId": "r1", "sdp": bad})),
            ] {
                assert_eq!(code(event, data), ErrorCode::InvalidPayload, "{event}");
            }
        }
        // The object's type must be the one the event relays.
        let offer = json!({"type": "offer", "sdp": sdp()});
        assert_eq!(
            code("answer-call", json!({"callId": "c1", "answer": offer})),
            ErrorCode::InvalidPayload
        );
        assert_eq!(
            code(
                "signal",
                json!({"to": "s1", "type": "answer", "payload": offer})
            ),
            ErrorCode::InvalidPayload
        );
    }

    #[test]
    fn text_fields() {
        assert_eq!(
            code("chat-message", json!({"text": "nul\u{0}"})),
            ErrorCode::InvalidPayload
        );
        assert_eq!(
            code("chat-message", json!({"text": "x".repeat(2001)})),
            ErrorCode::TooLarge
        );
        validate_event_payload("chat-message", json!({"text": "x".repeat(2000)})).unwrap();
        assert_eq!(
            code(
                "join-room",
                json!({"appointmentId": "a1", "avatarSeed": "x".repeat(65)})
            ),
            ErrorCode::InvalidPayload
        );
        assert_eq!(
            code(
                "join-room",
                json!({"appointmentId": "a1", "avatarSeed": "a\u{7}"})
            ),
            ErrorCode::InvalidPayload
        );
        assert_eq!(
            join_room(json!({"appointmentId": "a1", "avatarSeed": "  "}))
                .unwrap()
                .avatar_seed,
            None
        );
        assert_eq!(
            code("reject-call", json!({"callId": "c1", "reason": "a\u{0}"})),
            ErrorCode::InvalidPayload
        );
        assert_eq!(
            reject_call(json!({"callId": "c1", "reason": ""}))
                .unwrap()
                .reason,
            None
        );
    }

    #[test]
    fn media_states_take_their_documented_shape_only() {
        let req = media_state(json!({"audio": true, "video": false})).unwrap();
        assert_eq!(req.room_id, None);
        assert_eq!(
            req.state,
            MediaState {
                audio: true,
                video: false,
                screen: false,
                screen_track_id: None,
            }
        );
        let req = call_media_state(
            json!({"callId": "c1", "audio": false, "video": true, "screen": true}),
        )
        .unwrap();
        assert!(req.state.screen && req.state.video && !req.state.audio);
        for bad in [
            json!({"audio": true}),
            json!({"audio": "yes", "video": true}),
            json!({"audio": 1, "video": 0}),
            json!({"audio": true, "video": true, "screen": null}),
            json!({"audio": true, "video": true, "speaking": true}),
            json!({"roomId": "a 1", "audio": true, "video": true}),
            json!({"roomId": 7, "audio": true, "video": true}),
            json!({"audio": true, "video": true, "screenTrackId": "t1"}),
            json!({"audio": true, "video": true, "screen": true, "screenTrackId": ""}),
            json!({"audio": true, "video": true, "screen": true, "screenTrackId": "a b"}),
            json!({"audio": true, "video": true, "screen": true, "screenTrackId": "x".repeat(129)}),
            json!({"audio": true, "video": true, "screen": true, "screenTrackId": 5}),
        ] {
            assert_eq!(
                code("media-state", bad.clone()),
                ErrorCode::InvalidPayload,
                "{bad}"
            );
        }
        for bad in [
            json!({"audio": true, "video": true}),
            json!({"callId": "", "audio": true, "video": true}),
            json!({"callId": "c1", "audio": true, "video": true, "roomId": "r1"}),
        ] {
            assert_eq!(
                code("call-media-state", bad.clone()),
                ErrorCode::InvalidPayload,
                "{bad}"
            );
        }
    }

    #[test]
    fn admit_and_decline_take_their_documented_shape_only() {
        let req = decline(json!({"appointmentId": "a1", "userId": "u1", "reason": "  "})).unwrap();
        assert_eq!(req.reason, None);
        assert_eq!(admit(good("admit")).unwrap().user_id, "pat-1");
        for (event, bad) in [
            ("admit", json!({"appointmentId": "a1"})),
            ("admit", json!({"appointmentId": "a1", "userId": "u 1"})),
            (
                "admit",
                json!({"appointmentId": "a1", "userId": "u1", "socketId": "s1"}),
            ),
            ("decline", json!({"appointmentId": "a1", "userId": 7})),
            (
                "decline",
                json!({"appointmentId": "a1", "userId": "u1", "reason": "a\u{7}"}),
            ),
            (
                "decline",
                json!({"appointmentId": "a1", "userId": "u1", "reason": "x\ny"}),
            ),
            (
                "decline",
                json!({"appointmentId": "a1", "userId": "u1", "reason": "x".repeat(201)}),
            ),
        ] {
            assert_eq!(
                code(event, bad.clone()),
                ErrorCode::InvalidPayload,
                "{event} {bad}"
            );
        }
        decline(json!({"appointmentId": "a1", "userId": "u1", "reason": "x".repeat(200)})).unwrap();
    }

    #[test]
    fn video_sizes_are_whole_device_pixels_up_to_16k() {
        let req = sfu_video_size(good("sfu-video-size")).unwrap();
        assert_eq!((req.width, req.height), (640, 360));
        assert_eq!(req.publisher_id, "s2");
        let hidden = json!({"roomId": "r1", "publisherId": "s2", "width": 0, "height": 0});
        sfu_video_size(hidden).unwrap();
        let largest = json!({"roomId": "r1", "publisherId": "s2", "width": 16384, "height": 16384});
        sfu_video_size(largest).unwrap();
        for bad in [
            json!({"roomId": "r1", "publisherId": "s2", "width": 640}),
            json!({"roomId": "r1", "width": 640, "height": 360}),
            json!({"publisherId": "s2", "width": 640, "height": 360}),
            json!({"roomId": "r1", "publisherId": "s2", "width": -1, "height": 360}),
            json!({"roomId": "r1", "publisherId": "s2", "width": 640, "height": 16385}),
            json!({"roomId": "r1", "publisherId": "s2", "width": 4294967296u64, "height": 1}),
            json!({"roomId": "r1", "publisherId": "s2", "width": 640.5, "height": 360}),
            json!({"roomId": "r1", "publisherId": "s2", "width": "640", "height": 360}),
            json!({"roomId": "r1", "publisherId": "s2", "width": null, "height": 360}),
            json!({"roomId": "r1", "publisherId": "s 2", "width": 640, "height": 360}),
            json!({"roomId": "", "publisherId": "s2", "width": 640, "height": 360}),
            json!({"roomId": "r1", "publisherId": "s2", "width": 640, "height": 360, "dpr": 2}),
        ] {
            assert_eq!(
                code("sfu-video-size", bad.clone()),
                ErrorCode::InvalidPayload,
                "{bad}"
            );
        }
    }

    /// The fuzz seeds (`fuzz/corpus/socketio_payloads/seed-<event>`, written by
    /// `fuzz/seeds.py`) pick their event by their first byte, as the fuzz target does: each must
    /// still pick the event it is named after, with a payload that event accepts.
    #[test]
    fn fuzz_seeds_pick_the_event_they_are_named_after() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/socketio_payloads");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("the seed corpus") {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let Some(named) = name.strip_prefix("seed-") else {
                continue;
            };
            let bytes = std::fs::read(&path).unwrap();
            let (&pick, json) = bytes.split_first().expect("not empty");
            let event = EVENTS
                .get(usize::from(pick) % (EVENTS.len() + 1))
                .copied()
                .unwrap_or("no-such-event");
            assert_eq!(event, named, "{name}: its first byte picks another event");
            let payload: Value = serde_json::from_slice(json).expect("JSON");
            let result = validate_event_payload(event, payload);
            if event == "no-such-event" {
                assert_eq!(result.unwrap_err().code, ErrorCode::NotFound);
            } else {
                result.unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            seen += 1;
        }
        assert_eq!(
            seen,
            EVENTS.len() + 1,
            "a seed per event and an unknown one"
        );
    }
}
