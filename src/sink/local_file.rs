//! `sinks.local_file`: JSON lines or text appended to files named by the Go patterns.
//!
//! File names (relative to `directory`):
//! - The pattern is `filename_pattern_containers` for container entries (`source_type` `docker`
//!   or `container`), `filename_pattern_files` for `file` entries, else `filename_pattern`.
//!   (The Go version compared against `container` only, while its entries said `docker`, so its
//!   container pattern and container placeholders never applied; here they do.)
//! - Placeholders: `{date}` (`2006-01-02`, i.e. YYYY-MM-DD) and `{hour}` (HH) of the entry's
//!   **log timestamp in UTC** (the Go version used its capture time, local zone);
//!   `{nomedocontainer}` (label `container_name`, without a leading `/`); `{idcontainer}` (label
//!   `container_id`, else the source id, cut to 12 characters); `{nomedoarquivomonitorado}`
//!   (base name of label `file_path`, else of `file_name`, without its extension); and ours,
//!   `{source_type}` and `{name}` (the name part of the default). Values are sanitized: each of
//!   `/ \ : * ? " < > |` and space becomes `_`. A placeholder without a value becomes
//!   `unknown-container`, `unknown-id`, `unknown-file` (as in Go) or `unknown`.
//! - With no pattern: the Go default `{date}_{source_type}_{name}.log`, where `{name}` is the
//!   container name or the monitored file's base name, and is left out (with its `_`) when there
//!   is neither.
//!
//! Files are opened in append mode (created `file_permissions`, directories `dir_permissions`),
//! and at most `max_open_files` handles stay open (least recently used is synced and closed;
//! handles idle for `idle_close` are closed at [`Sink::flush`]). `write_batch` writes;
//! `flush` fsyncs every file written since the last flush and the directories where files were
//! created. A write that fails part way is cut back (`ftruncate`) so that no torn line stays
//! before the retry.
//!
//! Faults (RELIABILITY.md):
//! - **The path changes under an open handle** (the directory deleted, logrotate renamed the
//!   file): before each write and each fsync the path's dev/inode is compared with the
//!   handle's. A renamed file keeps what was written to it (synced, then closed); a deleted one
//!   took the lines written since its last good fsync with it, so those are written again into
//!   the recreated directory and file. Each handle keeps the bytes written since its last good
//!   fsync for this (at most [`UNSYNCED_MAX`] for all handles: past that they are fsynced
//!   early).
//! - **fsync fails**: Linux reports the error once and marks the pages clean, so what was
//!   written since the last good fsync may never reach the disk. The file is cut back to its
//!   last synced length, those bytes are written again, and `flush` fails: positions are not
//!   committed until a later fsync of the rewritten bytes succeeds.
//! - **A path that cannot be written** (EACCES, EPERM, EISDIR, ENOTDIR, ENAMETOOLONG, ELOOP,
//!   EROFS): the other files of the batch are written; the batch fails (retryable) and its
//!   retry writes only the files that did not land. After [`PATH_ATTEMPTS`] failed attempts in
//!   a row, the path's lines are given up: [`SinkError::PartlyDropped`] with reason
//!   `unwritable_path` (`lines_dropped_total{reason="local_file_unwritable_path"}`). Later
//!   batches try such a path once each, and it recovers on the first success. Other errors
//!   (ENOSPC, EIO, ...) are retried without bound: the batch is held and reading pauses.
//!
//! A retry is recognised as the same entries again (same slice, as the dispatcher passes it,
//! and same first and last entries: `batch_key`); any other batch starts afresh.
//!
//! This sink never deletes, renames or compresses anything (the Go version's hourly rotation
//! deleted every `*.log*` file of the directory because its limits were never read).

use std::collections::{HashMap, HashSet};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::{json_line, TextFormatOptions, TextFormatter};
use super::{Sink, SinkError};
use crate::decode::timestamp::civil;
use crate::pipeline::entry::LogEntry;

const SINK: &str = "local_file";

/// Bytes all handles keep for rewriting since their last good fsync; past this every file
/// written is fsynced early, so that this memory stays bounded whatever the commit interval.
pub const UNSYNCED_MAX: usize = 32 << 20;

/// Failed attempts in a row after which a path's lines are given up (see the module docs).
pub const PATH_ATTEMPTS: u32 = 3;

/// The `reason` of lines given up on an unwritable path.
pub const UNWRITABLE_PATH: &str = "unwritable_path";

