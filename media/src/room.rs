//! Rooms and their participants: who publishes which tracks, who receives what, and where each
//! participant's subscribe negotiation stands.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use rtc::rtp_transceiver::RTCRtpSenderId;

use crate::CandidateInit;

/// Identifies one peer connection inside the media loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PcId(pub u64);

/// Identifies one published track inside the media loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TrackKey(pub u64);

/// Where the subscribe connection's offer/answer stands. Never two offers outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Negotiation {
    Stable,
    /// An offer was sent; `again` = the forwarded set changed meanwhile, so offer once more
    /// after the answer.
    OfferPending {
        again: bool,
    },
}

/// Publish candidates kept until the publish connection exists.
pub(crate) const MAX_PENDING_CANDIDATES: usize = 32;

#[derive(Debug)]
pub(crate) struct Participant {
    pub publish_pc: Option<PcId>,
    pub subscribe_pc: Option<PcId>,
    /// Tracks this participant publishes.
    pub published: Vec<TrackKey>,
    /// Tracks currently in this participant's subscribe connection, with their sender there.
    pub subscribed: BTreeMap<TrackKey, RTCRtpSenderId>,
    pub negotiation: Negotiation,
    pub pending_publish_candidates: Vec<CandidateInit>,
}

impl Participant {
    pub fn new() -> Self {
        Self {
            publish_pc: None,
            subscribe_pc: None,
            published: Vec::new(),
            subscribed: BTreeMap::new(),
            negotiation: Negotiation::Stable,
            pending_publish_candidates: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Room {
    pub participants: HashMap<String, Participant>,
}

/// Candidates for a publish connection of a participant not known yet (the signaling layer
/// may deliver `sfu-candidate` before `sfu-publish`). Bounded and short-lived.
#[derive(Debug, Default)]
pub(crate) struct EarlyCandidates {
    entries: HashMap<(String, String), (Instant, Vec<CandidateInit>)>,
}

impl EarlyCandidates {
    const MAX_KEYS: usize = 1024;

    pub fn push(&mut self, room: &str, participant: &str, c: CandidateInit, now: Instant) {
        if self.entries.len() >= Self::MAX_KEYS
            && !self
                .entries
                .contains_key(&(room.to_owned(), participant.to_owned()))
        {
            return;
        }
        let e = self
            .entries
            .entry((room.to_owned(), participant.to_owned()))
            .or_insert_with(|| (now, Vec::new()));
        if e.1.len() < MAX_PENDING_CANDIDATES {
            e.1.push(c);
        }
    }

    pub fn take(&mut self, room: &str, participant: &str) -> Vec<CandidateInit> {
        self.entries
            .remove(&(room.to_owned(), participant.to_owned()))
            .map(|e| e.1)
            .unwrap_or_default()
    }

    pub fn prune(&mut self, older_than: Instant) {
        self.entries.retain(|_, (t, _)| *t >= older_than);
    }
}
