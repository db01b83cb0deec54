//! `log_capturer`: captures the logs of a Docker engine's containers and ships them to the
//! configured sinks, resuming exactly where it left off.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use log_capturer::config::Config;
use log_capturer::daemon::{self, RunOptions};
use log_capturer::io::EngineChoice;

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
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (mut config, report) = match Config::load(args.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("log_capturer: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(socket) = args.docker_socket {
        config.container_monitor.socket_path = socket;
    }
    // RUST_LOG, when set, wins over app.log_level (SSW_LOG_LEVEL).
    let mut logger = env_logger::Builder::new();
    logger
        .filter_level(config.app.log_level.to_level_filter())
        .parse_env("RUST_LOG")
        .target(env_logger::Target::Stderr)
        .init();
    report.log();

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            log::error!("cannot handle signal {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let options = RunOptions {
        once: args.once,
        io_engine: args.io_engine,
    };
    match daemon::run(&config, &options, stop) {
        // Lines a failing sink could not take by the shutdown deadline are named in the log;
        // the positions do not cover them, so the next start delivers them: nothing is lost.
        Ok(_undelivered) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
