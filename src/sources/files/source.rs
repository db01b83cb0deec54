//! The files thread: every monitored path, its open file and the ones rotated away from
//! it, read in passes; lines out as entries, in batches with the files' checkpoints, into
//! the queue the containers' entries go to.
//!
//! A pass looks at each path *before* reading it, so that a file replaced or truncated is
//! never read at the old offset:
//! - another (device, inode) at the path (rename and create, a file moved over it, deleted
//!   and created again): the old file stays open and is read to its end, then the new one
//!   from 0; the old one is read each pass until it has not grown for [`DRAIN_IDLE`]
//!   (a writer that has not reopened yet still writes to it);
//! - the same inode, shorter than the offset or with other first bytes (copytruncate, or
//!   an inode reused by a new file): read again from 0;
//! - the path gone: the open file is read to its end and kept as above; a listed path that
//!   is missing is a warning, and is picked up when it appears. Once nothing of it is read
//!   any more, its record is reported gone (for pruning, see
//!   [`crate::state::file_positions`]) and a path found by a scan is no longer tracked; so
//!   are, at start, the records of paths that no longer exist.
//!
//! Processing: each file's pipeline is chosen once, when it is first tracked
//! (`source_type: "file"`, its labels and its path, see
//! [`crate::pipeline::processing::mapping`]), and every entry goes through it before it is
//! batched, `{{source_path}}` being the file's path. A pipeline with `multiline` joins the
//! file's lines in a [`FileGroup`], whose checkpoint never passes the first line of a group
//! still held; held groups are dropped at a stop and read again at the next start, and
//! completed at the end of `--once`.
//!
//! Reading pauses while the queue is full (the containers' rule), and a pass reads at most
//! [`PASS_BUDGET`] bytes (or [`PASS_LINES`] lines) of a file, so a large file does not hold
//! back the others and batches stay small.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::decode::{LogLine, StreamKind};
use crate::pipeline::entry::{Labels, LogEntry};
use crate::pipeline::processing::{PipelineId, Processor, Source};
use crate::pipeline::{Batch, FileCheckpoint, QueueSender};

use super::config::Plan;
use super::group::FileGroup;
use super::tail::{Mark, Tailer};
use super::watch::{self, Waker};
use super::FileStats;
use crate::state::file_identity::{Identity, Same};
use crate::state::file_positions::{FilePosition, FileRecords};

/// Bytes of one file read per pass at most.
pub const PASS_BUDGET: u64 = 1 << 20;
/// Lines of one file read per pass at most (checked between reads): a batch stays near
/// [`MAX_BATCH`] entries, so that a full queue pauses reading in small steps.
const PASS_LINES: usize = 2 * MAX_BATCH;
/// A file rotated away is closed once it has not grown for this long.
pub const DRAIN_IDLE: Duration = Duration::from_secs(5);
/// Entries per batch at most (as the capture thread's batches).
const MAX_BATCH: usize = 1000;
/// With inotify, the longest sleep between passes (a safety net for a missed event).
const INOTIFY_SAFETY: Duration = Duration::from_secs(1);

/// Resume offset, offset read up to (they differ while a multiline group is held),
/// identity, and the rotated file's identity and resume offset.
type Checkpointed = (u64, u64, Identity, Option<(Identity, u64)>);

struct Draining {
    tailer: Tailer,
    grew_at: Instant,
    /// Deleted (no link left) when it was rotated away: its end ends its multiline group.
    deleted: bool,
}

impl Draining {
    fn new(tailer: Tailer) -> Draining {
        let deleted = tailer.file().metadata().is_ok_and(|m| m.nlink() == 0);
        Draining {
            tailer,
            grew_at: Instant::now(),
            deleted,
        }
    }
}

