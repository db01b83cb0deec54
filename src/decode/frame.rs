//! Demultiplexing of Docker's `stdcopy` framing, or pass-through of a raw TTY stream.
//!
//! A non-TTY container's log stream is a sequence of frames, each an 8-byte header
//! `[stream, 0, 0, 0, len as u32 big-endian]` and `len` payload bytes. Frames are cut
//! independently of HTTP chunks and socket reads, so a header may be split (it is then copied,
//! 8 bytes at most) and a payload may span many body slices: it is handed out as zero-copy
//! [`FramePiece`]s marked `first` / `last`.
//!
//! Stream types: 0 (stdin) is treated as stdout, as Docker's own client does; 1 stdout;
//! 2 stderr; 3 is an error dockerd reports in-band ("Error grabbing logs: ..."), collected and
//! returned as [`FrameError::Daemon`]. Anything else means the stream is not what we think it is.
//!
//! A TTY container's stream has no framing at all: [`Demux::raw`] passes body slices through as
//! stdout pieces.

use super::span::Span;
use super::StreamKind;

/// Largest frame payload accepted. dockerd never sends more than a 16 KiB partial message plus
/// its timestamp prefix per frame; the bound leaves room for other log drivers' larger partials
/// and keeps a desynchronised stream from being read as a 4 GiB frame.
pub const MAX_FRAME_LEN: u32 = 1 << 20;

/// Size of a frame header.
pub const HEADER_LEN: usize = 8;

/// Most bytes of a daemon error (stream 3) payload kept for the message.
pub const MAX_DAEMON_ERROR_LEN: usize = 4 * 1024;

/// Why the frame layer gave up, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A header announced a payload over [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {limit}-byte bound (header at byte {offset})")]
    TooLarge { len: u32, limit: u32, offset: u64 },
    /// A header's stream type is not 0-3.
    #[error("unknown stream type {stream} in frame header at byte {offset}")]
    BadStream { stream: u8, offset: u64 },
    /// dockerd reported an error in-band (stream type 3).
    #[error("dockerd: {message} (frame at byte {offset})")]
    Daemon { message: String, offset: u64 },
    /// The body ended inside a frame.
    #[error("stream ended inside a frame {context} at byte {offset}")]
    Truncated { context: &'static str, offset: u64 },
}

impl FrameError {
    /// Offset in the response stream where the error was detected.
    pub fn offset(&self) -> u64 {
        match *self {
            FrameError::TooLarge { offset, .. }
            | FrameError::BadStream { offset, .. }
            | FrameError::Daemon { offset, .. }
            | FrameError::Truncated { offset, .. } => offset,
        }
    }
}

/// A piece of one frame's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramePiece {
    /// Which stream the frame belongs to.
    pub stream: StreamKind,
    /// Payload bytes: a zero-copy slice of the body, with its stream offset.
    pub data: Span,
    /// This piece starts the frame's payload.
    pub first: bool,
    /// This piece ends the frame's payload.
    pub last: bool,
}

#[derive(Debug, Clone)]
enum State {
    Raw,
    Header,
    Payload { stream: StreamKind, remaining: u32 },
    DaemonError { remaining: u32 },
}

/// Splits a body into frame pieces. Feed body slices with [`decode`](Self::decode) until it
/// returns `Ok(None)`; call [`finish`](Self::finish) when the body ends.
#[derive(Debug)]
pub struct Demux {
    state: State,
    header: [u8; HEADER_LEN],
    have: usize,
    /// Stream offset of the current frame's header.
    frame_offset: u64,
    frame_len: u32,
    daemon_message: Vec<u8>,
    /// Stream offset of the next input byte, for `finish`.
    offset: u64,
}

impl Demux {
    /// A demuxer for a multiplexed (non-TTY) stream, or a pass-through when `tty`.
    pub fn new(tty: bool) -> Self {
        Demux {
            state: if tty { State::Raw } else { State::Header },
            header: [0; HEADER_LEN],
            have: 0,
            frame_offset: 0,
            frame_len: 0,
            daemon_message: Vec::new(),
            offset: 0,
        }
    }

    /// A demuxer for a multiplexed (non-TTY) stream.
    pub fn multiplexed() -> Self {
        Self::new(false)
    }

    /// A pass-through for a TTY stream: every body slice becomes one stdout piece with
    /// `first` and `last` false, since there are no frames.
    pub fn raw() -> Self {
        Self::new(true)
    }

    /// True in pass-through (TTY) mode.
    pub fn is_raw(&self) -> bool {
        matches!(self.state, State::Raw)
    }

    /// True between frames: the body may end here.
    pub fn at_boundary(&self) -> bool {
        match self.state {
            State::Raw => true,
            State::Header => self.have == 0,
            _ => false,
        }
    }

