//! The reader thread: one log stream per container, rotated and reopened without loss or
//! duplicates, lines turned into entries and queued for the dispatcher.
//!
//! - A stream is reopened from its container's [`ResumeTracker`] after every rotation, idle
//!   timeout or error; the lines a reopened stream repeats are dropped there.
//! - The lines dockerd sends again after its own log rotation are dropped before the tracker
//!   counts them ([`crate::replay`]). At such a replay the stream is reopened, and the lines
//!   dockerd's follow reader skipped are delivered from the reopened stream; a container whose
//!   log rotates is read once more from its resume point when it stops.
//! - A container that stops ends its stream by itself (EOF); its position stays, and the next
//!   `Running` event (a restart) opens a new stream from it.
//! - A removed container is reported in the batch after its last lines, so that its position
//!   is retired only once they are delivered.
//! - When the queue holds its capacity, every stream is paused (no receive armed) until the
//!   dispatcher has delivered half of it: memory stays bounded and nothing is dropped.
//! - On stop, every stream is closed (reads cancelled and reaped) and what was read is queued.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
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
use crate::replay::{ReplayFilter, Verdict};
use crate::resume::ResumeTracker;
use rustc_hash::FxHashMap;
use slab::Slab;

/// How long to wait before reopening a stream that failed, so a persistent failure (a daemon
/// refusing) does not spin.
const REOPEN_BACKOFF: Duration = Duration::from_secs(1);
/// How long a poll may wait at most: how often control events (discovery) are looked at.
/// Timers do not wait for it: a poll waits no longer than the next deadline.
const TICK: Duration = Duration::from_millis(10);
/// Entries wait in the capture thread's batch up to this long before it is queued: the
/// dispatcher is woken per batch, and at 1000 slow streams a batch per poll was a wakeup (and
/// a checkpoint per container) every few lines. Far below any sink's batch timeout.
const QUEUE_AFTER: Duration = Duration::from_millis(10);
/// Once a poll has something, it waits up to this long for more (io_uring: a minimum wait,
/// no extra syscall): 1000 streams at 20 lines/s woke the thread 20 000 times a second for a
/// line each, and a wakeup costs more than the line. Far below any sink's batch timeout.
const POLL_COALESCE: Duration = Duration::from_millis(2);
/// Each stream rotates after `rotation x (1 - ROTATION_SPREAD x random)`: never later than the
/// configured interval, and streams opened together (a start, a reconnect) drift apart instead
/// of being cancelled all in the same tick forever: 1000 cancels at once take ~20 ms to reap,
/// 50 at once well under a millisecond each (BENCHMARKS.md, rotation storm).
const ROTATION_SPREAD: f64 = 0.2;
/// Without follow, a container whose log cannot be read this many times is given up on.
const ONCE_ATTEMPTS: u32 = 3;
/// Entries per queued batch at most.
const MAX_BATCH: usize = 4096;
/// A stream is reopened at a replay of dockerd's (see `on_lines`) only once it is this old, so
/// that a replay the reopened stream itself sees cannot make the reopens spin.
const REPLAY_REOPEN_AFTER: Duration = Duration::from_secs(1);

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
    /// Lines dockerd sent again after its own log rotation, dropped (see [`crate::replay`]).
    pub lines_replayed: AtomicU64,
    /// Lines stamped at or before their stream's newest delivered line that the replay window
    /// does not hold (a clock step, or a replay older than the window): delivered.
    pub lines_out_of_order: AtomicU64,
    /// Streams reopened because dockerd replayed lines (its log rotated under the stream).
    pub replay_reopens: AtomicU64,
    /// Lines dockerd's follow reader had skipped, read by a reopened stream and delivered
    /// (after lines stamped later).
    pub lines_recovered: AtomicU64,
}

/// What to do once a closing stream is reported closed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Next {
    Nothing,
    Reopen,
    ReopenAt(Instant),
    Forget,
}

/// Index of a container in [`Capture::containers`]; stable while the container is known.
type Key = usize;

