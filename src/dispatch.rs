//! The dispatcher: takes batches off the queue, delivers them to every enabled sink, and only
//! then advances the positions, committing them to disk every `commit_interval` (sinks
//! flushed, i.e. fsynced, first).
//!
//! A sink that fails with a retryable error is retried with backoff while it holds the batch;
//! the sinks that already took it are not written again. The queue stays full meanwhile, so
//! the reader pauses: nothing is dropped. A permanent refusal (a 4xx Loki will never accept)
//! counts the lines as dropped with the reason and lets the batch go (only the lines named,
//! when the sink says part of the batch landed: [`SinkError::PartlyDropped`]).
//!
//! A retry waits the backoff or the server's `Retry-After`, whichever is longer. A failing sink
//! is logged when it starts failing, then at most once a minute (with the count of failures in
//! between), and when it recovers: an outage does not write a line per batch. Errors only the
//! operator can fix (Loki 401/403/404/407) are also kept in [`DispatchStats::config_errors`]
//! for `/health` until the sink takes a batch again.
//!
//! Records of removed containers (reported by the reader behind their last lines) are marked
//! `removed` once delivered and pruned `max_position_age` later, looked at every
//! `cleanup_interval`; so are the records of monitored files whose path is gone (reported by
//! the files thread once nothing of them is read any more).
//!
//! On shutdown the dispatcher drains the queue until the reader has closed it, retrying
//! failing sinks until `shutdown_deadline`; what it could not deliver by then is named in the
//! log and left unacknowledged, so the next start reads it again. From then on the positions
//! of the containers in that batch stay where they were: a later batch that does get through
//! (a flapping sink) must not carry them past the lines that did not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::pipeline::{Batch, QueueReceiver, Received};
use crate::sink::{Backoff, Sink, SinkError};
use crate::state::positions::PositionStore;
use crate::telemetry::SinkTimings;

#[derive(Clone, Debug)]
pub struct DispatchOptions {
    /// Entries handed to the sinks per write at most.
    pub batch_size: usize,
    /// How long a partial batch may wait for more entries.
    pub batch_timeout: Duration,
    /// How often positions are committed to disk.
    pub commit_interval: Duration,
    /// How long after stop failing sinks are still retried.
    pub shutdown_timeout: Duration,
    /// How often positions of removed containers are looked at for pruning; zero: never.
    pub cleanup_interval: Duration,
    /// How long the position of a removed container is kept once its lines are delivered.
    pub max_position_age: Duration,
}

/// Counters of the dispatcher, shared with metrics and tests.
#[derive(Debug, Default)]
pub struct DispatchStats {
    /// Lines every sink accepted (or refused for good).
    pub lines_delivered: AtomicU64,
    /// Of `lines_delivered`, those at least one sink refused for good: each line once, where
    /// `dropped` counts it per sink.
    pub lines_refused: AtomicU64,
    pub batches_delivered: AtomicU64,
    pub retries: AtomicU64,
    pub commits: AtomicU64,
    /// Lines dropped, by reason: stays empty unless a sink refuses lines for good.
    pub dropped: Mutex<BTreeMap<String, u64>>,
    /// Per sink: writes that succeeded and failed.
    pub sink_results: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Since when each failing sink has been failing, for health checks.
    pub failing_sinks: Mutex<BTreeMap<&'static str, Instant>>,
    /// Per sink, the error only the operator can fix (wrong credentials, tenant or endpoint),
    /// while it is the sink's last error.
    pub config_errors: Mutex<BTreeMap<&'static str, String>>,
}

impl DispatchStats {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.lock().unwrap().values().sum()
    }

    fn sink_result(&self, sink: &'static str, status: &'static str) {
        *self
            .sink_results
            .lock()
            .unwrap()
            .entry((sink, status))
            .or_default() += 1;
    }
}

/// What is left undelivered when the dispatcher returns.
#[derive(Debug, Default)]
pub struct Undelivered {
    pub lines: u64,
    pub by_container: BTreeMap<String, u64>,
}

pub struct Dispatcher {
    queue: QueueReceiver,
    sinks: Vec<Box<dyn Sink>>,
    positions: Arc<Mutex<PositionStore>>,
    options: DispatchOptions,
    stats: Arc<DispatchStats>,
    timings: Arc<SinkTimings>,
    backoff: Backoff,
    last_commit: Instant,
    last_cleanup: Instant,
    stop: Arc<AtomicBool>,
    stopped_at: Option<Instant>,
    /// Containers (12-character ids) with lines in a batch given up at shutdown: their
    /// positions no longer advance.
    frozen: HashSet<String>,
    /// Per failing sink: when it was last logged, and failures not logged since.
    warned: HashMap<&'static str, (Instant, u64)>,
}

/// A failing sink is logged again at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Longest `Retry-After` honoured: a server asking for more is asked again after this.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);

/// The 12-character short id both entries (`source_id`) and checkpoints (full id) reduce to.
fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

