//! An incremental HTTP/1.1 response decoder: head, then the body as zero-copy slices.
//!
//! Input arrives as whatever the socket returned, split at any byte. Only the head (bounded by
//! [`MAX_HEAD_LEN`]) and chunk-size lines (bounded by [`MAX_CHUNK_LINE_LEN`]) are ever copied,
//! and only when a read boundary cuts through them; body bytes are handed out as
//! [`Bytes::split_to`] slices of the input, whatever the framing:
//!
//! - `Transfer-Encoding: chunked` (what dockerd sends for log streams): size line with optional
//!   extensions, data, CRLF, ..., a zero-size chunk, trailers, an empty line;
//! - `Content-Length`;
//! - neither: the body runs to EOF ([`ResponseDecoder::finish`] ends it).
//!
//! Every error carries the absolute offset, in the response stream, of the offending byte.

use bytes::Bytes;

use super::span::Span;

/// Largest response head accepted (status line and header fields, final empty line included).
pub const MAX_HEAD_LEN: usize = 64 * 1024;
/// Most header fields accepted in a head.
pub const MAX_HEADERS: usize = 64;
/// Longest chunk-size line accepted, extensions and CR included, LF excluded.
pub const MAX_CHUNK_LINE_LEN: usize = 4 * 1024;
/// Largest trailer section accepted after the last chunk.
pub const MAX_TRAILERS_LEN: usize = 64 * 1024;

/// What went wrong while decoding the HTTP layer, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// No end of head within [`MAX_HEAD_LEN`] bytes.
    #[error("HTTP response head larger than {limit} bytes (at byte {offset})")]
    HeadTooLarge { limit: usize, offset: u64 },
    /// The status line or a header field does not parse, or the framing headers contradict.
    #[error("malformed HTTP response head at byte {offset}: {reason}")]
    MalformedHead { reason: String, offset: u64 },
    /// A chunk-size line is not a hex number, overflows, is too long, or has stray bytes.
    #[error("bad chunk size line at byte {offset}: {reason}")]
    BadChunkSize { reason: &'static str, offset: u64 },
    /// Chunk data is not followed by CRLF.
    #[error("missing CRLF after chunk data at byte {offset}")]
    MissingChunkCrlf { offset: u64 },
    /// The trailer section after the last chunk exceeds [`MAX_TRAILERS_LEN`].
    #[error("chunked trailer section larger than {limit} bytes (at byte {offset})")]
    TrailersTooLarge { limit: usize, offset: u64 },
    /// The connection closed before the response was complete.
    #[error("connection closed {context} at byte {offset}")]
    Truncated { context: String, offset: u64 },
}

impl HttpError {
    /// Offset in the response stream where the error was detected.
    pub fn offset(&self) -> u64 {
        match *self {
            HttpError::HeadTooLarge { offset, .. }
            | HttpError::MalformedHead { offset, .. }
            | HttpError::BadChunkSize { offset, .. }
            | HttpError::MissingChunkCrlf { offset }
            | HttpError::TrailersTooLarge { offset, .. }
            | HttpError::Truncated { offset, .. } => offset,
        }
    }
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all (1xx, 204, 304).
    Empty,
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// `Content-Length`.
    Length(u64),
    /// Neither: the body ends at EOF.
    UntilEof,
}

/// The parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// HTTP minor version: 0 or 1.
    pub minor_version: u8,
    /// Status code.
    pub status: u16,
    /// Reason phrase (lossy UTF-8).
    pub reason: String,
    /// True when the final transfer coding is `chunked`.
    pub chunked: bool,
    /// `Content-Length`, if sent (ignored for framing when chunked, as RFC 9112 says).
    pub content_length: Option<u64>,
    /// `Content-Type`, if sent. dockerd says `application/vnd.docker.multiplexed-stream` or
    /// `application/vnd.docker.raw-stream` on API >= 1.42, and `application/json` on errors.
    pub content_type: Option<String>,
    /// Every header field in order, values as lossy UTF-8.
    pub headers: Vec<(String, String)>,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// Length of the head in bytes; the body starts at this stream offset.
    pub len: usize,
}

