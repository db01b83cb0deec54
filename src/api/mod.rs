//! The HTTP API (`server.host:server.port`) and the metrics server (`metrics.host:metrics.port`)
//! of the Go version, on a small blocking HTTP/1.1 server with connection and time limits
//! (`server`), and plain threads.
//!
//! Routes, keys and status codes are listed in COMPATIBILITY.md. Everything is computed when
//! asked from what [`Shared`] holds; the only state kept here is the thread-count tracker
//! (`/goroutines/stats`), the response-time histograms, the positions commit lag and the
//! counters of `POST /api/v1/logs`.
//!
//! The daemon starts both with [`start`] once the capture thread is ready and calls
//! [`ApiServers::join`] after the dispatcher is done. Every thread here watches the daemon's
//! `stop` flag (checked every [`POLL`]); the queue sender of `POST /api/v1/logs` is dropped
//! as soon as it is seen, so the dispatcher can see the queue closed.

mod health;
mod metrics;
mod routes;
pub mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::dispatch::DispatchStats;
use crate::io::{IoStats, Selection};
use crate::pipeline::QueueGauge;
use crate::pipeline::QueueSender;
use crate::sources::docker::capture::CaptureStats;
use crate::sources::docker::DockerStatus;
use crate::state::positions::PositionStore;

pub use crate::telemetry::prom::CONTENT_TYPE as METRICS_CONTENT_TYPE;
pub use health::{HealthReport, IO_OPS_SLACK};

use crate::telemetry::{procinfo, prom, Histogram, ThreadTracker};

/// The engine that runs, and its live counters.
pub type EngineInfo = (Arc<IoStats>, Selection);

/// Everything the HTTP API and metrics read, shared across threads. The daemon fills it in
/// from the counters each layer keeps.
#[derive(Clone)]
pub struct Shared {
    pub capture: Arc<CaptureStats>,
    pub dispatch: Arc<DispatchStats>,
    pub positions: Arc<Mutex<PositionStore>>,
    /// Set once the capture thread has chosen its engine.
    pub io: Arc<Mutex<Option<EngineInfo>>>,
    pub queue: Arc<QueueGauge>,
    /// Per-container lines and monitored state, for the metrics (updated by capture).
    pub containers: Arc<crate::telemetry::ContainerRegistry>,
    /// Time spent in each sink's `write_batch`, for the metrics (updated by dispatch).
    pub sink_timings: Arc<crate::telemetry::SinkTimings>,
    /// The Docker engine as the client sees it: reachable, API version, failed calls.
    pub docker: Arc<DockerStatus>,
    /// The monitored files (`crate::sources::files`): lines read, files and where they are read up to.
    pub files: Arc<crate::sources::files::FileStats>,
}

impl Shared {
    /// Fresh counters around the positions and the queue; the io engine is filled in once the
    /// capture thread has chosen it ([`Shared::with_io`] where it is known up front).
    pub fn new(positions: Arc<Mutex<PositionStore>>, queue: Arc<QueueGauge>) -> Shared {
        Shared {
            capture: Arc::default(),
            dispatch: Arc::default(),
            positions,
            io: Arc::default(),
            queue,
            containers: Arc::default(),
            sink_timings: Arc::default(),
            docker: Arc::default(),
            files: Arc::default(),
        }
    }

    /// The engine that runs and its counters, as the capture thread records them.
    pub fn with_io(self, stats: Arc<IoStats>, selection: Selection) -> Shared {
        *self.io.lock().unwrap() = Some((stats, selection));
        self
    }
}

/// How often server and sampler threads look at the stop flag.
pub const POLL: Duration = Duration::from_millis(100);
/// Largest body `POST /api/v1/logs` accepts (the Go server's `max_header_bytes` default).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How long a sink may fail (retrying, holding its batch) before `/health` says degraded.
pub const SINK_RETRY_BUDGET: Duration = Duration::from_secs(60);
/// Queue, file descriptor share above which `/health` says degraded.
pub const DEGRADED_RATIO: f64 = 0.70;

