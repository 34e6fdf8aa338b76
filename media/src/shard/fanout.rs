//! The forwarding path: a publisher's packet through its publication to each of that
//! publication's ready down-tracks, and the per-copy step (rewrite, marshal, SRTP, hand-off).

use super::*;
use crate::codec::{self, Codec};

/// A publisher's video layer silent this long, then back, makes the SFU ask it for a keyframe:
/// longer than retransmissions repair, more than a bandwidth dip pausing a layer for a moment.
const RESUMED_AFTER_SILENCE_US: u64 = 1_000_000;

impl Shard {
    /// The hot path: one publisher packet in, one rewritten copy per ready down-track of its
    /// publication out. Lookups by integer id only (connection, room, SSRC, down-track), nothing
    /// allocated but each copy's ciphertext.
    pub(super) fn forward_rtp(&mut self, pub_pc: PcId, packet: Packet, rx_at: Instant) {
        let ssrc = packet.header.ssrc;
        let Some(rid) = self.pcs.get(&pub_pc).map(|pc| pc.room) else {
            return;
        };
        // OnOpen (handled before reads in `drive`) registered every SSRC we forward, and a
        // track stopped by renegotiation and re-enabled is published again on its first
        // packet; anything else (an SSRC we did not negotiate) is dropped.
        let known = self
            .rooms
            .get(&rid)
            .and_then(|room| room.incoming.get(&(pub_pc, ssrc)))
            .copied();
        let Some((publication, layer)) =
            known.or_else(|| self.revive_publication(pub_pc, ssrc, rx_at))
        else {
            return;
        };
        let publication_id = publication;
        let Self {
            pcs,
            rooms,
            metrics,
            transmits,
            epoch,
            copy_scratch,
            paced_pcs,
            ..
        } = self;
        let Some(Room {
            publications,
            down_tracks,
            speaker,
            ..
        }) = rooms.get_mut(&rid)
        else {
            return;
        };
        let Some(publication) = publications.get_mut(&publication) else {
            return;
        };
        let Some(l) = publication.layers.get_mut(layer) else {
            return;
        };
        let kind = kind_index(publication.kind);
        metrics.packets_received[kind].inc();
        metrics.bytes_received[kind].inc_by(packet.payload.len() as u64);
        let seq = packet.header.sequence_number;
        match l.highest_seq {
            Some(h) if seq_newer(seq, h) => {
                let gap = seq.wrapping_sub(h) - 1;
                if gap > 0 {
                    metrics.packets_lost.inc_by(u64::from(gap));
                    l.packets_lost += u64::from(gap);
                }
                l.highest_seq = Some(seq);
            }
            Some(_) => {}
            None => l.highest_seq = Some(seq),
        }
        l.packets_received += 1;
        if let Some(id) = publication.audio_level_id
            && let Some(level) = crate::speaker::audio_level(&packet.header, id)
        {
            speaker.observe(publication_id, level, rx_at);
        }
        l.cache.insert(&packet);
        let now_us = rx_at.duration_since(*epoch).as_micros() as u64;
        let payload_len = packet.payload.len() as u64;
        l.bitrate.add(packet.payload.len(), now_us);
        let keyframe = codec::starts_keyframe(l.payload, &packet.payload);
        if keyframe && let Some(size) = codec::keyframe_size(l.payload, &packet.payload) {
            l.size = Some(size);
        }
        // Video back after a silence (its publisher's path moved: ICE-TCP once UDP stopped, a
        // new network) goes on with frames that need the ones lost meanwhile. Subscribers ask
        // for a keyframe, but their requests may not get through (a browser whose outgoing UDP
        // is blocked still receives on its UDP pair and keeps it), so the SFU asks too.
        let resumed = l
            .last_rx_us
            .is_some_and(|last| now_us.saturating_sub(last) >= RESUMED_AFTER_SILENCE_US);
        l.last_rx_us = Some(now_us);
        if resumed && !keyframe && publication.kind == MediaKind::Video {
            l.keyframe_wanted = true;
        }
        let vp8 = l.payload == Codec::Vp8;
        for id in &publication.down_tracks {
            let Some(dt) = down_tracks.get_mut(id) else {
                continue;
            };
            if !dt.ready {
                continue;
            }
            match dt.selector.accept(layer, keyframe) {
                Accept::Skip => continue,
                Accept::Forward => {}
                Accept::Switched => metrics.layer_switches.inc(),
            }
            let Some(Pc {
                rtc,
                send_side: Some(send_side),
                ..
            }) = pcs.get_mut(&dt.sub_pc)
            else {
                continue;
            };
            let to = CopyTo {
                rewriter: &mut dt.rewriter,
                strip_red: dt.strip_red,
                vp8: vp8.then_some(&mut dt.vp8),
                rtc,
                send_side,
            };
            let Some(paced) = write_copy(to, &packet, rx_at, now_us, copy_scratch, transmits)
            else {
                continue;
            };
            match paced {
                Paced::Sent => {}
                Paced::Queued { first } => {
                    metrics.paced.inc();
                    if first {
                        paced_pcs.push(dt.sub_pc);
                    }
                }
            }
            dt.rtx.forwarded(copy_scratch.bytes.len(), now_us);
            metrics.packets_forwarded[kind].inc();
            metrics.bytes_forwarded[kind].inc_by(payload_len);
        }
    }
}

