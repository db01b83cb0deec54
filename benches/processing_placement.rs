//! Where processing runs (issue 14 section 1): inline on the capture thread before its batch
//! is queued (what the daemon does), or on a pool of workers between the capture thread and
//! the dispatcher. The real `Processor` with the Go team's pipelines
//! (`tests/fixtures/go_pipelines.yaml`), real `LogEntry`s built the way capture builds them
//! (one shared `Arc<Labels>` per container, messages sliced out of 64 KiB "receive buffers",
//! ~120-byte lines), the real queue (`pipeline::queue`: an mpsc channel of `Batch`es with
//! their checkpoints) and, as the dispatcher, a consumer that renders every entry with the
//! file sink's JSON formatter (`sink::format::json_line`, which walks `labels_iter`), so work
//! that a placement leaves for later is paid for here too.
//!
//! 64 containers, 70 % unmapped (`default` pipeline: `level=info seq=N msg="..."`, the
//! synthetic dockerd's lines), 10 % each mapped to `mysql`, `freeswitch` (ANSI colours) and
//! `json_logs`, read in runs of 8 lines a container, queued in batches of 4096 entries (the
//! capture thread's `MAX_BATCH`: a bulk reader) and of 200 (what 10 ms holds at 1000 streams
//! x 20 lines/s), as fast as they go; then batches of 200 paced at one every 10 ms, the steady
//! state of 1000 streams x 20 lines/s, where every batch wakes the threads it passes through.
//! At most 50 000 entries in flight (the Go config's `queue_size`), the producer pausing as
//! the capture thread does. Variants:
//! - `off`: processing off, the baseline;
//! - `inline`: `Processor::apply` on the producer as it builds each entry (the daemon today);
//! - `pool-1`, `pool-2`: the producer queues raw batches, numbered, to 1 or 2 workers
//!   (round robin); a worker applies the pipelines, then puts the batch back in order (a
//!   reorder buffer under a mutex) before the queue, so the dispatcher sees the exact order
//!   of the inline placement: exactly once, per container in order, checkpoints in order.
//!
//! The consumer checks every entry arrives once and in order (`processed_at_ns` carries the
//! line's number) and that each container's checkpoints only move forward and add up to the
//! lines; inline and the pools must render the same bytes, off none with fields.
//!
//! How to read it: per line, median of the runs, in ns: `process` is the process's user+sys
//! CPU (`/proc/self/stat`, every thread; 10 ms ticks, a cross-check), `threads` the same
//! counted per thread (`/proc/thread-self/schedstat`, ns), split into `producer` (the
//! capture thread's share: what bounds how many streams one thread reads), `workers` and
//! `consumer`; `wall` from the first entry built to the last rendered, and `lines/s` from it;
//! `ceiling` the lines/s the CPU figures allow on this many idle cores (the busiest thread,
//! or all the CPU over the cores: a model, see [`ceiling`]). `*/inl` are medians of per-run
//! ratios against `inline` (the variants alternate within each run, so a ratio never
//! compares two moments of a shared machine). `hand-off` is what a pool adds to the CPU per
//! line. The verdict names the placement that costs least CPU per line and the one with
//! most throughput, measured and at the ceiling ("no clear winner" within 5 %). On a shared
//! machine (a VM here: no hardware counters, neighbours on the same cores) CPU time per line
//! moves by ~10 % from run to run, hence many short runs; wall time also measures the
//! neighbours, and a variant with more threads gets a larger share of contended cores, so
//! read `wall` with the load printed on the first line. Then `Processor::apply` alone, ns per
//! entry (the entry's build and drop outside the timing), for the `default`, `mysql`,
//! `freeswitch` and `json_logs` pipelines.
//!
//! The producer does only what capture does after decoding (no socket, no decode): the
//! reader's own cost per line (0.36 µs bulk to ~2-3 µs at 1000 slow streams, BENCHMARKS.md)
//! comes on top of its figure in the daemon.
//!
//! `cargo bench --bench processing_placement` (~80 s); `PLACEMENT_QUICK=1` for a short run
//! (`PLACEMENT_APPLY_ONLY=1`: `Processor::apply` alone, then stop);
//! without `--bench` (`cargo test --all-targets`) one small run of each case, for its checks;
//! `PLACEMENT_LINES=N PLACEMENT_RUNS=R PLACEMENT_PACED_LINES=P` to set them.