/// The file operations that can fail in ways a test cannot provoke on demand (a failing fsync
/// needs a failing disk): a seam for fault injection. [`RealFileOps`] is what runs.
pub trait FileOps: Send {
    fn write_all(&mut self, path: &Path, file: &mut File, buf: &[u8]) -> std::io::Result<()>;
    fn sync_data(&mut self, path: &Path, file: &File) -> std::io::Result<()>;
}

/// The system calls themselves.
pub struct RealFileOps;

impl FileOps for RealFileOps {
    fn write_all(&mut self, _: &Path, file: &mut File, buf: &[u8]) -> std::io::Result<()> {
        file.write_all(buf)
    }
    fn sync_data(&mut self, _: &Path, file: &File) -> std::io::Result<()> {
        file.sync_data()
    }
}

/// Whether an error belongs to the path (retrying will not help until the operator acts), as
/// opposed to the disk or the system (full, I/O error), which can clear by itself.
fn is_path_error(e: &SinkError) -> bool {
    let SinkError::Io { source, .. } = e else {
        return false;
    };
    matches!(
        source.raw_os_error(),
        Some(
            libc::EACCES
                | libc::EPERM
                | libc::EISDIR
                | libc::ENOTDIR
                | libc::ENAMETOOLONG
                | libc::ELOOP
                | libc::EROFS
        )
    )
}

/// `sinks.local_file.output_format` (the config holds this type too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per line, keys sorted ([`super::format::json_line`]).
    #[default]
    Json,
    /// `text_format` lines ([`super::format::TextFormatter`]).
    Text,
}

impl OutputFormat {
    /// The Go rule: `text` (any case) is text, anything else JSON.
    pub fn from_go(s: &str) -> OutputFormat {
        if s.trim().eq_ignore_ascii_case("text") {
            OutputFormat::Text
        } else {
            OutputFormat::Json
        }
    }
}

/// Options of the file sink, named after the Go keys (`sinks.local_file.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFileOptions {
    pub directory: PathBuf,
    /// Fallback pattern; empty means the Go default `{date}_{source_type}_{name}.log`.
    pub filename_pattern: String,
    /// Pattern for container entries; empty means `filename_pattern`.
    pub filename_pattern_containers: String,
    /// Pattern for monitored-file entries; empty means `filename_pattern`.
    pub filename_pattern_files: String,
    pub output_format: OutputFormat,
    pub text_format: TextFormatOptions,
    /// Open handles kept at most (Go: `max_open_files`, default 100).
    pub max_open_files: usize,
    /// Mode of created files (Go: `file_permissions` "0644").
    pub file_permissions: u32,
    /// Mode of created directories (Go: `dir_permissions` "0755").
    pub dir_permissions: u32,
    /// Ours: a handle unused this long is closed at the next flush.
    pub idle_close: Duration,
}

impl Default for LocalFileOptions {
    fn default() -> Self {
        LocalFileOptions {
            directory: PathBuf::from("/tmp/logs/output"),
            filename_pattern: String::new(),
            filename_pattern_containers: String::new(),
            filename_pattern_files: String::new(),
            output_format: OutputFormat::Json,
            text_format: TextFormatOptions::default(),
            max_open_files: 100,
            file_permissions: 0o644,
            dir_permissions: 0o755,
            idle_close: Duration::from_secs(300),
        }
    }
}

/// Each of `/ \ : * ? " < > |` and space becomes `_` (the Go `sanitizeFilename`).
pub fn sanitize_filename(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' => '_',
            c => c,
        })
        .collect()
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Go's `strings.TrimSuffix(b, filepath.Ext(b))`: drops from the last `.` on.
fn strip_ext(name: &str) -> &str {
    match name.rfind('.') {
        Some(i) => &name[..i],
        None => name,
    }
}

fn is_container(source_type: &str) -> bool {
    source_type == "docker" || source_type == "container"
}

impl LocalFileOptions {
    /// The options with `directory` set and the rest default.
    pub fn new(directory: impl Into<PathBuf>) -> Self {
        LocalFileOptions {
            directory: directory.into(),
            ..Default::default()
        }
    }

    fn pattern_for(&self, source_type: &str) -> &str {
        if is_container(source_type) && !self.filename_pattern_containers.is_empty() {
            &self.filename_pattern_containers
        } else if source_type == "file" && !self.filename_pattern_files.is_empty() {
            &self.filename_pattern_files
        } else {
            &self.filename_pattern
        }
    }

