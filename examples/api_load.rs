//! Load on a running capturer's HTTP API (see `scripts/bench/api_load.sh`, BENCHMARKS.md):
//! `api_load --addr 127.0.0.1:PORT [--clients 200] [--seconds 20] [--pid PID] [--token T]`.
//!
//! Each client keeps one connection alive and alternates `POST /api/v1/logs` (a numbered line;
//! a 503, the full queue's answer, is retried after 10 ms) and `GET /health`. Prints
//! per-route p50/p99/max latency, the lines accepted, and, with `--pid`, the capturer's RSS
//! sampled every 100 ms. Its last line is `accepted N`, for the script to check against what
//! the sink wrote.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

struct Args {
    addr: String,
    clients: usize,
    seconds: u64,
    pid: Option<u32>,
    token: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        addr: String::new(),
        clients: 200,
        seconds: 20,
        pid: None,
        token: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--addr" => a.addr = v,
            "--clients" => a.clients = v.parse().expect("--clients N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--pid" => a.pid = Some(v.parse().expect("--pid N")),
            "--token" => a.token = Some(v),
            _ => panic!("unknown argument {k}"),
        }
    }
    assert!(!a.addr.is_empty(), "--addr HOST:PORT is required");
    a
}

/// Reads one answer (head and Content-Length body); returns its status.
fn answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).expect("read an answer");
        assert!(n > 0, "connection closed by the server");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head[9..12].parse().expect("a status");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().expect("a length"));
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).expect("read a body");
        assert!(n > 0, "connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    status
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() {
    let a = args();
    let stop = Arc::new(AtomicBool::new(false));
    let retries = Arc::new(AtomicU64::new(0));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = a.pid.map(|pid| {
        let (stop, max_rss) = (stop.clone(), max_rss.clone());
        thread::spawn(move || {
            let mut first = None;
            while !stop.load(Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(kib) = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                    {
                        first.get_or_insert(kib);
                        max_rss.fetch_max(kib, Relaxed);
                    }
                }
                thread::sleep(Duration::from_millis(100));
            }
            first.unwrap_or(0)
        })
    });
    let auth = a
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let until = Instant::now() + Duration::from_secs(a.seconds);
    let clients: Vec<_> = (0..a.clients)
        .map(|c| {
            let (addr, auth, retries) = (a.addr.clone(), auth.clone(), retries.clone());
            thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).expect("connect");
                s.set_nodelay(true).unwrap();
                let mut buf = Vec::new();
                let (mut post, mut health) = (Vec::new(), Vec::new());
                let mut accepted = 0u64;
                while Instant::now() < until {
                    let body = format!(
                        r#"{{"message":"api-load c{c} n{accepted}","source_type":"loadtest","source_id":"c{c}"}}"#
                    );
                    let rq = format!(
                        "POST /api/v1/logs HTTP/1.1\r\nHost: l\r\n{auth}Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    loop {
                        let t = Instant::now();
                        s.write_all(rq.as_bytes()).expect("send");
                        let status = answer(&mut s, &mut buf);
                        post.push(t.elapsed());
                        match status {
                            202 => break,
                            503 => {
                                retries.fetch_add(1, Relaxed);
                                thread::sleep(Duration::from_millis(10));
                            }
                            other => panic!("POST answered {other}"),
                        }
                    }
                    accepted += 1;
                    let t = Instant::now();
                    s.write_all(b"GET /health HTTP/1.1\r\nHost: l\r\n\r\n")
                        .expect("send");
                    let status = answer(&mut s, &mut buf);
                    health.push(t.elapsed());
                    assert!(matches!(status, 200 | 503), "/health answered {status}");
                }
                (accepted, post, health)
            })
        })
        .collect();
    let (mut accepted, mut post, mut health) = (0u64, Vec::new(), Vec::new());
    for c in clients {
        let (n, p, h) = c.join().expect("a client failed");
        accepted += n;
        post.extend(p);
        health.extend(h);
    }
    stop.store(true, Relaxed);
    let first_rss = sampler.map(|s| s.join().unwrap());
    post.sort_unstable();
    health.sort_unstable();
    for (name, v) in [("POST /api/v1/logs", &post), ("GET /health", &health)] {
        println!(
            "{name}: {} requests, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            v.len(),
            v.len() as f64 / a.seconds as f64,
            percentile(v, 0.50).as_secs_f64() * 1e3,
            percentile(v, 0.99).as_secs_f64() * 1e3,
            v.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    println!("POST retries (503 queue full): {}", retries.load(Relaxed));
    if let Some(first) = first_rss {
        println!(
            "capturer RSS: {:.1} MiB at start, {:.1} MiB max",
            first as f64 / 1024.0,
            max_rss.load(Relaxed) as f64 / 1024.0
        );
    }
    println!("accepted {accepted}");
}
