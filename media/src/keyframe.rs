//! Keyframe-request throttle: at most one PLI per published track per interval.
//!
//! Every subscriber that loses a frame asks for a keyframe; a room of ten would make the
//! publisher encode ten. One request per track per 500 ms is enough for all of them.

use std::time::{Duration, Instant};

pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    interval: Duration,
    last_sent: Option<Instant>,
    /// Requests swallowed since the last one went out (they are satisfied by it, or by the next).
    suppressed: u64,
}

impl KeyframeThrottle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_sent: None,
            suppressed: 0,
        }
    }

    /// Whether a request arriving `now` should go to the publisher.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.last_sent {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                false
            }
            _ => {
                self.last_sent = Some(now);
                true
            }
        }
    }

    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }
}

impl Default for KeyframeThrottle {
    fn default() -> Self {
        Self::new(DEFAULT_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_one_request_per_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = KeyframeThrottle::default();
        assert!(t.allow(t0));
        assert!(!t.allow(t0));
        assert!(!t.allow(t0 + ms(100)));
        assert!(!t.allow(t0 + ms(499)));
        assert!(t.allow(t0 + ms(500)));
        assert!(!t.allow(t0 + ms(600)));
        assert!(t.allow(t0 + ms(2_000)));
        assert_eq!(t.suppressed(), 4);
        // Ten subscribers asking every 10 ms for 2 s → 4 requests reach the publisher.
        let mut t = KeyframeThrottle::default();
        let sent = (0..200)
            .flat_map(|i| std::iter::repeat_n(i, 10))
            .filter(|&i| t.allow(t0 + ms(i * 10)))
            .count();
        assert_eq!(sent, 4);
    }

    #[test]
    fn a_clock_going_backwards_does_not_unblock() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut t = KeyframeThrottle::default();
        assert!(t.allow(t0));
        assert!(!t.allow(t0 - Duration::from_secs(1)));
    }
}