impl Shard {
    /// Sends what subscribers' pacers allow at `now`; a connection leaves the list once its
    /// queue is empty.
    pub(super) fn release_paced(&mut self, now: Instant) {
        if self.paced_pcs.is_empty() {
            return;
        }
        let now_us = now.duration_since(self.epoch).as_micros() as u64;
        let Self {
            pcs,
            paced_pcs,
            transmits,
            ..
        } = self;
        paced_pcs.retain(|id| {
            pcs.get_mut(id)
                .and_then(|pc| pc.send_side.as_mut())
                .is_some_and(|side| side.release(now, now_us, transmits))
        });
    }

    /// Every housekeeping tick: each subscribe connection's pacing rate follows its estimate
    /// and what it was sent; once a second (`sample`) each estimate goes into the histogram.
    pub(super) fn update_send_sides(&mut self, now: Instant, sample: bool) {
        let now_us = now.duration_since(self.epoch).as_micros() as u64;
        for (id, pc) in self.pcs.iter_mut() {
            let Some(side) = pc.send_side.as_mut() else {
                continue;
            };
            // A video paused for the old path's estimate resumes at the next layer choice: a
            // new path's estimate starts over.
            side.follow_route(self.demux.selected(*id));
            side.update_pacing_rate(now_us);
            if sample && let Some(estimate) = side.estimate() {
                self.metrics.estimate.observe(estimate);
            }
        }
    }
}

/// What one subscriber's copy is made and sent with: the down-track's rewriter, and the
/// subscribe connection's core (its SRTP context) and send side (transport-wide sequence
/// numbers, pacer).
pub struct CopyTo<'a> {
    pub rewriter: &'a mut Rewriter,
    /// The publisher's RED payload type, for a subscriber that did not negotiate RED.
    pub strip_red: Option<u8>,
    /// The down-track's VP8 picture-id numbering, for a VP8 track.
    pub vp8: Option<&'a mut Vp8Numbering>,
    pub rtc: &'a mut RTCPeerConnection,
    pub send_side: &'a mut SendSide,
}

/// One subscriber's copy of a publisher packet received at `now`: rewrites the header for
/// this subscriber into `scratch`, then protects and sends it ([`send_copy`]). `None` if
/// nothing went out: the subscriber did not negotiate the payload type or its DTLS-SRTP is not
/// up yet.
///
/// This is the whole per-copy cost of the forwarding path; the media loop calls it once per
/// ready down-track, and the `bench` feature exposes it to the forwarding benchmark.
pub fn write_copy(
    to: CopyTo<'_>,
    packet: &Packet,
    now: Instant,
    now_us: u64,
    scratch: &mut CopyScratch,
    out: &mut VecDeque<Transmit>,
) -> Option<Paced> {
    let payload = forwarded_payload(to.strip_red, &packet.header, &packet.payload)?;
    if !to
        .rewriter
        .rewrite_into(&packet.header, now_us, &mut scratch.header)
    {
        return None;
    }
    let body = Body::First {
        payload,
        received_at: now,
    };
    send_copy(to, body, now, now_us, scratch, out)
}

