//! Per-container read positions, persisted in `positions.directory/container_positions.json`.
//!
//! # File layout
//!
//! The layout of log_capturer_go (`pkg/positions/container_positions.go`): one pretty-printed
//! JSON object (2-space indent, keys sorted, no trailing newline) keyed by the 12-character
//! container id, each value a record with the Go fields in the Go order, followed by ours:
//!
//! ```json
//! {
//!   "0123456789ab": {
//!     "container_id": "0123456789ab",
//!     "since": "2026-11-27T22:23:11.750760435Z",
//!     "last_read": "2026-11-27T22:23:12.801000000Z",
//!     "last_log_time": "2026-11-27T22:23:12.750760435Z",
//!     "log_count": 1042,
//!     "bytes_read": 73311,
//!     "status": "active",
//!     "restart_count": 0,
//!     "since_ns": 1795818191750760435,
//!     "skip": 3,
//!     "last_log_time_ns": 1795818192750760435,
//!     "container_name": "web-1"
//!   }
//! }
//! ```
//!
//! - `since`, `last_read`, `last_log_time` are Go `time.Time` values: RFC 3339 strings (Go
//!   writes `RFC3339Nano` with trailing zeros trimmed and its local offset; we write 9 digits
//!   and `Z`; both are read). Go's zero time `0001-01-01T00:00:00Z` means "unset" and is read
//!   as `None`, written back as the zero time.
//! - `log_count`, `bytes_read` (Go `int64`) and `restart_count` (Go `int`) are integers.
//! - `status` is Go's vocabulary: `active`, `stopped`, `restarted`, `removed`.
//! - Ours (ignored by Go, which keeps only its own fields): `since_ns` and `skip`, the exact
//!   resume point ([`Resume`]); `last_log_time_ns`, the Docker timestamp of the newest delivered
//!   line; `container_name`. Unset ones are left out.
//!
//! We also write Go's `since` = `since_ns` and `last_log_time` = `last_log_time_ns`, so a
//! downgrade to the Go binary resumes near where we stopped (Go resumes an `active` container
//! from `since` and a `stopped`/`restarted` one from `last_log_time`, without losing lines).
//!
//! Keys: Go keys records by the 12-character short id. Every method here accepts the full
//! 64-character id as well and maps it to its first 12 characters, so records stay readable by
//! both programs.
//!
//! # Resuming a file written by Go
//!
//! A Go record has no `since_ns`/`skip`. Its resume point is chosen by Go's own rule
//! (`GetSinceTime`): a `stopped` or `restarted` container resumes from `last_log_time`, any other
//! from `since`, with `skip = 0`; whichever is unset falls back to the other, and a record with
//! neither has no resume point (captured like a new container). So we resume where the Go binary
//! itself would have resumed, never later, and:
//! - since `since` is inclusive and `skip = 0`, the lines stamped exactly at that time come again;
//! - Go never advanced `since` while a container ran (NOTES section 5, its bugs), and its
//!   `last_log_time` was a capture time of the newest batch read, updated only at its periodic
//!   flush. A container Go left `active` (Go killed or crashed) resumes from `since`, the time Go
//!   first saw it, so everything Go read since then is read again: the only choice that loses
//!   nothing, because Go recorded no delivered position. A `stopped` one resumes from Go's
//!   `last_log_time`, exactly as Go would have (lines Go had queued but not delivered before it
//!   stopped were already lost by Go and are not recovered).
//!
//! After our first commit the record carries `since_ns`/`skip` and resumes exactly.
//!
//! # Durability
//!
//! [`PositionStore::commit`] writes `container_positions.json.tmp` in the same directory, fsyncs
//! it, renames it over `container_positions.json` and fsyncs the directory: after a crash the
//! file is either the previous commit or the new one, never a mix. A leftover `.tmp` from a crash
//! is ignored by [`PositionStore::load`] and overwritten by the next commit.
//!
//! Each commit first hard-links the file it replaces to `container_positions.json.bak`, so the
//! previous commit survives whatever happens to the current file.
//!
//! A corrupt or unreadable file is an error ([`PositionsError`], naming the file and, for JSON,
//! line and column), never treated as empty: replaying every container's whole history silently
//! would be worse than refusing to start. The file is left untouched for the operator, and the
//! message says how to recover: from the `.bak` when it parses (the lines of one commit
//! interval come again), else by starting over. A `skip` over [`MAX_SKIP`] is corrupt: it
//! could only skip lines that were never delivered.
//!
//! # Pruning, and positions disabled
//!
//! [`PositionStore::mark_removed`] marks the record of a removed container (stamping
//! `last_read`) and [`PositionStore::prune_removed`] drops such records once old enough; the
//! record of a container that exists is never pruned. File records are marked gone by the files
//! thread ([`FileCheckpoint::gone`]) and dropped by [`PositionStore::prune_gone_files`] on the
//! same terms. [`PositionStore::in_memory`] is the store
//! of `positions.enabled: false`: it never reads or writes a file.
//!
//! # Files
//!
//! With file monitoring on ([`PositionStore::load_files`]), the same store keeps the files'
//! records (`crate::state::file_positions`) and each commit writes `file_positions.json` the same
//! way (its own `.tmp` and `.bak`) right after `container_positions.json`: one commit covers
//! both. With it off, `file_positions.json` is never read, written or removed.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::file_positions::FileCheckpoint;
use crate::state::file_positions::{
    parse as files_parse, FilePosition, FileRecords, FILE_POSITIONS_FILE,
};

