//! The routes of both servers and their JSON answers.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};

use super::health::health;
use super::server::{Incoming, Reply};
use super::{metrics, ApiState};
use crate::decode::timestamp::{format_rfc3339_nanos, parse_rfc3339_nanos};
use crate::decode::StreamKind;
use crate::io::OpKind;
use crate::pipeline::entry::{Labels, LogEntry};
use crate::pipeline::Batch;
use crate::telemetry::{procinfo, prom};

type Handler = fn(&ApiState) -> Reply;

/// The GET routes of the API server.
const GET_ROUTES: &[(&str, Handler)] = &[
    ("/health", health_reply),
    ("/stats", stats),
    ("/config", config),
    ("/positions", positions),
    ("/debug/goroutines", debug_goroutines),
    ("/goroutines/stats", goroutine_stats),
    ("/metrics", metrics_reply),
];

fn wrong_method(allow: &'static str) -> Reply {
    let mut r = Reply::error(405, &format!("method not allowed: use {allow}"));
    r.allow = Some(allow);
    r
}

/// Whether the request may use a guarded route: always without `server.auth_token`, else with
/// `Authorization: Bearer <token>`.
fn authorized(state: &ApiState, rq: &Incoming<'_>) -> bool {
    let token = state.config.server.auth_token.as_bytes();
    if token.is_empty() {
        return true;
    }
    let Some(value) = rq.header("authorization") else {
        return false;
    };
    let Some((scheme, given)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && same_secret(given.trim().as_bytes(), token)
}

/// Compares in time independent of where the first difference is, so the answer's timing
/// does not reveal the token byte by byte.
fn same_secret(given: &[u8], token: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != token.len());
    for (i, &t) in token.iter().enumerate() {
        diff |= t ^ given.get(i).copied().unwrap_or(!t);
    }
    diff == 0
}

fn unauthorized(state: &ApiState) -> Reply {
    state.api_error("unauthorized");
    Reply::error(
        401,
        "this route needs Authorization: Bearer <token> (server.auth_token)",
    )
}

/// The API server (`server.port`).
pub fn api_route(state: &ApiState, rq: &mut Incoming<'_>) -> (&'static str, Reply) {
    if let Some((path, handler)) = GET_ROUTES.iter().find(|(p, _)| *p == rq.path) {
        let reply = match rq.method {
            "GET" | "HEAD" if *path == "/config" && !authorized(state, rq) => unauthorized(state),
            "GET" | "HEAD" => handler(state),
            _ => wrong_method("GET"),
        };
        return (path, reply);
    }
    if rq.path == "/api/v1/logs" {
        let reply = match rq.method {
            "POST" if !authorized(state, rq) => unauthorized(state),
            "POST" => ingest(state, rq),
            _ => wrong_method("POST"),
        };
        return ("/api/v1/logs", reply);
    }
    ("other", Reply::error(404, "not found"))
}

/// The metrics server (`metrics.port`): the metrics at `metrics.path`, `/health` as plain `OK`.
pub fn metrics_route(state: &ApiState, rq: &mut Incoming<'_>) -> (&'static str, Reply) {
    let get = matches!(rq.method, "GET" | "HEAD");
    if rq.path == state.config.metrics.path || rq.path == "/metrics" {
        if !get {
            return ("metrics:/metrics", wrong_method("GET"));
        }
        return ("metrics:/metrics", metrics_reply(state));
    }
    if rq.path == "/health" {
        // A failed process (a thread panicked, the io engine failed) is about to exit: the
        // HEALTHCHECK says so too.
        let failed = crate::failure::global().failures();
        if !failed.is_empty() {
            let names: Vec<String> = failed.into_iter().map(|f| f.component).collect();
            return (
                "metrics:/health",
                Reply::text(
                    503,
                    "text/plain; charset=utf-8",
                    format!("FAILED: {}\n", names.join(", ")),
                ),
            );
        }
        return (
            "metrics:/health",
            Reply::text(200, "text/plain; charset=utf-8", "OK"),
        );
    }
    (
        "metrics:other",
        Reply::text(404, "text/plain; charset=utf-8", "404 page not found\n"),
    )
}

