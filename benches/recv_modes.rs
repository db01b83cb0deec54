//! Receive mode: single-shot `IORING_OP_RECV` into per-stream `BytesMut` (what the engine does)
//! vs multishot recv over a shared provided-buffer ring, consuming in place or copying out.
//! The drains live in `log_capturer::io::uring::recv_modes`.
//!
//! Every (scenario, mode) runs in a child process of this binary (`--case <json>`), so that
//! RSS growth is that run's alone; modes are interleaved and each figure is the median of the
//! repeats. Ratios (multishot / single-shot) are printed per scenario.
//!
//! `cargo bench --bench recv_modes --features recv-modes-experiment`: full sizes (about 90 s on 2 cores).
//! `cargo test --benches`: the same code on tiny sizes.

use std::process::Command;

use log_capturer::io::uring::recv_modes::{
    check_backpressure, check_cancel, check_eof_race, run, Case, Mode, Report, Shape,
};

const MODES: [Mode; 3] = [
    Mode::SingleShot,
    Mode::MultishotInPlace,
    Mode::MultishotCopy,
];

struct Scenario {
    name: String,
    streams: usize,
    shape: Shape,
    bytes_per_stream: u64,
    pace_us: Option<u64>,
    duration_ms: u64,
    ring_entries: u16,
    ring_buf_size: u32,
}

fn scenarios(full: bool) -> Vec<Scenario> {
    const MB: u64 = 1 << 20;
    let ring = |n: usize| (2 * n).next_power_of_two().max(64) as u16;
    let scale = |b: u64| if full { b } else { b / 128 };
    let mut v = Vec::new();
    for (n, lines_total, bulk_total) in [(1, 48 * MB, 256 * MB), (8, 48 * MB, 256 * MB)] {
        v.push(Scenario {
            name: format!("N={n} lines ~140 B"),
            streams: n,
            shape: Shape::Lines,
            bytes_per_stream: scale(lines_total) / n as u64,
            pace_us: None,
            duration_ms: 0,
            ring_entries: ring(n),
            ring_buf_size: 16 * 1024,
        });
        v.push(Scenario {
            name: format!("N={n} bulk 16 KiB"),
            streams: n,
            shape: Shape::Bulk,
            bytes_per_stream: scale(bulk_total) / n as u64,
            pace_us: None,
            duration_ms: 0,
            ring_entries: ring(n),
            ring_buf_size: 16 * 1024,
        });
    }
    v.push(Scenario {
        name: "N=64 lines ~140 B".into(),
        streams: 64,
        shape: Shape::Lines,
        bytes_per_stream: scale(48 * MB) / 64,
        pace_us: None,
        duration_ms: 0,
        ring_entries: ring(64),
        ring_buf_size: 16 * 1024,
    });
    v.push(Scenario {
        name: "N=64 bulk 16 KiB".into(),
        streams: 64,
        shape: Shape::Bulk,
        bytes_per_stream: scale(256 * MB) / 64,
        pace_us: None,
        duration_ms: 0,
        ring_entries: ring(64),
        ring_buf_size: 16 * 1024,
    });
    for buf in [16 * 1024, 4 * 1024] {
        v.push(Scenario {
            name: format!(
                "N=512 lines, 1 per 10 ms per stream (ring 1024 x {} KiB)",
                buf / 1024
            ),
            streams: 512,
            shape: Shape::Lines,
            bytes_per_stream: 0,
            pace_us: Some(10_000),
            duration_ms: if full { 2000 } else { 100 },
            ring_entries: ring(512),
            ring_buf_size: buf,
        });
    }
    v
}