    /// Takes the next piece from the front of `input`; `Ok(None)` once `input` is used up.
    pub fn decode(&mut self, input: &mut Span) -> Result<Option<FramePiece>, FrameError> {
        loop {
            self.offset = input.offset;
            if input.is_empty() {
                return Ok(None);
            }
            match self.state {
                State::Raw => {
                    let data = std::mem::take(input);
                    input.offset = data.end();
                    self.offset = input.offset;
                    return Ok(Some(FramePiece {
                        stream: StreamKind::Stdout,
                        data,
                        first: false,
                        last: false,
                    }));
                }
                State::Header => self.header_step(input)?,
                State::Payload { stream, remaining } => {
                    let n = input.len().min(remaining as usize);
                    let data = input.split_to(n);
                    let remaining = remaining - n as u32;
                    let first = remaining + n as u32 == self.frame_len;
                    self.state = if remaining == 0 {
                        State::Header
                    } else {
                        State::Payload { stream, remaining }
                    };
                    self.offset = input.offset;
                    return Ok(Some(FramePiece {
                        stream,
                        data,
                        first,
                        last: remaining == 0,
                    }));
                }
                State::DaemonError { remaining } => {
                    let n = input.len().min(remaining as usize);
                    let keep = n.min(MAX_DAEMON_ERROR_LEN - self.daemon_message.len());
                    self.daemon_message.extend_from_slice(&input.bytes[..keep]);
                    input.advance(n);
                    let remaining = remaining - n as u32;
                    self.state = State::DaemonError { remaining };
                    if remaining == 0 {
                        return Err(FrameError::Daemon {
                            message: String::from_utf8_lossy(&self.daemon_message)
                                .trim_end()
                                .to_string(),
                            offset: self.frame_offset,
                        });
                    }
                }
            }
        }
    }

    /// Checks that the body ended between frames.
    pub fn finish(&self) -> Result<(), FrameError> {
        let context = match self.state {
            State::Raw => return Ok(()),
            State::Header if self.have == 0 => return Ok(()),
            State::Header => "header",
            State::Payload { .. } => "payload",
            State::DaemonError { .. } => "carrying a daemon error",
        };
        Err(FrameError::Truncated {
            context,
            offset: self.offset,
        })
    }

    fn header_step(&mut self, input: &mut Span) -> Result<(), FrameError> {
        if self.have == 0 {
            self.frame_offset = input.offset;
        }
        let header = if self.have == 0 && input.len() >= HEADER_LEN {
            let mut h = [0; HEADER_LEN];
            h.copy_from_slice(&input.bytes[..HEADER_LEN]);
            input.advance(HEADER_LEN);
            h
        } else {
            let n = (HEADER_LEN - self.have).min(input.len());
            self.header[self.have..self.have + n].copy_from_slice(&input.bytes[..n]);
            self.have += n;
            input.advance(n);
            if self.have < HEADER_LEN {
                return Ok(());
            }
            self.have = 0;
            self.header
        };
        // Bytes 1-3 are unused; Docker's reader ignores them, and so do we.
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let stream = match header[0] {
            0 | 1 => Some(StreamKind::Stdout),
            2 => Some(StreamKind::Stderr),
            3 => None,
            other => {
                return Err(FrameError::BadStream {
                    stream: other,
                    offset: self.frame_offset,
                })
            }
        };
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge {
                len,
                limit: MAX_FRAME_LEN,
                offset: self.frame_offset,
            });
        }
        self.frame_len = len;
        self.state = match stream {
            // An empty frame carries nothing, not even a timestamp: skip it.
            _ if len == 0 && stream.is_some() => State::Header,
            Some(stream) => State::Payload {
                stream,
                remaining: len,
            },
            None if len == 0 => {
                return Err(FrameError::Daemon {
                    message: String::new(),
                    offset: self.frame_offset,
                })
            }
            None => {
                self.daemon_message.clear();
                State::DaemonError { remaining: len }
            }
        };
        Ok(())
    }
}

