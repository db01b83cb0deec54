//! The reader thread: one log stream per container, rotated and reopened without loss or
//! duplicates, lines turned into entries and queued for the dispatcher.
//!
//! - A stream is reopened from its container's [`ResumeTracker`] after every rotation, idle
//!   timeout or error; the lines a reopened stream repeats are dropped there.
//! - A container that stops ends its stream by itself (EOF); its position stays, and the next
//!   `Running` event (a restart) opens a new stream from it.
//! - When the queue holds its capacity, every stream is paused (no receive armed) until the
//!   dispatcher has delivered half of it: memory stays bounded and nothing is dropped.
//! - On stop, every stream is closed (reads cancelled and reaped) and what was read is queued.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::api::ContainerRegistry;
use crate::decode::{LogLine, StreamKind};
use crate::discovery::ContainerEvent;
use crate::docker::{ContainerInfo, LogsQuery};
use crate::entry::{Labels, LogEntry};
use crate::io::StreamId;
use crate::pipeline::{Batch, Checkpoint, QueueSender};
use crate::positions::Resume;
use crate::reader::{LogReader, ReadError, ReaderEvent, StreamSpec};
use crate::resume::ResumeTracker;

/// How long to wait before reopening a stream that failed, so a persistent failure (a daemon
/// refusing) does not spin.
const REOPEN_BACKOFF: Duration = Duration::from_secs(1);
/// How long a poll may wait: also how often timers and control events are looked at. Short,
/// because rotations that come due wait for it: with 1000 streams rotated every second, a
/// 50 ms tick put ~55 cancels in each batch (mean cancel-to-reaped 1.75 ms), 10 ms about 11
/// (mean 0.46 ms, 96 % under 1 ms), for 2.8 instead of 2.0 CPU seconds in 30 s.
const TICK: Duration = Duration::from_millis(10);
/// Each stream rotates after `rotation x (1 - ROTATION_SPREAD x random)`: never later than the
/// configured interval, and streams opened together (a start, a reconnect) drift apart instead
/// of being cancelled all in the same tick forever: 1000 cancels at once take ~20 ms to reap,
/// 50 at once well under a millisecond each (BENCHMARKS.md, rotation storm).
const ROTATION_SPREAD: f64 = 0.2;
/// Without follow, a container whose log cannot be read this many times is given up on.
const ONCE_ATTEMPTS: u32 = 3;
/// Entries per queued batch at most.
const MAX_BATCH: usize = 4096;

#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Reopen every stream this often; zero: never.
    pub rotation: Duration,
    /// Reopen a stream silent this long while its container runs; zero: never.
    pub idle_timeout: Duration,
    /// See [`crate::resume`].
    pub overlap: Duration,
    /// `false` for `--once`: read what is logged so far, then end.
    pub follow: bool,
    /// Containers without a committed position start now instead of from their first line.
    pub new_from_now: bool,
    pub include_stdout: bool,
    pub include_stderr: bool,
}

/// Counters of the reader thread, shared with metrics and tests.
#[derive(Debug, Default)]
pub struct CaptureStats {
    pub lines_read: AtomicU64,
    /// Lines a reopened stream repeated and that were dropped as already read.
    pub lines_skipped: AtomicU64,
    /// Lines of a stream (stdout or stderr) the configuration excludes.
    pub lines_filtered: AtomicU64,
    pub rotations: AtomicU64,
    pub idle_reopens: AtomicU64,
    pub stream_errors: AtomicU64,
    pub streams_opened: AtomicU64,
    /// Times reading was paused because the queue was full.
    pub pauses: AtomicU64,
    pub resume_mismatches: AtomicU64,
}

/// What to do once a closing stream is reported closed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Next {
    Nothing,
    Reopen,
    ReopenAt(Instant),
    Forget,
}