    /// The file name (relative to `directory`) an entry goes to.
    pub fn file_name(&self, e: &LogEntry) -> String {
        let c = civil(e.timestamp_ns);
        let date = format!("{:04}-{:02}-{:02}", c.year, c.month, c.day);
        let legacy_name = if let Some(n) = e.label("container_name") {
            Some(sanitize_filename(n.trim_start_matches('/')))
        } else {
            e.label("filepath")
                .or_else(|| e.label("file_path"))
                .map(|p| sanitize_filename(base_name(p)))
        };
        let pattern = self.pattern_for(e.source_type);
        if pattern.is_empty() {
            let mut parts = vec![date];
            if !e.source_type.is_empty() {
                parts.push(e.source_type.to_string());
            }
            if let Some(n) = legacy_name {
                parts.push(n);
            }
            return parts.join("_") + ".log";
        }
        let mut out = pattern.to_string();
        let mut sub = |key: &str, val: &dyn Fn() -> String| {
            if out.contains(key) {
                out = out.replace(key, &val());
            }
        };
        sub("{date}", &|| date.clone());
        sub("{hour}", &|| format!("{:02}", c.hour));
        sub("{source_type}", &|| sanitize_filename(e.source_type));
        sub("{name}", &|| {
            legacy_name.clone().unwrap_or_else(|| "unknown".to_string())
        });
        sub("{nomedocontainer}", &|| match e.label("container_name") {
            Some(n) => sanitize_filename(n.trim_start_matches('/')),
            None => "unknown-container".to_string(),
        });
        sub("{idcontainer}", &|| {
            let id = match e.label("container_id") {
                Some(id) => id,
                None if is_container(e.source_type) && !e.source_id.is_empty() => &e.source_id,
                None => return "unknown-id".to_string(),
            };
            sanitize_filename(&id.chars().take(12).collect::<String>())
        });
        sub("{nomedoarquivomonitorado}", &|| match e
            .label("file_path")
            .or_else(|| e.label("filepath"))
        {
            Some(p) => sanitize_filename(strip_ext(base_name(p))),
            None => match e.label("file_name") {
                Some(n) => sanitize_filename(strip_ext(n)),
                None => "unknown-file".to_string(),
            },
        });
        out
    }
}

struct Handle {
    file: File,
    /// Identity of the file opened, to notice the path now names another one (or none).
    dev: u64,
    ino: u64,
    size: u64,
    /// Length at the last good fsync (or at open).
    synced: u64,
    /// What was written since the last good fsync, to write again if it did not land.
    unsynced: Vec<u8>,
    tick: u64,
    used_at: Instant,
    dirty: bool,
}

/// Which batch a retry belongs to, and the files of it that landed already.
struct Progress {
    key: u64,
    written: HashSet<PathBuf>,
    /// Lines given up and their paths, reported when the batch is done.
    dropped: usize,
    dropped_paths: Vec<String>,
}

/// The labels [`LocalFileOptions::file_name`] reads: a pipeline that writes one of them makes
/// the entry's name its own.
const NAMING_LABELS: [&str; 5] = [
    "container_name",
    "container_id",
    "file_path",
    "filepath",
    "file_name",
];

/// Remembers the file of the previous entry within one batch: entries of one container in one
/// hour share their name, unless a pipeline wrote one of the labels names are made of.

#[derive(Clone, Copy, PartialEq, Eq)]
struct NameKey {
    labels: usize,
    source_id: usize,
    source_type: &'static str,
    hour: i64,
}

/// The file sink. See the module documentation for names, handles and durability.
pub struct LocalFileSink {
    opts: LocalFileOptions,
    text: TextFormatter,
    files: HashMap<PathBuf, Handle>,
    dirs_to_sync: HashSet<PathBuf>,
    tick: u64,
    groups: Vec<(PathBuf, Vec<u8>, usize)>,
    entries_written: u64,
    bytes_written: u64,
    ops: Box<dyn FileOps>,
    /// Bytes lost with a deleted file, to write first into the next file opened at the path.
    carry: HashMap<PathBuf, Vec<u8>>,
    progress: Option<Progress>,
    /// Consecutive failed attempts per path with a path error.
    path_failures: HashMap<PathBuf, u32>,
    /// Paths given up on: one attempt per batch until one succeeds.
    given_up: HashSet<PathBuf>,
    fsync_errors: u64,
    reopened: u64,
}

