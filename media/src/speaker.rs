//! The active speaker of a room, from the audio level each publisher's browser writes into
//! its audio packets (RFC 6464, `urn:ietf:params:rtp-hdrext:ssrc-audio-level`: one byte, the
//! level in -dBov, 0 the loudest and 127 silence).
//!
//! Per audio publication the forwarding path adds each packet's loudness to a window
//! ([`SpeakerDetector::observe`]: a search of a short list, no allocation after the first
//! packet); the 100 ms housekeeping tick closes the windows into a smoothed level (time
//! constant [`SMOOTHING`]) and decides ([`SpeakerDetector::tick`]). The speaker changes when
//! another publication, speaking, has been at least [`MARGIN`] dB louder than the speaker for
//! [`SUSTAIN`] without interruption, and never sooner than [`MIN_INTERVAL`] after the last
//! change. Silence keeps the last speaker. Time is the shard's `now`, never read here.

use std::time::{Duration, Instant};

use rtc::rtp::header::Header;

use crate::room::PublicationId;

/// The smoothed level's time constant.
pub(crate) const SMOOTHING: Duration = Duration::from_millis(300);
/// How long a challenger must stay clearly louder before it becomes the speaker.
pub(crate) const SUSTAIN: Duration = Duration::from_secs(1);
/// The least time between two changes of speaker.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How much louder (dB) than the speaker a challenger must be.
pub(crate) const MARGIN: f32 = 6.0;
/// The smoothed loudness (127 − dBov) below which a publication counts as silent: an average
/// under about −77 dBov.
pub(crate) const SPEECH: f32 = 50.0;
/// A publication not heard from for this long is forgotten (its publisher left, or muted).
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(3);

/// The audio level (0..=127, -dBov) of a packet carrying the extension under `id`.
pub(crate) fn audio_level(header: &Header, id: u8) -> Option<u8> {
    if !header.extension {
        return None;
    }
    header
        .extensions
        .iter()
        .find(|e| e.id == id)
        .and_then(|e| e.payload.first())
        .map(|b| b & 0x7f)
}

#[derive(Debug)]
struct Entry {
    id: PublicationId,
    /// Loudness (127 − level) summed over the current window, and the packets in it.
    sum: u32,
    count: u32,
    smoothed: f32,
    last_heard: Instant,
}

/// One room's detector: plain data, driven by the shard.
#[derive(Debug, Default)]
pub(crate) struct SpeakerDetector {
    entries: Vec<Entry>,
    speaker: Option<PublicationId>,
    /// The publication currently clearly louder than the speaker, and since when.
    challenger: Option<(PublicationId, Instant)>,
    last_change: Option<Instant>,
    last_tick: Option<Instant>,
}

impl SpeakerDetector {
    /// One audio packet of `id` with its level (-dBov). The hot path: no allocation but the
    /// first packet of a publication.
    pub fn observe(&mut self, id: PublicationId, level: u8, now: Instant) {
        let loudness = 127 - u32::from(level.min(127));
        if let Some(e) = self.entries.iter_mut().find(|e| e.id == id) {
            e.sum += loudness;
            e.count += 1;
            e.last_heard = now;
        } else {
            self.entries.push(Entry {
                id,
                sum: loudness,
                count: 1,
                smoothed: 0.0,
                last_heard: now,
            });
        }
    }

    /// The current speaker, if anyone has spoken yet.
    #[cfg(test)]
    pub fn speaker(&self) -> Option<PublicationId> {
        self.speaker
    }

