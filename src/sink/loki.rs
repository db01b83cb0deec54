//! `sinks.loki`: the Loki push API, as the Go version spoke it.
//!
//! One `POST url + push_endpoint` (default `/loki/api/v1/push`) per batch with the body
//! `{"streams":[{"stream":{labels},"values":[["<unix ns>","<line>"],...]},...]}`: entries grouped
//! by their stream label set (streams in order of first appearance, values in batch order), the
//! body gzipped (`Content-Encoding: gzip`) when it is 1024 bytes or more. Headers:
//! `Content-Type: application/json`, then the configured `headers` (which may override it),
//! `X-Scope-OrgID: tenant_id` when not empty, and `Authorization` for `auth.type` `basic`
//! (username and password both set) or `bearer` (token set).
//!
//! Stream labels: `default_labels`, then the entry's labels and pipeline fields
//! (`LogEntry::labels_iter`) except the high-cardinality and temporary ones
//! ([`should_drop_label`]), then `stream` (stdout/stderr); every key sanitized
//! ([`sanitize_label_name`]); `service` set to `ssw-log-capturer` when absent.
//!
//! Errors: no answer is [`SinkError::Connection`], any non-2xx is [`SinkError::Http`] with the
//! start of the body; see [`SinkError::is_retryable`]. A permanent rejection is logged with its
//! reason and counted in [`LokiStats`] here; the caller counts the lines as dropped.
//!
//! A 413 (body too large) splits the batch in halves, each pushed on its own (and split again
//! while Loki still says 413); only a single entry Loki refuses is dropped (`loki_too_large`),
//! and the rest of the batch still goes. When part of a batch landed and a later part fails
//! with a retryable error, the retry of the same entries (same slice) starts after the part
//! that landed: nothing is pushed twice by this sink. Pieces refused for good while others
//! landed come back as [`SinkError::PartlyDropped`].

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::format::write_json_str;
use super::{Sink, SinkError};
use crate::decode::StreamKind;
use crate::pipeline::entry::LogEntry;

const SINK: &str = "loki";

/// Bodies of this size and over are gzipped (the Go compressor's `MinBytes`).
pub const GZIP_MIN_BYTES: usize = 1024;

/// Default `push_endpoint`.
pub const DEFAULT_PUSH_ENDPOINT: &str = "/loki/api/v1/push";

/// The `service` label given to streams that have none.
pub const DEFAULT_SERVICE: &str = "ssw-log-capturer";

/// How much of an error answer's body is kept in the error.
const ERROR_BODY_MAX: u64 = 4096;

/// `sinks.loki.auth`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LokiAuth {
    /// `none`, `basic` or `bearer`.
    pub r#type: String,
    pub username: String,
    pub password: String,
    pub token: String,
}

/// Options of the Loki sink, named after the Go keys (`sinks.loki.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LokiOptions {
    /// `http://loki:3100` (http or https).
    pub url: String,
    /// Appended to `url`; empty means `/loki/api/v1/push`.
    pub push_endpoint: String,
    /// `X-Scope-OrgID` when not empty.
    pub tenant_id: String,
    /// Whole-request timeout (Go default 30 s).
    pub timeout: Duration,
    /// Entries per push: used by the pipeline that batches for this sink.
    pub batch_size: usize,
    /// Longest wait before a partial batch is pushed: used by the pipeline.
    pub batch_timeout: Duration,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Labels added to every stream (entry labels win over them).
    pub default_labels: BTreeMap<String, String>,
    pub auth: LokiAuth,
}

impl Default for LokiOptions {
    fn default() -> Self {
        LokiOptions {
            url: String::new(),
            push_endpoint: String::new(),
            tenant_id: String::new(),
            timeout: Duration::from_secs(30),
            batch_size: 1000,
            batch_timeout: Duration::from_secs(5),
            headers: BTreeMap::new(),
            default_labels: BTreeMap::new(),
            auth: LokiAuth::default(),
        }
    }
}

impl LokiOptions {
    /// The options with `url` set and the rest default.
    pub fn new(url: impl Into<String>) -> Self {
        LokiOptions {
            url: url.into(),
            ..Default::default()
        }
    }

    /// `url` + `push_endpoint` (or the default endpoint), as the Go version concatenated them.
    pub fn endpoint(&self) -> String {
        let ep = if self.push_endpoint.is_empty() {
            DEFAULT_PUSH_ENDPOINT
        } else {
            &self.push_endpoint
        };
        format!("{}{}", self.url, ep)
    }
}

