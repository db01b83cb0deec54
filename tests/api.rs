//! The HTTP API and the metrics server against a synthetic `Shared` (no Docker): every route's
//! keys, content types and status codes, POST /api/v1/logs into the queue, the metric names
//! and labels, and the shutdown contract (the API's queue sender is dropped on stop).

#[path = "support/api_state.rs"]
mod api_state;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use log_capturer::api::Shared;
use log_capturer::api::{self, ApiOptions, ApiServers};
use log_capturer::config::Config;
use log_capturer::decode::StreamKind;
use log_capturer::pipeline::entry::{Labels, LogEntry};
use log_capturer::pipeline::{queue, Batch, QueueReceiver, QueueSender, Received};
use log_capturer::state::positions::PositionStore;

struct Fixture {
    servers: Option<ApiServers>,
    api: SocketAddr,
    metrics: SocketAddr,
    rx: QueueReceiver,
    /// A second sender, standing for the capture thread.
    tx: Option<QueueSender>,
    shared: Shared,
    stop: Arc<AtomicBool>,
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(s) = self.servers.take() {
            s.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "logcap-api-{name}-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn test_config() -> Config {
    let mut config = Config::defaults();
    config.app.version = "v9.9.9-test".into();
    config.server.enabled = true;
    config.server.host = "127.0.0.1".into();
    config.server.port = 0;
    config.metrics.enabled = true;
    config.metrics.host = "127.0.0.1".into();
    config.metrics.port = 0;
    config.sinks.loki.enabled = true;
    config.sinks.loki.auth.password = "hunter2-secret".into();
    config
}

fn fixture_with(name: &str, capacity: usize, options: ApiOptions) -> Fixture {
    let dir = temp_dir(name);
    let (tx, rx) = queue(capacity);
    let shared = api_state::shared(&dir, tx.gauge(), "test");
    let stop = Arc::new(AtomicBool::new(false));
    let servers = api::start_with(
        &test_config(),
        shared.clone(),
        Some(tx.clone()),
        stop.clone(),
        options,
    )
    .expect("servers start");
    Fixture {
        api: servers.api_addr.expect("api bound"),
        metrics: servers.metrics_addr.expect("metrics bound"),
        servers: Some(servers),
        rx,
        tx: Some(tx),
        shared,
        stop,
        dir,
    }
}

/// Options for tests: every test's servers share this process, so the thread tracker counts
/// a fixed number instead of the process's threads.
fn options() -> ApiOptions {
    ApiOptions {
        thread_count: || 20,
        ..ApiOptions::default()
    }
}

fn fixture(name: &str) -> Fixture {
    fixture_with(name, 100, options())
}

struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .map(String::as_str)
            .unwrap_or("")
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.unwrap_or(b"");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, None)
}

fn post(addr: SocketAddr, path: &str, body: &str) -> Answer {
    request(addr, "POST", path, Some(body.as_bytes()))
}

fn assert_keys(v: &Value, keys: &[&str]) {
    for k in keys {
        assert!(v.get(k).is_some(), "key {k} missing in {v}");
    }
}

fn entries(n: usize) -> Batch {
    Batch {
        entries: (0..n)
            .map(|i| LogEntry {
                fields: Default::default(),
                timestamp_ns: i as i64,
                processed_at_ns: i as i64,
                message: Bytes::from(format!("line {i}")),
                stream: StreamKind::Stdout,
                source_type: "docker",
                source_id: Arc::from("0123456789ab"),
                labels: Arc::new(Labels::new()),
            })
            .collect(),
        checkpoints: Vec::new(),
        removed: Vec::new(),
        file_checkpoints: Vec::new(),
    }
}

