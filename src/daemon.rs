//! The daemon: configuration in, three threads wired together (four with file monitoring).
//!
//! - discovery (follow mode): container list, events and reconcile -> `ContainerEvent`s;
//! - capture: the io engine and one log stream per container -> batches of entries;
//! - files (`file_monitor_service.enabled`): monitored files -> batches of entries, into the
//!   same queue (`crate::sources::files`);
//! - dispatcher (the calling thread): batches -> every sink -> positions.
//!
//! Stop (SIGINT/SIGTERM, or the end of a `--once` read) flows the same way: capture closes
//! every stream, the files thread ends its last pass, and both drop their ends of the queue;
//! the dispatcher delivers what is left, flushes and commits.
//!
//! A thread that panics or an io engine that fails sets `stop` too, a second after
//! `/health` turned 503 (see [`crate::failure`]); `main` then exits 70.
//!
//! Docker at start: `--once` fails at once when the engine cannot be listed. Following, an
//! engine that does not answer is retried with backoff (up to [`STARTUP_RETRY_MAX`]) on the
//! discovery thread, which then goes on as usual; meanwhile everything else runs and
//! `/health` says degraded, so a capturer started before dockerd at boot waits for it. An
//! engine that answers the first attempt but whose API versions do not meet this program's
//! stops the start (exit 1); met later, it is retried like an absent one, `/health` naming it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::api::Shared;
use crate::config::{self, Config, NewContainersFrom};
use crate::dispatch::{DispatchOptions, Dispatcher, Undelivered};
use crate::io::{select_engine, EngineChoice};
use crate::pipeline::queue_bounded;
use crate::sink::{self, BlackholeSink, LocalFileSink, LokiSink, Sink, StdoutSink};
use crate::sources::docker::capture::{Capture, CaptureOptions, Discard};
use crate::sources::docker::discovery::{self, ContainerEvent, OwnContainer};
use crate::sources::docker::reader::LogReader;
use crate::sources::docker::{
    pinned_from_env, socket_path, Client, ContainerInfo, DockerStatus, ErrorKind,
};
use crate::state::positions::PositionStore;

/// How long failing sinks are retried after a stop before the rest is left for next time.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// What the shutdown may take beyond the dispatcher's [`SHUTDOWN_TIMEOUT`] and one sink
/// request: the capture's drain deadline, the io engine's own reaping at drop, the API's
/// connections. Past it the watchdog exits non-zero (see [`crate::failure`]).
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(20);

/// How long after a stop the process may take to exit before the watchdog ends it.
pub fn shutdown_deadline(config: &Config) -> Duration {
    let sink = if config.sinks.loki.enabled {
        config.sinks.loki.timeout
    } else {
        Duration::ZERO
    };
    SHUTDOWN_TIMEOUT + sink + SHUTDOWN_MARGIN
}

/// Longest wait between two attempts to reach a Docker engine that did not answer at start
/// (the first waits 100 ms, then twice as long each time).
pub const STARTUP_RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Read what is logged so far, deliver it, commit, exit.
    pub once: bool,
    /// Overrides `app.io_engine`.
    pub io_engine: Option<EngineChoice>,
    /// The pipelines of `processing` (loaded by the caller, so a bad file stops the start
    /// before anything runs).
    pub processor: Option<Arc<crate::pipeline::processing::Processor>>,
}

