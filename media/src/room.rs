//! A room and everything in it. The shard's `rooms` map owns each [`Room`], and a room owns all
//! of its state: its participants (each with its publish side, [`Publisher`], and its subscribe
//! side, [`Subscriber`]), the [`Publication`]s they send (with their [`Layer`]s) and the
//! [`DownTrack`]s that carry a publication to one subscriber. Only the connection table
//! (peer connections by [`PcId`], used by the demultiplexer and the timer heap) stays
//! shard-wide. So every operation on a subscriber or a publication touches its room and
//! nothing else, and the forwarding path visits exactly one publication's down-tracks.
//!
//! Removal has one path per kind of thing: [`Room::remove_down_track`] and
//! [`Room::remove_publication`] (which removes its down-tracks through the former) take an
//! entry out of every index that names it; the shard wraps them with what is not room state
//! (events, gauges, renegotiation).
//!
//! Pure data and bookkeeping: nothing here calls into a peer connection.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use smallvec::SmallVec;

use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters};
use rtc::sdp::extmap::AUDIO_LEVEL_URI;

use crate::allocate::UpgradeGate;
use crate::codec::{Codec, Vp8Numbering};
use crate::forward::{PayloadTypeMap, Rewriter};
use crate::keyframe::KeyframeThrottle;
use crate::rtx_cache::{DEFAULT_CAPACITY, RtxCache, RtxLimiter};
use crate::speaker::SpeakerDetector;
use crate::{CandidateInit, MediaKind, VideoSize};

/// Identifies one peer connection inside a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PcId(pub u64);

/// Identifies one room inside a shard (connections name their room by it, so the forwarding
/// path never hashes a room's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RoomId(pub u64);

/// Identifies one publication inside its room. Ids grow, so their order is publication order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PublicationId(pub u64);

/// Identifies one down-track (a publication sent to one subscriber) inside its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DownTrackId(pub u64);

/// Where the subscribe connection's offer/answer stands. Never two offers outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Negotiation {
    #[default]
    Stable,
    /// An offer was sent; `again` = the forwarded set changed meanwhile, so offer once more
    /// after the answer.
    OfferPending { again: bool },
}

/// Publish candidates kept until the publish connection exists.
pub(crate) const MAX_PENDING_CANDIDATES: usize = 32;

pub(crate) struct Room {
    pub name: String,
    pub participants: HashMap<String, Participant>,
    pub publications: HashMap<PublicationId, Publication>,
    pub down_tracks: HashMap<DownTrackId, DownTrack>,
    /// (publish connection, SSRC) → the publication and layer it carries: the one lookup the
    /// forwarding path makes per packet.
    pub incoming: HashMap<(PcId, u32), (PublicationId, usize)>,
    /// The active speaker, from its audio publications' levels.
    pub speaker: SpeakerDetector,
}