/// Name of the positions file inside `positions.directory`.
pub const CONTAINER_POSITIONS_FILE: &str = "container_positions.json";
/// Name of the temporary file a commit writes before renaming it.
pub const CONTAINER_POSITIONS_TMP: &str = "container_positions.json.tmp";
/// The previous commit, kept by each commit (a hard link to the file it replaces).
pub const CONTAINER_POSITIONS_BAK: &str = "container_positions.json.bak";

/// Go's status of a container being read.
pub const STATUS_ACTIVE: &str = "active";
/// Go's status of a container whose stream ended (container stopped).
pub const STATUS_STOPPED: &str = "stopped";
/// Go's status of a restarted container (setting it bumps `restart_count`).
pub const STATUS_RESTARTED: &str = "restarted";
/// Go's status of a destroyed container.
pub const STATUS_REMOVED: &str = "removed";

pub use crate::telemetry::registry::SHORT_ID_LEN;

/// Where to resume one container's log stream.
///
/// Reopen it with Docker's inclusive `since=since_ns` and drop the first `skip` lines the stream
/// returns: they were delivered already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resume {
    /// Nanoseconds since the Unix epoch, for `since=` (see `decode::timestamp::format_since`).
    pub since_ns: i64,
    /// Lines to drop at the start of the reopened stream.
    pub skip: u64,
}

/// One container's record: Go's fields (same JSON names and types) and ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPosition {
    /// 12-character container id (the map key).
    #[serde(default)]
    pub container_id: String,
    /// Go: where to resume an active container. Ours: equals `since_ns` once we wrote it.
    #[serde(default, with = "go_time")]
    pub since: Option<i64>,
    /// Wall-clock time of the last update (capture time, not a log time).
    #[serde(default, with = "go_time")]
    pub last_read: Option<i64>,
    /// Go: capture time of the newest batch read. Ours: Docker time of the newest delivered line.
    #[serde(default, with = "go_time")]
    pub last_log_time: Option<i64>,
    /// Lines delivered (Go: lines dispatched), cumulative.
    #[serde(default)]
    pub log_count: i64,
    /// Bytes delivered (message bytes), cumulative.
    #[serde(default)]
    pub bytes_read: i64,
    /// `active`, `stopped`, `restarted`, `removed` (see the `STATUS_*` constants).
    #[serde(default)]
    pub status: String,
    /// How often the status was set to `restarted`.
    #[serde(default)]
    pub restart_count: i64,
    /// Ours: exact resume time in ns. Absent in Go files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ns: Option<i64>,
    /// Ours: lines at or after `since_ns` already delivered. Meaningful only with `since_ns`.
    /// At most [`MAX_SKIP`]: a larger value is refused as corrupt.
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "bounded_skip"
    )]
    pub skip: u64,
    /// Ours: Docker timestamp (ns) of the newest delivered line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_log_time_ns: Option<i64>,
    /// Ours: container name without the leading `/`, for people reading the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Largest `skip` a positions file may hold. The resume tracker keeps the lines of about two
