//! How a stream is reopened without making dockerd decode the whole log file: the last lines
//! of the log (`tail=N`), filtered by the resume point on our side, proven to reach back far
//! enough, and widened when they cannot be shown to.
//!
//! Why not `since`: dockerd's json-file and `local` readers (moby `loggerutils/logfile.go`,
//! 20.10 and current) apply `since` by decoding every file of the log from its start and
//! dropping older lines: 4.8 CPU-s for a 256 MB log, at every reopen (moby#31935). `tail=N`
//! instead finds the last N lines from the end of the files (rotated ones included), sends
//! them in file order, then follows from the very position the tail ended at (the size of the
//! current file when the request came): nothing between the two parts is lost or repeated.
//! `since` and `until` are applied to the tail's lines after it is cut, so `since` would hide
//! what tells us whether the tail reached back far enough; it is therefore not sent, and the
//! same filter (`ts >= since`) is applied here ([`Window::line`]).
//!
//! When the window covers the resume point: the stream must return every line of the file
//! stamped at or after `since`, in file order (what [`crate::sources::docker::resume`] counts on). A line L
//! before the window's first line F in the file is stamped at most `overlap` after F (the
//! skew bound [`crate::sources::docker::resume`] assumes). So once any line of the window is stamped before
//! `since - overlap` (the guard), no line before the window can be at or after `since`, and
//! the window covers. The decision is taken at the first line stamped at or after `since`,
//! before anything is admitted: covered if an earlier line of the window was older than the
//! guard; otherwise the window is widened (x[`WIDEN`]) and reopened, up to [`MAX_TAIL`]
//! lines, and then the plain `since` query is used (always right, O(file) for dockerd). An
//! idle container's window holds only old lines and stays undecided until a new line comes,
//! which costs nothing: nothing waits on the decision.
//!
//! N is sized from what is known: the lines per second the container's last stream delivered,
//! times the time from the guard to now, twice over, plus the lines the reopened stream will
//! skip; at least [`MIN_TAIL`]. A container never read before (no resume point) is read from
//! its first line without a tail. `--once` reads use `since` (read once, nothing to save).

use std::time::Duration;

/// The smallest window: `tail=1000` costs dockerd ~10 ms on a 256 MB log (BENCHMARKS.md).
pub const MIN_TAIL: u64 = 1000;
/// The largest window tried before the plain `since`: ~0.9 CPU-s of dockerd's at ~9 us a
/// line (`tail=10000` took 90 ms), a fifth of one `since` on a 256 MB log.
pub const MAX_TAIL: u64 = 100_000;
/// How much a window that did not cover grows.
pub const WIDEN: u64 = 16;

/// What a reopened stream asks for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// `tail=N`; lines before `since_ns` are dropped here.
    Tail(u64),
    /// The plain `since` query.
    Since,
}

/// Picks the request of the `attempt`-th reopen in a row whose windows did not cover
/// (0 = first). `rate`: lines per second of the container, `span`: from the guard to now,
/// `skip`: lines the stream will repeat.
pub fn ask(attempt: u32, rate: f64, span: Duration, skip: u64) -> Ask {
    let expected = (rate * span.as_secs_f64() * 2.0).ceil();
    let first = (expected.min(u64::MAX as f64) as u64)
        .saturating_add(skip)
        .max(MIN_TAIL);
    let n = first.saturating_mul(WIDEN.saturating_pow(attempt));
    match attempt {
        0 if n <= MAX_TAIL => Ask::Tail(n),
        // One widening at most, capped: past it a `since` costs dockerd less than more tries.
        1 if first < MAX_TAIL => Ask::Tail(n.min(MAX_TAIL)),
        _ => Ask::Since,
    }
}

/// What to do with a line of a windowed stream.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Stamped before `since`: not part of the resumed stream (dockerd's `since` would have
    /// dropped it).
    Before,
    /// At or after `since`, and the window covers: on to the resume tracker.
    Pass,
    /// At or after `since`, and the window cannot be shown to cover: reopen wider.
    Widen,
}