impl Room {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            participants: HashMap::new(),
            publications: HashMap::new(),
            down_tracks: HashMap::new(),
            incoming: HashMap::new(),
            speaker: SpeakerDetector::default(),
        }
    }

    /// Adds a publication of an existing participant and indexes its layers' SSRCs.
    pub fn insert_publication(&mut self, id: PublicationId, publication: Publication) {
        for (i, layer) in publication.layers.iter().enumerate() {
            self.incoming.insert((publication.pc, layer.ssrc), (id, i));
        }
        if let Some(p) = self.participants.get_mut(&publication.publisher) {
            p.publisher.publications.push(id);
        }
        self.publications.insert(id, publication);
    }

    /// A further simulcast encoding of publication `id` (its first packet opened it): a new
    /// layer, or a rid seen before on a new SSRC (the publisher restarted that encoding).
    /// Returns the layer's index.
    pub fn add_layer(&mut self, id: PublicationId, layer: Layer) -> Option<usize> {
        let p = self.publications.get_mut(&id)?;
        let index = match p.layers.iter().position(|l| l.rid == layer.rid) {
            Some(i) => {
                self.incoming.remove(&(p.pc, p.layers[i].ssrc));
                p.layers[i] = layer;
                i
            }
            None => {
                p.layers.push(layer);
                p.layers.len() - 1
            }
        };
        self.incoming
            .insert((p.pc, p.layers[index].ssrc), (id, index));
        Some(index)
    }

    /// The one removal path of a publication (unpublished by renegotiation or by the core,
    /// replaced, or its publisher gone): its down-tracks, its SSRCs and its publisher's entry
    /// go with it.
    pub fn remove_publication(&mut self, id: PublicationId) -> Option<Publication> {
        let down_tracks = self.publications.get(&id)?.down_tracks.clone();
        for dt in down_tracks {
            self.remove_down_track(dt);
        }
        let publication = self.publications.remove(&id)?;
        for layer in &publication.layers {
            self.incoming.remove(&(publication.pc, layer.ssrc));
        }
        if let Some(p) = self.participants.get_mut(&publication.publisher) {
            p.publisher.publications.retain(|p| *p != id);
        }
        Some(publication)
    }

    /// Adds a down-track to its publication and its subscriber.
    pub fn insert_down_track(&mut self, id: DownTrackId, dt: DownTrack) {
        if let Some(p) = self.publications.get_mut(&dt.publication) {
            p.down_tracks.push(id);
        }
        if let Some(p) = self.participants.get_mut(&dt.subscriber) {
            p.subscriber.down_tracks.insert(dt.publication, id);
            p.subscriber.out_ssrcs.insert(dt.out_ssrc, id);
        }
        self.down_tracks.insert(id, dt);
    }

    /// The one removal path of a down-track: no copy is forwarded on it from now on and the
    /// subscriber's RTCP about it is ignored. Its sender stays in the subscribe connection
    /// until the subscriber's next offer ([`Subscriber::stopped_senders`]), so that a
    /// connection with an offer outstanding is not changed under it.
    pub fn remove_down_track(&mut self, id: DownTrackId) -> Option<DownTrack> {
        let dt = self.down_tracks.remove(&id)?;
        if let Some(p) = self.publications.get_mut(&dt.publication) {
            p.down_tracks.retain(|d| *d != id);
        }
        if let Some(p) = self.participants.get_mut(&dt.subscriber) {
            let s = &mut p.subscriber;
            s.down_tracks.remove(&dt.publication);
            s.out_ssrcs.remove(&dt.out_ssrc);
            s.stopped_senders.push(dt.sender_id);
        }
        Some(dt)
    }

    /// The down-track `subscriber` receives under `ssrc` (what its RTCP names).
    pub fn down_track_by_ssrc(&self, subscriber: &str, ssrc: u32) -> Option<DownTrackId> {
        self.participants
            .get(subscriber)?
            .subscriber
            .out_ssrcs
            .get(&ssrc)
            .copied()
    }

    /// The publications `participant` should receive: everyone else's, in publication order.
    pub fn wanted_by(&self, participant: &str) -> Vec<PublicationId> {
        let mut wanted: Vec<PublicationId> = self
            .publications
            .iter()
            .filter(|(_, p)| p.publisher != participant)
            .map(|(id, _)| *id)
            .collect();
        wanted.sort();
        wanted
    }

    /// Publications by kind, `[audio, video]` (see `metrics::kind_index`).
    pub fn publications_by_kind(&self) -> [usize; 2] {
        let mut n = [0; 2];
        for p in self.publications.values() {
            n[crate::metrics::kind_index(p.kind)] += 1;
        }
        n
    }
}

pub(crate) struct Participant {
    pub publisher: Publisher,
    pub subscriber: Subscriber,
}

impl Participant {
    pub fn new() -> Self {
        Self {
            publisher: Publisher::default(),
            subscriber: Subscriber::default(),
        }
    }
}

/// A participant's publish side: its publish connection and what it sends on it.
#[derive(Default)]
pub(crate) struct Publisher {
    pub pc: Option<PcId>,
    pub publications: Vec<PublicationId>,
    /// Tracks the publisher stopped by renegotiating (media SSRC → what they were), kept so
    /// that they can be published again when their m-section sends again and their RTP
    /// arrives (webrtc-rs does not report a stream it has already opened a second time).
    pub dormant: HashMap<u32, Dormant>,
    pub pending_candidates: Vec<CandidateInit>,
}

