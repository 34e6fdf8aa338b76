//! The per-packet forwarding decision, as plain functions over RTP headers.
//!
//! Every (published track, subscriber) pair has one [`Rewriter`]. It turns the publisher's
//! header into the header this subscriber negotiated: its SSRC, its payload type, its
//! header-extension ids, and a sequence number / timestamp space of its own that stays
//! continuous when the source changes (a publisher re-publishes with a new SSRC) or pauses —
//! a subscriber never sees a jump it would try to NACK, nor time running backwards.
//!
//! The SFU protects the rewritten copies itself (not through the connection's interceptors), so
//! the rewriter also counts what it sent and writes the RTCP sender reports for it.
//!
//! Nothing here allocates once its buffers have grown, awaits, locks or touches a socket; it is
//! unit-tested without a network.

use bytes::Bytes;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp::header::{EXTENSION_PROFILE_ONE_BYTE, EXTENSION_PROFILE_TWO_BYTE, Extension, Header};
use rtc::shared::marshal::{Marshal, MarshalSize};

/// `a` is newer than `b` in RFC 3550 sequence-number arithmetic (wrap-around aware).
#[inline]
pub fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// Publisher payload type → subscriber payload type. `NONE` = not forwarded.
#[derive(Clone, Debug)]
pub struct PayloadTypeMap([u8; 128]);

impl PayloadTypeMap {
    const NONE: u8 = 0xFF;

    pub fn new() -> Self {
        Self([Self::NONE; 128])
    }

    pub fn set(&mut self, from: u8, to: u8) {
        if from < 128 && to < 128 {
            self.0[from as usize] = to;
        }
    }

    #[inline]
    pub fn get(&self, from: u8) -> Option<u8> {
        match self.0.get(from as usize) {
            Some(&v) if v != Self::NONE => Some(v),
            _ => None,
        }
    }
}

impl Default for PayloadTypeMap {
    fn default() -> Self {
        Self::new()
    }
}

/// Publisher header-extension id → subscriber header-extension id. 0 = dropped (an extension
/// the subscriber did not negotiate, or one that is hop-by-hop such as transport-cc or mid).
#[derive(Clone, Debug)]
pub struct ExtIdMap([u8; 256]);

impl ExtIdMap {
    pub fn new() -> Self {
        Self([0; 256])
    }

    pub fn set(&mut self, from: u8, to: u8) {
        self.0[from as usize] = to;
    }

    #[inline]
    pub fn get(&self, from: u8) -> u8 {
        self.0[from as usize]
    }
}

impl Default for ExtIdMap {
    fn default() -> Self {
        Self::new()
    }
}

/// How long after its last new packet a stream still gets sender reports (two 1 s intervals).
pub const SENDER_IDLE_US: u64 = 2_000_000;

/// Sequence-number and timestamp translation for one subscriber of one track.
#[derive(Clone, Debug)]
pub struct Rewriter {
    pub out_ssrc: u32,
    pub clock_rate: u32,
    pub payload_types: PayloadTypeMap,
    pub extensions: ExtIdMap,
    /// The subscriber's id of the transport-cc extension (0 = not negotiated): every copy then
    /// carries a placeholder for its transport-wide sequence number as its first extension,
    /// written once marshalled ([`CopyScratch::write_transport_seq`]).
    pub transport_cc_id: u8,
    /// The source SSRC of the current segment; `None` before the first packet or after a pause.
    source_ssrc: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    /// First source sequence number of the current segment (retransmissions before it belong
    /// to an earlier segment and cannot be translated).
    segment_start: u16,
    /// Highest source sequence number forwarded in the current segment.
    segment_highest: u16,
    /// Last (highest) output sequence number and timestamp, and when it was sent (µs).
    last_seq: u16,
    last_ts: u32,
    last_at_us: u64,
    started: bool,
    /// Packets and payload octets sent on `out_ssrc` (retransmissions included), for sender
    /// reports; they wrap as RFC 3550 allows.
    sent_packets: u32,
    sent_octets: u32,
}