/// The filter of one windowed stream. See the module docs.
#[derive(Clone, Debug)]
pub struct Window {
    since_ns: i64,
    guard_ns: i64,
    covered: bool,
}

impl Window {
    pub fn new(since_ns: i64, overlap_ns: i64) -> Self {
        Window {
            since_ns,
            guard_ns: since_ns.saturating_sub(overlap_ns),
            covered: false,
        }
    }

    pub fn line(&mut self, ts: i64) -> Verdict {
        if ts < self.since_ns {
            self.covered |= ts < self.guard_ns;
            Verdict::Before
        } else if self.covered {
            Verdict::Pass
        } else {
            Verdict::Widen
        }
    }

    pub fn covered(&self) -> bool {
        self.covered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn sized_from_the_rate_then_widened_once_then_since() {
        assert_eq!(ask(0, 0.0, S, 0), Ask::Tail(MIN_TAIL));
        assert_eq!(ask(0, 1000.0, 3 * S, 5), Ask::Tail(6005));
        assert_eq!(ask(1, 1000.0, 3 * S, 5), Ask::Tail(6005 * WIDEN));
        assert_eq!(ask(1, 10_000.0, 3 * S, 0), Ask::Tail(MAX_TAIL));
        assert_eq!(ask(1, 0.0, S, 0), Ask::Tail(MIN_TAIL * WIDEN));
        assert_eq!(ask(2, 0.0, S, 0), Ask::Since);
        // A backlog larger than any window: `since` at once.
        assert_eq!(ask(0, 80_000.0, 3 * S, 0), Ask::Since);
        assert_eq!(ask(0, 0.0, S, MAX_TAIL + 1), Ask::Since);
        assert_eq!(ask(0, f64::INFINITY, S, u64::MAX), Ask::Since);
    }

    #[test]
    fn covers_only_once_a_line_older_than_the_guard_came() {
        // since 100, overlap 10: guard 90.
        let mut w = Window::new(100, 10);
        assert_eq!(w.line(95), Verdict::Before);
        assert!(!w.covered());
        assert_eq!(
            w.line(100),
            Verdict::Widen,
            "95 could follow a line stamped 105"
        );
        let mut w = Window::new(100, 10);
        assert_eq!(w.line(50), Verdict::Before);
        assert_eq!(w.line(97), Verdict::Before);
        assert_eq!(w.line(100), Verdict::Pass);
        // Skewed lines under since stay out, as dockerd's since would leave them.
        assert_eq!(w.line(99), Verdict::Before);
        assert_eq!(w.line(120), Verdict::Pass);
    }

    /// A file with skew within the overlap, resumed through a tail window of every size: the
    /// lines passed are exactly those `since` returns whenever the window says it covers.
    #[test]
    fn a_covering_window_passes_what_since_would() {
        let file = [10, 20, 20, 35, 30, 40, 41, 60, 55, 100, 95, 130, 131];
        let overlap = 10;
        for since in [20, 30, 41, 56, 96, 131] {
            let want: Vec<usize> = (0..file.len()).filter(|&i| file[i] >= since).collect();
            for n in 1..=file.len() {
                let mut w = Window::new(since, overlap);
                let mut got = Vec::new();
                let mut widened = false;
                for (i, &ts) in file.iter().enumerate().skip(file.len() - n) {
                    match w.line(ts) {
                        Verdict::Before => {}
                        Verdict::Pass => got.push(i),
                        Verdict::Widen => {
                            widened = true;
                            break;
                        }
                    }
                }
                if !widened && w.covered() {
                    assert_eq!(got, want, "since {since}, tail {n}");
                }
                if n == file.len() && file[0] < since - overlap {
                    assert!(!widened, "the whole file covers (since {since})");
                }
            }
        }
    }
}
