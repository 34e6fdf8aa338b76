//! The layer choice applied (every housekeeping tick): for each subscriber, its estimate is
//! shared among the videos it receives and each video down-track is aimed at the layer
//! [`crate::allocate::choose`] picks, paused, or resumed. A new aim asks the publisher for a
//! keyframe of that layer; the down-track switches when it arrives (`fanout.rs`).

use super::*;
use crate::allocate::{self, Choice, LayerInfo};
use std::cmp::Ordering;

use smallvec::SmallVec;

use crate::congestion::SendSide;

/// A video the estimate paused is tried again this long after, whatever the estimate says:
/// with nothing else sent to the subscriber, no feedback would ever say the link recovered.
const RETRY_PAUSED: Duration = Duration::from_secs(8);

/// A move up whose copies lose more than this fraction while on trial failed.
const TRIAL_MAX_LOSS: f64 = 0.1;

/// A layer switch whose keyframe has not come this long after it was asked for asks again.
const ASK_KEYFRAME_AGAIN: Duration = Duration::from_secs(1);

/// How long a video tried again keeps its smallest layer before the estimate may pause it
/// again: its keyframe must arrive, and the feedback on what it carries must reach the
/// estimator, which then climbs from its floor by a few percent per step.
const PROBE_FOR: Duration = Duration::from_secs(5);

