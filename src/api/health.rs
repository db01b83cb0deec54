//! `GET /health`: the Go keys (`status`, `timestamp`, `version`, `uptime`, `services`,
//! `checks`) and 503 when degraded. Degraded when any of:
//!
//! - the queue holds more than 70 % of `dispatcher.queue_size` or of
//!   `dispatcher.max_queue_bytes` (`checks.queue_utilization`);
//! - a sink has been failing (retrying, holding its batch) for longer than the retry budget,
//!   60 s (`checks.sink_connectivity`), or at once when its last error is one only the
//!   operator can fix, a Loki 401/403/404/407 (`checks.sink_connectivity.config_errors`, with
//!   the error);
//! - open file descriptors exceed 70 % of the process's soft `RLIMIT_NOFILE`
//!   (`checks.file_descriptors`);
//! - io ops in flight exceed twice the live streams plus [`IO_OPS_SLACK`]: every stream has at
//!   most a receive and a cancel in flight, so ops that keep growing while streams do not
//!   cross this line (`checks.io_ops`);
//! - the thread tracker is not healthy (growth over 10 threads per minute), as the Go version
//!   did with its goroutine tracker (`services.goroutine_tracker`);
//! - the last call to the Docker engine did not reach it, or the engine refused every API
//!   version this program speaks (`checks.docker`, with the reason, and
//!   `services.container_monitor`). Not yet having called it is not degraded;
//! - a thread panicked or the io engine failed (`checks.components`, naming each failed
//!   component and why; see [`crate::failure`]): the process is about to exit non-zero.
//!
//! `checks.containers_unreadable` is a note, never a degradation: the containers whose logging
//! driver cannot be read (dockerd answered 501).

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{json, Map, Value};

use super::{ApiState, DEGRADED_RATIO};
use crate::config::format_duration;
use crate::sources::docker::{DockerStatus, Reachability};
use crate::telemetry::procinfo;

/// The engine as the client sees it, for `/health` and `/debug/goroutines`.
pub(super) fn docker_object(docker: &DockerStatus) -> Value {
    let reach = docker.reachability();
    let (status_text, reachable, reason) = match &reach {
        Reachability::Unknown => ("healthy", Value::Null, Value::Null),
        Reachability::Up => ("healthy", json!(true), Value::Null),
        Reachability::Down(why) => ("degraded", json!(false), json!(why)),
    };
    let engine = docker.engine_versions();
    json!({
        "status": status_text,
        "reachable": reachable,
        "reason": reason,
        "api_version": docker.api_version().map(|v| v.to_string()),
        "api_version_pinned": docker.pinned().is_some(),
        "engine_api_version": engine.map(|e| e.max.to_string()),
        "engine_min_api_version": engine.and_then(|e| e.min).map(|v| v.to_string()),
    })
}

/// A note, not a degradation: containers whose logging driver cannot be read (by name, with
/// their short id), which the capturer does not read until they are recreated.
fn unreadable_check(capture: &crate::sources::docker::capture::CaptureStats) -> Value {
    let unreadable = capture.unreadable.lock().unwrap();
    let containers: Map<String, Value> = unreadable
        .iter()
        .map(|(id, name)| (name.clone(), json!(&id[..id.len().min(12)])))
        .collect();
    json!({
        "status": "healthy",
        "count": unreadable.len(),
        "containers": containers,
        "note": if unreadable.is_empty() {
            Value::Null
        } else {
            json!("logging driver cannot be read (dockerd answered 501): not captured until recreated with a readable driver (json-file, local, journald) or dual logging")
        },
    })
}

/// Ops in flight allowed above two per live stream (connects and sends of streams being
/// opened).
pub const IO_OPS_SLACK: i64 = 16;

/// The answer of `/health`.
#[derive(Debug, Clone)]
pub struct HealthReport {
    pub healthy: bool,
    pub body: Value,
}

fn percent(ratio: f64) -> String {
    format!("{:.2}%", ratio * 100.0)
}

fn status(ok: bool) -> &'static str {
    if ok {
        "healthy"
    } else {
        "degraded"
    }
}