struct Tracked {
    path: PathBuf,
    key: Arc<str>,
    source_id: Arc<str>,
    labels: Arc<Labels>,
    /// Its processing pipeline, chosen once.
    pipeline: Option<PipelineId>,
    /// Its pipeline's `multiline` groups.
    group: Option<FileGroup>,
    listed: bool,
    current: Option<Tailer>,
    draining: Vec<Draining>,
    warned_missing: bool,
    /// (size, mtime) when last looked at: unchanged means no fingerprint check.
    seen: (u64, i64),
    /// `seen` is of the open file, from this pass: no `fstat` needed.
    fresh: bool,
    /// What was last checkpointed.
    checkpointed: Option<Checkpointed>,
    /// The start-up position, used at the first open.
    resume: Option<FilePosition>,
    /// The path was not found at the last look.
    missing: bool,
    /// Reported gone since it was last open.
    gone_reported: bool,
}

/// A stable `source_id` for a path: 12 hex digits of its FNV-1a hash (the width of a
/// container's short id).
pub fn source_id(path: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in path.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", h & 0xffff_ffff_ffff)
}

fn labels_for(path: &Path, configured: &Labels) -> Labels {
    let mut labels = Labels::new();
    labels.insert("file_path".into(), path.display().to_string());
    if let Some(name) = path.file_name() {
        labels.insert("file_name".into(), name.to_string_lossy().into_owned());
    }
    // The configured labels win: Go's pipeline file sets file_name itself.
    for (k, v) in configured {
        labels.insert(k.clone(), v.clone());
    }
    labels
}

