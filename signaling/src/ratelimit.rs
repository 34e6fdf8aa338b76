//! Per-socket token buckets for chat and signalling events.

use std::time::Instant;

/// A token bucket: `burst` tokens, refilled at `rate_per_sec`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate_per_sec: f64::from(rate_per_sec),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(5, 10);
        assert_eq!((0..20).filter(|_| bucket.try_take(start)).count(), 10);
        assert!(!bucket.try_take(start));
        // 5 per second: after 400 ms two tokens are back.
        let later = start + Duration::from_millis(400);
        assert_eq!((0..5).filter(|_| bucket.try_take(later)).count(), 2);
    }

    #[test]
    fn idle_time_never_exceeds_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, 3);
        let much_later = start + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| bucket.try_take(much_later)).count(), 3);
    }
}