struct Container {
    id: Arc<str>,
    info: ContainerInfo,
    labels: Arc<Labels>,
    source_id: Arc<str>,
    tracker: ResumeTracker,
    stream: Option<StreamId>,
    /// The current stream was asked to close.
    closing: bool,
    next: Next,
    opened_at: Instant,
    /// When the current stream is due for rotation (see [`ROTATION_SPREAD`]).
    rotate_at: Option<Instant>,
    last_data: Instant,
    running: bool,
    failures: u32,
    batch_lines: u64,
    batch_bytes: u64,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn labels_of(info: &ContainerInfo) -> Labels {
    let mut labels = Labels::new();
    labels.insert("container_id".into(), info.id.clone());
    labels.insert("container_name".into(), info.name.clone());
    labels.insert("image".into(), info.image.clone());
    if let Some(service) = info.labels.get("com.docker.compose.service") {
        labels.insert("compose_service".into(), service.clone());
    }
    labels
}

pub struct Capture {
    reader: LogReader,
    options: CaptureOptions,
    queue: QueueSender,
    committed: HashMap<String, Resume>,
    containers: HashMap<Arc<str>, Container>,
    by_stream: HashMap<StreamId, Arc<str>>,
    stats: Arc<CaptureStats>,
    /// Per-container figures for the metrics.
    registry: Arc<ContainerRegistry>,
    paused: bool,
    batch: Vec<LogEntry>,
    touched: HashSet<Arc<str>>,
    events: Vec<ReaderEvent>,
}

impl Capture {
    /// `committed`: the positions delivered before this start, per full container id.
    pub fn new(
        reader: LogReader,
        options: CaptureOptions,
        queue: QueueSender,
        committed: HashMap<String, Resume>,
        stats: Arc<CaptureStats>,
        registry: Arc<ContainerRegistry>,
    ) -> Self {
        Capture {
            reader,
            options,
            queue,
            committed,
            containers: HashMap::new(),
            by_stream: HashMap::new(),
            stats,
            registry,
            paused: false,
            batch: Vec::new(),
            touched: HashSet::new(),
            events: Vec::new(),
        }
    }

    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// Runs until `stop` is set (follow mode) or, without follow, until every container's
    /// log has been read. Control events come from discovery (or, for `--once`, are all
    /// queued before the call). Returns when every stream is closed and every line queued.
    pub fn run(&mut self, control: &Receiver<ContainerEvent>, stop: &AtomicBool) {
        let mut stopping = false;
        let mut last_timers = Instant::now();
        loop {
            if !stopping && stop.load(Relaxed) {
                stopping = true;
                log::info!("stopping: closing {} streams", self.reader.live_streams());
                let ids: Vec<Arc<str>> = self.containers.keys().cloned().collect();
                for id in ids {
                    self.close_stream(&id, Next::Nothing);
                }
            }
            if !stopping {
                while let Ok(event) = control.try_recv() {
                    self.on_container(event);
                }
                // Timers look at every container: once a tick is enough, not once a poll.
                if last_timers.elapsed() >= TICK {
                    last_timers = Instant::now();
                    self.timers();
                }
            }
            self.backpressure();
            // Done when nothing is open and (without follow) nothing waits to be reopened; the
            // scan of every container only runs once no stream is open.
            if self.reader.live_streams() == 0
                && (stopping
                    || (!self.options.follow
                        && !self
                            .containers
                            .values()
                            .any(|c| matches!(c.next, Next::ReopenAt(_) | Next::Reopen))))
            {
                break;
            }
            if let Err(e) = self.reader.poll(&mut self.events, Some(TICK)) {
                // The ring or epoll instance itself failed: nothing can be read any more.
                log::error!("io engine failed: {e}");
                stop.store(true, Relaxed);
            }
            let mut events = std::mem::take(&mut self.events);
            // One clock read per poll, not per line: the lines of one poll were received
            // together.
            let (now, now_wall_ns) = (Instant::now(), now_ns());
            let mut drain = events.drain(..).peekable();
            while let Some(event) = drain.next() {
                match event {
                    ReaderEvent::Line(stream, line) => {
                        self.on_lines(stream, line, &mut drain, now, now_wall_ns)
                    }
                    ReaderEvent::Ended(stream, result) => self.on_ended(stream, result),
                    ReaderEvent::Closed(stream) => self.on_closed(stream),
                }
            }
            drop(drain);
            self.events = events;
            self.flush_batch();
        }
        self.flush_batch();
    }

