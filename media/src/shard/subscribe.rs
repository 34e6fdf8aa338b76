//! Subscription: each member's subscribe connection kept in step with its room's publications
//! (one offer outstanding at a time), and its down-tracks added, configured from the answer
//! and activated. Everything here touches one room.

use super::*;

impl Shard {
    /// Re-synchronises every member of `room` except `except` with the room's publications.
    pub(super) fn sync_room(&mut self, room: RoomId, except: Option<&str>, now: Instant) {
        let Some(r) = self.rooms.get(&room) else {
            return;
        };
        let name = r.name.clone();
        let members: Vec<String> = r
            .participants
            .keys()
            .filter(|p| Some(p.as_str()) != except)
            .cloned()
            .collect();
        for m in members {
            if let Err(e) = self.sync_subscriptions(room, &m, now) {
                warn!(room = %name, participant = %m, "renegotiation failed: {e}");
            }
        }
    }

    /// Makes `participant`'s subscribe connection carry exactly the room's other publications,
    /// and sends an offer if that changed anything. While an offer is outstanding, only notes
    /// that another round is needed.
    pub(super) fn sync_subscriptions(
        &mut self,
        room: RoomId,
        participant: &str,
        now: Instant,
    ) -> Result<(), MediaError> {
        let r = self
            .rooms
            .get_mut(&room)
            .ok_or(MediaError::InvalidState("room gone"))?;
        let wanted = r.wanted_by(participant);
        let p = r
            .participants
            .get_mut(participant)
            .ok_or_else(|| unknown(&r.name, participant))?;
        let s = &mut p.subscriber;
        if let Negotiation::OfferPending { again } = &mut s.negotiation {
            *again = true;
            return Ok(());
        }
        // Down-tracks leave only through `Room::remove_down_track`, which queues their
        // senders in `stopped_senders`: what is left to do here is adding.
        let to_add: Vec<PublicationId> = wanted
            .into_iter()
            .filter(|id| !s.down_tracks.contains_key(id))
            .collect();
        if to_add.is_empty() && s.stopped_senders.is_empty() && !s.ice_restart {
            return Ok(());
        }
        let stopped = std::mem::take(&mut s.stopped_senders);
        let sub_id = match s.pc {
            Some(id) => id,
            None => self.create_pc(room, participant, PcKind::Subscribe, now)?,
        };
        if let Some(pc) = self.pcs.get_mut(&sub_id) {
            for sender in stopped {
                let rtc = &mut pc.rtc;
                let _ = guarded(|| rtc.remove_track(sender).map_err(MediaError::from));
            }
        }
        for id in to_add {
            self.add_down_track(room, id, participant, sub_id);
        }
        self.send_offer(room, participant, sub_id, now)
    }

    /// Adds publication `id` to `participant`'s subscribe connection `sub_id`: a sender with
    /// an SSRC of its own, and the down-track that forwards to it once negotiated.
    fn add_down_track(&mut self, room: RoomId, id: PublicationId, participant: &str, sub_id: PcId) {
        let dt_id = DownTrackId(self.next_id());
        let Self {
            rooms, pcs, rng, ..
        } = self;
        let Some(r) = rooms.get_mut(&room) else {
            return;
        };
        let (Some(publication), Some(p)) =
            (r.publications.get(&id), r.participants.get(participant))
        else {
            return;
        };
        let (Some(layer), Some(pc)) = (publication.base(), pcs.get_mut(&sub_id)) else {
            return;
        };
        let mut fresh_ssrc = |taken: Option<u32>| loop {
            let s = rng.random::<u32>();
            if s != 0 && Some(s) != taken && !p.subscriber.out_ssrcs.contains_key(&s) {
                break s;
            }
        };
        let out_ssrc = fresh_ssrc(None);
        let rtx_ssrc = (publication.kind == MediaKind::Video).then(|| fresh_ssrc(Some(out_ssrc)));
        // A publisher that negotiated RED: offer RED and its primary, Opus, so that a
        // subscriber can take either (a track whose first packet was RED reports RED as its
        // codec, and an m-section of RED alone is refused by clients without it).
        let is = |c: &RTCRtpCodecParameters, mime: &str| {
            c.rtp_codec.mime_type.eq_ignore_ascii_case(mime)
        };
        let red_and_opus = publication
            .pub_codecs
            .iter()
            .any(|c| is(c, MIME_TYPE_RED))
            .then(|| {
                let ours: Vec<RTCRtpCodecParameters> = peer::codecs()
                    .into_iter()
                    .map(|(c, _)| c)
                    .filter(|c| is(c, MIME_TYPE_RED) || is(c, MIME_TYPE_OPUS))
                    .collect();
                ours
            });
        let codec = match &red_and_opus {
            Some(ours) => ours
                .iter()
                .find(|c| is(c, MIME_TYPE_OPUS))
                .map_or_else(|| layer.codec.clone(), |c| c.rtp_codec.clone()),
            None => layer.codec.clone(),
        };
        let media_track = MediaStreamTrack::new(
            publication.publisher.clone(),
            publication.track_id.clone(),
            format!("{}-{}", publication.publisher, publication.kind.as_str()),
            rtc_kind(publication.kind),
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(out_ssrc),
                    rtx: rtx_ssrc.map(|ssrc| RTCRtpRtxParameters { ssrc }),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        );
        let rtc = &mut pc.rtc;
        let sender_id = match guarded(|| {
            let sender = rtc.add_track(media_track)?;
            if let Some(codecs) = red_and_opus {
                let transceivers: Vec<_> = rtc.get_transceivers().collect();
                for t in transceivers {
                    if let Some(mut t) = rtc.rtp_transceiver(t)
                        && t.sender() == Some(sender)
                    {
                        t.set_codec_preferences(codecs.clone())?;
                    }
                }
            }
            Ok(sender)
        }) {
            Ok(s) => s,
            Err(e) => {
                warn!(room = %r.name, %participant, "add_track: {e}");
                return;
            }
        };
        let dt = DownTrack {
            publication: id,
            subscriber: participant.to_owned(),
            sub_pc: sub_id,
            sender_id,
            out_ssrc,
            rtx_ssrc,
            rtx_payload_types: PayloadTypeMap::new(),
            rtx_seq: rng.random(),
            strip_red: None,
            rewriter: Rewriter::new(
                out_ssrc,
                layer.codec.clock_rate,
                rng.random(),
                rng.random(),
                PayloadTypeMap::new(),
                ExtIdMap::new(),
            ),
            rtx: RtxLimiter::new(layer.cache.capacity()),
            vp8: Vp8Numbering::default(),
            selector: LayerSelector::default(),
            paused: None,
            probing_until: None,
            upgrades: Default::default(),
            keyframe_asked: None,
            ready: false,
            configured: false,
        };
        r.insert_down_track(dt_id, dt);
    }