/// Counters of the Loki sink, readable from any thread.
#[derive(Debug, Default)]
pub struct LokiStats {
    batches_sent: AtomicU64,
    entries_sent: AtomicU64,
    bytes_sent: AtomicU64,
    batches_rejected: AtomicU64,
    entries_rejected: AtomicU64,
    failures: AtomicU64,
    last_rejection: Mutex<Option<String>>,
}

impl LokiStats {
    /// Pushes answered 2xx.
    pub fn batches_sent(&self) -> u64 {
        self.batches_sent.load(Ordering::Relaxed)
    }
    /// Entries in pushes answered 2xx.
    pub fn entries_sent(&self) -> u64 {
        self.entries_sent.load(Ordering::Relaxed)
    }
    /// Request body bytes (after gzip) of pushes answered 2xx.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }
    /// Pushes rejected for good (permanent 4xx).
    pub fn batches_rejected(&self) -> u64 {
        self.batches_rejected.load(Ordering::Relaxed)
    }
    /// Entries of pushes rejected for good. Loki may have kept some of them (a 400 names only the
    /// refused entries); they are not retried either way.
    pub fn entries_rejected(&self) -> u64 {
        self.entries_rejected.load(Ordering::Relaxed)
    }
    /// Attempts that failed with a retryable error.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
    /// `"<drop reason>: <status> <body>"` of the last permanent rejection.
    pub fn last_rejection(&self) -> Option<String> {
        self.last_rejection
            .lock()
            .map(|g| g.clone())
            .unwrap_or(None)
    }
}

/// Labels the Go version never sent to Loki (high cardinality).
pub const HIGH_CARDINALITY_LABELS: [&str; 17] = [
    "timestamp",
    "time",
    "trace_id",
    "request_id",
    "transaction_id",
    "container_id",
    "file_path",
    "filepath",
    "pid",
    "thread_id",
    "line_number",
    "offset",
    "position",
    "instance",
    "instance_name",
    "image",
    "msg",
];

/// Whether an entry label stays out of the stream labels: the high-cardinality ones and the
/// temporary ones (prefixes `_temp_`, `label__temp_`, `temp_`).
pub fn should_drop_label(key: &str) -> bool {
    ["_temp_", "label__temp_", "temp_"]
        .iter()
        .any(|p| key.starts_with(p))
        || HIGH_CARDINALITY_LABELS.contains(&key)
}

/// A Loki label name, the Go way: every character outside `[A-Za-z0-9_]` becomes `_`; a name
/// that does not start with a letter gets the prefix `label_` (`1abc` -> `label_1abc`,
/// `_x` -> `label__x`); an empty name becomes `unknown`.
pub fn sanitize_label_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        return "unknown".to_string();
    }
    if !s.as_bytes()[0].is_ascii_alphabetic() {
        s.insert_str(0, "label_");
    }
    s
}

/// The Loki sink: one blocking HTTP agent (keep-alive), one push per [`Sink::write_batch`].
pub struct LokiSink {
    opts: LokiOptions,
    endpoint: String,
    agent: ureq::Agent,
    authorization: Option<String>,
    default_labels: Vec<(String, String)>,
    stats: Arc<LokiStats>,
    /// The batch ([`super::batch_key`]) a retry belongs to and how many of its entries,
    /// from the start, landed already.
    progress: Option<(u64, usize)>,
}

