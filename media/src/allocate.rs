//! Which simulcast layer a subscriber gets of each video it receives: the largest that fits its
//! share of the bandwidth estimate and is no larger than the size it renders the video at; a
//! video it does not show, or whose smallest layer does not fit, is paused (audio is never
//! touched). Plain decisions over numbers, unit-tested; the shard applies them every 100 ms
//! (`shard/layers.rs`).

use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::VideoSize;

/// A layer larger than the one aimed at must fit this many times over before the choice moves
/// up (a smaller one is taken as soon as the larger does not fit): no flapping at the edge.
const UPGRADE_HEADROOM: f64 = 1.15;

/// One layer of a publication as the choice sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LayerInfo {
    /// Its index in the publication.
    pub index: usize,
    /// What it brought in over the last second.
    pub bits_per_second: f64,
    /// The frame height its keyframes announce, if known.
    pub height: Option<u16>,
}

/// The choice for one down-track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Choice {
    Layer(usize),
    /// The subscriber does not show this video.
    NotShown,
    /// Even the smallest layer does not fit its share of the estimate.
    TooLittleBandwidth,
    /// Nothing arrives on any layer: keep what is aimed at.
    Unchanged,
}

/// Chooses among `layers` (smallest first) for a down-track aimed at `aimed` (an index), shown
/// at `size` (`None`: no hint, as large as possible), within `share` bits per second (`None`:
/// no estimate yet, no limit).
pub(crate) fn choose(
    layers: &[LayerInfo],
    aimed: Option<usize>,
    size: Option<VideoSize>,
    share: Option<f64>,
) -> Choice {
    if size.is_some_and(VideoSize::hidden) {
        return Choice::NotShown;
    }
    let available: SmallVec<[&LayerInfo; 4]> =
        layers.iter().filter(|l| l.bits_per_second > 0.0).collect();
    if available.is_empty() {
        return Choice::Unchanged;
    }
    // The smallest layer at least as tall as the video is shown; all of them without a hint
    // or without known heights.
    let by_size = match size {
        Some(size) if available.iter().all(|l| l.height.is_some()) => available
            .iter()
            .position(|l| l.height.is_some_and(|h| u32::from(h) >= size.height))
            .unwrap_or(available.len() - 1),
        _ => available.len() - 1,
    };
    let candidates = &available[..=by_size];
    let Some(share) = share else {
        return Choice::Layer(candidates[by_size].index);
    };
    let aimed_rank = aimed.and_then(|a| available.iter().position(|l| l.index == a));
    let fits = |rank: usize, l: &LayerInfo| {
        let upgrade = aimed_rank.is_none_or(|aimed| rank > aimed);
        let needed = if upgrade {
            l.bits_per_second * UPGRADE_HEADROOM
        } else {
            l.bits_per_second
        };
        needed <= share
    };
    match candidates
        .iter()
        .enumerate()
        .rev()
        .find(|(rank, l)| fits(*rank, l))
    {
        Some((_, l)) => Choice::Layer(l.index),
        None => Choice::TooLittleBandwidth,
    }
}

/// An upgrade undone this soon (the larger layer did not fit after all) failed.
const UPGRADE_TRIAL: Duration = Duration::from_secs(10);
/// The wait after a move down for lack of bandwidth before the next move up.
const WAIT_AFTER_DOWNGRADE: Duration = Duration::from_secs(10);
/// The wait after a first failed upgrade before the next; it doubles with each failure...
const FIRST_UPGRADE_WAIT: Duration = Duration::from_secs(20);
/// ...up to this.
const MAX_UPGRADE_WAIT: Duration = Duration::from_secs(120);
/// A layer held this long without a failure clears the wait.
const UPGRADE_WAIT_FORGOTTEN: Duration = Duration::from_secs(60);