fn run_child(case: &Case) -> Report {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .arg("--case")
        .arg(serde_json::to_string(case).expect("case to json"))
        .output()
        .expect("spawn child");
    if !out.status.success() {
        panic!(
            "case {case:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REPORT "))
        .expect("child printed a report");
    serde_json::from_str(line).expect("report json")
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Median of each field over the repeats.
fn med(rs: &[Report]) -> Report {
    let m = |f: fn(&Report) -> u64| median(rs.iter().map(f).collect());
    Report {
        wall_us: m(|r| r.wall_us),
        cpu_user_us: m(|r| r.cpu_user_us),
        cpu_sys_us: m(|r| r.cpu_sys_us),
        vol_ctx_switches: m(|r| r.vol_ctx_switches),
        enters: m(|r| r.enters),
        cqes: m(|r| r.cqes),
        bytes: m(|r| r.bytes),
        lines: m(|r| r.lines),
        rearms: m(|r| r.rearms),
        enobufs: m(|r| r.enobufs),
        buffer_bytes: m(|r| r.buffer_bytes),
        rss_growth: m(|r| r.rss_growth),
        // Totals over the repeats, not medians: any occurrence matters.
        missed_eof: rs.iter().map(|r| r.missed_eof).sum(),
        stalled_with_data: rs.iter().map(|r| r.stalled_with_data).sum(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let case: Case = serde_json::from_str(&args[i + 1]).expect("case json");
        match run(&case) {
            Ok(r) => println!("REPORT {}", serde_json::to_string(&r).expect("json")),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let repeats = if full { 3 } else { 1 };
    println!(
        "recv_modes ({} mode, median of {repeats}): reader thread CPU, io_uring_enter calls, \
         CQEs, buffer memory; ratios are multishot / single-shot",
        if full { "full" } else { "quick" }
    );
    for sc in scenarios(full) {
        let mut results: Vec<Vec<Report>> = vec![Vec::new(); MODES.len()];
        for rep in 0..repeats {
            for k in 0..MODES.len() {
                // Rotate the order so no mode always runs first (or last) in a round.
                let m = (k + rep) % MODES.len();
                let case = Case {
                    mode: MODES[m],
                    streams: sc.streams,
                    shape: sc.shape,
                    bytes_per_stream: sc.bytes_per_stream,
                    pace_us: sc.pace_us,
                    duration_ms: sc.duration_ms,
                    writers: 1,
                    ring_entries: sc.ring_entries,
                    ring_buf_size: sc.ring_buf_size,
                };
                results[m].push(run_child(&case));
            }
        }
        let meds: Vec<Report> = results.iter().map(|r| med(r)).collect();
        let mb = meds[0].bytes as f64 / 1e6;
        println!("\n## {} ({:.1} MB, {} lines)", sc.name, mb, meds[0].lines);
        println!(
            "| mode | wall ms | reader CPU ms (usr+sys) | CPU ms/100 MB | enters/MB | CQEs/MB \
             | re-arms | ENOBUFS | recv buffer memory / stream | RSS growth | missed EOF (all runs) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for (m, r) in MODES.iter().zip(&meds) {
            let mb = r.bytes as f64 / 1e6;
            println!(
                "| {} | {:.0} | {:.0} ({:.0}+{:.0}) | {:.1} | {:.1} | {:.1} | {} | {} | {:.1} KiB | {:.1} MiB | {} |",
                m.label(),
                r.wall_us as f64 / 1e3,
                r.cpu_us() as f64 / 1e3,
                r.cpu_user_us as f64 / 1e3,
                r.cpu_sys_us as f64 / 1e3,
                r.cpu_us() as f64 / 1e3 / mb * 100.0,
                r.enters as f64 / mb,
                r.cqes as f64 / mb,
                r.rearms,
                r.enobufs,
                r.buffer_bytes as f64 / 1024.0 / sc.streams as f64,
                r.rss_growth as f64 / (1 << 20) as f64,
                r.missed_eof,
            );
        }
        let base = &meds[0];
        for (m, r) in MODES.iter().zip(&meds).skip(1) {
            let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
            println!(
                "ratio {} / single-shot: wall {:.2}, reader CPU {:.2}, enters {:.2}, CQEs {:.2}, \
                 buffer memory {:.2}, RSS growth {:.2}",
                m.label(),
                ratio(r.wall_us, base.wall_us),
                ratio(r.cpu_us(), base.cpu_us()),
                ratio(r.enters, base.enters),
                ratio(r.cqes, base.cqes),
                ratio(r.buffer_bytes, base.buffer_bytes),
                ratio(r.rss_growth, base.rss_growth),
            );
        }
    }

    println!("\n## Design checks (multishot over a shared provided-buffer ring)");
    let eof_rounds = if full { 1000 } else { 50 };
    for multishot in [false, true] {
        match check_eof_race(eof_rounds, multishot) {
            Ok(r) => println!("EOF race (liburing#1549): {r:?}"),
            Err(e) => panic!("EOF race check failed: {e}"),
        }
    }
    match check_backpressure() {
        Ok(b) => {
            println!("backpressure: {b:#?}");
            assert!(
                b.other_bytes_with_cancel_pause >= 1024,
                "with pause = cancel, the other stream must still receive"
            );
        }
        Err(e) => panic!("backpressure check failed: {e}"),
    }
    let rounds = if full { 40 } else { 4 };
    match check_cancel(rounds) {
        Ok(c) => {
            println!("cancel: {c:#?}");
            assert_eq!(
                c.final_seen, c.rounds,
                "every cancelled recv posts a final CQE"
            );
            assert_eq!(
                c.buffers_usable_after,
                usize::from(c.ring_buffers),
                "no ring buffer lost to a cancelled recv"
            );
        }
        Err(e) => panic!("cancel check failed: {e}"),
    }
}
