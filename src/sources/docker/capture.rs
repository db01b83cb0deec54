//! The reader thread: one log stream per container, rotated and reopened without loss or
//! duplicates, lines turned into entries and queued for the dispatcher.
//!
//! - A stream is reopened from its container's [`ResumeTracker`] after a hang, an idle
//!   timeout or an error; the lines a reopened stream repeats are dropped there. It asks
//!   dockerd for the last lines of the log (`tail`, see [`crate::sources::docker::window`]) rather than for
//!   everything `since` the resume point, which costs dockerd a decode of the whole file.
//! - Rotation exists to recover from dockerd's hung follow streams (moby#23913, #37646), not
//!   to bound a stream's life: a stream that delivered within `rotation` is left alone. One
//!   silent that long is probed: a `follow=0&tail=1` request on its own short connection,
//!   through the same engine (the thread never blocks). Only if the probe's line is newer
//!   than anything the stream delivered is the stream hung and reopened (`rotations`). The
//!   idle timeout reopens a silent stream whatever the probe says.
//! - A wall-clock step back is logged once per step with its size (see [`crate::sources::docker::clock_step`]).
//! - The lines dockerd sends again after its own log rotation are dropped before the tracker
//!   counts them ([`crate::sources::docker::replay`]). At such a replay the stream is reopened, and the lines
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
//!   (see [`crate::sources::docker::safety_net`]). Once the log stream has caught up with it and stayed open
//!   [`NET_HOLD`], or the container ended with nothing missing, the attach is closed. When the
//!   container is removed and its log stream is over, the attach lines the log stream never
//!   delivered are queued, stamped with their capture time and labelled
//!   `capture_source=attach`.
//! - A removal (`destroy`) does not cut a stream: it is read to its end (dockerd ends it once
//!   the container is gone), [`REMOVED_GRACE`] at most.
//! - A start handled while the old stream is still open (a quick restart) reopens the stream
//!   as soon as the old one ends.
//! - A close that does not complete within [`CLOSE_DEADLINE`] leaves its stream to the engine
//!   (`streams_stuck_closing`) and the container goes on with a new stream; at stop, the
//!   streams still closing after [`DRAIN_DEADLINE`] are left the same way. The engine keeps
//!   the memory of such a stream's ops until their completions come or it is dropped.
//! - A container whose logging driver cannot be read (dockerd answers 501) is not asked again
//!   until it is removed (`CaptureStats::unreadable`); the same id can only have that driver.
//! - An io engine whose poll fails ends the capture and fails the process
//!   ([`crate::failure`]).
//! - Every line the reader hands over is either queued (`lines_read`) or discarded on purpose
//!   and counted by [`Discard`] reason.
//! - Processing ([`crate::pipeline::processing`]): each entry goes through its container's pipeline
//!   before it is batched. A pipeline with `multiline` holds lines in the container's
//!   [`Grouper`] until their group is complete; its checkpoint is then the position after the
//!   last line released, not the tracker's. At a stop the groups still open are dropped (the
//!   positions are before them, the next start reads them again); at the end of `--once` they
//!   are released. A joined group counts as one line read.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::decode::{LogLine, StreamKind};
use crate::io::StreamId;
use crate::pipeline::entry::{Labels, LogEntry};
use crate::pipeline::processing::{Grouper, PipelineId, Processor, Source};
use crate::pipeline::{Batch, Checkpoint, QueueSender};
use crate::sources::docker::clock_step::StepDetector;
use crate::sources::docker::discovery::ContainerEvent;
use crate::sources::docker::reader::{LogReader, ReadError, ReaderEvent, StreamSpec};
use crate::sources::docker::replay::{ReplayFilter, Verdict};
use crate::sources::docker::resume::ResumeTracker;
use crate::sources::docker::safety_net::{AttachLine, SafetyNet};
use crate::sources::docker::window::{self, Ask, Window};
use crate::sources::docker::{ContainerInfo, LogsQuery};
use crate::state::positions::Resume;
use crate::telemetry::{ContainerRegistry, Histogram};
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
/// [`crate::io::Engine::set_pacing`]; live: [`crate::sources::docker::reader::LIVE_WITHIN`]): at 1000 streams
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
/// A stream whose close has not completed this long after it was asked is stuck (a cancel
/// the kernel never completes, a broken ring): it is left to the engine, counted in
/// `streams_stuck_closing`, and its container goes on with a new stream. Reaping a cancel
/// takes milliseconds; this is far beyond any healthy close.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(10);
/// At stop, how long the streams still closing are waited for before the capture ends
/// without them (logged, counted in `streams_stuck_closing`).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// The HTTP status dockerd answers for a container whose logging driver cannot be read
/// (`--log-driver none`, or a remote driver without dual logging).
const NOT_READABLE: u16 = 501;
/// A stream is reopened at a replay of dockerd's (see `on_lines`) only once it is this old, so
/// that a replay the reopened stream itself sees cannot make the reopens spin.
const REPLAY_REOPEN_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Reopen every stream this often; zero: never.
    pub rotation: Duration,
    /// Reopen a stream silent this long while its container runs; zero: never.
    pub idle_timeout: Duration,
    /// See [`crate::sources::docker::resume`].
    pub overlap: Duration,
    /// Reopen with a tail window ([`crate::sources::docker::window`]) and rotate only hung streams (the
    /// probe). `false`: the plain `since` query and rotation on time, kept for the bench's
    /// "before" (`LOGCAP_REOPEN_WINDOW=off`).
    pub reopen_window: bool,
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
    /// Streams reopened at their rotation deadline: hung ones (the probe saw a newer line),
    /// or every one when `reopen_window` is off.
    pub rotations: AtomicU64,
    pub idle_reopens: AtomicU64,
    /// `tail=1` probes of streams silent for a rotation interval.
    pub stream_probes: AtomicU64,
    /// Reopens whose tail window could not be shown to reach the resume point, reopened
    /// wider (see [`crate::sources::docker::window`]).
    pub windows_widened: AtomicU64,
    /// Steps back of the wall clock seen (see [`crate::sources::docker::clock_step`]).
    pub clock_steps_back: AtomicU64,
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
    /// Lines dockerd sent again after its own log rotation, dropped (see [`crate::sources::docker::replay`]).
    pub lines_replayed: AtomicU64,
    /// Lines stamped at or before their stream's newest delivered line that the replay window
    /// does not hold (a clock step, or a replay older than the window): delivered.
    pub lines_out_of_order: AtomicU64,
    /// Streams reopened because dockerd replayed lines (its log rotated under the stream).
    pub replay_reopens: AtomicU64,
    /// Lines dockerd's follow reader had skipped, read by a reopened stream and delivered
    /// (after lines stamped later).
    pub lines_recovered: AtomicU64,
    /// Streams asked to close whose close has not completed after [`CLOSE_DEADLINE`] (or,
    /// at stop, [`DRAIN_DEADLINE`]): left to the engine. A gauge: one that completes after
    /// all leaves it.
    pub streams_stuck_closing: AtomicU64,
    /// Containers whose logging driver cannot be read (dockerd answered 501): full id to
    /// name. Not read again until removed (a recreated container has a new id).
    pub unreadable: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
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
    /// [`crate::sources::docker::replay`]).
    Replay,
    /// Lines of a reopened stream's tail window stamped before its resume point (what
    /// `since` would not have sent, see [`crate::sources::docker::window`]).
    Window,
}