/// Builds the enabled sinks. At least one must be enabled.
pub fn build_sinks(config: &Config) -> Result<Vec<Box<dyn Sink>>, String> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let s = &config.sinks;
    if s.local_file.enabled {
        let f = &s.local_file;
        let options = sink::LocalFileOptions {
            directory: f.directory.clone(),
            filename_pattern: f.filename_pattern.clone(),
            filename_pattern_containers: f.filename_pattern_containers.clone().unwrap_or_default(),
            filename_pattern_files: f.filename_pattern_files.clone().unwrap_or_default(),
            output_format: f.output_format,
            text_format: sink::TextFormatOptions {
                include_timestamp: f.text_format.include_timestamp,
                timestamp_format: f.text_format.timestamp_format.clone(),
                include_labels: f.text_format.include_labels,
                field_separator: f.text_format.field_separator.clone(),
                raw_message_only: f.text_format.raw_message_only,
            },
            ..Default::default()
        };
        sinks.push(Box::new(
            LocalFileSink::new(options).map_err(|e| format!("sinks.local_file: {e}"))?,
        ));
    }
    if s.loki.enabled {
        let l = &s.loki;
        let options = sink::LokiOptions {
            url: l.url.clone(),
            push_endpoint: l.push_endpoint.clone(),
            tenant_id: l.tenant_id.clone(),
            timeout: l.timeout,
            batch_size: l.batch_size,
            batch_timeout: l.batch_timeout,
            headers: l.headers.clone(),
            default_labels: l.default_labels.clone(),
            auth: sink::LokiAuth {
                r#type: match l.auth.kind {
                    config::AuthType::None => "none",
                    config::AuthType::Basic => "basic",
                    config::AuthType::Bearer => "bearer",
                }
                .to_string(),
                username: l.auth.username.clone(),
                password: l.auth.password.clone(),
                token: l.auth.token.clone(),
            },
        };
        sinks.push(Box::new(
            LokiSink::new(options).map_err(|e| format!("sinks.loki: {e}"))?,
        ));
    }
    if s.stdout.enabled {
        sinks.push(Box::new(StdoutSink::new()));
    }
    if s.blackhole.enabled {
        sinks.push(Box::new(BlackholeSink::new()));
    }
    if sinks.is_empty() {
        return Err(
            "no sink enabled: enable one of sinks.local_file, sinks.loki, sinks.stdout, \
                    sinks.blackhole"
                .into(),
        );
    }
    Ok(sinks)
}

/// The first Docker call failed: when the socket is not there, say where its path comes from.
fn unreachable_message(socket: &std::path::Path, error: impl std::fmt::Display) -> String {
    if socket.exists() {
        return error.to_string();
    }
    format!(
        "{error}: no Docker socket at {}; point --docker-socket, DOCKER_HOST or \
         container_monitor.socket_path (SSW_DOCKER_SOCKET) at the engine's socket, or set \
         container_monitor.enabled: false to run without Docker",
        socket.display()
    )
}

/// The daemon's last word on its lines: `done: R lines read, D delivered, X dropped, U
/// undelivered; discarded: ...`, and whether `R (+ API lines) = D + X + U` holds. Tests parse
/// it.
fn log_accounting(shared: &Shared, api_lines: u64, undelivered: u64) {
    let read = shared.capture.lines_read.load(Relaxed) + shared.files.lines_read.load(Relaxed);
    let refused = shared.dispatch.lines_refused.load(Relaxed);
    let delivered = shared
        .dispatch
        .lines_delivered
        .load(Relaxed)
        .saturating_sub(refused);
    let discarded: Vec<String> = Discard::ALL
        .iter()
        .map(|&r| format!("{}={}", r.as_str(), shared.capture.discarded(r)))
        .collect();
    let api = if api_lines > 0 {
        format!(" (+{api_lines} from the API)")
    } else {
        String::new()
    };
    tracing::info!(
        "done: {read} lines read{api}, {delivered} delivered, {refused} dropped, \
         {undelivered} undelivered; discarded: {}",
        discarded.join(" ")
    );
    let out = delivered + refused + undelivered;
    if read + api_lines != out {
        tracing::error!(
            "accounting: {} lines read{api} but {out} delivered, dropped or undelivered",
            read
        );
    }
}

