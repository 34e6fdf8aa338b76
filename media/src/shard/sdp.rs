//! What a publisher's SDP says about its m-sections (which still send a track), and the
//! candidates of the SFU's own SDP copied into every bundled m-section.

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

/// The SFU's SDP (publish answer, subscribe offer) with its ICE candidates, and
/// `a=end-of-candidates` when present, in every m-section of each BUNDLE group, as pion does:
/// the core writes them into the group's first section only, and some clients (aiortc with
/// `max-bundle`) read a bundled transport's remote candidates from another one. Whatever the
/// candidates are (how many, which transport) each bundled section ends up with all of them, in
/// the order they first appear, `a=end-of-candidates` last; sections outside the groups, and
/// an SDP without BUNDLE, are left as they are.
/// The first `a=ice-ufrag` of an SDP (with bundle, every section carries the same).
pub(super) fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
}

pub(crate) fn candidates_in_every_bundled_section(sdp: &str) -> String {
    let lines: Vec<&str> = sdp.lines().collect();
    let bundled: Vec<&str> = lines
        .iter()
        .take_while(|l| !l.starts_with("m="))
        .filter_map(|l| l.strip_prefix("a=group:BUNDLE"))
        .flat_map(str::split_whitespace)
        .collect();
    if bundled.is_empty() {
        return sdp.to_owned();
    }
    // Line ranges of the m-sections (the session part is everything before the first).
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("m="))
        .collect();
    let ranges: Vec<(usize, usize)> = starts
        .iter()
        .enumerate()
        .map(|(k, &start)| (start, starts.get(k + 1).copied().unwrap_or(lines.len())))
        .collect();
    let is_bundled = |&(start, end): &(usize, usize)| {
        lines[start..end]
            .iter()
            .filter_map(|l| l.strip_prefix("a=mid:"))
            .any(|mid| bundled.contains(&mid.trim()))
    };
    let is_candidate = |l: &str| l.starts_with("a=candidate:");
    let is_end = |l: &str| l.trim_end() == "a=end-of-candidates";
    let mut candidates: Vec<&str> = Vec::new();
    let mut ended = false;
    for range in ranges.iter().filter(|r| is_bundled(r)) {
        for &line in &lines[range.0..range.1] {
            if is_candidate(line) && !candidates.contains(&line) {
                candidates.push(line);
            }
            ended |= is_end(line);
        }
    }
    if candidates.is_empty() && !ended {
        return sdp.to_owned();
    }
    let mut out = String::with_capacity(sdp.len() + ranges.len() * 100 * candidates.len());
    let mut push = |line: &str| {
        out.push_str(line);
        out.push_str("\r\n");
    };
    let first = starts.first().copied().unwrap_or(lines.len());
    lines[..first].iter().for_each(|l| push(l));
    for range in &ranges {
        let section = &lines[range.0..range.1];
        if !is_bundled(range) {
            section.iter().for_each(|l| push(l));
            continue;
        }
        section
            .iter()
            .filter(|l| !is_candidate(l) && !is_end(l))
            .for_each(|l| push(l));
        candidates.iter().for_each(|l| push(l));
        if ended {
            push("a=end-of-candidates");
        }
    }
    out
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

    /// Two bundled sections, the candidates in the first only (as the core writes them), and a
    /// rejected section outside the group.
    const SFU_SDP: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
        a=group:BUNDLE 0 1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n\
        a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n\
        a=candidate:2 1 tcp 1671430143 127.0.0.1 50000 typ host tcptype passive\r\n\
        a=end-of-candidates\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\n\
        a=rtpmap:96 VP8/90000\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\na=inactive\r\n";

    fn section_lines(sdp: &str, mid: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur: Vec<String> = Vec::new();
        for line in sdp.lines() {
            if line.starts_with("m=") {
                if cur.iter().any(|l| l == &format!("a=mid:{mid}")) {
                    out = std::mem::take(&mut cur);
                }
                cur.clear();
            }
            cur.push(line.to_owned());
        }
        if cur.iter().any(|l| l == &format!("a=mid:{mid}")) {
            out = cur;
        }
        out
    }

    fn ice_lines(sdp: &str, mid: &str) -> Vec<String> {
        section_lines(sdp, mid)
            .into_iter()
            .filter(|l| l.starts_with("a=candidate:") || l == "a=end-of-candidates")
            .collect()
    }

    #[test]
    fn every_bundled_section_gets_every_candidate_and_the_end() {
        let out = candidates_in_every_bundled_section(SFU_SDP);
        let expected = [
            "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
            "a=candidate:2 1 tcp 1671430143 127.0.0.1 50000 typ host tcptype passive",
            "a=end-of-candidates",
        ];
        assert_eq!(ice_lines(&out, "0"), expected);
        assert_eq!(ice_lines(&out, "1"), expected);
        // Outside the group: untouched.
        assert!(ice_lines(&out, "2").is_empty());
        // Nothing else changed: same lines once the candidates are taken out, CRLF throughout.
        let others = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| !l.starts_with("a=candidate:") && *l != "a=end-of-candidates")
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(others(&out), others(SFU_SDP));
        assert!(out.ends_with("\r\n") && !out.replace("\r\n", "").contains('\n'));
        assert_eq!(section_lines(&out, "1")[3], "a=sendonly");
        // Applying it again changes nothing.
        assert_eq!(candidates_in_every_bundled_section(&out), out);
        // What webrtc-rs parses, it still parses, with the candidates in both sections.
        let parsed = rtc::sdp::description::session::SessionDescription::unmarshal(
            &mut std::io::Cursor::new(out.as_bytes()),
        )
        .expect("parses");
        assert_eq!(parsed.media_descriptions.len(), 3);
    }

    #[test]
    fn any_number_of_candidates_and_no_end_of_candidates() {
        let one = SFU_SDP
            .replace(
                "a=candidate:2 1 tcp 1671430143 127.0.0.1 50000 typ host tcptype passive\r\n",
                "",
            )
            .replace("a=end-of-candidates\r\n", "");
        let out = candidates_in_every_bundled_section(&one);
        let expected = ["a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host"];
        assert_eq!(ice_lines(&out, "0"), expected);
        assert_eq!(ice_lines(&out, "1"), expected);

        let mut many = SFU_SDP.to_owned();
        let extra: String = (3..9)
            .map(|n| format!("a=candidate:{n} 1 udp {n} 10.0.0.{n} 5000{n} typ host\r\n"))
            .collect();
        many = many.replace(
            "a=end-of-candidates\r\n",
            &format!("{extra}a=end-of-candidates\r\n"),
        );
        let out = candidates_in_every_bundled_section(&many);
        assert_eq!(ice_lines(&out, "1").len(), 9);
        assert_eq!(ice_lines(&out, "0"), ice_lines(&out, "1"));
    }

    #[test]
    fn without_bundle_or_candidates_the_sdp_is_unchanged() {
        let unbundled = SFU_SDP.replace("a=group:BUNDLE 0 1\r\n", "");
        assert_eq!(candidates_in_every_bundled_section(&unbundled), unbundled);
        let bare: String = SFU_SDP
            .lines()
            .filter(|l| !l.starts_with("a=candidate:") && *l != "a=end-of-candidates")
            .map(|l| format!("{l}\r\n"))
            .collect();
        assert_eq!(candidates_in_every_bundled_section(&bare), bare);
    }
}