    fn on_container(&mut self, event: ContainerEvent) {
        match event {
            ContainerEvent::Running(info) => {
                let id: Arc<str> = Arc::from(info.id.as_str());
                if let Some(c) = self.containers.get_mut(&id) {
                    c.running = true;
                    if c.info != info {
                        c.labels = Arc::new(labels_of(&info));
                        c.info = info;
                    }
                    match (c.stream, c.closing, c.next) {
                        (None, _, Next::Nothing) => self.open_stream(&id),
                        // A restart seen before the old stream is closed.
                        (Some(_), true, Next::Nothing) => c.next = Next::Reopen,
                        _ => {}
                    }
                    return;
                }
                let tracker = self.tracker_for(&info);
                let now = Instant::now();
                self.containers.insert(
                    id.clone(),
                    Container {
                        id: id.clone(),
                        labels: Arc::new(labels_of(&info)),
                        source_id: Arc::from(&info.id[..info.id.len().min(12)]),
                        running: info.running,
                        info,
                        tracker,
                        stream: None,
                        closing: false,
                        next: Next::Nothing,
                        opened_at: now,
                        rotate_at: None,
                        last_data: now,
                        failures: 0,
                        batch_lines: 0,
                        batch_bytes: 0,
                    },
                );
                self.open_stream(&id);
            }
            ContainerEvent::Stopped { id } => {
                // Its stream ends by itself once dockerd has sent the last line.
                if let Some(c) = self.containers.get_mut(id.as_str()) {
                    c.running = false;
                }
            }
            ContainerEvent::Removed { id } => {
                if self.containers.contains_key(id.as_str()) {
                    let id: Arc<str> = Arc::from(id.as_str());
                    self.close_stream(&id, Next::Forget);
                }
            }
            ContainerEvent::Renamed(info) => {
                if let Some(c) = self.containers.get_mut(info.id.as_str()) {
                    c.labels = Arc::new(labels_of(&info));
                    c.info = info;
                }
            }
        }
    }

    fn tracker_for(&self, info: &ContainerInfo) -> ResumeTracker {
        let overlap = self.options.overlap.as_nanos() as i64;
        match self.committed.get(&info.id[..info.id.len().min(12)]) {
            Some(&resume) => ResumeTracker::resuming(overlap, resume),
            None if self.options.new_from_now => ResumeTracker::starting_at(overlap, now_ns()),
            None => ResumeTracker::new(overlap),
        }
    }

    fn open_stream(&mut self, id: &Arc<str>) {
        let Some(c) = self.containers.get_mut(id) else {
            return;
        };
        let resume = c.tracker.reopen();
        let spec = StreamSpec {
            container_id: c.info.id.clone(),
            tty: c.info.tty,
            query: LogsQuery {
                follow: self.options.follow,
                since_ns: resume.map(|r| r.since_ns),
            },
        };
        match self.reader.open(&spec) {
            Ok(stream) => {
                log::debug!(
                    "{}: stream opened (since {:?}, skipping {})",
                    c.info.name,
                    resume.map(|r| r.since_ns),
                    c.tracker.skipping()
                );
                self.stats.streams_opened.fetch_add(1, Relaxed);
                self.registry
                    .monitored(&c.info.id, &c.info.name, &c.info.image);
                c.stream = Some(stream);
                c.closing = false;
                c.next = Next::Nothing;
                c.opened_at = Instant::now();
                c.last_data = c.opened_at;
                c.rotate_at = (!self.options.rotation.is_zero()).then(|| {
                    let spread = 1.0 - ROTATION_SPREAD * crate::sink::retry::rand01();
                    c.opened_at + self.options.rotation.mul_f64(spread)
                });
                self.by_stream.insert(stream, id.clone());
                if self.paused {
                    self.reader.set_paused(stream, true);
                }
            }
            Err(e) => {
                log::warn!("{}: cannot open log stream: {e}", c.info.name);
                self.stats.stream_errors.fetch_add(1, Relaxed);
                c.next = Next::ReopenAt(Instant::now() + REOPEN_BACKOFF);
            }
        }
    }

