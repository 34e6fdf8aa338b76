//! Every Socket.IO event a client can send, with an arbitrary payload: the first byte picks the
//! event (`payload::EVENTS`, the server's whole `route!` table, plus one it does not know), the
//! rest is the JSON the client sent. `validate_event_payload` runs the event's stateless
//! validation exactly as its handler does before touching any state (ids, sizes, SDP parse,
//! candidates, chat text); it must refuse bad input with an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Stands for any event name the server does not handle.
const UNKNOWN_EVENT: &str = "no-such-event";

fuzz_target!(|data: &[u8]| {
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    // The server's own list of client events (the `route!` table's), then an unknown one.
    let events = callrelay_signaling::payload::EVENTS;
    let event = events
        .get(usize::from(pick) % (events.len() + 1))
        .copied()
        .unwrap_or(UNKNOWN_EVENT);
    // Socket.IO hands the server JSON; bytes that are not JSON never reach an event handler.
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let _ = callrelay_signaling::validate_event_payload(event, payload);
});
