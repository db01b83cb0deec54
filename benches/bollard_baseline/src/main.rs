//! Baseline (c): Docker logs read the way a Rust user would, with bollard and tokio: list the
//! containers, one `logs` stream per container (`timestamps`, stdout and stderr), count lines.
//!
//! `bollard_baseline --socket PATH [--follow]`: without `--follow`, reads what is logged so
//! far and exits; with it, follows until SIGTERM/SIGINT. Prints `streams=N lines=L bytes=B`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bollard::query_parameters::{ListContainersOptionsBuilder, LogsOptionsBuilder};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::StreamExt;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let socket = match args.iter().position(|a| a == "--socket") {
        Some(i) => args[i + 1].clone(),
        None => {
            eprintln!("usage: bollard_baseline --socket PATH [--follow]");
            std::process::exit(2)
        }
    };
    let follow = args.iter().any(|a| a == "--follow");
    let docker = Docker::connect_with_socket(&socket, 120, API_DEFAULT_VERSION).expect("connect");
    let containers = docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
        .await
        .expect("list containers");
    let lines = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in &containers {
        let id = c.id.clone().unwrap_or_default();
        let docker = docker.clone();
        let (lines, bytes) = (lines.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move {
            let options = LogsOptionsBuilder::new()
                .follow(follow)
                .stdout(true)
                .stderr(true)
                .timestamps(true)
                .build();
            let mut stream = docker.logs(&id, Some(options));
            while let Some(item) = stream.next().await {
                match item {
                    Ok(out) => {
                        let msg = out.into_bytes();
                        let n = msg.iter().filter(|&&b| b == b'\n').count();
                        lines.fetch_add(n as u64, Relaxed);
                        bytes.fetch_add(msg.len() as u64, Relaxed);
                    }
                    Err(e) => {
                        eprintln!("{id}: {e}");
                        break;
                    }
                }
            }
        }));
    }
    let streams = tasks.len();
    if follow {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    } else {
        for t in tasks {
            let _ = t.await;
        }
    }
    println!(
        "streams={streams} lines={} bytes={}",
        lines.load(Relaxed),
        bytes.load(Relaxed)
    );
}