/// When a down-track may move up again. Without probing, the estimate can only find out that a
/// larger layer does not fit by sending it: on a link that drops what exceeds its rate (a
/// policer, a mobile operator's shaper) the estimate climbs while nothing is lost, the larger
/// layer is taken, loss follows, the estimate falls, and the subscriber's picture flips between
/// sizes with a freeze each time. Each upgrade undone within [`UPGRADE_TRIAL`] makes the next
/// wait, twice as long as the last.
#[derive(Debug, Default)]
pub(crate) struct UpgradeGate {
    upgraded_at: Option<Instant>,
    wait: Duration,
    closed_until: Option<Instant>,
    /// When the current layer was taken (for [`UPGRADE_WAIT_FORGOTTEN`]).
    steady_since: Option<Instant>,
}

impl UpgradeGate {
    /// Whether an upgrade may be tried now.
    pub fn allows(&self, now: Instant) -> bool {
        self.closed_until.is_none_or(|until| now >= until)
    }

    /// Whether the last move up is still on trial: loss now means it failed.
    pub fn on_trial(&self, now: Instant) -> bool {
        self.upgraded_at
            .is_some_and(|at| now.duration_since(at) < UPGRADE_TRIAL)
    }

    pub fn upgraded(&mut self, now: Instant) {
        self.upgraded_at = Some(now);
        self.steady_since = Some(now);
    }

    /// Moved down (or paused); `for_bandwidth`: because the estimate did not carry the layer
    /// (not because the video is shown smaller).
    pub fn downgraded(&mut self, now: Instant, for_bandwidth: bool) {
        if self
            .upgraded_at
            .take()
            .is_some_and(|at| now.duration_since(at) < UPGRADE_TRIAL)
        {
            self.wait = (self.wait * 2).clamp(FIRST_UPGRADE_WAIT, MAX_UPGRADE_WAIT);
            self.closed_until = Some(now + self.wait);
        } else if for_bandwidth {
            let until = now + self.wait.max(WAIT_AFTER_DOWNGRADE);
            self.closed_until = self.closed_until.max(Some(until));
        }
        self.steady_since = Some(now);
    }

    /// Every choice that changes nothing: a layer held long enough clears the wait.
    pub fn held(&mut self, now: Instant) {
        if self
            .steady_since
            .is_some_and(|since| now.duration_since(since) >= UPGRADE_WAIT_FORGOTTEN)
        {
            self.wait = Duration::ZERO;
            self.upgraded_at = None;
        }
    }
}