impl Discard {
    pub const ALL: [Discard; 7] = [
        Discard::Repeat,
        Discard::Filtered,
        Discard::AttachDuplicate,
        Discard::AttachReleased,
        Discard::Closing,
        Discard::Replay,
        Discard::Window,
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
            Discard::Window => "window",
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
    /// Since when `closing` (see [`CLOSE_DEADLINE`]).
    closing_since: Instant,
    /// dockerd answered 501 (its logging driver cannot be read): never reopened.
    unreadable: bool,
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
    /// The tail window of the current stream, until the stream ends.
    window: Option<Window>,
    /// The current line showed the window too small: reopen wider.
    widen: bool,
    /// Reopens in a row whose window did not cover (see [`window::ask`]).
    attempt: u32,
    /// Lines per second of the last stream, while it delivered: sizes the next window.
    rate: f64,
    /// Lines received on the current stream.
    stream_lines: u64,
    /// The probe in flight, and the stream it probes.
    probe: Option<(StreamId, StreamId)>,
    /// The newest line the probe returned.
    probe_newest: Option<i64>,
    /// Its processing pipeline (`source_mapping`), chosen once.
    pipeline: Option<PipelineId>,
    /// The pipeline's `multiline` groups, held until complete, with the position after
    /// each line (see `crate::pipeline::processing::multiline`).
    grouper: Option<Grouper<Position>>,
    /// The position after the last group released: its checkpoint, instead of the
    /// tracker's, which also covers the lines still held.
    released: Option<Position>,
}

/// A container's resume point and newest timestamp after a line.
type Position = (Option<Resume>, Option<i64>);

impl Container {
    /// When the timers must look at this container next, if ever in its present state.
    fn due(
        &self,
        options: &CaptureOptions,
        paused: bool,
        close_deadline: Duration,
    ) -> Option<Instant> {
        let stuck =
            (self.stream.is_some() && self.closing).then(|| self.closing_since + close_deadline);
        let other = self.due_other(options, paused);
        match (stuck, other) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn due_other(&self, options: &CaptureOptions, paused: bool) -> Option<Instant> {
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
    /// See [`CLOSE_DEADLINE`] (tests shorten it).
    close_deadline: Duration,
    /// The saved `last_log_time_ns` of committed positions, per short id (see
    /// [`ResumeTracker::with_newest`]).
    committed_newest: HashMap<String, i64>,
    /// Streams given up on after [`CLOSE_DEADLINE`]: what their container was called, for
    /// the log if their `Closed` comes after all.
    stuck: FxHashMap<StreamId, Arc<str>>,
    /// Probes in flight: the container and its uid.
    by_probe: FxHashMap<StreamId, (Key, u64)>,
    clock: StepDetector,
    processor: Option<Arc<Processor>>,
    /// Containers whose pipeline joins lines (`multiline`): their groups expire by time.
    grouped: Vec<Key>,
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
            stuck: FxHashMap::default(),
            committed_newest: HashMap::new(),
            close_deadline: CLOSE_DEADLINE,
            by_probe: FxHashMap::default(),
            clock: StepDetector::default(),
            processor: None,
            grouped: Vec::new(),
        }
    }

