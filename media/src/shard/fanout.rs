//! The forwarding path: a publisher's packet through its publication to each of that
//! publication's ready down-tracks, and the per-copy step (rewrite, marshal, SRTP, hand-off).

use super::*;

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
        for id in &publication.down_tracks {
            let Some(dt) = down_tracks.get_mut(id) else {
                continue;
            };
            if !dt.ready || dt.selector.layer() != layer {
                continue;
            }
            let Some(sub) = pcs.get_mut(&dt.sub_pc) else {
                continue;
            };
            let written = write_copy(
                &mut dt.rewriter,
                &mut sub.rtc,
                &packet,
                now_us,
                copy_scratch,
                |bytes, to| {
                    transmits.push_back(Transmit {
                        to,
                        bytes,
                        received_at: Some(rx_at),
                    });
                },
            );
            if written {
                dt.rtx.forwarded(copy_scratch.bytes.len(), now_us);
                metrics.packets_forwarded[kind].inc();
                metrics.bytes_forwarded[kind].inc_by(payload_len);
            }
        }
    }
}

/// One subscriber's copy of a publisher packet: rewrites the header for this subscriber into
/// `scratch`, then protects and sends it ([`send_copy`]). Returns whether a datagram went out:
/// not if the subscriber did not negotiate the payload type or its DTLS-SRTP is not up yet.
///
/// This is the whole per-copy cost of the forwarding path; the media loop calls it once per
/// ready down-track, and the `bench` feature exposes it to the forwarding benchmark.
pub fn write_copy(
    rewriter: &mut Rewriter,
    rtc: &mut RTCPeerConnection,
    packet: &Packet,
    now_us: u64,
    scratch: &mut CopyScratch,
    send: impl FnMut(BytesMut, Remote),
) -> bool {
    rewriter.rewrite_into(&packet.header, now_us, &mut scratch.header)
        && send_copy(rewriter, rtc, &packet.payload, scratch, send)
}

/// Marshals `scratch.header` with `payload`, protects it with the subscriber connection's
/// SRTP context directly (`RTCPeerConnection::protect_rtp`, our patch of rtc: no handler
/// pipeline, no interceptors — the rewriter counts the packet for our own sender reports)
/// and hands the datagram (the ciphertext the core allocated) to `send`.
pub(super) fn send_copy(
    rewriter: &mut Rewriter,
    rtc: &mut RTCPeerConnection,
    payload: &[u8],
    scratch: &mut CopyScratch,
    mut send: impl FnMut(BytesMut, Remote),
) -> bool {
    if !scratch.marshal(payload) {
        return false;
    }
    let CopyScratch { header, bytes } = scratch;
    match guarded(|| rtc.protect_rtp(bytes, header).map_err(MediaError::from)) {
        Ok(Some((datagram, addr, transport))) => {
            send(datagram, Remote { transport, addr });
            rewriter.count_sent(payload.len());
            true
        }
        _ => false,
    }
}