    pub(super) fn send_offer(
        &mut self,
        room: RoomId,
        participant: &str,
        sub_id: PcId,
        now: Instant,
    ) -> Result<(), MediaError> {
        let pc = self
            .pcs
            .get_mut(&sub_id)
            .ok_or(MediaError::ConnectionClosed)?;
        let rtc = &mut pc.rtc;
        let sdp = guarded(|| {
            let offer = rtc.create_offer(None)?;
            rtc.set_local_description(now, offer)?;
            rtc.local_description()
                .map(|d| super::sdp::candidates_in_every_bundled_section(&d.sdp))
                .ok_or(MediaError::InvalidState("no local description"))
        })?;
        pc.negotiated = true;
        Self::mark_dirty(&mut self.dirty, pc, sub_id);
        let Some(Room {
            name,
            participants,
            down_tracks,
            ..
        }) = self.rooms.get_mut(&room)
        else {
            return Err(MediaError::InvalidState("room gone"));
        };
        let room = name.clone();
        if let Some(p) = participants.get_mut(participant) {
            let s = &mut p.subscriber;
            for id in s.down_tracks.values() {
                // Keep forwarding tracks already negotiated; new ones wait for the answer.
                if let Some(dt) = down_tracks.get_mut(id)
                    && !dt.configured
                {
                    dt.ready = false;
                }
            }
            s.answered = false;
            s.ice_restart = false;
            s.negotiation = Negotiation::OfferPending { again: false };
        }
        self.emit(MediaEvent::SubscribeOffer {
            room,
            participant: participant.to_owned(),
            sdp,
        });
        Ok(())
    }