    /// Replaces [`CLOSE_DEADLINE`].
    pub fn with_close_deadline(mut self, deadline: Duration) -> Self {
        self.close_deadline = deadline;
        self
    }

    /// The timestamp of the newest line delivered before this start, per short id (the
    /// positions' `last_log_time_ns`): a resumed stream's lines stamped after it are never
    /// taken for repeats.
    pub fn with_committed_newest(mut self, newest: HashMap<String, i64>) -> Self {
        self.committed_newest = newest;
        self
    }

    /// Every entry goes through its container's pipeline (see [`crate::pipeline::processing`]).
    pub fn set_processor(&mut self, processor: Arc<Processor>) {
        self.processor = Some(processor);
    }

    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// Runs until `stop` is set (follow mode) or, without follow, until every container's
    /// log has been read. Control events come from discovery (or, for `--once`, are all
    /// queued before the call). Returns when every stream is closed and every line queued.
    pub fn run(&mut self, control: &Receiver<ContainerEvent>, stop: &AtomicBool) {
        let mut stopping = false;
        let mut drain_until = None;
        loop {
            if !stopping && stop.load(Relaxed) {
                stopping = true;
                drain_until = Some(Instant::now() + DRAIN_DEADLINE);
                crate::failure::test_hang_point("capture");
                tracing::info!("stopping: closing {} streams", self.reader.live_streams());
                let keys: Vec<Key> = self.containers.iter().map(|(k, _)| k).collect();
                for key in keys {
                    self.close_stream(key, Next::Nothing);
                    self.close_attach(key);
                }
                for &probe in self.by_probe.keys() {
                    self.reader.close(probe);
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
            if drain_until.is_some_and(|at| Instant::now() >= at) {
                self.give_up_draining();
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
            crate::failure::test_panic_point("capture");
            let polled = self
                .reader
                .poll(&mut self.events, Some(wait))
                .and_then(|()| crate::failure::test_engine_error());
            if let Err(e) = polled {
                // The ring or epoll instance itself failed (transient errors are retried
                // inside): nothing can be read any more, and polling again would spin. The
                // process is failed (exit 70); the engine's drop reaps what it still can and
                // leaks the buffers of ops it cannot.
                crate::failure::global().fail("capture", format!("io engine failed: {e}"));
                break;
            }
            let mut events = std::mem::take(&mut self.events);
            // One clock read per poll, not per line: the lines of one poll were received
            // together.
            let (now, now_wall_ns) = (Instant::now(), now_ns());
            if let Some(step) = self.clock.observe(now, now_wall_ns) {
                self.on_clock_step(step);
            }
            let mut drain = events.drain(..).peekable();
            while let Some(event) = drain.next() {
                if !self.by_probe.is_empty() {
                    if let Some(&probe) = self.by_probe.get(&event_stream(&event)) {
                        self.on_probe_event(probe, event);
                        continue;
                    }
                }
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
            if !self.grouped.is_empty() {
                self.expire_groups(Instant::now());
            }
            if self
                .batch_since
                .is_some_and(|since| since.elapsed() >= QUEUE_AFTER)
            {
                self.flush_batch();
            }
        }
        // Held multiline groups: at a stop, the resume point is before them and the next start
        // reads them again, whole; at the end of a backfill, the log has nothing more to add.
        for key in std::mem::take(&mut self.grouped) {
            let Some(g) = self.containers[key].grouper.as_mut() else {
                continue;
            };
            if stopping {
                let held = g.discard();
                if held > 0 {
                    tracing::info!(
                        "{}: {held} lines of unfinished multiline groups left for the next start",
                        self.containers[key].info.name
                    );
                }
            } else {
                g.finish();
                self.release_groups(key);
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
                        _ if c.unreadable => {}
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
        let labels = labels_of(&info);
        let pipeline = self.processor.as_ref().and_then(|p| {
            p.select(&Source {
                source_type: "docker",
                labels: &labels,
                path: None,
            })
        });
        let grouper = pipeline
            .and_then(|id| self.processor.as_ref()?.multiline(id).cloned())
            .map(Grouper::new);
        if let (Some(p), Some(id)) = (&self.processor, pipeline) {
            tracing::debug!("{}: pipeline {}", info.name, p.name(id));
        }
        let key = self.containers.insert(Container {
            id: id.clone(),
            uid: self.next_uid,
            deadline: None,
            labels: Arc::new(labels),
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
            closing_since: now,
            unreadable: false,
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
            window: None,
            widen: false,
            attempt: 0,
            rate: 0.0,
            stream_lines: 0,
            probe: None,
            probe_newest: None,
            pipeline,
            grouper,
            released: None,
        });
        if self.containers[key].grouper.is_some() {
            self.grouped.push(key);
        }
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
        let short = &info.id[..info.id.len().min(12)];
        match self.committed.get(short) {
            Some(&resume) => ResumeTracker::resuming(overlap, resume)
                .with_newest(self.committed_newest.get(short).copied()),
            None if self.options.new_from_now => ResumeTracker::starting_at(overlap, now_ns()),
            None => ResumeTracker::new(overlap),
        }
    }

    fn open_stream(&mut self, key: Key) {
        let c = &mut self.containers[key];
        let resume = c.tracker.reopen();
        // The rate of the stream that ends here, over the time it delivered.
        if c.stream_lines > 0 {
            let active = (c.last_data - c.opened_at).max(Duration::from_secs(1));
            c.rate = c.stream_lines as f64 / active.as_secs_f64();
        }
        c.stream_lines = 0;
        let overlap_ns = self.options.overlap.as_nanos() as i64;
        let mut query = LogsQuery {
            follow: self.options.follow,
            since_ns: resume.map(|r| r.since_ns),
            tail: None,
        };
        c.window = None;
        if let (Some(r), true, true) = (resume, self.options.follow, self.options.reopen_window) {
            let guard = r.since_ns.saturating_sub(overlap_ns);
            let span = Duration::from_nanos(u64::try_from(now_ns() - guard).unwrap_or(0));
            match window::ask(c.attempt, c.rate, span, r.skip) {
                Ask::Tail(n) => {
                    query.since_ns = None;
                    query.tail = Some(n);
                    c.window = Some(Window::new(r.since_ns, overlap_ns));
                }
                Ask::Since => c.attempt = 0,
            }
        }
        let spec = StreamSpec {
            container_id: c.info.id.clone(),
            tty: c.info.tty,
            query,
        };
        match self.reader.open(&spec) {
            Ok(stream) => {
                tracing::debug!(
                    "{}: stream opened (since {:?}, tail {:?}, skipping {})",
                    c.info.name,
                    resume.map(|r| r.since_ns),
                    query.tail,
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
                    c.closing_since = Instant::now();
                    self.reader.close(stream);
                }
                self.schedule(key);
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
            let mut entry = LogEntry {
                fields: Default::default(),
                timestamp_ns: line.received_ns,
                processed_at_ns,
                message: line.message,
                stream: line.stream,
                source_type: "docker",
                source_id: c.source_id.clone(),
                labels: labels.clone(),
            };
            if let (Some(p), Some(id)) = (&self.processor, c.pipeline) {
                p.apply(id, &mut entry, "");
            }
            self.batch.push(entry);
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
        if let Some(g) = self.containers[key].grouper.as_mut() {
            // Removed: its groups are as complete as they will ever be.
            g.finish();
            self.release_groups(key);
            self.grouped.retain(|&k| k != key);
        }
        let c = self.containers.remove(key);
        if c.touched {
            // Its lines stay in the batch; a later container reusing the key must
            // not inherit the mark.
            self.touched.retain(|&k| k != key);
        }
        self.by_id.remove(&c.id);
        self.registry.forget(&c.id);
        if c.unreadable {
            self.stats.unreadable.lock().unwrap().remove(&*c.id);
        }
        // Queued behind its last lines, so its position is retired only once they are
        // delivered.
        self.removed.push(c.id);
        self.batch_since.get_or_insert_with(Instant::now);
    }

    /// Puts the container's next deadline, if it has one, on the timer heap.
    fn schedule(&mut self, key: Key) {
        let c = &mut self.containers[key];
        let due = c.due(&self.options, self.paused, self.close_deadline);
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
            if c.stream.is_some() && c.closing && now >= c.closing_since + self.close_deadline {
                self.stuck_closing(key);
                continue;
            }
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
                (Some(stream), _) if !c.closing && !self.paused => {
                    if c.rotate_at.is_some_and(|at| now >= at) {
                        let rotation = self.options.rotation;
                        if !self.options.reopen_window {
                            self.stats.rotations.fetch_add(1, Relaxed);
                            self.close_stream(key, Next::Reopen);
                            continue;
                        }
                        let (last_data, probing) = (c.last_data, c.probe.is_some());
                        let c = &mut self.containers[key];
                        if now - last_data < rotation {
                            // Delivering: not hung. Looked at again a rotation after its
                            // last line.
                            c.rotate_at = Some(last_data + rotation);
                        } else {
                            c.rotate_at = Some(now + rotation);
                            if !probing {
                                self.open_probe(key, stream);
                            }
                        }
                        self.schedule(key);
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

    /// The container's stream has not closed within [`CLOSE_DEADLINE`]: the engine keeps it
    /// (and the buffers it lent the kernel: freeing memory the kernel may still write is never
    /// safe, so they stay until the stream's last completion comes or the engine is
    /// dropped), and the container goes on as if it had closed, on a new stream.
    fn stuck_closing(&mut self, key: Key) {
        let c = &mut self.containers[key];
        let Some(stream) = c.stream.take() else {
            return;
        };
        self.by_stream.remove(&stream);
        self.stuck.insert(stream, c.name.clone());
        self.stats.streams_stuck_closing.fetch_add(1, Relaxed);
        tracing::error!(
            "{}: {stream} not closed {:?} after its close; left to the io \
             engine (its buffers stay lent to the kernel), the container goes on with a new \
             stream",
            c.info.name,
            self.close_deadline
        );
        c.closing = false;
        self.after_close(key);
    }

    /// At stop, [`DRAIN_DEADLINE`] has passed with streams still closing: the capture ends
    /// without them; the engine's drop reaps what it can and leaks the rest.
    fn give_up_draining(&mut self) {
        let stuck: Vec<&str> = self
            .by_stream
            .values()
            .filter_map(|&k| self.containers.get(k).map(|c| c.info.name.as_str()))
            .collect();
        let attach = self.by_attach.len();
        let live = self.reader.live_streams();
        self.stats
            .streams_stuck_closing
            .fetch_add((live.saturating_sub(self.stuck.len())) as u64, Relaxed);
        tracing::error!(
            "stopping: {live} streams not closed {DRAIN_DEADLINE:?} after the stop (log \
             streams of: {}; {attach} attach streams); ending without them",
            stuck.join(", ")
        );
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
        if c.closing {
            // Closed by us in the same poll (a window widened, a replay): `next` says what
            // comes after, and the end (often the container's stop, seen from a reopened
            // stream) is seen again by the next stream.
            return;
        }
        c.closing = true;
        c.closing_since = Instant::now();
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
            Err(ReadError::Decode(e)) if e.status() == Some(NOT_READABLE) => {
                // Permanent for this container: its logging driver is chosen at create.
                self.stats.stream_errors.fetch_add(1, Relaxed);
                tracing::warn!(
                    "{} ({}): its logging driver cannot be read ({e}); not read again until \
                     it is recreated",
                    c.info.name,
                    &c.info.id[..c.info.id.len().min(12)]
                );
                c.unreadable = true;
                self.registry.unmonitored(&c.info.id);
                c.next = if c.removed_at.is_some() {
                    Next::Forget
                } else {
                    Next::Nothing
                };
                self.stats
                    .unreadable
                    .lock()
                    .unwrap()
                    .insert(c.info.id.clone(), c.info.name.clone());
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
        self.schedule(key);
    }

    /// Everything of the stream is released: reopen, forget or leave the container.
    fn on_closed(&mut self, stream: StreamId) {
        let Some(key) = self.by_stream.remove(&stream) else {
            if let Some(name) = self.stuck.remove(&stream) {
                self.stats.streams_stuck_closing.fetch_sub(1, Relaxed);
                tracing::info!("{name}: {stream}, stuck closing, is closed after all");
            }
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
                    (now, now_wall_ns),
                    &self.options,
                    &self.stats,
                    self.processor.as_deref(),
                    &mut self.batch,
                );
                if c.widen || !matches!(rest.peek(), Some(ReaderEvent::Line(s, _)) if *s == stream)
                {
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
            if c.grouper.is_some() {
                admitted =
                    Self::release_into(c, self.processor.as_deref(), &self.stats, &mut self.batch);
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
            let c = &mut self.containers[key];
            if c.window.as_ref().is_some_and(Window::covered) {
                c.attempt = 0;
            }
            if std::mem::take(&mut c.widen) {
                // Nothing of this stream was admitted: the wider one reads it all again.
                c.attempt += 1;
                self.stats.windows_widened.fetch_add(1, Relaxed);
                tracing::debug!(
                    "{}: the tail window does not reach the resume point: reopening wider",
                    c.info.name
                );
                self.close_stream(key, Next::Reopen);
            } else if reopen {
                self.stats.replay_reopens.fetch_add(1, Relaxed);
                self.close_stream(key, Next::Reopen);
            }
        }
    }

    /// Sends the `tail=1` probe of a silent stream (see the module docs).
    fn open_probe(&mut self, key: Key, stream: StreamId) {
        let c = &mut self.containers[key];
        let spec = StreamSpec {
            container_id: c.info.id.clone(),
            tty: c.info.tty,
            query: LogsQuery {
                follow: false,
                since_ns: None,
                tail: Some(1),
            },
        };
        match self.reader.open(&spec) {
            Ok(probe) => {
                self.stats.stream_probes.fetch_add(1, Relaxed);
                c.probe = Some((probe, stream));
                c.probe_newest = None;
                self.by_probe.insert(probe, (key, c.uid));
            }
            Err(e) => tracing::warn!("{}: cannot probe the log stream: {e}", c.info.name),
        }
    }

    fn on_probe_event(&mut self, (key, uid): (Key, u64), event: ReaderEvent) {
        let c = self.containers.get_mut(key).filter(|c| c.uid == uid);
        match event {
            ReaderEvent::Opened(_) => {}
            ReaderEvent::Line(_, line) => {
                if let (Some(c), Some(ts)) = (c, line.last_timestamp_ns) {
                    c.probe_newest = c.probe_newest.max(Some(ts));
                }
            }
            ReaderEvent::Ended(_, result) => {
                let Some(c) = c else { return };
                let Some((_, probed)) = c.probe else { return };
                if let Err(e) = result {
                    tracing::debug!("{}: probe failed: {e}", c.info.name);
                    return;
                }
                // What the stream delivered, or where it started when it delivered nothing.
                let delivered = c
                    .tracker
                    .newest_ns()
                    .or_else(|| c.tracker.resume().map(|r| r.since_ns - 1));
                let hung = c.stream == Some(probed)
                    && !c.closing
                    && !self.paused
                    && c.probe_newest
                        .is_some_and(|p| delivered.is_none_or(|d| p > d));
                if hung {
                    tracing::warn!(
                        "{}: the log stream delivered nothing for {:?} while dockerd logged \
                         more: reopening it",
                        c.info.name,
                        c.last_data.elapsed()
                    );
                    self.stats.rotations.fetch_add(1, Relaxed);
                    self.close_stream(key, Next::Reopen);
                }
            }
            ReaderEvent::Closed(probe) => {
                self.by_probe.remove(&probe);
                if let Some(c) = c {
                    c.probe = None;
                }
            }
        }
    }

    fn on_clock_step(&mut self, step: Duration) {
        self.stats.clock_steps_back.fetch_add(1, Relaxed);
        let overlap = self.options.overlap;
        if step > overlap {
            tracing::warn!(
                "the wall clock stepped back {step:?}, more than since_overlap ({overlap:?}): \
                 streams reopened before it catches up can miss up to {:?} of lines",
                step - overlap
            );
        } else {
            tracing::info!(
                "the wall clock stepped back {step:?}, within since_overlap ({overlap:?})"
            );
        }
    }

    /// One line of container `c`; true when it was admitted (not a repeat).
    fn on_line(
        c: &mut Container,
        line: LogLine,
        (now, processed_at_ns): (Instant, i64),
        options: &CaptureOptions,
        stats: &CaptureStats,
        processor: Option<&Processor>,
        batch: &mut Vec<LogEntry>,
    ) -> bool {
        // timestamps=1 is always asked for; a line without one can only come from a daemon
        // that ignores it, and is stamped with the capture time.
        let ts = line.last_timestamp_ns.unwrap_or(processed_at_ns);
        c.stream_lines += 1;
        if let Some(window) = c.window.as_mut() {
            match window.line(ts) {
                window::Verdict::Pass => {}
                window::Verdict::Before => {
                    stats.discard(Discard::Window, 1);
                    return false;
                }
                window::Verdict::Widen => {
                    c.widen = true;
                    stats.discard(Discard::Closing, 1);
                    return false;
                }
            }
        }
        // Before the tracker: a line dockerd replays must not count as one more line of the
        // file, while the lines a reopened stream repeats must (see `crate::sources::docker::replay`). Among
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
        let gone = c.tracker.gone();
        let admitted = recovered || c.tracker.admit(ts);
        if c.tracker.gone() != gone {
            stats.resume_mismatches.fetch_add(1, Relaxed);
            tracing::warn!(
                "{}: the saved position was rotated away while the capturer was down \
                 ({} lines delivered before are no longer in the log); reading from the \
                 oldest line left. Lines logged after the stop and deleted by dockerd's \
                 max-file before this start are lost upstream (their number is unknown here)",
                c.info.name,
                c.tracker.gone() - gone
            );
        } else if c.tracker.mismatches() != before {
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
        let len = line.message.len() as u64;
        let mut entry = LogEntry {
            fields: Default::default(),
            timestamp_ns: line.timestamp_ns.unwrap_or(ts),
            processed_at_ns,
            message: line.message,
            stream: line.stream,
            source_type: "docker",
            source_id: c.source_id.clone(),
            labels: c.labels.clone(),
        };
        if let Some(g) = c.grouper.as_mut() {
            // Held until its group is complete: counted as read when released.
            g.push(entry, (c.tracker.resume(), c.tracker.newest_ns()), now);
            return false;
        }
        stats.lines_read.fetch_add(1, Relaxed);
        c.batch_lines += 1;
        c.batch_bytes += len;
        if let (Some(p), Some(id)) = (processor, c.pipeline) {
            p.apply(id, &mut entry, "");
        }
        batch.push(entry);
        true
    }

    /// Queues the container's complete groups, processed; true when there were any.
    fn release_into(
        c: &mut Container,
        processor: Option<&Processor>,
        stats: &CaptureStats,
        batch: &mut Vec<LogEntry>,
    ) -> bool {
        let Some(g) = c.grouper.as_mut() else {
            return false;
        };
        let released = g.release();
        if released.entries.is_empty() {
            return false;
        }
        // A joined group is one entry for the sinks: counted once, so that the lines read
        // still add up to those delivered (`done:` at exit).
        let entries = released.entries.len() as u64;
        stats.lines_read.fetch_add(entries, Relaxed);
        c.batch_lines += entries;
        c.batch_bytes += released.bytes;
        if let Some(position) = released.position {
            c.released = Some(position);
        }
        match processor {
            Some(p) => p.apply_released(c.pipeline, released.entries, released.lines, "", batch),
            None => batch.extend(released.entries),
        }
        true
    }

    /// [`Capture::release_into`] for a container, marking it for the next checkpoint.
    fn release_groups(&mut self, key: Key) {
        let c = &mut self.containers[key];
        if Self::release_into(c, self.processor.as_deref(), &self.stats, &mut self.batch)
            && !c.touched
        {
            c.touched = true;
            self.touched.push(key);
            self.batch_since.get_or_insert_with(Instant::now);
        }
    }

    /// Completes the groups silent for their `max_wait` and queues them.
    fn expire_groups(&mut self, now: Instant) {
        for i in 0..self.grouped.len() {
            let key = self.grouped[i];
            let Some(g) = self.containers[key].grouper.as_mut() else {
                continue;
            };
            if g.deadline().is_some_and(|at| at <= now) {
                g.expire(now);
                self.release_groups(key);
            }
        }
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
            let position = match c.grouper {
                // The tracker also covers lines still held in groups.
                Some(_) => c.released.take().unwrap_or((None, None)),
                None => (c.tracker.resume(), c.tracker.newest_ns()),
            };
            let (Some(resume), Some(newest_ns)) = position else {
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
            file_checkpoints: Vec::new(),
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