fn health_reply(state: &ApiState) -> Reply {
    let report = health(state);
    Reply::json(if report.healthy { 200 } else { 503 }, &report.body)
}

fn metrics_reply(state: &ApiState) -> Reply {
    Reply::text(200, prom::CONTENT_TYPE, metrics::render(state))
}

fn config(state: &ApiState) -> Reply {
    Reply::json(200, &state.config.redacted_json())
}

fn io_object(state: &ApiState) -> Value {
    let io = state.shared.io.lock().unwrap().clone();
    let rotations = state.shared.capture.rotations.load(Relaxed);
    match io {
        Some((stats, selection)) => {
            let s = stats.snapshot();
            let by_op: BTreeMap<&str, i64> = OpKind::ALL
                .iter()
                .map(|k| (k.name(), stats.in_flight(*k)))
                .collect();
            json!({
                "engine": selection.kind.name(),
                "engine_reason": selection.reason,
                "ops_in_flight": s.ops_in_flight(),
                "ops_in_flight_by_op": by_op,
                "streams_active": s.streams_live,
                "streams_opened_total": s.streams_opened,
                "streams_closed_total": s.streams_closed,
                "rotations_total": rotations,
                "cancellations_total": s.cancellations,
                "cancel_reaped_total": s.cancel_reaped_count,
                "cancel_reaped_max_seconds": s.cancel_reaped_nanos_max as f64 / 1e9,
                "bytes_received_total": s.bytes_received,
            })
        }
        None => json!({
            "engine": "none",
            "engine_reason": "not selected yet",
            "ops_in_flight": 0,
            "ops_in_flight_by_op": {},
            "streams_active": 0,
            "rotations_total": rotations,
            "cancellations_total": 0,
        }),
    }
}

fn memory_object() -> Value {
    let m = procinfo::memory();
    json!({
        // Go's keys, with the nearest figures the kernel has: there is no garbage collector.
        "alloc": m.rss,
        "total_alloc": 0,
        "sys": m.rss,
        "num_gc": 0,
        "rss_bytes": m.rss,
        "rss_peak_bytes": m.rss_peak,
        "virtual_bytes": m.virtual_size,
        "data_bytes": m.data,
    })
}

fn debug_goroutines(state: &ApiState) -> Reply {
    Reply::json(
        200,
        &json!({
            "goroutines": procinfo::threads(),
            "cpus": procinfo::cpus(),
            "cgocalls": 0,
            "timestamp": procinfo::unix_now() as i64,
            "memory": memory_object(),
            "tracker_stats": state.tracker.stats(),
            "file_descriptors": procinfo::open_fds(),
            "pid": std::process::id(),
            "io": io_object(state),
            "docker": super::health::docker_object(&state.shared.docker),
        }),
    )
}

fn goroutine_stats(state: &ApiState) -> Reply {
    Reply::json(200, &json!(state.tracker.stats()))
}

