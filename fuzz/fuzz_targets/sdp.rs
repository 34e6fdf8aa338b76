//! Every place a client's SDP enters the server, with arbitrary text:
//!
//! * signaling's SDP check (what `signal`, `call-user`, `answer-call` and `sfu-*` run before
//!   relaying an offer or answer anywhere);
//! * the SFU's parse of an offer and of an answer (`RTCSessionDescription::offer/answer`);
//! * the SFU itself, through its command API as signaling drives it (one SFU on a loopback
//!   socket for the whole run): `publish` (parse, then a publish connection built as the media
//!   loop builds one, remote description set, answer created), if that worked `publish` again
//!   (a renegotiation, which also reconciles the publisher's tracks with the offer), then every
//!   `candidate:` line of the input added as a client candidate, then `leave`.
//!
//! Checked: no panic (in the media loop too: the fuzzer's panic hook aborts even inside the
//! loop's `catch_unwind`), and, the SFU's own invariant, every count returns to zero once the
//! participant has left.
#![no_main]

use std::sync::LazyLock;

use callrelay_media::{CandidateInit, MediaConfig, PcKind, Sfu, SfuHandle, SfuStats};
use callrelay_signaling::protocol::{self, SdpType};
use libfuzzer_sys::fuzz_target;
use rtc::peer_connection::sdp::RTCSessionDescription;

/// Signaling's limit for an SDP (`limits.max_sdp_bytes` default).
const MAX_SDP: usize = 64 * 1024;

struct Media {
    runtime: tokio::runtime::Runtime,
    sfu: SfuHandle,
}

static MEDIA: LazyLock<Media> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = MediaConfig {
        bind: "127.0.0.1:0".parse().expect("address"),
        ..MediaConfig::default()
    };
    let (sfu, events) = runtime
        .block_on(Sfu::start(config, &prometheus::Registry::new()))
        .expect("SFU");
    // Subscribe offers and the like are not looked at; dropping the receiver is fine.
    drop(events);
    Media { runtime, sfu }
});

fuzz_target!(|data: &[u8]| {
    // Socket.IO carries SDP inside JSON strings: it is always UTF-8.
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };

    // Signaling: a plain SDP string (sfu-*) and `{type, sdp}` (signal, call-user, answer-call).
    let _ = protocol::check_sdp("sdp", sdp, MAX_SDP);
    let described = serde_json::json!({"type": "offer", "sdp": sdp});
    let _ = protocol::check_description("offer", &described, SdpType::Offer, MAX_SDP);

    let _ = RTCSessionDescription::answer(sdp.to_owned());
    if RTCSessionDescription::offer(sdp.to_owned()).is_err() {
        return;
    }

    let media = &*MEDIA;
    media.runtime.block_on(async {
        let sfu = &media.sfu;
        let first = sfu
            .publish("fuzz-room", "fuzz-publisher", sdp.to_owned())
            .await;
        if first.is_ok() {
            // The same offer again: a renegotiation (the path a client adding or removing a
            // track takes), which also reconciles the publisher's tracks with the new offer.
            let _ = sfu
                .publish("fuzz-room", "fuzz-publisher", sdp.to_owned())
                .await;
        }
        for line in sdp.lines().filter(|l| l.contains("candidate:")) {
            let candidate = CandidateInit {
                candidate: line.trim_start_matches("a=").to_owned(),
                sdp_mid: Some("0".to_owned()),
                sdp_mline_index: Some(0),
                ..CandidateInit::default()
            };
            let _ = sfu
                .add_candidate(
                    "fuzz-room",
                    "fuzz-publisher",
                    PcKind::Publish,
                    Some(candidate),
                )
                .await;
        }
        let _ = sfu.leave("fuzz-room", "fuzz-publisher").await;
        let stats = sfu.stats().await.expect("SFU stopped");
        assert_eq!(stats, SfuStats::default(), "state left behind after leave");
    });
});
