//! What a publisher's SDP says about its m-sections: which still send a track.

/// One m-section of a publisher's offer, as far as deciding whether it still sends a track.
#[derive(Debug, Default)]
pub(super) struct OfferedSection {
    mid: Option<String>,
    /// Port non-zero, direction sendrecv/sendonly and a track announced (msid or ssrc).
    sends: bool,
    ssrcs: Vec<u32>,
    track_ids: Vec<String>,
}

/// Parses the m-sections of a (remote) SDP: mid, whether it sends, SSRCs and msid track ids.
pub(super) fn offered_sections(sdp: &str) -> Vec<OfferedSection> {
    struct Acc {
        section: OfferedSection,
        port_zero: bool,
        direction_sends: bool,
        has_msid: bool,
    }
    fn finish(a: Acc) -> OfferedSection {
        let mut section = a.section;
        let announced = a.has_msid || !section.ssrcs.is_empty();
        section.sends = !a.port_zero && a.direction_sends && announced;
        section
    }
    let mut out = Vec::new();
    let mut cur: Option<Acc> = None;
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            if let Some(a) = cur.take() {
                out.push(finish(a));
            }
            let port = m.split_whitespace().nth(1).unwrap_or("0");
            cur = Some(Acc {
                section: OfferedSection::default(),
                port_zero: port.split('/').next() == Some("0"),
                // RFC 4566: sendrecv unless stated otherwise.
                direction_sends: true,
                has_msid: false,
            });
            continue;
        }
        let Some(a) = cur.as_mut() else { continue };
        let Some(attr) = line.strip_prefix("a=") else {
            continue;
        };
        match attr {
            "sendrecv" | "sendonly" => a.direction_sends = true,
            "recvonly" | "inactive" => a.direction_sends = false,
            _ => {}
        }
        if let Some(mid) = attr.strip_prefix("mid:") {
            a.section.mid = Some(mid.trim().to_owned());
        } else if let Some(msid) = attr.strip_prefix("msid:") {
            a.has_msid = true;
            if let Some(track) = msid.split_whitespace().nth(1) {
                a.section.track_ids.push(track.to_owned());
            }
        } else if let Some(ssrc) = attr.strip_prefix("ssrc:") {
            let mut parts = ssrc.splitn(2, ' ');
            if let Some(Ok(n)) = parts.next().map(str::parse::<u32>) {
                if !a.section.ssrcs.contains(&n) {
                    a.section.ssrcs.push(n);
                }
                if let Some(track) = parts
                    .next()
                    .and_then(|rest| rest.strip_prefix("msid:"))
                    .and_then(|msid| msid.split_whitespace().nth(1))
                {
                    a.section.track_ids.push(track.to_owned());
                }
            }
        }
    }
    if let Some(a) = cur.take() {
        out.push(finish(a));
    }
    out
}

/// Whether the m-section a track arrives on still sends it. The section is found by mid if
/// known, else by SSRC, else by msid track id; a track with no section no longer sends.
pub(super) fn still_sent(
    sections: &[OfferedSection],
    mid: Option<&str>,
    ssrc: u32,
    track_id: &str,
) -> bool {
    let by_mid = mid.and_then(|mid| sections.iter().find(|s| s.mid.as_deref() == Some(mid)));
    by_mid
        .or_else(|| sections.iter().find(|s| s.ssrcs.contains(&ssrc)))
        .or_else(|| {
            sections
                .iter()
                .find(|s| s.track_ids.iter().any(|t| t == track_id))
        })
        .is_some_and(|s| s.sends)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2 3 4\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\na=msid:s a1\r\na=ssrc:11 cname:x\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=inactive\r\na=msid:s v1\r\na=ssrc:22 msid:s v1\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=sendonly\r\na=msid:s v3\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:4\r\na=sendonly\r\na=ssrc:55 cname:x\r\n";

    #[test]
    fn offered_sections_tell_which_still_send() {
        let s = offered_sections(OFFER);
        let sends: Vec<(Option<&str>, bool)> =
            s.iter().map(|s| (s.mid.as_deref(), s.sends)).collect();
        assert_eq!(
            sends,
            [
                (Some("0"), true),
                (Some("1"), false), // inactive
                (Some("2"), false), // recvonly, no msid (removeTrack)
                (Some("3"), false), // port 0
                (Some("4"), true),  // sendonly, ssrc without msid
            ]
        );
        assert_eq!(s[1].ssrcs, [22]);
        assert_eq!(s[1].track_ids, ["v1", "v1"]);
        // Found by mid, else SSRC, else msid track id; a track with no section stops.
        assert!(still_sent(&s, Some("0"), 1, "x"));
        assert!(!still_sent(&s, Some("1"), 11, "a1"));
        assert!(still_sent(&s, None, 11, "x"));
        assert!(!still_sent(&s, None, 22, "a1"));
        assert!(still_sent(&s, None, 9, "a1"));
        assert!(!still_sent(&s, Some("9"), 9, "gone"));
    }
}