impl Shard {
    pub(super) fn choose_layers(&mut self, now: Instant) {
        let now_us = now.duration_since(self.epoch).as_micros() as u64;
        let mut keyframes = Vec::new();
        let Self {
            rooms,
            pcs,
            metrics,
            ..
        } = self;
        for (rid, room) in rooms.iter_mut() {
            let Room {
                participants,
                publications,
                down_tracks,
                ..
            } = room;
            for p in participants.values() {
                let s = &p.subscriber;
                let mut send_side = s.pc.and_then(|id| pcs.get_mut(&id)?.send_side.as_mut());
                // A video tried again has flowed for its while: what the feedback said of it
                // may restart the estimate before this choice.
                let mut probe_over = false;
                for dt_id in s.down_tracks.values() {
                    if let Some(dt) = down_tracks.get_mut(dt_id)
                        && dt.probing_until.is_some_and(|until| now >= until)
                    {
                        dt.probing_until = None;
                        probe_over = true;
                    }
                }
                if probe_over && let Some(side) = send_side.as_deref_mut() {
                    side.finish_probe(now);
                }
                let estimate = send_side.as_deref().and_then(SendSide::estimate);
                let mut audio_bps = 0.0;
                let mut videos: SmallVec<[_; 8]> = SmallVec::new();
                for (publication_id, dt_id) in &s.down_tracks {
                    let Some(publication) = publications.get(publication_id) else {
                        continue;
                    };
                    match publication.kind {
                        MediaKind::Audio => {
                            audio_bps += publication
                                .base()
                                .map_or(0.0, |l| (l.bitrate.bytes_last_second(now_us) * 8) as f64);
                        }
                        MediaKind::Video => videos.push((*dt_id, publication)),
                    }
                }
                let shown = videos
                    .iter()
                    .filter(|(_, publication)| {
                        !s.video_sizes
                            .get(&publication.publisher)
                            .is_some_and(|size| size.hidden())
                    })
                    .count();
                let share = allocate::video_share(estimate, audio_bps, shown);
                let lossy = send_side
                    .as_deref()
                    .is_some_and(|side| side.loss() > TRIAL_MAX_LOSS);
                let congestion_share = allocate::video_share(
                    send_side.as_deref().and_then(SendSide::congestion_estimate),
                    audio_bps,
                    shown,
                );
                for (dt_id, publication) in videos {
                    let Some(dt) = down_tracks.get_mut(&dt_id) else {
                        continue;
                    };
                    if !dt.ready {
                        continue;
                    }
                    let layers: SmallVec<[LayerInfo; 4]> = publication
                        .layers_by_quality(now_us)
                        .into_iter()
                        .map(|index| {
                            let l = &publication.layers[index];
                            LayerInfo {
                                index,
                                bits_per_second: (l.bitrate.bytes_last_second(now_us) * 8) as f64,
                                height: l.size.map(|(_, h)| h),
                            }
                        })
                        .collect();
                    let size = s.video_sizes.get(&publication.publisher).copied();
                    let aimed = dt.selector.target();
                    let rank = |layer: Option<usize>| {
                        layer.and_then(|l| layers.iter().position(|x| x.index == l))
                    };
                    let mut choice = allocate::choose(&layers, aimed, size, share);
                    // A move up that loses copies failed: back down now, not once the
                    // estimate, which climbed far above the link while nothing was lost, has
                    // come down again (seconds of a broken picture on a policed link).
                    if lossy
                        && dt.upgrades.on_trial(now)
                        && let Some(lower) = rank(aimed)
                            .and_then(|r| r.checked_sub(1))
                            .map(|r| layers[r].index)
                        && matches!(choice, Choice::Layer(_) | Choice::Unchanged)
                    {
                        choice = Choice::Layer(lower);
                    }
                    let target = match choice {
                        Choice::Unchanged => aimed,
                        // Moving up again too soon after a failed upgrade: held.
                        Choice::Layer(layer)
                            if aimed.is_some()
                                && rank(Some(layer)) > rank(aimed)
                                && !dt.upgrades.allows(now) =>
                        {
                            aimed
                        }
                        Choice::Layer(layer) => {
                            dt.paused = None;
                            dt.probing_until = None;
                            // Up one layer at a time: a failed move up costs less.
                            match rank(aimed) {
                                Some(r) if rank(Some(layer)) > Some(r + 1) => {
                                    Some(layers[r + 1].index)
                                }
                                _ => Some(layer),
                            }
                        }
                        Choice::NotShown => None,
                        // The estimate is down, but the path is not congested (random loss):
                        // the smallest layer rather than no picture.
                        Choice::TooLittleBandwidth
                            if layers.first().is_some_and(|smallest| {
                                congestion_share.is_none_or(|c| c >= smallest.bits_per_second)
                            }) =>
                        {
                            dt.paused = None;
                            layers.first().map(|l| l.index)
                        }
                        Choice::TooLittleBandwidth => match dt.paused {
                            // Tried again: the smallest layer, for a while whatever the
                            // estimate says.
                            Some(since) if now.duration_since(since) >= RETRY_PAUSED => {
                                dt.paused = None;
                                dt.probing_until = Some(now + PROBE_FOR);
                                if let Some(side) = send_side.as_deref_mut() {
                                    side.start_probe(now);
                                }
                                layers.first().map(|l| l.index)
                            }
                            None if dt.probing_until.is_some_and(|until| now < until) => aimed,
                            _ => None,
                        },
                    };
                    match rank(target).cmp(&rank(aimed)) {
                        Ordering::Greater if aimed.is_some() => dt.upgrades.upgraded(now),
                        Ordering::Less => {
                            // Would the size alone have kept a larger layer?
                            let for_bandwidth = target.is_some_and(|_| {
                                match allocate::choose(&layers, aimed, size, None) {
                                    Choice::Layer(unlimited) => {
                                        rank(Some(unlimited)) > rank(target)
                                    }
                                    _ => false,
                                }
                            }) || choice == Choice::TooLittleBandwidth;
                            dt.upgrades.downgraded(now, for_bandwidth);
                        }
                        _ => dt.upgrades.held(now),
                    }
                    if target.is_none() && aimed.is_some() {
                        dt.rewriter.pause();
                        if choice == Choice::TooLittleBandwidth {
                            metrics.video_pauses.inc();
                            dt.paused = Some(now);
                        }
                    }
                    // A switch waits for the new layer's keyframe: asked for when aimed, and
                    // again while it has not come (the request or the keyframe was lost).
                    let changed = dt.selector.set_target(target);
                    if let Some(layer) = target
                        && dt.selector.current() != Some(layer)
                        && (changed
                            || dt
                                .keyframe_asked
                                .is_none_or(|at| now.duration_since(at) >= ASK_KEYFRAME_AGAIN))
                    {
                        dt.keyframe_asked = Some(now);
                        keyframes.push((*rid, dt.publication, layer));
                    }
                }
            }
        }
        for (rid, publication, layer) in keyframes {
            self.request_keyframe(rid, publication, layer, now);
        }
    }
}