    /// Closes the container's stream if it has one, then does `next` once it is closed.
    fn close_stream(&mut self, id: &Arc<str>, next: Next) {
        let Some(c) = self.containers.get_mut(id) else {
            return;
        };
        c.next = next;
        match c.stream {
            Some(stream) => {
                if !c.closing {
                    c.closing = true;
                    self.reader.close(stream);
                }
            }
            None => match next {
                Next::Forget => {
                    self.containers.remove(id);
                    self.registry.forget(id);
                }
                Next::Reopen => self.open_stream(id),
                Next::Nothing | Next::ReopenAt(_) => {}
            },
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let mut rotate = Vec::new();
        let mut idle = Vec::new();
        let mut reopen = Vec::new();
        for (id, c) in &self.containers {
            match (c.stream, c.next) {
                (None, Next::ReopenAt(at)) if at <= now => reopen.push(id.clone()),
                (Some(_), _) if !c.closing => {
                    let idle_timeout = self.options.idle_timeout;
                    // A paused stream reads nothing: reopening it would only cost dockerd a
                    // decode of the whole log file (`since`) for lines it cannot take yet.
                    if !self.paused && c.rotate_at.is_some_and(|at| now >= at) {
                        rotate.push(id.clone());
                    } else if !idle_timeout.is_zero()
                        && c.running
                        && !self.paused
                        && now - c.last_data >= idle_timeout
                    {
                        idle.push(id.clone());
                    }
                }
                _ => {}
            }
        }
        for id in reopen {
            self.open_stream(&id);
        }
        self.stats.rotations.fetch_add(rotate.len() as u64, Relaxed);
        self.stats
            .idle_reopens
            .fetch_add(idle.len() as u64, Relaxed);
        for id in rotate.into_iter().chain(idle) {
            self.close_stream(&id, Next::Reopen);
        }
    }

    fn backpressure(&mut self) {
        let gauge = self.queue.gauge();
        let queued = gauge.queued();
        let pause = if self.paused {
            queued > gauge.capacity() / 2
        } else {
            queued >= gauge.capacity()
        };
        if pause == self.paused {
            return;
        }
        self.paused = pause;
        if pause {
            self.stats.pauses.fetch_add(1, Relaxed);
            log::debug!(
                "queue full ({queued} entries): pausing {} streams",
                self.by_stream.len()
            );
        }
        for &stream in self.by_stream.keys() {
            self.reader.set_paused(stream, pause);
        }
    }

    /// The stream ended by itself (EOF or an error); `Closed` follows.
    fn on_ended(&mut self, stream: StreamId, result: Result<(), ReadError>) {
        let Some(id) = self.by_stream.get(&stream).cloned() else {
            return;
        };
        let Some(c) = self.containers.get_mut(&id) else {
            return;
        };
        c.closing = true;
        match result {
            Ok(()) => {
                log::debug!("{}: stream ended", c.info.name);
                c.failures = 0;
                // In follow mode a clean end means the container stopped; a restart
                // is a new `Running` event.
                c.running = false;
                c.next = Next::Nothing;
                self.registry.unmonitored(&c.info.id);
            }
            Err(e) => {
                self.stats.stream_errors.fetch_add(1, Relaxed);
                c.failures += 1;
                log::warn!("{}: log stream failed, reopening: {e}", c.info.name);
                let backoff = REOPEN_BACKOFF * c.failures.min(30);
                c.next = if (self.options.follow && !c.running)
                    || (!self.options.follow && c.failures >= ONCE_ATTEMPTS)
                {
                    Next::Nothing
                } else {
                    Next::ReopenAt(Instant::now() + backoff)
                };
            }
        }
    }

    /// Everything of the stream is released: reopen, forget or leave the container.
    fn on_closed(&mut self, stream: StreamId) {
        let Some(id) = self.by_stream.remove(&stream) else {
            return;
        };
        let Some(c) = self.containers.get_mut(&id) else {
            return;
        };
        c.stream = None;
        c.closing = false;
        match c.next {
            Next::Reopen => self.open_stream(&id),
            Next::Forget => {
                self.containers.remove(&id);
                self.registry.forget(&id);
            }
            Next::Nothing | Next::ReopenAt(_) => {}
        }
    }

    /// `first` and the lines of the same stream that follow it in `rest`: the container is
    /// looked up once per run of lines (per `MAX_BATCH` at most), not once per line (three
    /// SipHash lookups of a 64-byte id per line were 17% of the capture thread's CPU).
    fn on_lines<I: Iterator<Item = ReaderEvent>>(
        &mut self,
        stream: StreamId,
        first: LogLine,
        rest: &mut std::iter::Peekable<I>,
        now: Instant,
        now_wall_ns: i64,
    ) {
        let mut next = Some(first);
        while let Some(mut line) = next.take() {
            let c = self
                .by_stream
                .get(&stream)
                .and_then(|id| self.containers.get_mut(id))
                .filter(|c| !c.closing);
            let Some(c) = c else {
                // Unknown or closing stream: its lines are not reported.
                while matches!(rest.peek(), Some(ReaderEvent::Line(s, _)) if *s == stream) {
                    rest.next();
                }
                return;
            };
            c.last_data = now;
            let mut admitted = false;
            loop {
                admitted |= Self::on_line(
                    c,
                    line,
                    now_wall_ns,
                    &self.options,
                    &self.stats,
                    &mut self.batch,
                );
                if !matches!(rest.peek(), Some(ReaderEvent::Line(s, _)) if *s == stream) {
                    break;
                }
                let Some(ReaderEvent::Line(_, more)) = rest.next() else {
                    unreachable!("peeked a line")
                };
                if self.batch.len() >= MAX_BATCH {
                    next = Some(more);
                    break;
                }
                line = more;
            }
            if admitted {
                let id = c.id.clone();
                self.touched.insert(id);
            }
            if self.batch.len() >= MAX_BATCH {
                self.flush_batch();
            }
        }
    }

    /// One line of container `c`; true when it was admitted (not a repeat).
    fn on_line(
        c: &mut Container,
        line: LogLine,
        processed_at_ns: i64,
        options: &CaptureOptions,
        stats: &CaptureStats,
        batch: &mut Vec<LogEntry>,
    ) -> bool {
        // timestamps=1 is always asked for; a line without one can only come from a daemon
        // that ignores it, and is stamped with the capture time.
        let ts = line.last_timestamp_ns.unwrap_or(processed_at_ns);
        let before = c.tracker.mismatches();
        if !c.tracker.admit(ts) {
            stats.lines_skipped.fetch_add(1, Relaxed);
            if c.tracker.mismatches() != before {
                stats.resume_mismatches.fetch_add(1, Relaxed);
                log::warn!(
                    "{}: a repeated line differs from the one read before",
                    c.info.name
                );
            }
            return false;
        }
        let wanted = match line.stream {
            StreamKind::Stdout => options.include_stdout,
            StreamKind::Stderr => options.include_stderr,
        };
        if !wanted {
            stats.lines_filtered.fetch_add(1, Relaxed);
            return true;
        }
        stats.lines_read.fetch_add(1, Relaxed);
        c.batch_lines += 1;
        c.batch_bytes += line.message.len() as u64;
        batch.push(LogEntry {
            timestamp_ns: line.timestamp_ns.unwrap_or(ts),
            processed_at_ns,
            message: line.message,
            stream: line.stream,
            source_type: "docker",
            source_id: c.source_id.clone(),
            labels: c.labels.clone(),
        });
        true
    }

    fn flush_batch(&mut self) {
        if self.touched.is_empty() {
            return;
        }
        let mut checkpoints = Vec::with_capacity(self.touched.len());
        for id in self.touched.drain() {
            let Some(c) = self.containers.get_mut(&id) else {
                continue;
            };
            let (Some(resume), Some(newest_ns)) = (c.tracker.resume(), c.tracker.newest_ns())
            else {
                continue;
            };
            self.registry.add_lines(&c.info.id, c.batch_lines);
            checkpoints.push(Checkpoint {
                container_id: c.id.clone(),
                container_name: c.info.name.clone(),
                resume,
                newest_ns,
                lines: std::mem::take(&mut c.batch_lines),
                bytes: std::mem::take(&mut c.batch_bytes),
            });
        }
        let batch = Batch {
            entries: std::mem::take(&mut self.batch),
            checkpoints,
        };
        if let Err(batch) = self.queue.send(batch) {
            log::error!(
                "dispatcher gone: {} lines read and not delivered",
                batch.entries.len()
            );
        }
    }
}
