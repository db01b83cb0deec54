//! The `multiline` groups of one monitored file ([`Grouper`]), and where the file resumes
//! while a group is held.
//!
//! Lines go into the grouper in the order they are read (a rotated-away file's before the new
//! one's), each with its [`Mark`]. A group ends as for containers (the next `firstline`,
//! `max_lines`, `max_wait` without a new line), and also where its file does: a group never
//! spans two files, so a line read by another tailer (the new file after a rename, the same
//! file after a truncation) completes the group held, and so does its file ending (truncated,
//! deleted and read to its end, a rotated file done with). Lines the writer still appends to
//! a renamed file before it reopens do join the group.
//!
//! Positions: after each release what is held is one open group, the last lines read, all
//! from one file. That file resumes at the start of the group's first line
//! ([`FileGroup::resume`]), any other at its committed offset (all its lines are released).
//! So a checkpoint never passes a held line: after a SIGKILL the group is read again whole,
//! and at a SIGTERM the groups held are dropped ([`FileGroup::discard`]), not delivered, to
//! be read again whole at the next start (the containers' rule).

use std::collections::VecDeque;
use std::time::Instant;

use super::tail::Mark;
use crate::pipeline::entry::LogEntry;
use crate::pipeline::processing::{Grouper, MultilineSpec, Released};

pub struct FileGroup {
    grouper: Grouper<Mark>,
    /// The marks of the lines in the grouper, oldest first (it releases in that order).
    held: VecDeque<Mark>,
    /// The tailer of the last line pushed.
    last_gen: Option<u64>,
}

impl FileGroup {
    pub fn new(spec: MultilineSpec) -> FileGroup {
        FileGroup {
            grouper: Grouper::new(spec),
            held: VecDeque::new(),
            last_gen: None,
        }
    }

    /// One line read, and where it lies.
    pub fn push(&mut self, entry: LogEntry, mark: Mark, now: Instant) {
        if self.last_gen != Some(mark.gen) && !self.held.is_empty() {
            self.grouper.finish();
        }
        self.last_gen = Some(mark.gen);
        self.grouper.push(entry, mark, now);
        self.held.push_back(mark);
    }

    /// Completes the groups silent for `max_wait`, and the open group when its file ended
    /// (`ended(gen)`); takes out every complete group, in read order.
    pub fn release(&mut self, now: Instant, ended: impl Fn(u64) -> bool) -> Released<Mark> {
        self.grouper.expire(now);
        // The open group is the last one: its file is the last line's.
        if self.held.back().is_some_and(|m| ended(m.gen)) {
            self.grouper.finish();
        }
        self.take()
    }

    /// Completes every group and takes them out (`--once` read all there is).
    pub fn finish(&mut self) -> Released<Mark> {
        self.grouper.finish();
        self.take()
    }

    fn take(&mut self) -> Released<Mark> {
        let released = self.grouper.release();
        let n = (released.lines as usize).min(self.held.len());
        self.held.drain(..n);
        released
    }

    /// Where the file read by tailer `gen`, read up to `committed`, resumes: before the first
    /// line held of it, if any.
    pub fn resume(&self, gen: u64, committed: u64) -> u64 {
        self.held
            .iter()
            .find(|m| m.gen == gen)
            .map_or(committed, |m| m.start)
    }

    /// When the open group expires.
    pub fn deadline(&self) -> Option<Instant> {
        self.grouper.deadline()
    }

    /// Forgets what is held (shutdown: the resume point is before it); returns the lines.
    pub fn discard(&mut self) -> usize {
        self.held.clear();
        self.grouper.discard()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::StreamKind;
    use bytes::Bytes;
    use regex::Regex;
    use std::sync::Arc;
    use std::time::Duration;

    fn line(text: &str) -> LogEntry {
        LogEntry {
            fields: Default::default(),
            timestamp_ns: 0,
            processed_at_ns: 0,
            message: Bytes::copy_from_slice(text.as_bytes()),
            stream: StreamKind::Stdout,
            source_type: "file",
            source_id: Arc::from("f"),
            labels: Arc::default(),
        }
    }

    fn texts(r: &Released<Mark>) -> Vec<String> {
        r.entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.message).into_owned())
            .collect()
    }

    /// Pushes `text` as the next line of tailer `gen`, ending at `end`.
    fn push(g: &mut FileGroup, gen: u64, text: &str, end: &mut u64, now: Instant) {
        let start = *end;
        *end += text.len() as u64 + 1;
        g.push(
            line(text),
            Mark {
                gen,
                start,
                end: *end,
            },
            now,
        );
    }

    #[test]
    fn the_file_resumes_before_the_held_group_and_a_group_never_spans_two_files() {
        let t = Instant::now();
        let mut g = FileGroup::new(MultilineSpec {
            firstline: Regex::new(r"^\d").unwrap(),
            max_lines: 10,
            max_wait: Duration::from_secs(60),
        });
        let (mut a, mut b) = (0, 0);
        push(&mut g, 1, "1 first", &mut a, t);
        push(&mut g, 1, "  at x", &mut a, t);
        push(&mut g, 1, "2 second", &mut a, t);
        push(&mut g, 1, "  at y", &mut a, t);
        let r = g.release(t, |_| false);
        assert_eq!(texts(&r), ["1 first\n  at x"]);
        // Held: "2 second" from byte 15 on.
        assert_eq!(g.resume(1, a), 15);
        assert_eq!(g.resume(2, 7), 7, "another file: its own committed offset");
        // A line of the new file (rename+create) completes it, whatever it says.
        push(&mut g, 2, "  at z", &mut b, t);
        let r = g.release(t, |_| false);
        assert_eq!(texts(&r), ["2 second\n  at y"]);
        assert_eq!(r.position.map(|m| (m.gen, m.end)), Some((1, a)));
        assert_eq!((g.resume(1, a), g.resume(2, b)), (a, 0));
        // Its file ending completes it too.
        let r = g.release(t, |gen| gen == 2);
        assert_eq!(texts(&r), ["  at z"]);
        assert_eq!(g.resume(2, b), b);
        push(&mut g, 2, "3 third", &mut b, t);
        assert_eq!(g.discard(), 1);
        assert_eq!(g.resume(2, b), b);
    }
}
