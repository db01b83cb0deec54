//! `log_capturer`: captures the logs of a Docker engine's containers and ships them to the
//! configured sinks, resuming exactly where it left off.
//!
//! The same program is also built as `ssw-logs-capture` (`src/bin/ssw-logs-capture.rs`), the
//! Go binary's name, so units, Dockerfiles and scripts written for it run unchanged; and it
//! takes Go's single-dash flags (`-config PATH`) as well as `--config PATH`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use log_capturer::config::{Config, ConfigError, LogFormat, EXPECT_DOCKER_SOCKET};
use log_capturer::daemon::{self, RunOptions};
use log_capturer::failure::{self, EXIT_SOFTWARE, FAILURE_HEALTH_GRACE};
use log_capturer::io::EngineChoice;
use log_capturer::pipeline::processing::Processor;
use log_capturer::state::lock::StateLock;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file (else SSW_CONFIG_FILE, else /app/configs/config.yaml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Read what the matching containers have logged so far, deliver it, commit the positions
    /// and exit.
    #[arg(long)]
    once: bool,
    /// Overrides app.io_engine: auto (io_uring, else epoll), uring or epoll.
    #[arg(long)]
    io_engine: Option<EngineChoice>,
    /// Overrides container_monitor.socket_path (unix:///path or /path).
    #[arg(long)]
    docker_socket: Option<String>,
    /// Probe a running capturer instead of starting one: GET this URL (e.g.
    /// http://localhost:8001/health) and exit 0 on a 2xx answer, 1 otherwise. For a container
    /// HEALTHCHECK in an image that has no shell, curl or wget.
    #[arg(long, value_name = "URL")]
    healthcheck: Option<String>,
}

/// Go's flag package accepts `-name` as well as `--name`, and `-name=value`; clap takes only
/// the double-dash form of long options. The single-dash spellings of our long options become
/// double-dash ones; anything else (and everything after `--`) is left as it is.
fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    const LONG: &[&str] = &[
        "config",
        "once",
        "io-engine",
        "io_engine",
        "docker-socket",
        "docker_socket",
    ];
    let mut out = Vec::new();
    let mut rest = false;
    for (i, arg) in args.into_iter().enumerate() {
        let single = arg.to_str().and_then(|a| {
            let body = a.strip_prefix('-').filter(|b| !b.starts_with('-'))?;
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            LONG.contains(&name).then(|| {
                let name = name.replace('_', "-");
                value.map_or_else(|| format!("--{name}"), |v| format!("--{name}={v}"))
            })
        });
        match single {
            Some(long) if i > 0 && !rest => out.push(OsString::from(long)),
            _ => {
                rest |= i > 0 && arg == "--";
                out.push(arg);
            }
        }
    }
    out
}

/// What a missing config file needs from the operator.
const CONFIG_HINT: &str = "name the file with --config PATH (or -config PATH) or SSW_CONFIG_FILE";

pub fn main() -> ExitCode {
    failure::process_start();
    let args = Args::parse_from(normalize_args(std::env::args_os()));
    if let Some(url) = &args.healthcheck {
        return healthcheck(url);
    }
    let (mut config, report) = match Config::load(args.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("log_capturer: {e}");
            if let ConfigError::Read { source, .. } = &e {
                if source.kind() == std::io::ErrorKind::NotFound {
                    eprintln!("log_capturer: {CONFIG_HINT}");
                }
            }
            return ExitCode::from(2);
        }
    };
    if let Some(socket) = args.docker_socket {
        config.container_monitor.socket_path = socket;
        if config.container_monitor.unix_socket_path().is_none() {
            eprintln!(
                "log_capturer: --docker-socket: expected {EXPECT_DOCKER_SOCKET}, got {:?}",
                config.container_monitor.socket_path
            );
            return ExitCode::from(2);
        }
    }
    // Before anything reads the positions or ships a line: a second instance on the same
    // directory would ship every line again. Without positions there is no directory to
    // guard (it may not even be writable).
    let _state_lock = if config.positions.enabled {
        match StateLock::acquire(&config.positions.directory) {
            Ok(lock) => Some(lock),
            Err(e) => {
                eprintln!("log_capturer: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    init_logging(&config);
    report.log();
    let processor = match Processor::from_config(&config.processing) {
        Ok(p) => p.map(Arc::new),
        Err(e) => {
            eprintln!("log_capturer: processing.pipelines_file: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(p) = &processor {
        tracing::info!(
            "processing: {} pipelines from {}",
            p.pipelines().len(),
            config.processing.pipelines_file.display()
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            tracing::error!("cannot handle signal {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let options = RunOptions {
        once: args.once,
        io_engine: args.io_engine,
        processor,
    };
    // A panicking thread or a failed engine: /health says so, the rest shuts down, exit 70.
    failure::install_panic_hook();
    let deadline = daemon::shutdown_deadline(&config);
    if let Err(e) = failure::Watchdog::spawn(stop.clone(), deadline) {
        tracing::error!("cannot start the watchdog thread: {e}");
        return ExitCode::FAILURE;
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        daemon::run(&config, &options, stop)
    }));
    let failures = failure::global();
    if let Some(at) = failures.failed_at() {
        // The dispatcher's own panic unwinds to here at once: the API threads still answer
        // 503 until the grace is over.
        std::thread::sleep(
            (at + FAILURE_HEALTH_GRACE).saturating_duration_since(std::time::Instant::now()),
        );
        let names: Vec<String> = failures
            .failures()
            .into_iter()
            .map(|f| f.component)
            .collect();
        tracing::error!("exiting {EXIT_SOFTWARE}: {} failed", names.join(", "));
        return ExitCode::from(EXIT_SOFTWARE);
    }
    match result {
        // Lines a failing sink could not take by the shutdown deadline are named in the log;
        // the positions do not cover them, so the next start delivers them: nothing is lost.
        Ok(Ok(_undelivered)) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
        // The hook marked it failed; unreachable unless the hook itself could not.
        Err(_) => ExitCode::from(EXIT_SOFTWARE),
    }
}

/// Exit 0 when `url` answers 2xx within 3 s; otherwise say why on stderr and exit 1.
fn healthcheck(url: &str) -> ExitCode {
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(3))
        .build();
    match agent.get(url).call() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("log_capturer: healthcheck {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The log goes to stderr, as JSON lines or text (`app.log_format`, `SSW_LOG_FORMAT`), at
/// `app.log_level` (`SSW_LOG_LEVEL`); `RUST_LOG`, when set, wins over the level.
fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::default().add_directive(config.app.log_level.to_level_filter().into()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match config.app.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
