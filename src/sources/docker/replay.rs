//! Lines dockerd sends twice on one follow stream, recognised and dropped.
//!
//! With `--log-opt max-size/max-file`, dockerd 20.10's follow reader replays part of the
//! rotated file when the json-file rotates under it: after the rotation the same stream carries
//! again lines it already sent, with their original timestamps and text, then goes on with new
//! lines. Measured here (max-size=1m, max-file=3): a writer at 15,000 lines/s saw replays of
//! 14 to 333 lines at each rotation; a burst of 300,000 lines saw replays of a whole file
//! (13,000 lines). A replay always ends at the newest line sent before it.
//!
//! Within one stream (stdout or stderr) of one container dockerd's timestamps only go back at
//! such a replay; across the two streams they do not follow each other (see
//! [`crate::sources::docker::resume`]), so each stream has its own window. A line is a replay when its
//! timestamp is not after the newest one its stream delivered and the window holds a line with
//! the same timestamp and the same text. A line stamped earlier with new text (the host's clock
//! stepped back) is delivered and remembered in its place, so the window stays sorted by
//! timestamp and a lookup is a binary search. Lines under the newest timestamp with new text (pieces of
//! an over-long line) are new and remembered. The only cost a new line pays is hashing its text.
//! Until a stepped-back clock passes the newest timestamp again, each of its lines is inserted
//! into the middle of the window (a shift of up to half of it).
//!
//! dockerd's follow reader can also skip a whole file that rotates under it (seen here at
//! 15,000 lines/s on a loaded machine), and ends at a container's stop without reading the
//! files it had fallen behind on. A replay shows that the log rotated under the stream
//! ([`ReplayFilter::take_replay_seen`], [`ReplayFilter::take_rotation_seen`]): the capture then
//! reopens the stream from its resume point, and, among the lines the reopened stream repeats,
//! [`ReplayFilter::recover`] tells the ones never delivered (the window spans their timestamp
//! but lacks them) so that they are delivered, late, instead of skipped (see `crate::sources::docker::capture`).
//!
//! The window is bounded per stream by count ([`WINDOW_LINES`]) and by age behind the stream's
//! newest line ([`WINDOW_AGE_NS`]): at most 512 KiB per stream. A replay reaching further back
//! than the window is delivered again; [`ReplayFilter::check`] says so ([`Verdict::Unknown`]),
//! so that it can be counted.

use std::collections::VecDeque;
use std::hash::Hasher as _;

use rustc_hash::FxHasher;

use crate::decode::StreamKind;

/// Lines remembered per stream: a whole 1 MiB json-file of short lines (the burst above), and
/// the part a reopened stream repeats (up to two resume overlaps, 2 s) at 15,000 lines/s, so
/// that what dockerd's follow reader skipped is told from what it sent.
pub const WINDOW_LINES: usize = 32_768;
/// How far behind its stream's newest line a line is still remembered. Replays seen reach
/// back milliseconds at a steady rate; a slow writer's last lines before a rotation can be
/// minutes old.
pub const WINDOW_AGE_NS: i64 = 300_000_000_000;

/// What [`ReplayFilter::check`] found.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Newer than anything its stream delivered: deliver it (it is now remembered).
    New,
    /// A line delivered recently, sent again: drop it.
    Replay,
    /// Stamped at or before the newest delivered line, and not in the window: new text under
    /// an earlier time (a clock step), or a replay older than the window. Deliver it.
    Unknown,
}

/// The recent lines of one stream: `(timestamp, text hash)`, ascending timestamps.
#[derive(Clone, Debug, Default)]
struct Window {
    recent: VecDeque<(i64, u64)>,
}

impl Window {
    fn newest(&self) -> Option<i64> {
        self.recent.back().map(|&(ts, _)| ts)
    }

    fn push(&mut self, ts: i64, hash: u64) {
        let oldest_kept = ts.saturating_sub(WINDOW_AGE_NS);
        while self
            .recent
            .front()
            .is_some_and(|&(t, _)| t < oldest_kept || self.recent.len() >= WINDOW_LINES)
        {
            self.recent.pop_front();
        }
        self.recent.push_back((ts, hash));
    }

