//! Latency histograms and CPU clocks for the benchmarks and the load generator.

use std::time::Duration;

/// A log-linear histogram of microsecond values: exact below 128 µs, then 64 buckets per
/// power of two (about 1.6 % resolution) — fixed memory however many samples are added.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    sum: u128,
}

const LINEAR: u64 = 128;
const SUB_BITS: u32 = 6;

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            counts: vec![0; Self::index(u64::MAX) + 1],
            total: 0,
            max: 0,
            sum: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < LINEAR {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros(); // >= 7
        let shift = exp - SUB_BITS;
        let mantissa = (v >> shift) - (1 << SUB_BITS); // 0..64
        (LINEAR + u64::from(exp - 7) * (1 << SUB_BITS) + mantissa) as usize
    }

    /// The largest value that lands in bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < LINEAR {
            return i;
        }
        let exp = (i - LINEAR) / (1 << SUB_BITS) + 7;
        let mantissa = (i - LINEAR) % (1 << SUB_BITS) + (1 << SUB_BITS);
        let shift = exp as u32 - SUB_BITS;
        ((mantissa + 1) << shift).saturating_sub(1)
    }

    pub fn record(&mut self, micros: u64) {
        self.counts[Self::index(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
        self.sum += u128::from(micros);
    }

    pub fn record_duration(&mut self, d: Duration) {
        self.record(d.as_micros() as u64);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1), as the upper edge of its bucket; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }

    /// "p50 … µs p99 … µs p99.9 … µs max … µs", for reports.
    pub fn summary_us(&self) -> String {
        format!(
            "p50 {} µs p99 {} µs p99.9 {} µs max {} µs",
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(0.999),
            self.max()
        )
    }
}

/// CPU time consumed by the calling thread.
pub fn thread_cpu() -> Duration {
    clock(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time consumed by the whole process (all threads).
pub fn process_cpu() -> Duration {
    clock(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
}

fn clock(id: nix::time::ClockId) -> Duration {
    nix::time::clock_gettime(id)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_two_percent() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000f64), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000);
        assert_eq!(h.quantile(1.0), 100_000);
        let mut small = Histogram::new();
        for v in [3u64, 5, 7, 9] {
            small.record(v);
        }
        assert_eq!(small.quantile(0.5), 5);
        assert_eq!(small.quantile(0.0), 3);
        for v in [127u64, 128, 129, 1_000, 65_535, 1 << 40] {
            let i = Histogram::index(v);
            assert!(Histogram::upper(i) >= v, "{v}");
            assert!(i == 0 || Histogram::upper(i - 1) < v, "{v}");
        }
    }
}