#[path = "support/fake_dockerd.rs"]
#[allow(dead_code)]
mod fake_dockerd;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log_capturer::decode::StreamKind;
use log_capturer::pipeline::entry::{Labels, LogEntry};
use log_capturer::pipeline::processing::{PipelineId, Processor, Source};
use log_capturer::pipeline::{queue, Batch, Checkpoint, QueueReceiver, QueueSender, Received};
use log_capturer::sink::format::json_line;
use log_capturer::state::positions::Resume;
use rustc_hash::FxHashMap;

const CONTAINERS: usize = 64;
/// Lines read from one container before the next (a receive of a few lines).
const RUN: usize = 8;
/// Entries queued and not yet delivered at most (the Go config's `dispatcher.queue_size`).
const IN_FLIGHT: usize = 50_000;
/// Corpus lines per kind (~2 MiB each: the four exceed the caches, as fresh receives do).
const CORPUS: usize = 16_384;
/// dockerd's timestamp of line 0, and `processed_at_ns` of line 0 (the line's number added).
const T0: i64 = 1_795_818_192_750_760_435;
const PA0: i64 = 1_795_818_193_000_000_000;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Kind {
    Default,
    Mysql,
    Freeswitch,
    Json,
}

const KINDS: [Kind; 4] = [Kind::Default, Kind::Mysql, Kind::Freeswitch, Kind::Json];

impl Kind {
    /// Container `c`'s kind: 7 in 10 unmapped.
    fn of(c: usize) -> Kind {
        match c % 10 {
            7 => Kind::Mysql,
            8 => Kind::Freeswitch,
            9 => Kind::Json,
            _ => Kind::Default,
        }
    }

    /// The name the Go mapping knows it by (as a compose service), and the pipeline it maps to.
    fn service(self) -> Option<&'static str> {
        match self {
            Kind::Default => None,
            Kind::Mysql => Some("mysql"),
            Kind::Freeswitch => Some("freeswitch"),
            Kind::Json => Some("log_generator"),
        }
    }

    fn pipeline(self) -> &'static str {
        match self {
            Kind::Default => "default",
            Kind::Mysql => "mysql",
            Kind::Freeswitch => "freeswitch",
            Kind::Json => "json_logs",
        }
    }

    /// Line `i` of this kind, ~120 bytes (100 to 140).
    fn line(self, i: usize, out: &mut Vec<u8>) {
        let len = 100 + i.wrapping_mul(7919) % 41;
        let start = out.len();
        let (s, us) = (i % 60, (i * 137) % 1_000_000);
        match self {
            Kind::Default => {
                out.extend_from_slice(format!("level=info seq={i:010} msg=\"").as_bytes());
                words(out, start + len - 1, i);
                out.push(b'"');
            }
            Kind::Mysql => {
                let level = ["Note", "Note", "Warning", "Note", "Error"][i % 5];
                out.extend_from_slice(
                    format!(
                        "2026-11-30T06:14:{s:02}.{us:06}Z {} [{level}] InnoDB: ",
                        i % 97
                    )
                    .as_bytes(),
                );
                words(out, start + len, i);
            }
            Kind::Freeswitch => {
                let level = ["NOTICE", "INFO", "DEBUG", "WARNING"][i % 4];
                out.extend_from_slice(
                    format!(
                        "\x1b[32m2026-11-30 06:14:{s:02}.{us:06} 97.53% [{level}] sofia.c:{} ",
                        i % 9000
                    )
                    .as_bytes(),
                );
                words(out, start + len - 4, i);
                out.extend_from_slice(b"\x1b[0m");
            }
            Kind::Json => {
                let level = ["info", "info", "warn", "error"][i % 4];
                out.extend_from_slice(
                    format!(
                        "{{\"timestamp\":\"2026-11-30T06:14:{s:02}Z\",\"level\":\"{level}\",\"message\":\""
                    )
                    .as_bytes(),
                );
                words(out, start + len - 14, i);
                out.extend_from_slice(format!("\",\"user\":\"u{}\"}}", i % 10).as_bytes());
            }
        }
    }
}

/// The synthetic dockerd's words (`benches/support/fake_dockerd.rs`).
fn words(out: &mut Vec<u8>, end: usize, seed: usize) {
    fake_dockerd::words(out, end, seed as u64);
}

