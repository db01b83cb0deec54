//! A small blocking HTTP/1.1 server with limits: one accept thread per listening socket, one
//! thread per connection, at most `server.max_connections` of them.
//!
//! Why not a library server: the API must survive what clients do to it, and `tiny_http` (used
//! before) has neither a bound on its threads nor a time limit on a request, so a few hundred
//! clients that connect and send nothing held a thread each, forever. Here:
//!
//! - Connections beyond `max_connections` are answered `503` with `Retry-After: 1` and closed.
//! - A new connection must send a whole request (head and body) within `read_timeout`; a
//!   kept-alive one may wait `idle_timeout` for its next request's first byte, which then
//!   starts `read_timeout`. One that runs out is answered `408` (if it sent anything) and
//!   closed. Answers must be written within `write_timeout`.
//! - A head over `max_header_bytes` is answered `431`; a body over the route's limit `400`
//!   (as before; refused from `Content-Length`, unread, or while decoding a chunked body).
//!   `Expect: 100-continue` is honoured when the route reads the body.
//! - Every read waits at most [`POLL`] before looking at the stop flag, so connections end
//!   within [`POLL`] of a stop; the accept thread waits for them (up to
//!   [`DRAIN_TIMEOUT`]) before the ingest queue sender is dropped, so a line answered
//!   `accepted` is in the queue before the dispatcher sees it closed.
//!
//! Routes run on the connection threads, concurrently: they read atomics and small locks.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{ApiState, POLL};
use crate::config::ServerConfig;

/// How long a stopping server waits for its connections to finish their request.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Headers a request may have (httparse needs a fixed array).
const MAX_HEADERS: usize = 100;
/// Stack of a connection thread: routes are shallow (serde_json bounds its recursion at 128).
const CONN_STACK: usize = 512 * 1024;

/// The server's limits (`server.*`; the metrics server uses the same).
#[derive(Clone, Debug)]
pub struct Limits {
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(s: &ServerConfig) -> Limits {
        // Zero would make every read time out at once: the config keeps defaults for zero,
        // this only guards a struct built by hand.
        let at_least = |d: Duration| d.max(Duration::from_millis(1));
        Limits {
            read_timeout: at_least(s.read_timeout),
            write_timeout: at_least(s.write_timeout),
            idle_timeout: at_least(s.idle_timeout),
            max_header_bytes: s.max_header_bytes.max(1024),
            max_connections: s.max_connections.max(1),
        }
    }
}

/// An answer.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub allow: Option<&'static str>,
}

impl Reply {
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        let mut body = serde_json::to_vec(value).unwrap_or_default();
        body.push(b'\n');
        Reply {
            status,
            content_type: "application/json",
            body,
            allow: None,
        }
    }

    pub fn text(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            allow: None,
        }
    }

    pub fn error(status: u16, message: &str) -> Reply {
        Reply::json(
            status,
            &serde_json::json!({ "status": "error", "error": message }),
        )
    }
}

/// What a router sees of a request.
pub struct Incoming<'a> {
    pub method: &'static str,
    pub path: &'a str,
    headers: &'a [(String, String)],
    body: Body<'a>,
}

/// The body of the current request, still in the connection.
struct Body<'a> {
    conn: &'a mut Conn,
    /// Where the body starts in `conn.buf`.
    start: usize,
    /// Bytes of the body on the wire: `Content-Length`, or, once a chunked body is read, its
    /// encoded length.
    len: usize,
    chunked: bool,
    /// What a chunked body may add to its data on the wire (size lines, trailers).
    max_wire: usize,
    expect_continue: bool,
    deadline: Instant,
    /// Read into the buffer (so the next request starts after it).
    read: bool,
    /// The connection can no longer be reused (the body was refused or cut short).
    spoiled: bool,
}

impl Incoming<'_> {
    /// The value of a header (name case-insensitive); the first when repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request body, refused when longer than `limit`.
    pub fn body(&mut self, limit: usize) -> Result<Vec<u8>, String> {
        let b = &mut self.body;
        if b.chunked {
            return b.chunked_body(limit);
        }
        if b.len > limit {
            b.spoiled = true;
            return Err(format!(
                "body of {} bytes is over the limit of {limit} bytes",
                b.len
            ));
        }
        if !b.read {
            if b.expect_continue && b.conn.buf.len() < b.start + b.len {
                b.expect_continue = false;
                if b.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                    b.spoiled = true;
                    return Err("cannot send 100 Continue".into());
                }
            }
            while b.conn.buf.len() < b.start + b.len {
                if let Err(e) = b.conn.fill(b.deadline) {
                    b.spoiled = true;
                    return Err(format!(
                        "body cut short at byte {} of {}: {e}",
                        b.conn.buf.len().saturating_sub(b.start),
                        b.len
                    ));
                }
            }
            b.read = true;
        }
        Ok(b.conn.buf[b.start..b.start + b.len].to_vec())
    }
}

