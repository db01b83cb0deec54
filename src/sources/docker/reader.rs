//! Container log streams: an engine stream and its decoder, raw socket bytes in, lines out.
//!
//! The reader owns the life of each stream. A stream that ends (EOF, a malformed frame, a
//! daemon error, a socket error) is reported once as [`ReaderEvent::Ended`] and closed by the
//! reader itself; a stream closed on request (rotation, shutdown) is not reported as ended.
//! Either way [`ReaderEvent::Closed`] comes last, once the engine has reaped everything.
//!
//! Two kinds of stream: a container's log (`GET .../logs`, timestamped, [`LogReader::open`])
//! and its attach (`POST .../attach`, no timestamps, [`LogReader::open_attach`]); the same
//! decoder reads both.

use rustc_hash::FxHashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::decode::{DecodeError, DecodeOptions, LogDecoder, LogLine};
use crate::io::{Engine, Event, StreamId};
use crate::sources::docker::{attach_request, logs_request, DockerStatus, LogsQuery};

/// Which container's log to read, and how.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub container_id: String,
    /// TTY containers send a raw stream, without frame headers.
    pub tty: bool,
    pub query: LogsQuery,
}

/// Why a stream ended other than by `close`.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    Decode(DecodeError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "socket: {e}"),
            ReadError::Decode(e) => write!(f, "stream: {e}"),
        }
    }
}

impl std::error::Error for ReadError {}

#[derive(Debug)]
pub enum ReaderEvent {
    /// dockerd answered with a 2xx head: the stream is open. Once per stream, before its
    /// first line.
    Opened(StreamId),
    Line(StreamId, LogLine),
    /// The stream ended by itself: `Ok` at a clean end of the response (the container
    /// stopped, or a `follow=0` read is complete), `Err` otherwise. `Closed` follows.
    Ended(StreamId, Result<(), ReadError>),
    /// Everything of the stream is released; its id is dead.
    Closed(StreamId),
}

struct Tracked {
    decoder: LogDecoder,
    /// Set once the stream is closing: its remaining events are not reported.
    closing: bool,
    /// `Opened` was reported.
    opened: bool,
    /// What the engine was last told by [`Engine::set_live`].
    live: bool,
}

/// A stream whose newest line is stamped less than this before (or after) the wall clock is
/// live: it is read as its container writes, and a paced receive only delays its lines. It
/// must be longer than the pacing delay (the newest line of a paced receive is up to that
/// old) and short enough that a stream that falls behind is unpaced within a few receives.
///
/// Why the reader must tell: dockerd sends next to nothing to a reader that is not waiting in
/// a receive while it seeks to `since` or catches up on a backlog (a paced reader got 146 to
/// 6 700 bytes per receive every 250 ms from a `yes` container: 8 000 lines in 6 s against
/// 450 000). The lines it then sends are old, so such a stream is never marked live, and one
/// that was live is unmarked at its first receive of lines older than this.
pub const LIVE_WITHIN: Duration = Duration::from_secs(1);

/// Whether a stream whose newest line is stamped `newest_ns` is live at `now_ns` (both Unix
/// nanoseconds): see [`LIVE_WITHIN`].
pub fn is_live(newest_ns: i64, now_ns: i64) -> bool {
    now_ns.abs_diff(newest_ns) < LIVE_WITHIN.as_nanos() as u64
}

pub struct LogReader {
    engine: Box<dyn Engine>,
    socket: PathBuf,
    /// Where the API version of each request comes from (negotiated by the control client).
    docker: Arc<DockerStatus>,
    streams: FxHashMap<StreamId, Tracked>,
    events: Vec<Event>,
    lines: Vec<LogLine>,
}