/// Lines of one kind in 64 KiB buffers: an entry's message is a slice of its buffer, as the
/// decoder's zero-copy lines are of the receive buffer.
struct Corpus {
    buffers: Vec<Bytes>,
    lines: Vec<(usize, usize, usize)>,
}

impl Corpus {
    fn new(kind: Kind) -> Corpus {
        let (mut buffers, mut lines) = (Vec::new(), Vec::with_capacity(CORPUS));
        let mut buf = Vec::with_capacity(64 << 10);
        for i in 0..CORPUS {
            if buf.len() + 256 > 64 << 10 {
                buffers.push(Bytes::from(std::mem::take(&mut buf)));
                buf.reserve(64 << 10);
            }
            let start = buf.len();
            kind.line(i, &mut buf);
            lines.push((buffers.len(), start, buf.len()));
        }
        buffers.push(Bytes::from(buf));
        Corpus { buffers, lines }
    }

    fn message(&self, i: usize) -> Bytes {
        let (b, s, e) = self.lines[i % CORPUS];
        self.buffers[b].slice(s..e)
    }
}

/// A container as the capture thread holds it.
struct Container {
    kind: Kind,
    labels: Arc<Labels>,
    id: Arc<str>,
    name: Arc<str>,
    source_id: Arc<str>,
    pipeline: Option<PipelineId>,
    cursor: usize,
    touched: bool,
    batch_lines: u64,
    batch_bytes: u64,
    newest_ns: i64,
}

fn labels_of(c: usize, kind: Kind) -> Labels {
    let id = format!("{c:04x}{}", "0123456789abcdef".repeat(4))[..64].to_string();
    let mut labels = Labels::new();
    labels.insert("container_id".into(), id);
    let name = match kind.service() {
        Some(s) => format!("proj-{s}-{c}"),
        None => format!("bench-{c:04}"),
    };
    labels.insert("container_name".into(), name);
    labels.insert("image".into(), "local/busybox:latest".into());
    if let Some(s) = kind.service() {
        labels.insert("compose_service".into(), s.into());
    }
    labels
}

fn containers(processor: Option<&Processor>) -> Vec<Container> {
    (0..CONTAINERS)
        .map(|c| {
            let kind = Kind::of(c);
            let labels = labels_of(c, kind);
            let pipeline = processor.map(|p| {
                let id = p.select(&Source {
                    source_type: "docker",
                    labels: &labels,
                    path: None,
                });
                let id = id.expect("every container has a pipeline");
                assert_eq!(p.name(id), kind.pipeline(), "container {c}");
                id
            });
            let id = labels["container_id"].clone();
            Container {
                kind,
                name: Arc::from(labels["container_name"].as_str()),
                source_id: Arc::from(&id[..12]),
                id: Arc::from(id.as_str()),
                labels: Arc::new(labels),
                pipeline,
                cursor: c * 997,
                touched: false,
                batch_lines: 0,
                batch_bytes: 0,
                newest_ns: 0,
            }
        })
        .collect()
}

fn load_processor() -> Processor {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/go_pipelines.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    Processor::from_str(&text, &path, true).unwrap_or_else(|e| panic!("{e}"))
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Placement {
    Off,
    Inline,
    Pool(usize),
}

impl Placement {
    fn name(self) -> String {
        match self {
            Placement::Off => "off".into(),
            Placement::Inline => "inline".into(),
            Placement::Pool(n) => format!("pool-{n}"),
        }
    }
}

const PLACEMENTS: [Placement; 4] = [
    Placement::Off,
    Placement::Inline,
    Placement::Pool(1),
    Placement::Pool(2),
];

/// A raw batch on its way to a worker: entries in runs of one container (its pipeline).
struct Work {
    seq: u64,
    batch: Batch,
    runs: Vec<(usize, Option<PipelineId>)>,
}

/// Batches back in the order the producer numbered them, then queued.
struct Reorder {
    next: u64,
    /// Batches that came back ahead of their turn and waited.
    early: u64,
    held: BTreeMap<u64, Batch>,
    tx: QueueSender,
}

impl Reorder {
    fn put(&mut self, seq: u64, batch: Batch) {
        if seq != self.next {
            self.early += 1;
            self.held.insert(seq, batch);
            return;
        }
        self.send(batch);
        while let Some(b) = self.held.remove(&self.next) {
            self.send(b);
        }
    }

    fn send(&mut self, batch: Batch) {
        self.tx
            .send(batch)
            .unwrap_or_else(|_| panic!("consumer gone"));
        self.next += 1;
    }
}

/// This thread's CPU time, ns (the scheduler's own count, not ticks).
fn thread_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    s.split_whitespace().next().unwrap().parse().unwrap()
}