impl ResponseHead {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One step of decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The head is complete; see [`ResponseDecoder::head`].
    Head,
    /// A piece of body, a zero-copy slice of the input, with its stream offset.
    Data(Span),
    /// The body is complete (last chunk and trailers, or `Content-Length` reached, or a
    /// bodiless status). Not emitted for a body that runs to EOF: see
    /// [`ResponseDecoder::finish`].
    End,
}

#[derive(Debug, Clone)]
enum State {
    Head,
    Length(u64),
    UntilEof,
    ChunkSize,
    ChunkData(u64),
    ChunkCr,
    ChunkLf,
    Trailers,
    Done,
    Failed(HttpError),
}

/// Incremental HTTP/1.1 response decoder. Feed it input with [`decode`](Self::decode) until it
/// returns `Ok(None)`, then feed the next read; call [`finish`](Self::finish) at EOF.
#[derive(Debug)]
pub struct ResponseDecoder {
    state: State,
    /// Stream offset of the next input byte.
    offset: u64,
    head_buf: Vec<u8>,
    head: Option<ResponseHead>,
    /// A chunk-size line cut by a read boundary.
    line: Vec<u8>,
    line_start: u64,
    trailers_len: usize,
    trailer_line_len: usize,
    trailer_first: u8,
}

impl Default for ResponseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseDecoder {
    /// A decoder expecting the first byte of a response.
    pub fn new() -> Self {
        ResponseDecoder {
            state: State::Head,
            offset: 0,
            head_buf: Vec::new(),
            head: None,
            line: Vec::new(),
            line_start: 0,
            trailers_len: 0,
            trailer_line_len: 0,
            trailer_first: 0,
        }
    }

    /// The head, once parsed.
    pub fn head(&self) -> Option<&ResponseHead> {
        self.head.as_ref()
    }

    /// Bytes consumed so far: the stream offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// True once the body is complete (after [`Event::End`] or a successful `finish`).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Decodes the next event from the front of `input`, consuming what it used.
    ///
    /// Returns `Ok(None)` when `input` is used up, or when the response is complete (any bytes
    /// left in `input` then lie beyond the response). After an error, returns it again.
    pub fn decode(&mut self, input: &mut Bytes) -> Result<Option<Event>, HttpError> {
        let r = self.step(input);
        if let Err(e) = &r {
            self.state = State::Failed(e.clone());
        }
        r
    }

