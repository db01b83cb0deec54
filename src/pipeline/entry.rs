//! A log entry: one line with where and when it came from, as the sinks receive it.
//!
//! Container-level labels are shared (`Arc`) by every entry of a container: a line costs its
//! message and two timestamps, not a map.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::decode::StreamKind;

/// Labels in key order, as the Go version writes them (JSON keys sorted).
pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// When the line was logged: dockerd's timestamp, nanoseconds since the epoch (the Go
    /// version put its capture time here; see COMPATIBILITY.md).
    pub timestamp_ns: i64,
    /// When the capturer read it.
    pub processed_at_ns: i64,
    /// The line, without its newline.
    pub message: Bytes,
    /// stdout or stderr (TTY containers: stdout).
    pub stream: StreamKind,
    /// `docker` for containers, `file` for monitored files, `api` for POST /api/v1/logs.
    pub source_type: &'static str,
    /// The 12-character container id for containers.
    pub source_id: Arc<str>,
    /// `container_id`, `container_name`, `image`, `compose_service` (when present), ...;
    /// `stream` is added by the sinks from [`LogEntry::stream`].
    pub labels: Arc<Labels>,
}