#[test]
fn health_has_the_go_keys_and_200_when_healthy() {
    let f = fixture("health");
    let a = get(f.api, "/health");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.content_type(), "application/json");
    let v = a.json();
    assert_keys(
        &v,
        &[
            "status",
            "timestamp",
            "version",
            "uptime",
            "services",
            "checks",
        ],
    );
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["version"], "v9.9.9-test");
    assert!(v["timestamp"].as_i64().unwrap() > 1_600_000_000);
    assert!(v["uptime"].as_str().unwrap().ends_with('s'));
    assert_keys(
        &v["services"],
        &["dispatcher", "container_monitor", "goroutine_tracker"],
    );
    assert_keys(
        &v["checks"],
        &[
            "queue_utilization",
            "memory",
            "sink_connectivity",
            "file_descriptors",
            "io_ops",
        ],
    );
    assert_keys(
        &v["checks"]["queue_utilization"],
        &["status", "utilization", "size", "capacity"],
    );
    assert_keys(
        &v["checks"]["memory"],
        &["status", "alloc_mb", "sys_mb", "goroutines"],
    );
    assert_keys(
        &v["checks"]["file_descriptors"],
        &["status", "open", "max", "utilization"],
    );
    assert!(v["checks"]["file_descriptors"]["max"].as_u64().unwrap() > 0);
}

#[test]
fn health_is_503_degraded_when_the_queue_is_over_70_percent() {
    let f = fixture("health-queue");
    f.tx.as_ref().unwrap().send(entries(71)).unwrap();
    let a = get(f.api, "/health");
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.content_type(), "application/json");
    let v = a.json();
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["checks"]["queue_utilization"]["status"], "degraded");
    assert_eq!(v["checks"]["queue_utilization"]["utilization"], "71.00%");
    assert_eq!(v["checks"]["queue_utilization"]["size"], 71);
    // Delivered: healthy again.
    f.rx.release(&entries(71).entries);
    assert_eq!(get(f.api, "/health").status, 200);
}

#[test]
fn health_is_503_when_a_sink_fails_past_its_retry_budget() {
    let f = fixture_with(
        "health-sink",
        100,
        ApiOptions {
            sink_retry_budget: Duration::from_secs(60),
            ..options()
        },
    );
    let failing = &f.shared.dispatch.failing_sinks;
    failing.lock().unwrap().insert("loki", Instant::now());
    assert_eq!(get(f.api, "/health").status, 200, "within the budget");
    let long_ago = Instant::now()
        .checked_sub(Duration::from_secs(61))
        .expect("the clock is past a minute");
    failing.lock().unwrap().insert("loki", long_ago);
    let a = get(f.api, "/health");
    assert_eq!(a.status, 503, "{}", a.body);
    let v = a.json();
    assert_eq!(v["checks"]["sink_connectivity"]["status"], "degraded");
    assert!(v["checks"]["sink_connectivity"]["failing_seconds"]["loki"]
        .as_f64()
        .is_some_and(|s| s >= 61.0));
}

#[test]
fn stats_config_positions_answer_json() {
    let f = fixture("stats");
    let a = get(f.api, "/stats");
    assert_eq!((a.status, a.content_type()), (200, "application/json"));
    let v = a.json();
    assert_keys(
        &v,
        &[
            "application",
            "dispatcher",
            "positions",
            "resources",
            "goroutines",
            "io",
        ],
    );
    assert_keys(
        &v["application"],
        &["name", "version", "uptime", "goroutines", "timestamp"],
    );
    assert_keys(
        &v["dispatcher"],
        &["queue_size", "queue_capacity", "processed"],
    );

    let a = get(f.api, "/config");
    assert_eq!((a.status, a.content_type()), (200, "application/json"));
    assert!(!a.body.contains("hunter2-secret"), "{}", a.body);
    let v = a.json();
    assert_keys(
        &v,
        &[
            "app",
            "server",
            "metrics",
            "dispatcher",
            "sinks",
            "positions",
        ],
    );
    assert_eq!(v["sinks"]["loki"]["auth"]["password"], "***");

    let a = get(f.api, "/positions");
    assert_eq!((a.status, a.content_type()), (200, "application/json"));
    let v = a.json();
    assert_keys(&v, &["directory", "file", "total", "containers", "files"]);
    assert_eq!(v["total"], 0);
}