    /// Closes the window since the last tick and decides. Returns the new speaker when it
    /// changed.
    pub fn tick(&mut self, now: Instant) -> Option<PublicationId> {
        let elapsed = self.last_tick.map_or(Duration::from_millis(100), |t| {
            now.saturating_duration_since(t)
        });
        self.last_tick = Some(now);
        let dt = elapsed.as_secs_f32();
        let alpha = dt / (dt + SMOOTHING.as_secs_f32());
        self.entries
            .retain(|e| now.saturating_duration_since(e.last_heard) < FORGET_AFTER);
        for e in &mut self.entries {
            let mean = if e.count > 0 {
                e.sum as f32 / e.count as f32
            } else {
                0.0
            };
            e.smoothed += alpha * (mean - e.smoothed);
            e.sum = 0;
            e.count = 0;
        }
        let level_of = |id| {
            self.entries
                .iter()
                .find(|e| Some(e.id) == id)
                .map_or(0.0, |e| e.smoothed)
        };
        let current = level_of(self.speaker);
        let leader = self
            .entries
            .iter()
            .filter(|e| e.smoothed >= SPEECH && Some(e.id) != self.speaker)
            .max_by(|a, b| a.smoothed.total_cmp(&b.smoothed))
            .filter(|e| e.smoothed >= current + MARGIN)
            .map(|e| e.id);
        let Some(leader) = leader else {
            self.challenger = None;
            return None;
        };
        let since = match self.challenger {
            Some((id, since)) if id == leader => since,
            _ => {
                self.challenger = Some((leader, now));
                now
            }
        };
        let sustained = now.saturating_duration_since(since) >= SUSTAIN;
        let allowed = self
            .last_change
            .is_none_or(|t| now.saturating_duration_since(t) >= MIN_INTERVAL);
        if sustained && allowed {
            self.speaker = Some(leader);
            self.challenger = None;
            self.last_change = Some(now);
            return Some(leader);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use rtc::rtp::packet::Packet;
    use rtc::shared::marshal::{Marshal, Unmarshal};

    use super::*;

    const A: PublicationId = PublicationId(1);
    const B: PublicationId = PublicationId(2);
    const C: PublicationId = PublicationId(3);

    /// A manual clock: every 20 ms each `(publication, level)` sends a packet, every 100 ms
    /// the detector ticks; returns the changes with their time since `start`.
    struct Sim {
        d: SpeakerDetector,
        start: Instant,
        now: Instant,
        changes: Vec<(Duration, PublicationId)>,
    }

    impl Sim {
        fn new() -> Self {
            let start = Instant::now();
            Self {
                d: SpeakerDetector::default(),
                start,
                now: start,
                changes: Vec::new(),
            }
        }

        fn run(&mut self, dur: Duration, talkers: &[(PublicationId, u8)]) {
            let end = self.now + dur;
            while self.now < end {
                for _ in 0..5 {
                    self.now += Duration::from_millis(20);
                    for &(id, level) in talkers {
                        self.d.observe(id, level, self.now);
                    }
                }
                if let Some(id) = self.d.tick(self.now) {
                    self.changes.push((self.now - self.start, id));
                }
            }
        }
    }

    const LOUD: u8 = 30; // -30 dBov: speech
    const QUIET: u8 = 45; // -45 dBov: someone else, farther away
    const SILENT: u8 = 127;

    #[test]
    fn the_first_speaker_after_a_sustained_second() {
        let mut s = Sim::new();
        s.run(Duration::from_millis(900), &[(A, LOUD), (B, SILENT)]);
        assert!(s.changes.is_empty(), "too soon: {:?}", s.changes);
        s.run(Duration::from_millis(900), &[(A, LOUD), (B, SILENT)]);
        assert_eq!(s.changes.len(), 1);
        assert_eq!(s.changes[0].1, A);
        assert!(
            s.changes[0].0 <= Duration::from_millis(1500),
            "{:?}",
            s.changes
        );
        assert_eq!(s.d.speaker(), Some(A));
    }

    #[test]
    fn silence_keeps_the_last_speaker() {
        let mut s = Sim::new();
        s.run(Duration::from_secs(2), &[(A, LOUD), (B, SILENT)]);
        s.run(Duration::from_secs(10), &[(A, SILENT), (B, SILENT)]);
        // Not sending at all (muted, DTX) is silence too.
        s.run(Duration::from_secs(10), &[]);
        assert_eq!(s.changes.iter().map(|c| c.1).collect::<Vec<_>>(), [A]);
        assert_eq!(s.d.speaker(), Some(A));
    }

    #[test]
    fn hysteresis_a_short_interjection_does_not_take_over() {
        let mut s = Sim::new();
        s.run(Duration::from_secs(2), &[(A, LOUD), (B, SILENT)]);
        // B speaks up for half a second while A pauses.
        s.run(Duration::from_millis(500), &[(A, SILENT), (B, LOUD)]);
        s.run(Duration::from_secs(2), &[(A, LOUD), (B, SILENT)]);
        assert_eq!(s.changes.iter().map(|c| c.1).collect::<Vec<_>>(), [A]);
        // Someone only slightly louder than the speaker does not take over either.
        s.run(Duration::from_secs(5), &[(A, 33), (B, LOUD)]);
        assert_eq!(s.d.speaker(), Some(A));
        // B sustained and clearly louder does, after about a second.
        let before = s.now - s.start;
        s.run(Duration::from_secs(3), &[(A, SILENT), (B, LOUD)]);
        let (at, who) = *s.changes.last().unwrap();
        assert_eq!(who, B);
        let took = at - before;
        assert!(
            took >= SUSTAIN && took <= SUSTAIN + Duration::from_millis(600),
            "{took:?}"
        );
    }

    #[test]
    fn a_quieter_talker_takes_over_when_the_speaker_stops() {
        let mut s = Sim::new();
        s.run(Duration::from_secs(2), &[(A, LOUD), (B, SILENT)]);
        s.run(Duration::from_secs(3), &[(A, SILENT), (B, QUIET)]);
        assert_eq!(s.changes.iter().map(|c| c.1).collect::<Vec<_>>(), [A, B]);
    }

    #[test]
    fn never_more_than_one_change_a_second() {
        let mut s = Sim::new();
        // Talkers alternating every 1.2 s, each a clear winner in its turn.
        for i in 0..20 {
            let talkers = match i % 3 {
                0 => [(A, LOUD), (B, SILENT), (C, SILENT)],
                1 => [(A, SILENT), (B, LOUD), (C, SILENT)],
                _ => [(A, SILENT), (B, SILENT), (C, LOUD)],
            };
            s.run(Duration::from_millis(1200), &talkers);
        }
        assert!(s.changes.len() >= 5, "{:?}", s.changes);
        for pair in s.changes.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= MIN_INTERVAL, "{:?}", s.changes);
            assert_ne!(pair[0].1, pair[1].1);
        }
    }

