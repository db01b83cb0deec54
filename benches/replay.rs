//! The replay filter's cost per line (`src/sources/docker/replay.rs`), on the capture thread's hot path:
//! `check` of new ~120-byte lines (hash + push into a full window: the steady state), beside
//! the whole decode path's cost per line from `cargo bench --bench decode` for scale; and a
//! replay of 10,000 lines (binary search + compare). One summary line per case after
//! criterion's groups.

use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use log_capturer::decode::StreamKind;
use log_capturer::sources::docker::replay::{ReplayFilter, Verdict, WINDOW_LINES};

const LINES: usize = 200_000;

fn lines() -> Vec<(i64, Vec<u8>)> {
    (0..LINES)
        .map(|i| {
            let mut text = format!("level=info msg=\"request served\" n={i} ").into_bytes();
            text.resize(120, b'a' + (i % 26) as u8);
            (1_795_818_192_750_760_435 + i as i64 * 1000, text)
        })
        .collect()
}

/// `check` of every line, new, into a window filled beforehand; ns per line.
fn new_lines(lines: &[(i64, Vec<u8>)]) -> f64 {
    let mut f = ReplayFilter::new();
    let (warm, rest) = lines.split_at(WINDOW_LINES);
    for (ts, text) in warm {
        f.check(StreamKind::Stdout, *ts, text);
    }
    let t0 = Instant::now();
    for (ts, text) in rest {
        black_box(f.check(StreamKind::Stdout, *ts, text));
    }
    t0.elapsed().as_nanos() as f64 / rest.len() as f64
}

/// The last 10,000 lines sent again; ns per replayed line.
fn replayed_lines(lines: &[(i64, Vec<u8>)]) -> f64 {
    let mut f = ReplayFilter::new();
    for (ts, text) in lines {
        f.check(StreamKind::Stdout, *ts, text);
    }
    let replay = &lines[lines.len() - 10_000..];
    let t0 = Instant::now();
    for (ts, text) in replay {
        assert_eq!(f.check(StreamKind::Stdout, *ts, text), Verdict::Replay);
    }
    t0.elapsed().as_nanos() as f64 / replay.len() as f64
}

fn main() {
    let lines = lines();
    let mut c = Criterion::default().configure_from_args();
    c.bench_function("replay/check_new_line", |b| {
        let mut f = ReplayFilter::new();
        let mut i = 0;
        b.iter(|| {
            let (ts, text) = &lines[i % LINES];
            i += 1;
            // Timestamps keep growing across laps so every line is new.
            let ts = ts + (i / LINES) as i64 * LINES as i64 * 1000;
            black_box(f.check(StreamKind::Stdout, ts, text))
        })
    });
    c.final_summary();
    let runs = 5;
    let mut new: Vec<f64> = (0..runs).map(|_| new_lines(&lines)).collect();
    let mut rep: Vec<f64> = (0..runs).map(|_| replayed_lines(&lines)).collect();
    new.sort_by(f64::total_cmp);
    rep.sort_by(f64::total_cmp);
    println!(
        "replay filter, 120-byte lines, median of {runs}: new line {:.1} ns, replayed line {:.1} ns \
         (window {WINDOW_LINES} lines)",
        new[runs / 2],
        rep[runs / 2]
    );
}
