//! Monitored log files: the second source, beside the Docker streams.
//!
//! `file_monitor_service`, `files_config` and the pipeline file say what to watch
//! ([`config`]); the files thread ([`source`]) finds the files ([`watch`]: directory scans,
//! inotify, or polling), reads each from its committed offset ([`tail`]: `pread`, the
//! containers' line splitter), tells a rotated, truncated or replaced file from the same
//! one ([`identity`]: device, inode and a fingerprint of the first bytes), and queues
//! entries (`source_type: "file"`) with [`crate::pipeline::FileCheckpoint`]s in the same
//! queue as the containers'. The dispatcher commits the checkpoints to `file_positions.json`
//! ([`positions`]) with the containers' positions, once every sink has the lines.

pub mod config;
pub mod glob;
pub mod group;
pub mod source;
pub mod tail;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Mutex;

pub use crate::state::file_identity::Identity;

/// What the API shows of a monitored file.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileStatus {
    pub source_id: String,
    /// Just past the last line read.
    pub offset: u64,
    pub size: u64,
}

/// Counters of the files thread, shared with the API and the accounting.
#[derive(Debug, Default)]
pub struct FileStats {
    pub lines_read: AtomicU64,
    /// Paths monitored (listed, or found in a directory).
    pub monitored: AtomicU64,
    /// Files replaced at their path (rename and create, deleted, moved over).
    pub rotations: AtomicU64,
    /// Files truncated or rewritten in place (copytruncate).
    pub truncations: AtomicU64,
    pub pauses: AtomicU64,
    /// inotify runs (else polling).
    pub inotify: AtomicBool,
    /// Per path, where it is read up to.
    pub files: Mutex<BTreeMap<String, FileStatus>>,
}

impl FileStats {
    /// Called per file per pass that read something: allocates only for a new file.
    fn set(&self, path: &str, source_id: &str, offset: u64, size: u64) {
        let mut files = self.files.lock().unwrap();
        match files.get_mut(path) {
            Some(s) => (s.offset, s.size) = (offset, size),
            None => {
                let status = FileStatus {
                    source_id: source_id.to_string(),
                    offset,
                    size,
                };
                files.insert(path.to_string(), status);
            }
        }
    }
}
