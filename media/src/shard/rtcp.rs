//! RTCP: subscribers' feedback (NACKs answered within each down-track's limits, keyframe
//! requests relayed to publishers, RTTs from receiver reports) and the sender reports the SFU
//! writes for the copies it sends.

use super::*;
use crate::codec::Codec;

impl Shard {
    /// RTCP the interceptors delivered: feedback from subscribers about tracks we send them.
    pub(super) fn handle_rtcp(
        &mut self,
        id: PcId,
        packets: &[Box<dyn rtc::rtcp::Packet>],
        now: Instant,
    ) {
        let Some(pc) = self.pcs.get(&id) else { return };
        if pc.kind != PcKind::Subscribe {
            return;
        }
        for p in packets {
            let any = p.as_any();
            if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                self.metrics.pli_in.inc();
                if let Some((room, publication, layer)) = self.keyframe_source(id, pli.media_ssrc) {
                    self.request_keyframe(room, publication, layer, now);
                }
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                self.metrics.pli_in.inc();
                let sources: Vec<_> = fir
                    .fir
                    .iter()
                    .filter_map(|e| self.keyframe_source(id, e.ssrc))
                    .collect();
                for (room, publication, layer) in sources {
                    self.request_keyframe(room, publication, layer, now);
                }
            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                self.metrics.nack_in.inc();
                self.answer_nack(id, nack, now);
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                self.observe_rtt(id, rr, now);
            } else if let Some(cc) = any.downcast_ref::<TransportLayerCc>()
                && let Some(side) = self.pcs.get_mut(&id).and_then(|pc| pc.send_side.as_mut())
            {
                side.on_feedback(now, cc);
            }
        }
    }

    /// The down-track a subscribe connection sends under `ssrc` (what its RTCP names), with
    /// its room.
    pub(super) fn down_track_of(&self, sub: PcId, ssrc: u32) -> Option<(RoomId, DownTrackId)> {
        let pc = self.pcs.get(&sub)?;
        let dt = self
            .rooms
            .get(&pc.room)?
            .down_track_by_ssrc(&pc.participant, ssrc)?;
        Some((pc.room, dt))
    }

    /// What a keyframe request about `ssrc` on a subscribe connection is for: the publication
    /// and the layer that down-track forwards.
    fn keyframe_source(&self, sub: PcId, ssrc: u32) -> Option<(RoomId, PublicationId, usize)> {
        let (room, id) = self.down_track_of(sub, ssrc)?;
        let dt = self.rooms.get(&room)?.down_tracks.get(&id)?;
        Some((room, dt.publication, dt.selector.layer()))
    }

    /// Answers a subscriber's NACK from the track's retransmission cache, within the
    /// down-track's limits ([`RtxLimiter`]): every sequence number named (the FCI's packet id
    /// and each bit of its bitmask) is resent at most once per NACK and per round trip, and only
    /// while the retransmission budget lasts; what is not resent is counted by reason. A video
    /// packet it cannot resend (no longer cached) means the subscriber cannot recover by
    /// retransmission: its publisher is asked for a keyframe (throttled as every request is).
    pub(super) fn answer_nack(&mut self, sub_id: PcId, nack: &TransportLayerNack, now: Instant) {
        if let Some((room, publication, layer)) = self.answer_nack_from_cache(sub_id, nack, now) {
            self.request_keyframe(room, publication, layer, now);
        }
    }

    /// [`Self::answer_nack`]'s resending; returns the layer to ask a keyframe of, if a packet
    /// named could not be resent because it is no longer cached.
    fn answer_nack_from_cache(
        &mut self,
        sub_id: PcId,
        nack: &TransportLayerNack,
        now: Instant,
    ) -> Option<(RoomId, PublicationId, usize)> {
        let (room, dt) = self.down_track_of(sub_id, nack.media_ssrc)?;
        let now_us = now.duration_since(self.epoch).as_micros() as u64;
        let Self {
            pcs,
            rooms,
            transmits,
            metrics,
            copy_scratch,
            paced_pcs,
            ..
        } = self;
        let Room {
            publications,
            down_tracks,
            ..
        } = rooms.get_mut(&room)?;
        let f = down_tracks.get_mut(&dt)?;
        let publication = publications.get(&f.publication)?;
        let kind = kind_index(publication.kind);
        let layer = publication.layers.get(f.selector.layer())?;
        let (cache, media_ssrc) = (&layer.cache, layer.ssrc);
        let Pc {
            rtc,
            send_side: Some(send_side),
            ..
        } = pcs.get_mut(&sub_id)?
        else {
            return None;
        };
        let mut unrecoverable = false;
        f.rtx.begin_nack();
        for pair in &nack.nacks {
            let lost = std::iter::once(pair.packet_id).chain(
                (0..16u16)
                    .filter(|i| pair.lost_packets & (1 << i) != 0)
                    .map(|i| pair.packet_id.wrapping_add(i + 1)),
            );
            for out_seq in lost {
                let suppressed = |reason: Suppressed| {
                    metrics.retransmissions_suppressed[reason.index()].inc();
                };
                // Only what was forwarded to this subscriber (its segment, up to the highest
                // sent) reaches the limiter's ring, so made-up numbers cannot disturb it.
                let Some(src_seq) = f.rewriter.source_seq(out_seq) else {
                    suppressed(Suppressed::NotCached);
                    continue;
                };
                match f.rtx.check(out_seq, now_us) {
                    Verdict::Resend => {}
                    Verdict::Duplicate => continue,
                    Verdict::Suppressed(reason) => {
                        suppressed(reason);
                        continue;
                    }
                }
                let Some(original) = cache.get(media_ssrc, src_seq) else {
                    suppressed(Suppressed::NotCached);
                    unrecoverable = true;
                    continue;
                };
                if !f
                    .rewriter
                    .rewrite_retransmission_into(&original.header, &mut copy_scratch.header)
                {
                    suppressed(Suppressed::NotCached);
                    continue;
                }
                let Some(payload) =
                    forwarded_payload(f.strip_red, &original.header, &original.payload)
                else {
                    continue;
                };
                let octets = copy_scratch.header.marshal_size() + payload.len();
                if !f.rtx.affordable(octets) {
                    suppressed(Suppressed::Budget);
                    continue;
                }
                // On the RTX stream where the subscriber negotiated one: the same header but
                // the RTX payload type, SSRC and its own sequence numbers.
                let rtx = f
                    .rtx_ssrc
                    .zip(f.rtx_payload_types.get(copy_scratch.header.payload_type));
                let body = match rtx {
                    Some((rtx_ssrc, rtx_pt)) => {
                        let h = &mut copy_scratch.header;
                        let original_seq = h.sequence_number;
                        h.payload_type = rtx_pt;
                        h.ssrc = rtx_ssrc;
                        h.sequence_number = f.rtx_seq;
                        f.rtx_seq = f.rtx_seq.wrapping_add(1);
                        Body::Rtx {
                            payload,
                            original_seq,
                        }
                    }
                    None => Body::Resend { payload },
                };
                let to = CopyTo {
                    rewriter: &mut f.rewriter,
                    strip_red: f.strip_red,
                    vp8: (layer.payload == Codec::Vp8).then_some(&mut f.vp8),
                    rtc,
                    send_side,
                };
                let sent = send_copy(to, body, now, now_us, copy_scratch, transmits);
                if let Some(paced) = sent {
                    if let Paced::Queued { first } = paced {
                        metrics.paced.inc();
                        if first {
                            paced_pcs.push(sub_id);
                        }
                    }
                    f.rtx.sent(out_seq, octets, now_us);
                    metrics.retransmissions[kind].inc();
                }
            }
        }
        (unrecoverable && publication.kind == MediaKind::Video).then_some((
            room,
            f.publication,
            f.selector.layer(),
        ))
    }

    /// The NTP time (RFC 3550) at `now`, from the wall-clock epoch given at construction.
    pub(super) fn ntp(&self, now: Instant) -> u64 {
        SystemInstant::unix2ntp(self.epoch_unix + now.saturating_duration_since(self.epoch))
    }

    /// Sends every connected subscriber an RTCP sender report per track it receives, once a
    /// second (what rtc's sender-report interceptor did before the SFU protected its copies
    /// itself): browsers need them for audio/video sync and for their round-trip time.
    pub(super) fn send_sender_reports(&mut self, now: Instant) {
        if now.duration_since(self.last_sender_reports) < SENDER_REPORT_INTERVAL {
            return;
        }
        self.last_sender_reports = now;
        let now_us = now.duration_since(self.epoch).as_micros() as u64;
        let ntp_now = self.ntp(now);
        let Self {
            pcs, rooms, dirty, ..
        } = self;
        for room in rooms.values() {
            for f in room.down_tracks.values().filter(|f| f.ready) {
                let Some(sr) = f.rewriter.sender_report(now_us, ntp_now) else {
                    continue;
                };
                let Some(sub) = pcs.get_mut(&f.sub_pc) else {
                    continue;
                };
                let rtc = &mut sub.rtc;
                let written = guarded(|| {
                    rtc.handle_write(TaggedRTCMessage {
                        now,
                        message: RTCMessage::RtcpPacket(String::new(), vec![Box::new(sr)]),
                    })
                    .map_err(MediaError::from)
                });
                if written.is_ok() {
                    Self::mark_dirty(dirty, sub, f.sub_pc);
                }
            }
        }
    }

    /// Round-trip times from a subscriber's receiver report: into the histogram, and into the
    /// retransmission limits of the down-track each report block is about.
    pub(super) fn observe_rtt(&mut self, sub_id: PcId, rr: &ReceiverReport, now: Instant) {
        let now_ntp = self.ntp(now);
        let Some(pc) = self.pcs.get(&sub_id) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&pc.room) else {
            return;
        };
        let mid = (now_ntp >> 16) as u32;
        for r in &rr.reports {
            if r.last_sender_report == 0 {
                continue;
            }
            let Some(dt) = room.down_track_by_ssrc(&pc.participant, r.ssrc) else {
                continue;
            };
            let rtt = mid.wrapping_sub(r.last_sender_report).wrapping_sub(r.delay);
            if rtt < 0x8000_0000 {
                self.metrics.rtt.observe(f64::from(rtt) / 65_536.0);
                if let Some(f) = room.down_tracks.get_mut(&dt) {
                    // 1/65536 s units to µs.
                    f.rtx.observe_rtt(u64::from(rtt) * 1_000_000 / 65_536);
                }
            }
        }
    }

    /// Asks the publisher of a publication's `layer` for a keyframe, at most once per
    /// throttle interval; a request held back is sent when the interval has passed.
    pub(super) fn request_keyframe(
        &mut self,
        room: RoomId,
        id: PublicationId,
        layer: usize,
        now: Instant,
    ) {
        let Some(publication) = self
            .rooms
            .get_mut(&room)
            .and_then(|r| r.publications.get_mut(&id))
        else {
            return;
        };
        let (kind, pub_id) = (publication.kind, publication.pc);
        let Some(layer) = publication.layers.get_mut(layer) else {
            return;
        };
        if kind != MediaKind::Video {
            layer.keyframe_wanted = false;
            return;
        }
        if !layer.keyframes.allow(now) {
            layer.keyframe_wanted = true;
            return;
        }
        layer.keyframe_wanted = false;
        let media_ssrc = layer.ssrc;
        let Some(pc) = self.pcs.get_mut(&pub_id) else {
            return;
        };
        let rtc = &mut pc.rtc;
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        if guarded(|| {
            rtc.handle_write(TaggedRTCMessage {
                now,
                message: RTCMessage::RtcpPacket(String::new(), vec![Box::new(pli)]),
            })
            .map_err(MediaError::from)
        })
        .is_ok()
        {
            self.metrics.pli_out.inc();
            Self::mark_dirty(&mut self.dirty, pc, pub_id);
        }
    }
}
