//! Where to reopen a container's log stream so that nothing is lost and nothing repeats.
//!
//! Docker's `since` is inclusive and filters by timestamp, while the stream comes in the order
//! of the log file. The order of the file is not quite the order of the timestamps: stdout and
//! stderr are stamped by separate goroutines before they are written, so a stderr line can
//! land in the file after a stdout line stamped later (seen here: by 0.2 ms). Reopening at
//! the newest timestamp seen would then lose such a line.
//!
//! So the resume point is `since = newest - overlap` with a count of lines to skip: the lines
//! already emitted form a prefix of the file, so among the lines a reopened stream returns
//! (those stamped at or after `since`, in file order) the ones already emitted come first,
//! and there are exactly as many as were emitted with a timestamp at or after `since`. That
//! holds as long as no line is written to the file more than `overlap` after a line stamped
//! later; the default overlap, one second, is far beyond the skew seen.
//!
//! The tracker keeps `since` fixed while it can, counting lines at or after it, and moves it
//! forward only when it lags two overlaps behind, so each line costs O(1) amortized and the
//! memory is bounded by the lines of two overlaps.
//!
//! After a restart only `(since, skip)` is known, not the timestamps of the `skip` lines: they
//! are placeholders, filled in as the reopened stream skips them, and `since` does not move
//! until all are known. A placeholder is only a count until its line arrives, so a corrupt or
//! hostile `skip` costs no memory (the positions file refuses one over `MAX_SKIP` anyway).
//! With the saved timestamp of the newest line delivered ([`ResumeTracker::with_newest`]), a
//! returned line stamped after it ends the skip at once: it cannot be a repeat, so the
//! placeholders not seen yet were deleted by dockerd's `max-file` while the capturer was down.

use std::collections::VecDeque;

use crate::state::positions::Resume;

#[derive(Clone, Debug)]
pub struct ResumeTracker {
    overlap_ns: i64,
    since_ns: Option<i64>,
    /// Timestamps of the emitted lines stamped at or after `since_ns`, in file order.
    recent: VecDeque<i64>,
    /// The first `unknown` lines are placeholders from a committed position, not yet seen
    /// again: `recent` holds those seen on the current stream, `pending` counts the rest.
    unknown: usize,
    pending: usize,
    newest_ns: Option<i64>,
    /// Lines the current stream returns that were emitted before: `recent[..to_skip]`.
    to_skip: usize,
    skipped: usize,
    /// Skipped lines whose timestamp differed from the one recorded: the file order changed
    /// under us, or the skew exceeded the overlap. Reported, never silently absorbed.
    mismatches: u64,
    /// The newest line delivered before a restart (`with_newest`).
    saved_newest: Option<i64>,
    /// Lines of a committed skip found deleted (see `with_newest`).
    gone: u64,
}

impl ResumeTracker {
    /// A container read from its first line.
    pub fn new(overlap_ns: i64) -> Self {
        ResumeTracker {
            overlap_ns,
            since_ns: None,
            recent: VecDeque::new(),
            unknown: 0,
            pending: 0,
            newest_ns: None,
            to_skip: 0,
            skipped: 0,
            mismatches: 0,
            saved_newest: None,
            gone: 0,
        }
    }

    /// A container read from `since_ns` on with nothing emitted yet (new containers read from
    /// "now").
    pub fn starting_at(overlap_ns: i64, since_ns: i64) -> Self {
        ResumeTracker {
            since_ns: Some(since_ns),
            ..ResumeTracker::new(overlap_ns)
        }
    }

    /// A container resumed from a committed position.
    pub fn resuming(overlap_ns: i64, resume: Resume) -> Self {
        let skip = usize::try_from(resume.skip).unwrap_or(usize::MAX);
        ResumeTracker {
            since_ns: Some(resume.since_ns),
            unknown: skip,
            pending: skip,
            ..ResumeTracker::new(overlap_ns)
        }
    }

    /// After a restart, the saved timestamp of the newest line delivered (`last_log_time_ns`):
    /// every line of the committed skip is stamped at or before it, so a returned line stamped
    /// after it is new even while the skip is not used up (its lines were rotated away).
    pub fn with_newest(mut self, newest_ns: Option<i64>) -> Self {
        if self.unknown > 0 {
            self.saved_newest = newest_ns;
            self.newest_ns = newest_ns;
        }
        self
    }

