//! Wire types of the Socket.IO contract: payloads, acknowledgements, error codes, validation.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

/// Error codes of the contract (HTTP section 2 plus `busy` and `offline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidPayload,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    TooLarge,
    RateLimited,
    Internal,
    Busy,
    Offline,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Busy => "busy",
            ErrorCode::Offline => "offline",
        }
    }
}

/// A refused event: acknowledged as `{ok:false, error:{code,message}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct EventError {
    pub code: ErrorCode,
    pub message: String,
}

impl EventError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidPayload, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error")
    }

    pub fn to_ack(&self) -> Value {
        json!({"ok": false, "error": {"code": self.code.as_str(), "message": self.message}})
    }
}

impl From<crate::store::StoreError> for EventError {
    fn from(err: crate::store::StoreError) -> Self {
        tracing::error!(error = %err, "store failure during a socket event");
        EventError::internal()
    }
}

/// The successful result of an event: extra fields merged into `{ok:true}`.
pub type EventResult = Result<serde_json::Map<String, Value>, EventError>;

pub fn ok_fields() -> serde_json::Map<String, Value> {
    serde_json::Map::new()
}

pub fn ok_ack(mut fields: serde_json::Map<String, Value>) -> Value {
    fields.insert("ok".into(), Value::Bool(true));
    Value::Object(fields)
}

/// Deserializes an event payload; anything that does not fit is `invalid_payload`.
pub fn parse<T: for<'de> Deserialize<'de>>(data: Value) -> Result<T, EventError> {
    serde_json::from_value(data).map_err(|e| EventError::invalid(format!("invalid payload: {e}")))
}

/// Rejects an identifier that is empty, too long or made of odd characters, before it is looked up.
pub fn check_id(field: &str, value: &str) -> Result<(), EventError> {
    let fine = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if fine {
        Ok(())
    } else {
        Err(EventError::invalid(format!("{field} is not a valid id")))
    }
}