/// Runs the daemon until `stop` is set (or, with `--once`, until everything is read), and
/// returns what could not be delivered.
pub fn run(
    config: &Config,
    options: &RunOptions,
    stop: Arc<AtomicBool>,
) -> Result<Undelivered, String> {
    let cm = &config.container_monitor;
    // container_monitor.enabled: false (as in Go) means no Docker connection at all: no
    // discovery, no streams; the HTTP API, its ingest and the sinks still run.
    let socket: PathBuf = if cm.enabled {
        socket_path(&cm.socket_path)?
    } else {
        tracing::info!("container_monitor.enabled is false: Docker is not contacted");
        PathBuf::new()
    };
    let docker = Arc::new(DockerStatus::new(pinned_from_env()?));
    if let Some(pinned) = docker.pinned() {
        tracing::info!("docker API version {pinned}, pinned by DOCKER_API_VERSION");
    }
    let mut positions = if config.positions.enabled {
        PositionStore::load(&config.positions.directory).map_err(|e| e.to_string())?
    } else {
        tracing::info!("positions disabled: every container is read from its first line");
        PositionStore::in_memory()
    };
    // File monitoring: what to watch, and where each file was delivered up to.
    let file_plan = if config.file_monitor.enabled {
        positions.load_files().map_err(|e| e.to_string())?;
        Some(crate::sources::files::config::plan(&config.file_monitor)?)
    } else {
        None
    };
    let file_records = positions.files().clone();
    let committed: HashMap<String, _> = positions
        .iter()
        .filter_map(|(id, p)| p.resume().map(|r| (id.to_string(), r)))
        .collect();
    let committed_newest: HashMap<String, i64> = positions
        .iter()
        .filter(|(_, p)| p.resume().is_some())
        .filter_map(|(id, p)| p.last_log_time_ns.map(|n| (id.to_string(), n)))
        .collect();
    let positions = Arc::new(Mutex::new(positions));
    let sinks = build_sinks(config)?;
    let sink_names: Vec<&str> = sinks.iter().map(|s| s.name()).collect();
    tracing::info!("sinks: {}", sink_names.join(", "));

    let (tx, rx) = queue_bounded(
        config.dispatcher.queue_size,
        config.dispatcher.max_queue_bytes,
    );
    let shared = Shared {
        docker: docker.clone(),
        ..Shared::new(positions.clone(), tx.gauge().clone())
    };
    // The HTTP API's sender for POST /api/v1/logs (not in --once: nothing would close it).
    let api_tx = (!options.once).then(|| tx.clone());
    let files_tx = tx.clone();
    let choice = options
        .io_engine
        .unwrap_or_else(|| config.app.io_engine.as_str().parse().unwrap_or_default());
    let capture_options = CaptureOptions {
        rotation: if options.once {
            Duration::ZERO
        } else {
            cm.stream_rotation_interval
        },
        idle_timeout: if options.once {
            Duration::ZERO
        } else {
            cm.stream_idle_timeout
        },
        overlap: cm.since_overlap,
        // Hidden, for scripts/bench/reopen_cost.sh's "before": `off` reopens with the plain
        // `since` query and rotates every stream on time, as before the windows.
        reopen_window: std::env::var("LOGCAP_REOPEN_WINDOW").map_or(true, |v| v != "off"),
        follow: !options.once,
        new_from_now: cm.new_containers_from == NewContainersFrom::Now,
        include_stdout: cm.include_stdout,
        include_stderr: cm.include_stderr,
    };

    let client = Client::with_status(&socket, docker.clone());
    let (events_tx, events_rx) = mpsc::channel::<ContainerEvent>();
    // With --once, every container, stopped ones included: a backfill wants what they logged
    // too. Following, the containers that exited while the capturer was down: they still owe
    // the lines logged after the last commit, and discovery offers running containers only.
    let owed = Owed {
        once: options.once,
        committed: committed.keys().cloned().collect(),
        filter: discovery::filter_from_config(cm),
        own: OwnContainer::detect(),
        positions: positions.clone(),
    };
    // Following, the capture thread runs until stop whether or not anything sends it events.
    let discovery = if options.once || !cm.enabled {
        if cm.enabled {
            let list = client
                .containers(true)
                .map_err(|e| unreachable_message(&socket, e))?;
            owed.offer(list, &events_tx);
        }
        drop(events_tx);
        None
    } else {
        let first = client.containers(true);
        match &first {
            Err(e) if e.kind == ErrorKind::Incompatible => return Err(e.to_string()),
            Err(e) => tracing::warn!(
                "docker not usable at start ({}); retrying with backoff, /health says \
                 degraded until it answers",
                unreachable_message(&socket, e)
            ),
            Ok(_) => {}
        }
        let discovery = discovery::Discovery::new(
            client.clone(),
            discovery::filter_from_config(cm),
            cm.reconnect_interval,
        );
        let discovery_stop = stop.clone();
        Some(
            thread::Builder::new()
                .name("discovery".into())
                .spawn(move || {
                    let _running = crate::failure::global().running("discovery");
                    crate::failure::test_panic_wait("discovery", &discovery_stop);
                    let Some(list) = retry_list(&client, first, &discovery_stop) else {
                        return;
                    };
                    owed.offer(list, &events_tx);
                    discovery.run(events_tx, discovery_stop);
                })
                .map_err(|e| format!("discovery: {e}"))?,
        )
    };

    // The engine is built on its own thread: an io_uring ring set up with SINGLE_ISSUER only
    // takes submissions from the thread that created it.
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let capture_stop = stop.clone();
    let capture_shared = shared.clone();
    let processor = options.processor.clone();
    let capture = thread::Builder::new()
        .name("capture".into())
        .spawn(move || {
            let _running = crate::failure::global().running("capture");
            let (engine, selection) = match select_engine(choice) {
                Ok(pair) => pair,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            tracing::info!("{selection}");
            *capture_shared.io.lock().unwrap() = Some((engine.stats(), selection));
            let _ = ready_tx.send(Ok(()));
            let reader = LogReader::new(engine, &socket).with_docker_status(capture_shared.docker);
            let mut capture = Capture::new(
                reader,
                capture_options,
                tx,
                committed,
                capture_shared.capture,
                capture_shared.containers,
            )
            .with_committed_newest(committed_newest);
            if let Some(processor) = processor {
                capture.set_processor(processor);
            }
            capture.run(&events_rx, &capture_stop);
        })
        .map_err(|e| format!("capture thread: {e}"))?;
    if let Ok(Err(e)) = ready_rx.recv() {
        stop.store(true, Relaxed);
        let _ = capture.join();
        return Err(e);
    }

    // --- Monitored files (file_monitor_service): their own thread, the same queue.
    let files = match file_plan {
        Some(plan) => {
            let mut source = crate::sources::files::source::FileSource::new(
                plan,
                files_tx,
                shared.files.clone(),
                file_records,
            );
            if let Some(processor) = &options.processor {
                source.set_processor(processor.clone());
            }
            let files_stop = stop.clone();
            let once = options.once;
            Some(
                thread::Builder::new()
                    .name("files".into())
                    .spawn(move || {
                        let _running = crate::failure::global().running("files");
                        source.run(&files_stop, once)
                    })
                    .map_err(|e| format!("files thread: {e}"))?,
            )
        }
        None => {
            drop(files_tx);
            None
        }
    };

    // --- HTTP API (server.*) and metrics (metrics.*) servers: see src/api. They stop with
    // `stop` (dropping api_tx so the dispatcher sees the queue closed) and are joined below.
    let api_options = crate::api::ApiOptions {
        processor: options.processor.clone(),
        ..crate::api::ApiOptions::default()
    };
    let api =
        match crate::api::start_with(config, shared.clone(), api_tx, stop.clone(), api_options) {
            Ok(api) => api,
            Err(e) => {
                stop.store(true, Relaxed);
                let _ = capture.join();
                if let Some(discovery) = discovery {
                    let _ = discovery.join();
                }
                return Err(e);
            }
        };
    // --- end of the API block.

    let dispatcher = Dispatcher::new(
        rx,
        sinks,
        positions,
        DispatchOptions {
            batch_size: config.dispatcher.batch_size.max(1),
            batch_timeout: config.dispatcher.batch_timeout,
            commit_interval: config.positions.flush_interval,
            shutdown_timeout: SHUTDOWN_TIMEOUT,
            cleanup_interval: config.positions.cleanup_interval,
            max_position_age: config.positions.max_position_age,
        },
        shared.dispatch.clone(),
        shared.sink_timings.clone(),
        stop.clone(),
    );
    let undelivered = {
        let _running = crate::failure::global().running("dispatcher");
        dispatcher.run()
    };
    // A thread that panicked was reported by the panic hook (`crate::failure`).
    let _ = capture.join();
    if let Some(files) = files {
        let _ = files.join();
    }
    stop.store(true, Relaxed);
    let api_state = api.state.clone();
    {
        let _running = crate::failure::global().running("api");
        api.join();
    }
    if let Some(discovery) = discovery {
        let _ = discovery.join();
    }
    log_accounting(&shared, api_state.ingested_total(), undelivered.lines);
    for (container, lines) in &undelivered.by_container {
        tracing::warn!(
            "{container}: {lines} lines not delivered; they will be read again at the next start"
        );
    }
    Ok(undelivered)
}

/// Which containers of the start-up list to read before discovery takes over.
struct Owed {
    once: bool,
    /// Short ids with a committed position.
    committed: std::collections::HashSet<String>,
    filter: discovery::Filter,
    own: OwnContainer,
    positions: Arc<Mutex<PositionStore>>,
}

impl Owed {
    /// Offers the containers the start-up list shows owing lines (or all, with `--once`), and
    /// marks the positions of containers removed while the capturer was down.
    fn offer(&self, list: Vec<ContainerInfo>, tx: &mpsc::Sender<ContainerEvent>) {
        let gone = self
            .positions
            .lock()
            .unwrap()
            .mark_missing_removed(list.iter().map(|i| i.id.as_str()));
        if gone > 0 {
            tracing::info!(
                "{gone} positions belong to containers removed while the capturer was down: \
                 pruned after positions.max_position_age"
            );
        }
        for info in list {
            let owed = !info.running && self.committed.contains(&info.id[..info.id.len().min(12)]);
            if (self.once || owed)
                && (self.filter)(&info.name, &info.labels)
                && !self.own.is_own(&info.id)
            {
                let _ = tx.send(ContainerEvent::Running(info));
            }
        }
    }
}

/// The start-up list: `first`, or, while it failed, listing again with backoff until it
/// works. `None` when `stop` is set first.
fn retry_list(
    client: &Client,
    first: Result<Vec<ContainerInfo>, crate::sources::docker::ClientError>,
    stop: &AtomicBool,
) -> Option<Vec<ContainerInfo>> {
    let mut result = first;
    let mut delay = Duration::from_millis(100);
    let mut failed = false;
    loop {
        match result {
            Ok(list) => {
                if failed {
                    tracing::info!("docker reachable: {} containers", list.len());
                }
                return Some(list);
            }
            Err(e) => {
                failed = true;
                let until = std::time::Instant::now() + delay;
                while std::time::Instant::now() < until {
                    if stop.load(Relaxed) {
                        return None;
                    }
                    thread::sleep(Duration::from_millis(50));
                }
                delay = (delay * 2).min(STARTUP_RETRY_MAX);
                result = client.containers(true);
                if let Err(next) = &result {
                    if next.to_string() != e.to_string() {
                        tracing::warn!("docker still not usable: {next}");
                    } else {
                        tracing::debug!("docker still not usable: {next}");
                    }
                }
            }
        }
    }
}