    /// Lines of a committed skip that the reopened stream no longer had (deleted by dockerd's
    /// rotation while the capturer was down).
    pub fn gone(&self) -> u64 {
        self.gone
    }

    /// A new stream is being opened: where it must start. `None`: from the first line.
    pub fn reopen(&mut self) -> Option<Resume> {
        if self.unknown > 0 {
            // Placeholders seen on a stream that ended before all were: unknown again.
            self.recent.clear();
            self.pending = self.unknown;
        }
        self.to_skip = self.len();
        self.skipped = 0;
        self.resume()
    }

    /// A line of the current stream, stamped `ts`: true if it is new and must be emitted,
    /// false if it was emitted before (the overlap of a reopened stream).
    pub fn admit(&mut self, ts: i64) -> bool {
        // Placeholders are compared with the saved newest only: the newest of those seen so
        // far says nothing about the next one.
        let newest = if self.unknown == 0 {
            self.newest_ns
        } else {
            self.saved_newest
        };
        if self.skipped < self.to_skip && newest.is_some_and(|newest| ts > newest) {
            // Stamped after every line emitted, so not a repeat: the lines still expected
            // are gone from the log (dockerd deleted the rotated files holding them, which
            // its follow reader had skipped, or which rotated away while the capturer was
            // down). No stream can repeat them any more.
            self.mismatches += 1;
            if self.unknown > 0 {
                self.gone += (self.unknown - self.skipped) as u64;
                self.unknown = 0;
                self.pending = 0;
            }
            self.recent.truncate(self.skipped);
            self.to_skip = self.skipped;
        }
        if self.skipped < self.to_skip {
            let j = self.skipped;
            if j < self.unknown {
                self.recent.push_back(ts);
                self.pending -= 1;
                self.newest_ns = Some(self.newest_ns.map_or(ts, |n| n.max(ts)));
            } else if self.recent[j] != ts {
                self.mismatches += 1;
            }
            self.skipped += 1;
            if self.skipped >= self.unknown {
                self.unknown = 0;
            }
            return false;
        }
        self.record(ts);
        true
    }

    /// A line of the current stream's repeated part that the caller knows was never emitted
    /// (by its text: dockerd's follow reader had skipped it): it is emitted now, in its place
    /// in the file order, without using up a line of the skip. False (nothing done) when the
    /// stream is not in its repeated part, or the repeated lines are not all known yet (after
    /// a restart): then [`admit`](Self::admit) decides.
    pub fn admit_unseen(&mut self, ts: i64) -> bool {
        if self.skipped >= self.to_skip || self.unknown > 0 {
            return false;
        }
        if self.since_ns.is_some_and(|since| ts >= since) {
            self.recent.insert(self.skipped, ts);
            self.skipped += 1;
            self.to_skip += 1;
        }
        self.newest_ns = Some(self.newest_ns.map_or(ts, |n| n.max(ts)));
        true
    }

    fn record(&mut self, ts: i64) {
        let since = *self
            .since_ns
            .get_or_insert(ts.saturating_sub(self.overlap_ns));
        let newest = self.newest_ns.map_or(ts, |n| n.max(ts));
        self.newest_ns = Some(newest);
        if ts >= since {
            self.recent.push_back(ts);
        }
        if self.unknown == 0 && newest.saturating_sub(since) > self.overlap_ns.saturating_mul(2) {
            let since = newest - self.overlap_ns;
            self.since_ns = Some(since);
            self.recent.retain(|&t| t >= since);
            // Nothing is being skipped: record() only runs once the skip is done.
            self.to_skip = 0;
            self.skipped = 0;
        }
    }

    /// The position after every line admitted so far: what to commit once they are delivered.
    /// `None` before any line (read from the start).
    pub fn resume(&self) -> Option<Resume> {
        self.since_ns.map(|since_ns| Resume {
            since_ns,
            skip: self.len() as u64,
        })
    }