/// The payload a subscriber gets of a publisher packet: as it came, or the primary encoding
/// of a RED packet for a subscriber without RED (`None`: a RED payload that does not parse).
pub(super) fn forwarded_payload<'p>(
    strip_red: Option<u8>,
    header: &rtc::rtp::header::Header,
    payload: &'p [u8],
) -> Option<&'p [u8]> {
    match strip_red {
        Some(red) if header.payload_type == red => codec::red_primary(payload).map(|(_, p)| p),
        _ => Some(payload),
    }
}

/// What a copy carries.
pub(super) enum Body<'p> {
    /// A publisher packet forwarded for the first time, received at `received_at`.
    First {
        payload: &'p [u8],
        received_at: Instant,
    },
    /// A retransmission on the media SSRC (the subscriber did not negotiate RTX).
    Resend { payload: &'p [u8] },
    /// A retransmission on the RTX stream: its payload starts with the original sequence
    /// number (RFC 4588).
    Rtx {
        payload: &'p [u8],
        original_seq: u16,
    },
}

/// Marshals `scratch.header` with the body, rewrites its VP8 picture id, writes its
/// transport-wide sequence number (when the subscriber negotiated transport-cc), protects it
/// with the subscriber connection's SRTP context directly (`RTCPeerConnection::protect_rtp`,
/// our patch of rtc: no handler pipeline, no interceptors — the rewriter counts media-SSRC
/// packets for our own sender reports) and hands the datagram (the ciphertext the core
/// allocated) to the connection's pacer, which queues it or puts it on `out`.
pub(super) fn send_copy(
    to: CopyTo<'_>,
    body: Body<'_>,
    now: Instant,
    now_us: u64,
    scratch: &mut CopyScratch,
    out: &mut VecDeque<Transmit>,
) -> Option<Paced> {
    let CopyTo {
        rewriter,
        vp8,
        rtc,
        send_side,
        ..
    } = to;
    let (payload, original_seq, received_at) = match body {
        Body::First {
            payload,
            received_at,
        } => (payload, None, Some(received_at)),
        Body::Resend { payload } => (payload, None, None),
        Body::Rtx {
            payload,
            original_seq,
        } => (payload, Some(original_seq.to_be_bytes()), None),
    };
    let prefix = original_seq.as_ref().map_or(&[][..], |p| &p[..]);
    if !scratch.marshal_parts(prefix, payload) {
        return None;
    }
    if let Some(numbering) = vp8
        && let Some(vp8_payload) = scratch.payload_mut().get_mut(prefix.len()..)
    {
        let source = rewriter.source_ssrc().unwrap_or(0);
        numbering.rewrite(source, vp8_payload, received_at.is_none());
    }
    let stamp = (rewriter.transport_cc_id != 0).then(|| {
        let stamp = send_side.stamp(scratch.header.ssrc, scratch.header.sequence_number);
        scratch.write_transport_seq(rewriter.transport_cc_id, stamp.id as u16);
        stamp
    });
    let CopyScratch { header, bytes, .. } = scratch;
    match guarded(|| rtc.protect_rtp(bytes, header).map_err(MediaError::from)) {
        Ok(Some((datagram, addr, transport))) => {
            if original_seq.is_none() {
                rewriter.count_sent(payload.len());
            }
            let transmit = Transmit {
                to: Remote { transport, addr },
                bytes: datagram,
                received_at,
            };
            Some(send_side.send(now, now_us, transmit, stamp, out))
        }
        _ => None,
    }
}
