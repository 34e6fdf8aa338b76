//! Every Socket.IO event a client can send, with an arbitrary payload: the first byte picks the
//! event (the server's whole `route!` table plus one it does not know), the rest is the JSON the
//! client sent. `validate_event_payload` runs the event's stateless validation exactly as the
//! handler does before touching any state (ids, sizes, SDP parse, candidates, chat text); it
//! must refuse bad input with an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The client events of the contract, in `signaling/src/lib.rs` order, then an unknown one.
const EVENTS: [&str; 16] = [
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
    "no-such-event",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    let event = EVENTS[usize::from(pick) % EVENTS.len()];
    // Socket.IO hands the server JSON; bytes that are not JSON never reach an event handler.
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let _ = callrelay_signaling::validate_event_payload(event, payload);
});
