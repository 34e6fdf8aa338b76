//! Wire types of the Socket.IO contract: payloads, acknowledgements, error codes, validation.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

/// Error codes of the contract (HTTP section 2 plus `busy` and `offline`), and `unavailable`
/// (the server is draining: it starts no new consult room or call).
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
    Unavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::InvalidPayload,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::Busy,
        ErrorCode::Offline,
        ErrorCode::Unavailable,
    ];

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
            ErrorCode::Unavailable => "unavailable",
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
///
/// Only a JSON object is a payload: serde would otherwise read a positional array as a struct
/// (`["hi"]` as `{text:"hi"}`), and every event's documented shape is an object.
pub fn parse<T: for<'de> Deserialize<'de>>(data: Value) -> Result<T, EventError> {
    if !data.is_object() {
        return Err(EventError::invalid("the payload must be a JSON object"));
    }
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

/// Most media sections (`m=` lines) an SDP may have. Browsers put one per transceiver: a call
/// has two or three, an SFU subscription two per other member (and JSEP keeps the sections of
/// removed tracks, port 0, until they are reused), so 64 leaves room for a large consult while
/// bounding what a peer's browser is asked to set up.
pub const MAX_SDP_MEDIA_SECTIONS: usize = 64;
/// Longest SDP line, in bytes. The longest lines browsers write (`m=` with every payload type,
/// `a=fmtp`, `a=candidate`, `a=ssrc ... msid:`) stay under 300 bytes; 4096 keeps any one line from
/// taking the whole size budget.
pub const MAX_SDP_LINE_BYTES: usize = 4096;

/// The one SDP check, for every SDP an event carries (signal, call-user, answer-call,
/// sfu-publish, sfu-subscribe-answer): at most `max_bytes`, begins with `v=0`, no control
/// characters but line breaks (CRLF or LF) and tab, lines of at most [`MAX_SDP_LINE_BYTES`],
/// parsed by webrtc-rs's SDP parser (so `o=`, `s=`, `t=` are there and in order, every line is
/// `<letter>=<value>`), at most [`MAX_SDP_MEDIA_SECTIONS`] media sections.
pub fn check_sdp(field: &str, sdp: &str, max_bytes: usize) -> Result<(), EventError> {
    if sdp.len() > max_bytes {
        return Err(EventError::new(
            ErrorCode::TooLarge,
            format!("{field} is larger than {max_bytes} bytes"),
        ));
    }
    let invalid = |why: &str| {
        Err(EventError::invalid(format!(
            "{field} is not a valid SDP: {why}"
        )))
    };
    if !sdp.starts_with("v=0") {
        return invalid("it must begin with v=0");
    }
    let mut lines = sdp.split('\n').peekable();
    while let Some(line) = lines.next() {
        // The last piece is what follows the final line break (empty for a well-ended SDP).
        let line = if lines.peek().is_some() {
            line.strip_suffix('\r').unwrap_or(line)
        } else {
            line
        };
        if line.len() > MAX_SDP_LINE_BYTES {
            return invalid(&format!("a line is longer than {MAX_SDP_LINE_BYTES} bytes"));
        }
        // A NUL or a lone CR would be relayed to a browser (or stored) as is; the parser
        // accepts them inside attribute values.
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return invalid("it contains a control character");
        }
    }
    let parsed = rtc_sdp::SessionDescription::unmarshal(&mut std::io::Cursor::new(sdp.as_bytes()))
        .map_err(|e| {
            let mut why = e.to_string();
            truncate_chars(&mut why, 120);
            EventError::invalid(format!("{field} is not a valid SDP: {why}"))
        })?;
    if parsed.media_descriptions.len() > MAX_SDP_MEDIA_SECTIONS {
        return invalid(&format!(
            "it has more than {MAX_SDP_MEDIA_SECTIONS} media sections"
        ));
    }
    Ok(())
}

/// Which description an offer/answer payload must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpType {
    Offer,
    Answer,
}

impl SdpType {
    pub fn as_str(self) -> &'static str {
        match self {
            SdpType::Offer => "offer",
            SdpType::Answer => "answer",
        }
    }
}