/// A track its publisher stopped in a renegotiation.
pub(crate) struct Dormant {
    pub info: TrackInfo,
    /// Its m-section sends again: the next RTP packet on its SSRC publishes it again.
    pub revivable: bool,
}

/// What publishing a track needs to know about it, learnt from the publish connection.
pub(crate) struct TrackInfo {
    pub track_id: String,
    /// The m-section (transceiver) the track arrives on, if known.
    pub mid: Option<String>,
    pub kind: MediaKind,
    pub codec: RTCRtpCodec,
    pub media_ssrc: u32,
    /// The simulcast rid of the encoding it was opened with, if any.
    pub rid: Option<String>,
    pub pub_codecs: Vec<RTCRtpCodecParameters>,
    pub pub_extensions: Vec<(String, u8)>,
}

/// A participant's subscribe side: its subscribe connection, the down-tracks on it and where
/// its negotiation stands.
#[derive(Default)]
pub(crate) struct Subscriber {
    pub pc: Option<PcId>,
    /// Publication → its down-track here; ordered, so offers add tracks in publication order.
    pub down_tracks: BTreeMap<PublicationId, DownTrackId>,
    /// The SSRC each down-track is sent with → the down-track (what this subscriber's RTCP
    /// names).
    pub out_ssrcs: HashMap<u32, DownTrackId>,
    /// Senders of removed down-tracks, taken out of the connection at the next offer.
    pub stopped_senders: Vec<RTCRtpSenderId>,
    pub negotiation: Negotiation,
    /// An answer for the current offer was applied.
    pub answered: bool,
    /// The next offer restarts ICE (new credentials staged on the connection): the client
    /// asked, its network having changed.
    pub ice_restart: bool,
    /// How large it renders each publisher's video (by publisher; members of the room only).
    pub video_sizes: HashMap<String, VideoSize>,
}

/// A track a participant publishes into its room.
pub(crate) struct Publication {
    pub publisher: String,
    /// The publish connection it arrives on.
    pub pc: PcId,
    pub track_id: String,
    /// The publisher's m-section carrying it, if known.
    pub mid: Option<String>,
    pub kind: MediaKind,
    /// The publisher's negotiated codecs and header extensions (uri, id).
    pub pub_codecs: Vec<RTCRtpCodecParameters>,
    pub pub_extensions: Vec<(String, u8)>,
    /// The id of the audio-level extension (RFC 6464) in its packets, for an audio track
    /// whose publisher negotiated it.
    pub audio_level_id: Option<u8>,
    /// The encodings it arrives in; one today (no simulcast).
    pub layers: Vec<Layer>,
    /// Every down-track carrying it, in the order they were added.
    pub down_tracks: Vec<DownTrackId>,
}

impl Publication {
    pub fn new(publisher: &str, pc: PcId, info: TrackInfo) -> Self {
        let TrackInfo {
            track_id,
            mid,
            kind,
            codec,
            media_ssrc,
            rid,
            pub_codecs,
            pub_extensions,
        } = info;
        let capacity = if kind == MediaKind::Video {
            DEFAULT_CAPACITY
        } else {
            64
        };
        let audio_level_id = pub_extensions
            .iter()
            .find(|(uri, _)| kind == MediaKind::Audio && uri == AUDIO_LEVEL_URI)
            .map(|(_, id)| *id);
        Self {
            publisher: publisher.to_owned(),
            pc,
            track_id,
            mid,
            kind,
            pub_codecs,
            pub_extensions,
            audio_level_id,
            layers: vec![Layer::new(media_ssrc, rid, codec, capacity)],
            down_tracks: Vec::new(),
        }
    }

    /// What it takes to publish it again (a publication stopped by renegotiation).
    pub fn into_info(self) -> TrackInfo {
        let layer = self.layers.into_iter().next();
        let (media_ssrc, rid, codec) = layer.map(|l| (l.ssrc, l.rid, l.codec)).unwrap_or_default();
        TrackInfo {
            track_id: self.track_id,
            mid: self.mid,
            kind: self.kind,
            codec,
            media_ssrc,
            rid,
            pub_codecs: self.pub_codecs,
            pub_extensions: self.pub_extensions,
        }
    }

