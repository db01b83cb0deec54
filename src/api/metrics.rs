//! `GET /metrics`: the Go version's metric names, labels and help texts (no prefix), then
//! ours. Every value is read at scrape time from [`crate::api::Shared`]. Where the reader
//! or dispatcher has not recorded the per-container or per-sink figure (see
//! [`crate::telemetry::registry`]), the family is still written, with the totals that exist.

use std::sync::atomic::Ordering::Relaxed;

use super::ApiState;
use crate::io::{OpKind, CANCEL_BUCKETS_NANOS};
use crate::sources::docker::capture::Discard;
use crate::telemetry::procinfo;
use crate::telemetry::prom::{Kind, Text};

/// The `pipeline` label of `logs_processed_total`: there are no processing pipelines here.
const PIPELINE: &str = "default";

pub fn render(state: &ApiState) -> String {
    let s = &state.shared;
    let mut t = Text::new();

    // --- Go names ---------------------------------------------------------------------
    t.family(
        "logs_processed_total",
        "Total number of logs processed",
        Kind::Counter,
    );
    if s.containers.is_used() {
        for c in s.containers.snapshot() {
            t.sample(
                "logs_processed_total",
                &[
                    ("source_type", "docker"),
                    ("source_id", &c.container_id),
                    ("pipeline", PIPELINE),
                ],
                c.lines as f64,
            );
        }
    } else {
        // Until the reader counts per container: all containers in one series.
        t.sample(
            "logs_processed_total",
            &[
                ("source_type", "docker"),
                ("source_id", ""),
                ("pipeline", PIPELINE),
            ],
            s.capture.lines_read.load(Relaxed) as f64,
        );
    }
    for ((source_type, source_id), n) in state.ingested.lock().unwrap().iter() {
        t.sample(
            "logs_processed_total",
            &[
                ("source_type", source_type),
                ("source_id", source_id),
                ("pipeline", PIPELINE),
            ],
            *n as f64,
        );
    }

    let delivered = s.dispatch.lines_delivered.load(Relaxed);
    let dropped = s.dispatch.dropped.lock().unwrap().clone();
    t.family(
        "logs_sent_total",
        "Total number of logs sent to sinks",
        Kind::Counter,
    );
    for sink in &state.sinks {
        let prefix = format!("{sink}_");
        let refused: u64 = dropped
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, n)| n)
            .sum();
        t.sample(
            "logs_sent_total",
            &[("sink_type", sink), ("status", "success")],
            delivered.saturating_sub(refused) as f64,
        );
        t.sample(
            "logs_sent_total",
            &[("sink_type", sink), ("status", "error")],
            refused as f64,
        );
    }

    t.family("errors_total", "Total number of errors", Kind::Counter);
    t.sample(
        "errors_total",
        &[
            ("component", "container_monitor"),
            ("error_type", "stream_error"),
        ],
        s.capture.stream_errors.load(Relaxed) as f64,
    );
    t.sample(
        "errors_total",
        &[
            ("component", "container_monitor"),
            ("error_type", "resume_mismatch"),
        ],
        s.capture.resume_mismatches.load(Relaxed) as f64,
    );
    for ((sink, status), n) in s.dispatch.sink_results.lock().unwrap().iter() {
        if *status == "error" {
            t.sample(
                "errors_total",
                &[("component", sink), ("error_type", "write_error")],
                *n as f64,
            );
        }
    }
    for (error_type, n) in state.api_errors.lock().unwrap().iter() {
        t.sample(
            "errors_total",
            &[("component", "api"), ("error_type", error_type)],
            *n as f64,
        );
    }

    let io = s.io.lock().unwrap().clone();
    let io_snapshot = io.as_ref().map(|(stats, _)| stats.snapshot());
    let streams_live = io_snapshot.map_or(0, |x| x.streams_live);

    t.family(
        "containers_monitored",
        "Number of containers being monitored",
        Kind::Gauge,
    );
    let containers = s.containers.snapshot();
    for c in &containers {
        t.sample(
            "containers_monitored",
            &[
                ("container_id", &c.container_id),
                ("container_name", &c.container_name),
                ("image", &c.image),
            ],
            if c.monitored { 1.0 } else { 0.0 },
        );
    }
    let total_containers = if s.containers.is_used() {
        containers.iter().filter(|c| c.monitored).count() as f64
    } else {
        // One stream per container read.
        streams_live.max(0) as f64
    };
    t.single(
        "total_containers_monitored",
        "Total number of containers being monitored",
        Kind::Gauge,
        total_containers,
    );
    // One series per monitored file, Go's labels.
    t.family(
        "files_monitored",
        "Number of files being monitored",
        Kind::Gauge,
    );
    let files = s.files.files.lock().unwrap().clone();
    for path in files.keys() {
        t.sample(
            "files_monitored",
            &[("filepath", path), ("source_type", "file")],
            1.0,
        );
    }
    t.single(
        "total_files_monitored",
        "Total number of files being monitored across all sources",
        Kind::Gauge,
        s.files.monitored.load(Relaxed) as f64,
    );

    t.single(
        "dispatcher_queue_utilization",
        "Current utilization of the dispatcher queue (0.0 to 1.0)",
        Kind::Gauge,
        s.queue.utilization(),
    );
    t.family("queue_size", "Current size of queues", Kind::Gauge);
    t.sample(
        "queue_size",
        &[("component", "dispatcher"), ("queue_type", "main")],
        s.queue.queued() as f64,
    );

    t.family(
        "sink_send_duration_seconds",
        "Time spent sending logs to sinks",
        Kind::Histogram,
    );
    let mut sinks: Vec<&'static str> = state.sinks.clone();
    for sink in s.sink_timings.sinks() {
        if !sinks.contains(&sink) {
            sinks.push(sink);
        }
    }
    for sink in sinks {
        s.sink_timings.histogram(sink).write(
            &mut t,
            "sink_send_duration_seconds",
            &[("sink_type", sink)],
        );
    }

    t.family(
        "response_time_seconds",
        "Response time in seconds",
        Kind::Histogram,
    );
    let response_times = state.response_times.lock().unwrap().clone();
    for ((endpoint, method), h) in response_times {
        h.write(
            &mut t,
            "response_time_seconds",
            &[("endpoint", endpoint), ("method", method)],
        );
    }

    let threads = procinfo::threads() as f64;
    let fds = procinfo::open_fds() as f64;
    t.single("goroutines", "Number of goroutines", Kind::Gauge, threads);
    t.single(
        "file_descriptors_open",
        "Number of open file descriptors",
        Kind::Gauge,
        fds,
    );

    // --- process metrics (as Go's process collector names them) ------------------------
    let times = procinfo::times();
    let memory = procinfo::memory();
    t.single(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        Kind::Counter,
        times.cpu_seconds,
    );
    t.single(
        "process_open_fds",
        "Number of open file descriptors.",
        Kind::Gauge,
        fds,
    );
    if let Some(max) = procinfo::max_fds() {
        t.single(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            Kind::Gauge,
            max as f64,
        );
    }
    t.single(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        Kind::Gauge,
        memory.virtual_size as f64,
    );
    t.single(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        Kind::Gauge,
        memory.rss as f64,
    );
    t.single(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        Kind::Gauge,
        times.start_time_seconds,
    );
    t.single(
        "process_threads",
        "Number of OS threads in the process.",
        Kind::Gauge,
        threads,
    );

    // --- ours ---------------------------------------------------------------------------
    t.family(
        "io_ops_in_flight",
        "io operations submitted and not yet reaped, by kind",
        Kind::Gauge,
    );
    for op in OpKind::ALL {
        let n = io.as_ref().map_or(0, |(stats, _)| stats.in_flight(op));
        t.sample("io_ops_in_flight", &[("op", op.name())], n as f64);
    }
    t.family(
        "io_engine_info",
        "The io engine reading the log streams (value 1)",
        Kind::Gauge,
    );
    if let Some((_, selection)) = &io {
        t.sample("io_engine_info", &[("engine", selection.kind.name())], 1.0);
    }
    t.single(
        "streams_active",
        "Log streams open (every op of a closed stream reaped)",
        Kind::Gauge,
        streams_live as f64,
    );
    t.single(
        "streams_stuck_closing",
        "Streams whose close has not completed long after it was asked (left to the io engine; \
         their containers read on new streams)",
        Kind::Gauge,
        s.capture.streams_stuck_closing.load(Relaxed) as f64,
    );
    t.single(
        "containers_unreadable",
        "Containers whose logging driver cannot be read (dockerd answered 501), until removed",
        Kind::Gauge,
        s.capture.unreadable.lock().unwrap().len() as f64,
    );
    t.single(
        "stream_rotations_total",
        "Log streams reopened at stream_rotation_interval: hung (a probe saw a newer line)",
        Kind::Counter,
        s.capture.rotations.load(Relaxed) as f64,
    );
    t.single(
        "stream_probes_total",
        "tail=1 probes of log streams silent for stream_rotation_interval",
        Kind::Counter,
        s.capture.stream_probes.load(Relaxed) as f64,
    );
    t.single(
        "stream_windows_widened_total",
        "Reopens whose tail window did not reach the resume point, reopened wider",
        Kind::Counter,
        s.capture.windows_widened.load(Relaxed) as f64,
    );
    t.single(
        "clock_steps_back_total",
        "Steps back of the wall clock seen (reopens can miss lines past since_overlap)",
        Kind::Counter,
        s.capture.clock_steps_back.load(Relaxed) as f64,
    );
    t.single(
        "stream_cancellations_total",
        "Streams closed with an op in flight, so that a cancel was submitted",
        Kind::Counter,
        io_snapshot.map_or(0, |x| x.cancellations) as f64,
    );
    t.single(
        "io_uring_cq_overflow_total",
        "Completions that waited on the kernel's CQ overflow list (io_uring; 0 on epoll)",
        Kind::Counter,
        io.as_ref().map_or(0, |(stats, _)| stats.cq_overflows()) as f64,
    );
    t.family(
        "stream_cancel_seconds",
        "Time from a stream's cancel to its last completion reaped",
        Kind::Histogram,
    );
    let bounds: Vec<f64> = CANCEL_BUCKETS_NANOS
        .iter()
        .map(|n| *n as f64 / 1e9)
        .collect();
    let hist = io
        .as_ref()
        .map(|(stats, _)| stats.cancel_histogram())
        .unwrap_or_else(|| crate::io::CancelHistogram {
            cumulative: vec![0; bounds.len()],
            count: 0,
            sum_nanos: 0,
        });
    t.histogram(
        "stream_cancel_seconds",
        &[],
        &bounds,
        &hist.cumulative,
        hist.count,
        hist.sum_nanos as f64 / 1e9,
    );
    t.family(
        "lines_dropped_total",
        "Lines given up on, by reason (a sink refusing them for good); a full queue pauses \
         reading instead of dropping",
        Kind::Counter,
    );
    // Every reason an enabled sink can give, at 0 until it happens.
    let mut by_reason: std::collections::BTreeMap<String, u64> = state
        .sinks
        .iter()
        .flat_map(|sink| crate::sink::drop_labels(sink))
        .map(|label| (label, 0))
        .collect();
    by_reason.extend(dropped.iter().map(|(k, n)| (k.clone(), *n)));
    for (reason, n) in &by_reason {
        t.sample("lines_dropped_total", &[("reason", reason)], *n as f64);
    }
    let docker = &s.docker;
    t.single(
        "docker_up",
        "1 when the last call to the Docker engine reached it (and its API versions meet ours)",
        Kind::Gauge,
        if docker.reachability() == crate::sources::docker::Reachability::Up {
            1.0
        } else {
            0.0
        },
    );
    t.family(
        "docker_api_errors_total",
        "Docker Engine API calls that failed, by endpoint (logs: log streams ended by an error)",
        Kind::Counter,
    );
    let mut api_errors = docker.errors();
    api_errors.insert("logs", s.capture.stream_errors.load(Relaxed));
    for endpoint in ["version", "containers_list", "containers_inspect", "events"] {
        api_errors.entry(endpoint).or_insert(0);
    }
    for (endpoint, n) in &api_errors {
        t.sample(
            "docker_api_errors_total",
            &[("endpoint", endpoint)],
            *n as f64,
        );
    }
    t.family(
        "docker_api_version_info",
        "The Docker Engine API version spoken (value 1), once negotiated or pinned",
        Kind::Gauge,
    );
    if let Some(version) = docker.api_version() {
        t.sample(
            "docker_api_version_info",
            &[("version", &version.to_string())],
            1.0,
        );
    }
    t.family(
        "lines_discarded_total",
        "Lines received and thrown away on purpose, by reason: repeat (a reopened stream's \
         overlap), filtered (stdout/stderr excluded), attach_duplicate (an attach line the log \
         stream delivered), attach_released (attach lines held when a safety net was \
         dropped), closing (lines of a stream being closed, read again when it reopens)",
        Kind::Counter,
    );
    for reason in Discard::ALL {
        t.sample(
            "lines_discarded_total",
            &[("reason", reason.as_str())],
            s.capture.discarded(reason) as f64,
        );
    }
    t.single(
        "attach_streams_opened_total",
        "Attach streams opened at container creation as a safety net for short-lived containers",
        Kind::Counter,
        s.capture.attaches_opened.load(Relaxed) as f64,
    );
    t.single(
        "attach_streams_answered_total",
        "Attach streams dockerd answered: from then on the container's output reaches the net",
        Kind::Counter,
        s.capture.attaches_answered.load(Relaxed) as f64,
    );
    t.single(
        "lines_from_attach_total",
        "Lines delivered from an attach because the log stream could not deliver them \
         (label capture_source=attach, stamped with the capture time)",
        Kind::Counter,
        s.capture.lines_from_attach.load(Relaxed) as f64,
    );
    t.family(
        "log_stream_first_byte_seconds",
        "Time from a container's start to its log stream's answer (starts while the capturer runs)",
        Kind::Histogram,
    );
    s.capture
        .first_byte
        .0
        .write(&mut t, "log_stream_first_byte_seconds", &[]);
    let processing = state.processor.as_ref().map(|p| p.stats().clone());
    let count = |f: fn(&crate::pipeline::processing::ProcessingStats) -> u64| {
        processing.as_deref().map_or(0.0, |s| f(s) as f64)
    };
    t.single(
        "processing_entries_total",
        "Entries that went through a processing pipeline (a joined multiline group once)",
        Kind::Counter,
        count(|s| s.entries.load(Relaxed)),
    );
    t.single(
        "processing_failures_total",
        "Entries on which a pipeline step failed (delivered as they came with skip_failed_logs)",
        Kind::Counter,
        count(|s| s.failed.load(Relaxed)),
    );
    t.single(
        "processing_lines_joined_total",
        "Lines joined into the entry of their group's first line by a multiline step",
        Kind::Counter,
        count(|s| s.joined.load(Relaxed)),
    );
    t.single(
        "positions_commit_lag_seconds",
        "How long the oldest position advance not yet committed to disk has waited (0: all committed)",
        Kind::Gauge,
        state.commit_lag_seconds(),
    );
    t.finish()
}
