//! Line splitting and reassembly: frame pieces (or a raw TTY stream) in, [`LogLine`]s out.
//!
//! # Messages and lines
//!
//! dockerd stores and replays *messages*. A container's output is cut into messages at each
//! `\n`, and a line longer than 16 KiB becomes several *partial* messages of exactly
//! [`PARTIAL_MESSAGE_LEN`] bytes followed by the rest; only the last ends in `\n`. With
//! `timestamps=1` every message, partial or not, is written as `<RFC 3339> <bytes>`.
//!
//! - Multiplexed stream: one message per frame. The prefix sits at the start of each frame and
//!   is stripped there; a frame whose payload does not end in `\n` leaves its line open, and the
//!   next frames *of the same stream* continue it (stdout and stderr partials may interleave,
//!   so each stream has its own pending line). A payload holding several `\n` (not something
//!   dockerd sends, but cheap to honour) yields several lines, all with the frame's timestamp.
//! - Raw (TTY) stream: no frames, so messages are delimited by `\n` alone, and a prefix is
//!   expected at each line start. The TTY turned `\n` into `\r\n`, so one trailing `\r` is
//!   stripped. A partial message leaves no mark in the byte stream except its length: when
//!   [`PARTIAL_MESSAGE_LEN`] message bytes pass without a `\n`, the bytes that follow are the
//!   continuation's own prefix, stripped if they parse as one. If they don't (a log driver with
//!   another partial size, such as `local` with 1 MB), they are kept as line content and no
//!   more prefixes are looked for until the line ends; such a line then keeps the inner
//!   prefixes in its text, since nothing distinguishes them from content.
//!
//! A line's `timestamp_ns` is its first message's, `last_timestamp_ns` its last message's:
//! resuming with `since` needs the latter, as dockerd filters messages, not lines.
//!
//! # Copies
//!
//! A line inside one input slice is handed out as a [`Bytes::slice`] of it. Only a line that
//! spans slices (a frame split over HTTP chunks, or reassembled partials) is copied, into a
//! per-stream buffer. That buffer is bounded by the configured maximum line length
//! ([`MAX_LINE_LEN`] by default): a longer line is handed out in pieces of exactly that length
//! flagged `truncated` (meaning "continued in the next line of this stream"), so nothing is
//! dropped and memory stays bounded.

use bytes::{Bytes, BytesMut};

use super::frame::FramePiece;
use super::span::Span;
use super::timestamp::{TimestampParser, PREFIX_MAX_LEN};
use super::{LogLine, StreamKind};

/// Default bound on a line's length; longer lines are handed out in pieces of this length.
pub const MAX_LINE_LEN: usize = 1 << 20;

/// Size of the partial messages dockerd (json-file driver) cuts long lines into.
pub const PARTIAL_MESSAGE_LEN: usize = 16 * 1024;