    /// Lines emitted at or after `since_ns`, placeholders included.
    fn len(&self) -> usize {
        self.recent.len() + self.pending
    }

    /// The newest timestamp seen.
    pub fn newest_ns(&self) -> Option<i64> {
        self.newest_ns
    }

    /// Lines still to skip on the current stream.
    pub fn skipping(&self) -> usize {
        self.to_skip - self.skipped
    }

    pub fn mismatches(&self) -> u64 {
        self.mismatches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log file (timestamps in file order), read through streams that are cut after a
    /// number of lines each and reopened from the tracker, the capturer "restarting" (only the
    /// committed position survives) at some cuts. Returns the indices of the lines emitted.
    fn read_with_cuts(file: &[i64], cuts: &[(usize, bool)], overlap: i64) -> Vec<usize> {
        let mut tracker = ResumeTracker::new(overlap);
        let mut emitted = Vec::new();
        let mut cuts = cuts.iter().copied();
        loop {
            let start = tracker.reopen();
            let returned: Vec<usize> = match start {
                None => (0..file.len()).collect(),
                Some(r) => (0..file.len()).filter(|&i| file[i] >= r.since_ns).collect(),
            };
            let (take, restart) = cuts.next().unwrap_or((usize::MAX, false));
            for &i in returned.iter().take(take) {
                if tracker.admit(file[i]) {
                    emitted.push(i);
                }
            }
            if take >= returned.len() {
                return emitted;
            }
            if restart {
                tracker = match tracker.resume() {
                    Some(r) => ResumeTracker::resuming(overlap, r),
                    None => ResumeTracker::new(overlap),
                };
            }
        }
    }

    fn skew_within(file: &[i64], overlap: i64) -> bool {
        (0..file.len()).all(|i| file[i + 1..].iter().all(|&b| b >= file[i] - overlap))
    }

    #[test]
    fn every_cut_resumes_exactly_after_what_was_read() {
        // Equal timestamps, and lines written after later-stamped ones (stderr skew).
        let file = [
            10, 20, 20, 20, 35, 30, 40, 41, 41, 60, 55, 100, 400, 390, 1000, 1000,
        ];
        for overlap in [10, 11, 50, 1000] {
            assert!(skew_within(&file, overlap));
            for a in 0..=file.len() {
                for b in 0..=4 {
                    for restart in [(false, false), (true, false), (false, true), (true, true)] {
                        let cuts = [(a, restart.0), (b, restart.1), (1, false), (3, true)];
                        let got = read_with_cuts(&file, &cuts, overlap);
                        assert_eq!(
                            got,
                            (0..file.len()).collect::<Vec<_>>(),
                            "overlap {overlap}, cuts {cuts:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn since_moves_forward_and_memory_stays_bounded() {
        let mut tracker = ResumeTracker::new(100);
        tracker.reopen();
        for ts in 0..100_000 {
            assert!(tracker.admit(ts));
        }
        let resume = tracker.resume().unwrap();
        assert!(resume.since_ns >= 100_000 - 1 - 200, "{resume:?}");
        assert!(tracker.recent.len() <= 201);
        assert_eq!(resume.skip as i64, 100_000 - resume.since_ns);
    }

    #[test]
    fn lines_gone_from_the_log_end_the_skip_at_the_first_newer_line() {
        let mut tracker = ResumeTracker::new(1000);
        tracker.reopen();
        for ts in [10, 20, 30, 40] {
            assert!(tracker.admit(ts));
        }
        // dockerd deleted the file holding 30 and 40: the reopened stream repeats 10 and 20,
        // then goes on with lines never emitted.
        tracker.reopen();
        assert!(!tracker.admit(10));
        assert!(!tracker.admit(20));
        assert!(tracker.admit(50));
        assert!(tracker.admit(60));
        assert_eq!(tracker.mismatches(), 1);
        // The next reopen expects exactly the lines that can still come again.
        assert_eq!(tracker.resume().unwrap().skip, 4);
        tracker.reopen();
        for ts in [10, 20, 50, 60] {
            assert!(!tracker.admit(ts));
        }
        assert!(tracker.admit(70));
        assert_eq!(tracker.mismatches(), 1);
    }

    #[test]
    fn lines_after_the_saved_newest_end_a_committed_skip_rotated_away_while_down() {
        let resume = Resume {
            since_ns: 80,
            skip: 3,
        };
        // Two of the three lines delivered before the stop are still in the log.
        let mut tracker = ResumeTracker::resuming(1000, resume).with_newest(Some(100));
        tracker.reopen();
        assert!(!tracker.admit(90));
        assert!(!tracker.admit(95));
        assert!(tracker.admit(200), "stamped after the saved newest: new");
        assert!(tracker.admit(210));
        assert_eq!(tracker.gone(), 1);
        // None of them left: every returned line is new.
        let mut tracker = ResumeTracker::resuming(1000, resume).with_newest(Some(100));
        tracker.reopen();
        for ts in [300, 310, 320, 330] {
            assert!(tracker.admit(ts));
        }
        assert_eq!(tracker.gone(), 3);
        // A later reopen repeats only what this run emitted.
        let again = tracker.reopen().unwrap();
        assert_eq!(again.skip, 4);
        // Without the saved newest (an older positions file) the skip is obeyed, as before.
        let mut tracker = ResumeTracker::resuming(1000, resume);
        tracker.reopen();
        assert!(!tracker.admit(300));
    }

    #[test]
    fn a_line_never_emitted_in_the_repeated_part_is_emitted_in_its_place() {
        let mut tracker = ResumeTracker::new(1000);
        tracker.reopen();
        // dockerd's follow reader skipped 30 and 40 (in a file that rotated under it).
        for ts in [10, 20, 50] {
            assert!(tracker.admit(ts));
        }
        tracker.reopen();
        assert!(!tracker.admit(10));
        assert!(!tracker.admit(20));
        assert!(tracker.admit_unseen(30));
        assert!(tracker.admit_unseen(40));
        assert!(!tracker.admit(50));
        assert!(tracker.admit(60));
        assert!(!tracker.admit_unseen(70), "not in the repeated part");
        assert_eq!(tracker.mismatches(), 0);
        // The next reopen repeats the file in order, every line known.
        tracker.reopen();
        for ts in [10, 20, 30, 40, 50, 60] {
            assert!(!tracker.admit(ts));
        }
        assert!(tracker.admit(80));
        assert_eq!(tracker.mismatches(), 0);
    }

    #[test]
    fn a_reordered_file_is_counted_as_a_mismatch() {
        let mut tracker = ResumeTracker::new(10);
        tracker.reopen();
        for ts in [1, 2, 3] {
            tracker.admit(ts);
        }
        tracker.reopen();
        assert!(!tracker.admit(1));
        assert!(!tracker.admit(3));
        assert_eq!(tracker.mismatches(), 1);
    }

    #[test]
    fn a_huge_committed_skip_allocates_nothing_until_lines_come() {
        let resume = Resume {
            since_ns: 5,
            skip: u64::MAX,
        };
        let mut tracker = ResumeTracker::resuming(10, resume);
        assert_eq!(tracker.reopen(), Some(resume));
        assert_eq!(tracker.recent.capacity(), 0);
        for ts in [5, 6, 7] {
            assert!(!tracker.admit(ts));
        }
        assert!(tracker.recent.len() <= 3);
        assert_eq!(tracker.resume(), Some(resume));
    }

    proptest::proptest! {
        #[test]
        fn random_files_and_cuts(
            steps in proptest::collection::vec((0i64..40, 0i64..1000), 1..80),
            cuts in proptest::collection::vec((0usize..12, proptest::bool::ANY), 0..25),
            overlap in 1i64..60,
        ) {
            // Stamps grow by the step, less a jitter under the overlap: a file whose skew the
            // overlap covers.
            let mut base = 0;
            let file: Vec<i64> = steps
                .iter()
                .map(|&(step, jitter)| {
                    base += step;
                    base - jitter % overlap
                })
                .collect();
            proptest::prop_assert!(skew_within(&file, overlap));
            let got = read_with_cuts(&file, &cuts, overlap);
            proptest::prop_assert_eq!(got, (0..file.len()).collect::<Vec<_>>());
        }
    }
}
