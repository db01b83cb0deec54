//! The whole decoding stack: raw socket bytes of a `GET /containers/{id}/logs` response in,
//! [`LogLine`]s out.

use bytes::Bytes;

use super::frame::{Demux, FrameError};
use super::http::{Event, HttpError, ResponseDecoder, ResponseHead};
use super::lines::{LineAssembler, LineError};

/// Most bytes of a non-2xx response body kept for the error message. dockerd's error bodies
/// are one small JSON object.
pub const MAX_ERROR_BODY_LEN: usize = 64 * 1024;

/// Which output stream of the container a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    /// stdout (and stdin frames, and everything from a TTY container).
    Stdout,
    /// stderr.
    Stderr,
}

impl StreamKind {
    /// `"stdout"` or `"stderr"`, as Docker names them.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

impl std::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Where the line came from.
    pub stream: StreamKind,
    /// dockerd's timestamp of the line's first message (with `timestamps`).
    pub timestamp_ns: Option<i64>,
    /// dockerd's timestamp of the line's last message; differs from `timestamp_ns` only for a
    /// line reassembled from partial messages. This is what a resume with `since` must use.
    pub last_timestamp_ns: Option<i64>,
    /// The line without its `\n` (nor, for a TTY, the `\r` before it). A zero-copy slice of the
    /// received bytes unless the line spanned reads.
    pub message: Bytes,
    /// The line hit the length bound and continues in the next line of this stream.
    pub truncated: bool,
}

/// What the request asked for; both must match the request's query and the container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// The container has a TTY (`Config.Tty`): a raw stream without frame headers.
    pub tty: bool,
    /// The request had `timestamps=1`: every message starts with `<RFC 3339> `.
    pub timestamps: bool,
}

/// Why decoding stopped. Each variant but [`Status`](DecodeError::Status) names the byte
/// offset, in the response stream (head included), where the problem was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// HTTP framing: head, chunked encoding, truncation.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// Docker frame layer, including an in-band daemon error.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Timestamp prefixes.
    #[error(transparent)]
    Line(#[from] LineError),
    /// dockerd answered with a non-2xx status; `message` is its JSON `message` (or the body).
    #[error("dockerd answered HTTP {status} {reason}: {message}")]
    Status {
        status: u16,
        reason: String,
        message: String,
    },
    /// Bytes arrived after the response was complete.
    #[error("{len} bytes after the end of the response at byte {offset}")]
    TrailingData { len: usize, offset: u64 },
}

impl DecodeError {
    /// Offset in the response stream where the error was found, when there is one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            DecodeError::Http(e) => Some(e.offset()),
            DecodeError::Frame(e) => Some(e.offset()),
            DecodeError::Line(e) => Some(e.offset()),
            DecodeError::Status { .. } => None,
            DecodeError::TrailingData { offset, .. } => Some(*offset),
        }
    }

    /// The HTTP status of a non-2xx answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            DecodeError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Debug)]
enum Phase {
    Head,
    Body,
    ErrorBody(Vec<u8>),
    Done,
}

/// Decodes one log stream response. See the [module docs](super) for the layers.
///
/// Errors are final: once `feed` or `finish` has failed, both return the same error again.
#[derive(Debug)]
pub struct LogDecoder {
    opts: DecodeOptions,
    tty: bool,
    http: ResponseDecoder,
    demux: Demux,
    lines: LineAssembler,
    phase: Phase,
    error: Option<DecodeError>,
    /// Decide raw or multiplexed from the first body byte (see [`Self::detecting_tty`]).
    detect: bool,
}

impl LogDecoder {
    /// A decoder for a response to a request made with `opts`.
    pub fn new(opts: DecodeOptions) -> Self {
        LogDecoder {
            opts,
            tty: opts.tty,
            http: ResponseDecoder::new(),
            demux: Demux::new(opts.tty),
            lines: LineAssembler::new(opts.tty, opts.timestamps),
            phase: Phase::Head,
            error: None,
            detect: false,
        }
    }

    /// A decoder for a stream whose TTY flag is not known (an attach made at `create`, before
    /// any inspect): unless dockerd's `Content-Type` says multiplexed, the first body byte
    /// decides. A multiplexed stream starts with a frame header, whose first byte is 0, 1 or
    /// 2; a TTY's output starting with such a control byte would be read as frames (and most
    /// likely end the stream with a frame error naming the offset).
    pub fn detecting_tty(timestamps: bool) -> Self {
        LogDecoder {
            detect: true,
            ..LogDecoder::new(DecodeOptions {
                tty: false,
                timestamps,
            })
        }
    }