/// The process's user+sys CPU time, every thread (ended ones included), ns.
fn process_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap())
        .collect();
    let tick = rustix::param::clock_ticks_per_second();
    (f[0] + f[1]) * 1_000_000_000 / tick
}

struct Producer {
    placement: Placement,
    processor: Option<Arc<Processor>>,
    lines: usize,
    batch: usize,
    /// A batch every this long (a paced source), else as fast as the queue takes them.
    pace: Option<Duration>,
    in_flight: Arc<AtomicUsize>,
}

impl Producer {
    /// Builds `lines` entries as capture does and hands each batch to `emit`; its CPU, ns.
    fn run(self, mut emit: impl FnMut(Work)) -> u64 {
        let cpu0 = thread_cpu_ns();
        let mut containers = containers(self.processor.as_deref());
        let inline = match (self.placement, &self.processor) {
            (Placement::Inline, Some(p)) => Some(&**p),
            _ => None,
        };
        let (mut made, mut seq, mut c) = (0usize, 0u64, 0usize);
        let mut touched = Vec::with_capacity(CONTAINERS);
        let start = Instant::now();
        while made < self.lines {
            if let Some(pace) = self.pace {
                // As the capture thread waits in its poll for the next lines.
                let at = start + pace * seq as u32;
                thread::sleep(at.saturating_duration_since(Instant::now()));
            }
            if self.in_flight.load(Relaxed) >= IN_FLIGHT {
                // Paused, as capture on a full queue: resumes under half.
                while self.in_flight.load(Relaxed) > IN_FLIGHT / 2 {
                    thread::sleep(Duration::from_micros(200));
                }
            }
            let n = self.batch.min(self.lines - made);
            let mut entries = Vec::with_capacity(n);
            let mut runs = Vec::new();
            while entries.len() < n {
                let k = RUN.min(n - entries.len());
                let ct = &mut containers[c];
                let corpus = corpus(ct.kind);
                for _ in 0..k {
                    let i = made + entries.len();
                    let ts = T0 + i as i64 * 1000;
                    let message = corpus.message(ct.cursor);
                    ct.cursor += 1;
                    ct.batch_lines += 1;
                    ct.batch_bytes += message.len() as u64;
                    ct.newest_ns = ts;
                    let mut entry = LogEntry {
                        fields: Default::default(),
                        timestamp_ns: ts,
                        processed_at_ns: PA0 + i as i64,
                        message,
                        stream: StreamKind::Stdout,
                        source_type: "docker",
                        source_id: ct.source_id.clone(),
                        labels: ct.labels.clone(),
                    };
                    if let (Some(p), Some(id)) = (inline, ct.pipeline) {
                        p.apply(id, &mut entry, "");
                    }
                    entries.push(entry);
                }
                runs.push((entries.len(), ct.pipeline));
                if !ct.touched {
                    ct.touched = true;
                    touched.push(c);
                }
                c = (c + 1) % CONTAINERS;
            }
            let checkpoints = touched
                .drain(..)
                .map(|k| {
                    let ct = &mut containers[k];
                    ct.touched = false;
                    Checkpoint {
                        container_id: ct.id.clone(),
                        container_name: ct.name.clone(),
                        resume: Resume {
                            since_ns: ct.newest_ns,
                            skip: 1,
                        },
                        newest_ns: ct.newest_ns,
                        lines: std::mem::take(&mut ct.batch_lines),
                        bytes: std::mem::take(&mut ct.batch_bytes),
                    }
                })
                .collect();
            self.in_flight.fetch_add(n, Relaxed);
            emit(Work {
                seq,
                batch: Batch {
                    entries,
                    checkpoints,
                    ..Batch::default()
                },
                runs,
            });
            seq += 1;
            made += n;
        }
        thread_cpu_ns() - cpu0
    }
}