impl Rewriter {
    /// `initial_seq` / `initial_ts` are where this subscriber's numbering starts (pick them at
    /// random, as RFC 3550 asks).
    pub fn new(
        out_ssrc: u32,
        clock_rate: u32,
        initial_seq: u16,
        initial_ts: u32,
        payload_types: PayloadTypeMap,
        extensions: ExtIdMap,
    ) -> Self {
        Self {
            out_ssrc,
            clock_rate: clock_rate.max(1),
            payload_types,
            extensions,
            transport_cc_id: 0,
            source_ssrc: None,
            seq_offset: 0,
            ts_offset: 0,
            segment_start: 0,
            segment_highest: 0,
            // The first packet is numbered last + 1.
            last_seq: initial_seq.wrapping_sub(1),
            last_ts: initial_ts,
            last_at_us: 0,
            started: false,
            sent_packets: 0,
            sent_octets: 0,
        }
    }

    /// The next packet starts a new segment: numbering continues from the last packet sent,
    /// and the timestamp advances by the wall-clock time that passed meanwhile.
    pub fn pause(&mut self) {
        self.source_ssrc = None;
    }

    /// Writes the subscriber's version of `src` into `out` (whose allocations are reused).
    /// Returns false (and leaves the numbering untouched) if the payload type is not
    /// negotiated with this subscriber.
    pub fn rewrite_into(&mut self, src: &Header, now_us: u64, out: &mut Header) -> bool {
        let Some(pt) = self.payload_types.get(src.payload_type) else {
            return false;
        };
        if self.source_ssrc != Some(src.ssrc) {
            self.start_segment(src, now_us);
        }
        let seq = src.sequence_number.wrapping_add(self.seq_offset);
        let ts = src.timestamp.wrapping_add(self.ts_offset);
        if seq_newer(seq, self.last_seq) {
            self.last_seq = seq;
            self.last_ts = ts;
            self.last_at_us = now_us;
            self.segment_highest = src.sequence_number;
        }
        self.fill(src, pt, seq, ts, out);
        true
    }

    /// For the tests: [`Rewriter::rewrite_into`] into a new header.
    #[cfg(test)]
    pub fn rewrite(&mut self, src: &Header, now_us: u64) -> Option<Header> {
        let mut out = Header::default();
        self.rewrite_into(src, now_us, &mut out).then_some(out)
    }

    /// Writes the header for a retransmission of `src` (a packet of the current segment taken
    /// from the cache) into `out`. Changes no numbering; false if `src` cannot be translated.
    pub fn rewrite_retransmission_into(&self, src: &Header, out: &mut Header) -> bool {
        if self.source_ssrc != Some(src.ssrc) || !self.in_segment(src.sequence_number) {
            return false;
        }
        let Some(pt) = self.payload_types.get(src.payload_type) else {
            return false;
        };
        self.fill(
            src,
            pt,
            src.sequence_number.wrapping_add(self.seq_offset),
            src.timestamp.wrapping_add(self.ts_offset),
            out,
        );
        true
    }

    /// For the tests: [`Rewriter::rewrite_retransmission_into`] into a new header.
    #[cfg(test)]
    pub fn rewrite_retransmission(&self, src: &Header) -> Option<Header> {
        let mut out = Header::default();
        self.rewrite_retransmission_into(src, &mut out)
            .then_some(out)
    }

    /// The source SSRC of the current segment (the layer being forwarded).
    pub fn source_ssrc(&self) -> Option<u32> {
        self.source_ssrc
    }

    /// Maps a sequence number the subscriber saw (e.g. in a NACK) back to the publisher's.
    pub fn source_seq(&self, out_seq: u16) -> Option<u16> {
        self.source_ssrc?;
        let src = out_seq.wrapping_sub(self.seq_offset);
        self.in_segment(src).then_some(src)
    }

    /// Counts one packet of `payload_len` octets sent on `out_ssrc`.
    #[inline]
    pub fn count_sent(&mut self, payload_len: usize) {
        self.sent_packets = self.sent_packets.wrapping_add(1);
        self.sent_octets = self.sent_octets.wrapping_add(payload_len as u32);
    }