impl Dispatcher {
    pub fn new(
        queue: QueueReceiver,
        sinks: Vec<Box<dyn Sink>>,
        positions: Arc<Mutex<PositionStore>>,
        options: DispatchOptions,
        stats: Arc<DispatchStats>,
        timings: Arc<SinkTimings>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Dispatcher {
            queue,
            sinks,
            positions,
            options,
            stats,
            timings,
            backoff: Backoff::default(),
            last_commit: Instant::now(),
            last_cleanup: Instant::now(),
            stop,
            stopped_at: None,
            frozen: HashSet::new(),
            warned: HashMap::new(),
        }
    }

    /// Runs until the reader has closed the queue, then flushes and commits. Returns what it
    /// could not deliver.
    pub fn run(mut self) -> Undelivered {
        let mut pending = Batch::default();
        let mut first_at: Option<Instant> = None;
        let mut closed = false;
        let mut undelivered = Undelivered::default();
        while !closed {
            crate::failure::test_panic_point("dispatcher");
            let wait = match first_at {
                Some(t) => self.options.batch_timeout.saturating_sub(t.elapsed()),
                None => self.options.commit_interval.min(Duration::from_millis(500)),
            };
            match self.queue.recv(wait) {
                Received::Batch(batch) => {
                    first_at.get_or_insert_with(Instant::now);
                    pending.entries.extend(batch.entries);
                    pending.checkpoints.extend(batch.checkpoints);
                    pending.removed.extend(batch.removed);
                    pending.file_checkpoints.extend(batch.file_checkpoints);
                }
                Received::Timeout => {}
                Received::Closed => closed = true,
            }
            let full = pending.entries.len() >= self.options.batch_size;
            let due = first_at.is_some_and(|t| t.elapsed() >= self.options.batch_timeout);
            // Checkpoints without entries (lines filtered out) advance positions too.
            if full
                || due
                || closed
                || (pending.entries.is_empty()
                    && !(pending.checkpoints.is_empty()
                        && pending.removed.is_empty()
                        && pending.file_checkpoints.is_empty()))
            {
                let batch = std::mem::take(&mut pending);
                first_at = None;
                if let Err(lost) = self.deliver(batch) {
                    undelivered.lines += lost.entries.len() as u64;
                    for c in &lost.checkpoints {
                        *undelivered
                            .by_container
                            .entry(c.container_name.to_string())
                            .or_default() += c.lines;
                        self.frozen.insert(short_id(&c.container_id).to_string());
                    }
                    for c in &lost.file_checkpoints {
                        *undelivered
                            .by_container
                            .entry(c.path.to_string())
                            .or_default() += c.lines;
                        self.frozen.insert(short_id(&c.source_id).to_string());
                    }
                    for e in &lost.entries {
                        if !self.frozen.contains(short_id(&e.source_id)) {
                            self.frozen.insert(short_id(&e.source_id).to_string());
                        }
                    }
                    self.queue.release(&lost.entries);
                }
            }
            if !self.options.cleanup_interval.is_zero()
                && self.last_cleanup.elapsed() >= self.options.cleanup_interval
            {
                self.cleanup();
            }
            if self.last_commit.elapsed() >= self.options.commit_interval {
                self.commit();
            }
        }
        self.commit();
        undelivered
    }

    /// Hands the batch to every sink, retrying failures; then advances the positions.
    /// `Err(batch)` when shutdown came before every sink took it.
    fn deliver(&mut self, batch: Batch) -> Result<(), Batch> {
        let total = batch.entries.len();
        let mut refused_lines = 0;
        for start in (0..total.max(1)).step_by(self.options.batch_size.max(1)) {
            let end = (start + self.options.batch_size.max(1)).min(total);
            let chunk = &batch.entries[start..end];
            let mut done = vec![false; self.sinks.len()];
            // Lines of the chunk some sink refused for good (the most any one sink refused).
            let mut refused = 0usize;
            let mut attempt = 0u32;
            while !done.iter().all(|&d| d) {
                let mut retry_after = Duration::ZERO;
                for (i, sink) in self.sinks.iter_mut().enumerate() {
                    if done[i] {
                        continue;
                    }
                    let started = Instant::now();
                    let result = sink.write_batch(chunk);
                    self.timings.observe(sink.name(), started.elapsed());
                    match result {
                        Ok(()) => {
                            done[i] = true;
                            self.stats.sink_result(sink.name(), "success");
                            self.stats.failing_sinks.lock().unwrap().remove(sink.name());
                            self.stats.config_errors.lock().unwrap().remove(sink.name());
                            if let Some((_, missed)) = self.warned.remove(sink.name()) {
                                tracing::info!(
                                    "{}: recovered ({missed} failures since the last report)",
                                    sink.name()
                                );
                            }
                        }
                        Err(e) if e.is_retryable() => {
                            self.stats.sink_result(sink.name(), "error");
                            self.stats
                                .failing_sinks
                                .lock()
                                .unwrap()
                                .entry(sink.name())
                                .or_insert_with(Instant::now);
                            let mut config_errors = self.stats.config_errors.lock().unwrap();
                            if e.is_config_side() {
                                config_errors.insert(sink.name(), e.to_string());
                            } else {
                                config_errors.remove(sink.name());
                            }
                            drop(config_errors);
                            retry_after = retry_after.max(e.retry_after().unwrap_or_default());
                            warn_limited(&mut self.warned, sink.name(), &e, chunk.len());
                        }
                        Err(e) => {
                            done[i] = true;
                            let lines = e.dropped_lines().unwrap_or(chunk.len());
                            refused = refused.max(lines);
                            drop_lines(&self.stats, sink.name(), &e, lines);
                        }
                    }
                }
                if done.iter().all(|&d| d) {
                    refused_lines += refused as u64;
                    break;
                }
                attempt += 1;
                self.stats.retries.fetch_add(1, Relaxed);
                let delay = self
                    .backoff
                    .delay_random(attempt)
                    .max(retry_after.min(RETRY_AFTER_MAX));
                if !self.sleep(delay) {
                    tracing::error!(
                        "shutdown deadline passed with {} lines undelivered; they stay unacknowledged",
                        total - start
                    );
                    return Err(batch);
                }
            }
        }
        self.stats.lines_delivered.fetch_add(total as u64, Relaxed);
        self.stats.lines_refused.fetch_add(refused_lines, Relaxed);
        self.stats.batches_delivered.fetch_add(1, Relaxed);
        self.queue.release(&batch.entries);
        self.advance(&batch);
        Ok(())
    }