/// Tunables, with the daemon's values as defaults.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    pub sink_retry_budget: Duration,
    pub max_body_bytes: usize,
    /// How often the live thread count is sampled for `/goroutines/stats` (Go: 30s).
    pub sample_interval: Duration,
    /// What the tracker counts: the live threads of the process (tests put a fixed count, as
    /// every test's servers share one process).
    pub thread_count: fn() -> usize,
    /// `processing`: the entries of `POST /api/v1/logs` go through it, and its counters are
    /// in `/metrics` (the daemon passes the capture's, so they count every source).
    pub processor: Option<Arc<crate::pipeline::processing::Processor>>,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            sink_retry_budget: SINK_RETRY_BUDGET,
            max_body_bytes: MAX_BODY_BYTES,
            sample_interval: Duration::from_secs(10),
            thread_count: procinfo::threads,
            processor: None,
        }
    }
}

/// Distinct `(source_type, source_id)` pairs of `POST /api/v1/logs` counted separately;
/// beyond, they count under `source_id="other"`.
const MAX_API_SERIES: usize = 1000;

/// Since when the positions have advances not yet committed.
#[derive(Debug)]
struct CommitLag {
    commits: u64,
    dirty_since: Option<Instant>,
}

/// What every request handler reads.
pub struct ApiState {
    shared: Shared,
    config: Config,
    options: ApiOptions,
    started: Instant,
    tracker: ThreadTracker,
    /// `response_time_seconds` by (endpoint, method).
    response_times: Mutex<BTreeMap<(&'static str, &'static str), Arc<Histogram>>>,
    ingest: Mutex<Option<QueueSender>>,
    /// Entries accepted by `POST /api/v1/logs`, by (source_type, source_id).
    ingested: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// `errors_total{component="api"}` by error_type.
    api_errors: Mutex<BTreeMap<&'static str, u64>>,
    commit_lag: Mutex<CommitLag>,
    /// Names of the enabled sinks (`Sink::name`).
    sinks: Vec<&'static str>,
    /// `processing`, for the entries of `POST /api/v1/logs` (mapped by their `source_type`
    /// and labels, like any source's).
    processor: Option<Arc<crate::pipeline::processing::Processor>>,
}