    /// The RTCP sender report for `out_ssrc` at `now_us` (same clock as `rewrite_into`), whose
    /// wall-clock time is `ntp_now` (NTP format): the RTP timestamp is the last one sent,
    /// advanced by the time since at the track's clock rate. `None` before the first packet
    /// and while the track is paused (nothing new for [`SENDER_IDLE_US`]: RFC 3550 6.4 stops
    /// counting a participant as a sender after two report intervals without data).
    pub fn sender_report(&self, now_us: u64, ntp_now: u64) -> Option<SenderReport> {
        let idle = now_us.saturating_sub(self.last_at_us) > SENDER_IDLE_US;
        if !self.started || self.sent_packets == 0 || idle {
            return None;
        }
        Some(SenderReport {
            ssrc: self.out_ssrc,
            ntp_time: ntp_now,
            rtp_time: self.last_ts.wrapping_add(self.ticks_since_last(now_us)),
            packet_count: self.sent_packets,
            octet_count: self.sent_octets,
            ..Default::default()
        })
    }

    fn ticks_since_last(&self, now_us: u64) -> u32 {
        let elapsed_us = now_us.saturating_sub(self.last_at_us);
        (u128::from(elapsed_us) * u128::from(self.clock_rate) / 1_000_000) as u32
    }

    /// For the tests: output sequence number and timestamp of the last packet forwarded.
    #[cfg(test)]
    pub fn last_sent(&self) -> Option<(u16, u32)> {
        self.started.then_some((self.last_seq, self.last_ts))
    }

    fn in_segment(&self, src_seq: u16) -> bool {
        !seq_newer(self.segment_start, src_seq) && !seq_newer(src_seq, self.segment_highest)
    }

    fn start_segment(&mut self, src: &Header, now_us: u64) {
        let next_seq = self.last_seq.wrapping_add(1);
        let next_ts = if self.started {
            self.last_ts
                .wrapping_add(self.ticks_since_last(now_us).max(1))
        } else {
            self.last_ts
        };
        self.seq_offset = next_seq.wrapping_sub(src.sequence_number);
        self.ts_offset = next_ts.wrapping_sub(src.timestamp);
        self.segment_start = src.sequence_number;
        self.segment_highest = src.sequence_number;
        self.source_ssrc = Some(src.ssrc);
        if !self.started {
            self.started = true;
            self.last_at_us = now_us;
        }
    }

    #[inline]
    fn fill(&self, src: &Header, pt: u8, seq: u16, ts: u32, out: &mut Header) {
        out.version = 2;
        out.padding = src.padding;
        out.marker = src.marker;
        out.payload_type = pt;
        out.sequence_number = seq;
        out.timestamp = ts;
        out.ssrc = self.out_ssrc;
        out.csrc.clear();
        out.csrc.extend_from_slice(&src.csrc);
        out.extensions.clear();
        out.extensions_padding = 0;
        let mut two_byte = false;
        if self.transport_cc_id != 0 {
            two_byte |= self.transport_cc_id > 14;
            out.extensions.push(Extension {
                id: self.transport_cc_id,
                payload: Bytes::from_static(&TRANSPORT_SEQ_PLACEHOLDER),
            });
        }
        for ext in &src.extensions {
            let id = self.extensions.get(ext.id);
            if id != 0 {
                two_byte |= id > 14 || ext.payload.is_empty() || ext.payload.len() > 16;
                out.extensions.push(Extension {
                    id,
                    payload: Bytes::clone(&ext.payload),
                });
            }
        }
        out.extension = !out.extensions.is_empty();
        out.extension_profile = if two_byte {
            EXTENSION_PROFILE_TWO_BYTE
        } else {
            EXTENSION_PROFILE_ONE_BYTE
        };
    }
}

/// What a copy's transport-wide sequence number is written over (a static: no allocation).
static TRANSPORT_SEQ_PLACEHOLDER: [u8; 2] = [0, 0];