    fn step(&mut self, input: &mut Bytes) -> Result<Option<Event>, HttpError> {
        loop {
            match self.state {
                State::Head => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    if self.head_step(input)? {
                        return Ok(Some(Event::Head));
                    }
                }
                State::Length(0) => {
                    self.state = State::Done;
                    return Ok(Some(Event::End));
                }
                State::Length(rem) => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let span = self.take(input, rem);
                    self.state = State::Length(rem - span.len() as u64);
                    return Ok(Some(Event::Data(span)));
                }
                State::UntilEof => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let span = self.take(input, u64::MAX);
                    return Ok(Some(Event::Data(span)));
                }
                State::ChunkSize => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    self.chunk_size_step(input)?;
                }
                State::ChunkData(rem) => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let span = self.take(input, rem);
                    let rem = rem - span.len() as u64;
                    self.state = if rem == 0 {
                        State::ChunkCr
                    } else {
                        State::ChunkData(rem)
                    };
                    return Ok(Some(Event::Data(span)));
                }
                State::ChunkCr if input.starts_with(b"\r\n") => {
                    self.consume(input, 2);
                    self.state = State::ChunkSize;
                }
                State::ChunkCr | State::ChunkLf => {
                    let Some(&b) = input.first() else {
                        return Ok(None);
                    };
                    let want = if matches!(self.state, State::ChunkCr) {
                        b'\r'
                    } else {
                        b'\n'
                    };
                    if b != want {
                        return Err(HttpError::MissingChunkCrlf {
                            offset: self.offset,
                        });
                    }
                    self.consume(input, 1);
                    self.state = if want == b'\r' {
                        State::ChunkLf
                    } else {
                        State::ChunkSize
                    };
                }
                State::Trailers => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    if self.trailers_step(input)? {
                        self.state = State::Done;
                        return Ok(Some(Event::End));
                    }
                }
                State::Done => return Ok(None),
                State::Failed(ref e) => return Err(e.clone()),
            }
        }
    }

    /// Ends the response at EOF: fine for a body that runs to EOF or is already complete, an
    /// error anywhere else.
    pub fn finish(&mut self) -> Result<(), HttpError> {
        let context = match &self.state {
            State::Done => return Ok(()),
            State::Failed(e) => return Err(e.clone()),
            State::UntilEof | State::Length(0) => {
                self.state = State::Done;
                return Ok(());
            }
            State::Head if self.head_buf.is_empty() => "before any response byte".to_string(),
            State::Head => "inside the response head".to_string(),
            State::Length(rem) => format!("with {rem} body bytes missing"),
            State::ChunkSize => "inside a chunk size line".to_string(),
            State::ChunkData(rem) => format!("inside chunk data with {rem} bytes missing"),
            State::ChunkCr | State::ChunkLf => "before the CRLF after chunk data".to_string(),
            State::Trailers => "before the end of the chunked body".to_string(),
        };
        let e = HttpError::Truncated {
            context,
            offset: self.offset,
        };
        self.state = State::Failed(e.clone());
        Err(e)
    }

    fn consume(&mut self, input: &mut Bytes, n: usize) {
        bytes::Buf::advance(input, n);
        self.offset += n as u64;
    }

    fn take(&mut self, input: &mut Bytes, max: u64) -> Span {
        let n = usize::try_from(max).map_or(input.len(), |m| m.min(input.len()));
        let bytes = if n == input.len() {
            std::mem::take(input)
        } else {
            input.split_to(n)
        };
        let span = Span::new(bytes, self.offset);
        self.offset += n as u64;
        span
    }

    /// Consumes head bytes; true once the head is complete and parsed.
    fn head_step(&mut self, input: &mut Bytes) -> Result<bool, HttpError> {
        let end = self.find_head_end(input);
        let n = end.unwrap_or(input.len());
        if self.head_buf.len() + n > MAX_HEAD_LEN {
            return Err(HttpError::HeadTooLarge {
                limit: MAX_HEAD_LEN,
                offset: MAX_HEAD_LEN as u64,
            });
        }
        let before = self.head_buf.len();
        self.head_buf.extend_from_slice(&input[..n]);
        self.consume(input, n);
        // Catch a stream that is not HTTP at all now, not after 64 KiB of waiting.
        const MAGIC: &[u8] = b"HTTP/";
        let check = self.head_buf.len().min(MAGIC.len());
        if before < check {
            if let Some(i) = (before..check).find(|&i| self.head_buf[i] != MAGIC[i]) {
                return Err(HttpError::MalformedHead {
                    reason: "response does not start with \"HTTP/\"".into(),
                    offset: i as u64,
                });
            }
        }
        if end.is_none() {
            return Ok(false);
        }
        let head = parse_head(&self.head_buf)?;
        self.state = match head.framing {
            BodyFraming::Empty => State::Length(0),
            BodyFraming::Chunked => State::ChunkSize,
            BodyFraming::Length(n) => State::Length(n),
            BodyFraming::UntilEof => State::UntilEof,
        };
        self.head = Some(head);
        self.head_buf = Vec::new();
        Ok(true)
    }

    /// Length of the part of `input` that completes the head (through its empty line), if the
    /// head ends in it. Accepts bare LF line endings, as httparse does.
    fn find_head_end(&self, input: &[u8]) -> Option<usize> {
        let buf = &self.head_buf;
        // Byte `k` positions before input[0] lies in `buf`.
        let back = |i: usize, k: usize| -> Option<u8> {
            if i >= k {
                Some(input[i - k])
            } else {
                buf.len().checked_sub(k - i).map(|j| buf[j])
            }
        };
        memchr::memchr_iter(b'\n', input).find_map(|i| match (back(i, 1), back(i, 2)) {
            (Some(b'\n'), _) | (Some(b'\r'), Some(b'\n')) => Some(i + 1),
            _ => None,
        })
    }

    fn chunk_size_step(&mut self, input: &mut Bytes) -> Result<(), HttpError> {
        if self.line.is_empty() {
            self.line_start = self.offset;
        }
        let room = MAX_CHUNK_LINE_LEN + 1 - self.line.len(); // + 1: the LF
        let window = &input[..input.len().min(room)];
        let Some(lf) = memchr::memchr(b'\n', window) else {
            if window.len() == room {
                return Err(HttpError::BadChunkSize {
                    reason: "line too long",
                    offset: self.line_start + MAX_CHUNK_LINE_LEN as u64,
                });
            }
            self.line.extend_from_slice(window);
            let n = window.len();
            self.consume(input, n);
            return Ok(());
        };
        let parsed = if self.line.is_empty() {
            parse_chunk_line(&input[..lf])
        } else {
            self.line.extend_from_slice(&input[..lf]);
            let r = parse_chunk_line(&self.line);
            self.line.clear();
            r
        };
        let size = parsed.map_err(|(pos, reason)| HttpError::BadChunkSize {
            reason,
            offset: self.line_start + pos as u64,
        })?;
        self.consume(input, lf + 1);
        self.state = if size == 0 {
            self.trailers_len = 0;
            self.trailer_line_len = 0;
            State::Trailers
        } else {
            State::ChunkData(size)
        };
        Ok(())
    }

    /// Consumes trailer bytes; true at the empty line that ends them. Trailer fields are
    /// skipped: nothing here needs them, so only the current line's length and first byte are
    /// kept.
    fn trailers_step(&mut self, input: &mut Bytes) -> Result<bool, HttpError> {
        let room = MAX_TRAILERS_LEN - self.trailers_len;
        let window = &input[..input.len().min(room)];
        let lf = memchr::memchr(b'\n', window);
        let n = lf.unwrap_or(window.len());
        if self.trailer_line_len == 0 && n > 0 {
            self.trailer_first = window[0];
        }
        self.trailer_line_len += n;
        let Some(lf) = lf else {
            if window.len() == room {
                return Err(HttpError::TrailersTooLarge {
                    limit: MAX_TRAILERS_LEN,
                    offset: self.offset + room as u64,
                });
            }
            self.trailers_len += n;
            self.consume(input, n);
            return Ok(false);
        };
        let len = std::mem::take(&mut self.trailer_line_len);
        self.trailers_len += lf + 1;
        self.consume(input, lf + 1);
        Ok(len == 0 || (len == 1 && self.trailer_first == b'\r'))
    }
}

