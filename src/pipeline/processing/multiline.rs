//! The `multiline` step: lines joined into groups (a stack trace is one entry), per source and
//! stream, released whole and in an order that keeps positions exactly once.
//!
//! A line matching `firstline` starts a group of its stream; other lines join the open group
//! of their stream (or start one when none is open). A group is complete when the next
//! `firstline` of its stream comes, when it holds `max_lines` lines, or after `max_wait`
//! without a new line.
//!
//! Positions: a resume point covers a prefix of the log (everything before it was delivered,
//! nothing after it), so lines are released in log order, and the position handed out with
//! them is the one taken right after the last released line. Because stdout and stderr groups
//! interleave, groups are released in *components*: the front group together with every group
//! that started before the component's last line; a component goes out once all its groups
//! are complete. A group still open therefore holds back the groups behind it (bounded by
//! `max_wait`), and a restart while it is open finds the resume point before its first line:
//! the group is read again, whole. The [`Grouper`] is generic over that position (`C`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use regex::Regex;

use crate::decode::StreamKind;
use crate::pipeline::entry::LogEntry;

#[derive(Clone, Debug)]
pub struct MultilineSpec {
    pub firstline: Regex,
    pub max_lines: usize,
    pub max_wait: Duration,
}

impl MultilineSpec {
    /// Promtail's defaults.
    pub const DEFAULT_MAX_LINES: usize = 128;
    pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(3);
}

struct Group<C> {
    /// Positions (arrival order) of the first and last line.
    first: u64,
    last: u64,
    stream: StreamKind,
    lines: Vec<LogEntry>,
    complete: bool,
    last_at: Instant,
    /// The position right after the last line.
    after: C,
}

/// The groups of one source, with the position each leaves behind.
pub struct Grouper<C> {
    spec: MultilineSpec,
    groups: VecDeque<Group<C>>,
    next_pos: u64,
    /// The open group of stdout and of stderr, by its `first`.
    open: [Option<u64>; 2],
}

/// What [`Grouper::release`] let go: joined entries, the lines they hold, and the position
/// they complete.
pub struct Released<C> {
    pub entries: Vec<LogEntry>,
    pub lines: u64,
    pub bytes: u64,
    pub position: Option<C>,
}

fn slot(stream: StreamKind) -> usize {
    match stream {
        StreamKind::Stdout => 0,
        StreamKind::Stderr => 1,
    }
}

impl<C> Grouper<C> {
    pub fn new(spec: MultilineSpec) -> Self {
        Grouper {
            spec,
            groups: VecDeque::new(),
            next_pos: 0,
            open: [None, None],
        }
    }

    /// One line, and the position right after it.
    pub fn push(&mut self, entry: LogEntry, after: C, now: Instant) {
        let pos = self.next_pos;
        self.next_pos += 1;
        let s = slot(entry.stream);
        let starts =
            self.open[s].is_none() || self.spec.firstline.is_match(&super::text(&entry.message));
        if !starts {
            let first = self.open[s].expect("checked");
            if let Some(g) = self.groups.iter_mut().rev().find(|g| g.first == first) {
                g.last = pos;
                g.lines.push(entry);
                g.after = after;
                g.last_at = now;
                if g.lines.len() >= self.spec.max_lines {
                    g.complete = true;
                    self.open[s] = None;
                }
                return;
            }
        }
        if let Some(first) = self.open[s].take() {
            if let Some(g) = self.groups.iter_mut().rev().find(|g| g.first == first) {
                g.complete = true;
            }
        }
        let complete = self.spec.max_lines <= 1;
        self.groups.push_back(Group {
            first: pos,
            last: pos,
            stream: entry.stream,
            lines: vec![entry],
            complete,
            last_at: now,
            after,
        });
        if !complete {
            self.open[s] = Some(pos);
        }
    }

    /// Completes the groups silent for `max_wait`.
    pub fn expire(&mut self, now: Instant) {
        for g in self.groups.iter_mut().filter(|g| !g.complete) {
            if now.saturating_duration_since(g.last_at) >= self.spec.max_wait {
                g.complete = true;
                self.open[slot(g.stream)] = None;
            }
        }
    }

    /// Completes every group: the source ended (or `--once` read all there is).
    pub fn finish(&mut self) {
        for g in self.groups.iter_mut() {
            g.complete = true;
        }
        self.open = [None, None];
    }

    /// When the oldest open group expires.
    pub fn deadline(&self) -> Option<Instant> {
        self.groups
            .iter()
            .filter(|g| !g.complete)
            .map(|g| g.last_at + self.spec.max_wait)
            .min()
    }