    /// Remembers a line older than the newest one, in its place.
    fn insert(&mut self, ts: i64, hash: u64) {
        let at = self.recent.partition_point(|&(t, _)| t <= ts);
        self.recent.insert(at, (ts, hash));
        if self.recent.len() > WINDOW_LINES {
            self.recent.pop_front();
        }
    }

    fn contains(&self, ts: i64, hash: u64) -> bool {
        let first = self.recent.partition_point(|&(t, _)| t < ts);
        self.recent
            .range(first..)
            .take_while(|&&(t, _)| t == ts)
            .any(|&(_, h)| h == hash)
    }
}

/// The replay windows of one container: one per stream.
#[derive(Clone, Debug, Default)]
pub struct ReplayFilter {
    streams: [Window; 2],
    /// A replay was seen since [`ReplayFilter::take_rotation_seen`] was last called.
    rotation_seen: bool,
    /// The same, for [`ReplayFilter::take_replay_seen`].
    replay_seen: bool,
    /// Off ([`ReplayFilter::off`]): nothing is remembered and every line is new.
    off: bool,
}

fn hash(text: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(text);
    h.finish()
}

fn index(stream: StreamKind) -> usize {
    match stream {
        StreamKind::Stdout => 0,
        StreamKind::Stderr => 1,
    }
}

impl ReplayFilter {
    pub fn new() -> Self {
        ReplayFilter::default()
    }

    /// A filter for a container whose log dockerd never rotates (json-file without
    /// `max-size`): its follow reader has no rotation to replay or skip lines at, so there is
    /// nothing to remember. Without this every container kept up to 5 minutes of its lines'
    /// hashes: 1000 containers at 20 lines/s held 100 MiB after 4 minutes.
    pub fn off() -> Self {
        ReplayFilter {
            off: true,
            ..ReplayFilter::default()
        }
    }

    /// Turns a filter made [`off`](Self::off) on (the inspect at `start` found the log
    /// rotates); one that is on stays as it is.
    pub fn turn_on(&mut self) {
        self.off = false;
    }

    /// A line of the current stream: is it new, or a replay of one delivered before?
    pub fn check(&mut self, stream: StreamKind, ts: i64, text: &[u8]) -> Verdict {
        if self.off {
            return Verdict::New;
        }
        let w = &mut self.streams[index(stream)];
        let hash = hash(text);
        match w.newest() {
            Some(newest) if ts <= newest => {
                if w.contains(ts, hash) {
                    self.rotation_seen = true;
                    self.replay_seen = true;
                    Verdict::Replay
                } else if ts == newest {
                    // Another line under the same timestamp (the pieces of an over-long
                    // line): new, and the window stays sorted.
                    w.push(ts, hash);
                    Verdict::New
                } else {
                    // Remembered too, in its place: a reopened stream repeating it must not
                    // take it for a line dockerd's follow reader skipped (`recover`).
                    w.insert(ts, hash);
                    Verdict::Unknown
                }
            }
            _ => {
                w.push(ts, hash);
                Verdict::New
            }
        }
    }

    /// A line of the part a reopened stream repeats (see [`crate::sources::docker::resume`]): true when the
    /// window spans its timestamp and does not hold it, so it was never delivered (dockerd's
    /// follow reader had skipped it); it is remembered then. False: delivered before, or not
    /// known (older than the window, or newer than its stream's newest line).
    pub fn recover(&mut self, stream: StreamKind, ts: i64, text: &[u8]) -> bool {
        if self.off {
            return false;
        }
        let w = &mut self.streams[index(stream)];
        let spans = match (w.recent.front(), w.recent.back()) {
            (Some(&(oldest, _)), Some(&(newest, _))) => oldest <= ts && ts <= newest,
            _ => false,
        };
        let hash = hash(text);
        if !spans || w.contains(ts, hash) {
            return false;
        }
        w.insert(ts, hash);
        true
    }

    /// A line delivered before that a reopened stream repeats (see [`crate::sources::docker::resume`]): it is
    /// not checked, only remembered if the window does not have it yet, so that a replay of
    /// it after a restart of the capturer is recognised.
    pub fn remember(&mut self, stream: StreamKind, ts: i64, text: &[u8]) {
        if self.off {
            return;
        }
        let w = &mut self.streams[index(stream)];
        if w.newest().is_none_or(|newest| ts > newest) {
            w.push(ts, hash(text));
        }
    }

