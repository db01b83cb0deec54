//! The safety net of a short-lived container: the lines of its attach stream that its log
//! stream has not delivered (yet).
//!
//! A `docker run --rm` job can be gone ~30 ms after its `start` event; a log stream opened
//! after that answers `404`, `409 ... marked for removal` or `Error grabbing logs: ... no
//! such file`, and its lines are lost. An attach made at `create` waits for the start and
//! carries every line of the container's output (no timestamps), so the capture thread opens
//! one per created container and feeds both sources here:
//!
//! - Lines are matched by count per output stream: the `n`-th stdout line of the attach is the
//!   `n`-th stdout line of the log, the same for stderr (each keeps its order in both sources;
//!   only the interleaving of the two can differ). This holds only while the log stream reads
//!   the container from its first line, so a net exists only for containers without a
//!   committed position.
//! - An attach line the log already delivered is a duplicate; one it has not is held
//!   ([`SafetyNet::pending`]) until the log delivers it too, or until the capture thread
//!   decides the log never will (the container is removed) and delivers it from here.
//! - A matched pair whose texts differ means the attach did not see the first lines (it was
//!   registered after the start): the net is [`misaligned`](SafetyNet::misaligned) and must be
//!   dropped, since its counts say nothing.
//! - Held lines are bounded ([`MAX_PENDING_BYTES`]): past that the net overflows and is
//!   dropped. An attach must never be paused (dockerd writes to attached clients in the
//!   container's own output path, so a slow attach slows the container), so the bound is
//!   what keeps memory in check while the log stream lags.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::decode::StreamKind;

/// Bytes of held attach lines at most: beyond it the net is dropped (the log stream is then
/// far behind, not gone).
pub const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

/// An attach line the log stream has not delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLine {
    /// Position in the attach stream, across stdout and stderr: the order to deliver in.
    pub seq: u64,
    pub stream: StreamKind,
    /// When the attach delivered it (ns since the epoch): the entry's timestamp, there being
    /// no other.
    pub received_ns: i64,
    pub message: Bytes,
}

/// What became of an attach line.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AttachLine {
    /// The log stream delivered it already.
    Duplicate,
    /// Held until the log stream delivers it.
    Held,
}

#[derive(Debug, Default)]
pub struct SafetyNet {
    /// Per stream (stdout, stderr): attach lines not yet seen on the log stream, in order.
    held: [VecDeque<HeldLine>; 2],
    /// Per stream: log lines the attach has not delivered yet.
    ahead: [u64; 2],
    held_bytes: usize,
    next_seq: u64,
    misaligned: bool,
}

fn index(stream: StreamKind) -> usize {
    match stream {
        StreamKind::Stdout => 0,
        StreamKind::Stderr => 1,
    }
}

impl SafetyNet {
    pub fn new() -> Self {
        SafetyNet::default()
    }

    /// A line the log stream delivered (a new one: not a repeat of a reopened stream).
    pub fn log_line(&mut self, stream: StreamKind, message: &[u8]) {
        let i = index(stream);
        match self.held[i].pop_front() {
            Some(held) => {
                self.held_bytes -= held.message.len();
                if held.message != message {
                    self.misaligned = true;
                }
            }
            None => self.ahead[i] += 1,
        }
    }

    /// A line of the attach stream, received at `received_ns`.
    pub fn attach_line(
        &mut self,
        stream: StreamKind,
        message: &[u8],
        received_ns: i64,
    ) -> AttachLine {
        let i = index(stream);
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.ahead[i] > 0 {
            self.ahead[i] -= 1;
            return AttachLine::Duplicate;
        }
        self.held_bytes += message.len();
        // A copy: a slice would pin the whole receive buffer it came in.
        self.held[i].push_back(HeldLine {
            seq,
            stream,
            received_ns,
            message: Bytes::copy_from_slice(message),
        });
        AttachLine::Held
    }

    /// Attach lines the log stream has not delivered.
    pub fn pending(&self) -> usize {
        self.held[0].len() + self.held[1].len()
    }

    /// The log stream has delivered every line the attach has.
    pub fn caught_up(&self) -> bool {
        self.pending() == 0
    }

    /// Two matched lines differ: the attach missed the container's first lines.
    pub fn misaligned(&self) -> bool {
        self.misaligned
    }

    /// More is held than [`MAX_PENDING_BYTES`].
    pub fn overflowed(&self) -> bool {
        self.held_bytes > MAX_PENDING_BYTES
    }

    /// Empties the net: the held lines in attach order (stdout and stderr interleaved as the
    /// container wrote them).
    pub fn take_held(&mut self) -> Vec<HeldLine> {
        let [out, err] = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        let mut lines: Vec<HeldLine> = out.into_iter().chain(err).collect();
        lines.sort_unstable_by_key(|l| l.seq);
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StreamKind::{Stderr, Stdout};

    fn messages(lines: &[HeldLine]) -> Vec<(StreamKind, &[u8])> {
        lines.iter().map(|l| (l.stream, &l.message[..])).collect()
    }

    #[test]
    fn counts_per_stream_whatever_the_interleaving() {
        let mut net = SafetyNet::new();
        // The attach saw out1 err1 out2 err2 out3; the log stream stderr first.
        for (s, m) in [
            (Stdout, "out1"),
            (Stderr, "err1"),
            (Stdout, "out2"),
            (Stderr, "err2"),
            (Stdout, "out3"),
        ] {
            assert_eq!(net.attach_line(s, m.as_bytes(), 7), AttachLine::Held);
        }
        net.log_line(Stderr, b"err1");
        net.log_line(Stderr, b"err2");
        net.log_line(Stdout, b"out1");
        assert!(!net.misaligned());
        assert_eq!(net.pending(), 2);
        assert_eq!(
            messages(&net.take_held()),
            vec![(Stdout, &b"out2"[..]), (Stdout, b"out3")]
        );
        assert!(net.caught_up());
    }

    #[test]
    fn log_ahead_of_the_attach_makes_attach_lines_duplicates() {
        let mut net = SafetyNet::new();
        net.log_line(Stdout, b"a");
        net.log_line(Stdout, b"b");
        assert_eq!(net.attach_line(Stdout, b"a", 1), AttachLine::Duplicate);
        assert_eq!(net.attach_line(Stderr, b"x", 1), AttachLine::Held);
        assert_eq!(net.attach_line(Stdout, b"b", 1), AttachLine::Duplicate);
        assert_eq!(net.attach_line(Stdout, b"c", 1), AttachLine::Held);
        let held = net.take_held();
        assert_eq!(messages(&held), vec![(Stderr, &b"x"[..]), (Stdout, b"c")]);
        assert!(held[0].seq < held[1].seq);
    }

    #[test]
    fn a_differing_pair_marks_the_net_misaligned() {
        let mut net = SafetyNet::new();
        net.attach_line(Stdout, b"line 5", 1);
        net.log_line(Stdout, b"line 1");
        assert!(net.misaligned());
    }

    #[test]
    fn held_bytes_are_bounded() {
        let mut net = SafetyNet::new();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..16 {
            net.attach_line(Stdout, &chunk, 1);
        }
        assert!(!net.overflowed());
        net.attach_line(Stdout, b"one more", 1);
        assert!(net.overflowed());
        net.log_line(Stdout, &chunk);
        assert!(!net.overflowed());
    }
}