/// overlaps (2 to 3 s with the default 1 s overlap); dockerd's fastest stream here is ~150,000
/// lines/s, so a real value stays far below this. A larger one can only come from corruption
/// or a hostile edit, and would skip (lose) every line the container logs from then on.
pub const MAX_SKIP: u64 = 1 << 24;

fn bounded_skip<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let skip = u64::deserialize(d)?;
    if skip > MAX_SKIP {
        return Err(serde::de::Error::custom(format!(
            "skip {skip} is over the limit of {MAX_SKIP} lines"
        )));
    }
    Ok(skip)
}

impl ContainerPosition {
    /// An empty `active` record: no resume point yet.
    pub fn new(container_id: &str) -> Self {
        ContainerPosition {
            container_id: short_id(container_id).to_owned(),
            since: None,
            last_read: None,
            last_log_time: None,
            log_count: 0,
            bytes_read: 0,
            status: STATUS_ACTIVE.to_owned(),
            restart_count: 0,
            since_ns: None,
            skip: 0,
            last_log_time_ns: None,
            container_name: None,
        }
    }

    /// Applies [`PositionStore::advance`] to this record; true when anything changed.
    fn advance(
        &mut self,
        name: &str,
        resume: Resume,
        (lines, bytes): (u64, u64),
        last_log_time_ns: i64,
    ) -> bool {
        let unchanged = lines == 0
            && bytes == 0
            && self.resume() == Some(resume)
            && self.since_ns.is_some()
            && self.last_log_time_ns == Some(last_log_time_ns)
            && (name.is_empty() || self.container_name.as_deref() == Some(name));
        if unchanged {
            return false;
        }
        self.since = Some(resume.since_ns);
        self.since_ns = Some(resume.since_ns);
        self.skip = resume.skip;
        self.last_log_time = Some(last_log_time_ns);
        self.last_log_time_ns = Some(last_log_time_ns);
        self.last_read = Some(now_ns());
        self.log_count = self.log_count.saturating_add(to_i64(lines));
        self.bytes_read = self.bytes_read.saturating_add(to_i64(bytes));
        if !name.is_empty() && self.container_name.as_deref() != Some(name) {
            self.container_name = Some(name.to_owned());
        }
        true
    }

    /// Where to resume this container; `None` when nothing was recorded (read from the start).
    ///
    /// Our records resume exactly from `(since_ns, skip)`. Go records (no `since_ns`) resume by
    /// Go's rule with `skip = 0`: see the module documentation.
    pub fn resume(&self) -> Option<Resume> {
        if let Some(since_ns) = self.since_ns {
            return Some(Resume {
                since_ns,
                skip: self.skip,
            });
        }
        let stopped = self.status == STATUS_STOPPED || self.status == STATUS_RESTARTED;
        let since_ns = if stopped {
            self.last_log_time.or(self.since)
        } else {
            self.since.or(self.last_log_time)
        }?;
        Some(Resume { since_ns, skip: 0 })
    }

    /// True when this record came from Go (or was last written by it): no exact resume point.
    pub fn is_go_record(&self) -> bool {
        self.since_ns.is_none()
    }
}

