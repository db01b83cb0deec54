//! Sinks: where entries go. Several can be enabled at once; a line is acknowledged when every
//! enabled sink has it.
//!
//! Delivery is at least once. A [`Sink`] is synchronous and owned by one thread (the dispatcher
//! drives every sink in turn); the caller holds a batch until [`Sink::write_batch`] returns `Ok`
//! (and, for durability, [`Sink::flush`] after it), and only then advances positions. On a
//! [retryable](SinkError::is_retryable) error the caller keeps the batch and calls
//! `write_batch` again with the same entries after [`retry::Backoff::delay`]; a batch may thus
//! be written more than once (a file sink that wrote part of a batch before failing, a Loki push
//! whose answer was lost). On a permanent error (a 4xx that Loki will never accept: entry out of
//! order, too old, ...) the entries are not retried: the sink has logged the reason and counted
//! them, and the caller counts them as dropped with [`SinkError::drop_reason`]; when only part
//! of the batch is refused for good ([`SinkError::PartlyDropped`]: a file path that cannot be
//! written, one entry too large for Loki) the rest has landed and only that part is counted.
//! A sink that lands part of a batch before a retryable error skips that part when the same
//! entries come again (`local_file`, `loki`): retries do not duplicate.
//!
//! - [`local_file::LocalFileSink`]: JSON lines or text in files named by Go patterns.
//! - [`stdout::StdoutSink`]: JSON lines on stdout (or any writer).
//! - [`blackhole::BlackholeSink`]: counts and discards.
//! - [`loki::LokiSink`]: Loki push API (JSON, gzip at 1 KiB and over).
//!
//! Formats are in [`format`](mod@format), the retry policy in [`retry`].

use std::path::PathBuf;
use std::time::Duration;

use crate::pipeline::entry::LogEntry;

pub mod blackhole;
pub mod format;
pub mod local_file;
pub mod loki;
pub mod retry;
pub mod stdout;

pub use blackhole::{BlackholeCounters, BlackholeSink};
pub use format::{GoLayout, TextFormatOptions};
pub use local_file::{LocalFileOptions, LocalFileSink, OutputFormat};
pub use loki::{LokiAuth, LokiOptions, LokiSink, LokiStats};
pub use retry::Backoff;
pub use stdout::StdoutSink;

/// A destination for log entries with acknowledgement: `Ok` from [`Sink::write_batch`] means the
/// whole batch was handed over (file: written to the kernel; Loki: a 2xx answer; stdout:
/// written and flushed), `Ok` from [`Sink::flush`] that it is durable where the sink can make it
/// so (file: fsynced).
pub trait Sink: Send {
    /// The sink type as the Go metrics name it (`local_file`, `loki`, `stdout`, `blackhole`).
    fn name(&self) -> &'static str;

    /// Delivers every entry of `entries`, or fails as a whole (some may have been delivered:
    /// at least once). An empty batch is `Ok` and does nothing.
    fn write_batch(&mut self, entries: &[LogEntry]) -> Result<(), SinkError>;

    /// Makes what was written durable (fsync for files) and releases idle resources.
    fn flush(&mut self) -> Result<(), SinkError>;
}

/// Identifies a batch across retries: the dispatcher retries with the same slice, so its
/// address and length, with the first and last entries' timestamps (log and capture) and
/// messages, tell a retry from a new batch that happens to reuse the freed memory.
pub(crate) fn batch_key(entries: &[LogEntry]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (entries.as_ptr() as usize, entries.len()).hash(&mut h);
    for e in [entries.first(), entries.last()].into_iter().flatten() {
        (e.timestamp_ns, e.processed_at_ns, &e.message[..]).hash(&mut h);
    }
    h.finish()
}