/// Reused buffers for building one subscriber's copy: its header and the marshalled packet.
#[derive(Default)]
pub struct CopyScratch {
    pub header: Header,
    pub bytes: Vec<u8>,
    /// Where the payload starts in `bytes` (the marshalled header's length).
    header_len: usize,
}

impl CopyScratch {
    /// Marshals `self.header` and `payload` into `self.bytes` the way `rtp::Packet` does
    /// (padding, when the header asks for it, back to a multiple of four octets).
    pub fn marshal(&mut self, payload: &[u8]) -> bool {
        self.marshal_parts(&[], payload)
    }

    /// [`Self::marshal`] of a payload in two parts: `prefix` (an RTX packet's original
    /// sequence number), then `payload`.
    pub fn marshal_parts(&mut self, prefix: &[u8], payload: &[u8]) -> bool {
        let header_len = self.header.marshal_size();
        self.header_len = header_len;
        self.bytes.clear();
        self.bytes.resize(header_len, 0);
        if self.header.marshal_to(&mut self.bytes).is_err() {
            return false;
        }
        self.bytes.extend_from_slice(prefix);
        self.bytes.extend_from_slice(payload);
        if self.header.padding {
            let pad = match (prefix.len() + payload.len()) % 4 {
                0 => 4,
                r => 4 - r,
            };
            self.bytes.resize(self.bytes.len() + pad - 1, 0);
            self.bytes.push(pad as u8);
        }
        true
    }