/// Encodes one frame header; for tests, benches and fakes.
pub fn encode_header(stream: u8, len: u32) -> [u8; HEADER_LEN] {
    let l = len.to_be_bytes();
    [stream, 0, 0, 0, l[0], l[1], l[2], l[3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = encode_header(stream, payload.len() as u32).to_vec();
        v.extend_from_slice(payload);
        v
    }

    /// Runs `parts` (body slices starting at stream offset `base`) through a demuxer and
    /// reassembles each frame from its pieces.
    type Frames = Vec<(StreamKind, Vec<u8>)>;

    fn run(parts: &[&[u8]], base: u64) -> Result<(Frames, Demux), FrameError> {
        let mut d = Demux::multiplexed();
        let mut frames = Vec::new();
        let mut cur: Option<(StreamKind, Vec<u8>)> = None;
        let mut off = base;
        for p in parts {
            let mut span = Span::new(Bytes::copy_from_slice(p), off);
            off += p.len() as u64;
            while let Some(piece) = d.decode(&mut span)? {
                if piece.first {
                    assert!(cur.is_none());
                    cur = Some((piece.stream, Vec::new()));
                }
                let c = cur.as_mut().expect("piece without first");
                assert_eq!(c.0, piece.stream);
                c.1.extend_from_slice(&piece.data.bytes);
                if piece.last {
                    frames.push(cur.take().unwrap());
                }
            }
        }
        Ok((frames, d))
    }

    #[test]
    fn frames_split_anywhere() {
        let mut body = frame(1, b"out\n");
        body.extend(frame(2, b"err\n"));
        body.extend(frame(0, b"stdin is stdout"));
        body.extend(frame(1, b""));
        body.extend(frame(2, &[b'x'; 300]));
        let want = vec![
            (StreamKind::Stdout, b"out\n".to_vec()),
            (StreamKind::Stderr, b"err\n".to_vec()),
            (StreamKind::Stdout, b"stdin is stdout".to_vec()),
            (StreamKind::Stderr, vec![b'x'; 300]),
        ];
        for a in 0..=body.len() {
            for b in (a..=body.len()).step_by(7) {
                let (frames, d) = run(&[&body[..a], &body[a..b], &body[b..]], 0).unwrap();
                assert_eq!(frames, want, "split at {a} {b}");
                assert!(d.at_boundary());
                assert_eq!(d.finish(), Ok(()));
            }
        }
    }

    #[test]
    fn payload_is_zero_copy() {
        let body = Bytes::from(frame(1, b"hello"));
        let mut span = Span::new(body.clone(), 100);
        let mut d = Demux::multiplexed();
        let piece = d.decode(&mut span).unwrap().unwrap();
        assert_eq!(piece.data.bytes.as_ptr(), body[8..].as_ptr());
        assert_eq!(piece.data.offset, 108);
        assert!(piece.first && piece.last);
    }

    #[test]
    fn oversized_frame() {
        let mut body = frame(1, b"ok\n");
        body.extend_from_slice(&encode_header(2, MAX_FRAME_LEN + 1));
        let e = run(&[&body[..13], &body[13..]], 1000).unwrap_err();
        assert_eq!(
            e,
            FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                limit: MAX_FRAME_LEN,
                offset: 1011
            }
        );
        assert!(e.to_string().contains("1048577"), "{e}");
        assert!(e.to_string().contains("at byte 1011"), "{e}");
        // Exactly at the bound is fine.
        assert!(run(&[&encode_header(1, MAX_FRAME_LEN)], 0).is_ok());
    }

    #[test]
    fn unknown_stream_type() {
        let mut body = frame(2, b"e\n");
        body.extend(frame(7, b"?"));
        let e = run(&[&body], 50).unwrap_err();
        assert_eq!(
            e,
            FrameError::BadStream {
                stream: 7,
                offset: 60
            }
        );
        assert!(e.to_string().contains("type 7") && e.to_string().contains("at byte 60"));
    }

    #[test]
    fn daemon_error_frame() {
        let mut body = frame(1, b"line\n");
        body.extend(frame(3, b"Error grabbing logs: invalid character 'x'\n"));
        for cut in 0..body.len() {
            let e = run(&[&body[..cut], &body[cut..]], 0).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("dockerd: Error grabbing logs: invalid character 'x' (frame at byte 13)")
            );
        }
        let long = frame(3, &vec![b'e'; 100_000]);
        let FrameError::Daemon { message, .. } = run(&[&long], 0).unwrap_err() else {
            panic!()
        };
        assert_eq!(message.len(), MAX_DAEMON_ERROR_LEN);
    }

    #[test]
    fn truncated_frames() {
        let body = frame(1, b"hello");
        for cut in 1..body.len() {
            let (_, d) = run(&[&body[..cut]], 10).unwrap();
            let e = d.finish().unwrap_err();
            assert_eq!(e.offset(), 10 + cut as u64, "{e}");
            let what = if cut < 8 { "header" } else { "payload" };
            assert!(e.to_string().contains(what), "{e}");
        }
    }

    #[test]
    fn raw_passes_through() {
        let mut d = Demux::raw();
        let mut span = Span::new(Bytes::from_static(b"\x01\x00anything"), 5);
        let piece = d.decode(&mut span).unwrap().unwrap();
        assert_eq!(&piece.data.bytes[..], b"\x01\x00anything");
        assert_eq!(piece.stream, StreamKind::Stdout);
        assert!(span.is_empty());
        assert_eq!(d.decode(&mut span), Ok(None));
        assert_eq!(d.finish(), Ok(()));
    }
}