/// The corpora, built once (outside every measurement).
fn corpus(kind: Kind) -> &'static Corpus {
    static CORPORA: std::sync::OnceLock<Vec<Corpus>> = std::sync::OnceLock::new();
    let all = CORPORA.get_or_init(|| KINDS.iter().map(|&k| Corpus::new(k)).collect());
    &all[KINDS.iter().position(|&k| k == kind).unwrap()]
}

struct Consumed {
    cpu_ns: u64,
    bytes: u64,
    /// Entries a pipeline wrote fields to.
    with_fields: u64,
}

/// The dispatcher's part: every entry rendered as the file sink does, in order, once.
fn consume(rx: QueueReceiver, lines: usize, in_flight: &AtomicUsize) -> Consumed {
    let cpu0 = thread_cpu_ns();
    let mut out = Vec::with_capacity(1 << 20);
    let (mut seen, mut bytes, mut with_fields, mut checked) = (0usize, 0u64, 0u64, 0u64);
    let mut newest: FxHashMap<Arc<str>, i64> = FxHashMap::default();
    while seen < lines {
        let batch = match rx.recv(Duration::from_secs(30)) {
            Received::Batch(b) => b,
            Received::Timeout => panic!("no batch for 30 s after {seen} entries"),
            Received::Closed => panic!("queue closed after {seen} of {lines} entries"),
        };
        for e in &batch.entries {
            assert_eq!(
                e.processed_at_ns,
                PA0 + seen as i64,
                "entry {seen} lost, repeated or out of order"
            );
            seen += 1;
            with_fields += u64::from(!e.fields.is_empty());
            json_line(&mut out, e);
        }
        bytes += out.len() as u64;
        out.clear();
        for cp in &batch.checkpoints {
            let last = newest.entry(cp.container_id.clone()).or_insert(0);
            assert!(
                cp.newest_ns > *last,
                "checkpoint of {} went back",
                cp.container_name
            );
            *last = cp.newest_ns;
            checked += cp.lines;
        }
        rx.release(&batch.entries);
        in_flight.fetch_sub(batch.entries.len(), Relaxed);
        // Freed here, as the dispatcher frees what the capture thread or a worker allocated.
        drop(batch);
    }
    assert_eq!(
        checked, lines as u64,
        "checkpoints do not add up to the lines"
    );
    Consumed {
        cpu_ns: thread_cpu_ns() - cpu0,
        bytes,
        with_fields,
    }
}

/// One variant's run: ns per line.
#[derive(Clone, Debug, Default)]
struct Figures {
    /// `/proc/self/stat` (10 ms ticks: a cross-check of `threads`).
    process: f64,
    /// Producer, workers and consumer (schedstat, ns): what the ratios use.
    threads: f64,
    producer: f64,
    workers: f64,
    consumer: f64,
    wall: f64,
    bytes: u64,
    with_fields: u64,
    batches: u64,
    /// Batches that reached the reorder buffer ahead of their turn.
    early: u64,
}