/// Parses a chunk-size line (without its LF): hex size, optional whitespace, optional
/// `;extensions`. On error, the position in `line` and why.
fn parse_chunk_line(line: &[u8]) -> Result<u64, (usize, &'static str)> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut size: u64 = 0;
    let mut i = 0;
    while let Some(d) = line.get(i).and_then(|&b| (b as char).to_digit(16)) {
        if size > u64::MAX >> 4 {
            return Err((i, "chunk size overflows 64 bits"));
        }
        size = size << 4 | u64::from(d);
        i += 1;
    }
    if i == 0 {
        return Err((0, "chunk size is not a hex number"));
    }
    while matches!(line.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    match line.get(i) {
        None => Ok(size),
        Some(b';') => match line[i..]
            .iter()
            .position(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            Some(j) => Err((i + j, "control byte in chunk extension")),
            None => Ok(size),
        },
        Some(_) => Err((i, "unexpected byte after the chunk size")),
    }
}

fn parse_head(buf: &[u8]) -> Result<ResponseHead, HttpError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n == buf.len() => {}
        Ok(_) => {
            return Err(HttpError::MalformedHead {
                reason: "head does not end where its empty line is".into(),
                offset: buf.len() as u64,
            })
        }
        Err(e) => {
            return Err(HttpError::MalformedHead {
                reason: e.to_string(),
                offset: error_position(buf),
            })
        }
    }
    let status = resp.code.unwrap_or(0);
    let mut head = ResponseHead {
        minor_version: resp.version.unwrap_or(1),
        status,
        reason: resp.reason.unwrap_or("").to_string(),
        chunked: false,
        content_length: None,
        content_type: None,
        headers: Vec::with_capacity(resp.headers.len()),
        framing: BodyFraming::UntilEof,
        len: buf.len(),
    };
    let mut transfer_encoding = false;
    for h in resp.headers.iter() {
        let value = String::from_utf8_lossy(h.value).into_owned();
        let at = field_offset(buf, h.value);
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            // The final coding decides; a later field continues the list.
            if let Some(last) = value.rsplit(',').map(str::trim).find(|t| !t.is_empty()) {
                head.chunked = last.eq_ignore_ascii_case("chunked");
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let v = value.trim();
            let n = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .then(|| v.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| HttpError::MalformedHead {
                    reason: format!("invalid Content-Length {v:?}"),
                    offset: at,
                })?;
            if head.content_length.is_some_and(|prev| prev != n) {
                return Err(HttpError::MalformedHead {
                    reason: "conflicting Content-Length fields".into(),
                    offset: at,
                });
            }
            head.content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("content-type") && head.content_type.is_none() {
            head.content_type = Some(value.clone());
        }
        head.headers.push((h.name.to_string(), value));
    }
    head.framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        BodyFraming::Empty
    } else if head.chunked {
        BodyFraming::Chunked
    } else if transfer_encoding {
        // A final coding other than chunked: only EOF delimits the body (RFC 9112 6.3).
        BodyFraming::UntilEof
    } else if let Some(n) = head.content_length {
        BodyFraming::Length(n)
    } else {
        BodyFraming::UntilEof
    };
    Ok(head)
}

