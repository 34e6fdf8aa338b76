//! Publication: tracks opened by a publish connection, revived or stopped by renegotiation,
//! and the one removal path of a publication ([`Shard::remove_publication`]).

use super::*;

impl Shard {
    pub(super) fn publish_track(&mut self, pub_id: PcId, init: RTCTrackEventInit, now: Instant) {
        let Some(pc) = self.pcs.get_mut(&pub_id) else {
            return;
        };
        let Some(r) = self.rooms.get(&pc.room) else {
            return;
        };
        if r.incoming.contains_key(&(pub_id, init.ssrc)) {
            return;
        }
        let (room, publisher) = (&r.name, &pc.participant);
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
            rid: init.rid.map(|r| r.to_string()),
            pub_codecs,
            pub_extensions,
        };
        if !self.add_simulcast_layer(pub_id, &info) {
            self.insert_publication(pub_id, info, now);
        }
    }

    /// A simulcast encoding of a track already published (same track, another rid, or the same
    /// rid on a new SSRC) becomes a layer of its publication; true if it did. Subscribers
    /// renegotiate nothing: a down-track switches layers under its own SSRC.
    fn add_simulcast_layer(&mut self, pub_pc: PcId, info: &TrackInfo) -> bool {
        if info.rid.is_none() {
            return false;
        }
        let Some(id) = self.publication_of(pub_pc, &info.track_id) else {
            return false;
        };
        let Some(pc) = self.pcs.get(&pub_pc) else {
            return false;
        };
        let Some(room) = self.rooms.get_mut(&pc.room) else {
            return false;
        };
        let Some(publication) = room.publications.get(&id) else {
            return false;
        };
        if publication.layers.iter().any(|l| l.rid.is_none()) {
            return false;
        }
        let capacity = publication.base().map_or(64, |l| l.cache.capacity());
        let layer = Layer::new(
            info.media_ssrc,
            info.rid.clone(),
            info.codec.clone(),
            capacity,
        );
        let Some(index) = room.add_layer(id, layer) else {
            return false;
        };
        debug!(room = %room.name, publisher = %pc.participant, track = %info.track_id, rid = ?info.rid, index, "simulcast layer opened");
        true
    }

    /// Publishes a track of `pub_pc` into its room: every other member renegotiates.
    pub(super) fn insert_publication(
        &mut self,
        pub_pc: PcId,
        info: TrackInfo,
        now: Instant,
    ) -> Option<(PublicationId, usize)> {
        let pc = self.pcs.get(&pub_pc)?;
        let (rid, publisher) = (pc.room, pc.participant.clone());
        let room = self.rooms.get_mut(&rid)?;
        if room.incoming.contains_key(&(pub_pc, info.media_ssrc)) {
            return None;
        }
        // Whatever was stopped on this SSRC or under this track id is superseded.
        if let Some(p) = room.participants.get_mut(&publisher) {
            p.publisher
                .dormant
                .retain(|ssrc, d| *ssrc != info.media_ssrc && d.info.track_id != info.track_id);
        }
        // The same track id on a new SSRC (the publisher restarted it): replace the old one.
        if let Some(old) = self.publication_of(pub_pc, &info.track_id) {
            self.unpublish(rid, old, now);
        }
        let id = PublicationId(self.next_id());
        let room = self.rooms.get_mut(&rid)?;
        let name = room.name.clone();
        info!(room = %name, %publisher, track = %info.track_id, kind = info.kind.as_str(), codec = %info.codec.mime_type, "track published");
        let (kind, track_id) = (info.kind, info.track_id.clone());
        room.insert_publication(id, Publication::new(&publisher, pub_pc, info));
        self.update_track_gauges();
        self.emit(MediaEvent::TrackPublished {
            room: name,
            participant: publisher.clone(),
            kind,
            track_id,
        });
        self.sync_room(rid, Some(&publisher), now);
        Some((id, 0))
    }

    /// The publication `track_id` arriving on publish connection `pub_pc`, found in its room.
    pub(super) fn publication_of(&self, pub_pc: PcId, track_id: &str) -> Option<PublicationId> {
        let room = self.rooms.get(&self.pcs.get(&pub_pc)?.room)?;
        room.publications
            .iter()
            .find_map(|(id, p)| (p.pc == pub_pc && p.track_id == track_id).then_some(*id))
    }

    /// A packet on an SSRC the publish connection does not forward: if it belongs to a track
    /// the publisher stopped and has since re-enabled, publish that track again. Off the
    /// forwarding path proper: it runs only for packets that would otherwise be dropped.
    #[cold]
    pub(super) fn revive_publication(
        &mut self,
        pub_pc: PcId,
        ssrc: u32,
        now: Instant,
    ) -> Option<(PublicationId, usize)> {
        let pc = self.pcs.get(&pub_pc)?;
        let dormant = &mut self
            .rooms
            .get_mut(&pc.room)?
            .participants
            .get_mut(&pc.participant)?
            .publisher
            .dormant;
        if !dormant.get(&ssrc).is_some_and(|d| d.revivable) {
            return None;
        }
        let d = dormant.remove(&ssrc)?;
        self.insert_publication(pub_pc, d.info, now)
    }

    /// After a new offer on an existing publish connection: every publication whose m-section
    /// no longer sends (direction inactive/recvonly, port 0, no msid/ssrc, or gone) leaves the
    /// room exactly as on a leave; stopped tracks whose m-section sends again become
    /// publishable again when their RTP arrives. webrtc-rs does not report these changes.
    pub(super) fn reconcile_published(&mut self, pub_pc: PcId, now: Instant) {
        let Some(pc) = self.pcs.get(&pub_pc) else {
            return;
        };
        let rtc = &pc.rtc;
        let Ok(Some(sdp)) = guarded(|| Ok(rtc.remote_description().map(|d| d.sdp.clone()))) else {
            return;
        };
        let sections = offered_sections(&sdp);
        let (rid, publisher) = (pc.room, pc.participant.clone());
        let Some(Room {
            name,
            participants,
            publications,
            ..
        }) = self.rooms.get_mut(&rid)
        else {
            return;
        };
        let room = name.clone();
        let Some(p) = participants.get_mut(&publisher) else {
            return;
        };
        for d in p.publisher.dormant.values_mut() {
            let i = &d.info;
            d.revivable = still_sent(&sections, i.mid.as_deref(), i.media_ssrc, &i.track_id);
        }
        let stopped: Vec<PublicationId> = p
            .publisher
            .publications
            .iter()
            .copied()
            .filter(|id| {
                publications.get(id).is_some_and(|t| {
                    let ssrc = t.base().map_or(0, |l| l.ssrc);
                    t.pc == pub_pc && !still_sent(&sections, t.mid.as_deref(), ssrc, &t.track_id)
                })
            })
            .collect();
        if stopped.is_empty() {
            return;
        }
        for id in stopped {
            let Some(publication) = self.remove_publication(rid, id, now) else {
                continue;
            };
            info!(%room, %publisher, track = %publication.track_id, "track stopped by renegotiation");
            let info = publication.into_info();
            if let Some(p) = self.participant_mut(rid, &publisher) {
                p.publisher.dormant.insert(
                    info.media_ssrc,
                    Dormant {
                        info,
                        revivable: false,
                    },
                );
            }
        }
        self.sync_room(rid, Some(&publisher), now);
    }

    /// Takes a publication out of its room and renegotiates everyone else.
    pub(super) fn unpublish(&mut self, room: RoomId, id: PublicationId, now: Instant) {
        if let Some(publication) = self.remove_publication(room, id, now) {
            self.sync_room(room, Some(&publication.publisher), now);
        }
    }

    /// The one removal path of a publication, whatever removes it (renegotiation, the core
    /// closing the track, a replacement, its publisher gone): [`Room::remove_publication`]
    /// (down-tracks, SSRCs, the publisher's entry), gauges and event, without renegotiating
    /// the subscribers yet: the caller syncs the room.
    pub(super) fn remove_publication(
        &mut self,
        room: RoomId,
        id: PublicationId,
        now: Instant,
    ) -> Option<Publication> {
        let r = self.rooms.get_mut(&room)?;
        let publication = r.remove_publication(id)?;
        let name = r.name.clone();
        let now_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        let bytes = publication
            .base()
            .map_or(0, |l| l.bitrate.bytes_last_second(now_us));
        debug!(room = %name, publisher = %publication.publisher, track = %publication.track_id, bitrate_bps = bytes * 8, "publication removed");
        self.update_track_gauges();
        self.emit(MediaEvent::TrackUnpublished {
            room: name,
            participant: publication.publisher.clone(),
            kind: publication.kind,
            track_id: publication.track_id.clone(),
        });
        Some(publication)
    }

    pub(super) fn update_track_gauges(&mut self) {
        let n = self.tracks_by_kind();
        self.metrics.report_sizes(self.pcs.len(), n);
    }
}