/// A subscriber's estimate shared among the videos it shows, after its audio.
pub(crate) fn video_share(estimate: Option<f64>, audio_bps: f64, videos: usize) -> Option<f64> {
    estimate.map(|e| (e - audio_bps).max(0.0) / videos.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_upgrades_wait_longer_each_time_and_a_steady_layer_forgets() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut gate = UpgradeGate::default();
        assert!(gate.allows(t0));
        // Up, and down 2 s later: 20 s before the next try.
        gate.upgraded(at(0));
        gate.downgraded(at(2), true);
        assert!(!gate.allows(at(21)) && gate.allows(at(22)));
        // Again: 40 s.
        gate.upgraded(at(22));
        gate.downgraded(at(23), true);
        assert!(!gate.allows(at(62)) && gate.allows(at(63)));
        // An upgrade that holds past the trial is no failure, and a move down because the
        // video is shown smaller closes nothing; held for a minute, the wait is forgotten.
        gate.upgraded(at(63));
        gate.held(at(75));
        gate.downgraded(at(85), false);
        assert!(gate.allows(at(85)));
        gate.held(at(146));
        // A move down for lack of bandwidth: 10 s before trying up again.
        gate.downgraded(at(146), true);
        assert!(!gate.allows(at(155)) && gate.allows(at(156)));
    }

    /// q, h, f: 150 kbit/s at 180 p, 500 at 360 p, 1,500 at 720 p (indices in arrival order).
    fn simulcast() -> Vec<LayerInfo> {
        vec![
            LayerInfo {
                index: 2,
                bits_per_second: 150e3,
                height: Some(180),
            },
            LayerInfo {
                index: 0,
                bits_per_second: 500e3,
                height: Some(360),
            },
            LayerInfo {
                index: 1,
                bits_per_second: 1_500e3,
                height: Some(720),
            },
        ]
    }

    fn shown(height: u32) -> Option<VideoSize> {
        Some(VideoSize {
            width: height * 16 / 9,
            height,
        })
    }

    #[test]
    fn the_largest_layer_that_fits_the_estimate() {
        let l = simulcast();
        assert_eq!(
            choose(&l, None, None, None),
            Choice::Layer(1),
            "no estimate"
        );
        assert_eq!(choose(&l, None, None, Some(5e6)), Choice::Layer(1));
        assert_eq!(choose(&l, None, None, Some(700e3)), Choice::Layer(0));
        assert_eq!(choose(&l, None, None, Some(200e3)), Choice::Layer(2));
        assert_eq!(
            choose(&l, None, None, Some(100e3)),
            Choice::TooLittleBandwidth
        );
    }

    #[test]
    fn no_larger_than_the_video_is_shown() {
        let l = simulcast();
        assert_eq!(choose(&l, None, shown(360), Some(5e6)), Choice::Layer(0));
        assert_eq!(choose(&l, None, shown(200), Some(5e6)), Choice::Layer(0));
        assert_eq!(choose(&l, None, shown(120), Some(5e6)), Choice::Layer(2));
        assert_eq!(choose(&l, None, shown(1080), None), Choice::Layer(1));
        // Shown large, but the estimate decides.
        assert_eq!(choose(&l, None, shown(1080), Some(300e3)), Choice::Layer(2));
        assert_eq!(
            choose(
                &l,
                None,
                Some(VideoSize {
                    width: 0,
                    height: 0
                }),
                None
            ),
            Choice::NotShown
        );
    }

    #[test]
    fn moving_up_needs_headroom_moving_down_does_not() {
        let l = simulcast();
        // Aimed at h (index 0): f needs 1.15 × 1.5 Mbit/s.
        assert_eq!(choose(&l, Some(0), None, Some(1.6e6)), Choice::Layer(0));
        assert_eq!(choose(&l, Some(0), None, Some(1.8e6)), Choice::Layer(1));
        // Aimed at f: it stays while it fits at all.
        assert_eq!(choose(&l, Some(1), None, Some(1.5e6)), Choice::Layer(1));
        assert_eq!(choose(&l, Some(1), None, Some(1.4e6)), Choice::Layer(0));
        // Paused (nothing aimed at): resuming needs headroom too.
        assert_eq!(
            choose(&l, None, None, Some(160e3)),
            Choice::TooLittleBandwidth
        );
    }

    #[test]
    fn layers_that_bring_nothing_are_not_chosen() {
        let mut l = simulcast();
        // The publisher stopped sending f (its own estimate is low).
        l[2].bits_per_second = 0.0;
        assert_eq!(choose(&l, Some(1), None, Some(5e6)), Choice::Layer(0));
        for layer in &mut l {
            layer.bits_per_second = 0.0;
        }
        assert_eq!(choose(&l, Some(1), None, Some(5e6)), Choice::Unchanged);
        // One layer (no simulcast) that does not fit: paused.
        let one = [LayerInfo {
            index: 0,
            bits_per_second: 800e3,
            height: None,
        }];
        assert_eq!(choose(&one, Some(0), None, Some(900e3)), Choice::Layer(0));
        assert_eq!(
            choose(&one, Some(0), None, Some(300e3)),
            Choice::TooLittleBandwidth
        );
    }

    #[test]
    fn audio_comes_first_and_videos_share_the_rest() {
        assert_eq!(video_share(None, 50e3, 2), None);
        assert_eq!(video_share(Some(1_050e3), 50e3, 2), Some(500e3));
        assert_eq!(video_share(Some(30e3), 50e3, 1), Some(0.0));
    }
}
