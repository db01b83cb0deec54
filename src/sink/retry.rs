//! Retry policy for sinks: exponential backoff with jitter.
//!
//! The caller holds the failed batch, sleeps [`Backoff::delay`] (or the server's
//! `Retry-After`, whichever is longer) and calls `write_batch` again, with no limit on attempts:
//! a batch is given up only on a permanent error, so positions never pass undelivered lines.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Exponential backoff: attempt `n` (0 for the first retry) waits
/// `min(max, initial * multiplier^n)`, scaled into `[1 - jitter, 1]` of that by the random
/// number given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    /// 0.0 (none) ..= 1.0 (full jitter: anywhere in `[0, base]`).
    pub jitter: f64,
}

impl Default for Backoff {
    /// 500 ms, doubling, capped at 30 s, with half jitter.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based), with `rand01` a uniform random number
    /// in `[0, 1)`. A pure function: same inputs, same delay.
    pub fn delay(&self, attempt: u32, rand01: f64) -> Duration {
        let max = self.max.as_secs_f64();
        let mult = if self.multiplier.is_finite() && self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        let exp = mult.powi(attempt.min(1024) as i32);
        let base = (self.initial.as_secs_f64() * exp).min(max);
        let base = if base.is_finite() { base } else { max };
        let jitter = self.jitter.clamp(0.0, 1.0);
        let r = rand01.clamp(0.0, 1.0);
        let d = base * (1.0 - jitter + jitter * r);
        Duration::from_secs_f64(d.clamp(0.0, max.max(0.0)))
    }

    /// [`Backoff::delay`] with a random number from [`rand01`].
    pub fn delay_random(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand01())
    }
}

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// A uniform number in `[0, 1)` from a per-thread xorshift generator seeded from the clock and
/// the thread: enough to spread retries, not for anything else.
pub fn rand01() -> f64 {
    RNG.with(|c| {
        let mut x = c.get();
        if x == 0 {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            // RandomState is seeded per process and per thread by the standard library.
            x = RandomState::new().hash_one(t) | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.0,
        };
        let ms: Vec<u128> = (0..8).map(|a| b.delay(a, 0.7).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.delay(u32::MAX, 0.3), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_in_band() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(250));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(500));
        assert_eq!(b.delay(2, 0.5), Duration::from_millis(1500));
        for a in 0..20 {
            for _ in 0..50 {
                let d = b.delay_random(a);
                let base = (0.5 * 2f64.powi(a as i32)).min(30.0);
                assert!(d.as_secs_f64() >= base * 0.5 - 1e-9 && d.as_secs_f64() <= base + 1e-9);
            }
        }
    }

    #[test]
    fn rand01_in_range_and_varies() {
        let v: Vec<f64> = (0..1000).map(|_| rand01()).collect();
        assert!(v.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }
}