    /// Sleeps for `delay` unless the shutdown deadline passes first: false then.
    fn sleep(&mut self, delay: Duration) -> bool {
        let end = Instant::now() + delay;
        loop {
            if self.stop.load(Relaxed) {
                let stopped_at = *self.stopped_at.get_or_insert_with(Instant::now);
                if stopped_at.elapsed() >= self.options.shutdown_timeout {
                    return false;
                }
            }
            let now = Instant::now();
            if now >= end {
                return true;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(50)));
        }
    }

    fn advance(&self, batch: &Batch) {
        let mut positions = self.positions.lock().unwrap();
        for c in &batch.checkpoints {
            if self.frozen.contains(short_id(&c.container_id)) {
                continue;
            }
            positions.advance(
                &c.container_id,
                &c.container_name,
                c.resume,
                c.lines,
                c.bytes,
                c.newest_ns,
            );
        }
        for id in &batch.removed {
            positions.mark_removed(id);
        }
        for c in &batch.file_checkpoints {
            if !self.frozen.contains(short_id(&c.source_id)) {
                positions.advance_file(c);
            }
        }
    }

    /// Drops the positions of containers removed, and of files gone, more than
    /// `max_position_age` ago.
    fn cleanup(&mut self) {
        self.last_cleanup = Instant::now();
        let mut positions = self.positions.lock().unwrap();
        let pruned = positions.prune_removed(self.options.max_position_age);
        let files = positions.prune_gone_files(self.options.max_position_age);
        drop(positions);
        if pruned > 0 {
            tracing::debug!("pruned the positions of {pruned} removed containers");
        }
        if files > 0 {
            tracing::info!("pruned the positions of {files} files gone");
        }
    }

    /// Flushes every sink (fsync), then writes the positions: a committed position never
    /// covers lines a crash could still lose.
    fn commit(&mut self) {
        self.last_commit = Instant::now();
        if !self.positions.lock().unwrap().dirty() {
            return;
        }
        for sink in &mut self.sinks {
            if let Err(e) = sink.flush() {
                tracing::warn!(
                    "{}: flush failed, positions not committed: {e}",
                    sink.name()
                );
                return;
            }
        }
        match self.positions.lock().unwrap().commit() {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Relaxed);
            }
            Err(e) => tracing::error!("positions not committed: {e}"),
        }
    }
}

/// Logs a retryable failure when the sink starts failing, then at most every [`WARN_EVERY`].
fn warn_limited(
    warned: &mut HashMap<&'static str, (Instant, u64)>,
    sink: &'static str,
    error: &SinkError,
    lines: usize,
) {
    match warned.get_mut(sink) {
        Some((at, missed)) if at.elapsed() < WARN_EVERY => *missed += 1,
        Some((at, missed)) => {
            tracing::warn!(
                "{error} (still failing, {} more failures in {}s; holding {lines} lines)",
                *missed + 1,
                at.elapsed().as_secs()
            );
            *at = Instant::now();
            *missed = 0;
        }
        None => {
            tracing::warn!("{error} (will retry, holding {lines} lines)");
            warned.insert(sink, (Instant::now(), 0));
        }
    }
}

fn drop_lines(stats: &DispatchStats, sink: &'static str, error: &SinkError, lines: usize) {
    let reason = error.drop_reason().unwrap_or("refused");
    tracing::error!("{sink}: {lines} lines refused for good ({reason}): {error}");
    stats.sink_result(sink, "dropped");
    *stats
        .dropped
        .lock()
        .unwrap()
        .entry(crate::sink::drop_label(sink, reason))
        .or_default() += lines as u64;
}