struct Container {
    id: Arc<str>,
    /// Unique over the capture's life: tells a timer of this container from one of a
    /// container that had the same [`Key`] before.
    uid: u64,
    /// The deadline this container is scheduled for in [`Capture::timers`].
    deadline: Option<Instant>,
    info: ContainerInfo,
    /// `info.name`, shared with every checkpoint.
    name: Arc<str>,
    labels: Arc<Labels>,
    source_id: Arc<str>,
    tracker: ResumeTracker,
    replay: ReplayFilter,
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
    /// In [`Capture::touched`].
    touched: bool,
    /// Its `logs_processed_total` in the registry.
    lines_total: Arc<AtomicU64>,
}

impl Container {
    /// When the timers must look at this container next, if ever in its present state.
    fn due(&self, options: &CaptureOptions, paused: bool) -> Option<Instant> {
        match (self.stream, self.next) {
            (None, Next::ReopenAt(at)) => Some(at),
            (None, _) => None,
            (Some(_), _) if self.closing || paused => None,
            (Some(_), _) => {
                // A paused stream reads nothing: rotating it would only cost dockerd a decode
                // of the whole log file (`since`) for lines it cannot take yet; the same for
                // an idle reopen. Both are rescheduled when reading resumes.
                let idle = (!options.idle_timeout.is_zero() && self.running)
                    .then(|| self.last_data + options.idle_timeout);
                match (self.rotate_at, idle) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }
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
    containers: Slab<Container>,
    by_id: HashMap<Arc<str>, Key>,
    by_stream: FxHashMap<StreamId, Key>,
    /// Rotation, idle and reopen deadlines, earliest first: (when, container, its uid). An
    /// entry whose container has another deadline by now is stale and skipped, so that
    /// rescheduling never searches the heap.
    timers: BinaryHeap<Reverse<(Instant, Key, u64)>>,
    next_uid: u64,
    stats: Arc<CaptureStats>,
    /// Per-container figures for the metrics.
    registry: Arc<ContainerRegistry>,
    paused: bool,
    batch: Vec<LogEntry>,
    /// When the oldest entry in `batch` (or the first checkpoint) was added.
    batch_since: Option<Instant>,
    /// Containers with lines in `batch`, each once.
    touched: Vec<Key>,
    /// Containers removed since the last batch was queued.
    removed: Vec<Arc<str>>,
    events: Vec<ReaderEvent>,
}

impl Capture {
    /// `committed`: the positions delivered before this start, per full container id.
    pub fn new(
        mut reader: LogReader,
        options: CaptureOptions,
        queue: QueueSender,
        committed: HashMap<String, Resume>,
        stats: Arc<CaptureStats>,
        registry: Arc<ContainerRegistry>,
    ) -> Self {
        reader.set_coalesce(POLL_COALESCE);
        Capture {
            reader,
            options,
            queue,
            committed,
            containers: Slab::new(),
            by_id: HashMap::new(),
            by_stream: FxHashMap::default(),
            timers: BinaryHeap::new(),
            next_uid: 0,
            stats,
            registry,
            paused: false,
            batch: Vec::new(),
            batch_since: None,
            touched: Vec::new(),
            removed: Vec::new(),
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
        loop {
            if !stopping && stop.load(Relaxed) {
                stopping = true;
                tracing::info!("stopping: closing {} streams", self.reader.live_streams());
                let keys: Vec<Key> = self.containers.iter().map(|(k, _)| k).collect();
                for key in keys {
                    self.close_stream(key, Next::Nothing);
                }
            }
            if !stopping {
                while let Ok(event) = control.try_recv() {
                    self.on_container(event);
                }
                self.timers(Instant::now());
            }
            self.backpressure();
            // Done when nothing is open and (without follow) nothing waits to be reopened; the
            // scan of every container only runs once no stream is open.
            if self.reader.live_streams() == 0
                && (stopping
                    || (!self.options.follow
                        && !self
                            .containers
                            .iter()
                            .any(|(_, c)| matches!(c.next, Next::ReopenAt(_) | Next::Reopen))))
            {
                break;
            }
            let now = Instant::now();
            let mut wait = TICK;
            if let Some(Reverse((at, _, _))) = self.timers.peek() {
                wait = wait.min(at.saturating_duration_since(now));
            }
            if let Some(since) = self.batch_since {
                wait = wait.min((since + QUEUE_AFTER).saturating_duration_since(now));
            }
            if let Err(e) = self.reader.poll(&mut self.events, Some(wait)) {
                // The ring or epoll instance itself failed: nothing can be read any more.
                tracing::error!("io engine failed: {e}");
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
            if self
                .batch_since
                .is_some_and(|since| since.elapsed() >= QUEUE_AFTER)
            {
                self.flush_batch();
            }
        }
        self.flush_batch();
    }

    fn on_container(&mut self, event: ContainerEvent) {
        match event {
            ContainerEvent::Running(info) => {
                if let Some(&key) = self.by_id.get(info.id.as_str()) {
                    let c = &mut self.containers[key];
                    c.running = true;
                    if c.info != info {
                        c.labels = Arc::new(labels_of(&info));
                        c.name = Arc::from(info.name.as_str());
                        c.info = info;
                    }
                    match (c.stream, c.closing, c.next) {
                        (None, _, Next::Nothing) => self.open_stream(key),
                        // A restart seen before the old stream is closed.
                        (Some(_), true, Next::Nothing) => c.next = Next::Reopen,
                        _ => {}
                    }
                    self.schedule(key);
                    return;
                }
                let id: Arc<str> = Arc::from(info.id.as_str());
                let tracker = self.tracker_for(&info);
                let now = Instant::now();
                self.next_uid += 1;
                let key = self.containers.insert(Container {
                    id: id.clone(),
                    uid: self.next_uid,
                    deadline: None,
                    labels: Arc::new(labels_of(&info)),
                    source_id: Arc::from(&info.id[..info.id.len().min(12)]),
                    name: Arc::from(info.name.as_str()),
                    running: info.running,
                    info,
                    tracker,
                    replay: ReplayFilter::new(),
                    stream: None,
                    closing: false,
                    next: Next::Nothing,
                    opened_at: now,
                    rotate_at: None,
                    last_data: now,
                    failures: 0,
                    batch_lines: 0,
                    batch_bytes: 0,
                    touched: false,
                    lines_total: Arc::default(),
                });
                self.by_id.insert(id, key);
                self.open_stream(key);
            }
            ContainerEvent::Stopped { id } => {
                // Its stream ends by itself once dockerd has sent the last line.
                if let Some(&key) = self.by_id.get(id.as_str()) {
                    self.containers[key].running = false;
                    self.schedule(key);
                }
            }
            ContainerEvent::Removed { id } => {
                if let Some(&key) = self.by_id.get(id.as_str()) {
                    self.close_stream(key, Next::Forget);
                }
            }
            ContainerEvent::Renamed(info) => {
                if let Some(&key) = self.by_id.get(info.id.as_str()) {
                    let c = &mut self.containers[key];
                    c.labels = Arc::new(labels_of(&info));
                    c.name = Arc::from(info.name.as_str());
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

    fn open_stream(&mut self, key: Key) {
        let c = &mut self.containers[key];
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
                tracing::debug!(
                    "{}: stream opened (since {:?}, skipping {})",
                    c.info.name,
                    resume.map(|r| r.since_ns),
                    c.tracker.skipping()
                );
                self.stats.streams_opened.fetch_add(1, Relaxed);
                c.lines_total = self
                    .registry
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
                self.by_stream.insert(stream, key);
                if self.paused {
                    self.reader.set_paused(stream, true);
                }
            }
            Err(e) => {
                tracing::warn!("{}: cannot open log stream: {e}", c.info.name);
                self.stats.stream_errors.fetch_add(1, Relaxed);
                c.next = Next::ReopenAt(Instant::now() + REOPEN_BACKOFF);
            }
        }
        self.schedule(key);
    }

    /// Closes the container's stream if it has one, then does `next` once it is closed.
    fn close_stream(&mut self, key: Key, next: Next) {
        let c = &mut self.containers[key];
        c.next = next;
        match c.stream {
            Some(stream) => {
                if !c.closing {
                    c.closing = true;
                    self.reader.close(stream);
                }
            }
            None => self.after_close(key),
        }
    }

    /// The container has no stream (any more): does what its `next` says.
    fn after_close(&mut self, key: Key) {
        match self.containers[key].next {
            Next::Forget => {
                let c = self.containers.remove(key);
                if c.touched {
                    // Its lines stay in the batch; a later container reusing the key must
                    // not inherit the mark.
                    self.touched.retain(|&k| k != key);
                }
                self.by_id.remove(&c.id);
                self.registry.forget(&c.id);
                // Queued behind its last lines, so its position is retired only once they
                // are delivered.
                self.removed.push(c.id);
                self.batch_since.get_or_insert_with(Instant::now);
            }
            Next::Reopen => self.open_stream(key),
            Next::Nothing | Next::ReopenAt(_) => self.schedule(key),
        }
    }

    /// Puts the container's next deadline, if it has one, on the timer heap.
    fn schedule(&mut self, key: Key) {
        let c = &mut self.containers[key];
        let due = c.due(&self.options, self.paused);
        if due != c.deadline {
            c.deadline = due;
            if let Some(at) = due {
                self.timers.push(Reverse((at, key, c.uid)));
            }
        }
    }

    /// Handles every deadline that has passed: reopens after a backoff, rotations, idle
    /// reopens. Costs nothing per container that is not due.
    fn timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, key, uid))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match self.containers.get_mut(key) {
                Some(c) if c.uid == uid && c.deadline == Some(at) => c.deadline = None,
                _ => continue,
            }
            let c = &self.containers[key];
            match (c.stream, c.next) {
                (None, Next::ReopenAt(at)) if at <= now => {
                    self.open_stream(key);
                    continue;
                }
                (Some(_), _) if !c.closing && !self.paused => {
                    if c.rotate_at.is_some_and(|at| now >= at) {
                        self.stats.rotations.fetch_add(1, Relaxed);
                        self.close_stream(key, Next::Reopen);
                        continue;
                    }
                    let idle_timeout = self.options.idle_timeout;
                    if !idle_timeout.is_zero() && c.running && now - c.last_data >= idle_timeout {
                        self.stats.idle_reopens.fetch_add(1, Relaxed);
                        self.close_stream(key, Next::Reopen);
                        continue;
                    }
                }
                _ => {}
            }
            // Not due after all (new data since the idle deadline was set): look again later.
            self.schedule(key);
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
            tracing::debug!(
                "queue full ({queued} entries): pausing {} streams",
                self.by_stream.len()
            );
        }
        let streams: Vec<(StreamId, Key)> = self.by_stream.iter().map(|(&s, &k)| (s, k)).collect();
        for (stream, key) in streams {
            self.reader.set_paused(stream, pause);
            // Rotation and idle deadlines are off while paused and come back on resume.
            self.schedule(key);
        }
    }

    /// The stream ended by itself (EOF or an error); `Closed` follows.
    fn on_ended(&mut self, stream: StreamId, result: Result<(), ReadError>) {
        let Some(&key) = self.by_stream.get(&stream) else {
            return;
        };
        let c = &mut self.containers[key];
        c.closing = true;
        match result {
            Ok(()) => {
                tracing::debug!("{}: stream ended", c.info.name);
                c.failures = 0;
                // In follow mode a clean end means the container stopped; a restart
                // is a new `Running` event.
                c.running = false;
                // dockerd's follow reader ends at a stop without the rotated files it had
                // fallen behind on: where the log rotates (max-size; a replay also shows it),
                // read once more from the resume point, which returns what is still on disk.
                // The cost is bounded: max-size x max-file of log.
                let rotated = c.replay.take_rotation_seen();
                c.next = if self.options.follow && (rotated || c.info.log_rotates) {
                    tracing::debug!("{}: reading the rotated log once more", c.info.name);
                    Next::Reopen
                } else {
                    Next::Nothing
                };
                self.registry.unmonitored(&c.info.id);
            }
            Err(e) => {
                self.stats.stream_errors.fetch_add(1, Relaxed);
                c.failures += 1;
                tracing::warn!("{}: log stream failed, reopening: {e}", c.info.name);
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
        let Some(key) = self.by_stream.remove(&stream) else {
            return;
        };
        let c = &mut self.containers[key];
        c.stream = None;
        c.closing = false;
        self.after_close(key);
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
            let key = self.by_stream.get(&stream).copied();
            let c = key
                .and_then(|key| self.containers.get_mut(key))
                .filter(|c| !c.closing);
            let (Some(key), Some(c)) = (key, c) else {
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
            // dockerd's follow reader replays a file that rotated under it, and can skip to
            // the current file: a reopen from the resume point reads the rotated files still
            // on disk (what it skipped is recovered, see `on_line`).
            let reopen = c.replay.take_replay_seen() && now - c.opened_at >= REPLAY_REOPEN_AFTER;
            if admitted && !c.touched {
                c.touched = true;
                self.touched.push(key);
                self.batch_since.get_or_insert(now);
            }
            if self.batch.len() >= MAX_BATCH {
                self.flush_batch();
            }
            if reopen {
                self.stats.replay_reopens.fetch_add(1, Relaxed);
                self.close_stream(key, Next::Reopen);
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
        // Before the tracker: a line dockerd replays must not count as one more line of the
        // file, while the lines a reopened stream repeats must (see `crate::replay`). Among
        // those, a line dockerd's follow reader had skipped is delivered now.
        let mut recovered = false;
        if c.tracker.skipping() > 0 {
            if c.replay.recover(line.stream, ts, &line.message) && c.tracker.admit_unseen(ts) {
                stats.lines_recovered.fetch_add(1, Relaxed);
                recovered = true;
            } else {
                c.replay.remember(line.stream, ts, &line.message);
            }
        } else {
            match c.replay.check(line.stream, ts, &line.message) {
                Verdict::New => {}
                Verdict::Replay => {
                    stats.lines_replayed.fetch_add(1, Relaxed);
                    return false;
                }
                Verdict::Unknown => _ = stats.lines_out_of_order.fetch_add(1, Relaxed),
            }
        }
        let before = c.tracker.mismatches();
        let admitted = recovered || c.tracker.admit(ts);
        if c.tracker.mismatches() != before {
            stats.resume_mismatches.fetch_add(1, Relaxed);
            tracing::warn!(
                "{}: a reopened stream does not repeat the lines read before as they were \
                 read (reordered, or deleted by dockerd's log rotation)",
                c.info.name
            );
        }
        if !admitted {
            stats.lines_skipped.fetch_add(1, Relaxed);
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
        self.batch_since = None;
        if self.touched.is_empty() && self.removed.is_empty() {
            return;
        }
        let mut checkpoints = Vec::with_capacity(self.touched.len());
        for key in self.touched.drain(..) {
            let Some(c) = self.containers.get_mut(key) else {
                continue;
            };
            c.touched = false;
            let (Some(resume), Some(newest_ns)) = (c.tracker.resume(), c.tracker.newest_ns())
            else {
                continue;
            };
            c.lines_total.fetch_add(c.batch_lines, Relaxed);
            checkpoints.push(Checkpoint {
                container_id: c.id.clone(),
                container_name: c.name.clone(),
                resume,
                newest_ns,
                lines: std::mem::take(&mut c.batch_lines),
                bytes: std::mem::take(&mut c.batch_bytes),
            });
        }
        let batch = Batch {
            entries: std::mem::take(&mut self.batch),
            checkpoints,
            removed: std::mem::take(&mut self.removed),
        };
        if let Err(batch) = self.queue.send(batch) {
            tracing::error!(
                "dispatcher gone: {} lines read and not delivered",
                batch.entries.len()
            );
        }
    }
}