fn run(placement: Placement, case: &Case) -> Figures {
    let (lines, batch) = (case.lines, case.batch);
    // A fresh processor each run: the regex crate gives the first thread to use a regex its
    // fast cache path, so a processor warmed by another thread would wrong the placements.
    let processor = match placement {
        Placement::Off => None,
        _ => Some(Arc::new(load_processor())),
    };
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = queue(IN_FLIGHT);
    let producer = Producer {
        placement,
        processor: processor.clone(),
        lines,
        batch,
        pace: case.pace,
        in_flight: in_flight.clone(),
    };
    let cpu0 = process_cpu_ns();
    let t0 = Instant::now();
    let consumer = {
        let in_flight = in_flight.clone();
        spawn(placement, "cons", move || consume(rx, lines, &in_flight))
    };
    let mut early = 0;
    let (producer_ns, workers_ns) = match placement {
        Placement::Off | Placement::Inline => {
            let p = spawn(placement, "prod", move || {
                producer.run(|w| tx.send(w.batch).unwrap_or_else(|_| panic!("consumer gone")))
            });
            (p.join().unwrap(), 0)
        }
        Placement::Pool(n) => {
            let reorder = Arc::new(Mutex::new(Reorder {
                next: 0,
                early: 0,
                held: BTreeMap::new(),
                tx,
            }));
            let processor = processor.clone().expect("a pool processes");
            let (senders, workers): (Vec<_>, Vec<_>) = (0..n)
                .map(|_| {
                    let (wtx, wrx) = mpsc::channel::<Work>();
                    let (reorder, processor) = (reorder.clone(), processor.clone());
                    let h = spawn(placement, "work", move || work(wrx, &processor, &reorder));
                    (wtx, h)
                })
                .unzip();
            let p = spawn(placement, "prod", move || {
                producer.run(|w| {
                    let to = &senders[(w.seq % senders.len() as u64) as usize];
                    to.send(w).unwrap_or_else(|_| panic!("worker gone"))
                })
            });
            let producer_ns = p.join().unwrap();
            let workers_ns = workers.into_iter().map(|h| h.join().unwrap()).sum();
            let r = reorder.lock().unwrap();
            assert!(r.held.is_empty(), "batches left in the reorder buffer");
            early = r.early;
            (producer_ns, workers_ns)
        }
    };
    let consumed = consumer.join().unwrap();
    let wall = t0.elapsed().as_nanos() as f64;
    let process = (process_cpu_ns() - cpu0) as f64;
    let per = |ns: f64| ns / lines as f64;
    Figures {
        process: per(process),
        threads: per((producer_ns + workers_ns + consumed.cpu_ns) as f64),
        producer: per(producer_ns as f64),
        workers: per(workers_ns as f64),
        consumer: per(consumed.cpu_ns as f64),
        wall: per(wall),
        bytes: consumed.bytes,
        with_fields: consumed.with_fields,
        batches: lines.div_ceil(batch) as u64,
        early,
    }
}

/// A thread named after its part and placement (`prod-inline`, `work-pool-2`): `perf report
/// --sort comm` then splits the profile by them.
fn spawn<T: Send + 'static>(
    placement: Placement,
    part: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    thread::Builder::new()
        .name(format!("{part}-{}", placement.name()))
        .spawn(f)
        .expect("spawn")
}