impl LokiSink {
    pub fn new(opts: LokiOptions) -> Result<Self, SinkError> {
        let url = opts.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(SinkError::Config {
                sink: SINK,
                reason: format!("url {:?} is not http:// or https://", opts.url),
            });
        }
        let agent = ureq::AgentBuilder::new()
            .timeout(opts.timeout)
            .redirects(0)
            .build();
        let authorization = match opts.auth.r#type.to_ascii_lowercase().as_str() {
            "basic" if !opts.auth.username.is_empty() && !opts.auth.password.is_empty() => {
                Some(format!(
                    "Basic {}",
                    base64(format!("{}:{}", opts.auth.username, opts.auth.password).as_bytes())
                ))
            }
            "bearer" if !opts.auth.token.is_empty() => Some(format!("Bearer {}", opts.auth.token)),
            _ => None,
        };
        let default_labels = opts
            .default_labels
            .iter()
            .map(|(k, v)| (sanitize_label_name(k), v.clone()))
            .collect();
        Ok(LokiSink {
            endpoint: opts.endpoint(),
            opts,
            agent,
            authorization,
            default_labels,
            stats: Arc::new(LokiStats::default()),
            progress: None,
        })
    }

    pub fn options(&self) -> &LokiOptions {
        &self.opts
    }

    /// A handle on the counters.
    pub fn stats(&self) -> Arc<LokiStats> {
        Arc::clone(&self.stats)
    }

    /// The stream labels of an entry (see the module documentation).
    pub fn stream_labels(&self, e: &LogEntry) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        for (k, v) in &self.default_labels {
            l.insert(k.clone(), v.clone());
        }
        for (k, v) in e.labels_iter() {
            if !should_drop_label(k) {
                l.insert(sanitize_label_name(k), v.to_string());
            }
        }
        l.insert("stream".to_string(), e.stream.as_str().to_string());
        l.entry("service".to_string())
            .or_insert_with(|| DEFAULT_SERVICE.to_string());
        l
    }

    /// The JSON push body of a batch (before compression).
    pub fn push_body(&self, entries: &[LogEntry]) -> Vec<u8> {
        // (labels Arc, stream) -> stream index, then label set -> stream index (entries with
        // equal labels in different Arcs share a stream). An entry with pipeline fields has
        // its own set: only the second map.
        let mut none = HashMap::new();
        let mut by_ptr: HashMap<(usize, StreamKind), usize> = HashMap::new();
        let mut by_set: HashMap<BTreeMap<String, String>, usize> = HashMap::new();
        let mut streams: Vec<(BTreeMap<String, String>, Vec<u8>)> = Vec::new();
        for e in entries {
            let key = (Arc::as_ptr(&e.labels) as usize, e.stream);
            let by_ptr = if e.fields.is_empty() {
                &mut by_ptr
            } else {
                none.clear();
                &mut none
            };
            let si = match by_ptr.get(&key) {
                Some(&si) => si,
                None => {
                    let set = self.stream_labels(e);
                    let si = match by_set.get(&set) {
                        Some(&si) => si,
                        None => {
                            streams.push((set.clone(), Vec::new()));
                            by_set.insert(set, streams.len() - 1);
                            streams.len() - 1
                        }
                    };
                    by_ptr.insert(key, si);
                    si
                }
            };
            let values = &mut streams[si].1;
            if !values.is_empty() {
                values.push(b',');
            }
            values.extend_from_slice(b"[\"");
            values.extend_from_slice(e.timestamp_ns.to_string().as_bytes());
            values.extend_from_slice(b"\",");
            write_json_str(values, &e.message);
            values.push(b']');
        }
        let cap = streams.iter().map(|s| s.1.len() + 64).sum::<usize>() + 16;
        let mut body = Vec::with_capacity(cap);
        body.extend_from_slice(b"{\"streams\":[");
        for (i, (labels, values)) in streams.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"stream\":{");
            for (j, (k, v)) in labels.iter().enumerate() {
                if j > 0 {
                    body.push(b',');
                }
                write_json_str(&mut body, k.as_bytes());
                body.push(b':');
                write_json_str(&mut body, v.as_bytes());
            }
            body.extend_from_slice(b"},\"values\":[");
            body.extend_from_slice(values);
            body.extend_from_slice(b"]}");
        }
        body.extend_from_slice(b"]}");
        body
    }

    fn send(&self, body: &[u8], gzip: bool) -> Result<(), SinkError> {
        let mut req = self
            .agent
            .post(&self.endpoint)
            .set("Content-Type", "application/json");
        if gzip {
            req = req.set("Content-Encoding", "gzip");
        }
        for (k, v) in &self.opts.headers {
            req = req.set(k, v);
        }
        if !self.opts.tenant_id.is_empty() {
            req = req.set("X-Scope-OrgID", &self.opts.tenant_id);
        }
        if let Some(a) = &self.authorization {
            req = req.set("Authorization", a);
        }
        let resp = match req.send_bytes(body) {
            Ok(resp) => resp,
            Err(ureq::Error::Status(_, resp)) => resp,
            Err(ureq::Error::Transport(t)) => {
                return Err(SinkError::Connection {
                    sink: SINK,
                    url: self.endpoint.clone(),
                    reason: t.to_string(),
                })
            }
        };
        let status = resp.status();
        if (200..300).contains(&status) {
            // Drain a little so that the connection can be reused.
            let _ = std::io::copy(
                &mut resp.into_reader().take(64 * 1024),
                &mut std::io::sink(),
            );
            return Ok(());
        }
        let retry_after = resp
            .header("Retry-After")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut raw = Vec::new();
        let _ = resp
            .into_reader()
            .take(ERROR_BODY_MAX)
            .read_to_end(&mut raw);
        Err(SinkError::Http {
            sink: SINK,
            url: self.endpoint.clone(),
            status,
            body: String::from_utf8_lossy(&raw).trim_end().to_string(),
            retry_after,
        })
    }
}

