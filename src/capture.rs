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
//! - Short-lived containers: a container seen at `create` (discovery's `Created`) and read
//!   from its first line gets an attach stream besides its log stream, a bounded safety net
//!   (see [`crate::safety_net`]). Once the log stream has caught up with it and stayed open
//!   [`NET_HOLD`], or the container ended with nothing missing, the attach is closed. When the
//!   container is removed and its log stream is over, the attach lines the log stream never
//!   delivered are queued, stamped with their capture time and labelled
//!   `capture_source=attach`.
//! - A removal (`destroy`) does not cut a stream: it is read to its end (dockerd ends it once
//!   the container is gone), [`REMOVED_GRACE`] at most.
//! - A start handled while the old stream is still open (a quick restart) reopens the stream
//!   as soon as the old one ends.
//! - Every line the reader hands over is either queued (`lines_read`) or discarded on purpose
//!   and counted by [`Discard`] reason.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::api::{ContainerRegistry, Histogram};
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
use crate::safety_net::{AttachLine, SafetyNet};
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
/// A live stream whose last receive was small reads again only this much later (see
/// [`crate::io::Engine::set_pacing`]; live: [`crate::reader::LIVE_WITHIN`]): at 1000 streams
/// x 20 lines/s, a receive per line was half the CPU of a line, in the kernel. A quarter
/// second is nothing next to the sinks' batch timeouts (the dispatcher's default is 5 s); a
/// busy stream, or one behind its writer, never waits.
const READ_PACING: Duration = Duration::from_millis(250);
/// Each stream rotates after `rotation x (1 - ROTATION_SPREAD x random)`: never later than the
/// configured interval, and streams opened together (a start, a reconnect) drift apart instead
/// of being cancelled all in the same tick forever: 1000 cancels at once take ~20 ms to reap,
/// 50 at once well under a millisecond each (BENCHMARKS.md, rotation storm).
const ROTATION_SPREAD: f64 = 0.2;
/// Without follow, a container whose log cannot be read this many times is given up on.
const ONCE_ATTEMPTS: u32 = 3;
/// Entries per queued batch at most.
const MAX_BATCH: usize = 4096;
/// How long a container's attach stays open once its log stream has caught up with it: a
/// job that ends within it keeps its net to the end (its log stream can still fail at the
/// removal); a long-running container does not hold two connections for longer.
pub const NET_HOLD: Duration = Duration::from_secs(5);
/// How long the streams of a removed container are still read: dockerd ends them when the
/// container is gone, this only bounds a daemon that does not.
pub const REMOVED_GRACE: Duration = Duration::from_secs(10);
/// The label that marks entries delivered from the attach (no dockerd timestamp).
pub const ATTACH_LABEL: (&str, &str) = ("capture_source", "attach");
/// `log_stream_first_byte_seconds` bounds.
const FIRST_BYTE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
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
    /// Lines discarded on purpose, by reason: see [`CaptureStats::discarded`].
    discards: [AtomicU64; Discard::ALL.len()],
    /// Attach streams opened as safety nets, and lines queued from them.
    pub attaches_opened: AtomicU64,
    /// Attach streams dockerd answered (200): hooked to the container's output.
    pub attaches_answered: AtomicU64,
    pub lines_from_attach: AtomicU64,
    /// Time from a container's start (while the capturer runs) to its log stream's answer.
    pub first_byte: FirstByteLatency,
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

/// Why a line received was not queued. New reasons go at the end of [`Discard::ALL`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Discard {
    /// A reopened stream repeated it (`lines_skipped`).
    Repeat,
    /// Its stream (stdout or stderr) is excluded by the configuration (`lines_filtered`).
    Filtered,
    /// An attach line the log stream delivered.
    AttachDuplicate,
    /// Attach lines held when the net was dropped before they were needed: shutdown, or the
    /// net overflowed or turned out misaligned. The log stream reads them.
    AttachReleased,
    /// Lines of a stream already being closed (rotation, shutdown), received in the same
    /// poll as the close: the reopened stream reads them again.
    Closing,
    /// Lines dockerd sent again after its own log rotation (`lines_replayed`, see
    /// [`crate::replay`]).
    Replay,
}

impl Discard {
    pub const ALL: [Discard; 6] = [
        Discard::Repeat,
        Discard::Filtered,
        Discard::AttachDuplicate,
        Discard::AttachReleased,
        Discard::Closing,
        Discard::Replay,
    ];