/// A worker: applies each batch's pipelines, then hands it back in order; its CPU, ns.
fn work(rx: mpsc::Receiver<Work>, processor: &Processor, reorder: &Mutex<Reorder>) -> u64 {
    let cpu0 = thread_cpu_ns();
    for mut w in rx {
        let mut start = 0;
        for &(end, id) in &w.runs {
            if let Some(id) = id {
                for e in &mut w.batch.entries[start..end] {
                    processor.apply(id, e, "");
                }
            }
            start = end;
        }
        reorder.lock().unwrap().put(w.seq, w.batch);
    }
    thread_cpu_ns() - cpu0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn env_usize(key: &str) -> Option<usize> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

/// `Processor::apply` alone on one thread, ns per entry, median of `reps`.
fn apply_ns(kind: Kind, reps: usize, n: usize) -> f64 {
    let processor = load_processor();
    let c = (0..CONTAINERS).find(|&c| Kind::of(c) == kind).unwrap();
    let labels = Arc::new(labels_of(c, kind));
    let id = processor
        .select(&Source {
            source_type: "docker",
            labels: &labels,
            path: None,
        })
        .unwrap();
    assert_eq!(processor.name(id), kind.pipeline());
    let corpus = corpus(kind);
    let source_id: Arc<str> = Arc::from("0123456789ab");
    let samples = (0..reps)
        .map(|_| {
            let mut entries: Vec<LogEntry> = (0..n)
                .map(|i| LogEntry {
                    fields: Default::default(),
                    timestamp_ns: T0 + i as i64,
                    processed_at_ns: PA0,
                    message: corpus.message(i),
                    stream: StreamKind::Stdout,
                    source_type: "docker",
                    source_id: source_id.clone(),
                    labels: labels.clone(),
                })
                .collect();
            let t0 = Instant::now();
            for e in &mut entries {
                processor.apply(id, e, "");
            }
            let ns = t0.elapsed().as_nanos() as f64 / n as f64;
            assert!(
                entries.iter().all(|e| !e.fields.is_empty()),
                "{kind:?}: a line the pipeline did not process"
            );
            black_box(entries);
            ns
        })
        .collect();
    median(samples)
}

fn main() {
    // `cargo test --all-targets` runs this too, unoptimised and without `--bench`: then one
    // small run of each case, for its checks (exactly once, in order, same bytes), no figures.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let quick = smoke || std::env::var_os("PLACEMENT_QUICK").is_some();
    let lines = env_usize("PLACEMENT_LINES").unwrap_or(match (smoke, quick) {
        (true, _) => 4_000,
        (_, true) => 30_000,
        _ => 60_000,
    });
    let runs = env_usize("PLACEMENT_RUNS").unwrap_or(match (smoke, quick) {
        (true, _) => 1,
        (_, true) => 5,
        _ => 15,
    });
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    for k in KINDS {
        corpus(k);
    }
    println!(
        "processing placement: {CONTAINERS} containers (70 % \
         default, 10 % each mysql, freeswitch, json_logs), {cores} cores, load {}",
        load.join(" ")
    );
    println!();
    let (reps, n) = if smoke { (1, 1_000) } else { (5, 50_000) };
    println!("Processor::apply alone, one thread, ns per entry (median of {reps} x {n} entries):");
    for kind in KINDS {
        println!("  {:<11} {:>7.0}", kind.pipeline(), apply_ns(kind, reps, n));
    }
    if std::env::var_os("PLACEMENT_APPLY_ONLY").is_some() {
        return;
    }
    let paced_lines = env_usize("PLACEMENT_PACED_LINES").unwrap_or(match (smoke, quick) {
        (true, _) => 1_000,
        (_, true) => 10_000,
        _ => 20_000,
    });
    let paced_runs = match (smoke, quick) {
        (true, _) => 1,
        (_, true) => 3,
        _ => 5,
    };
    let cases = [
        Case {
            batch: 4096,
            pace: None,
            lines,
            runs,
            what: "the capture thread's MAX_BATCH: a bulk reader",
        },
        Case {
            batch: 200,
            pace: None,
            lines,
            runs,
            what: "what 10 ms holds at 1000 streams x 20 lines/s, as fast as they go",
        },
        Case {
            batch: 200,
            pace: Some(Duration::from_millis(10)),
            lines: paced_lines,
            runs: paced_runs,
            what: "paced: a batch every 10 ms, 20 000 lines/s as 1000 streams x 20 lines/s; \
                   wall is the pacing's",
        },
    ];
    for case in &cases {
        let runs = case.runs;
        let mut figs: Vec<Vec<Figures>> = vec![Vec::new(); PLACEMENTS.len()];
        for r in 0..runs {
            // Alternate the order so no variant always runs first (or after the same one).
            let order: Vec<usize> = if r % 2 == 0 {
                (0..PLACEMENTS.len()).collect()
            } else {
                (0..PLACEMENTS.len()).rev().collect()
            };
            for i in order {
                figs[i].push(run(PLACEMENTS[i], case));
            }
            let inline = &figs[1][r];
            for (i, f) in figs.iter().enumerate().skip(2) {
                assert_eq!(
                    f[r].bytes,
                    inline.bytes,
                    "{}: other bytes",
                    PLACEMENTS[i].name()
                );
                assert_eq!(f[r].with_fields, inline.with_fields);
            }
            assert_eq!(figs[0][r].with_fields, 0);
            assert!(inline.with_fields > 0);
        }
        report(case, &figs);
    }
}

/// Lines per second the variant could reach on `cores` idle cores, from its CPU per line:
/// limited by its busiest thread (workers share their part) or by all of its CPU spread over
/// the cores, whichever is lower. A model, not a measurement: it leaves out the neighbours
/// that `wall` measures too, and the waits of a hand-off.
fn ceiling(p: Placement, f: &Figures, cores: usize) -> f64 {
    let workers = match p {
        Placement::Pool(n) => f.workers / n as f64,
        _ => 0.0,
    };
    let busiest = f.producer.max(workers).max(f.consumer);
    1e9 / busiest.max(f.threads / cores as f64)
}

/// One workload: batches of `batch` entries, paced or not.
struct Case {
    batch: usize,
    pace: Option<Duration>,
    lines: usize,
    runs: usize,
    what: &'static str,
}

fn report(case: &Case, figs: &[Vec<Figures>]) {
    let (batch, what, runs) = (case.batch, case.what, case.runs);
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let med = |i: usize, f: fn(&Figures) -> f64| median(figs[i].iter().map(f).collect());
    // Per-run ratio against inline (index 1), then the median.
    let ratio = |i: usize, f: fn(&Figures) -> f64| {
        median((0..runs).map(|r| f(&figs[i][r]) / f(&figs[1][r])).collect())
    };
    println!();
    println!(
        "batches of {batch} entries ({what}); {} lines x {runs} runs, ns per line, median:",
        case.lines
    );
    println!(
        "  {:<8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>8} {:>10} {:>10} | {:>8} {:>9} {:>9}",
        "variant",
        "process",
        "threads",
        "producer",
        "workers",
        "consumer",
        "wall",
        "lines/s",
        "ceiling",
        "thr/inl",
        "prod/inl",
        "wall/inl"
    );
    for (i, p) in PLACEMENTS.iter().enumerate() {
        println!(
            "  {:<8} {:>8.0} {:>8.0} {:>9.0} {:>8.0} {:>9.0} {:>8.0} {:>10.0} {:>10.0} | {:>8.2} {:>9.2} {:>9.2}",
            p.name(),
            med(i, |f| f.process),
            med(i, |f| f.threads),
            med(i, |f| f.producer),
            med(i, |f| f.workers),
            med(i, |f| f.consumer),
            med(i, |f| f.wall),
            1e9 / med(i, |f| f.wall),
            median(figs[i].iter().map(|f| ceiling(*p, f, cores)).collect()),
            ratio(i, |f| f.threads),
            ratio(i, |f| f.producer),
            ratio(i, |f| f.wall),
        );
    }
    // Time per line at the ceiling, against inline's: lower is better, as for the others.
    let ceil_ratio = |i: usize| {
        median(
            (0..runs)
                .map(|r| {
                    ceiling(PLACEMENTS[1], &figs[1][r], cores)
                        / ceiling(PLACEMENTS[i], &figs[i][r], cores)
                })
                .collect(),
        )
    };
    let diff = |i: usize, f: fn(&Figures) -> f64| {
        median((0..runs).map(|r| f(&figs[i][r]) - f(&figs[1][r])).collect())
    };
    let each = |i: usize| {
        let v: Vec<String> = (0..runs)
            .map(|r| format!("{:.2}", figs[i][r].threads / figs[1][r].threads))
            .collect();
        v.join(" ")
    };
    let early: Vec<String> = figs[3]
        .iter()
        .map(|f| format!("{}/{}", f.early, f.batches))
        .collect();
    println!(
        "  pool-2 batches back ahead of their turn, reordered (per run): {}",
        early.join(" ")
    );
    println!(
        "  per run, CPU (threads) pool-1/inline: {}; pool-2/inline: {}",
        each(2),
        each(3)
    );
    println!(
        "  hand-off (pool-1 - inline, CPU of the threads, median of per-run differences): {:+.0} \
         ns per line; processing inline costs the producer {:.0} ns per line over off",
        diff(2, |f| f.threads),
        med(1, |f| f.producer) - med(0, |f| f.producer),
    );
    println!(
        "  verdict (batch {batch}): least CPU per line: {}; most throughput measured: {}; \
         on {cores} idle cores (ceiling): {}; the producer (capture thread) spends {:.2} of \
         inline's CPU per line with a pool",
        judge(ratio(2, |f| f.threads), ratio(3, |f| f.threads)),
        match case.pace {
            Some(_) => "set by the pacing".to_string(),
            None => judge(ratio(2, |f| f.wall), ratio(3, |f| f.wall)),
        },
        judge(ceil_ratio(2), ceil_ratio(3)),
        ratio(2, |f| f.producer),
    );
}

/// Which placement wins on a measure, from the pools' same-run ratios against inline (lower
/// is better), with a noise band: the machine is shared.
fn judge(pool1: f64, pool2: f64) -> String {
    const BAND: f64 = 0.05;
    let (best, r) = if pool1 <= pool2 {
        ("pool-1", pool1)
    } else {
        ("pool-2", pool2)
    };
    let figures = format!("pool-1/inline {pool1:.2}, pool-2/inline {pool2:.2}");
    if r < 1.0 - BAND {
        format!("{best} ({figures})")
    } else if r > 1.0 + BAND {
        format!("inline ({figures})")
    } else {
        format!("no clear winner, within {:.0} % ({figures})", BAND * 100.0)
    }
}