impl Sink for LokiSink {
    fn name(&self) -> &'static str {
        SINK
    }

    fn write_batch(&mut self, entries: &[LogEntry]) -> Result<(), SinkError> {
        if entries.is_empty() {
            return Ok(());
        }
        let key = super::batch_key(entries);
        let skip = match self.progress.take() {
            Some((k, landed)) if k == key => landed,
            _ => 0,
        };
        let mut split = Split {
            landed: skip,
            dropped: 0,
            first_drop: None,
        };
        let result = self.push_split(&entries[skip..], &mut split);
        if let Err(err) = result {
            // Retryable: keep what landed (and what was given up) out of the retry.
            self.progress = Some((key, split.landed));
            return Err(err);
        }
        match split.first_drop {
            None => Ok(()),
            Some(err) if split.dropped == entries.len() => Err(err),
            Some(err) => Err(SinkError::PartlyDropped {
                sink: SINK,
                lines: split.dropped,
                reason: err.drop_reason().unwrap_or("loki_rejected"),
                detail: err.to_string(),
            }),
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        // Every batch is pushed (and answered) within write_batch: nothing is buffered here.
        Ok(())
    }
}

/// Where a batch stands while its pieces are pushed: entries from the start that are done
/// (landed or given up), those given up, and the first refusal.
struct Split {
    landed: usize,
    dropped: usize,
    first_drop: Option<SinkError>,
}

impl LokiSink {
    /// Pushes `entries` in order, halving a piece Loki answers 413 to. `Err` only for a
    /// retryable error; `split.landed` then counts the entries before the failed piece.
    fn push_split(&mut self, entries: &[LogEntry], split: &mut Split) -> Result<(), SinkError> {
        match self.push(entries) {
            Ok(()) => {
                split.landed += entries.len();
                Ok(())
            }
            Err(err) if err.status() == Some(413) && entries.len() > 1 => {
                let mid = entries.len() / 2;
                tracing::debug!(
                    "loki answered 413 to {} entries; pushing {} and {}",
                    entries.len(),
                    mid,
                    entries.len() - mid
                );
                self.push_split(&entries[..mid], split)?;
                self.push_split(&entries[mid..], split)
            }
            Err(err) if err.is_retryable() => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "loki push of {} entries failed, retryable: {err}",
                    entries.len()
                );
                Err(err)
            }
            Err(err) => {
                let reason = err.drop_reason().unwrap_or("loki_rejected");
                let s = &self.stats;
                s.batches_rejected.fetch_add(1, Ordering::Relaxed);
                s.entries_rejected
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
                let detail = match &err {
                    SinkError::Http { status, body, .. } => format!("{reason}: {status} {body:?}"),
                    other => format!("{reason}: {other}"),
                };
                tracing::warn!(
                    "loki rejected {} entries for good, not retrying ({detail})",
                    entries.len()
                );
                if let Ok(mut g) = s.last_rejection.lock() {
                    *g = Some(detail);
                }
                split.landed += entries.len();
                split.dropped += entries.len();
                split.first_drop.get_or_insert(err);
                Ok(())
            }
        }
    }

    /// One push of `entries` (gzipped at [`GZIP_MIN_BYTES`]), counted in the stats when it
    /// lands.
    fn push(&self, entries: &[LogEntry]) -> Result<(), SinkError> {
        let json = self.push_body(entries);
        let (body, gzip) = if json.len() >= GZIP_MIN_BYTES {
            let mut enc = GzEncoder::new(Vec::with_capacity(json.len() / 4), Compression::new(6));
            let gz = enc.write_all(&json).and_then(|()| enc.finish());
            match gz {
                Ok(gz) => (gz, true),
                Err(_) => (json, false),
            }
        } else {
            (json, false)
        };
        self.send(&body, gzip)?;
        let s = &self.stats;
        s.batches_sent.fetch_add(1, Ordering::Relaxed);
        s.entries_sent
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        s.bytes_sent.fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Standard base64 with padding (for `Authorization: Basic`).
fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn label_names() {
        assert_eq!(sanitize_label_name("compose_service"), "compose_service");
        assert_eq!(
            sanitize_label_name("com.docker.compose-project"),
            "com_docker_compose_project"
        );
        assert_eq!(sanitize_label_name("1abc"), "label_1abc");
        assert_eq!(sanitize_label_name("_x"), "label__x");
        assert_eq!(sanitize_label_name("é"), "label__");
        assert_eq!(sanitize_label_name(""), "unknown");
        assert!(should_drop_label("container_id"));
        assert!(should_drop_label("temp_x"));
        assert!(!should_drop_label("container_name"));
    }
}
