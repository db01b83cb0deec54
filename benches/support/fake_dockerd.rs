//! A synthetic Docker Engine API server on a unix socket, for the reader benchmarks (not part
//! of the shipped binary: it is compiled into `examples/fake_dockerd.rs` and into the benches
//! that include this file with `#[path]`).
//!
//! One thread, one epoll set, non-blocking sockets, HTTP/1.1 with keep-alive (bollard/hyper
//! reuse connections) or `Connection: close` (what log_capturer sends). It answers:
//! - `GET /_ping` (`API-Version` header), `/version` (`ApiVersion`, `MinAPIVersion`),
//!   `/containers/json`, `/containers/{id}/json` (inspect: `Config.Tty` false, `State.Running`
//!   true, `Name`, `Image`, `Created`), with or without a `/v1.xx` prefix. With
//!   `api_versions: Some((min, max))` a versioned path outside that range gets dockerd's
//!   `400 client version 1.41 is too old. Minimum supported API version is 1.44, ...` (or
//!   `... is too new. Maximum supported API version is 1.52`), as Engine 29 answers; without,
//!   it reports 1.41 (minimum 1.12), as dockerd 20.10, and serves any version;
//! - `GET /events`: the chunked head, then nothing, held open;
//! - `GET /containers/{id}/logs`: multiplexed frames (stdout), `timestamps=1` prefixes, chunked
//!   transfer encoding with one frame per chunk as dockerd sends them, in one of three modes:
//!   - bulk: L lines per container, pre-encoded once into a buffer every stream shares and
//!     written with `writev` as fast as the socket takes it; `since` skips the lines before it;
//!     then the terminating chunk (`follow=0`), or nothing and the connection held (`follow=1`);
//!   - steady: R lines per second per stream (`follow=1`), each frame its own chunk and its own
//!     `write`, as dockerd flushes per message; `follow=0` ends at once (nothing logged yet);
//!   - silent: the response head, then nothing.
//! - `GET /_bench/stats`: `{"open":..,"accepted":..,"log_bytes":..,"log_lines":..}`; `open`
//!   counts open connections, this one excluded.

use std::collections::HashMap;
use std::io;
use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::io::Errno;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Bulk,
    Steady,
    Silent,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bulk" => Ok(Mode::Bulk),
            "steady" => Ok(Mode::Steady),
            "silent" => Ok(Mode::Silent),
            _ => Err(format!("mode {s:?}: bulk | steady | silent")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub socket: PathBuf,
    pub mode: Mode,
    pub containers: usize,
    /// Bulk: lines per container.
    pub lines: usize,
    /// Steady: lines per second per stream.
    pub rate: u32,
    /// The API versions served, `(min, max)` as `(major, minor)`; `None`: 1.41 reported,
    /// every version served.
    pub api_versions: Option<ApiRange>,
}

/// `(major, minor)`.
pub type Version = (u16, u16);
/// `(min, max)`.
pub type ApiRange = (Version, Version);

/// `1.44-1.52` -> `((1, 44), (1, 52))`.
pub fn parse_api_versions(s: &str) -> Result<ApiRange, String> {
    let bad = || format!("API versions {s:?}: expected MIN-MAX, e.g. 1.44-1.52");
    let (min, max) = s.split_once('-').ok_or_else(bad)?;
    let one = |v: &str| -> Result<Version, String> {
        let (a, b) = v.split_once('.').ok_or_else(bad)?;
        Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?))
    };
    Ok((one(min)?, one(max)?))
}

fn version_text(v: Version) -> String {
    format!("{}.{}", v.0, v.1)
}

/// Live counters, readable from any thread (and over `GET /_bench/stats`).
#[derive(Debug, Default)]
pub struct ServerStats {
    pub open: AtomicI64,
    pub accepted: AtomicU64,
    /// Bytes of log response bodies written (the wire, chunk framing included).
    pub log_bytes: AtomicU64,
    /// Log lines written (steady mode; bulk counts whole responses' lines when queued).
    pub log_lines: AtomicU64,
    /// Requests refused with a 400 for their API version.
    pub refused: AtomicU64,
}

