//! `file_positions.json`: where each monitored file was read up to, once delivered.
//!
//! The Go file monitor's layout is not documented in the Go team's files; this one follows
//! its container records (pretty JSON, keys sorted, keyed by path, Go `time.Time` strings):
//!
//! ```json
//! {
//!   "/var/log/app.log": {
//!     "file_path": "/var/log/app.log",
//!     "offset": 73311,
//!     "size": 73400,
//!     "last_modified": "2026-11-30T03:12:01.000000000Z",
//!     "inode": 1048611,
//!     "device": 2049,
//!     "last_read": "2026-11-30T03:12:01.250000000Z",
//!     "log_count": 1042,
//!     "bytes_read": 72269,
//!     "fingerprint": 1469598103934665603,
//!     "fingerprint_len": 256
//!   }
//! }
//! ```
//!
//! `offset` is the byte just past the last delivered line. Ours: `fingerprint` and
//! `fingerprint_len` ([`Identity`]), and `rotated` (`{device, inode, fingerprint,
//! fingerprint_len, offset}`) while a file rotated away from the path is still being read. A record without them (written by Go) resumes at its
//! `offset` when the file still has that device and inode (or the record has neither) and is
//! at least that long; otherwise the file is read from its start.
//!
//! Pruning: a record whose path is gone, once every line of it is delivered, gets ours
//! `gone_since` (a Go time); it is dropped `positions.max_position_age` later, unless its path
//! exists again by then (a new record clears the mark). A file that exists is never pruned.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::file_identity::Identity;

/// Name of the file inside `positions.directory`.
pub const FILE_POSITIONS_FILE: &str = "file_positions.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    #[serde(default)]
    pub file_path: String,
    #[serde(default)]
    pub offset: u64,
    /// The file's size when the delivered lines were read.
    #[serde(default)]
    pub size: u64,
    #[serde(default, with = "crate::state::positions::go_time")]
    pub last_modified: Option<i64>,
    #[serde(default)]
    pub inode: u64,
    #[serde(default)]
    pub device: u64,
    #[serde(default, with = "crate::state::positions::go_time")]
    pub last_read: Option<i64>,
    /// Lines delivered, cumulative.
    #[serde(default)]
    pub log_count: i64,
    /// Message bytes delivered, cumulative.
    #[serde(default)]
    pub bytes_read: i64,
    /// Ours: FNV-1a of the first `fingerprint_len` bytes. Absent in Go files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fingerprint_len: u32,
    /// Ours: the file rotated away from the path and not yet read to its end, with the byte
    /// just past its last delivered line (a restart reads it from there first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated: Option<RotatedPosition>,
    /// Ours: since when the path has been gone (no file, nothing of it still read).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::state::positions::go_time"
    )]
    pub gone_since: Option<i64>,
}

/// A rotated file still being read: its identity and delivered offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotatedPosition {
    #[serde(flatten)]
    pub identity: Identity,
    pub offset: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl FilePosition {
    /// The identity recorded, when it was written by us.
    pub fn identity(&self) -> Option<Identity> {
        self.fingerprint.map(|fingerprint| Identity {
            device: self.device,
            inode: self.inode,
            fingerprint,
            fingerprint_len: self.fingerprint_len,
        })
    }
}

/// Every file's record, keyed by path.
pub type FileRecords = BTreeMap<String, FilePosition>;

/// The records of a `file_positions.json`. Go writes `null` for an empty map.
pub fn parse(data: &[u8]) -> Result<FileRecords, serde_json::Error> {
    let raw: Option<FileRecords> = serde_json::from_slice(data)?;
    let mut records = raw.unwrap_or_default();
    for (path, r) in records.iter_mut() {
        if r.file_path.is_empty() {
            r.file_path = path.clone();
        }
    }
    Ok(records)
}

/// Where a monitored file stands once every entry of the batch (and of the batches before
/// it) is delivered: the byte just past its last line in the batch, in the file identified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCheckpoint {
    pub path: Arc<str>,
    /// The entries' `source_id`, so that a batch given up freezes the file as it does a
    /// container.
    pub source_id: Arc<str>,
    pub identity: Identity,
    pub offset: u64,
    /// The file's size and modification time when read.
    pub size: u64,
    pub modified_ns: i64,
    /// Entries and message bytes of this file in the batch.
    pub lines: u64,
    pub bytes: u64,
    /// The file rotated away from the path that is still being read to its end, and the
    /// byte just past its last line in the batch.
    pub rotated: Option<(Identity, u64)>,
    /// The path is gone and nothing of it is read any more: its record (if any) is marked for
    /// pruning, and the fields above mean nothing.
    pub gone: bool,
}

impl FileCheckpoint {
    /// The path is gone, every line of it in this batch or an earlier one.
    pub fn gone(path: Arc<str>, source_id: Arc<str>) -> FileCheckpoint {
        FileCheckpoint {
            path,
            source_id,
            identity: Identity::default(),
            offset: 0,
            size: 0,
            modified_ns: 0,
            lines: 0,
            bytes: 0,
            rotated: None,
            gone: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_go_record_has_no_identity_and_ours_round_trips() {
        let go = br#"{"/var/log/a.log": {"file_path": "/var/log/a.log", "offset": 12,
            "size": 40, "last_modified": "2026-11-30T01:02:03.5+01:00", "inode": 7,
            "device": 2049, "unknown_go_field": true}}"#;
        let r = parse(go).unwrap();
        let a = &r["/var/log/a.log"];
        assert_eq!((a.offset, a.inode, a.device), (12, 7, 2049));
        assert!(a.identity().is_none());
        assert!(a.last_modified.is_some());
        let mut ours = a.clone();
        ours.fingerprint = Some(99);
        ours.fingerprint_len = 12;
        let text = serde_json::to_string(&ours).unwrap();
        let back: FilePosition = serde_json::from_str(&text).unwrap();
        assert_eq!(back.identity().unwrap().fingerprint, 99);
        assert!(parse(b"null").unwrap().is_empty());
    }
}