impl Body<'_> {
    fn send_continue(&mut self) -> Result<(), String> {
        if self.expect_continue {
            self.expect_continue = false;
            if self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                self.spoiled = true;
                return Err("cannot send 100 Continue".into());
            }
        }
        Ok(())
    }

    /// Decodes a chunked body (chunk extensions ignored, trailers skipped).
    fn chunked_body(&mut self, limit: usize) -> Result<Vec<u8>, String> {
        if self.read {
            return Err("the body was read already".into());
        }
        let r = self
            .send_continue()
            .and_then(|()| self.decode_chunks(limit));
        match r {
            Ok((data, wire)) => {
                self.len = wire;
                self.read = true;
                Ok(data)
            }
            Err(e) => {
                self.spoiled = true;
                Err(e)
            }
        }
    }

    fn decode_chunks(&mut self, limit: usize) -> Result<(Vec<u8>, usize), String> {
        let mut data = Vec::new();
        let mut pos = self.start;
        let max_wire = limit.saturating_add(self.max_wire);
        loop {
            let line = self.line(pos, max_wire)?;
            let text = std::str::from_utf8(&self.conn.buf[pos..line]).unwrap_or("");
            let size_text = text.split(';').next().unwrap_or("").trim();
            let offset = pos - self.start;
            let size = (!size_text.is_empty() && size_text.len() <= 15)
                .then(|| usize::from_str_radix(size_text, 16).ok())
                .flatten()
                .ok_or_else(|| format!("bad chunk size {size_text:?} at body byte {offset}"))?;
            pos = line + 2;
            if size == 0 {
                // Trailers, up to an empty line.
                loop {
                    let end = self.line(pos, max_wire)?;
                    let empty = end == pos;
                    pos = end + 2;
                    if empty {
                        return Ok((data, pos - self.start));
                    }
                }
            }
            if data.len() + size > limit {
                return Err(format!("body is over the limit of {limit} bytes"));
            }
            self.need(pos + size + 2)?;
            data.extend_from_slice(&self.conn.buf[pos..pos + size]);
            if &self.conn.buf[pos + size..pos + size + 2] != b"\r\n" {
                return Err(format!(
                    "chunk not followed by CRLF at body byte {}",
                    pos + size - self.start
                ));
            }
            pos += size + 2;
        }
    }

    /// Where the line starting at `pos` ends (its CR), reading more as needed.
    fn line(&mut self, pos: usize, max_wire: usize) -> Result<usize, String> {
        let mut from = pos;
        loop {
            if let Some(i) = memchr::memmem::find(&self.conn.buf[from..], b"\r\n") {
                return Ok(from + i);
            }
            from = self.conn.buf.len().saturating_sub(1).max(pos);
            if self.conn.buf.len() - self.start > max_wire {
                return Err(format!("chunked body over {max_wire} bytes on the wire"));
            }
            let have = self.conn.buf.len();
            self.need(have + 1)?;
        }
    }

    /// Reads until `conn.buf` holds `end` bytes.
    fn need(&mut self, end: usize) -> Result<(), String> {
        while self.conn.buf.len() < end {
            if let Err(e) = self.conn.fill(self.deadline) {
                return Err(format!(
                    "body cut short at byte {}: {e}",
                    self.conn.buf.len().saturating_sub(self.start)
                ));
            }
        }
        Ok(())
    }
}

/// A router: the endpoint label for `response_time_seconds` and the answer.
pub type Router = fn(&ApiState, &mut Incoming<'_>) -> (&'static str, Reply);

/// Binds `addr` and serves it on new threads until `stop` is set.
pub fn spawn(
    name: &str,
    addr: &str,
    state: Arc<ApiState>,
    stop: Arc<AtomicBool>,
    router: Router,
    limits: Limits,
) -> Result<(SocketAddr, JoinHandle<()>), String> {
    let listener = TcpListener::bind(addr).map_err(|e| e.to_string())?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let thread_name = format!("{name}-http");
    let conn_name = format!("{name}-conn");
    let thread = thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            accept_loop(&listener, &state, &stop, router, &limits, &conn_name);
            state.close_ingest();
        })
        .map_err(|e| e.to_string())?;
    Ok((bound, thread))
}