/// Why the positions could not be loaded or committed.
#[derive(Debug, thiserror::Error)]
pub enum PositionsError {
    /// The file exists but could not be read (permissions, I/O error, not a file).
    #[error("cannot read positions file {}: {source}", path.display())]
    Read {
        /// The positions file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not valid JSON or not the positions layout. It is left untouched; the
    /// message says how to recover (from `container_positions.json.bak` when it is good).
    #[error(
        "positions file {} is corrupt at line {line}, column {column}: {source}; \
         the file is left untouched. {recovery}",
        path.display()
    )]
    Corrupt {
        /// The positions file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error (0 when at the start of a line, as serde_json reports).
        column: usize,
        /// The JSON error.
        source: serde_json::Error,
        /// What the operator can do, depending on the state of the backup.
        recovery: String,
    },
    /// Writing, syncing or renaming failed; the previous file is intact.
    #[error("cannot {op} {}: {source}", path.display())]
    Write {
        /// What was being done: "create directory", "write", "fsync", "rename", ...
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// The positions of every container, loaded from and committed to one directory.
#[derive(Debug)]
pub struct PositionStore {
    dir: PathBuf,
    /// Hashed, not ordered: the dispatcher advances a record per container per delivered
    /// batch, and the ordered map's string comparisons were most of its time with 1000
    /// containers. Ordered where it shows: the file and [`PositionStore::iter`].
    positions: FxHashMap<String, ContainerPosition>,
    dirty: bool,
    commits: u64,
    /// False with `positions.enabled: false`: nothing is read from or written to disk.
    persist: bool,
    /// Monitored files' records, by path; `file_positions.json` only once loaded.
    files: FileRecords,
    files_dirty: bool,
    files_loaded: bool,
}

impl PositionStore {
    /// Loads `dir/container_positions.json`. A missing file (or directory) is an empty store;
    /// an unreadable or corrupt file is an error and is left as it is.
    pub fn load(dir: &Path) -> Result<PositionStore, PositionsError> {
        let path = dir.join(CONTAINER_POSITIONS_FILE);
        let positions = match fs::read(&path) {
            Ok(data) => parse(&path, &data)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => FxHashMap::default(),
            Err(source) => return Err(PositionsError::Read { path, source }),
        };
        tracing::debug!(
            "loaded {} container positions from {}",
            positions.len(),
            path.display()
        );
        Ok(PositionStore {
            dir: dir.to_path_buf(),
            positions,
            dirty: false,
            commits: 0,
            persist: true,
            files: FileRecords::new(),
            files_dirty: false,
            files_loaded: false,
        })
    }

    /// A store that lives in memory only (`positions.enabled: false`): it is never loaded
    /// from a file and [`commit`](Self::commit) writes nothing, so every start reads each
    /// container as new.
    pub fn in_memory() -> PositionStore {
        PositionStore {
            dir: PathBuf::new(),
            positions: FxHashMap::default(),
            dirty: false,
            commits: 0,
            persist: false,
            files: FileRecords::new(),
            files_dirty: false,
            files_loaded: false,
        }
    }

    /// False for an [`in_memory`](Self::in_memory) store.
    pub fn persists(&self) -> bool {
        self.persist
    }

    /// The positions directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `dir/container_positions.json`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(CONTAINER_POSITIONS_FILE)
    }

    /// The record of a container (short or full id).
    pub fn get(&self, container_id: &str) -> Option<&ContainerPosition> {
        self.positions.get(short_id(container_id))
    }

    /// Where to resume a container (short or full id); `None`: never seen or nothing recorded.
    pub fn resume(&self, container_id: &str) -> Option<Resume> {
        self.get(container_id).and_then(ContainerPosition::resume)
    }

    /// Every record, keyed by short id, in key order (for `/positions`).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ContainerPosition)> {
        let mut all: Vec<(&str, &ContainerPosition)> = self
            .positions
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        all.sort_unstable_by_key(|&(k, _)| k);
        all.into_iter()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// True when there is no record.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Applies `f` to a container's record, creating an empty `active` one if there is none.
    /// The store becomes dirty only if the record changed (or was created).
    pub fn update<R>(
        &mut self,
        container_id: &str,
        f: impl FnOnce(&mut ContainerPosition) -> R,
    ) -> R {
        let key = short_id(container_id);
        match self.positions.get_mut(key) {
            Some(pos) => {
                let before = pos.clone();
                let r = f(pos);
                if *pos != before {
                    self.dirty = true;
                }
                r
            }
            None => {
                let mut pos = ContainerPosition::new(key);
                let r = f(&mut pos);
                self.positions.insert(key.to_owned(), pos);
                self.dirty = true;
                r
            }
        }
    }

    /// Records lines delivered (acknowledged by every sink): the new resume point, the counts
    /// delivered since the last call, and the Docker time of the newest delivered line.
    ///
    /// Call it only with acknowledged lines: the committed position must never run ahead of
    /// delivery. A call that delivers nothing and does not move the resume point changes nothing.
    pub fn advance(
        &mut self,
        container_id: &str,
        name: &str,
        resume: Resume,
        delivered_lines: u64,
        delivered_bytes: u64,
        last_log_time_ns: i64,
    ) {
        let name = name.trim_start_matches('/');
        let key = short_id(container_id);
        let delivered = (delivered_lines, delivered_bytes);
        // Called per container per delivered batch: one lookup when the record exists (the
        // common case), updated in place with no copy to compare against.
        if let Some(p) = self.positions.get_mut(key) {
            self.dirty |= p.advance(name, resume, delivered, last_log_time_ns);
            return;
        }
        let mut p = ContainerPosition::new(key);
        p.advance(name, resume, delivered, last_log_time_ns);
        self.positions.insert(key.to_owned(), p);
        self.dirty = true;
    }

    /// Sets a container's status (see the `STATUS_*` constants); `restarted` bumps
    /// `restart_count` as in Go. Creates the record if needed (without a resume point).
    pub fn set_status(&mut self, container_id: &str, status: &str) {
        self.update(container_id, |p| {
            if status == STATUS_RESTARTED {
                p.restart_count = p.restart_count.saturating_add(1);
            }
            if p.status != status {
                p.status = status.to_owned();
            }
        });
    }

    /// The container was removed and every line it logged is delivered: its record is marked
    /// `removed` (Go's status) and stamped, for [`prune_removed`](Self::prune_removed). No
    /// record is created for a container that had none.
    pub fn mark_removed(&mut self, container_id: &str) {
        if let Some(p) = self.positions.get_mut(short_id(container_id)) {
            if p.status != STATUS_REMOVED {
                p.status = STATUS_REMOVED.to_owned();
                p.last_read = Some(now_ns());
                self.dirty = true;
            }
        }
    }

    /// At start: marks removed (as [`mark_removed`](Self::mark_removed)) the records of
    /// containers that are not among `existing` (short or full ids of every container, stopped
    /// ones included): they were removed while the capturer was down. Returns how many.
    pub fn mark_missing_removed<'a>(
        &mut self,
        existing: impl IntoIterator<Item = &'a str>,
    ) -> usize {
        let existing: std::collections::HashSet<&str> =
            existing.into_iter().map(short_id).collect();
        let now = now_ns();
        let mut marked = 0;
        for (key, p) in self.positions.iter_mut() {
            if !existing.contains(key.as_str()) && p.status != STATUS_REMOVED {
                p.status = STATUS_REMOVED.to_owned();
                p.last_read = Some(now);
                marked += 1;
            }
        }
        if marked > 0 {
            self.dirty = true;
        }
        marked
    }

    /// Drops the records marked `removed` more than `max_age` ago (by their `last_read`);
    /// returns how many. Records of containers that exist are never pruned, however old: a
    /// quiet container would otherwise be read again from its first line.
    pub fn prune_removed(&mut self, max_age: Duration) -> usize {
        let max_age = i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX);
        let cutoff = now_ns().saturating_sub(max_age);
        let before = self.positions.len();
        self.positions
            .retain(|_, p| p.status != STATUS_REMOVED || p.last_read.is_some_and(|t| t > cutoff));
        let pruned = before - self.positions.len();
        if pruned > 0 {
            self.dirty = true;
        }
        pruned
    }

    /// Drops the file records marked gone more than `max_age` ago whose path still does not
    /// exist; returns how many. A record whose path exists is kept, however old (a file not
    /// monitored now but present is read from its record when it is again).
    pub fn prune_gone_files(&mut self, max_age: Duration) -> usize {
        let max_age = i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX);
        let cutoff = now_ns().saturating_sub(max_age);
        let before = self.files.len();
        self.files.retain(|path, r| match r.gone_since {
            Some(t) if t <= cutoff => fs::symlink_metadata(path).is_ok(),
            _ => true,
        });
        let pruned = before - self.files.len();
        if pruned > 0 {
            self.files_dirty = true;
        }
        pruned
    }

    /// Removes a container's record.
    pub fn remove(&mut self, container_id: &str) -> Option<ContainerPosition> {
        let removed = self.positions.remove(short_id(container_id));
        if removed.is_some() {
            self.dirty = true;
        }
        removed
    }

    /// True when something changed since the last load or commit.
    pub fn dirty(&self) -> bool {
        self.dirty || self.files_dirty
    }

    /// Loads `dir/file_positions.json` (file monitoring is on): a missing file is no record,
    /// a corrupt one an error naming it. From now on commits write it too.
    pub fn load_files(&mut self) -> Result<(), PositionsError> {
        self.files_loaded = true;
        if !self.persist {
            return Ok(());
        }
        let path = self.dir.join(FILE_POSITIONS_FILE);
        self.files = match fs::read(&path) {
            Ok(data) => files_parse(&data).map_err(|source| PositionsError::Corrupt {
                path: path.clone(),
                line: source.line(),
                column: source.column(),
                source,
                recovery: format!(
                    "To start over, move {} away: every monitored file is then read from its \
                     first line.",
                    path.display()
                ),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => FileRecords::new(),
            Err(source) => return Err(PositionsError::Read { path, source }),
        };
        Ok(())
    }

    /// A monitored file's record.
    pub fn file(&self, path: &str) -> Option<&FilePosition> {
        self.files.get(path)
    }

    /// Every monitored file's record, by path.
    pub fn files(&self) -> &FileRecords {
        &self.files
    }

    /// Records a file's lines delivered (acknowledged by every sink) and where it now stands;
    /// or, for a path gone, marks its record for [`prune_gone_files`](Self::prune_gone_files)
    /// (no record is created for it).
    pub fn advance_file(&mut self, c: &FileCheckpoint) {
        if c.gone {
            if let Some(r) = self.files.get_mut(&*c.path) {
                if r.gone_since.is_none() {
                    r.gone_since = Some(now_ns());
                    self.files_dirty = true;
                }
            }
            return;
        }
        let r = self.files.entry(c.path.to_string()).or_default();
        if r.gone_since.take().is_some() {
            self.files_dirty = true;
        }
        let before = (r.offset, r.identity(), r.size, r.rotated);
        r.file_path = c.path.to_string();
        r.offset = c.offset;
        r.size = c.size;
        r.device = c.identity.device;
        r.inode = c.identity.inode;
        r.fingerprint = Some(c.identity.fingerprint);
        r.fingerprint_len = c.identity.fingerprint_len;
        r.rotated =
            c.rotated.map(
                |(identity, offset)| crate::state::file_positions::RotatedPosition {
                    identity,
                    offset,
                },
            );
        if c.modified_ns != 0 {
            r.last_modified = Some(c.modified_ns);
        }
        r.log_count = r.log_count.saturating_add(to_i64(c.lines));
        r.bytes_read = r.bytes_read.saturating_add(to_i64(c.bytes));
        if c.lines > 0 || before != (r.offset, r.identity(), r.size, r.rotated) {
            r.last_read = Some(now_ns());
            self.files_dirty = true;
        }
    }

    /// Number of times [`commit`](Self::commit) actually wrote the file.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Writes the positions if anything changed: `.tmp`, fsync, rename, fsync of the directory
    /// (created if missing). On error the previous file is intact and the store stays dirty.
    pub fn commit(&mut self) -> Result<(), PositionsError> {
        if !self.persist {
            self.dirty = false;
            self.files_dirty = false;
            return Ok(());
        }
        if self.files_dirty && self.files_loaded {
            let data = serde_json::to_vec_pretty(&self.files)
                .expect("file positions always serialize: string keys, plain fields");
            write_atomic(&self.dir, FILE_POSITIONS_FILE, &data)?;
            self.files_dirty = false;
            if !self.dirty {
                self.commits += 1;
                return Ok(());
            }
        }
        if !self.dirty {
            return Ok(());
        }
        let ordered: BTreeMap<&str, &ContainerPosition> = self
            .positions
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        let data = serde_json::to_vec_pretty(&ordered)
            .expect("positions always serialize: string keys, plain fields");
        write_atomic(&self.dir, CONTAINER_POSITIONS_FILE, &data)?;
        self.dirty = false;
        self.commits += 1;
        tracing::debug!(
            "committed {} container positions to {}",
            self.positions.len(),
            self.path().display()
        );
        Ok(())
    }
}

/// Go's short id: the first 12 characters of a full (64 hex digit) id; anything else as is.
fn short_id(id: &str) -> &str {
    if id.len() > SHORT_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        &id[..SHORT_ID_LEN]
    } else {
        id
    }
}