#[test]
fn debug_goroutines_has_the_go_keys_and_an_io_object() {
    let f = fixture("debug");
    let a = get(f.api, "/debug/goroutines");
    assert_eq!((a.status, a.content_type()), (200, "application/json"));
    let v = a.json();
    assert_keys(
        &v,
        &[
            "goroutines",
            "cpus",
            "timestamp",
            "memory",
            "tracker_stats",
            "io",
            "file_descriptors",
        ],
    );
    // The servers' own threads at least.
    assert!(v["goroutines"].as_u64().unwrap() >= 3);
    assert_keys(&v["memory"], &["alloc", "sys", "rss_bytes"]);
    assert!(v["memory"]["rss_bytes"].as_u64().unwrap() > 0);
    assert_keys(
        &v["io"],
        &[
            "engine",
            "ops_in_flight",
            "streams_active",
            "rotations_total",
            "cancellations_total",
        ],
    );
    assert_eq!(v["io"]["engine"], "epoll");
}

#[test]
fn goroutines_stats_has_the_tracker_keys() {
    let f = fixture("tracker");
    let a = get(f.api, "/goroutines/stats");
    assert_eq!((a.status, a.content_type()), (200, "application/json"));
    let v = a.json();
    assert_keys(
        &v,
        &[
            "baseline_goroutines",
            "current_goroutines",
            "total_growth",
            "growth_rate_per_min",
            "samples_collected",
            "status",
        ],
    );
    assert!(["healthy", "warning", "critical"].contains(&v["status"].as_str().unwrap()));
}

#[test]
fn post_logs_is_accepted_into_the_queue() {
    let f = fixture("ingest");
    let a = post(
        f.api,
        "/api/v1/logs",
        r#"{"message":"hello from api","level":"warn","source_type":"webhook",
            "source_id":"svc-1","labels":{"team":"core"},
            "timestamp":"2024-01-15T10:30:00.123456789Z"}"#,
    );
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.content_type(), "application/json");
    let v = a.json();
    assert_eq!(v["status"], "accepted");
    let batch = match f.rx.recv(Duration::from_secs(5)) {
        Received::Batch(b) => b,
        _ => panic!("no batch"),
    };
    assert!(batch.checkpoints.is_empty());
    let e = &batch.entries[0];
    assert_eq!(&e.message[..], b"hello from api");
    assert_eq!(e.source_type, "webhook");
    assert_eq!(&*e.source_id, "svc-1");
    assert_eq!(e.label("team"), Some("core"));
    assert_eq!(e.label("level"), Some("warn"));
    assert_eq!(e.timestamp_ns, 1_705_314_600_123_456_789);
    assert!(e.processed_at_ns > e.timestamp_ns);

    // Defaults: source_type "api", now as timestamp.
    assert_eq!(
        post(f.api, "/api/v1/logs", r#"{"message":"x"}"#).status,
        202
    );
    let batch = match f.rx.recv(Duration::from_secs(5)) {
        Received::Batch(b) => b,
        _ => panic!("no batch"),
    };
    let e = &batch.entries[0];
    assert_eq!(e.source_type, "api");
    assert_eq!(e.timestamp_ns, e.processed_at_ns);

    // Counted per source.
    let m = get(f.api, "/metrics").body;
    assert!(
        m.contains(
            "logs_processed_total{source_type=\"webhook\",source_id=\"svc-1\",pipeline=\"default\"} 1\n"
        ),
        "{m}"
    );
}

