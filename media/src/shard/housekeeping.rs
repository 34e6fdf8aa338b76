//! Housekeeping, every 100 ms: metrics flushed, held-back keyframe requests sent, sender
//! reports, the drop summary, and once a second liveness and the short-lived memories pruned.

use super::*;

impl Shard {
    pub(super) fn housekeeping(&mut self, now: Instant) {
        let nack_out = self.counters.nack_out.swap(0, Ordering::Relaxed);
        if nack_out > 0 {
            self.metrics.nack_out.inc_by(nack_out);
        }
        // Keyframe requests that the throttle held back.
        let mut wanted = Vec::new();
        for (rid, room) in &self.rooms {
            for (id, publication) in &room.publications {
                for (i, layer) in publication.layers.iter().enumerate() {
                    if layer.keyframe_wanted {
                        wanted.push((*rid, *id, i));
                    }
                }
            }
        }
        for (rid, id, layer) in wanted {
            self.request_keyframe(rid, id, layer, now);
        }
        self.send_sender_reports(now);
        self.detect_speakers(now);
        let every_second = now.duration_since(self.last_liveness_check) >= Duration::from_secs(1);
        self.update_send_sides(now, every_second);
        self.choose_layers(now);
        self.metrics.flush();
        // The summary reads the totals every shard adds to: the first shard speaks for all.
        if self.index == 0 && now.duration_since(self.last_drop_summary) >= DROP_SUMMARY_EVERY {
            self.last_drop_summary = now;
            self.log_drop_summary();
        }
        if every_second {
            self.last_liveness_check = now;
            self.check_liveness(now);
            self.early_candidates
                .prune(now.checked_sub(EARLY_CANDIDATE_TTL).unwrap_or(now));
            self.closed_recently
                .retain(|_, t| now.duration_since(*t) < CLOSED_MEMORY);
        }
    }

    /// Each room's speaker detector closes its window; a new speaker is reported.
    fn detect_speakers(&mut self, now: Instant) {
        for room in self.rooms.values_mut() {
            let Some(id) = room.speaker.tick(now) else {
                continue;
            };
            if let Some(publication) = room.publications.get(&id) {
                self.events.push_back(MediaEvent::ActiveSpeaker {
                    room: room.name.clone(),
                    participant: publication.publisher.clone(),
                });
            }
        }
    }

    /// One line for every datagram dropped in the last interval: garbage on a public UDP port is
    /// routine, and a line per datagram would let anyone fill the disk.
    fn log_drop_summary(&mut self) {
        let drops = self.metrics.drops_since_last_summary();
        if drops.is_empty() {
            return;
        }
        let total: u64 = drops.iter().map(|(_, n)| n).sum();
        let by_reason = drops
            .iter()
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        warn!(
            total,
            by_reason,
            interval_secs = DROP_SUMMARY_EVERY.as_secs(),
            "media port dropped datagrams (callrelay_media_datagrams_dropped_total)"
        );
    }

    /// Closes participants whose connections went silent (consent freshness, RFC 7675) or
    /// never connected.
    fn check_liveness(&mut self, now: Instant) {
        let timeout = self.config.liveness_timeout;
        let mut dead: Vec<(RoomId, String, &'static str)> = Vec::new();
        for (id, pc) in &self.pcs {
            if !pc.negotiated {
                continue;
            }
            let reason = match (pc.connected, pc.last_rx) {
                (true, Some(rx)) if now.duration_since(rx) > timeout => Some("consent-timeout"),
                (false, rx) if now.duration_since(rx.unwrap_or(pc.created)) > timeout => {
                    Some("ice-timeout")
                }
                _ => None,
            };
            if let Some(reason) = reason {
                let transport = self.transport_of(*id);
                self.metrics
                    .connection(pc.kind, ConnectionOutcome::TimedOut, transport);
                dead.push((pc.room, pc.participant.clone(), reason));
            }
        }
        for (room, participant, reason) in dead {
            self.close_participant(room, &participant, Some(reason), now);
        }
    }
}