fn file_entry(source_id: Arc<str>, labels: Arc<Labels>, line: LogLine, now: i64) -> LogEntry {
    LogEntry {
        fields: Default::default(),
        timestamp_ns: now,
        processed_at_ns: now,
        message: line.message,
        stream: StreamKind::Stdout,
        source_type: "file",
        source_id,
        labels,
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub struct FileSource {
    plan: Plan,
    tx: QueueSender,
    stats: Arc<FileStats>,
    records: FileRecords,
    tracked: Vec<Tracked>,
    by_path: HashMap<PathBuf, usize>,
    waker: Option<Waker>,
    /// Some directory could not be watched: poll.
    polling: bool,
    entries: Vec<LogEntry>,
    checkpoints: Vec<FileCheckpoint>,
    paused: bool,
    lines: Vec<LogLine>,
    warned_max: bool,
    /// Where the next pass starts.
    next: usize,
    processor: Option<Arc<Processor>>,
    marks: Vec<Mark>,
    /// `--once` read everything: complete the groups held.
    finishing: bool,
}

impl FileSource {
    /// `records`: the positions committed before (`file_positions.json`).
    pub fn new(plan: Plan, tx: QueueSender, stats: Arc<FileStats>, records: FileRecords) -> Self {
        let waker = if plan.inotify {
            Waker::new()
        } else {
            tracing::info!("file_monitor_service.inotify is false: files are polled");
            None
        };
        stats.inotify.store(waker.is_some(), Relaxed);
        FileSource {
            polling: waker.is_none(),
            plan,
            tx,
            stats,
            records,
            tracked: Vec::new(),
            by_path: HashMap::new(),
            waker,
            entries: Vec::new(),
            checkpoints: Vec::new(),
            paused: false,
            lines: Vec::new(),
            warned_max: false,
            next: 0,
            processor: None,
            marks: Vec::new(),
            finishing: false,
        }
    }

    /// Runs every file's entries through its pipeline (`processing`).
    pub fn set_processor(&mut self, processor: Arc<Processor>) {
        self.processor = Some(processor);
    }

    fn track(&mut self, path: PathBuf, configured: &Labels, listed: bool) {
        if self.by_path.contains_key(&path) {
            return;
        }
        let key: Arc<str> = Arc::from(path.display().to_string());
        // Used once: a path gone and found again later is another file.
        let resume = self.records.remove(&*key);
        let labels = labels_for(&path, configured);
        let pipeline = self.processor.as_ref().and_then(|p| {
            p.select(&Source {
                source_type: "file",
                labels: &labels,
                path: Some(&key),
            })
        });
        let group = self
            .processor
            .as_ref()
            .zip(pipeline)
            .and_then(|(p, id)| p.multiline(id).cloned())
            .map(FileGroup::new);
        match (&self.processor, pipeline) {
            (Some(p), Some(id)) => {
                tracing::info!(
                    "monitoring file {} (pipeline {})",
                    path.display(),
                    p.name(id)
                )
            }
            _ => tracing::info!("monitoring file {}", path.display()),
        }
        self.by_path.insert(path.clone(), self.tracked.len());
        self.tracked.push(Tracked {
            source_id: Arc::from(source_id(&key)),
            labels: Arc::new(labels),
            pipeline,
            group,
            key,
            path,
            listed,
            current: None,
            draining: Vec::new(),
            warned_missing: false,
            seen: (0, 0),
            fresh: false,
            checkpointed: None,
            resume,
            missing: false,
            gone_reported: false,
        });
    }

    /// Adds the listed files, and the files the directories' patterns select.
    fn scan(&mut self) {
        for f in self.plan.files.clone() {
            self.track(f.path.clone(), &f.labels, true);
            if let (Some(w), Some(parent)) = (&mut self.waker, f.path.parent()) {
                // A listed file's directory may not exist yet: poll until it does.
                if !w.watch(parent) {
                    self.polling = true;
                }
            }
        }
        for dir in self.plan.directories.clone() {
            let mut files = Vec::new();
            let mut dirs = Vec::new();
            let room = self.plan.max_files.saturating_sub(self.tracked.len());
            watch::scan(
                &dir,
                self.plan.follow_symlinks,
                self.plan.include_hidden,
                room.max(1),
                &mut files,
                &mut dirs,
            );
            for d in &dirs {
                if let Some(w) = &mut self.waker {
                    if !w.watch(d) {
                        self.polling = true;
                    }
                }
            }
            for f in files {
                if self.by_path.contains_key(&f) {
                    continue;
                }
                if self.tracked.len() >= self.plan.max_files {
                    if !self.warned_max {
                        tracing::warn!(
                            "monitoring.max_files ({}) reached: {} and later files are not \
                             monitored",
                            self.plan.max_files,
                            f.display()
                        );
                        self.warned_max = true;
                    }
                    break;
                }
                self.track(f, &dir.labels, false);
            }
        }
        self.stats
            .monitored
            .store(self.tracked.len() as u64, Relaxed);
    }

    /// Runs until `stop` (or, with `once`, until every file is read to its end).
    pub fn run(mut self, stop: &AtomicBool, once: bool) {
        tracing::info!(
            "file monitoring: {} listed files, {} directories (from {}); {}",
            self.plan.files.len(),
            self.plan.directories.len(),
            self.plan.origin,
            if self.waker.is_some() {
                "inotify"
            } else {
                "polling"
            }
        );
        self.scan();
        self.report_missing_records();
        let mut last_scan = Instant::now();
        let stopping = loop {
            crate::failure::test_panic_point("files");
            let stopping = stop.load(Relaxed);
            let (more, complete) = self.pass(stopping);
            if complete {
                self.forget_gone();
            }
            self.flush();
            if stopping || (once && !more && !self.paused) {
                break stopping;
            }
            if more && !self.paused {
                continue;
            }
            let mut timeout = if self.paused || self.polling || self.waker.is_none() {
                self.plan.read_interval
            } else {
                INOTIFY_SAFETY.min(self.plan.scan_interval)
            };
            if let Some(at) = self.group_deadline() {
                timeout = timeout.min(at.saturating_duration_since(Instant::now()));
            }
            let woken = match &mut self.waker {
                Some(w) => {
                    let woken = w.wait(timeout);
                    w.reset_if_ignored(woken);
                    woken
                }
                None => {
                    std::thread::sleep(timeout);
                    watch::Woken::default()
                }
            };
            if woken.created || last_scan.elapsed() >= self.plan.scan_interval {
                self.scan();
                self.report_missing_records();
                last_scan = Instant::now();
            }
        };
        // Held multiline groups: at a stop the checkpoints are before them and the next start
        // reads them again, whole; at the end of `--once` the files have nothing more to add.
        if stopping {
            for t in &mut self.tracked {
                let held = t.group.as_mut().map_or(0, FileGroup::discard);
                if held > 0 {
                    tracing::info!(
                        "{}: {held} lines of unfinished multiline groups left for the next start",
                        t.key
                    );
                }
            }
        } else {
            self.finishing = true;
            // Every file once, even if the queue fills on the way (a pass cut short resumes
            // where it stopped).
            while !self.pass(false).1 && !stop.load(Relaxed) {
                self.flush();
                std::thread::sleep(self.plan.read_interval);
            }
        }
        self.flush();
        tracing::info!(
            "file monitoring stopped: {} lines read from {} files, paused {} times for a full \
             queue",
            self.stats.lines_read.load(Relaxed),
            self.tracked.len(),
            self.stats.pauses.load(Relaxed)
        );
    }

    /// One pass over every file: whether some file has more to read right away, and whether
    /// the pass went over every file (not cut short by a full queue).
    fn pass(&mut self, stopping: bool) -> (bool, bool) {
        let mut more = false;
        let n = self.tracked.len();
        // A pass cut short by a full queue resumes with the file it stopped at, so that
        // under backpressure the first files do not take all the room.
        let start = self.next.min(n);
        for i in (start..n).chain(0..start) {
            self.next = i;
            let pause = self.tx.gauge().should_pause(self.paused);
            if pause != self.paused {
                self.paused = pause;
                if pause {
                    self.stats.pauses.fetch_add(1, Relaxed);
                }
            }
            if self.paused {
                return (false, false);
            }
            more |= self.poll(i, stopping);
            if self.entries.len() >= MAX_BATCH {
                self.flush();
            }
        }
        self.next = 0;
        (more, true)
    }

    /// The earliest `max_wait` expiry of a multiline group held.
    fn group_deadline(&self) -> Option<Instant> {
        self.tracked
            .iter()
            .filter_map(|t| t.group.as_ref()?.deadline())
            .min()
    }

    /// At start and at each rescan: the start-up records that no tracked file took whose
    /// path does not exist (removed while the capturer was down, or since, unmonitored) are
    /// reported gone, once.
    fn report_missing_records(&mut self) {
        let mut gone = Vec::new();
        self.records.retain(|path, _| {
            let missing = matches!(
                std::fs::symlink_metadata(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound
            );
            if missing {
                gone.push(FileCheckpoint::gone(
                    Arc::from(path.as_str()),
                    Arc::from(source_id(path)),
                ));
            }
            !missing
        });
        self.checkpoints.append(&mut gone);
    }

    /// Stops tracking the files found by a scan whose path is gone and read to its end
    /// (a glob over dated names would otherwise grow the list forever). Listed files stay:
    /// they are read again when they appear.
    fn forget_gone(&mut self) {
        let before = self.tracked.len();
        let mut i = before;
        while i > 0 {
            i -= 1;
            if self.tracked[i].listed || !self.tracked[i].gone_reported {
                continue;
            }
            let t = self.tracked.swap_remove(i);
            self.by_path.remove(&t.path);
            if let Some(moved) = self.tracked.get(i) {
                self.by_path.insert(moved.path.clone(), i);
            }
            self.stats.files.lock().unwrap().remove(&*t.key);
            tracing::info!("{}: gone and read to its end: no longer monitored", t.key);
        }
        if self.tracked.len() != before {
            self.stats
                .monitored
                .store(self.tracked.len() as u64, Relaxed);
        }
    }

    fn open(&self, t: &Tracked) -> std::io::Result<File> {
        if t.listed || self.plan.follow_symlinks {
            File::open(&t.path)
        } else {
            // Never through a symlink put in place of a file found by a scan.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&t.path)
        }
    }

    /// Looks at file `i`'s path, then reads it; true when it has more to read now.
    fn poll(&mut self, i: usize, stopping: bool) -> bool {
        self.check_path(i);
        let chunk = self.plan.read_buffer_size;
        let t = &mut self.tracked[i];
        let mut lines = std::mem::take(&mut self.lines);
        let mut marks = std::mem::take(&mut self.marks);
        let grouped = t.group.is_some();
        let mut more = false;
        // Deleted files read to their end: their multiline group can grow no more.
        let mut ended: Vec<u64> = Vec::new();
        // Rotated-away files first: their lines were written before the new file's.
        t.draining.retain_mut(|d| {
            let m = grouped.then_some(&mut marks);
            match d
                .tailer
                .read(chunk, PASS_BUDGET, PASS_LINES, None, &mut lines, m)
            {
                Ok(r) if r.bytes > 0 => {
                    d.grew_at = Instant::now();
                    more |= !r.at_end;
                    if d.deleted && r.at_end {
                        ended.push(d.tailer.gen);
                    }
                    true
                }
                Ok(_) if d.grew_at.elapsed() >= DRAIN_IDLE && !stopping => {
                    d.tailer.finish(&mut lines, grouped.then_some(&mut marks));
                    tracing::info!("{}: done with the rotated file", t.key);
                    false
                }
                Ok(_) => {
                    if d.deleted {
                        ended.push(d.tailer.gen);
                    }
                    true
                }
                Err(e) => {
                    tracing::warn!("{}: reading the rotated file: {e}", t.key);
                    false
                }
            }
        });
        if let Some(tailer) = &mut t.current {
            match tailer.read(
                chunk,
                PASS_BUDGET,
                PASS_LINES,
                t.fresh.then_some(t.seen.0),
                &mut lines,
                grouped.then_some(&mut marks),
            ) {
                Ok(r) => more |= !r.at_end,
                Err(e) => {
                    tracing::warn!("{}: read at byte {}: {e}", t.key, tailer.offset);
                }
            }
        }
        let now = now_ns();
        let (n, bytes) = match &mut t.group {
            None => {
                let n = lines.len() as u64;
                let mut bytes = 0u64;
                for line in lines.drain(..) {
                    bytes += line.message.len() as u64;
                    let mut entry = file_entry(t.source_id.clone(), t.labels.clone(), line, now);
                    if let (Some(p), Some(id)) = (&self.processor, t.pipeline) {
                        p.apply(id, &mut entry, &t.key);
                    }
                    self.entries.push(entry);
                }
                (n, bytes)
            }
            Some(g) => {
                debug_assert_eq!(lines.len(), marks.len());
                let at = Instant::now();
                for (line, mark) in lines.drain(..).zip(marks.drain(..)) {
                    let entry = file_entry(t.source_id.clone(), t.labels.clone(), line, now);
                    g.push(entry, mark, at);
                }
                let released = if self.finishing {
                    g.finish()
                } else {
                    let live = |gen: u64| {
                        t.current.as_ref().is_some_and(|c| c.gen == gen)
                            || t.draining.iter().any(|d| d.tailer.gen == gen)
                    };
                    g.release(at, |gen| ended.contains(&gen) || !live(gen))
                };
                // A joined group is one entry for the sinks, counted once, so that the lines
                // read add up to those delivered.
                let n = released.entries.len() as u64;
                match &self.processor {
                    Some(p) => p.apply_released(
                        t.pipeline,
                        released.entries,
                        released.lines,
                        &t.key,
                        &mut self.entries,
                    ),
                    None => self.entries.extend(released.entries),
                }
                (n, released.bytes)
            }
        };
        marks.clear();
        self.lines = lines;
        self.marks = marks;
        self.stats.lines_read.fetch_add(n, Relaxed);
        if let Some(tailer) = &t.current {
            // Where each file resumes: before a multiline group still held.
            let resume = |tl: &Tailer| match &t.group {
                Some(g) => g.resume(tl.gen, tl.committed),
                None => tl.committed,
            };
            let rotated = t
                .draining
                .first()
                .map(|d| (d.tailer.identity, resume(&d.tailer)));
            let at = (resume(tailer), tailer.committed, tailer.identity, rotated);
            if n > 0 || t.checkpointed != Some(at) {
                let (size, modified_ns) = if t.fresh {
                    t.seen
                } else {
                    tailer.stat().unwrap_or((tailer.offset, 0))
                };
                self.checkpoints.push(FileCheckpoint {
                    path: t.key.clone(),
                    source_id: t.source_id.clone(),
                    identity: tailer.identity,
                    offset: at.0,
                    size,
                    modified_ns,
                    lines: n,
                    bytes,
                    rotated,
                    gone: false,
                });
                t.checkpointed = Some(at);
                self.stats.set(&t.key, &t.source_id, tailer.committed, size);
            }
        } else if t.missing && t.draining.is_empty() && !t.gone_reported {
            // Behind every line of it (a group held of it was completed above).
            t.gone_reported = true;
            self.checkpoints
                .push(FileCheckpoint::gone(t.key.clone(), t.source_id.clone()));
        }
        more
    }

    /// Compares what the path is now with the open file: rotation, truncation, appearance.
    fn check_path(&mut self, i: usize) {
        self.tracked[i].fresh = false;
        let t = &self.tracked[i];
        let meta = if t.listed || self.plan.follow_symlinks {
            std::fs::metadata(&t.path)
        } else {
            std::fs::symlink_metadata(&t.path)
        };
        let meta = match meta {
            Ok(m) if m.is_file() => m,
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let t = &mut self.tracked[i];
                t.missing = true;
                if let Some(old) = t.current.take() {
                    tracing::info!(
                        "{}: gone (renamed or deleted); reading it to its end",
                        t.key
                    );
                    self.stats.rotations.fetch_add(1, Relaxed);
                    t.draining.push(Draining::new(old));
                } else if t.listed && !t.warned_missing {
                    tracing::warn!(
                        "{}: listed file does not exist; it is picked up when it appears",
                        t.key
                    );
                    t.warned_missing = true;
                }
                return;
            }
            Err(e) => {
                tracing::debug!("{}: {e}", t.key);
                return;
            }
        };
        self.tracked[i].missing = false;
        let t = &self.tracked[i];
        let (dev, ino) = (meta.dev(), meta.ino());
        let seen = (meta.len(), meta.mtime() * 1_000_000_000 + meta.mtime_nsec());
        let same_inode = t
            .current
            .as_ref()
            .map(|c| c.identity.device == dev && c.identity.inode == ino);
        match same_inode {
            Some(true) => {
                let t = &mut self.tracked[i];
                t.fresh = true;
                if seen == t.seen {
                    return;
                }
                t.seen = seen;
                let cur = t.current.as_mut().expect("checked above");
                let verdict = if seen.0 < cur.offset {
                    Ok(Same::Rewritten)
                } else {
                    cur.identity.compare(cur.file(), dev, ino)
                };
                match verdict {
                    Ok(Same::Yes) => {
                        let mut id = cur.identity;
                        let _ = id.refresh(cur.file(), seen.0);
                        cur.identity = id;
                    }
                    Ok(_) => {
                        tracing::info!(
                            "{}: truncated or rewritten in place (copytruncate) at byte {}: \
                             reading it from the start",
                            t.key,
                            cur.offset
                        );
                        self.stats.truncations.fetch_add(1, Relaxed);
                        if let Err(e) = cur.restart() {
                            tracing::warn!("{}: {e}", t.key);
                        }
                        // The stat may predate the rewrite: look again next time.
                        t.fresh = false;
                    }
                    Err(e) => tracing::warn!("{}: fingerprint: {e}", t.key),
                }
            }
            Some(false) | None => {
                let file = match self.open(t) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!("{}: cannot open: {e}", t.key);
                        return;
                    }
                };
                let identity = match Identity::of(&file) {
                    Ok(id) => id,
                    Err(e) => {
                        tracing::warn!("{}: {e}", t.key);
                        return;
                    }
                };
                let t = &mut self.tracked[i];
                let offset = match t.resume.take() {
                    Some(r) => {
                        let offset = resume_offset(&t.key, &r, &file, &identity);
                        // A file rotated away before the stop, not read to its end then.
                        if let Some(rot) = r.rotated {
                            if let Some(old) = find_beside(&t.path, &rot.identity, rot.offset) {
                                tracing::info!(
                                    "{}: reading the file rotated before the stop from byte {}",
                                    t.key,
                                    rot.offset
                                );
                                t.draining.push(Draining::new(old));
                            }
                        }
                        if offset == 0 && r.offset > 0 {
                            // Rotated while the capturer was down: the lines after the
                            // record are in the rotated file, if it is still beside.
                            let old = r
                                .identity()
                                .and_then(|id| find_beside(&t.path, &id, r.offset));
                            if let Some(old) = old {
                                tracing::info!(
                                    "{}: the file recorded was rotated while stopped; reading \
                                     it from byte {} first",
                                    t.key,
                                    r.offset
                                );
                                t.draining.push(Draining::new(old));
                            }
                        }
                        offset
                    }
                    None => 0,
                };
                if let Some(old) = t.current.take() {
                    tracing::info!(
                        "{}: replaced by another file (rotation): the old one is read to its \
                         end, the new one from its start",
                        t.key
                    );
                    self.stats.rotations.fetch_add(1, Relaxed);
                    t.draining.push(Draining::new(old));
                } else if t.warned_missing {
                    tracing::info!("{}: appeared", t.key);
                }
                t.warned_missing = false;
                t.gone_reported = false;
                t.seen = seen;
                // The path may have been replaced between the stat and the open.
                t.fresh = identity.device == dev && identity.inode == ino;
                t.current = Some(Tailer::new(file, identity, offset));
            }
        }
    }

    fn flush(&mut self) {
        if self.entries.is_empty() && self.checkpoints.is_empty() {
            return;
        }
        let batch = Batch {
            entries: std::mem::take(&mut self.entries),
            checkpoints: Vec::new(),
            removed: Vec::new(),
            file_checkpoints: std::mem::take(&mut self.checkpoints),
        };
        if let Err(batch) = self.tx.send(batch) {
            tracing::error!(
                "dispatcher gone: {} file lines read and not delivered",
                batch.entries.len()
            );
        }
    }
}