    /// True when a replay was seen since the last call: dockerd's log rotated under the
    /// stream, and its follow reader may have skipped lines it had not reached yet.
    pub fn take_rotation_seen(&mut self) -> bool {
        std::mem::take(&mut self.rotation_seen)
    }

    /// The same as [`take_rotation_seen`](Self::take_rotation_seen), kept apart: the capture
    /// reopens a stream at a replay and reads a stopped container once more, each on its own.
    pub fn take_replay_seen(&mut self) -> bool {
        std::mem::take(&mut self.replay_seen)
    }

    /// Lines remembered, both streams.
    pub fn len(&self) -> usize {
        self.streams.iter().map(|w| w.recent.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StreamKind::{Stderr, Stdout};

    const MS: i64 = 1_000_000;

    fn line(n: i64) -> (i64, Vec<u8>) {
        (1_000 * MS + n * MS, format!("line {n}").into_bytes())
    }

    #[test]
    fn a_replay_of_recent_lines_is_dropped_and_the_stream_goes_on() {
        let mut f = ReplayFilter::new();
        for n in 0..100 {
            let (ts, text) = line(n);
            assert_eq!(f.check(Stdout, ts, &text), Verdict::New);
        }
        // dockerd re-reads the rotated file from line 60 through the newest line sent.
        for n in 60..100 {
            let (ts, text) = line(n);
            assert_eq!(f.check(Stdout, ts, &text), Verdict::Replay, "line {n}");
        }
        for n in 100..110 {
            let (ts, text) = line(n);
            assert_eq!(f.check(Stdout, ts, &text), Verdict::New, "line {n}");
        }
        assert!(f.take_rotation_seen());
        assert!(!f.take_rotation_seen());
        // A second replay, across the first one.
        for n in 90..110 {
            let (ts, text) = line(n);
            assert_eq!(f.check(Stdout, ts, &text), Verdict::Replay, "line {n}");
        }
    }

    #[test]
    fn an_earlier_timestamp_with_new_text_is_delivered() {
        let mut f = ReplayFilter::new();
        for n in 0..10 {
            let (ts, text) = line(n);
            f.check(Stdout, ts, &text);
        }
        // The clock stepped back 5 ms: same timestamp as line 5, other text.
        let (ts, _) = line(5);
        assert_eq!(f.check(Stdout, ts, b"after the step"), Verdict::Unknown);
        // Remembered: sent again, it is a replay, and a reopened stream does not recover it.
        assert_eq!(f.check(Stdout, ts, b"after the step"), Verdict::Replay);
        assert!(!f.recover(Stdout, ts, b"after the step"));
        // A timestamp between two remembered ones.
        assert_eq!(f.check(Stdout, ts + 1, b"line 5"), Verdict::Unknown);
        // The same text under the newest timestamp is a replay.
        let (ts9, text9) = line(9);
        assert_eq!(f.check(Stdout, ts9, &text9), Verdict::Replay);
        // Other text under the newest timestamp is new, and remembered.
        assert_eq!(f.check(Stdout, ts9, b"line 9, part 2"), Verdict::New);
        assert_eq!(f.check(Stdout, ts9, b"line 9, part 2"), Verdict::Replay);
        // The window was not disturbed: the replay of line 3 is still recognised.
        let (ts3, text3) = line(3);
        assert_eq!(f.check(Stdout, ts3, &text3), Verdict::Replay);
    }

    #[test]
    fn streams_are_independent() {
        let mut f = ReplayFilter::new();
        let (ts0, t0) = line(0);
        let (ts1, t1) = line(1);
        assert_eq!(f.check(Stdout, ts1, &t1), Verdict::New);
        // stderr stamped before the stdout line, landing after it: new on its own stream.
        assert_eq!(f.check(Stderr, ts0, &t0), Verdict::New);
        assert_eq!(f.check(Stderr, ts0, &t0), Verdict::Replay);
        // The same line on the other stream was never delivered there.
        assert_eq!(f.check(Stdout, ts0, &t0), Verdict::Unknown);
    }

    #[test]
    fn a_line_skipped_by_dockerd_is_recovered_once() {
        let mut f = ReplayFilter::new();
        for n in [0, 1, 2, 5, 6] {
            let (ts, text) = line(n);
            assert_eq!(f.check(Stdout, ts, &text), Verdict::New);
        }
        // A reopened stream repeats 0..=6 in file order: 3 and 4 were never delivered.
        let got: Vec<bool> = (0..=6)
            .map(|n| {
                let (ts, text) = line(n);
                f.recover(Stdout, ts, &text)
            })
            .collect();
        assert_eq!(got, [false, false, false, true, true, false, false]);
        // Remembered now: a replay of them is recognised, and they are not recovered twice.
        let (ts, text) = line(3);
        assert!(!f.recover(Stdout, ts, &text));
        assert_eq!(f.check(Stdout, ts, &text), Verdict::Replay);
        // Outside the window's span: not known.
        let (ts, text) = line(7);
        assert!(!f.recover(Stdout, ts, &text));
        assert!(!f.recover(Stderr, ts, &text));
    }

    #[test]
    fn the_window_is_bounded_by_count_and_age() {
        let mut f = ReplayFilter::new();
        let total = WINDOW_LINES as i64 + 100;
        for n in 0..total {
            let (ts, text) = line(n);
            f.check(Stdout, ts, &text);
        }
        assert_eq!(f.len(), WINDOW_LINES);
        let (ts, text) = line(99);
        assert_eq!(f.check(Stdout, ts, &text), Verdict::Unknown, "evicted");
        let (ts, text) = line(100);
        assert_eq!(f.check(Stdout, ts, &text), Verdict::Replay, "oldest kept");

        // A line far newer than the window's age pushes every older line out.
        let mut f = ReplayFilter::new();
        f.check(Stdout, 0, b"old");
        f.check(Stdout, 1, b"old too");
        f.check(Stdout, 1 + WINDOW_AGE_NS, b"new");
        assert_eq!(f.len(), 2);
        assert_eq!(f.check(Stdout, 0, b"old"), Verdict::Unknown);
        assert_eq!(f.check(Stdout, 1, b"old too"), Verdict::Replay);
    }

    /// A container whose log never rotates keeps nothing (1000 of them at 20 lines/s held
    /// 100 MiB of windows after 4 minutes); turned on, the filter works as one made on.
    #[test]
    fn a_filter_made_off_keeps_nothing_until_turned_on() {
        let mut f = ReplayFilter::off();
        for n in 0..100 {
            let (ts, text) = line(n);
            assert_eq!(f.check(Stdout, ts, &text), Verdict::New);
            f.remember(Stdout, ts, &text);
            assert!(!f.recover(Stdout, ts, &text));
        }
        let (ts, text) = line(50);
        assert_eq!(
            f.check(Stdout, ts, &text),
            Verdict::New,
            "nothing remembered"
        );
        assert_eq!(f.len(), 0);
        assert!(!f.take_replay_seen());
        f.turn_on();
        for n in 100..105 {
            let (ts, text) = line(n);
            assert_eq!(f.check(Stdout, ts, &text), Verdict::New);
        }
        let (ts, text) = line(102);
        assert_eq!(f.check(Stdout, ts, &text), Verdict::Replay);
        assert_eq!(f.len(), 5);
    }

    #[test]
    fn remembered_lines_make_a_later_replay_recognisable() {
        let mut f = ReplayFilter::new();
        // After a restart, the reopened stream repeats lines 0..5 (skipped by the resume
        // tracker) before new ones.
        for n in 0..5 {
            let (ts, text) = line(n);
            f.remember(Stdout, ts, &text);
        }
        // Remembering again (a second reopen) adds nothing.
        let (ts, text) = line(2);
        f.remember(Stdout, ts, &text);
        assert_eq!(f.len(), 5);
        for n in 5..8 {
            let (ts, text) = line(n);
            assert_eq!(f.check(Stdout, ts, &text), Verdict::New);
        }
        for n in 0..8 {
            let (ts, text) = line(n);
            assert_eq!(f.check(Stdout, ts, &text), Verdict::Replay, "line {n}");
        }
    }
}