/// Size of a JSON value as it travels, for payload limits.
pub fn json_len(value: &Value) -> usize {
    serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

pub fn check_size(field: &str, value: &Value, max: usize) -> Result<(), EventError> {
    if json_len(value) > max {
        Err(EventError::new(
            ErrorCode::TooLarge,
            format!("{field} is larger than {max} bytes"),
        ))
    } else {
        Ok(())
    }
}

/// An SDP as browsers send it: a string, or `{type, sdp}`, within `max` bytes.
pub fn check_sdp(field: &str, value: &Value, max: usize) -> Result<(), EventError> {
    check_size(field, value, max)?;
    let sdp = match value {
        Value::String(sdp) => sdp.as_str(),
        Value::Object(o) => o.get("sdp").and_then(Value::as_str).unwrap_or_default(),
        _ => "",
    };
    check_sdp_start(field, sdp)
}

/// A plain SDP string within `max` bytes (the relay events carry no `{type, sdp}` objects).
pub fn check_sdp_text(field: &str, sdp: &str, max: usize) -> Result<(), EventError> {
    if sdp.len() > max {
        return Err(EventError::new(
            ErrorCode::TooLarge,
            format!("{field} is larger than {max} bytes"),
        ));
    }
    check_sdp_start(field, sdp)
}

fn check_sdp_start(field: &str, sdp: &str) -> Result<(), EventError> {
    if sdp.starts_with("v=0") {
        Ok(())
    } else {
        Err(EventError::invalid(format!(
            "{field} must be an SDP starting with v=0"
        )))
    }
}

/// A browser's `RTCIceCandidateInit` (`{candidate, sdpMid, sdpMLineIndex, usernameFragment}`,
/// whose `candidate` is an ICE candidate line or "" for the end of candidates) or `null`.
pub fn check_candidate(field: &str, value: &Value, max: usize) -> Result<(), EventError> {
    check_size(field, value, max)?;
    let fine = match value {
        Value::Null => true,
        Value::Object(o) => o
            .get("candidate")
            .and_then(Value::as_str)
            .is_some_and(valid_candidate_line),
        _ => false,
    };
    if fine {
        Ok(())
    } else {
        Err(EventError::invalid(format!(
            "{field} must be {{candidate, sdpMid, sdpMLineIndex, usernameFragment}} with an ICE \
             candidate line (\"candidate:<foundation> <component> <transport> <priority> \
             <address> <port> typ <type> ...\" or \"\"), or null"
        )))
    }
}

/// The `candidate` attribute of RFC 8839 (section 5.1), as browsers send it (an optional `a=`
/// prefix is tolerated); "" is the end of candidates.
fn valid_candidate_line(line: &str) -> bool {
    let line = line.trim();
    if line.is_empty() {
        return true;
    }
    let line = line.strip_prefix("a=").unwrap_or(line);
    let Some(rest) = line.strip_prefix("candidate:") else {
        return false;
    };
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    f.len() >= 8
        && !f[0].is_empty()
        && f[1].parse::<u16>().is_ok()
        && !f[2].is_empty()
        && f[3].parse::<u32>().is_ok()
        && !f[4].is_empty()
        && f[5].parse::<u16>().is_ok()
        && f[6] == "typ"
        && matches!(f[7], "host" | "srflx" | "prflx" | "relay")
}

const RFC3339_MILLIS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-21T06:00:00.123Z`.
pub fn rfc3339_millis(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(RFC3339_MILLIS)
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch, the storage form of every timestamp.
pub fn unix_millis(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn from_unix_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Now, truncated to the millisecond so that what is sent equals what is stored.
pub fn now_millis() -> OffsetDateTime {
    from_unix_millis(unix_millis(OffsetDateTime::now_utc()))
}

/// A participant of a consult room, as seen by the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub socket_id: String,
    pub user_id: String,
    pub name: String,
    pub role: crate::Role,
    pub avatar_seed: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRoom {
    pub appointment_id: String,
    #[serde(default)]
    pub avatar_seed: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignalType {
    Offer,
    Answer,
    IceCandidate,
}

#[derive(Debug, Deserialize)]
pub struct Signal {
    pub to: String,
    #[serde(rename = "type")]
    pub kind: SignalType,
    pub payload: Value,
}

#[derive(Debug, Deserialize)]
pub struct ChatIn {
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis_and_round_trip() {
        let at = from_unix_millis(1_795_000_000_123);
        let text = rfc3339_millis(at);
        assert_eq!(text, "2026-11-18T11:06:40.123Z");
        assert_eq!(unix_millis(at), 1_795_000_000_123);
    }

    #[test]
    fn ids_with_odd_characters_are_refused() {
        assert!(check_id("appointmentId", "a1b2-c3_d4").is_ok());
        assert!(check_id("appointmentId", "").is_err());
        assert!(check_id("appointmentId", "x y").is_err());
        assert!(check_id("appointmentId", &"a".repeat(129)).is_err());
        assert!(check_id("appointmentId", "../etc").is_err());
    }

    #[test]
    fn error_acks_have_the_contract_shape() {
        let ack = EventError::forbidden("not your room").to_ack();
        assert_eq!(
            ack,
            json!({"ok": false, "error": {"code": "forbidden", "message": "not your room"}})
        );
        let mut fields = ok_fields();
        fields.insert("selfId".into(), json!("abc"));
        assert_eq!(ok_ack(fields), json!({"ok": true, "selfId": "abc"}));
    }

    #[test]
    fn signal_types_follow_the_contract_spelling() {
        let s: Signal = parse(json!({"to": "x", "type": "ice-candidate", "payload": {}})).unwrap();
        assert_eq!(s.kind, SignalType::IceCandidate);
        assert!(parse::<Signal>(json!({"to": "x", "type": "bogus", "payload": {}})).is_err());
        assert!(parse::<Signal>(json!({"to": 5, "type": "offer", "payload": {}})).is_err());
    }

    #[test]
    fn candidate_lines() {
        for ok in [
            "",
            "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
            "a=candidate:1 1 UDP 2130706431 10.0.0.1 9 typ host",
            "candidate:842163049 1 udp 1677729535 203.0.113.5 46154 typ srflx raddr 0.0.0.0 \
             rport 0 generation 0 ufrag abcd network-cost 999",
            "candidate:2 1 tcp 1518280447 192.168.1.2 9 typ host tcptype active",
            "candidate:3 1 udp 2113937151 3a1c9b0e-1f7e-4b0e-9d8e-6a1b2c3d4e5f.local 54400 typ host",
        ] {
            assert!(valid_candidate_line(ok), "{ok}");
        }
        for bad in [
            "garbage",
            "candidate:garbage",
            "candidate:1 1 udp 2130706431 127.0.0.1 50000",
            "candidate:1 x udp 2130706431 127.0.0.1 50000 typ host",
            "candidate:1 1 udp 2130706431 127.0.0.1 99999 typ host",
            "candidate:1 1 udp 2130706431 127.0.0.1 50000 type host",
            "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ nonsense",
        ] {
            assert!(!valid_candidate_line(bad), "{bad}");
        }
    }
}