/// Decrements the live connection count when a connection thread ends, however it ends.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

fn accept_loop(
    listener: &TcpListener,
    state: &Arc<ApiState>,
    stop: &Arc<AtomicBool>,
    router: Router,
    limits: &Limits,
    conn_name: &str,
) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Relaxed) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_readable(listener);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and the like: the pending connection stays in the backlog; try again
                // once something was released.
                tracing::warn!("HTTP server: accept: {e}");
                thread::sleep(POLL);
                continue;
            }
        };
        if active.load(Relaxed) >= limits.max_connections {
            state.api_error("connection_limit");
            refuse(stream);
            continue;
        }
        active.fetch_add(1, Relaxed);
        let guard = Active(active.clone());
        let (state, stop, limits) = (state.clone(), stop.clone(), limits.clone());
        let spawned = thread::Builder::new()
            .name(conn_name.to_string())
            .stack_size(CONN_STACK)
            .spawn(move || {
                let _guard = guard;
                serve_connection(stream, &state, &stop, router, &limits);
            });
        if let Err(e) = spawned {
            tracing::warn!("HTTP server: no thread for a connection: {e}");
        }
    }
    let until = Instant::now() + DRAIN_TIMEOUT;
    while active.load(Relaxed) > 0 && Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to [`POLL`] for a connection to accept.
fn wait_readable(listener: &TcpListener) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(listener, PollFlags::IN)];
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: i64::from(POLL.subsec_nanos()),
    };
    if poll(&mut fds, Some(&timeout)).is_err() {
        thread::sleep(Duration::from_millis(10));
    }
}

/// Answers a connection over the limit without reading its request.
fn refuse(mut stream: TcpStream) {
    let body = b"{\"status\":\"error\",\"error\":\"too many connections\"}\n";
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: \
         1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    // Closing with unread request bytes would reset the connection and could drop the answer
    // on the client's side: end our side, and let the client close.
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Why a connection stopped reading.
#[derive(Debug)]
enum ReadEnd {
    Timeout,
    Closed,
    Stopped,
    Io(io::Error),
}

impl std::fmt::Display for ReadEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadEnd::Timeout => f.write_str("time limit reached"),
            ReadEnd::Closed => f.write_str("connection closed by the client"),
            ReadEnd::Stopped => f.write_str("server stopping"),
            ReadEnd::Io(e) => write!(f, "{e}"),
        }
    }
}

struct Conn {
    stream: TcpStream,
    /// Received and not yet consumed.
    buf: Vec<u8>,
    stop: Arc<AtomicBool>,
    write_timeout: Duration,
}

impl Conn {
    /// Reads what is there into `buf`, waiting until `deadline` at most.
    fn fill(&mut self, deadline: Instant) -> Result<usize, ReadEnd> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if self.stop.load(Relaxed) {
                return Err(ReadEnd::Stopped);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReadEnd::Timeout);
            }
            let wait = (deadline - now).min(POLL).max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(wait))
                .map_err(ReadEnd::Io)?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ReadEnd::Closed),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(ReadEnd::Io(e)),
            }
        }
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.set_write_timeout(Some(self.write_timeout))?;
        self.stream.write_all(data)
    }
}

/// A parsed request head.
struct Head {
    len: usize,
    method: &'static str,
    path: String,
    keep_alive: bool,
    headers: Vec<(String, String)>,
}

