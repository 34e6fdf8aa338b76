//! Publication: tracks opened by a publish connection, revived or stopped by renegotiation,
//! and the one removal path of a track.

use super::*;

impl Shard {
    pub(super) fn publish_track(&mut self, pub_id: PcId, init: RTCTrackEventInit, now: Instant) {
        let Some(pc) = self.pcs.get_mut(&pub_id) else {
            return;
        };
        if pc.in_tracks.contains_key(&init.ssrc) {
            return;
        }
        let (room, publisher) = (pc.room.clone(), pc.participant.clone());
        let info = guarded(|| {
            let transceivers: Vec<_> = pc.rtc.get_transceivers().collect();
            let mid = transceivers.into_iter().find_map(|t| {
                let t = pc.rtc.rtp_transceiver(t)?;
                if t.receiver() == Some(init.receiver_id) {
                    t.mid().clone()
                } else {
                    None
                }
            });
            let mut receiver = pc
                .rtc
                .rtp_receiver(init.receiver_id)
                .ok_or(MediaError::InvalidState("no receiver"))?;
            let track = receiver.track();
            let kind = track.kind();
            let codec = track.codec(init.ssrc).cloned();
            let params = receiver.get_parameters();
            let codecs = params.rtp_parameters.codecs.clone();
            let exts: Vec<(String, u8)> = params
                .rtp_parameters
                .header_extensions
                .iter()
                .map(|h| (h.uri.clone(), h.id as u8))
                .collect();
            Ok((mid, kind, codec, codecs, exts))
        });
        let Ok((mid, kind, Some(codec), pub_codecs, pub_extensions)) = info else {
            warn!(%room, %publisher, "track opened without a usable codec; ignored");
            return;
        };
        let info = TrackInfo {
            track_id: init.track_id.to_string(),
            mid,
            kind: media_kind(kind),
            codec,
            media_ssrc: init.ssrc,
            pub_codecs,
            pub_extensions,
        };
        self.insert_track(pub_id, info, now);
    }

    /// Publishes a track of `pub_id` into its room: every other member renegotiates.
    pub(super) fn insert_track(
        &mut self,
        pub_id: PcId,
        info: TrackInfo,
        now: Instant,
    ) -> Option<TrackKey> {
        let pc = self.pcs.get_mut(&pub_id)?;
        if pc.in_tracks.contains_key(&info.media_ssrc) {
            return None;
        }
        // Whatever was stopped on this SSRC or under this track id is superseded.
        pc.dormant
            .retain(|ssrc, d| *ssrc != info.media_ssrc && d.info.track_id != info.track_id);
        let (room, publisher) = (pc.room.clone(), pc.participant.clone());
        // The same track id on a new SSRC (the publisher restarted it): replace the old one.
        let old = self
            .tracks
            .iter()
            .find_map(|(k, t)| (t.pub_pc == pub_id && t.track_id == info.track_id).then_some(*k));
        if let Some(old) = old {
            self.unpublish_track(old, now);
        }
        let key = TrackKey(self.next_id());
        let TrackInfo {
            track_id,
            mid,
            kind,
            codec,
            media_ssrc,
            pub_codecs,
            pub_extensions,
        } = info;
        info!(%room, %publisher, track = %track_id, kind = kind.as_str(), codec = %codec.mime_type, "track published");
        self.tracks.insert(
            key,
            Track {
                room: room.clone(),
                publisher: publisher.clone(),
                track_id: track_id.clone(),
                mid,
                kind,
                codec,
                pub_pc: pub_id,
                media_ssrc,
                pub_codecs,
                pub_extensions,
                cache: RtxCache::new(if kind == MediaKind::Video {
                    DEFAULT_CAPACITY
                } else {
                    64
                }),
                keyframes: KeyframeThrottle::default(),
                keyframe_wanted: false,
                highest_seq: None,
                subscribers: Vec::new(),
            },
        );
        if let Some(pc) = self.pcs.get_mut(&pub_id) {
            pc.in_tracks.insert(media_ssrc, key);
        }
        if let Some(p) = self
            .rooms
            .get_mut(&room)
            .and_then(|r| r.participants.get_mut(&publisher))
        {
            p.published.push(key);
        }
        self.update_track_gauges();
        self.emit(MediaEvent::TrackPublished {
            room: room.clone(),
            participant: publisher.clone(),
            kind,
            track_id,
        });
        self.sync_room(&room, Some(&publisher), now);
        Some(key)
    }