#[test]
fn post_logs_rejects_bad_bodies_with_400_and_the_reason() {
    let f = fixture_with(
        "ingest-bad",
        100,
        ApiOptions {
            max_body_bytes: 1024,
            ..options()
        },
    );
    let cases: &[(&str, &str)] = &[
        (r#"{"level":"info"}"#, "message is required"),
        (r#"{"message":""}"#, "message is required"),
        (r#"{"message":5}"#, "message must be a string"),
        ("not json", "invalid JSON"),
        ("[1,2]", "must be a JSON object"),
        (
            r#"{"message":"m","labels":{"a":1}}"#,
            "labels.a must be a string",
        ),
        (
            r#"{"message":"m","timestamp":"yesterday"}"#,
            "timestamp is not RFC 3339",
        ),
    ];
    for (body, reason) in cases {
        let a = post(f.api, "/api/v1/logs", body);
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert_eq!(a.content_type(), "application/json");
        let err = a.json()["error"].as_str().unwrap().to_string();
        assert!(err.contains(reason), "{body}: {err}");
    }
    let big = format!(r#"{{"message":"{}"}}"#, "x".repeat(2000));
    let a = post(f.api, "/api/v1/logs", &big);
    assert_eq!(a.status, 400);
    assert!(a.json()["error"]
        .as_str()
        .unwrap()
        .contains("over the limit"));
    assert!(matches!(
        f.rx.recv(Duration::from_millis(100)),
        Received::Timeout
    ));
    // Wrong method, unknown route.
    let a = get(f.api, "/api/v1/logs");
    assert_eq!(a.status, 405);
    assert_eq!(a.headers.get("allow").map(String::as_str), Some("POST"));
    assert_eq!(post(f.api, "/health", "{}").status, 405);
    assert_eq!(get(f.api, "/nope").status, 404);
    // Counted as API errors.
    let m = get(f.api, "/metrics").body;
    assert!(
        m.contains("errors_total{component=\"api\",error_type=\"bad_request\"} 8\n"),
        "{m}"
    );
}

#[test]
fn post_logs_is_503_when_the_queue_is_full() {
    let f = fixture_with("ingest-full", 10, options());
    f.tx.as_ref().unwrap().send(entries(10)).unwrap();
    let a = post(f.api, "/api/v1/logs", r#"{"message":"m"}"#);
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.json()["error"].as_str().unwrap().contains("queue full"));
}

/// Every metric family of the Go version and ours, with its labels.
const EXPECTED: &[&str] = &[
    "# TYPE logs_processed_total counter",
    "logs_processed_total{source_type=\"docker\",source_id=\"0123456789ab\",pipeline=\"default\"} 7",
    "# TYPE logs_sent_total counter",
    "logs_sent_total{sink_type=\"loki\",status=\"success\"} 40",
    "logs_sent_total{sink_type=\"loki\",status=\"error\"} 2",
    "# TYPE errors_total counter",
    "errors_total{component=\"container_monitor\",error_type=\"stream_error\"} 3",
    "errors_total{component=\"loki\",error_type=\"write_error\"} 4",
    "# TYPE containers_monitored gauge",
    "containers_monitored{container_id=\"0123456789ab\",container_name=\"web\",image=\"nginx:1\"} 1",
    "# TYPE total_containers_monitored gauge",
    "total_containers_monitored 1",
    "# TYPE files_monitored gauge",
    "total_files_monitored 0",
    "# TYPE dispatcher_queue_utilization gauge",
    "dispatcher_queue_utilization 0.05",
    "# TYPE queue_size gauge",
    "queue_size{component=\"dispatcher\",queue_type=\"main\"} 5",
    "# TYPE sink_send_duration_seconds histogram",
    "sink_send_duration_seconds_bucket{sink_type=\"loki\",le=\"0.25\"} 1",
    "sink_send_duration_seconds_count{sink_type=\"loki\"} 1",
    "sink_send_duration_seconds_count{sink_type=\"local_file\"} 0",
    "# TYPE response_time_seconds histogram",
    "response_time_seconds_count{endpoint=\"/health\",method=\"GET\"} 1",
    "# TYPE goroutines gauge",
    "# TYPE file_descriptors_open gauge",
    "# TYPE process_cpu_seconds_total counter",
    "# TYPE process_open_fds gauge",
    "# TYPE process_max_fds gauge",
    "# TYPE process_resident_memory_bytes gauge",
    "# TYPE process_virtual_memory_bytes gauge",
    "# TYPE process_start_time_seconds gauge",
    "# TYPE io_ops_in_flight gauge",
    "io_ops_in_flight{op=\"connect\"} 0",
    "io_ops_in_flight{op=\"send\"} 0",
    "io_ops_in_flight{op=\"recv\"} 0",
    "io_ops_in_flight{op=\"cancel\"} 0",
    "# TYPE io_engine_info gauge",
    "io_engine_info{engine=\"epoll\"} 1",
    "# TYPE streams_active gauge",
    "streams_active 0",
    "# TYPE stream_rotations_total counter",
    "stream_rotations_total 6",
    "# TYPE stream_cancellations_total counter",
    "stream_cancellations_total 0",
    "# TYPE stream_cancel_seconds histogram",
    "stream_cancel_seconds_bucket{le=\"0.001\"} 0",
    "stream_cancel_seconds_bucket{le=\"+Inf\"} 0",
    "stream_cancel_seconds_count 0",
    "# TYPE lines_dropped_total counter",
    "lines_dropped_total{reason=\"loki_rejected\"} 2",
    "# TYPE lines_discarded_total counter",
    "lines_discarded_total{reason=\"repeat\"} 0",
    "lines_discarded_total{reason=\"attach_duplicate\"} 0",
    "# TYPE log_stream_first_byte_seconds histogram",
    "log_stream_first_byte_seconds_count 0",
    "# TYPE positions_commit_lag_seconds gauge",
    "positions_commit_lag_seconds 0",
    "lines_discarded_total{reason=\"replay\"} 9",
];

#[test]
fn metrics_have_every_name_and_label_on_both_ports() {
    let f = fixture("metrics");
    let s = &f.shared;
    s.capture.stream_errors.store(3, Relaxed);
    s.capture.rotations.store(6, Relaxed);
    s.capture.lines_replayed.store(9, Relaxed);
    s.dispatch.lines_delivered.store(42, Relaxed);
    s.dispatch
        .dropped
        .lock()
        .unwrap()
        .insert("loki_rejected".into(), 2);
    s.dispatch
        .sink_results
        .lock()
        .unwrap()
        .insert(("loki", "error"), 4);
    s.containers
        .monitored("0123456789abcdef", "/web", "nginx:1")
        .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
    s.sink_timings.observe("loki", Duration::from_millis(200));
    f.tx.as_ref().unwrap().send(entries(5)).unwrap();
    assert_eq!(get(f.api, "/health").status, 200);

    for (addr, path) in [(f.api, "/metrics"), (f.metrics, "/metrics")] {
        let a = get(addr, path);
        assert_eq!(a.status, 200);
        assert!(
            a.content_type().starts_with("text/plain; version=0.0.4"),
            "{}",
            a.content_type()
        );
        for line in EXPECTED {
            assert!(
                a.body.lines().any(|l| l == *line),
                "missing line `{line}` on {addr}{path}:\n{}",
                a.body
            );
        }
        // Every sample line is `name{labels} value` with a number.
        for l in a.body.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            assert!(
                value.parse::<f64>().is_ok() || value == "+Inf",
                "bad sample line: {l}"
            );
        }
    }
}

#[test]
fn metrics_port_health_answers_ok() {
    let f = fixture("metrics-health");
    let a = get(f.metrics, "/health");
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "OK");
    assert!(a.content_type().starts_with("text/plain"));
    assert_eq!(get(f.metrics, "/other").status, 404);
}

#[test]
fn stop_drops_the_api_sender_so_the_queue_closes() {
    let mut f = fixture("stop");
    drop(f.tx.take());
    // The API's sender still holds the queue open.
    assert!(matches!(
        f.rx.recv(Duration::from_millis(100)),
        Received::Timeout
    ));
    f.stop.store(true, Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f.rx.recv(Duration::from_millis(100)) {
            Received::Closed => break,
            _ if Instant::now() > deadline => panic!("queue not closed after stop"),
            _ => {}
        }
    }
    f.servers.take().unwrap().join();
}

// ---------------------------------------------------------------------------------------------
// Figures an operator can trust (issue 10, section 4).

#[test]
fn health_sys_mb_is_resident_memory_not_virtual_size() {
    let f = fixture("health-sys-mb");
    let v = get(f.api, "/health").json();
    let memory = &v["checks"]["memory"];
    let rss = memory["rss_bytes"].as_u64().expect("rss_bytes");
    // One snapshot feeds both, so they agree exactly; the virtual size of a process with a
    // few threads is hundreds of MiB more than what it holds.
    assert_eq!(
        memory["sys_mb"].as_u64(),
        Some(rss / (1024 * 1024)),
        "{memory}"
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vm_size_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        memory["sys_mb"].as_u64().unwrap() < vm_size_kb / 1024,
        "sys_mb {} is not below the virtual size {} MiB",
        memory["sys_mb"],
        vm_size_kb / 1024
    );
}

#[test]
fn lines_dropped_total_shows_every_known_reason_at_zero_from_the_start() {
    let f = fixture("dropped-zero");
    let body = get(f.metrics, "/metrics").body;
    // The fixture enables loki and local_file.
    let mut want = log_capturer::sink::drop_labels("loki");
    want.extend(log_capturer::sink::drop_labels("local_file"));
    assert!(want.iter().any(|l| l == "loki_out_of_order"), "{want:?}");
    for label in &want {
        let line = format!("lines_dropped_total{{reason=\"{label}\"}} 0");
        assert!(body.lines().any(|l| l == line), "missing `{line}`:\n{body}");
    }
    // A drop the dispatcher counted shows under the same label, not beside a zero twin.
    f.shared
        .dispatch
        .dropped
        .lock()
        .unwrap()
        .insert(log_capturer::sink::drop_label("loki", "loki_too_old"), 3);
    let body = get(f.metrics, "/metrics").body;
    let too_old: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("lines_dropped_total{reason=\"loki_too_old\"}"))
        .collect();
    assert_eq!(
        too_old,
        vec!["lines_dropped_total{reason=\"loki_too_old\"} 3"]
    );
}

// ---------------------------------------------------------------------------------------------
// Processing pipelines (issue 14): POST /api/v1/logs entries go through their pipeline too.

#[test]
fn post_logs_go_through_the_pipeline_their_source_type_maps() {
    let dir = temp_dir("processing");
    let mut config = test_config();
    config.processing.enabled = true;
    config.processing.pipelines_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pipelines_all_steps.yaml");
    let processor = log_capturer::pipeline::processing::Processor::from_config(&config.processing)
        .unwrap()
        .map(Arc::new);
    let (tx, rx) = queue(100);
    let shared = Shared::new(
        Arc::new(Mutex::new(PositionStore::load(&dir).unwrap())),
        tx.gauge().clone(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let servers = api::start_with(
        &config,
        shared,
        Some(tx),
        stop.clone(),
        ApiOptions {
            processor,
            ..options()
        },
    )
    .unwrap();
    let addr = servers.api_addr.unwrap();
    // `source_type:api` maps to the fixture's `json` pipeline: the message is flattened.
    let a = post(
        addr,
        "/api/v1/logs",
        r#"{"message":"{\"user\":{\"id\":7},\"trace_id\":\"t\"}","labels":{"team":"core"}}"#,
    );
    assert_eq!(a.status, 202, "{}", a.body);
    let Received::Batch(batch) = rx.recv(Duration::from_secs(5)) else {
        panic!("no batch")
    };
    let labels: Vec<(&str, &str)> = batch.entries[0].labels_iter().collect();
    assert_eq!(
        labels,
        [("service", "json"), ("team", "core"), ("user.id", "7")]
    );
    let m = get(addr, "/metrics").body;
    assert!(m.contains("\nprocessing_entries_total 1\n"), "{m}");
    stop.store(true, Relaxed);
    servers.join();
    let _ = std::fs::remove_dir_all(&dir);
}
