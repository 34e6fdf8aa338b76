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
            Command::RestartIce {
                room,
                participant,
                reply,
            } => {
                let r = self.restart_ice(&room, &participant, now);
                let _ = reply.send(r);
            }
            Command::VideoSize {
                room,
                participant,
                publisher,
                size,
                reply,
            } => {
                let r = self.set_video_size(&room, &participant, &publisher, size);
                let _ = reply.send(r);
            }
            Command::RoomStats { room, reply } => {
                let _ = reply.send(Ok(self.room_stats(&room, now)));
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

    /// The room called `room`, if this shard has it.
    pub(super) fn room_id(&self, room: &str) -> Option<RoomId> {
        self.room_ids.get(room).copied()
    }

    pub(super) fn participant_mut(
        &mut self,
        room: RoomId,
        participant: &str,
    ) -> Option<&mut Participant> {
        self.rooms.get_mut(&room)?.participants.get_mut(participant)
    }

    /// Adds the participant (and room) if needed: its room, and true if it is new.
    pub(super) fn ensure_participant(
        &mut self,
        room: &str,
        participant: &str,
    ) -> Result<(RoomId, bool), MediaError> {
        valid_id(room, "room")?;
        valid_id(participant, "participant")?;
        let rid = match self.room_id(room) {
            Some(rid) => rid,
            None => {
                let rid = RoomId(self.next_id());
                self.room_ids.insert(room.to_owned(), rid);
                self.rooms.insert(rid, Room::new(room));
                rid
            }
        };
        let r = self.rooms.get_mut(&rid).expect("room just ensured");
        let is_new = match r.participants.entry(participant.to_owned()) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(Participant::new());
                self.closed_recently
                    .remove(&(room.to_owned(), participant.to_owned()));
                true
            }
        };
        Ok((rid, is_new))
    }

    pub(super) fn join(
        &mut self,
        room: &str,
        participant: &str,
        now: Instant,
    ) -> Result<(), MediaError> {
        let (rid, is_new) = self.ensure_participant(room, participant)?;
        if is_new {
            self.sync_subscriptions(rid, participant, now)?;
        }
        Ok(())
    }

    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(super) fn create_pc(
        &mut self,
        room: RoomId,
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
                room,
                participant: participant.to_owned(),
                kind,
                rtc,
                scheduled: None,
                dirty: false,
                created: now,
                last_rx: None,
                negotiated: false,
                connected: false,
                send_side: (kind == PcKind::Subscribe).then(SendSide::new),
            },
        );
        self.demux.add_ufrag(&ufrag, &pwd, id);
        if let Some(p) = self.participant_mut(room, participant) {
            match kind {
                PcKind::Publish => p.publisher.pc = Some(id),
                PcKind::Subscribe => p.subscriber.pc = Some(id),
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
        let (rid, is_new) = self.ensure_participant(room, participant)?;
        let existing = self
            .participant_mut(rid, participant)
            .and_then(|p| p.publisher.pc);
        let (id, created) = match existing {
            Some(id) => (id, false),
            None => match self.create_pc(rid, participant, PcKind::Publish, now) {
                Ok(id) => (id, true),
                Err(e) => {
                    if is_new {
                        self.remove_participant_entry(rid, participant);
                    }
                    return Err(e);
                }
            },
        };
        if !created && self.is_ice_restart(id, &offer.sdp) {
            // The client's network changed: its re-offer carries new ICE credentials, and
            // the answer must too (RFC 8839).
            self.stage_ice_restart(id);
        }
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
            // Candidates in every bundled section, for clients that read them from another one.
            Ok(a) => super::sdp::candidates_in_every_bundled_section(&a),
            Err(e) => {
                if created {
                    self.close_pc(id);
                    if let Some(p) = self.participant_mut(rid, participant) {
                        p.publisher.pc = None;
                    }
                    if is_new {
                        self.remove_participant_entry(rid, participant);
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
        if let Some(p) = self.participant_mut(rid, participant) {
            pending.append(&mut p.publisher.pending_candidates);
        }
        for c in pending {
            let _ = self.apply_candidate(id, c);
        }
        if is_new {
            self.sync_subscriptions(rid, participant, now)?;
        }
        Ok(answer)
    }

    /// Whether `offer` restarts ICE on connection `id`: its ufrag is not the current remote's.
    fn is_ice_restart(&self, id: PcId, offer: &str) -> bool {
        let Some(current) = self.pcs.get(&id).and_then(|pc| pc.rtc.remote_description()) else {
            return false;
        };
        let current = super::sdp::ice_ufrag(&current.sdp).map(str::to_owned);
        current.is_some() && super::sdp::ice_ufrag(offer) != current.as_deref()
    }

    /// Gives connection `id` the ICE credentials of its next session (installed by the next
    /// restart, ours or the client's) and routes their STUN to it.
    fn stage_ice_restart(&mut self, id: PcId) {
        let Some(pc) = self.pcs.get_mut(&id) else {
            return;
        };
        let (mut ufrag, pwd) = peer::ice_credentials(&mut self.rng);
        route::tag_ufrag(&mut ufrag, self.index);
        self.demux.add_ufrag(&ufrag, &pwd, id);
        pc.rtc.set_ice_credentials_for_restart(ufrag, pwd);
    }

    /// The client's network changed: its subscribe connection gets an offer that restarts ICE
    /// (now, or once the outstanding one is answered). Its publish connection restarts with
    /// the client's own re-offer.
    pub(super) fn restart_ice(
        &mut self,
        room: &str,
        participant: &str,
        now: Instant,
    ) -> Result<(), MediaError> {
        let (rid, p) = self.existing_participant(room, participant)?;
        let Some(sub_id) = p.subscriber.pc else {
            return Ok(()); // nothing subscribed yet: the first offer will be fresh anyway
        };
        self.stage_ice_restart(sub_id);
        if let Some(pc) = self.pcs.get_mut(&sub_id) {
            pc.rtc.restart_ice();
        }
        if let Some(p) = self.participant_mut(rid, participant) {
            p.subscriber.ice_restart = true;
        }
        self.sync_subscriptions(rid, participant, now)
    }

    pub(super) fn subscribe_answer(
        &mut self,
        room: &str,
        participant: &str,
        sdp: String,
        now: Instant,
    ) -> Result<(), MediaError> {
        let (rid, p) = self.existing_participant(room, participant)?;
        if !matches!(p.subscriber.negotiation, Negotiation::OfferPending { .. }) {
            return Err(MediaError::InvalidState("no subscribe offer outstanding"));
        }
        let sub_id = p.subscriber.pc.ok_or(MediaError::ConnectionClosed)?;
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
        Self::mark_dirty(&mut self.dirty, pc, sub_id);
        let again = match self.participant_mut(rid, participant) {
            Some(p) => {
                let s = &mut p.subscriber;
                let again = matches!(s.negotiation, Negotiation::OfferPending { again: true });
                s.answered = true;
                s.negotiation = Negotiation::Stable;
                again
            }
            None => false,
        };
        self.configure_down_tracks(sub_id);
        self.activate_down_tracks(sub_id, now);
        if again {
            self.sync_subscriptions(rid, participant, now)?;
        }
        Ok(())
    }

    /// A participant of this shard, with its room; `ConnectionClosed` if it was closed a
    /// moment ago (a late command about it is not an unknown participant).
    pub(super) fn existing_participant(
        &self,
        room: &str,
        participant: &str,
    ) -> Result<(RoomId, &Participant), MediaError> {
        if self
            .closed_recently
            .contains_key(&(room.to_owned(), participant.to_owned()))
        {
            return Err(MediaError::ConnectionClosed);
        }
        let rid = self
            .room_id(room)
            .ok_or_else(|| MediaError::UnknownRoom(room.to_owned()))?;
        let p = self
            .rooms
            .get(&rid)
            .and_then(|r| r.participants.get(participant))
            .ok_or_else(|| unknown(room, participant))?;
        Ok((rid, p))
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
        let (rid, p) = match self.existing_participant(room, participant) {
            Ok(found) => found,
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
            PcKind::Publish => p.publisher.pc,
            PcKind::Subscribe => p.subscriber.pc,
        };
        let Some(c) = candidate else {
            return Ok(()); // end of candidates: nothing to do for an ICE-lite server
        };
        match id {
            Some(id) => self.apply_candidate(id, c),
            None if kind == PcKind::Publish => {
                if let Some(p) = self.participant_mut(rid, participant)
                    && p.publisher.pending_candidates.len() < MAX_PENDING_CANDIDATES
                {
                    p.publisher.pending_candidates.push(c);
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
        let (rid, _) = self.existing_participant(room, participant)?;
        self.close_participant(rid, participant, None, now);
        Ok(())
    }

    /// Forgets a participant that has nothing yet (its first publish failed).
    pub(super) fn remove_participant_entry(&mut self, room: RoomId, participant: &str) {
        if let Some(r) = self.rooms.get_mut(&room) {
            r.participants.remove(participant);
        }
        self.remove_room_if_empty(room);
    }

    /// A room goes with its last participant (whose removal took its publications and
    /// down-tracks).
    pub(super) fn remove_room_if_empty(&mut self, room: RoomId) {
        if self
            .rooms
            .get(&room)
            .is_some_and(|r| r.participants.is_empty())
            && let Some(r) = self.rooms.remove(&room)
        {
            debug_assert!(r.publications.is_empty() && r.down_tracks.is_empty());
            self.room_ids.remove(&r.name);
        }
    }

    /// The one way a participant goes (leave, liveness, failure, shutdown): its down-tracks
    /// and both connections close, its publications leave the room through
    /// [`Shard::remove_publication`] (everyone else renegotiates) and it is forgotten.
    /// `reason` = closed by the SFU (event sent).
    pub(super) fn close_participant(
        &mut self,
        room: RoomId,
        participant: &str,
        reason: Option<&str>,
        now: Instant,
    ) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(p) = r.participants.get(participant) else {
            return;
        };
        let name = r.name.clone();
        info!(room = %name, %participant, reason = reason.unwrap_or("leave"), "participant closed");
        self.closed_recently
            .insert((name.clone(), participant.to_owned()), now);
        let receiving: Vec<DownTrackId> = p.subscriber.down_tracks.values().copied().collect();
        let published = p.publisher.publications.clone();
        let pcs = [p.publisher.pc, p.subscriber.pc];
        // Stop receiving.
        for dt in receiving {
            r.remove_down_track(dt);
        }
        for id in pcs.into_iter().flatten() {
            self.close_pc(id);
        }
        // Its publications leave the room.
        for id in &published {
            self.remove_publication(room, *id, now);
        }
        if let Some(r) = self.rooms.get_mut(&room) {
            r.participants.remove(participant);
            for other in r.participants.values_mut() {
                other.subscriber.video_sizes.remove(participant);
            }
        }
        self.remove_room_if_empty(room);
        self.update_track_gauges();
        if !published.is_empty() {
            self.sync_room(room, None, now);
        }
        if let Some(reason) = reason {
            self.emit(MediaEvent::ParticipantClosed {
                room: name,
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
        let all: Vec<(RoomId, String)> = self
            .rooms
            .iter()
            .flat_map(|(rid, room)| room.participants.keys().map(move |p| (*rid, p.clone())))
            .collect();
        for (rid, p) in all {
            self.close_participant(rid, &p, None, now);
        }
        self.metrics.flush();
    }

    pub(super) fn stats(&self) -> SfuStats {
        let (demux_ufrags, demux_addresses) = self.demux.len();
        let tracks = self.tracks_by_kind();
        SfuStats {
            rooms: self.rooms.len(),
            participants: self.rooms.values().map(|r| r.participants.len()).sum(),
            peer_connections: self.pcs.len(),
            audio_tracks: tracks[kind_index(MediaKind::Audio)],
            video_tracks: tracks[kind_index(MediaKind::Video)],
            subscriptions: self.rooms.values().map(|r| r.down_tracks.len()).sum(),
            demux_ufrags,
            demux_addresses,
        }
    }

    pub(super) fn room_stats(&self, room: &str, now: Instant) -> Vec<PublicationStats> {
        let Some(room) = self.room_id(room).and_then(|id| self.rooms.get(&id)) else {
            return Vec::new();
        };
        let now_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
        let mut stats: Vec<PublicationStats> = room
            .publications
            .values()
            .map(|p| {
                let layers = p.layers.iter();
                PublicationStats {
                    participant: p.publisher.clone(),
                    track_id: p.track_id.clone(),
                    kind: p.kind.as_str(),
                    bitrate_bps: layers
                        .clone()
                        .map(|l| l.bitrate.bytes_last_second(now_us) * 8)
                        .sum(),
                    packets_received: layers.clone().map(|l| l.packets_received).sum(),
                    packets_lost: layers.map(|l| l.packets_lost).sum(),
                }
            })
            .collect();
        stats.sort_by(|a, b| (&a.participant, &a.track_id).cmp(&(&b.participant, &b.track_id)));
        stats
    }

    /// Publications of every room by kind (see [`kind_index`]).
    pub(super) fn tracks_by_kind(&self) -> [usize; 2] {
        let mut n = [0; 2];
        for r in self.rooms.values() {
            let by_kind = r.publications_by_kind();
            n[0] += by_kind[0];
            n[1] += by_kind[1];
        }
        n
    }
}
