//! What the SFU reads in RTP payloads, without decoding them: whether a packet starts a
//! keyframe (a down-track switches simulcast layers only there), the frame size a VP8 keyframe
//! announces (which layer fills which size), and the VP8 picture ids rewritten so a subscriber
//! sees one continuous sequence across layer switches (RFC 7741; its decoder would otherwise
//! take the new layer's frames for old or missing ones).
//!
//! Plain functions over byte slices, unit-tested; nothing allocates.

/// The codecs whose payloads the SFU looks into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Vp8,
    Vp9,
    H264,
    /// Anything else (Opus): every packet stands alone.
    Other,
}

impl Codec {
    pub fn from_mime(mime: &str) -> Self {
        let subtype = mime.rsplit('/').next().unwrap_or(mime);
        if subtype.eq_ignore_ascii_case("vp8") {
            Codec::Vp8
        } else if subtype.eq_ignore_ascii_case("vp9") {
            Codec::Vp9
        } else if subtype.eq_ignore_ascii_case("h264") {
            Codec::H264
        } else {
            Codec::Other
        }
    }
}

/// Whether `payload` is the first packet of a keyframe (or carries one's parameter sets).
pub(crate) fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8_keyframe(payload).is_some(),
        Codec::Vp9 => vp9_keyframe(payload),
        Codec::H264 => h264_keyframe(payload),
        Codec::Other => true,
    }
}

/// The parts of a VP8 payload descriptor (RFC 7741 §4.2) the SFU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Vp8Descriptor {
    /// Start of a partition, and partition index 0: the frame's first packet.
    frame_start: bool,
    /// Offset and width (true = 15 bits) of the picture id, if present.
    picture_id: Option<(usize, bool)>,
    /// Offset of TL0PICIDX, if present.
    tl0picidx: Option<usize>,
    /// Length of the descriptor: the VP8 payload header starts here.
    len: usize,
}