    /// The layer subscribers start on (and, with one layer, the only one).
    pub fn base(&self) -> Option<&Layer> {
        self.layers.first()
    }

    /// Its layers from the smallest to the largest: by the frame height their keyframes
    /// announce when every layer has said, else by the bitrate each brings in.
    pub fn layers_by_quality(&self, now_us: u64) -> SmallVec<[usize; 4]> {
        let mut order: SmallVec<[usize; 4]> = (0..self.layers.len()).collect();
        if self.layers.iter().all(|l| l.size.is_some()) {
            order.sort_by_key(|i| self.layers[*i].size.map(|(_, h)| h));
        } else {
            order.sort_by_key(|i| self.layers[*i].bitrate.bytes_last_second(now_us));
        }
        order
    }
}

/// One encoding of a publication: its SSRCs, codec, retransmission cache, keyframe
/// throttle and bitrate.
pub(crate) struct Layer {
    /// The simulcast rid; `None` without simulcast.
    pub rid: Option<String>,
    pub ssrc: u32,
    /// The publisher's RTX SSRC; `None` today (the core handles the publisher's RTX).
    #[allow(dead_code)]
    pub rtx_ssrc: Option<u32>,
    pub codec: RTCRtpCodec,
    /// What the SFU reads in its payloads (keyframes, VP8 picture ids).
    pub payload: Codec,
    /// The frame size (width, height) its last keyframe announced (VP8).
    pub size: Option<(u16, u16)>,
    pub cache: RtxCache,
    pub keyframes: KeyframeThrottle,
    /// A keyframe request the throttle held back, sent when the interval has passed.
    pub keyframe_wanted: bool,
    pub highest_seq: Option<u16>,
    /// When its last packet arrived, in µs of the shard's clock (a silence is seen by it).
    pub last_rx_us: Option<u64>,
    pub bitrate: BitrateMeter,
    /// Since published, for operators: packets that arrived and sequence gaps.
    pub packets_received: u64,
    pub packets_lost: u64,
}

impl Layer {
    pub fn new(ssrc: u32, rid: Option<String>, codec: RTCRtpCodec, cache_capacity: usize) -> Self {
        Self {
            rid,
            ssrc,
            rtx_ssrc: None,
            payload: Codec::from_mime(&codec.mime_type),
            size: None,
            codec,
            cache: RtxCache::new(cache_capacity),
            keyframes: KeyframeThrottle::default(),
            keyframe_wanted: false,
            highest_seq: None,
            last_rx_us: None,
            bitrate: BitrateMeter::default(),
            packets_received: 0,
            packets_lost: 0,
        }
    }
}

/// Bytes received over the last second, in ten 100 ms buckets: per packet a division and an
/// addition, nothing allocated.
#[derive(Debug, Default, Clone)]
pub(crate) struct BitrateMeter {
    /// (bucket number = time / 100 ms, bytes in it), each at index number % 10.
    buckets: [(u64, u64); 10],
}

impl BitrateMeter {
    const BUCKET_US: u64 = 100_000;

    /// `bytes` arrived at `now_us` (µs on any monotonic scale).
    #[inline]
    pub fn add(&mut self, bytes: usize, now_us: u64) {
        let n = now_us / Self::BUCKET_US;
        let b = &mut self.buckets[(n % 10) as usize];
        if b.0 != n {
            *b = (n, 0);
        }
        b.1 += bytes as u64;
    }

    /// Bytes that arrived in the second up to `now_us` (the current bucket and nine before).
    pub fn bytes_last_second(&self, now_us: u64) -> u64 {
        let n = now_us / Self::BUCKET_US;
        self.buckets
            .iter()
            .filter(|(b, _)| *b <= n && n - *b < 10)
            .map(|(_, bytes)| bytes)
            .sum()
    }
}