/// The file `id` describes, found under another name in the path's directory (renamed by a
/// rotation), opened at `offset`. Only our records (with a fingerprint) are looked for: an
/// inode alone may have been reused.
fn find_beside(path: &Path, id: &Identity, offset: u64) -> Option<Tailer> {
    use std::os::unix::fs::OpenOptionsExt;
    for entry in std::fs::read_dir(path.parent()?).ok()?.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if !kind.is_file() || entry.path() == path {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if meta.dev() != id.device || meta.ino() != id.inode || meta.len() < offset {
            continue;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(entry.path())
            .ok()?;
        if matches!(id.compare(&file, id.device, id.inode), Ok(Same::Yes)) {
            let now = Identity::of(&file).ok()?;
            return Some(Tailer::new(file, now, offset));
        }
    }
    None
}

/// Where to resume a file with a committed record: its offset when the file is the one
/// recorded, else 0 (the file was rotated or replaced while the capturer was down).
fn resume_offset(key: &str, r: &FilePosition, file: &File, now: &Identity) -> u64 {
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let same = match r.identity() {
        Some(id) => matches!(id.compare(file, now.device, now.inode), Ok(Same::Yes)),
        // A Go record: device and inode when it has them; no fingerprint.
        None => (r.inode == 0 || r.inode == now.inode) && (r.device == 0 || r.device == now.device),
    };
    if same && size >= r.offset {
        tracing::info!("{key}: resuming at byte {}", r.offset);
        r.offset
    } else {
        tracing::info!(
            "{key}: not the file recorded in the positions (rotated or replaced while \
             stopped): read from its start"
        );
        0
    }
}