    /// The payload of the marshalled copy (padding included), to be rewritten in place.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.bytes.get_mut(self.header_len..).unwrap_or_default()
    }

    /// Writes `seq` over the transport-cc placeholder of the marshalled copy: the header's
    /// first extension when the rewriter put one there ([`Rewriter::transport_cc_id`]). False
    /// if the header has no such extension.
    pub fn write_transport_seq(&mut self, transport_cc_id: u8, seq: u16) -> bool {
        let first = self.header.extensions.first();
        if transport_cc_id == 0 || first.map(|e| e.id) != Some(transport_cc_id) {
            return false;
        }
        // Fixed header, CSRCs, the extension block's 4-octet header, then the element's own
        // header: 1 octet (id, length) in the one-byte profile, 2 in the two-byte one.
        let element_header = if self.header.extension_profile == EXTENSION_PROFILE_TWO_BYTE {
            2
        } else {
            1
        };
        let at = 12 + 4 * self.header.csrc.len() + 4 + element_header;
        match self.bytes.get_mut(at..at + 2) {
            Some(b) => {
                b.copy_from_slice(&seq.to_be_bytes());
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(ssrc: u32, pt: u8, seq: u16, ts: u32) -> Header {
        Header {
            version: 2,
            payload_type: pt,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            ..Default::default()
        }
    }

    fn vp8_rewriter(initial_seq: u16, initial_ts: u32) -> Rewriter {
        let mut pts = PayloadTypeMap::new();
        pts.set(96, 100);
        Rewriter::new(
            0xABCD,
            90_000,
            initial_seq,
            initial_ts,
            pts,
            ExtIdMap::new(),
        )
    }

    #[test]
    fn maps_ssrc_and_payload_type_and_keeps_spacing() {
        let mut r = vp8_rewriter(1000, 50_000);
        let a = r.rewrite(&hdr(7, 96, 40, 9_000), 0).unwrap();
        assert_eq!((a.ssrc, a.payload_type), (0xABCD, 100));
        assert_eq!((a.sequence_number, a.timestamp), (1000, 50_000));
        let b = r.rewrite(&hdr(7, 96, 41, 12_000), 33_000).unwrap();
        assert_eq!((b.sequence_number, b.timestamp), (1001, 53_000));
        // A gap in the source stays a gap (so the subscriber NACKs what really was lost).
        let c = r.rewrite(&hdr(7, 96, 44, 15_000), 66_000).unwrap();
        assert_eq!(c.sequence_number, 1004);
        // A payload type this subscriber did not negotiate is not forwarded.
        assert!(r.rewrite(&hdr(7, 97, 45, 15_000), 70_000).is_none());
        assert_eq!(r.last_sent(), Some((1004, 56_000)));
    }

    #[test]
    fn wraps_around_at_65535_and_u32_max() {
        // Source wraps and output wraps at different moments.
        let mut r = vp8_rewriter(65_534, u32::MAX - 1_500);
        let mut expect_seq = 65_534u16;
        let mut expect_ts = u32::MAX - 1_500;
        for i in 0..8u16 {
            let src_seq = 65_532u16.wrapping_add(i);
            let src_ts = (u32::MAX - 6_000).wrapping_add(u32::from(i) * 3_000);
            let h = r
                .rewrite(&hdr(1, 96, src_seq, src_ts), u64::from(i) * 33_000)
                .unwrap();
            assert_eq!(h.sequence_number, expect_seq, "packet {i}");
            assert_eq!(h.timestamp, expect_ts, "packet {i}");
            expect_seq = expect_seq.wrapping_add(1);
            expect_ts = expect_ts.wrapping_add(3_000);
        }
        assert!(seq_newer(0, 65_535) && seq_newer(5, 65_000) && !seq_newer(65_000, 5));
    }

    #[test]
    fn continuous_across_a_publisher_change() {
        let mut r = vp8_rewriter(10, 1_000);
        for i in 0..5u16 {
            r.rewrite(
                &hdr(1, 96, 500 + i, 90_000 + u32::from(i) * 3_000),
                u64::from(i) * 33_333,
            )
            .unwrap();
        }
        assert_eq!(r.last_sent(), Some((14, 13_000)));
        // A new source (new SSRC, unrelated numbering) 40 ms after the last packet.
        let last_at = 4 * 33_333;
        let h = r.rewrite(&hdr(2, 96, 60_000, 7), last_at + 40_000).unwrap();
        assert_eq!(h.sequence_number, 15);
        assert_eq!(h.timestamp, 13_000 + 3_600, "40 ms at 90 kHz");
        let h = r
            .rewrite(&hdr(2, 96, 60_001, 3_007), last_at + 73_000)
            .unwrap();
        assert_eq!((h.sequence_number, h.timestamp), (16, 16_600 + 3_000));
        // A late packet of the old source is not forwarded into the new numbering as new.
        assert!(r.rewrite_retransmission(&hdr(1, 96, 503, 99_000)).is_none());
    }

    #[test]
    fn continuous_across_a_pause() {
        let mut r = vp8_rewriter(100, 0);
        r.rewrite(&hdr(1, 96, 1, 0), 0).unwrap();
        r.rewrite(&hdr(1, 96, 2, 3_000), 33_000).unwrap();
        r.pause();
        // Two seconds later the same source resumes; its numbering jumped meanwhile.
        let h = r.rewrite(&hdr(1, 96, 80, 183_000), 2_033_000).unwrap();
        assert_eq!(h.sequence_number, 102, "no gap for the subscriber to NACK");
        assert_eq!(
            h.timestamp,
            3_000 + 180_000,
            "time kept running during the pause"
        );
        // Timestamps never run backwards, even if resumed at once.
        r.pause();
        let h2 = r.rewrite(&hdr(1, 96, 81, 0), 2_033_000).unwrap();
        assert_eq!(h2.sequence_number, 103);
        assert!(h2.timestamp > h.timestamp);
    }

    #[test]
    fn reordered_packets_keep_their_place() {
        let mut r = vp8_rewriter(0, 0);
        r.rewrite(&hdr(1, 96, 10, 0), 0).unwrap();
        r.rewrite(&hdr(1, 96, 12, 6_000), 1).unwrap();
        let late = r.rewrite(&hdr(1, 96, 11, 3_000), 2).unwrap();
        assert_eq!((late.sequence_number, late.timestamp), (1, 3_000));
        assert_eq!(r.last_sent(), Some((2, 6_000)));
    }

    #[test]
    fn remaps_header_extension_ids_and_drops_unnegotiated_ones() {
        let mut r = vp8_rewriter(0, 0);
        // Publisher: 1 = audio level, 3 = transport-cc, 4 = abs-send-time.
        // Subscriber: audio level is 10, abs-send-time is 2, transport-cc not forwarded.
        r.extensions.set(1, 10);
        r.extensions.set(4, 2);
        let mut src = hdr(1, 96, 5, 5);
        src.extension = true;
        src.extension_profile = EXTENSION_PROFILE_ONE_BYTE;
        for (id, v) in [(1u8, 0x85u8), (3, 0x01), (4, 0x22)] {
            src.extensions.push(Extension {
                id,
                payload: Bytes::from(vec![v; if id == 4 { 3 } else { 1 }]),
            });
        }
        let out = r.rewrite(&src, 0).unwrap();
        let got: Vec<(u8, Vec<u8>)> = out
            .extensions
            .iter()
            .map(|e| (e.id, e.payload.to_vec()))
            .collect();
        assert_eq!(got, vec![(10, vec![0x85]), (2, vec![0x22; 3])]);
        assert!(out.extension);
        assert_eq!(out.extension_profile, EXTENSION_PROFILE_ONE_BYTE);
        // Ids above 14 need the two-byte form.
        r.extensions.set(1, 20);
        let out = r.rewrite(&src, 1).unwrap();
        assert_eq!(out.extension_profile, EXTENSION_PROFILE_TWO_BYTE);
        // Nothing negotiated: no extension block at all.
        let mut bare = vp8_rewriter(0, 0);
        let out = bare.rewrite(&src, 0).unwrap();
        assert!(!out.extension && out.extensions.is_empty());
        // It survives marshal/unmarshal with the new ids.
        use rtc::shared::marshal::{Marshal, Unmarshal};
        r.extensions.set(1, 10);
        let out = r.rewrite(&src, 2).unwrap();
        let bytes = out.marshal().unwrap();
        let parsed = Header::unmarshal(&mut bytes.as_ref()).unwrap();
        assert_eq!(parsed.get_extension(10).unwrap().as_ref(), &[0x85]);
        assert_eq!(parsed.get_extension(2).unwrap().as_ref(), &[0x22; 3]);
        assert!(parsed.get_extension(3).is_none());
    }

    #[test]
    fn a_copy_carries_its_transport_wide_sequence_number_first() {
        use rtc::shared::marshal::Unmarshal;
        let mut src = hdr(1, 96, 5, 5);
        src.extension = true;
        src.extension_profile = EXTENSION_PROFILE_ONE_BYTE;
        src.csrc = vec![77];
        src.extensions.push(Extension {
            id: 1,
            payload: Bytes::from_static(&[0x85]),
        });
        // transport-cc as 5 (one-byte form) and as 20 (two-byte form).
        for twcc in [5u8, 20] {
            let mut r = vp8_rewriter(0, 0);
            r.extensions.set(1, 10);
            r.transport_cc_id = twcc;
            let mut scratch = CopyScratch::default();
            assert!(r.rewrite_into(&src, 0, &mut scratch.header));
            assert!(scratch.marshal(&[0x5A; 40]));
            assert!(scratch.write_transport_seq(twcc, 0xBEEF));
            assert!(!scratch.write_transport_seq(twcc + 1, 1), "another id");
            let parsed = Header::unmarshal(&mut scratch.bytes.as_slice()).unwrap();
            assert_eq!(parsed.get_extension(twcc).unwrap().as_ref(), &[0xBE, 0xEF]);
            assert_eq!(parsed.get_extension(10).unwrap().as_ref(), &[0x85]);
            assert_eq!(parsed.csrc, vec![77]);
            assert_eq!(&scratch.bytes[scratch.bytes.len() - 40..], &[0x5A; 40]);
        }
        // Not negotiated: no placeholder, nothing written.
        let mut r = vp8_rewriter(0, 0);
        let mut scratch = CopyScratch::default();
        assert!(r.rewrite_into(&src, 0, &mut scratch.header));
        assert!(scratch.marshal(&[0x5A; 40]));
        assert!(!scratch.write_transport_seq(0, 1));
    }

    #[test]
    fn nack_sequence_numbers_map_back_to_the_source() {
        let mut r = vp8_rewriter(65_530, 0);
        for s in 100..110u16 {
            r.rewrite(&hdr(1, 96, s, u32::from(s)), 0).unwrap();
        }
        // Output 65530..=65535,0..=3 ↔ source 100..=109.
        assert_eq!(r.source_seq(65_530), Some(100));
        assert_eq!(r.source_seq(2), Some(108));
        assert_eq!(r.source_seq(4), None, "not sent yet");
        assert_eq!(r.source_seq(65_000), None, "before the segment");
        let rtx = r.rewrite_retransmission(&hdr(1, 96, 108, 108)).unwrap();
        assert_eq!(
            (rtx.sequence_number, rtx.ssrc, rtx.payload_type),
            (2, 0xABCD, 100)
        );
        assert_eq!(
            r.last_sent().unwrap().0,
            3,
            "a retransmission changes no state"
        );
    }

    #[test]
    fn rewrite_into_reuses_the_output_header() {
        let mut r = vp8_rewriter(0, 0);
        r.extensions.set(1, 1);
        let mut src = hdr(1, 96, 1, 1);
        src.extensions.push(Extension {
            id: 1,
            payload: Bytes::from_static(&[1]),
        });
        let mut out = Header::default();
        assert!(r.rewrite_into(&src, 0, &mut out));
        let cap = out.extensions.capacity();
        let ptr = out.extensions.as_ptr();
        for i in 2..1000u16 {
            src.sequence_number = i;
            assert!(r.rewrite_into(&src, u64::from(i), &mut out));
        }
        assert_eq!(
            (out.extensions.capacity(), out.extensions.as_ptr()),
            (cap, ptr)
        );
    }

    #[test]
    fn copy_is_marshalled_as_rtp_packet_would_be() {
        use rtc::rtp::packet::Packet;
        for (padding, len) in [(false, 1_000), (true, 999), (true, 1_000), (true, 0)] {
            let mut header = hdr(0x1234, 96, 7, 90_000);
            header.padding = padding;
            header.extension = true;
            header.extension_profile = EXTENSION_PROFILE_ONE_BYTE;
            header.extensions.push(Extension {
                id: 3,
                payload: Bytes::from_static(&[0xAB, 0xCD, 0xEF]),
            });
            let payload = Bytes::from(vec![0x5A; len]);
            let mut scratch = CopyScratch {
                header: header.clone(),
                ..Default::default()
            };
            assert!(scratch.marshal(&payload));
            let expected = Packet { header, payload }.marshal().unwrap();
            assert_eq!(
                scratch.bytes,
                expected.to_vec(),
                "padding {padding}, {len} octets"
            );
        }
    }

    #[test]
    fn sender_report_counts_what_was_sent_and_continues_the_timestamps() {
        let mut r = vp8_rewriter(100, 5_000);
        assert!(r.sender_report(0, 1 << 32).is_none(), "nothing sent yet");
        let mut out = Header::default();
        assert!(r.rewrite_into(&hdr(9, 96, 1, 0), 1_000_000, &mut out));
        r.count_sent(1_000);
        assert!(r.rewrite_into(&hdr(9, 96, 2, 3_000), 1_033_000, &mut out));
        r.count_sent(500);
        let sent_ts = out.timestamp;
        // Half a second after the last packet: 45,000 ticks of the 90 kHz clock later.
        let sr = r.sender_report(1_533_000, 42 << 32).unwrap();
        assert_eq!(sr.ssrc, r.out_ssrc);
        assert_eq!(sr.ntp_time, 42 << 32);
        assert_eq!((sr.packet_count, sr.octet_count), (2, 1_500));
        assert_eq!(sr.rtp_time, sent_ts.wrapping_add(45_000));
        assert!(
            r.sender_report(1_033_000 + SENDER_IDLE_US + 1, 43 << 32)
                .is_none(),
            "a paused stream gets no sender reports"
        );
    }
}
