//! Transfer speed over a sliding window of recent byte counts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Samples closer together than this replace each other, which bounds the
/// window to about `window / MIN_SPACING` samples however often records come.
const MIN_SPACING: Duration = Duration::from_millis(100);

/// Speed of one transfer, from the samples of the last `window`.
#[derive(Debug, Clone)]
pub(crate) struct Rate {
    window: Duration,
    /// Shortest span of samples for which a speed is reported.
    min_span: Duration,
    /// `(when, bytes so far)`, oldest first; the first one is the newest
    /// sample at least `window` old, when there is one.
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    /// A rate over the last `window`, reported once samples span `min_span`.
    pub(crate) fn new(window: Duration, min_span: Duration) -> Self {
        Rate {
            window,
            min_span,
            samples: VecDeque::new(),
        }
    }

    /// Records that `current` bytes were done at `now`. A count below the
    /// previous one (the transfer started over) forgets the history.
    pub(crate) fn record(&mut self, now: Instant, current: u64) {
        if self.samples.back().is_some_and(|&(_, last)| current < last) {
            self.samples.clear();
        }
        let len = self.samples.len();
        if len >= 2 && now.saturating_duration_since(self.samples[len - 2].0) < MIN_SPACING {
            self.samples[len - 1] = (now, current);
        } else {
            self.samples.push_back((now, current));
        }
        while self.samples.len() > 2
            && now.saturating_duration_since(self.samples[1].0) >= self.window
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window, once the samples span `min_span`.
    pub(crate) fn per_second(&self) -> Option<f64> {
        let (&(start, from), &(end, to)) = (self.samples.front()?, self.samples.back()?);
        let span = end.saturating_duration_since(start);
        (span >= self.min_span && span > Duration::ZERO)
            .then(|| to.saturating_sub(from) as f64 / span.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_is_bytes_over_the_recent_window() {
        let t0 = Instant::now();
        let mut rate = Rate::new(Duration::from_secs(3), Duration::from_secs(1));
        rate.record(t0, 0);
        rate.record(t0 + Duration::from_millis(500), 500);
        assert_eq!(
            rate.per_second(),
            None,
            "half a second is too short to tell"
        );
        rate.record(t0 + Duration::from_secs(1), 1_000);
        assert_eq!(rate.per_second(), Some(1_000.0));
        // Slower later: the window forgets the fast start.
        for s in 2..=10 {
            rate.record(t0 + Duration::from_secs(s), 1_000 + (s - 1) * 100);
        }
        assert_eq!(rate.per_second(), Some(100.0));
    }

    #[test]
    fn a_restarted_transfer_starts_a_new_history() {
        let t0 = Instant::now();
        let mut rate = Rate::new(Duration::from_secs(3), Duration::from_secs(1));
        rate.record(t0, 5_000);
        rate.record(t0 + Duration::from_secs(2), 9_000);
        rate.record(t0 + Duration::from_secs(3), 100);
        assert_eq!(rate.per_second(), None);
        rate.record(t0 + Duration::from_secs(5), 300);
        assert_eq!(rate.per_second(), Some(100.0));
    }

    #[test]
    fn frequent_records_keep_few_samples() {
        let t0 = Instant::now();
        let mut rate = Rate::new(Duration::from_secs(3), Duration::from_secs(1));
        for ms in 0..10_000 {
            rate.record(t0 + Duration::from_millis(ms), ms * 10);
        }
        assert!(
            rate.samples.len() <= 40,
            "kept {} samples",
            rate.samples.len()
        );
        assert_eq!(rate.per_second().map(f64::round), Some(10_000.0));
    }
}