/// Offset of `field` (a slice of `buf`) within `buf`.
fn field_offset(buf: &[u8], field: &[u8]) -> u64 {
    (field.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize) as u64
}

/// Offset of the byte that makes httparse reject `buf`: httparse reports a prefix it cannot
/// yet judge as `Partial`, so the shortest failing prefix ends at the culprit. Only run on the
/// error path: 17 parses of at most 64 KiB.
fn error_position(buf: &[u8]) -> u64 {
    let fails = |n: usize| {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        httparse::Response::new(&mut fields)
            .parse(&buf[..n])
            .is_err()
    };
    let (mut lo, mut hi) = (0, buf.len()); // fails(hi), !fails(lo) as an empty input is Partial
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fails(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi.saturating_sub(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\n\
Content-Type: application/vnd.docker.multiplexed-stream\r\n\
Date: Fri, 27 Nov 2026 22:23:12 GMT\r\nServer: Docker/20.10.24+dfsg1 (linux)\r\n\
Transfer-Encoding: chunked\r\n\r\n";

    /// Feeds `parts` one after another and collects (body, ended, head).
    fn run(parts: &[&[u8]]) -> Result<(Vec<u8>, bool, ResponseDecoder), HttpError> {
        let mut d = ResponseDecoder::new();
        let mut body = Vec::new();
        let mut ended = false;
        for p in parts {
            let mut input = Bytes::copy_from_slice(p);
            while let Some(ev) = d.decode(&mut input)? {
                match ev {
                    Event::Head => assert!(d.head().is_some()),
                    Event::Data(s) => {
                        assert_eq!(s.offset, d.offset() - s.len() as u64);
                        body.extend_from_slice(&s.bytes);
                    }
                    Event::End => ended = true,
                }
            }
            assert!(input.is_empty() || ended);
        }
        Ok((body, ended, d))
    }

    fn every_split(data: &[u8]) -> impl Iterator<Item = (usize, usize)> {
        let n = data.len();
        (0..=n).flat_map(move |a| (a..=n).map(move |b| (a, b)))
    }

    #[test]
    fn chunked_head_and_body() {
        let mut resp = HEAD.to_vec();
        resp.extend_from_slice(b"5\r\nhello\r\n1;name=val\r\n \r\n10\r\n0123456789abcdef\r\n");
        resp.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n");
        let (body, ended, d) = run(&[&resp]).unwrap();
        assert_eq!(body, b"hello 0123456789abcdef");
        assert!(ended && d.is_done());
        let head = d.head().unwrap();
        assert_eq!((head.status, head.reason.as_str()), (200, "OK"));
        assert!(head.chunked);
        assert_eq!(head.framing, BodyFraming::Chunked);
        assert_eq!(
            head.content_type.as_deref(),
            Some("application/vnd.docker.multiplexed-stream")
        );
        assert_eq!(head.header("api-version"), Some("1.41"));
        assert_eq!(head.len, HEAD.len());
    }

    #[test]
    fn any_three_way_split_gives_the_same_body() {
        let mut resp = HEAD.to_vec();
        resp.extend_from_slice(b"3;x\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\n");
        for (a, b) in every_split(&resp) {
            let (body, ended, _) = run(&[&resp[..a], &resp[a..b], &resp[b..]]).unwrap();
            assert_eq!(body, b"abcde", "split at {a} {b}");
            assert!(ended);
        }
    }

    #[test]
    fn body_is_zero_copy() {
        let mut resp = HEAD.to_vec();
        resp.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
        let input_buf = Bytes::from(resp);
        let mut input = input_buf.clone();
        let mut d = ResponseDecoder::new();
        assert_eq!(d.decode(&mut input), Ok(Some(Event::Head)));
        let Ok(Some(Event::Data(s))) = d.decode(&mut input) else {
            panic!()
        };
        let at = HEAD.len() + 3;
        assert_eq!(s.bytes.as_ptr(), input_buf[at..].as_ptr());
        assert_eq!(s.offset, at as u64);
        assert_eq!(d.decode(&mut input), Ok(Some(Event::End)));
        assert_eq!(d.decode(&mut input), Ok(None));
    }

    #[test]
    fn content_length_and_until_eof() {
        let resp = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nabcde";
        let (body, ended, d) = run(&[resp]).unwrap();
        assert_eq!((body.as_slice(), ended), (&b"abcde"[..], true));
        assert_eq!(d.head().unwrap().content_length, Some(5));
        assert!(!d.head().unwrap().is_success());

        let resp = b"HTTP/1.0 200 OK\nContent-Type: text/plain\n\nto the end";
        let (body, ended, mut d) = run(&[resp]).unwrap();
        assert_eq!((body.as_slice(), ended), (&b"to the end"[..], false));
        assert_eq!(d.head().unwrap().framing, BodyFraming::UntilEof);
        assert_eq!(d.finish(), Ok(()));
        assert!(d.is_done());

        let (body, ended, _) =
            run(&[b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"]).unwrap();
        assert!(body.is_empty() && ended);
    }

    #[test]
    fn chunked_wins_over_content_length() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n";
        let (body, ended, _) = run(&[resp]).unwrap();
        assert_eq!((body.as_slice(), ended), (&b"x"[..], true));
    }

    fn err(parts: &[&[u8]]) -> HttpError {
        match run(parts) {
            Err(e) => e,
            Ok((_, _, mut d)) => d.finish().unwrap_err(),
        }
    }

    #[test]
    fn bad_chunk_sizes_name_their_offset() {
        let h = HEAD.len() as u64;
        let cases: &[(&[u8], u64, &str)] = &[
            (b"zz\r\n", h, "not a hex number"),
            (b"\r\n", h, "not a hex number"),
            (b"5x\r\nhello\r\n", h + 1, "unexpected byte"),
            (b"5 x\r\n", h + 2, "unexpected byte"),
            (b"5;a\x01\r\n", h + 3, "control byte"),
            (
                b"3\r\nabc\r\n11111111111111111\r\n",
                h + 8 + 16,
                "overflows",
            ),
        ];
        for &(body, offset, what) in cases {
            let e = err(&[HEAD, body]);
            assert!(
                matches!(e, HttpError::BadChunkSize { .. }) && e.offset() == offset,
                "{e}"
            );
            assert!(e.to_string().contains(what), "{e}");
            assert!(e.to_string().contains(&format!("at byte {offset}")), "{e}");
        }
        let long = vec![b'0'; MAX_CHUNK_LINE_LEN + 10];
        let e = err(&[HEAD, &long]);
        assert_eq!(e.offset(), h + MAX_CHUNK_LINE_LEN as u64);
        assert!(e.to_string().contains("too long"));
        // A long extension split over reads hits the same bound.
        let mut ext = b"1;".to_vec();
        ext.resize(MAX_CHUNK_LINE_LEN + 10, b'a');
        let (a, b) = ext.split_at(1000);
        assert_eq!(err(&[HEAD, a, b]).offset(), h + MAX_CHUNK_LINE_LEN as u64);
    }

    #[test]
    fn missing_crlf_after_data() {
        let h = HEAD.len() as u64;
        let e = err(&[HEAD, b"3\r\nabcd\r\n"]);
        assert_eq!(e, HttpError::MissingChunkCrlf { offset: h + 6 });
        assert!(e.to_string().contains(&format!("at byte {}", h + 6)));
        let e = err(&[HEAD, b"3\r\nabc\r", b"x"]);
        assert_eq!(e, HttpError::MissingChunkCrlf { offset: h + 7 });
    }

    #[test]
    fn malformed_and_oversized_heads() {
        let e = err(&[b"SSH-2.0-OpenSSH\r\n"]);
        assert_eq!(e.offset(), 0);
        let e = err(&[b"HTTP/1.1 200 OK\r\nGood: yes\r\nBad header\r\n\r\n"]);
        assert!(matches!(e, HttpError::MalformedHead { .. }), "{e}");
        assert_eq!(e.offset(), 31, "{e}");
        let e = err(&[b"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n"]);
        assert_eq!(e.offset(), 33, "{e}");
        let e = err(&[b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"]);
        assert!(e.to_string().contains("conflicting"));

        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() <= MAX_HEAD_LEN {
            big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let e = err(&[&big[..1000], &big[1000..]]);
        assert_eq!(
            e,
            HttpError::HeadTooLarge {
                limit: MAX_HEAD_LEN,
                offset: MAX_HEAD_LEN as u64
            }
        );
    }

    #[test]
    fn truncation_is_reported_at_finish() {
        let h = HEAD.len() as u64;
        let cases: &[(&[u8], &str)] = &[
            (b"", "before any response byte"),
            (b"HTTP/1.1 200 OK\r\nContent-", "inside the response head"),
        ];
        for &(resp, what) in cases {
            let e = err(&[resp]);
            assert!(e.to_string().contains(what), "{e}");
            assert_eq!(e.offset(), resp.len() as u64);
        }
        for (body, what) in [
            (&b"5"[..], "chunk size line"),
            (b"5\r\nab", "3 bytes missing"),
            (b"5\r\nabcde", "CRLF"),
            (b"5\r\nabcde\r\n", "chunk size line"),
            (b"0\r\n", "end of the chunked body"),
            (b"0\r\nTrailer: x\r\n", "end of the chunked body"),
        ] {
            let e = err(&[HEAD, body]);
            assert!(e.to_string().contains(what), "{body:?}: {e}");
            assert_eq!(e.offset(), h + body.len() as u64);
        }
        let e = err(&[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"]);
        assert!(e.to_string().contains("7 body bytes missing"), "{e}");
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = ResponseDecoder::new();
        let mut input = Bytes::from_static(b"nope");
        let e = d.decode(&mut input).unwrap_err();
        let mut more = Bytes::from_static(HEAD);
        assert_eq!(d.decode(&mut more), Err(e.clone()));
        assert_eq!(d.finish(), Err(e));
    }

    #[test]
    fn trailer_lines_split_anywhere() {
        let mut resp = HEAD.to_vec();
        resp.extend_from_slice(b"1\r\na\r\n0\r\nA: b\r\n\r\n");
        for (a, b) in every_split(&resp) {
            let (_, ended, _) = run(&[&resp[..a], &resp[a..b], &resp[b..]]).unwrap();
            assert!(ended, "split at {a} {b}");
        }
        // "\r\r\n" is not an empty line; nor is "\rx\n".
        let mut resp = HEAD.to_vec();
        resp.extend_from_slice(b"0\r\n\r\r\n\rx\n\n");
        let (_, ended, d) = run(&[&resp]).unwrap();
        assert!(ended && d.is_done());
    }
}
