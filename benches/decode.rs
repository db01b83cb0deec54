//! Decoding throughput, each measurement beside a naive baseline run on the same input.
//!
//! - `splitter`: the memchr line splitter (a raw stream without timestamps) vs a byte-by-byte
//!   loop, over ~16 MiB of ~120-byte lines fed in 64 KiB reads.
//! - `decode`: the whole path (chunked HTTP + frames + timestamp prefixes -> `LogLine`s) vs
//!   `BufRead::lines` over the same lines as plain text, i.e. a reader that does no framing.
//!
//! Throughput is counted in bytes of line text (the same for both sides), so the MB/s compare
//! like with like; the decode path also reads ~40 bytes of framing per line. After criterion's
//! groups, a short timing loop prints one summary line per group with the ratio.

use std::hint::black_box;
use std::io::BufRead;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use log_capturer::decode::frame::encode_header;
use log_capturer::decode::lines::LineAssembler;
use log_capturer::decode::timestamp::format_rfc3339_nanos;
use log_capturer::decode::{DecodeOptions, LogDecoder, LogLine, Span};

const TARGET: usize = 16 << 20;
const READ: usize = 64 << 10;
const T0: i64 = 1_795_818_192_750_760_435;

struct Input {
    /// Lines as plain text, `\n`-terminated.
    text: Bytes,
    lines: usize,
    /// The same lines as dockerd sends them: chunked HTTP, one frame per chunk, timestamps.
    response: Bytes,
}

fn input() -> Input {
    let mut text = Vec::with_capacity(TARGET + 256);
    let mut response = b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\n\
Content-Type: application/vnd.docker.raw-stream\r\nDate: Fri, 27 Nov 2026 22:23:12 GMT\r\n\
Server: Docker/20.10.24+dfsg1 (linux)\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    let mut lines = 0;
    let mut x: u32 = 12345;
    while text.len() < TARGET {
        let start = text.len();
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let len = 100 + (x >> 16) as usize % 41; // 100..=140, mean ~120
        text.extend_from_slice(b"level=info msg=\"request served\" ");
        while text.len() - start < len {
            text.push(b'a' + (text.len() % 26) as u8);
        }
        text.push(b'\n');
        let mut payload = format_rfc3339_nanos(T0 + lines as i64 * 1000).into_bytes();
        payload.push(b' ');
        payload.extend_from_slice(&text[start..]);
        let mut frame = encode_header(1, payload.len() as u32).to_vec();
        frame.extend_from_slice(&payload);
        response.extend_from_slice(format!("{:x}\r\n", frame.len()).as_bytes());
        response.extend_from_slice(&frame);
        response.extend_from_slice(b"\r\n");
        lines += 1;
    }
    response.extend_from_slice(b"0\r\n\r\n");
    Input {
        text: Bytes::from(text),
        lines,
        response: Bytes::from(response),
    }
}

/// Socket-sized reads, as zero-copy slices of one buffer.
fn reads(b: &Bytes) -> Vec<Bytes> {
    (0..b.len())
        .step_by(READ)
        .map(|i| b.slice(i..(i + READ).min(b.len())))
        .collect()
}

fn memchr_split(reads: &[Bytes]) -> usize {
    let mut a = LineAssembler::new(true, false);
    let mut out: Vec<LogLine> = Vec::with_capacity(1024);
    let mut n = 0;
    let mut offset = 0;
    for r in reads {
        a.push_raw(Span::new(r.clone(), offset), &mut out).unwrap();
        offset += r.len() as u64;
        n += out.len();
        out.clear();
    }
    a.finish(&mut out).unwrap();
    n + out.len()
}