impl LocalFileSink {
    /// Creates `directory` if needed. Nothing else is touched until the first batch.
    pub fn new(opts: LocalFileOptions) -> Result<Self, SinkError> {
        Self::with_file_ops(opts, Box::new(RealFileOps))
    }

    /// [`LocalFileSink::new`] with the writes and fsyncs going through `ops` (fault injection).
    pub fn with_file_ops(opts: LocalFileOptions, ops: Box<dyn FileOps>) -> Result<Self, SinkError> {
        if opts.directory.as_os_str().is_empty() {
            return Err(SinkError::Config {
                sink: SINK,
                reason: "directory is empty".into(),
            });
        }
        make_dirs(&opts.directory, opts.dir_permissions)?;
        Ok(LocalFileSink {
            text: TextFormatter::new(opts.text_format.clone()),
            opts,
            files: HashMap::new(),
            dirs_to_sync: HashSet::new(),
            tick: 0,
            groups: Vec::new(),
            entries_written: 0,
            bytes_written: 0,
            ops,
            carry: HashMap::new(),
            progress: None,
            path_failures: HashMap::new(),
            given_up: HashSet::new(),
            fsync_errors: 0,
            reopened: 0,
        })
    }

    /// fsyncs that failed (their bytes were written again).
    pub fn fsync_errors(&self) -> u64 {
        self.fsync_errors
    }

    /// Handles replaced because their path named another file, or none, when next used.
    pub fn reopened(&self) -> u64 {
        self.reopened
    }

    pub fn options(&self) -> &LocalFileOptions {
        &self.opts
    }

    /// The full path an entry goes to.
    pub fn path_for(&self, e: &LogEntry) -> PathBuf {
        self.opts.directory.join(self.opts.file_name(e))
    }

    /// Handles open now.
    pub fn open_files(&self) -> usize {
        self.files.len()
    }

    /// Entries and bytes written since creation (counting retried batches again).
    pub fn written(&self) -> (u64, u64) {
        (self.entries_written, self.bytes_written)
    }

    fn format(&self, out: &mut Vec<u8>, e: &LogEntry) {
        match self.opts.output_format {
            OutputFormat::Json => json_line(out, e),
            OutputFormat::Text => self.text.line(out, e),
        }
    }