impl ApiState {
    pub fn new(
        config: &Config,
        shared: Shared,
        ingest: Option<QueueSender>,
        options: ApiOptions,
    ) -> Self {
        let s = &config.sinks;
        let sinks = [
            (s.local_file.enabled, "local_file"),
            (s.loki.enabled, "loki"),
            (s.stdout.enabled, "stdout"),
            (s.blackhole.enabled, "blackhole"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let commits = shared.positions.lock().unwrap().commits();
        let processor = options.processor.clone();
        ApiState {
            processor,
            tracker: ThreadTracker::with_counter(options.sample_interval, options.thread_count),
            shared,
            config: config.clone(),
            options,
            started: Instant::now(),
            response_times: Mutex::default(),
            ingest: Mutex::new(ingest),
            ingested: Mutex::default(),
            api_errors: Mutex::default(),
            commit_lag: Mutex::new(CommitLag {
                commits,
                dirty_since: None,
            }),
            sinks,
        }
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    pub fn tracker(&self) -> &ThreadTracker {
        &self.tracker
    }

    /// Drops the ingest queue sender: `POST /api/v1/logs` answers 503 from now on.
    pub fn close_ingest(&self) {
        self.ingest.lock().unwrap().take();
    }

    fn observe_response(&self, endpoint: &'static str, method: &'static str, took: Duration) {
        self.response_times
            .lock()
            .unwrap()
            .entry((endpoint, method))
            .or_insert_with(|| Arc::new(Histogram::new(prom::DEFAULT_BUCKETS)))
            .observe(took);
    }

    fn api_error(&self, error_type: &'static str) {
        *self
            .api_errors
            .lock()
            .unwrap()
            .entry(error_type)
            .or_default() += 1;
    }

    /// Entries accepted by `POST /api/v1/logs` since the start.
    pub fn ingested_total(&self) -> u64 {
        self.ingested.lock().unwrap().values().sum()
    }

    fn count_ingested(&self, source_type: &'static str, source_id: &str) {
        let mut map = self.ingested.lock().unwrap();
        let key = (source_type, source_id.to_string());
        if map.len() >= MAX_API_SERIES && !map.contains_key(&key) {
            *map.entry((source_type, "other".to_string())).or_default() += 1;
        } else {
            *map.entry(key).or_default() += 1;
        }
    }

    /// Seconds the oldest uncommitted position advance has waited (sampled every [`POLL`]
    /// by the sampler thread, and at every read).
    pub fn commit_lag_seconds(&self) -> f64 {
        self.update_commit_lag();
        self.commit_lag
            .lock()
            .unwrap()
            .dirty_since
            .map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    fn update_commit_lag(&self) {
        let (dirty, commits) = {
            let p = self.shared.positions.lock().unwrap();
            (p.dirty(), p.commits())
        };
        let mut lag = self.commit_lag.lock().unwrap();
        if commits != lag.commits {
            lag.commits = commits;
            lag.dirty_since = None;
        }
        if !dirty {
            lag.dirty_since = None;
        } else if lag.dirty_since.is_none() {
            lag.dirty_since = Some(Instant::now());
        }
    }
}

/// The running servers.
pub struct ApiServers {
    /// Where the API listens (`server.enabled`), with the real port when 0 was asked.
    pub api_addr: Option<SocketAddr>,
    /// Where the metrics server listens (`metrics.enabled`).
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<ApiState>,
    threads: Vec<JoinHandle<()>>,
}

impl ApiServers {
    /// Waits for every thread (they end within [`POLL`] of `stop`).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        self.state.close_ingest();
    }
}

/// Starts the API server (when `server.enabled`), the metrics server (when
/// `metrics.enabled`) and the thread-count sampler. `ingest` is the queue sender for
/// `POST /api/v1/logs` (`None`: that route answers 503); it is dropped once `stop` is set.
/// Fails when an address cannot be bound.
pub fn start(
    config: &Config,
    shared: Shared,
    ingest: Option<QueueSender>,
    stop: Arc<AtomicBool>,
) -> Result<ApiServers, String> {
    start_with(config, shared, ingest, stop, ApiOptions::default())
}

pub fn start_with(
    config: &Config,
    shared: Shared,
    ingest: Option<QueueSender>,
    stop: Arc<AtomicBool>,
    options: ApiOptions,
) -> Result<ApiServers, String> {
    let ingest = if config.server.enabled { ingest } else { None };
    let state = Arc::new(ApiState::new(config, shared, ingest, options));
    let mut threads = Vec::new();
    let mut api_addr = None;
    let mut metrics_addr = None;
    let result = (|| {
        if config.server.enabled {
            let addr = format!("{}:{}", config.server.host, config.server.port);
            let (bound, t) = server::spawn(
                "api",
                &addr,
                state.clone(),
                stop.clone(),
                routes::api_route,
                server::Limits::from_config(&config.server),
            )
            .map_err(|e| format!("server (HTTP API) on {addr}: {e}"))?;
            tracing::info!("HTTP API listening on {bound}");
            api_addr = Some(bound);
            threads.push(t);
        }
        if config.metrics.enabled {
            let addr = format!("{}:{}", config.metrics.host, config.metrics.port);
            let (bound, t) = server::spawn(
                "metrics",
                &addr,
                state.clone(),
                stop.clone(),
                routes::metrics_route,
                server::Limits::from_config(&config.server),
            )
            .map_err(|e| format!("metrics server on {addr}: {e}"))?;
            tracing::info!("metrics on http://{bound}{}", config.metrics.path);
            metrics_addr = Some(bound);
            threads.push(t);
        }
        let sampler_state = state.clone();
        let sampler_stop = stop.clone();
        let t = thread::Builder::new()
            .name("api-sampler".into())
            .spawn(move || sampler(&sampler_state, &sampler_stop))
            .map_err(|e| format!("sampler thread: {e}"))?;
        threads.push(t);
        Ok(())
    })();
    if let Err(e) = result {
        // Whatever started stops with the others when `stop` is set; the caller sets it.
        state.close_ingest();
        return Err(e);
    }
    // The baseline counts the threads of the servers just started.
    state.tracker.rebase();
    Ok(ApiServers {
        api_addr,
        metrics_addr,
        state,
        threads,
    })
}

fn sampler(state: &ApiState, stop: &AtomicBool) {
    let mut next = Instant::now() + state.tracker.interval();
    while !stop.load(Relaxed) {
        thread::sleep(POLL);
        state.update_commit_lag();
        if Instant::now() >= next {
            state.tracker.sample();
            next += state.tracker.interval();
        }
    }
    state.close_ingest();
}