fn stats(state: &ApiState) -> Reply {
    let s = &state.shared;
    let c = &s.capture;
    let d = &s.dispatch;
    let q = &s.queue;
    let memory = procinfo::memory();
    let (positions_total, positions_dirty, commits) = {
        let p = s.positions.lock().unwrap();
        (p.len(), p.dirty(), p.commits())
    };
    let sink_results: BTreeMap<String, u64> = d
        .sink_results
        .lock()
        .unwrap()
        .iter()
        .map(|((sink, status), n)| (format!("{sink}:{status}"), *n))
        .collect();
    let body = json!({
        "application": {
            "name": state.config.app.name,
            "version": state.config.app.version,
            "uptime": crate::config::format_duration(
                std::time::Duration::from_secs(state.started.elapsed().as_secs())),
            "goroutines": procinfo::threads(),
            "timestamp": procinfo::unix_now() as i64,
        },
        "dispatcher": {
            "processed": d.lines_delivered.load(Relaxed),
            "batches": d.batches_delivered.load(Relaxed),
            "retries": d.retries.load(Relaxed),
            "commits": d.commits.load(Relaxed),
            "dropped": d.dropped_total(),
            "dropped_by_reason": *d.dropped.lock().unwrap(),
            "sink_writes": sink_results,
            "queue_size": q.queued(),
            "queue_capacity": q.capacity(),
            "queue_utilization": q.utilization(),
        },
        "capture": {
            "lines_read": c.lines_read.load(Relaxed),
            "lines_skipped": c.lines_skipped.load(Relaxed),
            "lines_filtered": c.lines_filtered.load(Relaxed),
            "rotations": c.rotations.load(Relaxed),
            "idle_reopens": c.idle_reopens.load(Relaxed),
            "stream_errors": c.stream_errors.load(Relaxed),
            "streams_opened": c.streams_opened.load(Relaxed),
            "pauses": c.pauses.load(Relaxed),
            "resume_mismatches": c.resume_mismatches.load(Relaxed),
            "lines_replayed": c.lines_replayed.load(Relaxed),
            "lines_out_of_order": c.lines_out_of_order.load(Relaxed),
            "replay_reopens": c.replay_reopens.load(Relaxed),
            "lines_recovered": c.lines_recovered.load(Relaxed),
            "streams_stuck_closing": c.streams_stuck_closing.load(Relaxed),
            "containers_unreadable": c.unreadable.lock().unwrap().len(),
            "stream_probes": c.stream_probes.load(Relaxed),
            "windows_widened": c.windows_widened.load(Relaxed),
            "lines_before_window": c.discarded(crate::sources::docker::capture::Discard::Window),
            "clock_steps_back": c.clock_steps_back.load(Relaxed),
        },
        "containers": s.containers.snapshot(),
        "files": {
            "monitored": s.files.monitored.load(Relaxed),
            "lines_read": s.files.lines_read.load(Relaxed),
            "rotations": s.files.rotations.load(Relaxed),
            "truncations": s.files.truncations.load(Relaxed),
            "pauses": s.files.pauses.load(Relaxed),
            "watcher": if s.files.inotify.load(Relaxed) { "inotify" } else { "polling" },
            "files": *s.files.files.lock().unwrap(),
        },
        "positions": {
            "containers": positions_total,
            "dirty": positions_dirty,
            "commits": commits,
            "commit_lag_seconds": state.commit_lag_seconds(),
        },
        "resources": {
            "memory_mb": memory.rss / (1024 * 1024),
            "goroutines": procinfo::threads(),
            "file_descriptors": procinfo::open_fds(),
        },
        "goroutines": state.tracker.stats(),
        "io": io_object(state),
        "sinks": state.sinks,
    });
    Reply::json(200, &body)
}

fn positions(state: &ApiState) -> Reply {
    let p = state.shared.positions.lock().unwrap();
    let containers: BTreeMap<&str, _> = p.iter().collect();
    Reply::json(
        200,
        &json!({
            "directory": p.dir().display().to_string(),
            "file": p.path().display().to_string(),
            "total": p.len(),
            "dirty": p.dirty(),
            "commits": p.commits(),
            "containers": containers,
            "files": p.files(),
        }),
    )
}

/// Source types that need no interning.
const KNOWN_SOURCE_TYPES: &[&str] = &["api", "docker", "file"];
/// At most this many other `source_type` values are kept as `&'static str` (leaked once);
/// past that they are stored as `api` with the requested value in the `source_type` label.
const MAX_INTERNED: usize = 32;
static INTERNED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

fn intern_source_type(s: &str) -> Option<&'static str> {
    if let Some(k) = KNOWN_SOURCE_TYPES.iter().find(|k| **k == s) {
        return Some(k);
    }
    let mut interned = INTERNED.lock().unwrap();
    if let Some(k) = interned.iter().find(|k| **k == s) {
        return Some(k);
    }
    if interned.len() >= MAX_INTERNED {
        return None;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    interned.push(leaked);
    Some(leaked)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn optional_string(
    body: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>, String> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{key} must be a string, not {other}")),
    }
}

