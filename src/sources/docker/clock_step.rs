//! Wall-clock steps back, detected by comparing the realtime clock with the monotonic one.
//!
//! dockerd stamps lines with the host's wall clock, and a reopened stream resumes from
//! `since = newest - overlap` ([`crate::sources::docker::resume`]). When the clock steps back by more than the
//! overlap (an NTP correction, a VM restored), lines written after the step are stamped
//! before `since` and a reopen does not return them: about the step's size of lines is lost
//! (`container_monitor.since_overlap` sets the overlap). Nothing here can tell those lines
//! apart, so the step is logged, once per step with its size, and counted.
//!
//! Between two observations the monotonic clock advanced by `m` and the wall clock by `w`;
//! `m - w` beyond [`TOLERANCE`] is a step back of that size. Observations are the capture
//! thread's clock reads (one per poll), so a step is seen within a poll.

use std::time::{Duration, Instant};

/// Differences below this are the two clocks drifting apart (NTP slewing), not a step.
pub const TOLERANCE: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub struct StepDetector {
    last: Option<(Instant, i64)>,
}

impl StepDetector {
    /// Records a pair of clock reads taken together; returns the size of a step back since
    /// the previous pair, if there was one.
    pub fn observe(&mut self, mono: Instant, wall_ns: i64) -> Option<Duration> {
        let previous = self.last.replace((mono, wall_ns));
        let (m0, w0) = previous?;
        let mono_ns = i64::try_from(mono.saturating_duration_since(m0).as_nanos()).ok()?;
        let back = mono_ns.saturating_sub(wall_ns.saturating_sub(w0));
        let back = Duration::from_nanos(u64::try_from(back).ok()?);
        (back > TOLERANCE).then_some(back)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_back_is_reported_once_with_its_size() {
        let t0 = Instant::now();
        let mut d = StepDetector::default();
        let s = 1_000_000_000i64;
        assert_eq!(d.observe(t0, 100 * s), None);
        // Both clocks advance together.
        assert_eq!(d.observe(t0 + Duration::from_secs(1), 101 * s), None);
        // Drift under the tolerance.
        assert_eq!(d.observe(t0 + Duration::from_millis(2050), 102 * s), None);
        // 1 s passes, the wall clock goes back 5 s.
        assert_eq!(
            d.observe(t0 + Duration::from_millis(3050), 97 * s),
            Some(Duration::from_secs(6))
        );
        // Then both advance together again: no second report of the same step.
        assert_eq!(d.observe(t0 + Duration::from_millis(4050), 98 * s), None);
        // A step forward is not a loss.
        assert_eq!(d.observe(t0 + Duration::from_millis(4060), 200 * s), None);
    }
}