pub fn health(state: &ApiState) -> HealthReport {
    let shared = &state.shared;
    let mut issues: Vec<String> = Vec::new();

    // Queue.
    let queue = &shared.queue;
    let utilization = queue.utilization();
    let queue_ok = utilization <= DEGRADED_RATIO;
    if !queue_ok {
        issues.push(format!(
            "queue at {} of its capacity (over {})",
            percent(utilization),
            percent(DEGRADED_RATIO)
        ));
    }

    // Sinks failing longer than the budget.
    let budget = state.options.sink_retry_budget;
    let mut failing = Map::new();
    let mut sinks_ok = true;
    for (sink, since) in shared.dispatch.failing_sinks.lock().unwrap().iter() {
        let for_secs = since.elapsed();
        failing.insert(
            sink.to_string(),
            json!((for_secs.as_secs_f64() * 10.0).round() / 10.0),
        );
        if for_secs > budget {
            sinks_ok = false;
            issues.push(format!(
                "sink {sink} failing for {} (budget {})",
                format_duration(std::time::Duration::from_secs(for_secs.as_secs())),
                format_duration(budget)
            ));
        }
    }

    let mut config_errors = Map::new();
    for (sink, error) in shared.dispatch.config_errors.lock().unwrap().iter() {
        sinks_ok = false;
        issues.push(format!("sink {sink} misconfigured: {error}"));
        config_errors.insert(sink.to_string(), json!(error));
    }

    // File descriptors.
    let open = procinfo::open_fds();
    let max = procinfo::max_fds();
    let fd_ratio = max.map_or(0.0, |m| open as f64 / m.max(1) as f64);
    let fds_ok = fd_ratio <= DEGRADED_RATIO;
    if !fds_ok {
        issues.push(format!(
            "{open} file descriptors open, {} of the limit",
            percent(fd_ratio)
        ));
    }

    // Ops in flight against live streams.
    let io = shared.io.lock().unwrap().clone();
    let (engine, ops, streams) = match &io {
        Some((stats, selection)) => {
            let s = stats.snapshot();
            (selection.kind.name(), s.ops_in_flight(), s.streams_live)
        }
        None => ("none", 0, 0),
    };
    let ops_limit = 2 * streams.max(0) + IO_OPS_SLACK;
    let io_ok = ops <= ops_limit;
    if !io_ok {
        issues.push(format!(
            "{ops} io ops in flight for {streams} live streams (limit {ops_limit})"
        ));
    }

    // Threads.
    let tracker = state.tracker.stats();
    let tracker_ok = tracker.status == "healthy";
    if !tracker_ok {
        issues.push(format!(
            "threads growing by {} per minute ({})",
            tracker.growth_rate_per_min, tracker.status
        ));
    }

    // Docker.
    let docker_ok = match shared.docker.reachability() {
        Reachability::Down(why) => {
            issues.push(format!("docker engine not usable: {why}"));
            false
        }
        Reachability::Unknown | Reachability::Up => true,
    };

    // Failed threads and engines.
    let failures = crate::failure::global().failures();
    let mut failed = Map::new();
    for f in &failures {
        issues.push(format!("{} failed: {}", f.component, f.reason));
        failed.insert(f.component.clone(), json!(f.reason));
    }
    let components_ok = failures.is_empty();

    let memory = procinfo::memory();
    let d = &shared.dispatch;
    let healthy =
        queue_ok && sinks_ok && fds_ok && io_ok && tracker_ok && docker_ok && components_ok;
    let uptime = state.started.elapsed();
    let body = json!({
        "status": status(healthy),
        "timestamp": procinfo::unix_now() as i64,
        "version": state.config.app.version,
        "uptime": format_duration(std::time::Duration::from_secs(uptime.as_secs())),
        "uptime_seconds": uptime.as_secs(),
        "services": {
            "dispatcher": {
                "status": status(queue_ok && sinks_ok),
                "stats": {
                    "processed": d.lines_delivered.load(Relaxed),
                    "batches": d.batches_delivered.load(Relaxed),
                    "retries": d.retries.load(Relaxed),
                    "dropped": d.dropped_total(),
                    "queue_size": queue.queued(),
                    "queue_capacity": queue.capacity(),
                },
            },
            "container_monitor": {
                "status": status(docker_ok),
                "enabled": state.config.container_monitor.enabled,
                "docker_api_version": shared.docker.api_version().map(|v| v.to_string()),
            },
            "goroutine_tracker": {
                "status": if tracker_ok { "healthy" } else { "warning" },
                "stats": tracker,
            },
            "io_engine": {
                "status": status(io_ok),
                "engine": engine,
            },
        },
        "checks": {
            "queue_utilization": {
                "status": status(queue_ok),
                "utilization": percent(utilization),
                "size": queue.queued(),
                "capacity": queue.capacity(),
                "bytes": queue.queued_bytes(),
                "max_bytes": queue.max_bytes(),
                "threshold": percent(DEGRADED_RATIO),
            },
            "memory": {
                "status": "healthy",
                "alloc_mb": memory.rss / (1024 * 1024),
                "sys_mb": memory.rss / (1024 * 1024),
                "rss_bytes": memory.rss,
                "goroutines": procinfo::threads(),
            },
            "sink_connectivity": {
                "status": status(sinks_ok),
                "failing_seconds": failing,
                "config_errors": config_errors,
                "retry_budget_seconds": budget.as_secs_f64(),
            },
            "file_descriptors": {
                "status": status(fds_ok),
                "open": open,
                "max": max,
                "utilization": percent(fd_ratio),
            },
            "io_ops": {
                "status": status(io_ok),
                "ops_in_flight": ops,
                "streams_active": streams,
                "limit": ops_limit,
            },
            "docker": docker_object(&shared.docker),
            "containers_unreadable": unreadable_check(&shared.capture),
            "components": {
                "status": if components_ok { "healthy" } else { "failed" },
                "failed": failed,
            },
        },
        "issues": issues,
    });
    let mut body = body;
    // Go shows its file monitor only when enabled.
    if state.config.file_monitor.enabled {
        let f = &shared.files;
        body["services"]["file_monitor"] = json!({
            "status": "healthy",
            "enabled": true,
            "files_monitored": f.monitored.load(Relaxed),
            "lines_read": f.lines_read.load(Relaxed),
            "watcher": if f.inotify.load(Relaxed) { "inotify" } else { "polling" },
        });
    }
    HealthReport { healthy, body }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::api::ApiOptions;
    use crate::api::Shared;
    use crate::config::Config;
    use crate::io::{EngineKind, IoStats, OpKind, Selection};
    use crate::pipeline::queue;
    use crate::state::positions::PositionStore;

    #[test]
    fn ops_outrunning_streams_degrade() {
        let dir = std::env::temp_dir().join(format!("logcap-health-{}", std::process::id()));
        let io = Arc::new(IoStats::default());
        let (tx, _rx) = queue(10);
        let shared = Shared::new(
            Arc::new(Mutex::new(PositionStore::load(&dir).unwrap())),
            tx.gauge().clone(),
        )
        .with_io(
            io.clone(),
            Selection {
                kind: EngineKind::Uring,
                reason: "test".into(),
            },
        );
        let options = ApiOptions {
            thread_count: || 5,
            ..ApiOptions::default()
        };
        let state = ApiState::new(&Config::defaults(), shared, None, options);
        for _ in 0..4 {
            io.stream_opened();
            io.op_submitted(OpKind::Recv);
        }
        assert!(health(&state).healthy);
        // 2 x 4 streams + slack = 24 allowed.
        for _ in 0..21 {
            io.op_submitted(OpKind::Recv);
        }
        let report = health(&state);
        assert!(!report.healthy);
        assert_eq!(report.body["checks"]["io_ops"]["status"], "degraded");
        assert_eq!(report.body["checks"]["io_ops"]["limit"], 24);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn docker_unreachable_degrades_and_says_why() {
        let dir = std::env::temp_dir().join(format!("logcap-health-d-{}", std::process::id()));
        let (tx, _rx) = queue(10);
        let docker = Arc::new(crate::sources::docker::DockerStatus::default());
        let shared = Shared {
            docker: docker.clone(),
            ..Shared::new(
                Arc::new(Mutex::new(PositionStore::load(&dir).unwrap())),
                tx.gauge().clone(),
            )
        };
        let options = ApiOptions {
            thread_count: || 5,
            ..ApiOptions::default()
        };
        let state = ApiState::new(&Config::defaults(), shared, None, options);
        // Not called yet: not a reason to degrade.
        assert!(health(&state).healthy);
        docker.mark_down("containers_list", "connect /x.sock: No such file".into());
        let report = health(&state);
        assert!(!report.healthy);
        assert_eq!(report.body["status"], "degraded");
        assert_eq!(report.body["checks"]["docker"]["reachable"], false);
        assert_eq!(
            report.body["checks"]["docker"]["reason"],
            "connect /x.sock: No such file"
        );
        assert_eq!(
            report.body["services"]["container_monitor"]["status"],
            "degraded"
        );
        let issues = report.body["issues"].to_string();
        assert!(issues.contains("connect /x.sock"), "{issues}");
        docker.mark_up();
        assert!(health(&state).healthy);
        assert_eq!(docker.errors()["containers_list"], 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sink_configuration_error_degrades_at_once() {
        let dir = std::env::temp_dir().join(format!("logcap-health-c-{}", std::process::id()));
        let (tx, _rx) = queue(10);
        let dispatch = Arc::new(crate::dispatch::DispatchStats::default());
        let shared = Shared {
            dispatch: dispatch.clone(),
            ..Shared::new(
                Arc::new(Mutex::new(PositionStore::load(&dir).unwrap())),
                tx.gauge().clone(),
            )
        };
        let options = ApiOptions {
            thread_count: || 5,
            ..ApiOptions::default()
        };
        let state = ApiState::new(&Config::defaults(), shared, None, options);
        assert!(health(&state).healthy);
        let error = "loki: http://l/loki/api/v1/push answered 401: \"no org id\"";
        dispatch
            .config_errors
            .lock()
            .unwrap()
            .insert("loki", error.into());
        let report = health(&state);
        assert!(!report.healthy);
        let check = &report.body["checks"]["sink_connectivity"];
        assert_eq!(check["status"], "degraded");
        assert_eq!(check["config_errors"]["loki"], error);
        dispatch.config_errors.lock().unwrap().clear();
        assert!(health(&state).healthy);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