    /// The options given to [`new`](Self::new).
    pub fn options(&self) -> DecodeOptions {
        self.opts
    }

    /// Whether the stream is decoded as raw (TTY). Equals `options().tty` unless dockerd's
    /// `Content-Type` said `application/vnd.docker.multiplexed-stream` (API >= 1.42), which is
    /// believed over the option. Its `raw-stream` is not: before 1.42 dockerd sends it for
    /// multiplexed streams too.
    pub fn is_tty(&self) -> bool {
        self.tty
    }

    /// The response head, once received.
    pub fn head(&self) -> Option<&ResponseHead> {
        self.http.head()
    }

    /// Bytes of the response consumed so far.
    pub fn offset(&self) -> u64 {
        self.http.offset()
    }

    /// True once the response is complete (its body ended, or `finish` succeeded).
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Decodes `data`, the next bytes read from the socket, appending complete lines to `out`.
    ///
    /// When the response body ends (last chunk, or `Content-Length` reached), lines still open
    /// are flushed at once. After an error nothing more is decoded.
    pub fn feed(&mut self, data: Bytes, out: &mut Vec<LogLine>) -> Result<(), DecodeError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let r = self.feed_inner(data, out);
        if let Err(e) = &r {
            self.error = Some(e.clone());
        }
        r
    }

    /// Ends the response at socket EOF: flushes an unterminated last line; an error if the
    /// response was cut short (then a partly received line is *not* emitted: a resume from the
    /// last emitted line's timestamp will fetch it whole).
    pub fn finish(&mut self, out: &mut Vec<LogLine>) -> Result<(), DecodeError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let r = self.finish_inner(out);
        if let Err(e) = &r {
            self.error = Some(e.clone());
        }
        r
    }

    fn feed_inner(&mut self, data: Bytes, out: &mut Vec<LogLine>) -> Result<(), DecodeError> {
        let mut input = data;
        while let Some(event) = self.http.decode(&mut input)? {
            match event {
                Event::Head => self.start_body(),
                Event::Data(span) => match &mut self.phase {
                    Phase::Body => {
                        if self.detect && !span.bytes.is_empty() {
                            self.detect = false;
                            self.set_tty(span.bytes[0] > 2);
                        }
                        let mut span = span;
                        while let Some(piece) = self.demux.decode(&mut span)? {
                            if self.tty {
                                self.lines.push_raw(piece.data, out)?;
                            } else {
                                self.lines.push_frame(piece, out)?;
                            }
                        }
                    }
                    Phase::ErrorBody(body) => {
                        let keep = span.len().min(MAX_ERROR_BODY_LEN - body.len());
                        body.extend_from_slice(&span.bytes[..keep]);
                        if keep < span.len() {
                            return Err(self.status_error());
                        }
                    }
                    // The HTTP layer hands out body data only between Head and End.
                    Phase::Head | Phase::Done => {}
                },
                Event::End => self.end_body(out)?,
            }
        }
        if !input.is_empty() {
            return Err(DecodeError::TrailingData {
                len: input.len(),
                offset: self.http.offset(),
            });
        }
        Ok(())
    }

    fn finish_inner(&mut self, out: &mut Vec<LogLine>) -> Result<(), DecodeError> {
        match self.phase {
            Phase::Done => Ok(()),
            // A cut error body still says more than "truncated".
            Phase::ErrorBody(_) => Err(self.status_error()),
            Phase::Head | Phase::Body => {
                self.http.finish()?;
                self.end_body(out)
            }
        }
    }

    fn start_body(&mut self) {
        let Some(head) = self.http.head() else {
            return;
        };
        if !head.is_success() {
            self.phase = Phase::ErrorBody(Vec::new());
            return;
        }
        let multiplexed = head.content_type.as_deref().is_some_and(|ct| {
            ct.trim_start().get(..41).is_some_and(|t| {
                t.eq_ignore_ascii_case("application/vnd.docker.multiplexed-stream")
            })
        });
        if multiplexed {
            self.detect = false;
            if self.tty {
                self.set_tty(false);
            }
        }
        self.phase = Phase::Body;
    }

    /// Before the first body byte: how the body is to be read.
    fn set_tty(&mut self, tty: bool) {
        self.tty = tty;
        self.demux = Demux::new(tty);
        self.lines = LineAssembler::new(tty, self.opts.timestamps);
    }

    fn end_body(&mut self, out: &mut Vec<LogLine>) -> Result<(), DecodeError> {
        match self.phase {
            Phase::ErrorBody(_) => return Err(self.status_error()),
            Phase::Body => {
                self.demux.finish()?;
                self.lines.finish(out)?;
            }
            Phase::Head | Phase::Done => {}
        }
        self.phase = Phase::Done;
        Ok(())
    }

    fn status_error(&self) -> DecodeError {
        let (status, reason) = self
            .http
            .head()
            .map_or((0, String::new()), |h| (h.status, h.reason.clone()));
        let body: &[u8] = match &self.phase {
            Phase::ErrorBody(b) => b,
            _ => &[],
        };
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
        let message = if message.is_empty() {
            "(no message)".to_string()
        } else {
            message
        };
        DecodeError::Status {
            status,
            reason,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detecting_tty_reads_the_first_body_byte() {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n";
        let mut framed = head.as_bytes().to_vec();
        framed.extend(encode_header(2, 4));
        framed.extend(b"err\n");
        let mut d = LogDecoder::detecting_tty(false);
        let mut out = Vec::new();
        // Head and body in separate reads: the decision waits for a body byte.
        d.feed(Bytes::copy_from_slice(head.as_bytes()), &mut out)
            .unwrap();
        d.feed(Bytes::from(framed[head.len()..].to_vec()), &mut out)
            .unwrap();
        d.finish(&mut out).unwrap();
        assert!(!d.is_tty());
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].stream, &out[0].message[..]),
            (StreamKind::Stderr, &b"err"[..])
        );

        let mut raw = head.as_bytes().to_vec();
        raw.extend(b"tty line\r\nnext\r\n");
        let mut d = LogDecoder::detecting_tty(false);
        let mut out = Vec::new();
        d.feed(Bytes::from(raw), &mut out).unwrap();
        d.finish(&mut out).unwrap();
        assert!(d.is_tty());
        let msgs: Vec<&[u8]> = out.iter().map(|l| &l.message[..]).collect();
        assert_eq!(msgs, vec![&b"tty line"[..], b"next"]);
    }
    use crate::decode::frame::encode_header;
    use crate::decode::timestamp::format_rfc3339_nanos;

    const T0: i64 = 1_795_818_192_750_760_435;

    fn head(content_type: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: {content_type}\r\n\
             Docker-Experimental: false\r\nOstype: linux\r\n\
             Server: Docker/20.10.24+dfsg1 (linux)\r\nDate: Fri, 27 Nov 2026 22:23:12 GMT\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        )
    }

    fn chunk(data: &[u8]) -> Vec<u8> {
        let mut v = format!("{:x}\r\n", data.len()).into_bytes();
        v.extend_from_slice(data);
        v.extend_from_slice(b"\r\n");
        v
    }

    fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = encode_header(stream, payload.len() as u32).to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn stamped(t: i64, text: &str) -> Vec<u8> {
        format!("{} {text}", format_rfc3339_nanos(T0 + t)).into_bytes()
    }

    fn decode_all(opts: DecodeOptions, resp: &[u8]) -> (Vec<LogLine>, Result<(), DecodeError>) {
        let mut d = LogDecoder::new(opts);
        let mut out = Vec::new();
        let r = d
            .feed(Bytes::copy_from_slice(resp), &mut out)
            .and_then(|()| d.finish(&mut out));
        (out, r)
    }

    const MUX_TS: DecodeOptions = DecodeOptions {
        tty: false,
        timestamps: true,
    };

    #[test]
    fn multiplexed_with_timestamps() {
        let mut resp = head("application/vnd.docker.raw-stream").into_bytes();
        resp.extend(chunk(&frame(1, &stamped(1, "hello\n"))));
        resp.extend(chunk(&frame(2, &stamped(2, "oops\n"))));
        resp.extend(b"0\r\n\r\n");
        let mut d = LogDecoder::new(MUX_TS);
        let mut out = Vec::new();
        // One byte at a time.
        for b in &resp {
            d.feed(Bytes::copy_from_slice(&[*b]), &mut out).unwrap();
        }
        assert!(d.is_done());
        d.finish(&mut out).unwrap();
        assert_eq!(d.head().unwrap().status, 200);
        let got: Vec<_> = out
            .iter()
            .map(|l| {
                (
                    l.stream,
                    &l.message[..],
                    l.timestamp_ns,
                    l.last_timestamp_ns,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    StreamKind::Stdout,
                    &b"hello"[..],
                    Some(T0 + 1),
                    Some(T0 + 1)
                ),
                (StreamKind::Stderr, b"oops", Some(T0 + 2), Some(T0 + 2)),
            ]
        );
    }

    #[test]
    fn unterminated_last_line_is_flushed_at_eof() {
        let mut resp = head("x").into_bytes();
        resp.extend(chunk(&frame(1, &stamped(1, "no newline"))));
        let mut d = LogDecoder::new(MUX_TS);
        let mut out = Vec::new();
        d.feed(Bytes::from(resp.clone()), &mut out).unwrap();
        assert!(out.is_empty());
        // EOF in the middle of the chunked body: truncation, and no half line.
        assert!(d.finish(&mut out).is_err());
        assert!(out.is_empty());

        resp.extend(b"0\r\n\r\n");
        let (out, r) = decode_all(MUX_TS, &resp);
        r.unwrap();
        assert_eq!(&out[0].message[..], b"no newline");

        // A raw body running to EOF.
        let resp = b"HTTP/1.0 200 OK\r\n\r\nfirst\nlast";
        let (out, r) = decode_all(
            DecodeOptions {
                tty: true,
                timestamps: false,
            },
            resp,
        );
        r.unwrap();
        let msgs: Vec<_> = out.iter().map(|l| &l.message[..]).collect();
        assert_eq!(msgs, vec![&b"first"[..], b"last"]);
    }

    #[test]
    fn error_status_carries_dockerd_message() {
        let resp =
            b"HTTP/1.1 404 Not Found\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n\
Content-Length: 45\r\n\r\n{\"message\":\"No such container: deadbeef1234\"}";
        let (_, r) = decode_all(MUX_TS, resp);
        let e = r.unwrap_err();
        assert_eq!(e.status(), Some(404));
        assert_eq!(
            e.to_string(),
            "dockerd answered HTTP 404 Not Found: No such container: deadbeef1234"
        );
        // Cut short, or not JSON: still the status.
        let (_, r) = decode_all(MUX_TS, &resp[..resp.len() - 10]);
        assert_eq!(r.unwrap_err().status(), Some(404));
        let resp = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom";
        let (_, r) = decode_all(MUX_TS, resp);
        assert!(r
            .unwrap_err()
            .to_string()
            .ends_with("500 Internal Server Error: boom"));
        // Too big a body: the error comes as soon as the bound is passed.
        let mut resp = b"HTTP/1.1 500 Oops\r\n\r\n".to_vec();
        resp.resize(resp.len() + MAX_ERROR_BODY_LEN + 1, b'x');
        let mut d = LogDecoder::new(MUX_TS);
        assert_eq!(
            d.feed(Bytes::from(resp), &mut Vec::new())
                .unwrap_err()
                .status(),
            Some(500)
        );
    }

    #[test]
    fn daemon_error_and_errors_are_sticky() {
        let mut resp = head("x").into_bytes();
        resp.extend(chunk(&frame(1, &stamped(1, "ok\n"))));
        resp.extend(chunk(&frame(3, b"Error grabbing logs: unexpected EOF\n")));
        let mut d = LogDecoder::new(MUX_TS);
        let mut out = Vec::new();
        let e = d.feed(Bytes::from(resp), &mut out).unwrap_err();
        assert_eq!(out.len(), 1);
        assert!(
            e.to_string()
                .starts_with("dockerd: Error grabbing logs: unexpected EOF"),
            "{e}"
        );
        assert_eq!(
            d.feed(Bytes::from_static(b"more"), &mut out),
            Err(e.clone())
        );
        assert_eq!(d.finish(&mut out), Err(e));
    }

    #[test]
    fn trailing_data_after_the_response() {
        let mut resp = head("x").into_bytes();
        resp.extend(b"0\r\n\r\nextra");
        let (_, r) = decode_all(MUX_TS, &resp);
        let e = r.unwrap_err();
        assert_eq!(e.offset(), Some(resp.len() as u64 - 5));
    }

    #[test]
    fn multiplexed_content_type_overrides_tty_option() {
        let mut resp = head("application/vnd.docker.multiplexed-stream").into_bytes();
        resp.extend(chunk(&frame(2, b"err\n")));
        resp.extend(b"0\r\n\r\n");
        let opts = DecodeOptions {
            tty: true,
            timestamps: false,
        };
        let mut d = LogDecoder::new(opts);
        let mut out = Vec::new();
        d.feed(Bytes::from(resp), &mut out).unwrap();
        assert!(!d.is_tty());
        assert_eq!(
            (out[0].stream, &out[0].message[..]),
            (StreamKind::Stderr, &b"err"[..])
        );
    }
}