/// Ten lines share one microsecond-spaced timeline: line i of the bulk body is stamped
/// `base + i µs`.
const BULK_STEP_NS: i64 = 1_000;
const MAX_WRITE: usize = 4 << 20;

/// The container id of index `i`: 64 hex digits, unique in its first 12 (the short id).
pub fn container_id(i: usize) -> String {
    format!("{:08x}", i + 1).repeat(8)
}

fn container_index(id: &str, n: usize) -> Option<usize> {
    let id = id.strip_prefix("bench-").map_or_else(
        || {
            let head = id.get(..8)?;
            usize::from_str_radix(head, 16).ok()?.checked_sub(1)
        },
        |num| num.parse().ok(),
    )?;
    (id < n).then_some(id)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// `2026-11-27T22:23:12.750760435Z`
pub fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// A message of about 120 bytes (100 to 140), newline excluded.
fn message(i: u64, out: &mut Vec<u8>) {
    let len = 100 + (i.wrapping_mul(7919) % 41) as usize;
    let start = out.len();
    out.extend_from_slice(format!("level=info seq={i:010} msg=\"").as_bytes());
    words(out, start + len - 1, i);
    out.push(b'"');
}

/// Words appended to `out` up to `end` bytes (cut there), a sequence of its own for each
/// `seed`: the text of the synthetic messages.
pub fn words(out: &mut Vec<u8>, end: usize, seed: u64) {
    const WORDS: [&str; 8] = [
        "request", "handled", "user", "session", "cache", "upstream", "latency", "ok",
    ];
    let mut k = seed;
    while out.len() < end {
        out.extend_from_slice(WORDS[(k % 8) as usize].as_bytes());
        out.push(b' ');
        k = k
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            >> 7;
    }
    out.truncate(end);
}

/// One line as dockerd sends it: chunk size, frame header, timestamp, message, CRLF.
fn encode_line(ts_ns: i64, seq: u64, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    scratch.clear();
    scratch.extend_from_slice(rfc3339(ts_ns).as_bytes());
    scratch.push(b' ');
    message(seq, scratch);
    scratch.push(b'\n');
    let frame_len = 8 + scratch.len();
    out.extend_from_slice(format!("{frame_len:x}\r\n").as_bytes());
    out.extend_from_slice(&[1, 0, 0, 0]);
    out.extend_from_slice(&(scratch.len() as u32).to_be_bytes());
    out.extend_from_slice(scratch);
    out.extend_from_slice(b"\r\n");
}

/// The bulk body every stream shares, with the offset where each line starts.
struct BulkBody {
    base_ns: i64,
    bytes: Vec<u8>,
    offsets: Vec<usize>,
}

impl BulkBody {
    fn new(lines: usize, base_ns: i64) -> Self {
        let mut bytes = Vec::with_capacity(lines * 175);
        let mut offsets = Vec::with_capacity(lines + 1);
        let mut scratch = Vec::with_capacity(256);
        for i in 0..lines {
            offsets.push(bytes.len());
            encode_line(
                base_ns + i as i64 * BULK_STEP_NS,
                i as u64,
                &mut bytes,
                &mut scratch,
            );
        }
        offsets.push(bytes.len());
        BulkBody {
            base_ns,
            bytes,
            offsets,
        }
    }

    /// The first line at or after `since_ns` (inclusive, as dockerd).
    fn first_line(&self, since_ns: Option<i64>) -> usize {
        let lines = self.offsets.len() - 1;
        match since_ns {
            None => 0,
            Some(s) if s <= self.base_ns => 0,
            Some(s) => {
                let i = (s - self.base_ns + BULK_STEP_NS - 1) / BULK_STEP_NS;
                (i as usize).min(lines)
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Reading a request head.
    Request,
    /// Writing `out` (and the bulk range), then `after`.
    Writing,
    /// Response sent (or streaming slowly): reading only to see the peer go.
    Holding,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum After {
    /// Keep-alive: read the next request.
    NextRequest,
    Close,
    /// follow=1 bulk, silent, events: hold the connection open.
    Hold,
    /// Steady follow: lines by the clock.
    Steady,
}

struct Conn {
    fd: OwnedFd,
    gen: u32,
    state: State,
    input: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    /// Bulk body range still to write after `out`.
    bulk: (usize, usize),
    /// Written after the bulk range (the terminating chunk).
    tail: &'static [u8],
    after: After,
    /// Steady: next line due; the stream's sequence number.
    next_due: Option<Instant>,
    seq: u64,
    last_ts: i64,
    want_out: bool,
}

pub struct Server {
    config: ServerConfig,
    stats: Arc<ServerStats>,
    epfd: OwnedFd,
    listener: UnixListener,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    gen: u32,
    bulk: Option<BulkBody>,
    created: String,
    interval: Duration,
    steady: Vec<usize>,
}

/// Registers (`add`) or re-registers `fd` in the epoll set for `flags`, tagged with `data`.
fn watch(epfd: &OwnedFd, fd: impl AsFd, flags: EventFlags, data: u64, add: bool) -> io::Result<()> {
    let data = EventData::new_u64(data);
    if add {
        epoll::add(epfd, fd, data, flags)?;
    } else {
        epoll::modify(epfd, fd, data, flags)?;
    }
    Ok(())
}

const LISTENER: u64 = u64::MAX;

fn key(index: usize, gen: u32) -> u64 {
    (u64::from(gen) << 32) | index as u64
}

impl Server {
    pub fn bind(config: ServerConfig, stats: Arc<ServerStats>) -> io::Result<Server> {
        // A peer that goes away mid-write gets EPIPE, not a signal: Rust programs start with
        // SIGPIPE ignored.
        let _ = std::fs::remove_file(&config.socket);
        let listener = UnixListener::bind(&config.socket)?;
        // A larger backlog than std's 128: the rotation storm connects 1000 streams at once.
        rustix::net::listen(&listener, 4096)?;
        listener.set_nonblocking(true)?;
        let epfd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let base_ns = now_ns() - 3_600_000_000_000;
        let bulk = (config.mode == Mode::Bulk).then(|| BulkBody::new(config.lines, base_ns));
        let created = rfc3339(base_ns - 1_000_000_000);
        let interval = Duration::from_secs_f64(1.0 / f64::from(config.rate.max(1)));
        let server = Server {
            config,
            stats,
            epfd,
            listener,
            conns: Vec::new(),
            free: Vec::new(),
            gen: 0,
            bulk,
            created,
            interval,
            steady: Vec::new(),
        };
        watch(
            &server.epfd,
            &server.listener,
            EventFlags::IN,
            LISTENER,
            true,
        )?;
        Ok(server)
    }

    /// Bytes of one container's whole bulk log response body (0 outside bulk mode).
    pub fn bulk_body_len(&self) -> usize {
        self.bulk.as_ref().map_or(0, |b| b.bytes.len() + 5)
    }

    pub fn run(mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(1024);
        while !stop.load(Relaxed) {
            let timeout_ms = if self.config.mode == Mode::Steady {
                2
            } else {
                100
            };
            let timeout = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: timeout_ms * 1_000_000,
            };
            events.clear();
            match epoll::wait(
                &self.epfd,
                rustix::buffer::spare_capacity(&mut events),
                Some(&timeout),
            ) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            for ev in &events {
                let (data, flags) = (ev.data.u64(), ev.flags);
                if data == LISTENER {
                    self.accept();
                    continue;
                }
                let index = (data & 0xffff_ffff) as usize;
                let gen = (data >> 32) as u32;
                let live = matches!(self.conns.get(index), Some(Some(c)) if c.gen == gen);
                if live {
                    self.ready(index, flags);
                }
            }
            if self.config.mode == Mode::Steady {
                self.tick();
            }
        }
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            let flags = rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC;
            let Ok(fd) = rustix::net::accept_with(&self.listener, flags) else {
                return;
            };
            self.gen = self.gen.wrapping_add(1);
            let index = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            let k = key(index, self.gen);
            if watch(&self.epfd, &fd, EventFlags::IN, k, true).is_err() {
                self.free.push(index);
                continue;
            }
            self.conns[index] = Some(Conn {
                fd,
                gen: self.gen,
                state: State::Request,
                input: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                bulk: (0, 0),
                tail: b"",
                after: After::Close,
                next_due: None,
                seq: 0,
                last_ts: 0,
                want_out: false,
            });
            self.stats.open.fetch_add(1, Relaxed);
            self.stats.accepted.fetch_add(1, Relaxed);
        }
    }

    fn close(&mut self, index: usize) {
        if let Some(conn) = self.conns[index].take() {
            let _ = epoll::delete(&self.epfd, &conn.fd);
            drop(conn);
            self.free.push(index);
            self.stats.open.fetch_sub(1, Relaxed);
        }
    }

    fn ready(&mut self, index: usize, flags: EventFlags) {
        let readable = flags.intersects(EventFlags::IN | EventFlags::HUP | EventFlags::ERR);
        let writable = flags.contains(EventFlags::OUT);
        if readable && !self.read(index) {
            self.close(index);
            return;
        }
        let writing = matches!(&self.conns[index], Some(c) if c.state == State::Writing);
        if writing && (writable || readable) && !self.flush(index) {
            self.close(index);
        }
    }

    /// Reads what is there; parses requests. False when the connection is to be closed.
    fn read(&mut self, index: usize) -> bool {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let conn = self.conns[index].as_mut().unwrap();
            let n = match rustix::io::read(&conn.fd, &mut buf) {
                Ok(0) => return false,
                Ok(n) => n,
                Err(Errno::AGAIN) => return true,
                Err(_) => return false,
            };
            if conn.state == State::Request || conn.state == State::Writing {
                conn.input.extend_from_slice(&buf[..n]);
            }
            if conn.state == State::Request && !self.parse(index) {
                return false;
            }
        }
    }

    /// Parses a complete request head if there is one, and starts its response.
    fn parse(&mut self, index: usize) -> bool {
        let conn = self.conns[index].as_mut().unwrap();
        let Some(end) = memchr::memmem::find(&conn.input, b"\r\n\r\n") else {
            return conn.input.len() < 64 * 1024;
        };
        let head = String::from_utf8_lossy(&conn.input[..end]).into_owned();
        conn.input.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let first = lines.next().unwrap_or("");
        let mut parts = first.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let close = lines.any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("connection:") && l.contains("close")
        });
        self.respond(index, method, target, close);
        true
    }

    fn respond(&mut self, index: usize, method: &str, target: &str, close: bool) {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let params: HashMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .collect();
        let (version, path) = split_version(path);
        let keep = if close {
            After::Close
        } else {
            After::NextRequest
        };
        if let (Some(v), Some((min, max))) = (version, self.config.api_versions) {
            // dockerd's version middleware: the whole range check before any route.
            let refusal = if v < min {
                Some(format!(
                    "client version {} is too old. Minimum supported API version is {}, please upgrade your client to a newer version",
                    version_text(v),
                    version_text(min)
                ))
            } else if v > max {
                Some(format!(
                    "client version {} is too new. Maximum supported API version is {}",
                    version_text(v),
                    version_text(max)
                ))
            } else {
                None
            };
            if let Some(message) = refusal {
                self.stats.refused.fetch_add(1, Relaxed);
                return self.json(index, 400, format!("{{\"message\":\"{message}\"}}"), keep);
            }
        }
        let n = self.config.containers;
        if method != "GET" && method != "HEAD" {
            return self.json(index, 405, "{\"message\":\"only GET\"}".into(), keep);
        }
        match path {
            "/_ping" => self.reply(index, 200, "text/plain", b"OK".to_vec(), keep),
            "/version" => {
                let (min, max) = self.api_range();
                let body = format!(
                    "{{\"Version\":\"bench\",\"ApiVersion\":\"{}\",\"MinAPIVersion\":\"{}\",\"Os\":\"linux\",\"Arch\":\"amd64\"}}",
                    version_text(max),
                    version_text(min)
                );
                self.json(index, 200, body, keep)
            }
            "/_bench/stats" => {
                let s = &self.stats;
                let body = format!(
                    "{{\"open\":{},\"accepted\":{},\"log_bytes\":{},\"log_lines\":{}}}",
                    s.open.load(Relaxed) - 1,
                    s.accepted.load(Relaxed),
                    s.log_bytes.load(Relaxed),
                    s.log_lines.load(Relaxed)
                );
                self.json(index, 200, body, keep)
            }
            "/containers/json" => {
                let items: Vec<String> = (0..n)
                    .map(|i| {
                        format!(
                            "{{\"Id\":\"{}\",\"Names\":[\"/bench-{i:04}\"],\"Image\":\"bench:latest\",\"ImageID\":\"sha256:{}\",\"Command\":\"/bin/log\",\"Created\":1700000000,\"Labels\":{{}},\"State\":\"running\",\"Status\":\"Up 1 hour\"}}",
                            container_id(i),
                            "0".repeat(64)
                        )
                    })
                    .collect();
                self.json(index, 200, format!("[{}]", items.join(",")), keep)
            }
            "/events" => self.stream_head(index, After::Hold),
            _ => {
                let rest = path.strip_prefix("/containers/").unwrap_or("");
                let (id, what) = rest.split_once('/').unwrap_or((rest, ""));
                let Some(c) = container_index(id, n) else {
                    return self.json(
                        index,
                        404,
                        format!("{{\"message\":\"No such container: {id}\"}}"),
                        keep,
                    );
                };
                match what {
                    "json" => {
                        let body = format!(
                            "{{\"Id\":\"{id}\",\"Created\":\"{created}\",\"Path\":\"/bin/log\",\"Args\":[],\"State\":{{\"Status\":\"running\",\"Running\":true,\"Paused\":false,\"Restarting\":false,\"Pid\":{pid},\"ExitCode\":0,\"StartedAt\":\"{created}\",\"FinishedAt\":\"0001-01-01T00:00:00Z\"}},\"Image\":\"sha256:{img}\",\"Name\":\"/bench-{c:04}\",\"RestartCount\":0,\"Config\":{{\"Hostname\":\"bench\",\"Tty\":false,\"OpenStdin\":false,\"Image\":\"bench:latest\",\"Labels\":{{}}}}}}",
                            id = container_id(c),
                            created = self.created,
                            pid = 1000 + c,
                            img = "0".repeat(64),
                        );
                        self.json(index, 200, body, keep)
                    }
                    "logs" => {
                        let follow = matches!(params.get("follow"), Some(&"1" | &"true"));
                        let since = params.get("since").and_then(|s| parse_since(s));
                        self.logs(index, follow, since, keep)
                    }
                    _ => self.json(index, 404, "{\"message\":\"not found\"}".into(), keep),
                }
            }
        }
    }

    /// `(min, max)` as reported.
    fn api_range(&self) -> ApiRange {
        self.config.api_versions.unwrap_or(((1, 12), (1, 41)))
    }

    fn json(&mut self, index: usize, status: u16, body: String, after: After) {
        self.reply(index, status, "application/json", body.into_bytes(), after);
    }

    fn reply(&mut self, index: usize, status: u16, ctype: &str, body: Vec<u8>, after: After) {
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            _ => "Error",
        };
        let api = version_text(self.api_range().1);
        let conn = self.conns[index].as_mut().unwrap();
        conn.out.clear();
        conn.out_pos = 0;
        conn.out.extend_from_slice(
            format!(
                "HTTP/1.1 {status} {reason}\r\nApi-Version: {api}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nServer: Docker/bench (linux)\r\n{}\r\n",
                body.len(),
                if after == After::Close { "Connection: close\r\n" } else { "" }
            )
            .as_bytes(),
        );
        conn.out.extend_from_slice(&body);
        conn.bulk = (0, 0);
        conn.tail = b"";
        conn.after = after;
        conn.state = State::Writing;
    }

    fn stream_head(&mut self, index: usize, after: After) {
        let api = version_text(self.api_range().1);
        let conn = self.conns[index].as_mut().unwrap();
        conn.out.clear();
        conn.out_pos = 0;
        conn.out.extend_from_slice(
            format!("HTTP/1.1 200 OK\r\nApi-Version: {api}\r\nContent-Type: application/vnd.docker.raw-stream\r\nServer: Docker/bench (linux)\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes(),
        );
        conn.bulk = (0, 0);
        conn.tail = b"";
        conn.after = after;
        conn.state = State::Writing;
    }

    fn logs(&mut self, index: usize, follow: bool, since: Option<i64>, keep: After) {
        match self.config.mode {
            Mode::Silent => self.stream_head(index, After::Hold),
            Mode::Bulk => {
                let after = if follow { After::Hold } else { keep };
                self.stream_head(index, after);
                let body = self.bulk.as_ref().unwrap();
                let first = body.first_line(since);
                let range = (body.offsets[first], body.bytes.len());
                let lines = body.offsets.len() - 1 - first;
                self.stats.log_lines.fetch_add(lines as u64, Relaxed);
                self.stats.log_bytes.fetch_add(
                    (range.1 - range.0) as u64 + if follow { 0 } else { 5 },
                    Relaxed,
                );
                let conn = self.conns[index].as_mut().unwrap();
                conn.bulk = range;
                conn.tail = if follow { b"" } else { b"0\r\n\r\n" };
            }
            Mode::Steady => {
                if follow {
                    self.stream_head(index, After::Steady);
                    // Spread the streams' phases over one interval.
                    let phase = self
                        .interval
                        .mul_f64((index as f64 * 0.618_033_988_7).fract());
                    let conn = self.conns[index].as_mut().unwrap();
                    conn.next_due = Some(Instant::now() + phase);
                    self.steady.push(index);
                } else {
                    self.stream_head(index, keep);
                    self.stats.log_bytes.fetch_add(5, Relaxed);
                    self.conns[index].as_mut().unwrap().tail = b"0\r\n\r\n";
                }
            }
        }
    }

    /// Writes what is pending. False when the connection is to be closed.
    fn flush(&mut self, index: usize) -> bool {
        let bulk_bytes = self.bulk.as_ref().map_or(&[][..], |b| &b.bytes[..]);
        let conn = self.conns[index].as_mut().unwrap();
        loop {
            let head = &conn.out[conn.out_pos..];
            let body = &bulk_bytes[conn.bulk.0..conn.bulk.1];
            let body = &body[..body.len().min(MAX_WRITE)];
            let tail = conn.tail;
            if head.is_empty() && body.is_empty() && tail.is_empty() {
                break;
            }
            let tail = if conn.bulk.1 - conn.bulk.0 == body.len() {
                tail
            } else {
                &[][..]
            };
            let iov = [IoSlice::new(head), IoSlice::new(body), IoSlice::new(tail)];
            let mut n = match rustix::io::writev(&conn.fd, &iov) {
                Ok(n) => n,
                Err(Errno::AGAIN) => {
                    if !conn.want_out {
                        conn.want_out = true;
                        let k = key(index, conn.gen);
                        let flags = EventFlags::IN | EventFlags::OUT;
                        return watch(&self.epfd, &conn.fd, flags, k, false).is_ok();
                    }
                    return true;
                }
                Err(_) => return false,
            };
            let h = n.min(head.len());
            conn.out_pos += h;
            n -= h;
            let b = n.min(body.len());
            conn.bulk.0 += b;
            n -= b;
            if n > 0 {
                conn.tail = &conn.tail[n..];
            }
        }
        conn.out.clear();
        conn.out_pos = 0;
        let after = conn.after;
        let k = key(index, conn.gen);
        let had_out = std::mem::take(&mut conn.want_out);
        match after {
            After::Close => return false,
            After::NextRequest => conn.state = State::Request,
            After::Hold | After::Steady => conn.state = State::Holding,
        }
        if had_out && watch(&self.epfd, &conn.fd, EventFlags::IN, k, false).is_err() {
            return false;
        }
        if after == After::NextRequest {
            // A request that came in behind this one (pipelining).
            if !self.parse(index) {
                return false;
            }
            if matches!(&self.conns[index], Some(c) if c.state == State::Writing) {
                return self.flush(index);
            }
        }
        true
    }

    /// Steady mode: writes every line that is due, one frame per chunk per write.
    fn tick(&mut self) {
        let now = Instant::now();
        let mut scratch = Vec::with_capacity(256);
        let mut i = 0;
        while i < self.steady.len() {
            let index = self.steady[i];
            let Some(mut conn) = self.conns[index].as_mut() else {
                self.steady.swap_remove(i);
                continue;
            };
            if conn.after != After::Steady {
                self.steady.swap_remove(i);
                continue;
            }
            i += 1;
            let mut alive = true;
            while let Some(due) = conn.next_due.filter(|d| *d <= now) {
                conn.next_due = Some(due + self.interval);
                if conn.state == State::Writing {
                    // Still draining: queue behind what is pending.
                    let ts = now_ns().max(conn.last_ts + 1);
                    conn.last_ts = ts;
                    let len0 = conn.out.len();
                    encode_line(ts, conn.seq, &mut conn.out, &mut scratch);
                    conn.seq += 1;
                    self.stats
                        .log_bytes
                        .fetch_add((conn.out.len() - len0) as u64, Relaxed);
                    self.stats.log_lines.fetch_add(1, Relaxed);
                    continue;
                }
                let ts = now_ns().max(conn.last_ts + 1);
                conn.last_ts = ts;
                conn.out.clear();
                conn.out_pos = 0;
                encode_line(ts, conn.seq, &mut conn.out, &mut scratch);
                conn.seq += 1;
                self.stats
                    .log_bytes
                    .fetch_add(conn.out.len() as u64, Relaxed);
                self.stats.log_lines.fetch_add(1, Relaxed);
                conn.state = State::Writing;
                alive = self.flush(index);
                if !alive {
                    break;
                }
                conn = self.conns[index].as_mut().unwrap();
            }
            if !alive {
                self.close(index);
            }
        }
    }
}