/// The records of a positions file's content.
pub fn parse_records(
    data: &[u8],
) -> Result<FxHashMap<String, ContainerPosition>, serde_json::Error> {
    // Go writes `null` for a nil map; read it as empty.
    let raw: Option<BTreeMap<String, ContainerPosition>> = serde_json::from_slice(data)?;
    let mut positions = FxHashMap::default();
    for (key, mut pos) in raw.unwrap_or_default() {
        let short = short_id(&key).to_owned();
        if pos.container_id.is_empty() {
            pos.container_id = short.clone();
        }
        positions.insert(short, pos);
    }
    Ok(positions)
}

fn parse(path: &Path, data: &[u8]) -> Result<FxHashMap<String, ContainerPosition>, PositionsError> {
    parse_records(data).map_err(|source| PositionsError::Corrupt {
        path: path.to_path_buf(),
        line: source.line(),
        column: source.column(),
        source,
        recovery: recovery_hint(path),
    })
}

/// How to get going again when `path` is corrupt: from the backup when it parses, else from
/// scratch.
fn recovery_hint(path: &Path) -> String {
    let bak = path.with_file_name(CONTAINER_POSITIONS_BAK);
    let from_scratch = format!(
        "To start over, move {} away: every container is then read from its first line \
         (container_monitor.new_containers_from decides for running ones).",
        path.display()
    );
    match fs::read(&bak) {
        Ok(data) => match parse_records(&data) {
            Ok(records) => format!(
                "The previous commit is intact in {bak} ({n} containers): `mv {bak} {path}` \
                 resumes from it (lines delivered after that commit come again; none is lost).",
                bak = bak.display(),
                n = records.len(),
                path = path.display()
            ),
            Err(e) => format!(
                "The backup {} is corrupt too ({e}). {from_scratch}",
                bak.display()
            ),
        },
        Err(_) => format!("There is no backup {}. {from_scratch}", bak.display()),
    }
}