/// An offer or answer as browsers send it: the SDP string itself, or `{type, sdp}`
/// (`RTCSessionDescriptionInit`; `type`, when given, must be `expected`). Nothing else may be in
/// the object, since it is relayed as sent.
pub fn check_description(
    field: &str,
    value: &Value,
    expected: SdpType,
    max_bytes: usize,
) -> Result<(), EventError> {
    let shape = || {
        EventError::invalid(format!(
            "{field} must be an SDP string or {{type: \"{}\", sdp}}",
            expected.as_str()
        ))
    };
    match value {
        Value::String(sdp) => check_sdp(field, sdp, max_bytes),
        Value::Object(o) => {
            if o.keys().any(|k| k != "type" && k != "sdp") {
                return Err(shape());
            }
            match o.get("type") {
                None => {}
                Some(Value::String(t)) if t == expected.as_str() => {}
                Some(_) => return Err(shape()),
            }
            let sdp = o.get("sdp").and_then(Value::as_str).ok_or_else(shape)?;
            check_sdp(field, sdp, max_bytes)
        }
        _ => Err(shape()),
    }
}

/// Free text a user typed (chat, reasons, avatar seeds): 1 to `max_chars` characters, not only
/// whitespace, and no control characters but newline and tab (where `multiline`). The same on
/// every database: PostgreSQL refuses NUL in text, SQLite stores it.
pub fn check_text(
    field: &str,
    text: &str,
    max_chars: usize,
    multiline: bool,
) -> Result<(), EventError> {
    if text.trim().is_empty() {
        return Err(EventError::invalid(format!("{field} is empty")));
    }
    let length = text.chars().count();
    if length > max_chars {
        return Err(EventError::new(
            ErrorCode::TooLarge,
            format!("{field} is {length} characters, the limit is {max_chars}"),
        ));
    }
    let allowed = |c: char| multiline && (c == '\n' || c == '\t');
    if text.chars().any(|c| c.is_control() && !allowed(c)) {
        let but = if multiline {
            " but newline and tab"
        } else {
            ""
        };
        return Err(EventError::invalid(format!(
            "{field} contains a control character (none{but} is allowed)"
        )));
    }
    Ok(())
}

fn truncate_chars(text: &mut String, max: usize) {
    if let Some((at, _)) = text.char_indices().nth(max) {
        text.truncate(at);
        text.push('…');
    }
}