/// Why a line could not be decoded, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A message does not start with a valid `<RFC 3339> ` prefix.
    #[error("bad timestamp at byte {offset}: {what}")]
    BadTimestamp { what: &'static str, offset: u64 },
    /// The input ended inside a timestamp prefix.
    #[error("{context} ended inside a timestamp prefix at byte {offset}")]
    TruncatedTimestamp { context: &'static str, offset: u64 },
}

impl LineError {
    /// Offset in the response stream where the error was detected.
    pub fn offset(&self) -> u64 {
        match *self {
            LineError::BadTimestamp { offset, .. }
            | LineError::TruncatedTimestamp { offset, .. } => offset,
        }
    }
}

/// The line of one stream that is still being assembled.
#[derive(Debug, Default)]
struct Pending {
    /// Bytes already received: only filled once a line spans input slices.
    buf: BytesMut,
    /// A line has started (possibly with no bytes yet).
    open: bool,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
struct Config {
    stream: StreamKind,
    tty: bool,
    max: usize,
}

impl Pending {
    /// A message starts: it opens a line unless it continues one.
    fn open_message(&mut self, ts: Option<i64>) {
        if !self.open {
            self.open = true;
            self.first_ts = ts;
        }
        self.last_ts = ts;
    }

    /// Message content (no prefix) of a message stamped `ts`.
    fn content(&mut self, data: Bytes, ts: Option<i64>, cfg: Config, out: &mut Vec<LogLine>) {
        let mut start = 0;
        while let Some(i) = memchr::memchr(b'\n', &data[start..]) {
            let nl = start + i;
            if nl + 1 == data.len() {
                // The usual case, a message ending in its only `\n`: reuse the handle rather
                // than clone it (a refcount increment and decrement saved per line).
                let mut seg = data;
                bytes::Buf::advance(&mut seg, start);
                seg.truncate(nl - start);
                self.complete(seg, ts, cfg, out);
                return;
            }
            self.complete(data.slice(start..nl), ts, cfg, out);
            start = nl + 1;
        }
        if start < data.len() {
            self.extend(&data, start, data.len(), ts, cfg, out);
        }
    }

    /// `seg` ends the line.
    fn complete(&mut self, seg: Bytes, ts: Option<i64>, cfg: Config, out: &mut Vec<LogLine>) {
        let a = self.overflow(&seg, 0, seg.len(), ts, cfg, out);
        let first = if self.open { self.first_ts } else { ts };
        let mut message = if !self.buf.is_empty() {
            self.buf.extend_from_slice(&seg[a..]);
            self.buf.split().freeze()
        } else if a == 0 {
            seg
        } else {
            seg.slice(a..)
        };
        if cfg.tty && message.last() == Some(&b'\r') {
            message.truncate(message.len() - 1);
        }
        self.open = false;
        out.push(LogLine {
            stream: cfg.stream,
            timestamp_ns: first,
            last_timestamp_ns: ts,
            message,
            truncated: false,
        });
    }

    /// `data[a..b]` continues the line, which stays open.
    fn extend(
        &mut self,
        data: &Bytes,
        a: usize,
        b: usize,
        ts: Option<i64>,
        cfg: Config,
        out: &mut Vec<LogLine>,
    ) {
        if !self.open {
            self.open = true;
            self.first_ts = ts;
        }
        let a = self.overflow(data, a, b, ts, cfg, out);
        self.buf.extend_from_slice(&data[a..b]);
        self.last_ts = ts;
    }

    /// Hands out full-length pieces while the line would outgrow the bound; returns where the
    /// rest of `data[a..b]` starts.
    fn overflow(
        &mut self,
        data: &Bytes,
        mut a: usize,
        b: usize,
        ts: Option<i64>,
        cfg: Config,
        out: &mut Vec<LogLine>,
    ) -> usize {
        while self.buf.len() + (b - a) > cfg.max {
            let room = cfg.max - self.buf.len();
            let message = if self.buf.is_empty() {
                data.slice(a..a + room)
            } else {
                self.buf.extend_from_slice(&data[a..a + room]);
                self.buf.split().freeze()
            };
            out.push(LogLine {
                stream: cfg.stream,
                timestamp_ns: if self.open { self.first_ts } else { ts },
                last_timestamp_ns: ts,
                message,
                truncated: true,
            });
            a += room;
            // The rest of the line starts in this message.
            self.open = true;
            self.first_ts = ts;
        }
        a
    }

    /// At the end of input: an open line is handed out as it is.
    fn flush(&mut self, stream: StreamKind, out: &mut Vec<LogLine>) {
        if self.open || !self.buf.is_empty() {
            self.open = false;
            out.push(LogLine {
                stream,
                timestamp_ns: self.first_ts,
                last_timestamp_ns: self.last_ts,
                message: self.buf.split().freeze(),
                truncated: false,
            });
        }
    }
}

/// Outcome of feeding bytes to a [`PrefixReader`].
enum PrefixStep {
    /// All input was taken; the prefix continues in the next slice.
    Need,
    /// Prefix complete: its time, and how many bytes of this input it took (space included).
    Done { ts: i64, used: usize },
    /// Not a valid prefix: the offending byte's position counted from the prefix start. The
    /// input is left untouched (bytes of earlier slices remain held).
    Bad { pos: usize, what: &'static str },
}

/// Reads a timestamp prefix that may be cut across input slices (copying at most
/// [`PREFIX_MAX_LEN`] bytes, and only when cut).
#[derive(Debug)]
struct PrefixReader {
    held: [u8; PREFIX_MAX_LEN],
    len: usize,
    /// Stream offset of the prefix's first byte.
    start: u64,
    parser: TimestampParser,
}

impl PrefixReader {
    fn new() -> Self {
        PrefixReader {
            held: [0; PREFIX_MAX_LEN],
            len: 0,
            start: 0,
            parser: TimestampParser::new(),
        }
    }

    /// `soft`: give up at once on a first byte that is no digit, since the caller is only
    /// probing whether a prefix is there.
    fn step(&mut self, data: &[u8], offset: u64, soft: bool) -> PrefixStep {
        if self.len == 0 {
            self.start = offset;
            if soft && !data.first().is_some_and(u8::is_ascii_digit) {
                return PrefixStep::Bad {
                    pos: 0,
                    what: "not a timestamp",
                };
            }
        }
        let room = PREFIX_MAX_LEN - self.len;
        let window = &data[..data.len().min(room)];
        match memchr::memchr2(b' ', b'\n', window) {
            Some(i) if window[i] == b'\n' => PrefixStep::Bad {
                pos: self.len + i,
                what: "line ends inside the timestamp prefix",
            },
            Some(i) => {
                let text = if self.len == 0 {
                    &window[..i]
                } else {
                    self.held[self.len..self.len + i].copy_from_slice(&window[..i]);
                    &self.held[..self.len + i]
                };
                match self.parser.parse(text) {
                    Ok(ts) => {
                        self.len = 0;
                        PrefixStep::Done { ts, used: i + 1 }
                    }
                    Err(e) => PrefixStep::Bad {
                        pos: e.pos(),
                        what: e.what(),
                    },
                }
            }
            None if window.len() == room => PrefixStep::Bad {
                pos: PREFIX_MAX_LEN,
                what: "no space after the timestamp",
            },
            None => {
                self.held[self.len..self.len + window.len()].copy_from_slice(window);
                self.len += window.len();
                PrefixStep::Need
            }
        }
    }

    /// Bytes held from earlier slices, handed back (and forgotten).
    fn take_held(&mut self) -> Bytes {
        let b = Bytes::copy_from_slice(&self.held[..self.len]);
        self.len = 0;
        b
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawState {
    /// Expecting a line's timestamp prefix.
    LineStart,
    /// Inside message content.
    Content,
    /// [`PARTIAL_MESSAGE_LEN`] bytes passed without `\n`: probing for a continuation prefix.
    Continuation,
}

/// Turns frame pieces (multiplexed) or body slices (raw TTY) into lines.
#[derive(Debug)]
pub struct LineAssembler {
    tty: bool,
    timestamps: bool,
    max_line_len: usize,
    stdout: Pending,
    stderr: Pending,
    prefix: PrefixReader,
    /// Multiplexed: still reading the current frame's prefix.
    in_prefix: bool,
    /// Timestamp of the current message.
    ts: Option<i64>,
    raw: RawState,
    /// Raw: message bytes since the last prefix.
    message_len: usize,
    /// Raw: still probing for continuation prefixes in this line.
    probe: bool,
    /// Stream offset just past the last input byte.
    offset: u64,
}

impl LineAssembler {
    /// An assembler for a TTY (raw) or multiplexed stream, with or without timestamp prefixes.
    pub fn new(tty: bool, timestamps: bool) -> Self {
        LineAssembler {
            tty,
            timestamps,
            max_line_len: MAX_LINE_LEN,
            stdout: Pending::default(),
            stderr: Pending::default(),
            prefix: PrefixReader::new(),
            in_prefix: false,
            ts: None,
            raw: if timestamps {
                RawState::LineStart
            } else {
                RawState::Content
            },
            message_len: 0,
            probe: true,
            offset: 0,
        }
    }

    /// Sets the line length bound (at least 1; default [`MAX_LINE_LEN`]).
    pub fn with_max_line_len(mut self, max: usize) -> Self {
        self.max_line_len = max.max(1);
        self
    }

    /// The line length bound.
    pub fn max_line_len(&self) -> usize {
        self.max_line_len
    }

    fn pending(&mut self, stream: StreamKind) -> (&mut Pending, Config) {
        let cfg = Config {
            stream,
            tty: self.tty,
            max: self.max_line_len,
        };
        let p = match stream {
            StreamKind::Stdout => &mut self.stdout,
            StreamKind::Stderr => &mut self.stderr,
        };
        (p, cfg)
    }

    /// Consumes one piece of a multiplexed frame.
    pub fn push_frame(
        &mut self,
        piece: FramePiece,
        out: &mut Vec<LogLine>,
    ) -> Result<(), LineError> {
        let FramePiece {
            stream,
            data: mut span,
            first,
            last,
        } = piece;
        self.offset = span.end();
        if first {
            self.in_prefix = self.timestamps;
            self.prefix.len = 0;
            self.ts = None;
            if !self.timestamps {
                self.pending(stream).0.open_message(None);
            }
        }
        if self.in_prefix {
            match self.prefix.step(&span.bytes, span.offset, false) {
                PrefixStep::Need if last => {
                    return Err(LineError::TruncatedTimestamp {
                        context: "frame",
                        offset: span.end(),
                    })
                }
                PrefixStep::Need => return Ok(()),
                PrefixStep::Done { ts, used } => {
                    span.advance(used);
                    self.in_prefix = false;
                    self.ts = Some(ts);
                    self.pending(stream).0.open_message(Some(ts));
                }
                PrefixStep::Bad { pos, what } => {
                    return Err(LineError::BadTimestamp {
                        what,
                        offset: self.prefix.start + pos as u64,
                    })
                }
            }
        }
        let ts = self.ts;
        let (p, cfg) = self.pending(stream);
        p.content(span.bytes, ts, cfg, out);
        Ok(())
    }

    /// Consumes a slice of a raw (TTY) stream.
    pub fn push_raw(&mut self, mut span: Span, out: &mut Vec<LogLine>) -> Result<(), LineError> {
        self.offset = span.end();
        while !span.is_empty() {
            match self.raw {
                RawState::LineStart | RawState::Continuation => {
                    let soft = self.raw == RawState::Continuation;
                    match self.prefix.step(&span.bytes, span.offset, soft) {
                        PrefixStep::Need => return Ok(()),
                        PrefixStep::Done { ts, used } => {
                            span.advance(used);
                            self.ts = Some(ts);
                            self.message_len = 0;
                            self.stdout.open_message(Some(ts));
                            self.raw = RawState::Content;
                        }
                        PrefixStep::Bad { pos, what } if !soft => {
                            return Err(LineError::BadTimestamp {
                                what,
                                offset: self.prefix.start + pos as u64,
                            })
                        }
                        PrefixStep::Bad { .. } => {
                            // No continuation prefix: what was held is content (without `\n`,
                            // since a `\n` ends the probe at once).
                            let held = self.prefix.take_held();
                            self.message_len += held.len();
                            self.probe = false;
                            self.raw = RawState::Content;
                            let ts = self.ts;
                            let (p, cfg) = self.pending(StreamKind::Stdout);
                            p.extend(&held, 0, held.len(), ts, cfg, out);
                        }
                    }
                }
                RawState::Content => {
                    let probing = self.timestamps && self.probe;
                    if probing && self.message_len >= PARTIAL_MESSAGE_LEN {
                        self.raw = RawState::Continuation;
                        continue;
                    }
                    let window = if probing {
                        span.len().min(PARTIAL_MESSAGE_LEN - self.message_len)
                    } else {
                        span.len()
                    };
                    let ts = self.ts;
                    let (p, cfg) = self.pending(StreamKind::Stdout);
                    match memchr::memchr(b'\n', &span.bytes[..window]) {
                        Some(nl) if nl + 1 == span.len() => {
                            // The line ends the slice: hand over the slice itself.
                            let mut seg = std::mem::take(&mut span.bytes);
                            seg.truncate(nl);
                            p.complete(seg, ts, cfg, out);
                            self.message_len = 0;
                            self.probe = true;
                            if self.timestamps {
                                self.raw = RawState::LineStart;
                            }
                        }
                        Some(nl) => {
                            p.complete(span.bytes.slice(..nl), ts, cfg, out);
                            span.advance(nl + 1);
                            self.message_len = 0;
                            self.probe = true;
                            if self.timestamps {
                                self.raw = RawState::LineStart;
                            }
                        }
                        None => {
                            p.extend(&span.bytes, 0, window, ts, cfg, out);
                            span.advance(window);
                            self.message_len += window;
                            if probing && self.message_len == PARTIAL_MESSAGE_LEN {
                                self.raw = RawState::Continuation;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// At the end of the body: hands out lines still open (an unterminated last line, stdout
    /// first); an error if the body ended inside a timestamp prefix.
    pub fn finish(&mut self, out: &mut Vec<LogLine>) -> Result<(), LineError> {
        let cut_prefix = self.prefix.len > 0;
        if self.tty && self.raw == RawState::Continuation {
            let held = self.prefix.take_held();
            let ts = self.ts;
            let (p, cfg) = self.pending(StreamKind::Stdout);
            p.extend(&held, 0, held.len(), ts, cfg, out);
            self.raw = RawState::Content;
        } else if cut_prefix {
            return Err(LineError::TruncatedTimestamp {
                context: "stream",
                offset: self.offset,
            });
        }
        self.stdout.flush(StreamKind::Stdout, out);
        self.stderr.flush(StreamKind::Stderr, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::timestamp::format_rfc3339_nanos;

    const T0: i64 = 1_795_818_192_750_760_435;

    fn ts(i: i64) -> String {
        format_rfc3339_nanos(T0 + i)
    }

    fn piece(stream: StreamKind, data: &[u8], offset: u64, first: bool, last: bool) -> FramePiece {
        FramePiece {
            stream,
            data: Span::new(Bytes::copy_from_slice(data), offset),
            first,
            last,
        }
    }

    fn line(stream: StreamKind, first: i64, last: i64, msg: &str) -> LogLine {
        LogLine {
            stream,
            timestamp_ns: Some(T0 + first),
            last_timestamp_ns: Some(T0 + last),
            message: Bytes::copy_from_slice(msg.as_bytes()),
            truncated: false,
        }
    }

    use StreamKind::{Stderr, Stdout};

    #[test]
    fn frames_with_timestamps() {
        let mut a = LineAssembler::new(false, true);
        let mut out = Vec::new();
        let f1 = format!("{} hello\n", ts(1));
        a.push_frame(piece(Stdout, f1.as_bytes(), 8, true, true), &mut out)
            .unwrap();
        // A frame split in the middle of its prefix, then in its content.
        let f2 = format!("{} two\nlines\n", ts(2));
        let (x, rest) = f2.as_bytes().split_at(10);
        let (y, z) = rest.split_at(25);
        a.push_frame(piece(Stderr, x, 100, true, false), &mut out)
            .unwrap();
        a.push_frame(piece(Stderr, y, 110, false, false), &mut out)
            .unwrap();
        a.push_frame(piece(Stderr, z, 135, false, true), &mut out)
            .unwrap();
        a.finish(&mut out).unwrap();
        assert_eq!(
            out,
            vec![
                line(Stdout, 1, 1, "hello"),
                line(Stderr, 2, 2, "two"),
                line(Stderr, 2, 2, "lines"),
            ]
        );
    }

    #[test]
    fn interleaved_partials_reassemble_per_stream() {
        let mut a = LineAssembler::new(false, true);
        let mut out = Vec::new();
        let frames: &[(StreamKind, i64, &str)] = &[
            (Stdout, 1, "out-a"),
            (Stderr, 2, "err-a"),
            (Stdout, 3, "out-b"),
            (Stderr, 4, "err-b\n"),
            (Stdout, 5, "\n"),
        ];
        for &(s, t, text) in frames {
            let f = format!("{} {text}", ts(t));
            a.push_frame(piece(s, f.as_bytes(), 0, true, true), &mut out)
                .unwrap();
        }
        assert_eq!(
            out,
            vec![
                line(Stderr, 2, 4, "err-aerr-b"),
                line(Stdout, 1, 5, "out-aout-b"),
            ]
        );
    }

    #[test]
    fn line_in_one_slice_is_zero_copy() {
        let mut a = LineAssembler::new(false, true);
        let mut out = Vec::new();
        let f = Bytes::from(format!("{} zero copy\n", ts(0)));
        let p = FramePiece {
            stream: Stdout,
            data: Span::new(f.clone(), 0),
            first: true,
            last: true,
        };
        a.push_frame(p, &mut out).unwrap();
        assert_eq!(out[0].message.as_ptr(), f[31..].as_ptr());

        let mut a = LineAssembler::new(true, false);
        out.clear();
        let raw = Bytes::from_static(b"one\r\ntwo\n");
        a.push_raw(Span::new(raw.clone(), 0), &mut out).unwrap();
        assert_eq!(out[1].message.as_ptr(), raw[5..].as_ptr());
        assert_eq!(&out[0].message[..], b"one");
    }

    #[test]
    fn no_timestamps() {
        let mut a = LineAssembler::new(false, false);
        let mut out = Vec::new();
        a.push_frame(piece(Stdout, b"par", 0, true, true), &mut out)
            .unwrap();
        a.push_frame(piece(Stdout, b"tial\n\n", 0, true, true), &mut out)
            .unwrap();
        a.push_frame(piece(Stderr, b"unterminated", 0, true, true), &mut out)
            .unwrap();
        a.finish(&mut out).unwrap();
        let msgs: Vec<_> = out
            .iter()
            .map(|l| (l.stream, &l.message[..], l.timestamp_ns))
            .collect();
        assert_eq!(
            msgs,
            vec![
                (Stdout, &b"partial"[..], None),
                (Stdout, b"", None),
                (Stderr, b"unterminated", None)
            ]
        );
    }

    #[test]
    fn bad_and_cut_prefixes() {
        let mut a = LineAssembler::new(false, true);
        let e = a
            .push_frame(
                piece(Stdout, b"2026-13-01T00:00:00Z x\n", 500, true, true),
                &mut Vec::new(),
            )
            .unwrap_err();
        assert_eq!(
            e,
            LineError::BadTimestamp {
                what: "month out of range",
                offset: 505
            }
        );
        assert!(e.to_string().contains("at byte 505"));

        let mut a = LineAssembler::new(false, true);
        let e = a
            .push_frame(
                piece(Stdout, b"hello world\n", 20, true, true),
                &mut Vec::new(),
            )
            .unwrap_err();
        assert_eq!(e.offset(), 20);

        let mut a = LineAssembler::new(false, true);
        let e = a
            .push_frame(
                piece(Stdout, b"2026-11-27T22:23", 20, true, true),
                &mut Vec::new(),
            )
            .unwrap_err();
        assert!(
            matches!(e, LineError::TruncatedTimestamp { offset: 36, .. }),
            "{e}"
        );

        let mut a = LineAssembler::new(false, true);
        let e = a
            .push_frame(piece(Stdout, &[b'1'; 100], 0, true, true), &mut Vec::new())
            .unwrap_err();
        assert_eq!(e.offset(), PREFIX_MAX_LEN as u64);

        let mut a = LineAssembler::new(true, true);
        let mut out = Vec::new();
        a.push_raw(
            Span::new(Bytes::from(format!("{} ok\n2026", ts(0))), 0),
            &mut out,
        )
        .unwrap();
        let e = a.finish(&mut out).unwrap_err();
        assert!(
            matches!(e, LineError::TruncatedTimestamp { offset: 38, .. }),
            "{e}"
        );

        let mut a = LineAssembler::new(true, true);
        let e = a
            .push_raw(
                Span::new(Bytes::from_static(b"2026-11-27T22:23:12Z\n"), 7),
                &mut out,
            )
            .unwrap_err();
        assert_eq!(e.offset(), 27);
    }

    /// dockerd's TTY output for one line: `\r\n` line end, 16 KiB partial messages, each with
    /// its own prefix; timestamps `t`, `t + 1`, ...
    fn tty_encode(line: &[u8], t: i64) -> Vec<u8> {
        let mut msg = line.to_vec();
        msg.push(b'\r');
        let mut out = Vec::new();
        let mut parts: Vec<&[u8]> = msg.chunks(PARTIAL_MESSAGE_LEN).collect();
        if msg.len() % PARTIAL_MESSAGE_LEN == 0 {
            parts.push(b"");
        }
        for (i, part) in parts.iter().enumerate() {
            out.extend_from_slice(ts(t + i as i64).as_bytes());
            out.push(b' ');
            out.extend_from_slice(part);
        }
        out.push(b'\n');
        out
    }

    #[test]
    fn tty_partials_strip_continuation_prefixes() {
        let long: Vec<u8> = (0..40_000).map(|i| b'a' + (i % 26) as u8).collect();
        for len in [0, 1, 16_382, 16_383, 16_384, 16_385, 32_767, 32_768, 40_000] {
            let text = &long[..len];
            let mut stream = tty_encode(text, 10);
            stream.extend(tty_encode(b"next", 20));
            for step in [1, 7, 4096, stream.len()] {
                let mut a = LineAssembler::new(true, true);
                let mut out = Vec::new();
                let mut off = 0;
                for chunk in stream.chunks(step) {
                    a.push_raw(Span::new(Bytes::copy_from_slice(chunk), off), &mut out)
                        .unwrap();
                    off += chunk.len() as u64;
                }
                a.finish(&mut out).unwrap();
                let parts = (len + 1).div_ceil(PARTIAL_MESSAGE_LEN).max(1)
                    + usize::from((len + 1) % PARTIAL_MESSAGE_LEN == 0);
                assert_eq!(out.len(), 2, "len {len} step {step}");
                assert_eq!(&out[0].message[..], text, "len {len} step {step}");
                assert_eq!(out[0].timestamp_ns, Some(T0 + 10));
                assert_eq!(out[0].last_timestamp_ns, Some(T0 + 9 + parts as i64));
                assert_eq!(out[1], line(Stdout, 20, 20, "next"));
            }
        }
    }

    #[test]
    fn tty_probe_failure_keeps_bytes_as_content() {
        // A 16 KiB boundary not followed by a prefix (another log driver): content kept.
        let mut text = vec![b'x'; PARTIAL_MESSAGE_LEN];
        text.extend_from_slice(b"2026-11-27T22:23 not a prefix");
        let mut stream = format!("{} ", ts(0)).into_bytes();
        stream.extend_from_slice(&text);
        stream.extend_from_slice(b"\r\n");
        for step in [1, 5, 100, stream.len()] {
            let mut a = LineAssembler::new(true, true);
            let mut out = Vec::new();
            for chunk in stream.chunks(step) {
                a.push_raw(Span::new(Bytes::copy_from_slice(chunk), 0), &mut out)
                    .unwrap();
            }
            a.finish(&mut out).unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(&out[0].message[..], &text[..], "step {step}");
        }
        // Probing at end of input: held bytes become the unterminated line's tail.
        let mut stream = format!("{} ", ts(0)).into_bytes();
        stream.extend_from_slice(&[b'y'; PARTIAL_MESSAGE_LEN]);
        stream.extend_from_slice(b"20");
        let mut a = LineAssembler::new(true, true);
        let mut out = Vec::new();
        a.push_raw(Span::new(Bytes::from(stream), 0), &mut out)
            .unwrap();
        a.finish(&mut out).unwrap();
        assert_eq!(out[0].message.len(), PARTIAL_MESSAGE_LEN + 2);
    }

    #[test]
    fn tty_without_timestamps_and_unterminated_tail() {
        let mut a = LineAssembler::new(true, false);
        let mut out = Vec::new();
        for part in [&b"a\r\n\r"[..], b"\nb", b"c\r\r\n", b"tail"] {
            a.push_raw(Span::new(Bytes::copy_from_slice(part), 0), &mut out)
                .unwrap();
        }
        a.finish(&mut out).unwrap();
        let msgs: Vec<_> = out.iter().map(|l| &l.message[..]).collect();
        assert_eq!(msgs, vec![&b"a"[..], b"", b"bc\r", b"tail"]);
        assert!(out.iter().all(|l| l.timestamp_ns.is_none()));
    }

    #[test]
    fn long_lines_are_cut_not_dropped() {
        // Bound 10: a 25-byte line spanning three frames, and one inside a single frame.
        let mut a = LineAssembler::new(false, true).with_max_line_len(10);
        let mut out = Vec::new();
        for (t, text) in [
            (1, "0123456"),
            (2, "789abcdef"),
            (3, "ghijklmno\nABCDEFGHIJKLMNOPQRSTUVWXY\n"),
        ] {
            let f = format!("{} {text}", ts(t));
            a.push_frame(piece(Stdout, f.as_bytes(), 0, true, true), &mut out)
                .unwrap();
        }
        let got: Vec<_> = out
            .iter()
            .map(|l| {
                (
                    std::str::from_utf8(&l.message).unwrap(),
                    l.truncated,
                    l.timestamp_ns.unwrap() - T0,
                    l.last_timestamp_ns.unwrap() - T0,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("0123456789", true, 1, 2),
                ("abcdefghij", true, 2, 3),
                ("klmno", false, 3, 3),
                ("ABCDEFGHIJ", true, 3, 3),
                ("KLMNOPQRST", true, 3, 3),
                ("UVWXY", false, 3, 3),
            ]
        );
        // Exactly at the bound: not truncated.
        let mut a = LineAssembler::new(true, false).with_max_line_len(4);
        let mut out = Vec::new();
        a.push_raw(Span::new(Bytes::from_static(b"abcd\nab"), 0), &mut out)
            .unwrap();
        a.push_raw(Span::new(Bytes::from_static(b"cd\n"), 0), &mut out)
            .unwrap();
        assert!(out
            .iter()
            .all(|l| !l.truncated && &l.message[..] == b"abcd"));
    }

    #[test]
    fn frame_split_mid_prefix_and_empty_partial() {
        // "TS " with no content and no newline is an empty partial message.
        let mut a = LineAssembler::new(false, true);
        let mut out = Vec::new();
        let f1 = format!("{} ", ts(1));
        a.push_frame(piece(Stdout, f1.as_bytes(), 0, true, true), &mut out)
            .unwrap();
        a.finish(&mut out).unwrap();
        assert_eq!(out, vec![line(Stdout, 1, 1, "")]);
    }
}