/// Writes `dir/name` through `name.tmp`, keeping the file replaced as `name.bak`.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<(), PositionsError> {
    let err = |op: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| PositionsError::Write { op, path, source }
    };
    fs::create_dir_all(dir).map_err(err("create directory", dir))?;
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(err("create", &tmp))?;
        f.write_all(data).map_err(err("write", &tmp))?;
        f.sync_all().map_err(err("fsync", &tmp))?;
        drop(f);
        keep_backup(&dir.join(format!("{name}.bak")), &target);
        fs::rename(&tmp, &target).map_err(err("rename into place", &target))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync directory", dir))
}

/// Makes `.bak` the file about to be replaced: a hard link, so the previous commit survives
/// the rename without a copy. Best effort: a commit does not fail for want of a backup.
fn keep_backup(bak: &Path, target: &Path) {
    match fs::remove_file(bak) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!("cannot replace {}: {e}", bak.display());
            return;
        }
    }
    match fs::hard_link(target, bak) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot keep {} as {}: {e}", target.display(), bak.display()),
    }
}

fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Go `time.Time` in JSON: an RFC 3339 string; the zero time (year 1) is `None`.
pub(crate) mod go_time {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    use crate::decode::timestamp::{format_rfc3339_nanos, parse_rfc3339_nanos};

    /// What Go's `time.Time{}` marshals to.
    pub const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

    pub fn serialize<S: Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(ns) => s.serialize_str(&format_rfc3339_nanos(*ns)),
            None => s.serialize_str(GO_ZERO_TIME),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        d.deserialize_option(OptionVisitor)
    }

    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<i64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 time or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Option<i64>, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Option<i64>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<i64>, D::Error> {
            // Parsed inside the string visitor so that serde_json reports the error at the
            // string's own line and column.
            d.deserialize_str(TimeVisitor)
        }
    }

    struct TimeVisitor;

    impl Visitor<'_> for TimeVisitor {
        type Value = Option<i64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 time")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Option<i64>, E> {
            // Go's zero time, in any offset Go may have written it with.
            if s.starts_with("0001-01-01T") || s.starts_with("0000-12-31T") {
                return Ok(None);
            }
            parse_rfc3339_nanos(s.as_bytes())
                .map(Some)
                .map_err(|e| E::custom(format!("time {s:?}: {e}")))
        }
    }
}