/// `POST /api/v1/logs`: one Go-shaped entry into the pipeline.
fn ingest(state: &ApiState, rq: &mut Incoming<'_>) -> Reply {
    let bad = |reason: String| {
        state.api_error("bad_request");
        Reply::error(400, &reason)
    };
    let raw = match rq.body(state.options.max_body_bytes) {
        Ok(b) => b,
        Err(reason) => return bad(reason),
    };
    let value: Value = match serde_json::from_slice(&raw) {
        Ok(v) => v,
        Err(e) => return bad(format!("invalid JSON: {e}")),
    };
    let Value::Object(body) = value else {
        return bad("the body must be a JSON object".into());
    };
    let message = match body.get("message") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return bad("message is required".into())
        }
        Some(other) => return bad(format!("message must be a string, not {other}")),
    };
    let (level, source_type, source_id) = match (
        optional_string(&body, "level"),
        optional_string(&body, "source_type"),
        optional_string(&body, "source_id"),
    ) {
        (Ok(l), Ok(t), Ok(i)) => (l, t, i),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return bad(e),
    };
    let mut labels = Labels::new();
    match body.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                match v {
                    Value::String(s) => {
                        labels.insert(k.clone(), s.clone());
                    }
                    other => return bad(format!("labels.{k} must be a string, not {other}")),
                }
            }
        }
        Some(other) => return bad(format!("labels must be an object of strings, not {other}")),
    }
    let processed_at_ns = now_ns();
    let timestamp_ns = match body.get("timestamp") {
        None | Some(Value::Null) => processed_at_ns,
        Some(Value::String(s)) if s.is_empty() || s == "0001-01-01T00:00:00Z" => processed_at_ns,
        Some(Value::String(s)) => match parse_rfc3339_nanos(s.as_bytes()) {
            Ok(ns) => ns,
            Err(e) => return bad(format!("timestamp is not RFC 3339: {e}")),
        },
        Some(other) => return bad(format!("timestamp must be an RFC 3339 string, not {other}")),
    };
    let requested_type = source_type.unwrap_or_else(|| "api".to_string());
    let source_type = match intern_source_type(&requested_type) {
        Some(t) => t,
        None => {
            labels.insert("source_type".into(), requested_type.clone());
            "api"
        }
    };
    let source_id = source_id.unwrap_or_else(|| "api".to_string());
    if let Some(level) = level {
        labels.insert("level".into(), level);
    }
    let mut entry = LogEntry {
        fields: Default::default(),
        timestamp_ns,
        processed_at_ns,
        message: Bytes::from(message),
        stream: StreamKind::Stdout,
        source_type,
        source_id: Arc::from(source_id.as_str()),
        labels: Arc::new(labels),
    };
    if let Some(p) = &state.processor {
        let source = crate::pipeline::processing::Source {
            source_type,
            labels: &entry.labels,
            path: None,
        };
        if let Some(id) = p.select(&source) {
            p.apply(id, &mut entry, "");
        }
    }
    let sender = state.ingest.lock().unwrap();
    let Some(tx) = sender.as_ref() else {
        state.api_error("unavailable");
        return Reply::error(503, "not accepting logs (shutting down, or --once)");
    };
    if tx.gauge().utilization() >= 1.0 {
        state.api_error("queue_full");
        return Reply::error(503, "queue full: retry later");
    }
    if tx
        .send(Batch {
            entries: vec![entry],
            checkpoints: Vec::new(),
            removed: Vec::new(),
            file_checkpoints: Vec::new(),
        })
        .is_err()
    {
        state.api_error("unavailable");
        return Reply::error(503, "the dispatcher is gone");
    }
    drop(sender);
    state.count_ingested(source_type, &source_id);
    Reply::json(
        202,
        &json!({
            "status": "accepted",
            "source_type": source_type,
            "source_id": source_id,
            "timestamp": format_rfc3339_nanos(timestamp_ns),
        }),
    )
}