/// Why a sink could not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file could not be created, opened, written or synced. Retryable (disk full, EIO may
    /// clear; the batch stays held meanwhile).
    #[error("{sink}: {op} {path}: {source}")]
    Io {
        sink: &'static str,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The stdout (or injected) writer failed. Retryable.
    #[error("{sink}: write failed: {source}")]
    Write {
        sink: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// No HTTP answer: connection refused or reset, DNS, TLS, timeout. Retryable.
    #[error("{sink}: {url}: {reason}")]
    Connection {
        sink: &'static str,
        url: String,
        reason: String,
    },
    /// An HTTP answer other than 2xx. Retryable for 408, 429, 5xx and the configuration-side
    /// 401/403/404/407 (holding the batch until the operator fixes the endpoint or credentials
    /// loses nothing); permanent for every other 4xx (400 out of order / too old / bad labels,
    /// 413, 422, ...): Loki will never take those entries (the Loki sink splits a batch on
    /// 413 first, so only a single entry too large ends here).
    #[error("{sink}: {url} answered {status}: {body:?}")]
    Http {
        sink: &'static str,
        url: String,
        status: u16,
        /// The start of the response body (at most 4 KiB), which holds Loki's reason.
        body: String,
        /// The `Retry-After` of a 429 or 503, when given in seconds.
        retry_after: Option<Duration>,
    },
    /// Part of the batch landed and the rest (`lines` entries) never will, e.g. files whose
    /// path cannot be written (see `local_file`). Permanent: the batch is not retried, and
    /// `lines` are counted as dropped with `reason`.
    #[error("{sink}: {lines} lines given up ({reason}): {detail}")]
    PartlyDropped {
        sink: &'static str,
        lines: usize,
        reason: &'static str,
        detail: String,
    },
    /// The sink's options are unusable. Permanent.
    #[error("{sink}: invalid configuration: {reason}")]
    Config { sink: &'static str, reason: String },
}

impl SinkError {
    /// Whether the caller should keep the batch and try again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Io { .. } | SinkError::Write { .. } | SinkError::Connection { .. } => true,
            SinkError::Http { status, .. } => http_status_retryable(*status),
            SinkError::Config { .. } | SinkError::PartlyDropped { .. } => false,
        }
    }

    /// Lines dropped for good when that is not the whole batch.
    pub fn dropped_lines(&self) -> Option<usize> {
        match self {
            SinkError::PartlyDropped { lines, .. } => Some(*lines),
            _ => None,
        }
    }

    /// Whether only the operator can end it: credentials, tenant or endpoint (HTTP 401, 403,
    /// 404, 407). Retried (nothing is lost by holding the batch) and shown in `/health`.
    pub fn is_config_side(&self) -> bool {
        matches!(self.status(), Some(401 | 403 | 404 | 407))
    }

    /// The HTTP status, for [`SinkError::Http`].
    pub fn status(&self) -> Option<u16> {
        match self {
            SinkError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's `Retry-After`, if any: wait at least this long before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// For a permanent error, a short reason to count dropped lines under
    /// (`lines_dropped_total{reason}`): `loki_out_of_order`, `loki_too_old`, `loki_too_new`,
    /// `loki_rate_limited`, `loki_line_too_long`, `loki_too_large`, `loki_bad_request`,
    /// `loki_rejected`, `config`. `None` when the error is retryable (nothing is dropped).
    pub fn drop_reason(&self) -> Option<&'static str> {
        if self.is_retryable() {
            return None;
        }
        Some(match self {
            SinkError::Http { status, body, .. } => loki_reject_reason(*status, body),
            SinkError::Config { .. } => "config",
            SinkError::PartlyDropped { reason, .. } => reason,
            _ => "error",
        })
    }

    /// The sink that failed.
    pub fn sink(&self) -> &'static str {
        match self {
            SinkError::Io { sink, .. }
            | SinkError::Write { sink, .. }
            | SinkError::Connection { sink, .. }
            | SinkError::Http { sink, .. }
            | SinkError::PartlyDropped { sink, .. }
            | SinkError::Config { sink, .. } => sink,
        }
    }
}

/// 408, 429, 5xx and the configuration-side 401/403/404/407 are retryable; other 4xx are not.
pub fn http_status_retryable(status: u16) -> bool {
    matches!(status, 401 | 403 | 404 | 407 | 408 | 429) || !(400..500).contains(&status)
}

/// Classifies a Loki rejection from its status and body (Loki's messages: "entry out of order",
/// "entry too far behind", "greater_than_max_sample_age", "timestamp too new", ...).
pub fn loki_reject_reason(status: u16, body: &str) -> &'static str {
    let b = body.to_ascii_lowercase();
    if b.contains("out of order") || b.contains("out_of_order") {
        "loki_out_of_order"
    } else if b.contains("too old")
        || b.contains("too far behind")
        || b.contains("greater_than_max_sample_age")
        || b.contains("older than")
    {
        "loki_too_old"
    } else if b.contains("too new")
        || b.contains("too far in the future")
        || b.contains("too_far_in_future")
    {
        "loki_too_new"
    } else if b.contains("line too long") || b.contains("line_too_long") {
        "loki_line_too_long"
    } else if b.contains("rate limit") || b.contains("rate_limited") {
        "loki_rate_limited"
    } else if status == 413 {
        "loki_too_large"
    } else if status == 400 {
        "loki_bad_request"
    } else {
        "loki_rejected"
    }
}

/// Every value [`loki_reject_reason`] gives.
pub const LOKI_REJECT_REASONS: &[&str] = &[
    "loki_out_of_order",
    "loki_too_old",
    "loki_too_new",
    "loki_line_too_long",
    "loki_rate_limited",
    "loki_too_large",
    "loki_bad_request",
    "loki_rejected",
];

/// The `reason` label of `lines_dropped_total` for lines `sink` refused for good:
/// `{sink}_{reason}`, without saying the sink twice (`loki_too_old`, `local_file_error`).
pub fn drop_label(sink: &str, reason: &str) -> String {
    match reason.strip_prefix(sink) {
        Some(rest) if rest.starts_with('_') => reason.to_string(),
        _ => format!("{sink}_{reason}"),
    }
}

/// Every label [`drop_label`] can give for `sink`, so the metrics show each at 0 from the
/// start (a rate or an alert on a series that does not exist yet sees nothing).
pub fn drop_labels(sink: &str) -> Vec<String> {
    let mut reasons = vec!["config", "error"];
    if sink == "loki" {
        reasons.extend_from_slice(LOKI_REJECT_REASONS);
    }
    if sink == "local_file" {
        reasons.push(local_file::UNWRITABLE_PATH);
    }
    reasons.into_iter().map(|r| drop_label(sink, r)).collect()
}

#[cfg(test)]
mod drop_label_tests {
    use super::*;

    #[test]
    fn labels_name_the_sink_once() {
        assert_eq!(drop_label("loki", "loki_too_old"), "loki_too_old");
        assert_eq!(drop_label("loki", "config"), "loki_config");
        assert_eq!(drop_label("local_file", "error"), "local_file_error");
        let loki = drop_labels("loki");
        for (status, body) in [(400, "entry out of order"), (413, ""), (422, "x")] {
            let label = drop_label("loki", loki_reject_reason(status, body));
            assert!(loki.contains(&label), "{label} not in {loki:?}");
        }
        assert_eq!(drop_labels("stdout"), vec!["stdout_config", "stdout_error"]);
    }
}