impl LogReader {
    pub fn new(engine: Box<dyn Engine>, socket: &Path) -> Self {
        LogReader {
            engine,
            socket: socket.to_path_buf(),
            docker: Arc::new(DockerStatus::new(None)),
            streams: FxHashMap::default(),
            events: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Takes the API version of every stream opened from here on from `docker` (without it:
    /// [`crate::sources::docker::ApiVersion::FALLBACK`]).
    pub fn with_docker_status(mut self, docker: Arc<DockerStatus>) -> Self {
        self.docker = docker;
        self
    }

    pub fn engine(&self) -> &dyn Engine {
        &*self.engine
    }

    pub fn open(&mut self, spec: &StreamSpec) -> io::Result<StreamId> {
        let request = logs_request(
            self.docker.request_version(),
            &spec.container_id,
            spec.query,
        );
        let decoder = LogDecoder::new(DecodeOptions {
            tty: spec.tty,
            timestamps: true,
        });
        self.open_request(request, decoder)
    }

    /// Attaches to a container's output (see [`attach_request`]): lines without timestamps.
    /// The TTY flag is found out from the stream ([`LogDecoder::detecting_tty`]): an attach
    /// is made at `create`, before any inspect.
    pub fn open_attach(&mut self, container_id: &str) -> io::Result<StreamId> {
        self.open_request(
            attach_request(self.docker.request_version(), container_id),
            LogDecoder::detecting_tty(false),
        )
    }

    /// [`LogReader::open_attach`] on a connection whose request another thread has sent
    /// (see [`Engine::adopt`]).
    pub fn adopt_attach(&mut self, fd: std::os::fd::OwnedFd) -> io::Result<StreamId> {
        let id = self.engine.adopt(fd)?;
        self.track(id, LogDecoder::detecting_tty(false));
        Ok(id)
    }

    fn open_request(&mut self, request: bytes::Bytes, decoder: LogDecoder) -> io::Result<StreamId> {
        let id = self.engine.open(&self.socket, request)?;
        self.track(id, decoder);
        Ok(id)
    }

    fn track(&mut self, id: StreamId, decoder: LogDecoder) {
        self.streams.insert(
            id,
            Tracked {
                decoder,
                closing: false,
                opened: false,
                live: false,
            },
        );
    }

    /// Closes a stream: its reads are cancelled and reaped, then `Closed` is reported. A line
    /// not yet complete is dropped with it: the reopened stream reads it again whole.
    pub fn close(&mut self, id: StreamId) {
        if let Some(tracked) = self.streams.get_mut(&id) {
            tracked.closing = true;
            self.engine.close(id);
        }
    }

    /// See [`Engine::set_pacing`].
    pub fn set_pacing(&mut self, delay: Duration) {
        self.engine.set_pacing(delay);
    }

    /// See [`Engine::set_coalesce`].
    pub fn set_coalesce(&mut self, window: Duration) {
        self.engine.set_coalesce(window);
    }

    pub fn set_paused(&mut self, id: StreamId, paused: bool) {
        self.engine.set_paused(id, paused);
    }

    /// Streams opened and not yet reported `Closed`.
    pub fn live_streams(&self) -> usize {
        self.streams.len()
    }

    pub fn poll(
        &mut self,
        out: &mut Vec<ReaderEvent>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        self.engine.poll(&mut self.events, timeout)?;
        let mut events = std::mem::take(&mut self.events);
        // One clock read per poll, for every stream's liveness.
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        for event in events.drain(..) {
            self.handle(event, now_ns, out);
        }
        self.events = events;
        Ok(())
    }

    fn handle(&mut self, event: Event, now_ns: i64, out: &mut Vec<ReaderEvent>) {
        let id = event.stream();
        if let Event::Closed(_) = event {
            self.streams.remove(&id);
            out.push(ReaderEvent::Closed(id));
            return;
        }
        let Some(tracked) = self.streams.get_mut(&id) else {
            return;
        };
        if tracked.closing {
            return;
        }
        let end = match event {
            Event::Data(_, data) => match tracked.decoder.feed(data, &mut self.lines) {
                Ok(()) => None,
                Err(e) => Some(Err(ReadError::Decode(e))),
            },
            Event::Eof(_) => Some(
                tracked
                    .decoder
                    .finish(&mut self.lines)
                    .map_err(ReadError::Decode),
            ),
            Event::Error(_, e) => Some(Err(ReadError::Io(e))),
            Event::Closed(_) => unreachable!("handled above"),
        };
        if !tracked.opened && tracked.decoder.head().is_some_and(|h| h.is_success()) {
            tracked.opened = true;
            out.push(ReaderEvent::Opened(id));
        }
        // Lines without a timestamp (an attach, a daemon that ignores `timestamps`) never
        // make a stream live; a receive that completed no line leaves it as it was.
        if let Some(last) = self.lines.last() {
            let live = last.last_timestamp_ns.is_some_and(|ts| is_live(ts, now_ns));
            if live != tracked.live {
                tracked.live = live;
                self.engine.set_live(id, live);
            }
        }
        out.extend(self.lines.drain(..).map(|line| ReaderEvent::Line(id, line)));
        if let Some(result) = end {
            tracked.closing = true;
            out.push(ReaderEvent::Ended(id, result));
            self.engine.close(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{is_live, LIVE_WITHIN};

    #[test]
    fn live_means_stamped_within_a_second_of_the_clock_either_way() {
        let now = 1_800_000_000_000_000_000_i64;
        let limit = LIVE_WITHIN.as_nanos() as i64;
        assert!(is_live(now, now));
        assert!(
            is_live(now - 250_000_000, now),
            "a paced receive's newest line"
        );
        assert!(!is_live(now - limit, now), "a stream catching up");
        assert!(is_live(now + limit - 1, now), "a clock slightly ahead");
        assert!(!is_live(now + limit, now));
        assert!(!is_live(i64::MIN, now));
    }
}