    /// Lines held (open groups and the complete ones waiting behind them).
    pub fn held_lines(&self) -> usize {
        self.groups.iter().map(|g| g.lines.len()).sum()
    }

    /// Forgets everything held (shutdown: the resume point is before them, they are read
    /// again at the next start). Returns the lines dropped.
    pub fn discard(&mut self) -> usize {
        let n = self.held_lines();
        self.groups.clear();
        self.open = [None, None];
        n
    }

    /// Takes out every component whose groups are all complete, in log order.
    pub fn release(&mut self) -> Released<C> {
        let mut out = Released {
            entries: Vec::new(),
            lines: 0,
            bytes: 0,
            position: None,
        };
        while let Some(front) = self.groups.front() {
            let mut last = front.last;
            let mut complete = front.complete;
            let mut n = 1;
            while let Some(g) = self.groups.get(n).filter(|g| g.first <= last) {
                last = last.max(g.last);
                complete &= g.complete;
                n += 1;
            }
            if !complete {
                break;
            }
            for g in self.groups.drain(..n) {
                out.lines += g.lines.len() as u64;
                out.bytes += g.lines.iter().map(|e| e.message.len() as u64).sum::<u64>();
                if g.last == last {
                    out.position = Some(g.after);
                }
                out.entries.push(join(g.lines));
            }
        }
        out
    }
}

/// The lines of a group as one entry: the first line's time, stream and labels, the messages
/// joined with `\n`.
fn join(mut lines: Vec<LogEntry>) -> LogEntry {
    if lines.len() == 1 {
        return lines.pop().expect("one line");
    }
    let size = lines.iter().map(|e| e.message.len() + 1).sum::<usize>();
    let mut buf = BytesMut::with_capacity(size);
    for (i, e) in lines.iter().enumerate() {
        if i > 0 {
            buf.extend_from_slice(b"\n");
        }
        buf.extend_from_slice(&e.message);
    }
    let mut first = lines.swap_remove(0);
    first.message = Bytes::from(buf);
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn spec(max_lines: usize) -> MultilineSpec {
        MultilineSpec {
            firstline: Regex::new(r"^\d{4}-").unwrap(),
            max_lines,
            max_wait: Duration::from_millis(100),
        }
    }

    fn line(stream: StreamKind, text: &str) -> LogEntry {
        LogEntry {
            fields: Default::default(),
            timestamp_ns: 0,
            processed_at_ns: 0,
            message: Bytes::copy_from_slice(text.as_bytes()),
            stream,
            source_type: "docker",
            source_id: Arc::from("c"),
            labels: Arc::default(),
        }
    }

    fn texts(r: &Released<u32>) -> Vec<String> {
        r.entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.message).into_owned())
            .collect()
    }

    use StreamKind::{Stderr as E, Stdout as O};

    #[test]
    fn groups_are_joined_per_stream_and_released_in_log_order() {
        let t = Instant::now();
        let mut g = Grouper::new(spec(10));
        // pos: 1 O first, 2 E first, 3 O cont, 4 E cont, 5 O first (completes group 1)
        g.push(line(O, "2024-a"), 1, t);
        g.push(line(E, "2024-x"), 2, t);
        g.push(line(O, "  at a"), 3, t);
        g.push(line(E, "  at x"), 4, t);
        g.push(line(O, "2024-b"), 5, t);
        // stdout group 1 is complete but the stderr group started inside it is open.
        let r = g.release();
        assert!(r.entries.is_empty() && r.position.is_none());
        g.push(line(E, "2024-y"), 6, t);
        let r = g.release();
        assert_eq!(texts(&r), ["2024-a\n  at a", "2024-x\n  at x"]);
        assert_eq!(r.lines, 4);
        assert_eq!(
            r.position,
            Some(4),
            "the position after the last line of both"
        );
        // What is open stays; expiry releases it in log order.
        assert!(g.release().entries.is_empty());
        g.expire(t + Duration::from_millis(100));
        let r = g.release();
        assert_eq!(texts(&r), ["2024-b", "2024-y"]);
        assert_eq!(r.position, Some(6));
        assert_eq!(g.held_lines(), 0);
    }

    #[test]
    fn max_lines_completes_a_group_and_discard_forgets_the_open_one() {
        let t = Instant::now();
        let mut g = Grouper::new(spec(2));
        g.push(line(O, "2024-a"), 1, t);
        g.push(line(O, " 1"), 2, t);
        g.push(line(O, " 2"), 3, t);
        let r = g.release();
        assert_eq!(texts(&r), ["2024-a\n 1"]);
        assert_eq!(r.position, Some(2));
        assert_eq!(g.discard(), 1);
        assert!(g.release().entries.is_empty());
    }
}
