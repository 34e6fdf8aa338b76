//! Commands from [`crate::SfuHandle`]: join, publish, subscribe answers, candidates, leave,
//! and the life cycle of participants and their connections.

use super::*;

impl Shard {
    /// A command from [`crate::SfuHandle`], answered on its reply channel. `Shutdown` is the
    /// driver's: it calls [`Shard::close_all`] and stops.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Publish {
                room,
                participant,
                sdp,
                reply,
            } => {
                let r = self.publish(&room, &participant, sdp, now);
                let _ = reply.send(r);
            }
            Command::SubscribeAnswer {
                room,
                participant,
                sdp,
                reply,
            } => {
                let r = self.subscribe_answer(&room, &participant, sdp, now);
                let _ = reply.send(r);
            }
            Command::AddCandidate {
                room,
                participant,
                pc,
                candidate,
                reply,
            } => {
                let r = self.add_candidate(&room, &participant, pc, candidate, now);
                let _ = reply.send(r);
            }
            Command::Join {
                room,
                participant,
                reply,
            } => {
                let r = self.join(&room, &participant, now);
                let _ = reply.send(r);
            }
            Command::Leave {
                room,
                participant,
                reply,
            } => {
                let r = self.leave(&room, &participant, now);
                let _ = reply.send(r);
            }
            Command::Stats { reply } => {
                let _ = reply.send(Ok(self.stats()));
            }
            Command::Shutdown { .. } => {}
            #[cfg(feature = "bench")]
            Command::OnMediaThread(_) => {}
        }
        self.drive_dirty(now);
    }

    pub(super) fn participant_mut(
        &mut self,
        room: &str,
        participant: &str,
    ) -> Option<&mut Participant> {
        self.rooms.get_mut(room)?.participants.get_mut(participant)
    }

    /// Adds the participant (and room) if needed; true if it is new.
    pub(super) fn ensure_participant(
        &mut self,
        room: &str,
        participant: &str,
    ) -> Result<bool, MediaError> {
        valid_id(room, "room")?;
        valid_id(participant, "participant")?;
        let r = self.rooms.entry(room.to_owned()).or_default();
        Ok(match r.participants.entry(participant.to_owned()) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(Participant::new());
                self.closed_recently
                    .remove(&(room.to_owned(), participant.to_owned()));
                true
            }
        })
    }

    pub(super) fn join(
        &mut self,
        room: &str,
        participant: &str,
        now: Instant,
    ) -> Result<(), MediaError> {
        if self.ensure_participant(room, participant)? {
            self.sync_subscriptions(room, participant, now)?;
        }
        Ok(())
    }

    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(super) fn create_pc(
        &mut self,
        room: &str,
        participant: &str,
        kind: PcKind,
        now: Instant,
    ) -> Result<PcId, MediaError> {
        let (mut ufrag, pwd) = peer::ice_credentials(&mut self.rng);
        route::tag_ufrag(&mut ufrag, self.index);
        let setup = PcSetup {
            kind,
            ufrag: &ufrag,
            pwd: &pwd,
            candidates: &self.candidates,
            counters: &self.counters,
            ice_disconnected_timeout: Duration::from_secs(5),
            ice_failed_timeout: self.config.liveness_timeout,
        };
        let rtc = guarded(|| peer::build(&setup, now))?;
        let id = PcId(self.next_id());
        self.pcs.insert(
            id,
            Pc {
                room: room.to_owned(),
                participant: participant.to_owned(),
                kind,
                rtc,
                scheduled: None,
                dirty: false,
                created: now,
                last_rx: None,
                negotiated: false,
                connected: false,
                in_tracks: HashMap::new(),
                dormant: HashMap::new(),
                out_ssrcs: HashMap::new(),
                answered: false,
            },
        );
        self.demux.add_ufrag(&ufrag, &pwd, id);
        if let Some(p) = self.participant_mut(room, participant) {
            match kind {
                PcKind::Publish => p.publish_pc = Some(id),
                PcKind::Subscribe => p.subscribe_pc = Some(id),
            }
        }
        self.update_track_gauges();
        self.schedule(id, now);
        Ok(id)
    }

    pub(super) fn publish(
        &mut self,
        room: &str,
        participant: &str,
        sdp: String,
        now: Instant,
    ) -> Result<String, MediaError> {
        valid_id(room, "room")?;
        valid_id(participant, "participant")?;
        // Parse before creating anything: bad SDP leaves no trace.
        let offer = guarded(|| {
            RTCSessionDescription::offer(sdp).map_err(|e| MediaError::InvalidSdp(e.to_string()))
        })?;
        let is_new = self.ensure_participant(room, participant)?;
        let existing = self
            .participant_mut(room, participant)
            .and_then(|p| p.publish_pc);
        let (id, created) = match existing {
            Some(id) => (id, false),
            None => match self.create_pc(room, participant, PcKind::Publish, now) {
                Ok(id) => (id, true),
                Err(e) => {
                    if is_new {
                        self.remove_participant_entry(room, participant);
                    }
                    return Err(e);
                }
            },
        };
        let pc = self.pcs.get_mut(&id).ok_or(MediaError::ConnectionClosed)?;
        let rtc = &mut pc.rtc;
        let answer = guarded(|| {
            rtc.set_remote_description(now, offer)
                .map_err(|e| MediaError::InvalidSdp(e.to_string()))?;
            let answer = rtc.create_answer(None)?;
            rtc.set_local_description(now, answer)?;
            rtc.local_description()
                .map(|d| d.sdp)
                .ok_or(MediaError::InvalidState("no local description"))
        });
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                if created {
                    self.close_pc(id);
                    if let Some(p) = self.participant_mut(room, participant) {
                        p.publish_pc = None;
                    }
                    if is_new {
                        self.remove_participant_entry(room, participant);
                    }
                }
                return Err(e);
            }
        };
        pc.negotiated = true;
        Self::mark_dirty(&mut self.dirty, pc, id);
        if !created {
            // A re-offer: tracks the publisher stopped leave the room.
            self.reconcile_published(id, now);
        }
        // Candidates that arrived before the connection existed.
        let mut pending = self.early_candidates.take(room, participant);
        if let Some(p) = self.participant_mut(room, participant) {
            pending.append(&mut p.pending_publish_candidates);
        }
        for c in pending {
            let _ = self.apply_candidate(id, c);
        }
        if is_new {
            self.sync_subscriptions(room, participant, now)?;
        }
        Ok(answer)
    }

    pub(super) fn subscribe_answer(
        &mut self,
        room: &str,
        participant: &str,
        sdp: String,
        now: Instant,
    ) -> Result<(), MediaError> {
        let p = self.existing_participant(room, participant)?;
        if !matches!(p.negotiation, Negotiation::OfferPending { .. }) {
            return Err(MediaError::InvalidState("no subscribe offer outstanding"));
        }
        let sub_id = p.subscribe_pc.ok_or(MediaError::ConnectionClosed)?;
        let answer = guarded(|| {
            RTCSessionDescription::answer(sdp).map_err(|e| MediaError::InvalidSdp(e.to_string()))
        })?;
        let pc = self
            .pcs
            .get_mut(&sub_id)
            .ok_or(MediaError::ConnectionClosed)?;
        let rtc = &mut pc.rtc;
        guarded(|| {
            rtc.set_remote_description(now, answer)
                .map_err(|e| MediaError::InvalidSdp(e.to_string()))
        })?;
        pc.answered = true;
        Self::mark_dirty(&mut self.dirty, pc, sub_id);
        let again = match self.participant_mut(room, participant) {
            Some(p) => {
                let again = matches!(p.negotiation, Negotiation::OfferPending { again: true });
                p.negotiation = Negotiation::Stable;
                again
            }
            None => false,
        };
        self.configure_fanouts(sub_id);
        self.activate_fanouts(sub_id, now);
        if again {
            self.sync_subscriptions(room, participant, now)?;
        }
        Ok(())
    }

    pub(super) fn existing_participant(
        &self,
        room: &str,
        participant: &str,
    ) -> Result<&Participant, MediaError> {
        if self
            .closed_recently
            .contains_key(&(room.to_owned(), participant.to_owned()))
        {
            return Err(MediaError::ConnectionClosed);
        }
        self.rooms
            .get(room)
            .ok_or_else(|| MediaError::UnknownRoom(room.to_owned()))?
            .participants
            .get(participant)
            .ok_or_else(|| unknown(room, participant))
    }

    pub(super) fn add_candidate(
        &mut self,
        room: &str,
        participant: &str,
        kind: PcKind,
        candidate: Option<CandidateInit>,
        now: Instant,
    ) -> Result<(), MediaError> {
        valid_id(room, "room")?;
        valid_id(participant, "participant")?;
        let key = (room.to_owned(), participant.to_owned());
        if self.closed_recently.contains_key(&key) {
            return Err(MediaError::ConnectionClosed);
        }
        let candidate = candidate.filter(|c| !c.candidate.trim().is_empty());
        if let Some(c) = &candidate
            && c.candidate.len() > 1024
        {
            return Err(MediaError::InvalidCandidate("too long".into()));
        }
        let p = match self.existing_participant(room, participant) {
            Ok(p) => p,
            Err(MediaError::UnknownRoom(_) | MediaError::UnknownParticipant { .. })
                if kind == PcKind::Publish =>
            {
                // May precede sfu-publish: keep it for a few seconds.
                if let Some(c) = candidate {
                    self.early_candidates.push(room, participant, c, now);
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let id = match kind {
            PcKind::Publish => p.publish_pc,
            PcKind::Subscribe => p.subscribe_pc,
        };
        let Some(c) = candidate else {
            return Ok(()); // end of candidates: nothing to do for an ICE-lite server
        };
        match id {
            Some(id) => self.apply_candidate(id, c),
            None if kind == PcKind::Publish => {
                if let Some(p) = self.participant_mut(room, participant)
                    && p.pending_publish_candidates.len() < MAX_PENDING_CANDIDATES
                {
                    p.pending_publish_candidates.push(c);
                }
                Ok(())
            }
            None => Err(MediaError::InvalidState("no subscribe connection yet")),
        }
    }

    pub(super) fn apply_candidate(&mut self, id: PcId, c: CandidateInit) -> Result<(), MediaError> {
        let pc = self.pcs.get_mut(&id).ok_or(MediaError::ConnectionClosed)?;
        let rtc = &mut pc.rtc;
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: c.username_fragment,
            ..Default::default()
        };
        guarded(|| {
            rtc.add_remote_candidate(init)
                .map_err(|e| MediaError::InvalidCandidate(e.to_string()))
        })
    }

    pub(super) fn leave(
        &mut self,
        room: &str,
        participant: &str,
        now: Instant,
    ) -> Result<(), MediaError> {
        self.existing_participant(room, participant)?;
        self.close_participant(room, participant, None, now);
        Ok(())
    }

    pub(super) fn remove_participant_entry(&mut self, room: &str, participant: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.participants.remove(participant);
            if r.participants.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Closes both connections of a participant, removes its tracks from every subscriber
    /// (renegotiating them) and forgets it. `reason` = closed by the SFU (event sent).
    pub(super) fn close_participant(
        &mut self,
        room: &str,
        participant: &str,
        reason: Option<&str>,
        now: Instant,
    ) {
        let Some(p) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.participants.remove(participant))
        else {
            return;
        };
        info!(%room, %participant, reason = reason.unwrap_or("leave"), "participant closed");
        self.closed_recently
            .insert((room.to_owned(), participant.to_owned()), now);
        // Stop receiving: drop this participant's fanouts from the remaining tracks.
        if let Some(sub) = p.subscribe_pc {
            for key in p.subscribed.keys() {
                if let Some(t) = self.tracks.get_mut(key) {
                    t.subscribers.retain(|f| f.sub_pc != sub);
                }
            }
        }
        for id in [p.publish_pc, p.subscribe_pc].into_iter().flatten() {
            self.close_pc(id);
        }
        // Its tracks leave the room: everyone else renegotiates.
        for key in &p.published {
            if let Some(track) = self.tracks.remove(key) {
                self.emit(MediaEvent::TrackUnpublished {
                    room: track.room.clone(),
                    participant: track.publisher.clone(),
                    kind: track.kind,
                    track_id: track.track_id.clone(),
                });
                for f in &track.subscribers {
                    if let Some(pc) = self.pcs.get_mut(&f.sub_pc) {
                        pc.out_ssrcs.retain(|_, k| k != key);
                    }
                }
            }
        }
        if self
            .rooms
            .get(room)
            .is_some_and(|r| r.participants.is_empty())
        {
            self.rooms.remove(room);
        }
        self.update_track_gauges();
        if !p.published.is_empty() {
            self.sync_room(room, None, now);
        }
        if let Some(reason) = reason {
            self.emit(MediaEvent::ParticipantClosed {
                room: room.to_owned(),
                participant: participant.to_owned(),
                reason: reason.to_owned(),
            });
        }
    }

    pub(super) fn close_pc(&mut self, id: PcId) {
        if let Some(pc) = self.pcs.get_mut(&id) {
            let rtc = &mut pc.rtc;
            let _ = guarded(|| rtc.close().map_err(MediaError::from));
            self.flush_writes(id);
        }
        self.pcs.remove(&id);
        self.demux.remove(id);
        self.update_track_gauges();
    }

    /// Closes every connection (DTLS close_notify queued for sending) and flushes the metrics:
    /// the shard's end, before its driver stops.
    pub fn close_all(&mut self, now: Instant) {
        let all: Vec<(String, String)> = self
            .rooms
            .iter()
            .flat_map(|(r, room)| {
                room.participants
                    .keys()
                    .map(move |p| (r.clone(), p.clone()))
            })
            .collect();
        for (r, p) in all {
            self.close_participant(&r, &p, None, now);
        }
        self.metrics.flush();
    }

    pub(super) fn stats(&self) -> SfuStats {
        let (demux_ufrags, demux_addresses) = self.demux.len();
        SfuStats {
            rooms: self.rooms.len(),
            participants: self.rooms.values().map(|r| r.participants.len()).sum(),
            peer_connections: self.pcs.len(),
            audio_tracks: self
                .tracks
                .values()
                .filter(|t| t.kind == MediaKind::Audio)
                .count(),
            video_tracks: self
                .tracks
                .values()
                .filter(|t| t.kind == MediaKind::Video)
                .count(),
            subscriptions: self.tracks.values().map(|t| t.subscribers.len()).sum(),
            demux_ufrags,
            demux_addresses,
        }
    }
}
