//! Subscription: each member's subscribe connection kept in step with the room's tracks (one
//! offer outstanding at a time), and its down-tracks configured and activated from the answer.

use super::*;

impl Shard {
    /// Re-synchronises every member of `room` except `except` with the room's tracks.
    pub(super) fn sync_room(&mut self, room: &str, except: Option<&str>, now: Instant) {
        let members: Vec<String> = match self.rooms.get(room) {
            Some(r) => r
                .participants
                .keys()
                .filter(|p| Some(p.as_str()) != except)
                .cloned()
                .collect(),
            None => return,
        };
        for m in members {
            if let Err(e) = self.sync_subscriptions(room, &m, now) {
                warn!(%room, participant = %m, "renegotiation failed: {e}");
            }
        }
    }

    /// Makes `participant`'s subscribe connection carry exactly the room's other tracks, and
    /// sends an offer if that changed anything. While an offer is outstanding, only notes that
    /// another round is needed.
    pub(super) fn sync_subscriptions(
        &mut self,
        room: &str,
        participant: &str,
        now: Instant,
    ) -> Result<(), MediaError> {
        let r = self
            .rooms
            .get_mut(room)
            .ok_or_else(|| MediaError::UnknownRoom(room.to_owned()))?;
        let p = r
            .participants
            .get_mut(participant)
            .ok_or_else(|| unknown(room, participant))?;
        if let Negotiation::OfferPending { again } = &mut p.negotiation {
            *again = true;
            return Ok(());
        }
        let desired: HashSet<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.room == room && t.publisher != participant)
            .map(|(k, _)| *k)
            .collect();
        let r = self.rooms.get(room).expect("room checked above");
        let p = &r.participants[participant];
        let to_remove: Vec<(TrackKey, RTCRtpSenderId)> = p
            .subscribed
            .iter()
            .filter(|(k, _)| !desired.contains(k))
            .map(|(k, s)| (*k, *s))
            .collect();
        let mut to_add: Vec<TrackKey> = desired
            .iter()
            .filter(|k| !p.subscribed.contains_key(k))
            .copied()
            .collect();
        to_add.sort();
        if to_remove.is_empty() && to_add.is_empty() {
            return Ok(());
        }
        let sub_id = match p.subscribe_pc {
            Some(id) => id,
            None => self.create_pc(room, participant, PcKind::Subscribe, now)?,
        };
        for (key, sender) in &to_remove {
            if let Some(t) = self.tracks.get_mut(key) {
                t.subscribers.retain(|f| f.sub_pc != sub_id);
            }
            if let Some(pc) = self.pcs.get_mut(&sub_id) {
                pc.out_ssrcs.retain(|_, k| k != key);
                let rtc = &mut pc.rtc;
                let sender = *sender;
                let _ = guarded(|| rtc.remove_track(sender).map_err(MediaError::from));
            }
            self.participant_mut(room, participant)
                .map(|p| p.subscribed.remove(key));
        }
        for key in to_add {
            let Some(track) = self.tracks.get_mut(&key) else {
                continue;
            };
            let Some(pc) = self.pcs.get_mut(&sub_id) else {
                break;
            };
            let out_ssrc = loop {
                let s = self.rng.random::<u32>();
                if s != 0 && !pc.out_ssrcs.contains_key(&s) {
                    break s;
                }
            };
            let media_track = MediaStreamTrack::new(
                track.publisher.clone(),
                track.track_id.clone(),
                format!("{}-{}", track.publisher, track.kind.as_str()),
                rtc_kind(track.kind),
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(out_ssrc),
                        ..Default::default()
                    },
                    codec: track.codec.clone(),
                    ..Default::default()
                }],
            );
            let rtc = &mut pc.rtc;
            let sender_id = match guarded(|| rtc.add_track(media_track).map_err(MediaError::from)) {
                Ok(s) => s,
                Err(e) => {
                    warn!(%room, %participant, "add_track: {e}");
                    continue;
                }
            };
            pc.out_ssrcs.insert(out_ssrc, key);
            track.subscribers.push(Fanout {
                sub_pc: sub_id,
                sender_id,
                rewriter: Rewriter::new(
                    out_ssrc,
                    track.codec.clock_rate,
                    self.rng.random(),
                    self.rng.random(),
                    PayloadTypeMap::new(),
                    ExtIdMap::new(),
                ),
                rtx: RtxLimiter::new(track.cache.capacity()),
                ready: false,
                configured: false,
            });
            if let Some(p) = self.participant_mut(room, participant) {
                p.subscribed.insert(key, sender_id);
            }
        }
        self.send_offer(room, participant, sub_id, now)
    }

    pub(super) fn send_offer(
        &mut self,
        room: &str,
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
                .map(|d| d.sdp)
                .ok_or(MediaError::InvalidState("no local description"))
        })?;
        pc.negotiated = true;
        pc.answered = false;
        Self::mark_dirty(&mut self.dirty, pc, sub_id);
        for t in self.tracks.values_mut() {
            for f in t.subscribers.iter_mut().filter(|f| f.sub_pc == sub_id) {
                // Keep forwarding tracks already negotiated; new ones wait for the answer.
                if !f.configured {
                    f.ready = false;
                }
            }
        }
        if let Some(p) = self.participant_mut(room, participant) {
            p.negotiation = Negotiation::OfferPending { again: false };
        }
        self.emit(MediaEvent::SubscribeOffer {
            room: room.to_owned(),
            participant: participant.to_owned(),
            sdp,
        });
        Ok(())
    }

    /// After an answer: learn what each subscriber negotiated (payload types, extension ids)
    /// and start forwarding once connected.
    pub(super) fn configure_fanouts(&mut self, sub_id: PcId) {
        let Some(pc) = self.pcs.get_mut(&sub_id) else {
            return;
        };
        for t in self.tracks.values_mut() {
            for f in t.subscribers.iter_mut().filter(|f| f.sub_pc == sub_id) {
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
                f.rewriter.payload_types = pts;
                f.rewriter.extensions = ext_map;
                f.configured = true;
            }
        }
    }

    /// Starts forwarding every configured track of a connected subscribe connection, asking
    /// each publisher for a keyframe so the new subscriber can start decoding.
    pub(super) fn activate_fanouts(&mut self, sub_id: PcId, now: Instant) {
        let Some(pc) = self.pcs.get(&sub_id) else {
            return;
        };
        if !pc.connected || !pc.answered {
            return;
        }
        let mut started = Vec::new();
        for (key, t) in self.tracks.iter_mut() {
            for f in t.subscribers.iter_mut().filter(|f| f.sub_pc == sub_id) {
                if f.configured && !f.ready {
                    f.ready = true;
                    started.push(*key);
                }
            }
        }
        for key in started {
            self.request_keyframe(key, now);
        }
    }
}