fn vp8_descriptor(p: &[u8]) -> Option<Vp8Descriptor> {
    let b0 = *p.first()?;
    let mut at = 1;
    let mut picture_id = None;
    let mut tl0picidx = None;
    if b0 & 0x80 != 0 {
        let x = *p.get(at)?;
        at += 1;
        if x & 0x80 != 0 {
            let long = *p.get(at)? & 0x80 != 0;
            picture_id = Some((at, long));
            at += if long { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            tl0picidx = Some(at);
            at += 1;
        }
        if x & 0x30 != 0 {
            at += 1;
        }
    }
    (p.len() >= at).then_some(Vp8Descriptor {
        frame_start: b0 & 0x10 != 0 && b0 & 0x07 == 0,
        picture_id,
        tl0picidx,
        len: at,
    })
}

/// A VP8 keyframe's first packet: its frame size (width, height) when the packet holds the
/// keyframe header, `Some(None)` if too short to tell the size.
fn vp8_keyframe(p: &[u8]) -> Option<Option<(u16, u16)>> {
    let d = vp8_descriptor(p)?;
    let frame = p.get(d.len..)?;
    // The frame tag's P bit: 0 = keyframe.
    if !d.frame_start || frame.first()? & 0x01 != 0 {
        return None;
    }
    // Frame tag (3), start code 9d 01 2a (3), then 14-bit width and height, little endian.
    let size = match frame.get(3..10) {
        Some([0x9d, 0x01, 0x2a, w0, w1, h0, h1]) => Some((
            u16::from_le_bytes([*w0, *w1]) & 0x3fff,
            u16::from_le_bytes([*h0, *h1]) & 0x3fff,
        )),
        _ => None,
    };
    Some(size)
}

/// The frame size a keyframe's first packet announces (VP8 only; `None` otherwise).
pub(crate) fn keyframe_size(codec: Codec, payload: &[u8]) -> Option<(u16, u16)> {
    match codec {
        Codec::Vp8 => vp8_keyframe(payload).flatten(),
        _ => None,
    }
}

/// VP9 (RFC 9628 §4.2): the start of a frame that is not inter-picture predicted.
fn vp9_keyframe(p: &[u8]) -> bool {
    p.first().is_some_and(|b| b & 0x40 == 0 && b & 0x08 != 0)
}

/// H.264 (RFC 6184): an IDR slice or a sequence parameter set, alone, in a STAP-A, or at the
/// start of an FU-A.
fn h264_keyframe(p: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(first) = p.first() else {
        return false;
    };
    match first & 0x1f {
        IDR | SPS => true,
        STAP_A => {
            let mut at = 1;
            while let (Some(hi), Some(lo)) = (p.get(at), p.get(at + 1)) {
                let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                if p.get(at + 2).is_some_and(|n| matches!(n & 0x1f, IDR | SPS)) {
                    return true;
                }
                at += 2 + len;
            }
            false
        }
        FU_A => p.get(1).is_some_and(|h| h & 0x80 != 0 && h & 0x1f == IDR),
        _ => false,
    }
}

/// The primary encoding of a RED payload (RFC 2198): its payload type and data, after the
/// redundant blocks. For a subscriber that did not negotiate RED.
pub(crate) fn red_primary(payload: &[u8]) -> Option<(u8, &[u8])> {
    let mut at = 0;
    let mut redundant = 0usize;
    loop {
        let b = *payload.get(at)?;
        if b & 0x80 == 0 {
            // The last header: F = 0 and the primary's payload type.
            let data = payload.get(at + 1 + redundant..)?;
            return Some((b & 0x7f, data));
        }
        let len = payload.get(at + 2..at + 4)?;
        redundant += usize::from(u16::from_be_bytes([len[0], len[1]]) & 0x3ff);
        at += 4;
    }
}

/// One subscriber's VP8 picture-id and TL0PICIDX numbering of one down-track: continuous
/// across the source changes a layer switch makes (the first frame of a new source follows
/// the last one sent), as the rewriter keeps sequence numbers continuous.
#[derive(Debug, Default, Clone)]
pub struct Vp8Numbering {
    source: Option<u32>,
    picture_offset: u16,
    tl0_offset: u8,
    /// The last picture id and TL0PICIDX written (after the offsets).
    last_picture: Option<u16>,
    last_tl0: Option<u8>,
}

impl Vp8Numbering {
    /// Rewrites the descriptor of `payload`, a packet of source `ssrc`, in place. A new
    /// source starts a new segment: its next picture id follows the last one written. A
    /// retransmission (`resend`) is rewritten with the current offsets and moves nothing.
    pub fn rewrite(&mut self, ssrc: u32, payload: &mut [u8], resend: bool) {
        let Some(d) = vp8_descriptor(payload) else {
            return;
        };
        let picture = d.picture_id.map(|(at, long)| {
            let value = if long {
                u16::from_be_bytes([payload[at] & 0x7f, payload[at + 1]])
            } else {
                u16::from(payload[at] & 0x7f)
            };
            (at, long, value)
        });
        let tl0 = d.tl0picidx.map(|at| (at, payload[at]));
        if self.source != Some(ssrc) && !resend {
            self.source = Some(ssrc);
            if let (Some(last), Some((_, _, value))) = (self.last_picture, picture) {
                self.picture_offset = last.wrapping_add(1).wrapping_sub(value);
            }
            if let (Some(last), Some((_, value))) = (self.last_tl0, tl0) {
                self.tl0_offset = last.wrapping_add(1).wrapping_sub(value);
            }
        }
        if let Some((at, long, value)) = picture {
            let out = value.wrapping_add(self.picture_offset);
            if long {
                let out = out & 0x7fff;
                payload[at] = 0x80 | (out >> 8) as u8;
                payload[at + 1] = out as u8;
            } else {
                payload[at] = (out & 0x7f) as u8;
            }
            if !resend {
                self.last_picture = Some(if long { out & 0x7fff } else { out & 0x7f });
            }
        }
        if let Some((at, value)) = tl0 {
            let out = value.wrapping_add(self.tl0_offset);
            payload[at] = out;
            if !resend {
                self.last_tl0 = Some(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 packet: descriptor with a 15-bit picture id and TL0PICIDX, then a frame tag.
    fn vp8(picture: u16, tl0: u8, start: bool, key: bool) -> Vec<u8> {
        let mut p = vec![
            0x80 | if start { 0x10 } else { 0 },
            0xC0,
            0x80 | (picture >> 8) as u8,
            picture as u8,
            tl0,
        ];
        // Frame tag: P bit 0 for a keyframe; then the keyframe start code and 640 × 360.
        p.extend_from_slice(&[if key { 0x10 } else { 0x11 }, 0x02, 0x00]);
        p.extend_from_slice(&[0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
        p
    }

    fn picture_and_tl0(p: &[u8]) -> (u16, u8) {
        (u16::from_be_bytes([p[2] & 0x7f, p[3]]), p[4])
    }

    #[test]
    fn vp8_keyframes_are_recognised_with_their_size() {
        assert!(starts_keyframe(Codec::Vp8, &vp8(1, 0, true, true)));
        assert_eq!(
            keyframe_size(Codec::Vp8, &vp8(1, 0, true, true)),
            Some((640, 360))
        );
        assert!(!starts_keyframe(Codec::Vp8, &vp8(1, 0, true, false)));
        assert!(!starts_keyframe(Codec::Vp8, &vp8(1, 0, false, true)));
        assert!(!starts_keyframe(Codec::Vp8, &[]));
        assert!(!starts_keyframe(Codec::Vp8, &[0x90, 0xC0]), "truncated");
        // The shortest descriptor (no extensions) on a keyframe.
        assert!(starts_keyframe(Codec::Vp8, &[0x10, 0x10, 0, 0]));
    }

    #[test]
    fn h264_and_vp9_keyframes_are_recognised() {
        assert!(starts_keyframe(Codec::H264, &[0x65, 0x88]), "IDR");
        assert!(starts_keyframe(Codec::H264, &[0x67, 0x42]), "SPS");
        assert!(
            !starts_keyframe(Codec::H264, &[0x41, 0x9a]),
            "non-IDR slice"
        );
        // STAP-A with an SPS second.
        assert!(starts_keyframe(
            Codec::H264,
            &[0x78, 0, 2, 0x09, 0x10, 0, 2, 0x67, 0x42]
        ));
        assert!(!starts_keyframe(Codec::H264, &[0x78, 0, 2, 0x09, 0x10]));
        // FU-A: the start of an IDR, then its middle.
        assert!(starts_keyframe(Codec::H264, &[0x7c, 0x85]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c, 0x05]));
        assert!(starts_keyframe(Codec::Vp9, &[0x08]));
        assert!(!starts_keyframe(Codec::Vp9, &[0x48]), "inter-predicted");
        assert!(!starts_keyframe(Codec::Vp9, &[0x00]), "not the start");
        assert_eq!(Codec::from_mime("video/VP8"), Codec::Vp8);
        assert_eq!(Codec::from_mime("audio/opus"), Codec::Other);
    }

    #[test]
    fn the_primary_of_a_red_payload() {
        // One redundant block of 3 octets (pt 111), then the primary (pt 111): 2 octets.
        // Block header: F, pt 111, timestamp offset 15 (0x03 << 2 | 0xC0 >> 6), length 3.
        let red = [0x80 | 111, 0x03, 0xC0, 0x03, 111, 1, 2, 3, 9, 9];
        assert_eq!(red_primary(&red), Some((111, &[9u8, 9][..])));
        // No redundancy: one header byte, then the primary.
        assert_eq!(red_primary(&[111, 7, 7]), Some((111, &[7u8, 7][..])));
        // A block longer than the payload, a truncated header, nothing at all.
        assert_eq!(red_primary(&[0x80 | 111, 0, 0x03, 0xFF, 111, 1]), None);
        assert_eq!(red_primary(&[0x80 | 111, 0]), None);
        assert_eq!(red_primary(&[]), None);
    }

    #[test]
    fn picture_ids_continue_across_a_source_change() {
        let mut n = Vp8Numbering::default();
        // Layer A: pictures 100, 101 (TL0 7, 8).
        for (pic, tl0) in [(100, 7), (101, 8)] {
            let mut p = vp8(pic, tl0, true, false);
            n.rewrite(1, &mut p, false);
            assert_eq!(
                picture_and_tl0(&p),
                (pic, tl0),
                "the first source is unchanged"
            );
        }
        // Switch to layer B at picture 30_000 (TL0 200): it follows 101 / 8.
        let mut p = vp8(30_000, 200, true, true);
        n.rewrite(2, &mut p, false);
        assert_eq!(picture_and_tl0(&p), (102, 9));
        assert!(starts_keyframe(Codec::Vp8, &p), "still a keyframe");
        let mut p = vp8(30_001, 201, true, false);
        n.rewrite(2, &mut p, false);
        assert_eq!(picture_and_tl0(&p), (103, 10));
        // A resend of B's first picture keeps its rewritten number and moves nothing.
        let mut p = vp8(30_000, 200, true, true);
        n.rewrite(2, &mut p, true);
        assert_eq!(picture_and_tl0(&p), (102, 9));
        let mut p = vp8(30_002, 202, true, false);
        n.rewrite(2, &mut p, false);
        assert_eq!(picture_and_tl0(&p), (104, 11));
        // Picture ids wrap in 15 bits.
        let mut n = Vp8Numbering::default();
        let mut p = vp8(0x7fff, 0, true, false);
        n.rewrite(1, &mut p, false);
        let mut p = vp8(5, 0, true, true);
        n.rewrite(2, &mut p, false);
        assert_eq!(picture_and_tl0(&p).0, 0);
    }
}