fn method_name(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// Parses a request head at the start of `buf`: `Ok(None)` while incomplete, `Err` with the
/// status and reason to answer when it is malformed or too large.
pub fn parse_head(buf: &[u8], max_bytes: usize) -> Result<Option<HeadSummary>, (u16, String)> {
    parse(buf, max_bytes).map(|h| {
        h.map(|h| HeadSummary {
            len: h.len,
            method: h.method,
            path: h.path,
            keep_alive: h.keep_alive,
            headers: h.headers,
        })
    })
}

/// What [`parse_head`] found (public for the fuzz harness).
#[derive(Debug)]
pub struct HeadSummary {
    pub len: usize,
    pub method: &'static str,
    pub path: String,
    pub keep_alive: bool,
    pub headers: Vec<(String, String)>,
}

fn parse(buf: &[u8], max_bytes: usize) -> Result<Option<Head>, (u16, String)> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_bytes {
                return Err((
                    431,
                    format!("request head over the limit of {max_bytes} bytes"),
                ));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err((431, format!("more than {MAX_HEADERS} headers")))
        }
        Err(e) => return Err((400, format!("bad request head: {e}"))),
    };
    if len > max_bytes {
        return Err((
            431,
            format!("request head of {len} bytes over the limit of {max_bytes} bytes"),
        ));
    }
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let connection = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .map(|(_, v)| v.to_ascii_lowercase());
    let keep_alive = match req.version {
        Some(1) => !connection.as_deref().is_some_and(|c| c.contains("close")),
        _ => connection
            .as_deref()
            .is_some_and(|c| c.contains("keep-alive")),
    };
    let target = req.path.unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
    Ok(Some(Head {
        len,
        method: method_name(req.method.unwrap_or("")),
        path,
        keep_alive,
        headers,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn serialize(reply: &Reply, head_only: bool, keep_alive: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    if let Some(allow) = reply.allow {
        out.push_str(&format!("Allow: {allow}\r\n"));
    }
    if reply.status == 401 {
        out.push_str("WWW-Authenticate: Bearer realm=\"log_capturer\"\r\n");
    }
    out.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&reply.body);
    }
    bytes
}

fn serve_connection(
    stream: TcpStream,
    state: &ApiState,
    stop: &Arc<AtomicBool>,
    router: Router,
    limits: &Limits,
) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        stop: stop.clone(),
        write_timeout: limits.write_timeout,
    };
    let mut first = true;
    loop {
        let wait_until = Instant::now()
            + if first {
                limits.read_timeout
            } else {
                limits.idle_timeout
            };
        first = false;
        let mut started = (!conn.buf.is_empty()).then(Instant::now);
        let head = loop {
            if !conn.buf.is_empty() {
                match parse(&conn.buf, limits.max_header_bytes) {
                    Ok(Some(head)) => break Ok(head),
                    Ok(None) => {}
                    Err(e) => break Err(e),
                }
            }
            let deadline = started.map_or(wait_until, |s| s + limits.read_timeout);
            match conn.fill(deadline) {
                Ok(_) => {
                    started.get_or_insert_with(Instant::now);
                }
                Err(ReadEnd::Timeout) if started.is_some() => {
                    break Err((408, "request head not received within read_timeout".into()))
                }
                Err(_) => return,
            }
        };
        let started = started.unwrap_or_else(Instant::now);
        let head = match head {
            Ok(head) => head,
            Err((status, message)) => {
                state.api_error("bad_request");
                let _ = conn.write(&serialize(&Reply::error(status, &message), false, false));
                return;
            }
        };
        let mut refusal = None;
        let header = |name: &str| {
            head.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        // Transfer-Encoding wins over Content-Length (RFC 9112 6.3); a request with both is
        // served but its connection is not reused (the framing of what follows is in doubt).
        let encoding = header("transfer-encoding").map(str::to_ascii_lowercase);
        let chunked = match encoding.as_deref() {
            None | Some("identity") => false,
            Some(e) if e.rsplit(',').next().map(str::trim) == Some("chunked") => true,
            Some(_) => {
                refusal = Some((
                    400,
                    "unsupported Transfer-Encoding: send chunked or Content-Length",
                ));
                false
            }
        };
        let ambiguous = chunked && header("content-length").is_some();
        let body_len = match header("content-length").map(|v| v.parse::<usize>()) {
            _ if chunked => 0,
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                refusal = Some((400, "bad Content-Length"));
                0
            }
        };
        let expect_continue =
            header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if let Some((status, message)) = refusal {
            state.api_error("bad_request");
            let _ = conn.write(&serialize(&Reply::error(status, message), false, false));
            return;
        }
        let mut rq = Incoming {
            method: head.method,
            path: &head.path,
            headers: &head.headers,
            body: Body {
                conn: &mut conn,
                start: head.len,
                len: body_len,
                chunked,
                max_wire: limits.max_header_bytes,
                expect_continue,
                deadline: started + limits.read_timeout,
                read: body_len == 0 && !chunked,
                spoiled: ambiguous,
            },
        };
        let (endpoint, reply) = router(state, &mut rq);
        // A body the route did not read is still on the wire: the connection is not reused.
        let reusable = rq.body.read && !rq.body.spoiled;
        // For a chunked body, its length on the wire once read.
        let body_len = rq.body.len;
        let keep_alive = head.keep_alive && reusable && !stop.load(Relaxed);
        let sent = conn.write(&serialize(&reply, head.method == "HEAD", keep_alive));
        state.observe_response(endpoint, head.method, started.elapsed());
        if sent.is_err() || !keep_alive {
            return;
        }
        conn.buf.drain(..head.len + body_len);
    }
}
