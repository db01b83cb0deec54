//! Baseline (d) of the reader benchmarks, the floor: list the containers, then read each one's
//! log response (`follow=0`, the request log_capturer sends) into a 64 KiB buffer and discard
//! it, one blocking thread per stream. No parsing at all: what reading the socket costs.
//!
//! `bench_rawcopy --socket PATH`: prints `streams=N bytes=B` on stdout.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

fn request(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
}

fn get(socket: &PathBuf, target: &str) -> Vec<u8> {
    let mut conn = UnixStream::connect(socket).expect("connect");
    conn.write_all(request(target).as_bytes()).expect("send");
    let mut out = Vec::new();
    conn.read_to_end(&mut out).expect("receive");
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let socket = match args.iter().position(|a| a == "--socket") {
        Some(i) => PathBuf::from(&args[i + 1]),
        None => {
            eprintln!("usage: bench_rawcopy --socket PATH");
            std::process::exit(2)
        }
    };
    let list = get(&socket, "/v1.41/containers/json?all=1");
    let text = String::from_utf8_lossy(&list);
    // The ids, without a JSON parser: every `"Id":"<64 hex>"`.
    let ids: Vec<String> = text
        .match_indices("\"Id\":\"")
        .map(|(i, m)| text[i + m.len()..i + m.len() + 64].to_string())
        .collect();
    let threads: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut conn = UnixStream::connect(&socket).expect("connect");
                let target =
                    format!("/v1.41/containers/{id}/logs?stdout=1&stderr=1&timestamps=1&follow=0");
                conn.write_all(request(&target).as_bytes()).expect("send");
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                loop {
                    let n = conn.read(&mut buf).expect("receive");
                    if n == 0 {
                        break total;
                    }
                    total += n as u64;
                }
            })
        })
        .collect();
    let streams = threads.len();
    let bytes: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    println!("streams={streams} bytes={bytes}");
}