/// Which layer of its publication a down-track forwards, and which it switches to. A switch
/// happens at the target layer's next keyframe (the subscriber's decoder can start there);
/// until then the current layer keeps flowing. No target = paused: nothing is forwarded, and
/// a resumed down-track starts at its target's keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LayerSelector {
    current: Option<usize>,
    target: Option<usize>,
}

impl Default for LayerSelector {
    fn default() -> Self {
        Self {
            current: Some(0),
            target: Some(0),
        }
    }
}

/// What a down-track does with a packet of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accept {
    Skip,
    Forward,
    /// The target's keyframe: the down-track now forwards this layer.
    Switched,
}

impl LayerSelector {
    /// The layer whose packets a NACK or keyframe request of the subscriber is about: the one
    /// forwarded, or the one about to be.
    #[inline]
    pub fn layer(&self) -> usize {
        self.current.or(self.target).unwrap_or(0)
    }

    pub fn current(&self) -> Option<usize> {
        self.current
    }

    pub fn target(&self) -> Option<usize> {
        self.target
    }

    /// A packet of `layer` (`keyframe`: it starts one): forwarded, a switch, or not for this
    /// down-track.
    #[inline]
    pub fn accept(&mut self, layer: usize, keyframe: bool) -> Accept {
        if self.current == Some(layer) {
            Accept::Forward
        } else if self.target == Some(layer) && keyframe {
            self.current = Some(layer);
            Accept::Switched
        } else {
            Accept::Skip
        }
    }

    /// Aims at `target` (`None` pauses at once). True if that changes the aim.
    pub fn set_target(&mut self, target: Option<usize>) -> bool {
        if target.is_none() {
            self.current = None;
        }
        let changed = self.target != target;
        self.target = target;
        changed
    }
}

/// One publication sent to one subscriber: where its copies go and how they are rewritten.
pub(crate) struct DownTrack {
    pub publication: PublicationId,
    /// The subscribing participant and its subscribe connection.
    pub subscriber: String,
    pub sub_pc: PcId,
    pub sender_id: RTCRtpSenderId,
    /// The SSRC this subscriber receives it with.
    pub out_ssrc: u32,
    /// Its RTX stream (RFC 4588), for video: the SSRC, and the RTX payload type paired with
    /// each payload type the subscriber negotiated (learnt from the answer; empty if it did
    /// not negotiate RTX, and its retransmissions then go on `out_ssrc`).
    pub rtx_ssrc: Option<u32>,
    pub rtx_payload_types: PayloadTypeMap,
    pub rtx_seq: u16,
    /// The publisher's RED payload type, when the subscriber did not negotiate RED: its
    /// packets are sent as their primary encoding (Opus).
    pub strip_red: Option<u8>,
    pub rewriter: Rewriter,
    /// Its VP8 picture ids, continuous across layer switches.
    pub vp8: Vp8Numbering,
    /// What this subscriber's NACKs may make the SFU resend on this down-track.
    pub rtx: RtxLimiter,
    pub selector: LayerSelector,
    /// When the layer choice paused it because the estimate could not carry its smallest
    /// layer (it is tried again a while later).
    pub paused: Option<Instant>,
    /// A paused video tried again keeps its smallest layer until then, whatever the estimate
    /// says, so that the estimate can learn from what it carries.
    pub probing_until: Option<Instant>,
    /// When a move up may be tried again after a failed one.
    pub upgrades: UpgradeGate,
    /// When the keyframe of the layer it is switching to was last asked for.
    pub keyframe_asked: Option<Instant>,
    /// Negotiated (answered) and connected: copies are sent.
    pub ready: bool,
    /// Its payload types and header extensions were learnt from an answer.
    pub configured: bool,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::ExtIdMap;

    fn info(track_id: &str, ssrc: u32) -> TrackInfo {
        TrackInfo {
            track_id: track_id.into(),
            mid: None,
            kind: MediaKind::Video,
            codec: RTCRtpCodec::default(),
            media_ssrc: ssrc,
            rid: None,
            pub_codecs: Vec::new(),
            pub_extensions: Vec::new(),
        }
    }

