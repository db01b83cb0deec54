//! The successor of the Go version's goroutine tracker: periodic samples of the live thread
//! count against a baseline taken at start, with the Go thresholds on the growth rate
//! (warning over 10 per minute, critical over 30 per minute).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::procinfo;
use crate::config::format_duration;
use crate::decode::timestamp::format_rfc3339_nanos;

/// Growth per minute above which the status is `warning`.
pub const WARN_PER_MIN: f64 = 10.0;
/// Growth per minute above which the status is `critical`.
pub const CRITICAL_PER_MIN: f64 = 30.0;
/// Samples kept for `max_seen` and the recent trend.
const KEEP: usize = 1024;

#[derive(Debug)]
struct Inner {
    baseline: usize,
    samples: VecDeque<(Instant, usize)>,
    collected: u64,
    max_seen: usize,
    last_check: SystemTime,
}

/// Samples of the live thread count. `sample` is called by the sampler thread every
/// `interval`; `stats` at any time.
#[derive(Debug)]
pub struct ThreadTracker {
    started: Instant,
    interval: Duration,
    count: fn() -> usize,
    inner: Mutex<Inner>,
}

/// What `/goroutines/stats` answers (Go keys first).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TrackerStats {
    pub baseline_goroutines: usize,
    pub current_goroutines: usize,
    pub total_growth: i64,
    pub growth_rate_per_min: f64,
    pub samples_collected: u64,
    pub status: &'static str,
    pub max_seen: usize,
    /// Go duration string since the tracker started.
    pub uptime: String,
    pub last_check: String,
    pub sample_interval_seconds: f64,
    /// Ours: what is counted.
    pub counts: &'static str,
}

impl ThreadTracker {
    /// Takes the baseline now.
    pub fn new(interval: Duration) -> Self {
        Self::with_counter(interval, procinfo::threads)
    }

    /// With another source of counts (tests).
    pub fn with_counter(interval: Duration, count: fn() -> usize) -> Self {
        let now = Instant::now();
        let baseline = count();
        ThreadTracker {
            started: now,
            interval,
            count,
            inner: Mutex::new(Inner {
                baseline,
                samples: VecDeque::from([(now, baseline)]),
                collected: 1,
                max_seen: baseline,
                last_check: SystemTime::now(),
            }),
        }
    }

    /// Takes the baseline again, now (once every long-lived thread has started).
    pub fn rebase(&self) {
        let n = (self.count)();
        let mut inner = self.inner.lock().unwrap();
        inner.baseline = n;
        inner.max_seen = inner.max_seen.max(n);
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Records the live count now.
    pub fn sample(&self) {
        let n = (self.count)();
        let mut inner = self.inner.lock().unwrap();
        if inner.samples.len() == KEEP {
            inner.samples.pop_front();
        }
        inner.samples.push_back((Instant::now(), n));
        inner.collected += 1;
        inner.max_seen = inner.max_seen.max(n);
        inner.last_check = SystemTime::now();
    }

    /// Growth since the baseline, per minute. The elapsed time counts as at least a minute,
    /// so that a few threads started in the first seconds (HTTP connections) do not read as
    /// a leak rate.
    pub fn stats(&self) -> TrackerStats {
        let current = (self.count)();
        let inner = self.inner.lock().unwrap();
        let elapsed = self.started.elapsed();
        let growth = current as i64 - inner.baseline as i64;
        let minutes = (elapsed.as_secs_f64() / 60.0).max(1.0);
        let rate = growth as f64 / minutes;
        let status = if rate > CRITICAL_PER_MIN {
            "critical"
        } else if rate > WARN_PER_MIN {
            "warning"
        } else {
            "healthy"
        };
        let last_check = inner
            .last_check
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| format_rfc3339_nanos(d.as_nanos() as i64))
            .unwrap_or_default();
        TrackerStats {
            baseline_goroutines: inner.baseline,
            current_goroutines: current,
            total_growth: growth,
            growth_rate_per_min: (rate * 100.0).round() / 100.0,
            samples_collected: inner.collected,
            status,
            max_seen: inner.max_seen.max(current),
            uptime: format_duration(Duration::from_secs(elapsed.as_secs())),
            last_check,
            sample_interval_seconds: self.interval.as_secs_f64(),
            counts: "live threads of the process (/proc/self/task)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    static COUNT: AtomicUsize = AtomicUsize::new(10);

    fn fake() -> usize {
        COUNT.load(Relaxed)
    }

    #[test]
    fn growth_and_status() {
        COUNT.store(10, Relaxed);
        let t = ThreadTracker::with_counter(Duration::from_secs(1), fake);
        let s = t.stats();
        assert_eq!(
            (s.baseline_goroutines, s.total_growth, s.status),
            (10, 0, "healthy")
        );
        COUNT.store(21, Relaxed);
        t.sample();
        let s = t.stats();
        // Under a minute elapsed: divided by one minute.
        assert_eq!(s.total_growth, 11);
        assert_eq!(s.growth_rate_per_min, 11.0);
        assert_eq!(s.status, "warning");
        assert_eq!(s.samples_collected, 2);
        COUNT.store(50, Relaxed);
        assert_eq!(t.stats().status, "critical");
        COUNT.store(9, Relaxed);
        let s = t.stats();
        assert_eq!((s.status, s.max_seen), ("healthy", 21));
    }
}