/// The baseline: look at every byte; carry a line that spans reads, as the real one does.
fn naive_split(reads: &[Bytes]) -> usize {
    let mut out: Vec<Bytes> = Vec::with_capacity(1024);
    let mut carry: Vec<u8> = Vec::new();
    let mut n = 0;
    for r in reads {
        let mut start = 0;
        for (i, &b) in r.iter().enumerate() {
            if b == b'\n' {
                if carry.is_empty() {
                    out.push(r.slice(start..i));
                } else {
                    carry.extend_from_slice(&r[start..i]);
                    out.push(Bytes::from(std::mem::take(&mut carry)));
                }
                start = i + 1;
            }
        }
        carry.extend_from_slice(&r[start..]);
        n += out.len();
        out.clear();
    }
    n + usize::from(!carry.is_empty())
}

fn full_decode(reads: &[Bytes]) -> usize {
    let mut d = LogDecoder::new(DecodeOptions {
        tty: false,
        timestamps: true,
    });
    let mut out: Vec<LogLine> = Vec::with_capacity(1024);
    let mut n = 0;
    for r in reads {
        d.feed(r.clone(), &mut out).unwrap();
        n += out.len();
        out.clear();
    }
    d.finish(&mut out).unwrap();
    n + out.len()
}

fn naive_lines(text: &[u8]) -> usize {
    let mut n = 0;
    for line in std::io::Cursor::new(text).lines() {
        black_box(line.unwrap());
        n += 1;
    }
    n
}

fn bench_splitter(c: &mut Criterion, inp: &Input) {
    let rs = reads(&inp.text);
    assert_eq!(memchr_split(&rs), inp.lines);
    assert_eq!(naive_split(&rs), inp.lines);
    let mut g = c.benchmark_group("splitter");
    g.throughput(Throughput::Bytes(inp.text.len() as u64));
    g.bench_function("memchr", |b| b.iter(|| memchr_split(black_box(&rs))));
    g.bench_function("naive_bytewise", |b| b.iter(|| naive_split(black_box(&rs))));
    g.finish();
}

fn bench_decode(c: &mut Criterion, inp: &Input) {
    let rs = reads(&inp.response);
    assert_eq!(full_decode(&rs), inp.lines);
    assert_eq!(naive_lines(&inp.text), inp.lines);
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(inp.text.len() as u64));
    g.bench_function("http_frames_timestamps", |b| {
        b.iter(|| full_decode(black_box(&rs)))
    });
    g.bench_function("naive_bufread_lines", |b| {
        b.iter(|| naive_lines(black_box(&inp.text)))
    });
    g.finish();
}

/// Best of `iters` runs, in seconds.
fn best(iters: usize, mut f: impl FnMut() -> usize) -> f64 {
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn summary(inp: &Input) {
    let mb = inp.text.len() as f64 / 1e6;
    let lines = inp.lines as f64;
    let report = |name: &str, fast_name: &str, fast: f64, slow_name: &str, slow: f64| {
        println!(
            "{name}: {fast_name} {:.0} MB/s ({:.1} M lines/s), {slow_name} {:.0} MB/s ({:.1} M lines/s), ratio {:.2}",
            mb / fast,
            lines / fast / 1e6,
            mb / slow,
            lines / slow / 1e6,
            slow / fast
        );
    };
    let rs = reads(&inp.text);
    let fast = best(8, || memchr_split(&rs));
    let slow = best(8, || naive_split(&rs));
    report("splitter", "memchr", fast, "naive", slow);
    let rs = reads(&inp.response);
    let fast = best(8, || full_decode(&rs));
    let slow = best(8, || naive_lines(&inp.text));
    report("decode", "full", fast, "BufRead::lines", slow);
    println!(
        "  ({} lines, {:.1} MB of text, {:.1} MB on the wire for the full decode)",
        inp.lines,
        mb,
        inp.response.len() as f64 / 1e6
    );
}

fn main() {
    let inp = input();
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    bench_splitter(&mut c, &inp);
    bench_decode(&mut c, &inp);
    c.final_summary();
    // `cargo test --benches` runs this without `--bench`: skip the extra timing there.
    if std::env::args().any(|a| a == "--bench") {
        summary(&inp);
    }
}
