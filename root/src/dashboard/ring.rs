//! Bounded rings: the last N of something (rate samples, failures, log lines), the oldest
//! dropped first, and the rate and ETA computed from a ring of counter samples.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The last `cap` values pushed, oldest first.
#[derive(Clone, Debug)]
pub struct Ring<T> {
    items: VecDeque<T>,
    cap: usize,
}

impl<T> Ring<T> {
    /// An empty ring keeping at most `cap` values (at least one).
    pub const fn new(cap: usize) -> Ring<T> {
        Ring {
            items: VecDeque::new(),
            cap: if cap == 0 { 1 } else { cap },
        }
    }

    /// Adds `value`, dropping the oldest when full.
    pub fn push(&mut self, value: T) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(value);
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.items.iter()
    }

    /// The newest value.
    pub fn last(&self) -> Option<&T> {
        self.items.back()
    }
}

/// Samples of a growing counter, for its recent rate: `(when, value)`, one a poll.
#[derive(Clone, Debug)]
pub struct CounterSamples {
    samples: Ring<(Instant, u64)>,
    window: Duration,
}

impl CounterSamples {
    /// Keeps samples long enough to measure the rate over `window`.
    pub fn new(window: Duration, cap: usize) -> CounterSamples {
        CounterSamples {
            samples: Ring::new(cap),
            window,
        }
    }

    /// Records `value` at `at`. A counter that went back (a new chain, a restarted node)
    /// starts the samples over.
    pub fn push(&mut self, at: Instant, value: u64) {
        if self.samples.last().is_some_and(|&(_, v)| value < v) {
            self.samples = Ring::new(self.samples.cap);
        }
        self.samples.push((at, value));
    }

    /// Items per second over the last `window` (up to the oldest sample within it, or the
    /// sample just before it); `None` with fewer than two samples.
    pub fn rate(&self) -> Option<f64> {
        let &(t1, v1) = self.samples.last()?;
        let cutoff = t1.checked_sub(self.window);
        let (t0, v0) = self
            .samples
            .iter()
            .rev()
            .skip(1)
            .take_while(|(t, _)| cutoff.is_none_or(|c| *t >= c))
            .last()
            .or_else(|| self.samples.iter().rev().nth(1))
            .copied()?;
        let secs = t1.duration_since(t0).as_secs_f64();
        (secs > 0.0).then(|| v1.saturating_sub(v0) as f64 / secs)
    }

    /// Items per second between the last two samples.
    pub fn last_rate(&self) -> Option<f64> {
        let mut it = self.samples.iter().rev();
        let &(t1, v1) = it.next()?;
        let &(t0, v0) = it.next()?;
        let secs = t1.duration_since(t0).as_secs_f64();
        (secs > 0.0).then(|| v1.saturating_sub(v0) as f64 / secs)
    }
}

/// Seconds until `total` is done at `rate` items/s; `None` when the total or the rate is
/// unknown, or nothing moves.
pub fn eta_s(done: u64, total: Option<u64>, rate: Option<f64>) -> Option<f64> {
    let left = total?.saturating_sub(done);
    if left == 0 {
        return Some(0.0);
    }
    let rate = rate.filter(|r| r.is_finite() && *r > 0.0)?;
    Some(left as f64 / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_newest() {
        let mut r = Ring::new(3);
        assert!(r.is_empty());
        for i in 0..5 {
            r.push(i);
        }
        assert_eq!(r.iter().copied().collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!((r.len(), r.last()), (3, Some(&4)));
        let mut one = Ring::new(0);
        one.push(1);
        one.push(2);
        assert_eq!(one.iter().copied().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn rate_over_the_window() {
        let t = Instant::now();
        let s = |secs| t + Duration::from_secs(secs);
        let mut c = CounterSamples::new(Duration::from_secs(10), 100);
        assert_eq!(c.rate(), None);
        c.push(s(0), 0);
        assert_eq!(c.rate(), None);
        // 100/s for 20 s, then 10/s for 10 s: the 10 s window sees only the slow part.
        for i in 1..=20 {
            c.push(s(i), i * 100);
        }
        assert_eq!(c.rate(), Some(100.0));
        for i in 21..=30 {
            c.push(s(i), 2000 + (i - 20) * 10);
        }
        assert_eq!(c.rate(), Some(10.0));
        assert_eq!(c.last_rate(), Some(10.0));
    }

    #[test]
    fn rate_with_sparse_samples_uses_the_one_before() {
        let t = Instant::now();
        let mut c = CounterSamples::new(Duration::from_secs(1), 10);
        c.push(t, 0);
        c.push(t + Duration::from_secs(5), 50);
        assert_eq!(c.rate(), Some(10.0));
    }

    #[test]
    fn a_counter_going_back_starts_over() {
        let t = Instant::now();
        let mut c = CounterSamples::new(Duration::from_secs(10), 10);
        c.push(t, 500);
        c.push(t + Duration::from_secs(1), 600);
        c.push(t + Duration::from_secs(2), 10);
        assert_eq!(c.rate(), None);
        c.push(t + Duration::from_secs(3), 30);
        assert_eq!(c.rate(), Some(20.0));
    }

    #[test]
    fn eta_needs_a_total_and_a_rate() {
        assert_eq!(eta_s(25, Some(100), Some(5.0)), Some(15.0));
        assert_eq!(eta_s(100, Some(100), None), Some(0.0));
        assert_eq!(eta_s(25, None, Some(5.0)), None);
        assert_eq!(eta_s(25, Some(100), None), None);
        assert_eq!(eta_s(25, Some(100), Some(0.0)), None);
        assert_eq!(eta_s(25, Some(100), Some(f64::NAN)), None);
    }
}
