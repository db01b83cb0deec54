//! The synthetic Docker API server of the reader benchmarks (see benches/support/fake_dockerd.rs
//! and BENCHMARKS.md). An example, not a binary of the crate: `cargo build --release --example
//! fake_dockerd`, never installed with log_capturer.
//!
//! `fake_dockerd --socket PATH --mode bulk|steady|silent [--containers N] [--lines L]
//! [--rate R] [--api-versions MIN-MAX]`: prints `ready <bulk body bytes per container>` on stdout once listening, and
//! serves until SIGTERM/SIGINT.

#[path = "../benches/support/fake_dockerd.rs"]
#[allow(dead_code)]
mod fake_dockerd;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use fake_dockerd::{Mode, Server, ServerConfig, ServerStats};

fn main() {
    let mut config = ServerConfig {
        socket: PathBuf::from("/tmp/fake_dockerd.sock"),
        mode: Mode::Bulk,
        containers: 4,
        lines: 1000,
        rate: 20,
        api_versions: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--socket" => config.socket = PathBuf::from(value),
            "--mode" => config.mode = value.parse::<Mode>().unwrap_or_else(|e: String| die(&e)),
            "--containers" => {
                config.containers = value.parse().unwrap_or_else(|_| die("--containers N"))
            }
            "--lines" => config.lines = value.parse().unwrap_or_else(|_| die("--lines L")),
            "--rate" => config.rate = value.parse().unwrap_or_else(|_| die("--rate R")),
            "--api-versions" => {
                config.api_versions =
                    Some(fake_dockerd::parse_api_versions(&value).unwrap_or_else(|e| die(&e)))
            }
            other => die(&format!("unknown argument {other}")),
        }
        i += 2;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).expect("signal handler");
    }
    let server = Server::bind(config.clone(), Arc::new(ServerStats::default()))
        .unwrap_or_else(|e| die(&format!("bind {}: {e}", config.socket.display())));
    println!("ready {}", server.bulk_body_len());
    let _ = std::io::stdout().flush();
    if let Err(e) = server.run(&stop) {
        die(&format!("server: {e}"));
    }
    let _ = std::fs::remove_file(&config.socket);
}

fn die(msg: &str) -> ! {
    eprintln!("fake_dockerd: {msg}");
    std::process::exit(2)
}