    /// The `reason` label of `lines_discarded_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Discard::Repeat => "repeat",
            Discard::Filtered => "filtered",
            Discard::AttachDuplicate => "attach_duplicate",
            Discard::AttachReleased => "attach_released",
            Discard::Closing => "closing",
            Discard::Replay => "replay",
        }
    }
}

impl CaptureStats {
    pub fn discard(&self, reason: Discard, lines: u64) {
        match reason {
            Discard::Repeat => self.lines_skipped.fetch_add(lines, Relaxed),
            Discard::Filtered => self.lines_filtered.fetch_add(lines, Relaxed),
            Discard::Replay => self.lines_replayed.fetch_add(lines, Relaxed),
            _ => self.discards[reason as usize].fetch_add(lines, Relaxed),
        };
    }

    pub fn discarded(&self, reason: Discard) -> u64 {
        match reason {
            Discard::Repeat => self.lines_skipped.load(Relaxed),
            Discard::Filtered => self.lines_filtered.load(Relaxed),
            Discard::Replay => self.lines_replayed.load(Relaxed),
            _ => self.discards[reason as usize].load(Relaxed),
        }
    }
}

/// See [`CaptureStats::first_byte`].
#[derive(Debug)]
pub struct FirstByteLatency(pub Histogram);

impl Default for FirstByteLatency {
    fn default() -> Self {
        FirstByteLatency(Histogram::new(FIRST_BYTE_BUCKETS))
    }
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
    /// The log was read once more after its stream ended at a stop (see `on_ended`); reset
    /// when the container runs again.
    reread: bool,
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
    /// When discovery reported it removed.
    removed_at: Option<Instant>,
    /// A start came while the old stream was still open: reopen when it ends.
    restarted: bool,
    /// The log stream reached its normal end since it was last opened (the container
    /// stopped and everything logged was read).
    log_complete: bool,
    /// Start time (ns) of a start seen while the capturer runs, until its stream answers.
    started_ns: Option<i64>,
    /// The attach stream of the safety net, while open.
    attach: Option<StreamId>,
    attach_closing: bool,
    net: Option<SafetyNet>,
    net_since: Instant,
}

impl Container {
    /// When the timers must look at this container next, if ever in its present state.
    fn due(&self, options: &CaptureOptions, paused: bool) -> Option<Instant> {
        if let Some(at) = self.removed_at {
            return (self.stream.is_some() || self.attach.is_some()).then_some(at + REMOVED_GRACE);
        }
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
    /// Attach streams (safety nets), by stream.
    by_attach: FxHashMap<StreamId, Key>,
    /// When the capture started (ns): only starts after it are timed to their first byte.
    started_ns: i64,
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
        if options.follow {
            // Without follow every stream ends soon anyway: waiting would only delay the end.
            // A stream must read between rotations: with rotation every 200 ms and a 250 ms
            // delay, streams were rotated before their second receive, forever.
            let mut pacing = READ_PACING;
            if !options.rotation.is_zero() {
                pacing = pacing.min(options.rotation / 8);
            }
            reader.set_pacing(pacing);
        }
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
            by_attach: FxHashMap::default(),
            started_ns: now_ns(),
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
                    self.close_attach(key);
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
                let attach = self.by_attach.get(&event_stream(&event)).copied();
                match (event, attach) {
                    (ReaderEvent::Line(_, line), Some(key)) => {
                        self.on_attach_line(key, line, now_wall_ns)
                    }
                    (ReaderEvent::Ended(_, result), Some(key)) => self.on_attach_ended(key, result),
                    (ReaderEvent::Closed(stream), Some(key)) => self.on_attach_closed(stream, key),
                    (ReaderEvent::Opened(_), Some(key)) => {
                        // dockerd writes its answer right before it hooks the attach to the
                        // container's output: from here on nothing the container prints is
                        // missed by the net.
                        self.stats.attaches_answered.fetch_add(1, Relaxed);
                        tracing::debug!("{}: attach answered", self.containers[key].info.name)
                    }
                    (ReaderEvent::Opened(stream), None) => self.on_opened(stream, now_wall_ns),
                    (ReaderEvent::Line(stream, line), None) => {
                        self.on_lines(stream, line, &mut drain, now, now_wall_ns)
                    }
                    (ReaderEvent::Ended(stream, result), None) => self.on_ended(stream, result),
                    (ReaderEvent::Closed(stream), None) => self.on_closed(stream),
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
        // Every stream is closed: what the nets still hold was never needed.
        let keys: Vec<Key> = self.containers.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.drop_net(key);
        }
        self.flush_batch();
    }