    /// If `path` no longer names the file its handle has open, drops the handle; the bytes
    /// that went with a deleted file since its last good fsync go to `carry`, to be written
    /// first into the file opened next at `path`.
    fn check_identity(&mut self, path: &Path) {
        let Some(h) = self.files.get(path) else {
            return;
        };
        let same = match std::fs::metadata(path) {
            Ok(m) => m.dev() == h.dev && m.ino() == h.ino,
            Err(_) => false,
        };
        if same {
            return;
        }
        let mut h = self.files.remove(path).expect("looked up above");
        self.reopened += 1;
        let deleted = h.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true);
        if deleted {
            tracing::warn!(
                "{}: deleted while open; recreating it and writing again the {} bytes since its last fsync",
                path.display(),
                h.unsynced.len()
            );
            self.carry
                .insert(path.to_path_buf(), std::mem::take(&mut h.unsynced));
            return;
        }
        // Renamed (rotated): what it holds stays there; make it durable before letting go.
        tracing::info!("{}: renamed while open; opening a new file", path.display());
        if h.dirty {
            if let Err(e) = self.ops.sync_data(path, &h.file) {
                tracing::warn!(
                    "{}: fsync of the renamed file failed ({e}); writing its last {} bytes again into the new one",
                    path.display(),
                    h.unsynced.len()
                );
                self.fsync_errors += 1;
                self.carry
                    .insert(path.to_path_buf(), std::mem::take(&mut h.unsynced));
            }
        }
    }

    fn handle(&mut self, path: &Path) -> Result<&mut Handle, SinkError> {
        self.tick += 1;
        let tick = self.tick;
        self.check_identity(path);
        if !self.files.contains_key(path) {
            if self.files.len() >= self.opts.max_open_files.max(1) {
                self.evict_lru()?;
            }
            let parent = path.parent().unwrap_or(Path::new("."));
            make_dirs(parent, self.opts.dir_permissions)?;
            let existed = path.exists();
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(self.opts.file_permissions)
                .open(path)
                .map_err(|source| io_err("open", path, source))?;
            let meta = file
                .metadata()
                .map_err(|source| io_err("stat", path, source))?;
            if !existed {
                self.dirs_to_sync.insert(parent.to_path_buf());
            }
            self.files.insert(
                path.to_path_buf(),
                Handle {
                    file,
                    dev: meta.dev(),
                    ino: meta.ino(),
                    size: meta.len(),
                    synced: meta.len(),
                    unsynced: Vec::new(),
                    tick,
                    used_at: Instant::now(),
                    dirty: false,
                },
            );
        }
        if let Some(carried) = self.carry.remove(path) {
            if let Err(e) = self.append(path, &carried) {
                // Kept for the next attempt: they go first, before newer lines.
                self.carry.insert(path.to_path_buf(), carried);
                return Err(e);
            }
        }
        let h = self.files.get_mut(path).expect("inserted above");
        h.tick = tick;
        h.used_at = Instant::now();
        Ok(h)
    }

    fn evict_lru(&mut self) -> Result<(), SinkError> {
        let Some(path) = self
            .files
            .iter()
            .min_by_key(|(_, h)| h.tick)
            .map(|(p, _)| p.clone())
        else {
            return Ok(());
        };
        if self.files[&path].dirty {
            self.sync_file(&path)?;
        }
        self.files.remove(&path);
        Ok(())
    }

    /// fsyncs one open file, checking first that its path still names it. On an fsync error
    /// the bytes since the last good fsync are written again and the error returned.
    fn sync_file(&mut self, path: &Path) -> Result<(), SinkError> {
        self.check_identity(path);
        if self.carry.contains_key(path) {
            // Deleted: reopen (recreating the directory), which writes them again.
            self.handle(path)?;
        }
        let Some(h) = self.files.get_mut(path) else {
            return Ok(());
        };
        if !h.dirty {
            return Ok(());
        }
        match self.ops.sync_data(path, &h.file) {
            Ok(()) => {
                h.synced = h.size;
                h.unsynced.clear();
                h.dirty = false;
                Ok(())
            }
            Err(source) => {
                self.fsync_errors += 1;
                let again = std::mem::take(&mut h.unsynced);
                tracing::warn!(
                    "{}: fsync failed ({source}); writing again the {} bytes since the last good fsync",
                    path.display(),
                    again.len()
                );
                let _ = h.file.set_len(h.synced);
                h.size = h.synced;
                if let Err(e) = self.append(path, &again) {
                    tracing::warn!("{e}");
                }
                Err(io_err("fsync", path, source))
            }
        }
    }

    /// Appends to the open handle of `path`, keeping the bytes for a rewrite until fsynced.
    /// A torn write is cut back so that a retry appends whole lines only.
    fn append(&mut self, path: &Path, buf: &[u8]) -> Result<(), SinkError> {
        let h = self.files.get_mut(path).expect("caller opened it");
        match self.ops.write_all(path, &mut h.file, buf) {
            Ok(()) => {
                h.size += buf.len() as u64;
                h.unsynced.extend_from_slice(buf);
                h.dirty = true;
                self.bytes_written += buf.len() as u64;
                Ok(())
            }
            Err(source) => {
                let _ = h.file.set_len(h.size);
                Err(io_err("write", path, source))
            }
        }
    }
}

fn io_err(op: &'static str, path: &Path, source: std::io::Error) -> SinkError {
    SinkError::Io {
        sink: SINK,
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn make_dirs(dir: &Path, mode: u32) -> Result<(), SinkError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| io_err("create directory", dir, source))
}