    /// After an answer: learn what each down-track of the subscribe connection negotiated
    /// (payload types, extension ids) and start forwarding once connected.
    pub(super) fn configure_down_tracks(&mut self, sub_id: PcId) {
        let Some(pc) = self.pcs.get_mut(&sub_id) else {
            return;
        };
        let Some(Room {
            participants,
            publications,
            down_tracks,
            ..
        }) = self.rooms.get_mut(&pc.room)
        else {
            return;
        };
        let Some(p) = participants.get(&pc.participant) else {
            return;
        };
        for id in p.subscriber.down_tracks.values() {
            let Some(f) = down_tracks.get_mut(id) else {
                continue;
            };
            let Some(t) = publications.get(&f.publication) else {
                continue;
            };
            let rtc = &mut pc.rtc;
            let sender_id = f.sender_id;
            let params = guarded(|| {
                let mut sender = rtc
                    .rtp_sender(sender_id)
                    .ok_or(MediaError::InvalidState("no sender"))?;
                let p = sender.get_parameters();
                Ok((
                    p.rtp_parameters.codecs.clone(),
                    p.rtp_parameters
                        .header_extensions
                        .iter()
                        .map(|h| (h.uri.clone(), h.id as u8))
                        .collect::<Vec<_>>(),
                ))
            });
            let Ok((codecs, exts)) = params else { continue };
            let mut pts = PayloadTypeMap::new();
            for pc_codec in &t.pub_codecs {
                let same_mime = |c: &&RTCRtpCodecParameters| {
                    c.rtp_codec
                        .mime_type
                        .eq_ignore_ascii_case(&pc_codec.rtp_codec.mime_type)
                };
                let found = codecs
                    .iter()
                    .filter(same_mime)
                    .find(|c| c.rtp_codec.sdp_fmtp_line == pc_codec.rtp_codec.sdp_fmtp_line)
                    .or_else(|| codecs.iter().find(same_mime));
                if let Some(c) = found {
                    pts.set(pc_codec.payload_type, c.payload_type);
                }
            }
            let mut ext_map = ExtIdMap::new();
            for uri in FORWARDED_EXTENSIONS {
                let from = t.pub_extensions.iter().find(|(u, _)| u == uri);
                let to = exts.iter().find(|(u, _)| u == uri);
                if let (Some((_, from)), Some((_, to))) = (from, to) {
                    ext_map.set(*from, *to);
                }
            }
            // RED the subscriber did not negotiate: its primary (Opus) goes out instead.
            let is = |c: &RTCRtpCodecParameters, mime: &str| {
                c.rtp_codec.mime_type.eq_ignore_ascii_case(mime)
            };
            f.strip_red = None;
            if let Some(red) = t.pub_codecs.iter().find(|c| is(c, MIME_TYPE_RED))
                && pts.get(red.payload_type).is_none()
                && let Some(opus) = codecs.iter().find(|c| is(c, MIME_TYPE_OPUS))
            {
                pts.set(red.payload_type, opus.payload_type);
                f.strip_red = Some(red.payload_type);
            }
            let mut rtx_pts = PayloadTypeMap::new();
            for rtx in codecs
                .iter()
                .filter(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_RTX))
            {
                let apt = rtx
                    .rtp_codec
                    .sdp_fmtp_line
                    .split(';')
                    .find_map(|kv| kv.trim().strip_prefix("apt="))
                    .and_then(|v| v.parse::<u8>().ok());
                if let Some(apt) = apt {
                    rtx_pts.set(apt, rtx.payload_type);
                }
            }
            f.rewriter.payload_types = pts;
            f.rewriter.extensions = ext_map;
            f.rtx_payload_types = rtx_pts;
            f.rewriter.transport_cc_id = exts
                .iter()
                .find(|(uri, _)| uri == TRANSPORT_CC_URI)
                .map_or(0, |(_, id)| *id);
            f.configured = true;
        }
    }

    /// Starts forwarding every configured down-track of a connected, answered subscribe
    /// connection, asking each publisher for a keyframe so the new subscriber can start
    /// decoding.
    pub(super) fn activate_down_tracks(&mut self, sub_id: PcId, now: Instant) {
        let Some(pc) = self.pcs.get(&sub_id) else {
            return;
        };
        if !pc.connected {
            return;
        }
        let room = pc.room;
        let Some(Room {
            participants,
            down_tracks,
            ..
        }) = self.rooms.get_mut(&room)
        else {
            return;
        };
        let Some(p) = participants.get(&pc.participant) else {
            return;
        };
        if !p.subscriber.answered {
            return;
        }
        let mut started = Vec::new();
        for id in p.subscriber.down_tracks.values() {
            if let Some(f) = down_tracks.get_mut(id)
                && f.configured
                && !f.ready
            {
                f.ready = true;
                started.push((f.publication, f.selector.layer()));
            }
        }
        for (publication, layer) in started {
            self.request_keyframe(room, publication, layer, now);
        }
    }

    /// `participant` renders `publisher`'s video at `size` ([`crate::SfuHandle::set_video_size`]):
    /// kept on its subscriber side, where the layer choice reads it. A publisher that is not a
    /// member of the room is refused, so the table holds members only.
    pub(super) fn set_video_size(
        &mut self,
        room: &str,
        participant: &str,
        publisher: &str,
        size: VideoSize,
    ) -> Result<(), MediaError> {
        valid_id(publisher, "publisher")?;
        let r = self
            .room_id(room)
            .and_then(|id| self.rooms.get_mut(&id))
            .ok_or_else(|| unknown(room, participant))?;
        if publisher == participant || !r.participants.contains_key(publisher) {
            return Err(unknown(room, publisher));
        }
        let p = r
            .participants
            .get_mut(participant)
            .ok_or_else(|| unknown(room, participant))?;
        p.subscriber.video_sizes.insert(publisher.to_owned(), size);
        Ok(())
    }
}