    /// A packet on an SSRC the publish connection does not forward: if it belongs to a track
    /// the publisher stopped and has since re-enabled, publish that track again. Off the
    /// forwarding path proper: it runs only for packets that would otherwise be dropped.
    #[cold]
    pub(super) fn revive_track(
        &mut self,
        pub_id: PcId,
        ssrc: u32,
        now: Instant,
    ) -> Option<TrackKey> {
        let pc = self.pcs.get_mut(&pub_id)?;
        if !pc.dormant.get(&ssrc).is_some_and(|d| d.revivable) {
            return None;
        }
        let d = pc.dormant.remove(&ssrc)?;
        self.insert_track(pub_id, d.info, now)
    }

    /// After a new offer on an existing publish connection: every track whose m-section no
    /// longer sends (direction inactive/recvonly, port 0, no msid/ssrc, or gone) leaves the
    /// room exactly as on a leave; stopped tracks whose m-section sends again become
    /// publishable again when their RTP arrives. webrtc-rs does not report these changes.
    pub(super) fn reconcile_published(&mut self, pub_id: PcId, now: Instant) {
        let Some(pc) = self.pcs.get_mut(&pub_id) else {
            return;
        };
        let rtc = &pc.rtc;
        let Ok(Some(sdp)) = guarded(|| Ok(rtc.remote_description().map(|d| d.sdp.clone()))) else {
            return;
        };
        let sections = offered_sections(&sdp);
        for d in pc.dormant.values_mut() {
            let i = &d.info;
            d.revivable = still_sent(&sections, i.mid.as_deref(), i.media_ssrc, &i.track_id);
        }
        let stopped: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.pub_pc == pub_id)
            .filter(|(_, t)| !still_sent(&sections, t.mid.as_deref(), t.media_ssrc, &t.track_id))
            .map(|(k, _)| *k)
            .collect();
        if stopped.is_empty() {
            return;
        }
        let mut room = None;
        for key in stopped {
            let Some(track) = self.remove_track(key) else {
                continue;
            };
            info!(room = %track.room, publisher = %track.publisher, track = %track.track_id, "track stopped by renegotiation");
            room = Some((track.room.clone(), track.publisher.clone()));
            if let Some(pc) = self.pcs.get_mut(&pub_id) {
                pc.dormant.insert(
                    track.media_ssrc,
                    Dormant {
                        info: TrackInfo {
                            track_id: track.track_id,
                            mid: track.mid,
                            kind: track.kind,
                            codec: track.codec,
                            media_ssrc: track.media_ssrc,
                            pub_codecs: track.pub_codecs,
                            pub_extensions: track.pub_extensions,
                        },
                        revivable: false,
                    },
                );
            }
        }
        if let Some((room, publisher)) = room {
            self.sync_room(&room, Some(&publisher), now);
        }
    }

    pub(super) fn unpublish_track(&mut self, key: TrackKey, now: Instant) {
        let Some(track) = self.remove_track(key) else {
            return;
        };
        self.sync_room(&track.room, Some(&track.publisher), now);
    }

    /// Takes a track out of the SFU (forwarding entries, the publisher's list, gauges, event)
    /// without renegotiating its subscribers yet: the caller syncs the room.
    pub(super) fn remove_track(&mut self, key: TrackKey) -> Option<Track> {
        let track = self.tracks.remove(&key)?;
        if let Some(pc) = self.pcs.get_mut(&track.pub_pc) {
            pc.in_tracks.retain(|_, k| *k != key);
        }
        for f in &track.subscribers {
            if let Some(pc) = self.pcs.get_mut(&f.sub_pc) {
                pc.out_ssrcs.retain(|_, k| *k != key);
            }
        }
        if let Some(p) = self
            .rooms
            .get_mut(&track.room)
            .and_then(|r| r.participants.get_mut(&track.publisher))
        {
            p.published.retain(|k| *k != key);
        }
        self.update_track_gauges();
        self.emit(MediaEvent::TrackUnpublished {
            room: track.room.clone(),
            participant: track.publisher.clone(),
            kind: track.kind,
            track_id: track.track_id.clone(),
        });
        Some(track)
    }

    pub(super) fn update_track_gauges(&mut self) {
        let mut n = [0; 2];
        for t in self.tracks.values() {
            n[kind_index(t.kind)] += 1;
        }
        self.metrics.report_sizes(self.pcs.len(), n);
    }
}