    fn down_track(publication: PublicationId, subscriber: &str, out_ssrc: u32) -> DownTrack {
        DownTrack {
            publication,
            subscriber: subscriber.into(),
            sub_pc: PcId(100),
            sender_id: RTCRtpSenderId::default(),
            out_ssrc,
            rtx_ssrc: None,
            rtx_payload_types: PayloadTypeMap::new(),
            rtx_seq: 0,
            strip_red: None,
            rewriter: Rewriter::new(
                out_ssrc,
                90_000,
                0,
                0,
                PayloadTypeMap::new(),
                ExtIdMap::new(),
            ),
            rtx: RtxLimiter::new(8),
            vp8: Vp8Numbering::default(),
            selector: LayerSelector::default(),
            paused: None,
            probing_until: None,
            upgrades: UpgradeGate::default(),
            keyframe_asked: None,
            ready: false,
            configured: false,
        }
    }

    /// Removing a publication takes it, its SSRC, its publisher's entry and every down-track
    /// carrying it out of every index; the subscriber keeps the sender to stop at its next
    /// offer, and nothing of another publication is touched.
    #[test]
    fn a_publication_leaves_no_trace() {
        let mut room = Room::new("r");
        for p in ["alice", "bob", "carol"] {
            room.participants.insert(p.into(), Participant::new());
        }
        let (cam, mic) = (PublicationId(1), PublicationId(2));
        room.insert_publication(cam, Publication::new("alice", PcId(1), info("cam", 11)));
        room.insert_publication(mic, Publication::new("bob", PcId(2), info("mic", 22)));
        assert_eq!(room.wanted_by("alice"), [mic]);
        assert_eq!(room.wanted_by("carol"), [cam, mic]);
        assert_eq!(room.incoming.get(&(PcId(1), 11)), Some(&(cam, 0)));
        room.insert_down_track(DownTrackId(10), down_track(cam, "bob", 1000));
        room.insert_down_track(DownTrackId(11), down_track(cam, "carol", 1001));
        room.insert_down_track(DownTrackId(12), down_track(mic, "carol", 1002));
        assert_eq!(
            room.down_track_by_ssrc("carol", 1001),
            Some(DownTrackId(11))
        );
        assert_eq!(
            room.publications[&cam].down_tracks,
            [DownTrackId(10), DownTrackId(11)]
        );

        let removed = room.remove_publication(cam).expect("published");
        assert_eq!(removed.into_info().media_ssrc, 11);
        assert!(room.remove_publication(cam).is_none(), "removed once");
        assert!(!room.incoming.contains_key(&(PcId(1), 11)));
        assert!(room.participants["alice"].publisher.publications.is_empty());
        assert_eq!(
            room.down_tracks.len(),
            1,
            "carol's down-track of bob's mic stays"
        );
        assert_eq!(room.down_track_by_ssrc("carol", 1001), None);
        let carol = &room.participants["carol"].subscriber;
        assert_eq!(carol.down_tracks.keys().copied().collect::<Vec<_>>(), [mic]);
        assert_eq!(carol.stopped_senders.len(), 1);
        assert_eq!(room.participants["bob"].subscriber.stopped_senders.len(), 1);
        assert_eq!(room.publications_by_kind(), [0, 1]);

        room.remove_down_track(DownTrackId(12));
        assert!(room.down_tracks.is_empty());
        assert!(room.publications[&mic].down_tracks.is_empty());
        assert!(room.participants["carol"].subscriber.out_ssrcs.is_empty());
    }

    #[test]
    fn bitrate_meter_counts_the_last_second() {
        let mut m = BitrateMeter::default();
        let ms = |n: u64| n * 1_000;
        assert_eq!(m.bytes_last_second(ms(5_000)), 0);
        for i in 0..100 {
            m.add(1_000, ms(5_000 + i * 10)); // 100 kB/s for one second
        }
        assert_eq!(m.bytes_last_second(ms(5_990)), 100_000);
        // Half a second later, half of it is older than a second.
        assert_eq!(m.bytes_last_second(ms(6_490)), 50_000);
        m.add(500, ms(6_500));
        assert_eq!(m.bytes_last_second(ms(6_500)), 40_500);
        assert_eq!(m.bytes_last_second(ms(9_000)), 0, "all of it stale");
    }
}