impl Sink for LocalFileSink {
    fn name(&self) -> &'static str {
        SINK
    }

    fn write_batch(&mut self, entries: &[LogEntry]) -> Result<(), SinkError> {
        if entries.is_empty() {
            return Ok(());
        }
        // Group by file, keeping each file's lines in batch order.
        let mut groups = std::mem::take(&mut self.groups);
        groups.clear();
        let mut index: HashMap<PathBuf, usize> = HashMap::new();
        let mut memo: Option<(NameKey, usize)> = None;
        for e in entries {
            let key = NameKey {
                labels: Arc::as_ptr(&e.labels) as usize,
                source_id: Arc::as_ptr(&e.source_id) as *const u8 as usize,
                source_type: e.source_type,
                hour: e.timestamp_ns.div_euclid(3_600_000_000_000),
            };
            let named_by_fields = e.fields.keys().any(|k| NAMING_LABELS.contains(&k));
            let gi = match memo {
                Some((k, gi)) if k == key && !named_by_fields => gi,
                _ => {
                    let path = self.path_for(e);
                    let gi = *index.entry(path.clone()).or_insert_with(|| {
                        groups.push((path, Vec::new(), 0));
                        groups.len() - 1
                    });
                    memo = (!named_by_fields).then_some((key, gi));
                    gi
                }
            };
            let group = &mut groups[gi];
            group.2 += 1;
            self.format(&mut group.1, e);
        }
        // A retry of the same entries skips the files that landed on an earlier attempt.
        let key = super::batch_key(entries);
        let mut progress = match self.progress.take() {
            Some(p) if p.key == key => p,
            _ => Progress {
                key,
                written: HashSet::new(),
                dropped: 0,
                dropped_paths: Vec::new(),
            },
        };
        let mut first_err = None;
        for (path, buf, lines) in &groups {
            if progress.written.contains(path) {
                continue;
            }
            match self.write_file(path, buf) {
                Ok(()) => {
                    progress.written.insert(path.clone());
                    self.path_failures.remove(path);
                    if self.given_up.remove(path) {
                        tracing::info!("{}: writable again", path.display());
                    }
                }
                Err(err) if is_path_error(&err) => {
                    let n = self.path_failures.entry(path.clone()).or_default();
                    *n += 1;
                    if *n >= PATH_ATTEMPTS || self.given_up.contains(path) {
                        if self.given_up.insert(path.clone()) {
                            tracing::error!(
                                "{err}: failed {n} times in a row; giving up its lines (reason {UNWRITABLE_PATH}) until it can be written again"
                            );
                        }
                        progress.written.insert(path.clone());
                        progress.dropped += lines;
                        progress.dropped_paths.push(path.display().to_string());
                    } else if first_err.is_none() {
                        first_err = Some(err);
                    }
                }
                Err(err) => {
                    if first_err.is_none() {
                        first_err = Some(err);
                    }
                }
            }
        }
        // Keep the group buffers' allocations for the next batch unless they grew large.
        groups.retain(|(_, b, _)| b.capacity() <= 1 << 20);
        for g in groups.iter_mut() {
            g.1.clear();
            g.2 = 0;
        }
        groups.clear();
        self.groups = groups;
        if let Some(err) = first_err {
            self.progress = Some(progress);
            return Err(err);
        }
        self.entries_written += (entries.len() - progress.dropped) as u64;
        if progress.dropped > 0 {
            return Err(SinkError::PartlyDropped {
                sink: SINK,
                lines: progress.dropped,
                reason: UNWRITABLE_PATH,
                detail: progress.dropped_paths.join(", "),
            });
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        let mut paths: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|(_, h)| h.dirty)
            .map(|(p, _)| p.clone())
            .collect();
        paths.extend(self.carry.keys().cloned());
        let mut first_err = None;
        for path in paths {
            if let Err(e) = self.sync_file(&path) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        for dir in std::mem::take(&mut self.dirs_to_sync) {
            let res = File::open(&dir).and_then(|d| d.sync_all());
            if let Err(source) = res {
                self.dirs_to_sync.insert(dir.clone());
                return Err(io_err("fsync directory", &dir, source));
            }
        }
        let idle = self.opts.idle_close;
        self.files.retain(|_, h| h.used_at.elapsed() < idle);
        Ok(())
    }
}

impl LocalFileSink {
    fn write_file(&mut self, path: &Path, buf: &[u8]) -> Result<(), SinkError> {
        self.handle(path)?;
        // The handle stays (with its unsynced earlier writes) for the retry and the flush.
        self.append(path, buf)?;
        let unsynced: usize = self.files.values().map(|h| h.unsynced.len()).sum();
        if unsynced > UNSYNCED_MAX {
            let dirty: Vec<PathBuf> = self
                .files
                .iter()
                .filter(|(_, h)| h.dirty)
                .map(|(p, _)| p.clone())
                .collect();
            for p in dirty {
                // The lines are written: failing here would make the retry write them twice.
                // A failed fsync keeps its bytes for rewriting and fails the next flush.
                if let Err(e) = self.sync_file(&p) {
                    tracing::warn!("{e}");
                }
            }
        }
        Ok(())
    }
}

impl Drop for LocalFileSink {
    /// Best effort: fsync what was written. The pipeline calls [`Sink::flush`] at shutdown and
    /// learns about errors there.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