/// A browser's `RTCIceCandidateInit` (`{candidate, sdpMid, sdpMLineIndex, usernameFragment}`,
/// whose `candidate` is an ICE candidate line or "" for the end of candidates) or `null`.
pub fn check_candidate(field: &str, value: &Value, max: usize) -> Result<(), EventError> {
    check_size(field, value, max)?;
    let fine = match value {
        Value::Null => true,
        Value::Object(o) => {
            let optional = |key: &str, fits: fn(&Value) -> bool| o.get(key).is_none_or(fits);
            o.get("candidate")
                .and_then(Value::as_str)
                .is_some_and(valid_candidate_line)
                && optional("sdpMid", |v| {
                    v.is_null() || v.as_str().is_some_and(printable)
                })
                && optional("sdpMLineIndex", |v| {
                    v.is_null() || v.as_u64().is_some_and(|i| i <= u64::from(u16::MAX))
                })
                && optional("usernameFragment", |v| {
                    v.is_null() || v.as_str().is_some_and(printable)
                })
        }
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

/// No control characters (they would be relayed to a browser as sent).
fn printable(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

/// The `candidate` attribute of RFC 8839 (section 5.1), as browsers send it (an optional `a=`
/// prefix is tolerated); "" is the end of candidates.
fn valid_candidate_line(line: &str) -> bool {
    let line = line.trim();
    if !printable(line) {
        return false;
    }
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub socket_id: String,
    pub user_id: String,
    pub name: String,
    pub role: crate::Role,
    pub avatar_seed: String,
    /// The socket this member had in the room before it came back on a new connection
    /// (`join-room` `previousSocketId`): the others carry on with it under the new id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// The member's last `media-state` (microphone, camera, screen share on or off); absent
    /// until it sends one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaState>,
}

/// What a member sends and the others show on its tile: its microphone (`audio`) and camera
/// (`video`) on or off, and whether it shares its screen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaState {
    pub audio: bool,
    pub video: bool,
    pub screen: bool,
    /// While `screen`: the id of the shared screen's track, as the others receive it (browsers
    /// carry the sender's track id in the SDP's `msid`, and the relay keeps it), which tells it
    /// apart from the camera's track.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub screen_track_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignalType {
    Offer,
    Answer,
    IceCandidate,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Signal;

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

    /// A fixture of `signaling/testdata` with the CRLF line ends clients send.
    fn fixture(name: &str) -> String {
        let text = match name {
            "chrome" => include_str!("../testdata/chrome_offer.sdp"),
            "firefox" => include_str!("../testdata/firefox_offer.sdp"),
            "aiortc" => include_str!("../testdata/aiortc_answer.sdp"),
            "safari" => include_str!("../testdata/safari_offer.sdp"),
            _ => unreachable!("no fixture {name}"),
        };
        text.replace('\n', "\r\n")
    }

    const MINIMAL: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

    fn refused(sdp: &str) -> ErrorCode {
        check_sdp("sdp", sdp, 65536).expect_err(sdp).code
    }

    #[test]
    fn real_client_sdps_pass() {
        for name in ["chrome", "firefox", "aiortc", "safari"] {
            let sdp = fixture(name);
            check_sdp("sdp", &sdp, 65536).unwrap_or_else(|e| panic!("{name}: {e}"));
            // LF-only line ends, as some libraries write, parse too.
            check_sdp("sdp", &sdp.replace("\r\n", "\n"), 65536)
                .unwrap_or_else(|e| panic!("{name} with LF: {e}"));
        }
        check_sdp("sdp", MINIMAL, 65536).unwrap();
        // Chrome's offer before any track is added has no media section at all.
        check_sdp(
            "sdp",
            &format!("{MINIMAL}a=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n"),
            65536,
        )
        .unwrap();
    }

    #[test]
    fn garbage_after_v0_is_refused() {
        // v=0 then printable noise, then binary noise (as the issue's attack).
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let printable: String = (0..4000)
            .map(|_| char::from(b' ' + (next() % 95) as u8))
            .collect();
        assert_eq!(
            refused(&format!("v=0\r\n{printable}")),
            ErrorCode::InvalidPayload
        );
        let binary: String = (0..4000)
            .map(|_| char::from_u32((next() % 0x800) as u32).unwrap_or('x'))
            .collect();
        assert_eq!(
            refused(&format!("v=0\r\n{binary}")),
            ErrorCode::InvalidPayload
        );
        for bad in [
            "",
            "v=0",
            "v=0\r\n",
            "hello, not an sdp",
            "o=- 1 1 IN IP4 0.0.0.0\r\n",
            "\r\nv=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",
            "v=1\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",
            // o= with a field missing, no t=, an unknown line type, a line without "=".
            "v=0\r\no=- 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n",
            &format!("{MINIMAL}x=whatever\r\n"),
            &format!("{MINIMAL}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\njunk line\r\n"),
            &format!("{MINIMAL}m=nonsense 9 UDP/TLS/RTP/SAVPF 111\r\n"),
        ] {
            assert_eq!(refused(bad), ErrorCode::InvalidPayload, "{bad:?}");
        }
    }

    #[test]
    fn control_characters_are_refused_except_line_breaks_and_tab() {
        let chrome = fixture("chrome");
        for c in ['\0', '\x01', '\x1b', '\x7f', '\u{85}'] {
            let bad = chrome.replacen("a=mid:0", &format!("a=mid:0{c}"), 1);
            assert_eq!(refused(&bad), ErrorCode::InvalidPayload, "{c:?}");
        }
        // A CR that does not end a line.
        assert_eq!(
            refused(&chrome.replacen("a=mid:0\r\n", "a=mid:0\rx\r\n", 1)),
            ErrorCode::InvalidPayload
        );
        assert_eq!(refused(&format!("{MINIMAL}\r")), ErrorCode::InvalidPayload);
        check_sdp("sdp", &format!("{MINIMAL}a=tool:x\ty\r\n"), 65536).unwrap();
    }

    #[test]
    fn size_line_and_section_limits() {
        let chrome = fixture("chrome");
        assert_eq!(
            check_sdp("sdp", &chrome, chrome.len() - 1)
                .unwrap_err()
                .code,
            ErrorCode::TooLarge
        );
        check_sdp("sdp", &chrome, chrome.len()).unwrap();

        let line = |n: usize| format!("{MINIMAL}a=x-pad:{}\r\n", "a".repeat(n - "a=x-pad:".len()));
        check_sdp("sdp", &line(MAX_SDP_LINE_BYTES), 65536).unwrap();
        assert_eq!(
            refused(&line(MAX_SDP_LINE_BYTES + 1)),
            ErrorCode::InvalidPayload
        );

        let sections = |n: usize| {
            let mut sdp = MINIMAL.to_owned();
            for mid in 0..n {
                sdp.push_str(&format!(
                    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{mid}\r\n"
                ));
            }
            sdp
        };
        check_sdp("sdp", &sections(MAX_SDP_MEDIA_SECTIONS), 65536).unwrap();
        assert_eq!(
            refused(&sections(MAX_SDP_MEDIA_SECTIONS + 1)),
            ErrorCode::InvalidPayload
        );
    }

    #[test]
    fn descriptions_are_a_string_or_type_and_sdp() {
        let sdp = fixture("chrome");
        let check = |v: Value, t: SdpType| check_description("payload", &v, t, 65536);
        check(json!(sdp), SdpType::Offer).unwrap();
        check(json!({"type": "offer", "sdp": sdp}), SdpType::Offer).unwrap();
        check(json!({"sdp": sdp}), SdpType::Answer).unwrap();
        check(json!({"type": "answer", "sdp": sdp}), SdpType::Answer).unwrap();
        for bad in [
            json!({"type": "answer", "sdp": sdp}),
            json!({"type": "pranswer", "sdp": sdp}),
            json!({"type": 1, "sdp": sdp}),
            json!({"type": "offer"}),
            json!({"type": "offer", "sdp": sdp, "extra": "relayed as is"}),
            json!([sdp]),
            json!(null),
            json!({"type": "offer", "sdp": "v=0\r\nhello"}),
        ] {
            let err = check(bad.clone(), SdpType::Offer).expect_err(&bad.to_string());
            assert_eq!(err.code, ErrorCode::InvalidPayload);
        }
    }

    #[test]
    fn text_refuses_control_characters_but_newline_and_tab_when_multiline() {
        check_text("text", "hello\n\tworld", 100, true).unwrap();
        for bad in ["nul\0byte", "bell\x07", "cr\r\n", "esc\x1b[31m", "del\x7f"] {
            assert_eq!(
                check_text("text", bad, 100, true).unwrap_err().code,
                ErrorCode::InvalidPayload
            );
        }
        assert!(check_text("reason", "a\nb", 100, false).is_err());
        assert_eq!(
            check_text("text", " \n ", 100, true).unwrap_err().code,
            ErrorCode::InvalidPayload
        );
        assert_eq!(
            check_text("text", "ééé", 2, true).unwrap_err().code,
            ErrorCode::TooLarge
        );
        check_text("text", "ééé", 3, true).unwrap();
    }

    #[test]
    fn only_objects_are_payloads() {
        // serde would read ["hi"] as {text:"hi"}.
        assert!(parse::<Signal>(json!(["x", "offer", {}])).is_err());
        assert!(parse::<Signal>(json!("x")).is_err());
        assert!(parse::<Signal>(json!(null)).is_err());
    }

    #[test]
    fn candidate_objects() {
        let line = "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host";
        for ok in [
            json!(null),
            json!({"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"}),
            json!({"candidate": line, "sdpMid": null, "sdpMLineIndex": null, "usernameFragment": null}),
            json!({"candidate": line}),
            json!({"candidate": ""}),
        ] {
            check_candidate("candidate", &ok, 2048).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            json!({"candidate": line, "sdpMid": 0}),
            json!({"candidate": line, "sdpMLineIndex": -1}),
            json!({"candidate": line, "sdpMLineIndex": 70000}),
            json!({"candidate": line, "usernameFragment": "a\0b"}),
            json!({"candidate": format!("{line}\0")}),
            json!({"sdpMid": "0"}),
            json!([line]),
        ] {
            assert!(check_candidate("candidate", &bad, 2048).is_err(), "{bad}");
        }
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