/// `/v1.44/containers/json` -> `(Some((1, 44)), "/containers/json")`.
fn split_version(path: &str) -> (Option<Version>, &str) {
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some(slash) = rest.find('/') {
            if let Some((a, b)) = rest[..slash].split_once('.') {
                if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                    return (Some((a, b)), &rest[slash..]);
                }
            }
        }
    }
    (None, path)
}

/// `SEC`, `SEC.NANOS` (or a fraction of fewer digits) -> nanoseconds.
fn parse_since(s: &str) -> Option<i64> {
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut nanos = 0i64;
    for (k, c) in frac.chars().take(9).enumerate() {
        nanos += i64::from(c.to_digit(10)?) * 10i64.pow(8 - k as u32);
    }
    Some(sec * 1_000_000_000 + nanos)
}

/// Runs a server on a thread of its own until `stop` is set.
pub fn spawn(
    config: ServerConfig,
    stop: Arc<AtomicBool>,
) -> io::Result<(Arc<ServerStats>, std::thread::JoinHandle<io::Result<()>>)> {
    let stats = Arc::new(ServerStats::default());
    let server = Server::bind(config, stats.clone())?;
    let handle = std::thread::Builder::new()
        .name("fake_dockerd".into())
        .spawn(move || server.run(&stop))?;
    Ok((stats, handle))
}