    fn on_container(&mut self, event: ContainerEvent) {
        match event {
            ContainerEvent::Created(info, sent) => {
                if !self.options.follow || self.by_id.contains_key(info.id.as_str()) {
                    return;
                }
                // Matching by count needs the log stream to read from the first line.
                let from_first_line = !self
                    .committed
                    .contains_key(&info.id[..info.id.len().min(12)]);
                let key = self.insert(info);
                if from_first_line {
                    self.open_attach(key, sent.and_then(|s| s.take()));
                }
            }
            ContainerEvent::Running(info) => {
                let started = info.started.filter(|&t| t >= self.started_ns);
                if let Some(&key) = self.by_id.get(info.id.as_str()) {
                    let c = &mut self.containers[key];
                    let was_running = c.running;
                    if !was_running {
                        c.started_ns = started;
                        c.reread = false;
                    }
                    c.running = true;
                    if c.info != info {
                        c.labels = Arc::new(labels_of(&info));
                        c.name = Arc::from(info.name.as_str());
                        if info.log_rotates {
                            // A container first seen at `create` is inspected at `start`.
                            c.replay.turn_on();
                        }
                        c.info = info;
                    }
                    match (c.stream, c.closing, c.next) {
                        (None, _, Next::Nothing) => self.open_stream(key),
                        // A restart seen before the old stream is closed.
                        (Some(_), true, Next::Nothing) => c.next = Next::Reopen,
                        // A restart seen before the old stream has ended.
                        (Some(_), false, _) if !was_running => c.restarted = true,
                        _ => {}
                    }
                    self.schedule(key);
                    return;
                }
                let key = self.insert(info);
                self.containers[key].started_ns = started;
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
                let Some(&key) = self.by_id.get(id.as_str()) else {
                    return;
                };
                let c = &mut self.containers[key];
                c.running = false;
                c.removed_at = Some(Instant::now());
                if c.stream.is_some() && !c.closing {
                    // Read to its end: dockerd ends it once the container is gone.
                    c.next = Next::Forget;
                    self.schedule(key);
                } else {
                    self.close_stream(key, Next::Forget);
                }
                self.settle(key);
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

    /// A container not known yet, without a stream.
    fn insert(&mut self, info: ContainerInfo) -> Key {
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
            replay: if info.log_rotates {
                ReplayFilter::new()
            } else {
                ReplayFilter::off()
            },
            info,
            tracker,
            reread: false,
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
            removed_at: None,
            restarted: false,
            log_complete: false,
            started_ns: None,
            attach: None,
            attach_closing: false,
            net: None,
            net_since: now,
        });
        self.by_id.insert(id, key);
        key
    }

    /// Opens the container's attach stream (on `sent` when discovery sent the request
    /// already) and its safety net.
    fn open_attach(&mut self, key: Key, sent: Option<std::os::unix::net::UnixStream>) {
        let c = &mut self.containers[key];
        let opened = match sent {
            Some(conn) => self.reader.adopt_attach(conn.into()),
            None => self.reader.open_attach(&c.info.id),
        };
        match opened {
            Ok(stream) => {
                tracing::debug!("{}: attached (safety net)", c.info.name);
                self.stats.attaches_opened.fetch_add(1, Relaxed);
                c.attach = Some(stream);
                c.attach_closing = false;
                c.net = Some(SafetyNet::new());
                c.net_since = Instant::now();
                self.by_attach.insert(stream, key);
            }
            Err(e) => tracing::warn!("{}: cannot attach (no safety net): {e}", c.info.name),
        }
    }

    fn close_attach(&mut self, key: Key) {
        let c = &mut self.containers[key];
        if let (Some(stream), false) = (c.attach, c.attach_closing) {
            c.attach_closing = true;
            self.reader.close(stream);
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
                c.restarted = false;
                c.log_complete = false;
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
            Next::Forget => {}
            Next::Reopen => self.open_stream(key),
            Next::Nothing | Next::ReopenAt(_) => self.schedule(key),
        }
        self.settle(key);
    }

    /// Decides what becomes of the container's safety net, then forgets a removed container
    /// once nothing of it is open.
    fn settle(&mut self, key: Key) {
        let Some(c) = self.containers.get_mut(key) else {
            return;
        };
        if let Some(net) = &c.net {
            let drop = if net.misaligned() {
                tracing::warn!(
                    "{}: the attach missed the first lines (it came after the start): no safety net",
                    c.info.name
                );
                true
            } else if net.overflowed() {
                tracing::warn!(
                    "{}: the log stream lags {} attach lines behind: safety net dropped",
                    c.info.name,
                    net.pending()
                );
                true
            } else if c.removed_at.is_some() && c.stream.is_none() && c.attach.is_none() {
                // Neither source has more, and the log stream will not be reopened.
                self.deliver_net(key);
                false
            } else {
                net.caught_up()
                    && ((c.attach.is_none() && c.stream.is_none() && c.log_complete)
                        || (c.stream.is_some()
                            && !c.closing
                            && c.removed_at.is_none()
                            && c.net_since.elapsed() >= NET_HOLD))
            };
            if drop {
                self.drop_net(key);
            }
        }
        let c = &self.containers[key];
        if c.next == Next::Forget && c.stream.is_none() && c.attach.is_none() {
            self.forget(key);
        }
    }

    /// Drops the safety net; the lines it held are the log stream's to deliver.
    fn drop_net(&mut self, key: Key) {
        let c = &mut self.containers[key];
        if let Some(mut net) = c.net.take() {
            let held = net.take_held().len() as u64;
            self.stats.discard(Discard::AttachReleased, held);
            tracing::debug!("{}: safety net dropped ({held} lines held)", c.info.name);
        }
        self.close_attach(key);
    }

    /// Queues the attach lines the log stream never delivered.
    fn deliver_net(&mut self, key: Key) {
        let c = &mut self.containers[key];
        let Some(mut net) = c.net.take() else {
            return;
        };
        let held = net.take_held();
        if held.is_empty() {
            tracing::debug!("{}: removed, nothing missing", c.info.name);
            return;
        }
        let mut labels = (*c.labels).clone();
        labels.insert(ATTACH_LABEL.0.into(), ATTACH_LABEL.1.into());
        let labels = Arc::new(labels);
        let processed_at_ns = now_ns();
        let mut queued = 0u64;
        for line in held {
            let wanted = match line.stream {
                StreamKind::Stdout => self.options.include_stdout,
                StreamKind::Stderr => self.options.include_stderr,
            };
            if !wanted {
                self.stats.discard(Discard::Filtered, 1);
                continue;
            }
            queued += 1;
            self.batch.push(LogEntry {
                timestamp_ns: line.received_ns,
                processed_at_ns,
                message: line.message,
                stream: line.stream,
                source_type: "docker",
                source_id: c.source_id.clone(),
                labels: labels.clone(),
            });
        }
        tracing::info!(
            "{}: {queued} lines its log stream could not deliver queued from the attach",
            c.info.name
        );
        self.stats.lines_read.fetch_add(queued, Relaxed);
        self.stats.lines_from_attach.fetch_add(queued, Relaxed);
        c.lines_total.fetch_add(queued, Relaxed);
        self.batch_since.get_or_insert_with(Instant::now);
    }

    fn forget(&mut self, key: Key) {
        let c = self.containers.remove(key);
        if c.touched {
            // Its lines stay in the batch; a later container reusing the key must
            // not inherit the mark.
            self.touched.retain(|&k| k != key);
        }
        self.by_id.remove(&c.id);
        self.registry.forget(&c.id);
        // Queued behind its last lines, so its position is retired only once they are
        // delivered.
        self.removed.push(c.id);
        self.batch_since.get_or_insert_with(Instant::now);
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
            if let Some(removed_at) = c.removed_at {
                if now >= removed_at + REMOVED_GRACE {
                    tracing::warn!(
                        "{}: streams still open {REMOVED_GRACE:?} after the removal: closed",
                        c.info.name
                    );
                    self.close_stream(key, Next::Forget);
                    if self.containers.contains(key) {
                        self.close_attach(key);
                    }
                } else {
                    self.schedule(key);
                }
                continue;
            }
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
        let pause = gauge.should_pause(self.paused);
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
                c.log_complete = true;
                let rotated = c.replay.take_rotation_seen();
                if c.removed_at.is_some() {
                    c.next = Next::Forget;
                } else if std::mem::take(&mut c.restarted) && self.options.follow {
                    c.next = Next::Reopen;
                } else {
                    // In follow mode a clean end means the container stopped; a restart
                    // is a new `Running` event.
                    c.running = false;
                    // dockerd's follow reader ends at a stop without the rotated files it had
                    // fallen behind on: where the log rotates (max-size; a replay also shows
                    // it), read once more from the resume point, which returns what is still
                    // on disk. Once per run: that read ends at EOF too. The cost is bounded:
                    // max-size x max-file of log.
                    let again = self.options.follow && !c.reread && (rotated || c.info.log_rotates);
                    c.reread = again;
                    c.next = if again {
                        tracing::debug!("{}: reading the rotated log once more", c.info.name);
                        Next::Reopen
                    } else {
                        Next::Nothing
                    };
                    self.registry.unmonitored(&c.info.id);
                }
            }
            Err(e) => {
                self.stats.stream_errors.fetch_add(1, Relaxed);
                c.failures += 1;
                // Failures in a row since dockerd last answered a stream (`on_opened` resets
                // the count): a daemon refusing backs off up to 30 s, a stream that broke
                // after working is reopened after the first step.
                let backoff = REOPEN_BACKOFF * c.failures.min(30);
                c.next = if c.removed_at.is_some() {
                    Next::Forget
                } else if std::mem::take(&mut c.restarted) && self.options.follow {
                    Next::ReopenAt(Instant::now() + backoff)
                } else if (self.options.follow && !c.running)
                    || (!self.options.follow && c.failures >= ONCE_ATTEMPTS)
                {
                    Next::Nothing
                } else {
                    Next::ReopenAt(Instant::now() + backoff)
                };
                match c.next {
                    Next::ReopenAt(_) => tracing::warn!(
                        "{}: log stream failed, reopening in {backoff:?}: {e}",
                        c.info.name
                    ),
                    _ => tracing::warn!("{}: log stream failed: {e}", c.info.name),
                }
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

    /// dockerd answered: the open succeeded, so later failures start their backoff afresh.
    fn on_opened(&mut self, stream: StreamId, now_wall_ns: i64) {
        let Some(&key) = self.by_stream.get(&stream) else {
            return;
        };
        let c = &mut self.containers[key];
        c.failures = 0;
        if let Some(started) = c.started_ns.take() {
            let nanos = u64::try_from(now_wall_ns.saturating_sub(started)).unwrap_or(0);
            self.stats.first_byte.0.observe(Duration::from_nanos(nanos));
        }
    }

    fn on_attach_line(&mut self, key: Key, line: LogLine, now_wall_ns: i64) {
        let c = &mut self.containers[key];
        let Some(net) = c.net.as_mut() else {
            self.stats.discard(Discard::AttachReleased, 1);
            return;
        };
        if net.attach_line(line.stream, &line.message, now_wall_ns) == AttachLine::Duplicate {
            self.stats.discard(Discard::AttachDuplicate, 1);
        } else if net.overflowed() {
            self.settle(key);
        }
    }

    fn on_attach_ended(&mut self, key: Key, result: Result<(), ReadError>) {
        let c = &mut self.containers[key];
        c.attach_closing = true;
        if let Err(e) = result {
            tracing::warn!("{}: attach stream failed: {e}", c.info.name);
        }
    }

    fn on_attach_closed(&mut self, stream: StreamId, key: Key) {
        self.by_attach.remove(&stream);
        let c = &mut self.containers[key];
        c.attach = None;
        c.attach_closing = false;
        self.settle(key);
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
                // Unknown or closing stream: its lines are not reported (a reopened stream
                // reads them again).
                let mut lines = 1;
                while matches!(rest.peek(), Some(ReaderEvent::Line(s, _)) if *s == stream) {
                    rest.next();
                    lines += 1;
                }
                self.stats.discard(Discard::Closing, lines);
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
            let has_net = c.net.is_some();
            // dockerd's follow reader replays a file that rotated under it, and can skip to
            // the current file: a reopen from the resume point reads the rotated files still
            // on disk (what it skipped is recovered, see `on_line`).
            let reopen = c.replay.take_replay_seen() && now - c.opened_at >= REPLAY_REOPEN_AFTER;
            if admitted && !c.touched {
                c.touched = true;
                self.touched.push(key);
                self.batch_since.get_or_insert(now);
            }
            if has_net {
                self.settle(key);
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
        if let Some(net) = c.net.as_mut() {
            net.log_line(line.stream, &line.message);
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
        // Entries without a checkpoint (a container forgotten meanwhile, lines from an
        // attach) are queued all the same, and so are removals.
        if self.touched.is_empty() && self.batch.is_empty() && self.removed.is_empty() {
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

fn event_stream(event: &ReaderEvent) -> StreamId {
    match event {
        ReaderEvent::Opened(s) | ReaderEvent::Line(s, _) | ReaderEvent::Ended(s, _) => *s,
        ReaderEvent::Closed(s) => *s,
    }
}