    #[test]
    fn a_publication_that_left_is_forgotten() {
        let mut s = Sim::new();
        s.run(Duration::from_secs(2), &[(A, LOUD)]);
        s.run(Duration::from_secs(5), &[(B, SILENT)]);
        assert_eq!(s.d.entries.len(), 1, "A forgotten, B kept");
        // The speaker's level counts as silence once it is forgotten.
        s.run(Duration::from_secs(2), &[(B, QUIET)]);
        assert_eq!(s.d.speaker(), Some(B));
    }

    #[test]
    fn reads_the_level_from_a_real_packet() {
        let mut header = Header {
            version: 2,
            payload_type: 111,
            sequence_number: 7,
            timestamp: 960,
            ssrc: 0x1234,
            ..Default::default()
        };
        header
            .set_extension(4, Bytes::from_static(&[0x02, 0, 0]))
            .unwrap();
        // Voice activity bit set, level 42.
        header
            .set_extension(1, Bytes::from_static(&[0x80 | 42]))
            .unwrap();
        let packet = Packet {
            header,
            payload: Bytes::from_static(&[0xf8, 0xff, 0xfe]),
        };
        let wire = packet.marshal().unwrap();
        let parsed = Packet::unmarshal(&mut BytesMut::from(&wire[..]).freeze()).unwrap();
        assert_eq!(audio_level(&parsed.header, 1), Some(42));
        assert_eq!(audio_level(&parsed.header, 4), Some(2));
        assert_eq!(audio_level(&parsed.header, 3), None);
        let plain = Packet::unmarshal(
            &mut Packet {
                header: Header {
                    version: 2,
                    ..Default::default()
                },
                payload: Bytes::from_static(&[1]),
            }
            .marshal()
            .unwrap(),
        )
        .unwrap();
        assert_eq!(audio_level(&plain.header, 1), None);
    }
}
