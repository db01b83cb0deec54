//! Faults of sinks and disks (RELIABILITY.md, "Sinks and disk"): the output directory deleted
//! or a file renamed mid-run, fsync failing, a path that can never be written, Loki answering
//! 413 / 429 / 401, and a sink that flaps while the dispatcher shuts down.
//!
//! Each test counts what landed (lines in the files, values Loki received, positions
//! committed) against what was sent. A failing fsync cannot be made on demand without a
//! failing disk (device-mapper is not available in these containers), so that one goes
//! through the file sink's `FileOps` seam.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log_capturer::decode::StreamKind;
use log_capturer::dispatch::{DispatchOptions, DispatchStats, Dispatcher};
use log_capturer::pipeline::entry::{Labels, LogEntry};
use log_capturer::pipeline::{queue, Batch, Checkpoint};
use log_capturer::sink::local_file::{FileOps, PATH_ATTEMPTS};
use log_capturer::sink::{LocalFileOptions, LocalFileSink, LokiOptions, LokiSink, Sink, SinkError};
use log_capturer::state::positions::{PositionStore, Resume};
use log_capturer::telemetry::SinkTimings;

const ID_A: &str = "aaaaaaaaaaaa0000000000000000000000000000000000000000000000000000";
const ID_B: &str = "bbbbbbbbbbbb0000000000000000000000000000000000000000000000000000";

fn labels(name: &str) -> Arc<Labels> {
    Arc::new(
        [("container_name".to_string(), name.to_string())]
            .into_iter()
            .collect(),
    )
}

/// `n` entries of container `name` whose messages are `{prefix}-{i}`.
fn entries(name: &str, id: &str, prefix: &str, n: usize) -> Vec<LogEntry> {
    let labels = labels(name);
    let source_id: Arc<str> = Arc::from(&id[..12]);
    (0..n)
        .map(|i| LogEntry {
            fields: Default::default(),
            timestamp_ns: 1_764_460_800_000_000_000 + i as i64,
            processed_at_ns: 1_764_460_800_000_000_000,
            message: Bytes::from(format!("{prefix}-{i}")),
            stream: StreamKind::Stdout,
            source_type: "docker",
            source_id: source_id.clone(),
            labels: labels.clone(),
        })
        .collect()
}

/// The messages in a JSON-lines file, in order; none when it does not exist.
fn messages(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["message"].as_str().unwrap().to_string()
        })
        .collect()
}

fn msgs(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

struct TempDir(PathBuf);

fn tempdir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "log_capturer_sink_faults_{}_{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn file_sink(dir: &Path) -> (LocalFileSink, PathBuf) {
    let sink = LocalFileSink::new(LocalFileOptions::new(dir)).unwrap();
    let path = sink.path_for(&entries("web", ID_A, "x", 1)[0]);
    (sink, path)
}

// ---- The output directory deleted, a file renamed ----

#[test]
fn deleted_output_directory_is_recreated_for_later_lines() {
    let tmp = tempdir("deleted_later");
    let dir = tmp.0.join("out");
    let (mut sink, path) = file_sink(&dir);
    sink.write_batch(&entries("web", ID_A, "one", 3)).unwrap();
    sink.flush().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    sink.write_batch(&entries("web", ID_A, "two", 4)).unwrap();
    sink.flush().unwrap();
    // Before: the second batch went to the unlinked inode and the path did not exist.
    assert_eq!(messages(&path), msgs("two", 4));
    assert_eq!(sink.reopened(), 1);
}

#[test]
fn lines_unsynced_when_the_directory_was_deleted_are_written_again() {
    let tmp = tempdir("deleted_unsynced");
    let dir = tmp.0.join("out");
    let (mut sink, path) = file_sink(&dir);
    sink.write_batch(&entries("web", ID_A, "one", 3)).unwrap();
    sink.flush().unwrap();
    sink.write_batch(&entries("web", ID_A, "two", 5)).unwrap();
    // Deleted after the write, before the fsync that would have made positions commit.
    std::fs::remove_dir_all(&dir).unwrap();
    sink.flush().unwrap();
    // "one" was durable when the directory went; "two" was not and is written again.
    assert_eq!(messages(&path), msgs("two", 5));
}

#[test]
fn renamed_file_keeps_its_lines_and_a_new_file_takes_later_ones() {
    let tmp = tempdir("renamed");
    let (mut sink, path) = file_sink(&tmp.0);
    sink.write_batch(&entries("web", ID_A, "one", 3)).unwrap();
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    sink.write_batch(&entries("web", ID_A, "two", 4)).unwrap();
    sink.flush().unwrap();
    assert_eq!(messages(&rotated), msgs("one", 3));
    assert_eq!(messages(&path), msgs("two", 4));
}

/// A small tmpfs mounted for one test (root is needed, as in `scripts/test.sh`), unmounted
/// when it ends.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mount tmpfs on {}: {status}",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk holds the batch (ENOSPC is retried without bound) and the torn write is cut
/// back: once there is room, every line lands once.
#[test]
fn full_disk_holds_the_batch_and_lands_it_once_there_is_room() {
    let tmp = tempdir("full");
    let fs = Tmpfs::mount(&tmp.0.join("fs"), "64k");
    let filler = fs.0.join("filler");
    std::fs::write(&filler, vec![0u8; 40 << 10]).unwrap();
    let (mut sink, path) = file_sink(&fs.0);
    // About 40 KiB of lines into the 24 KiB left.
    let batch = entries("web", ID_A, &"x".repeat(300), 120);
    for _ in 0..3 {
        let err = sink.write_batch(&batch).unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        // Nothing torn stays behind.
        assert!(messages(&path).is_empty());
    }
    std::fs::remove_file(&filler).unwrap();
    sink.write_batch(&batch).unwrap();
    sink.flush().unwrap();
    assert_eq!(messages(&path), msgs(&"x".repeat(300), 120));
    drop(sink);
}

// ---- fsync fails ----

/// Fails the fsyncs numbered in `fail` (1-based) the way Linux does: the error is reported
/// once, and the pages written since the last good fsync are as good as lost, which this
/// shows at once by cutting the file back to its last synced length.
struct FailingSync {
    calls: Arc<AtomicUsize>,
    fail: Vec<usize>,
    synced_len: BTreeMap<PathBuf, u64>,
}

impl FileOps for FailingSync {
    fn write_all(&mut self, _: &Path, file: &mut std::fs::File, buf: &[u8]) -> std::io::Result<()> {
        file.write_all(buf)
    }
    fn sync_data(&mut self, path: &Path, file: &std::fs::File) -> std::io::Result<()> {
        let n = self.calls.fetch_add(1, SeqCst) + 1;
        if self.fail.contains(&n) {
            file.set_len(*self.synced_len.get(path).unwrap_or(&0))?;
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        file.sync_data()?;
        self.synced_len
            .insert(path.to_path_buf(), file.metadata()?.len());
        Ok(())
    }
}

#[test]
fn failed_fsync_writes_again_everything_since_the_last_good_fsync() {
    let tmp = tempdir("fsync");
    let calls = Arc::new(AtomicUsize::new(0));
    let ops = FailingSync {
        calls: calls.clone(),
        fail: vec![2],
        synced_len: BTreeMap::new(),
    };
    let mut sink =
        LocalFileSink::with_file_ops(LocalFileOptions::new(&tmp.0), Box::new(ops)).unwrap();
    let path = sink.path_for(&entries("web", ID_A, "x", 1)[0]);
    sink.write_batch(&entries("web", ID_A, "one", 3)).unwrap();
    sink.flush().unwrap();
    sink.write_batch(&entries("web", ID_A, "two", 4)).unwrap();
    let err = sink.flush().unwrap_err();
    assert!(err.to_string().contains("fsync"), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    // The next flush succeeds (Linux would not report the error again); before, it returned Ok
    // with "two" gone.
    sink.flush().unwrap();
    assert_eq!(calls.load(SeqCst), 3);
    assert_eq!(sink.fsync_errors(), 1);
    let mut want = msgs("one", 3);
    want.extend(msgs("two", 4));
    assert_eq!(messages(&path), want);
}

/// Through the dispatcher: positions are not committed while the fsync fails, and are once
/// the rewritten lines are synced.
#[test]
fn positions_wait_for_a_good_fsync() {
    let tmp = tempdir("fsync_positions");
    let out = tmp.0.join("out");
    let calls = Arc::new(AtomicUsize::new(0));
    let ops = FailingSync {
        calls: calls.clone(),
        fail: vec![1, 2, 3],
        synced_len: BTreeMap::new(),
    };
    let sink = LocalFileSink::with_file_ops(LocalFileOptions::new(&out), Box::new(ops)).unwrap();
    let (tx, rx) = queue(1000);
    let positions = Arc::new(Mutex::new(PositionStore::load(&tmp.0).unwrap()));
    let stats = Arc::new(DispatchStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let dispatcher = Dispatcher::new(
        rx,
        vec![Box::new(sink)],
        positions.clone(),
        options(Duration::from_millis(20)),
        stats.clone(),
        Arc::new(SinkTimings::default()),
        stop,
    );
    let run = thread::spawn(move || dispatcher.run());
    tx.send(batch(
        entries("web", ID_A, "one", 5),
        &[(ID_A, "web", 100, 5)],
    ))
    .unwrap();
    // Three failed fsyncs, then a good one: the commit comes only after it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats.commits.load(SeqCst) == 0 {
        assert!(Instant::now() < deadline, "positions never committed");
        if calls.load(SeqCst) <= 3 {
            assert_eq!(
                stats.commits.load(SeqCst),
                0,
                "committed over a failed fsync"
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
    assert!(calls.load(SeqCst) >= 4);
    drop(tx);
    run.join().unwrap();
    let path = out.join(LocalFileOptions::new(&out).file_name(&entries("web", ID_A, "x", 1)[0]));
    assert_eq!(messages(&path), msgs("one", 5));
    let committed = PositionStore::load(&tmp.0).unwrap();
    assert_eq!(committed.resume(ID_A).unwrap().since_ns, 100);
}

// ---- A path that can never be written ----

#[test]
fn unwritable_path_is_given_up_after_a_bound_and_never_duplicates_the_others() {
    let tmp = tempdir("unwritable");
    let (mut sink, good) = file_sink(&tmp.0);
    let bad = sink.path_for(&entries("bad", ID_B, "x", 1)[0]);
    std::fs::create_dir(&bad).unwrap(); // EISDIR
    let mut batch = entries("web", ID_A, "one", 3);
    batch.extend(entries("bad", ID_B, "lost", 2));
    for attempt in 1..PATH_ATTEMPTS {
        let err = sink.write_batch(&batch).unwrap_err();
        assert!(err.is_retryable(), "attempt {attempt}: {err}");
        assert!(
            err.to_string().contains(&bad.display().to_string()),
            "{err}"
        );
    }
    let err = sink.write_batch(&batch).unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.dropped_lines(), Some(2));
    assert_eq!(err.drop_reason(), Some("unwritable_path"));
    // Before: every retry appended "one" again.
    assert_eq!(messages(&good), msgs("one", 3));

    // Given up: a later batch tries the path once and goes on.
    let mut later = entries("web", ID_A, "two", 2);
    later.extend(entries("bad", ID_B, "lost2", 1));
    assert_eq!(
        sink.write_batch(&later).unwrap_err().dropped_lines(),
        Some(1)
    );
    // Fixed by the operator: it recovers on the next batch.
    std::fs::remove_dir(&bad).unwrap();
    let mut fixed = entries("web", ID_A, "three", 1);
    fixed.extend(entries("bad", ID_B, "back", 2));
    sink.write_batch(&fixed).unwrap();
    sink.flush().unwrap();
    let mut want = msgs("one", 3);
    want.extend(msgs("two", 2));
    want.extend(msgs("three", 1));
    assert_eq!(messages(&good), want);
    assert_eq!(messages(&bad), msgs("back", 2));
}

/// A container name over NAME_MAX through the dispatcher: the other container's lines land
/// once, the long name's are counted in `lines_dropped_total{reason="local_file_unwritable_path"}`,
/// and the dispatcher goes on (before, it retried forever, holding every container).
#[test]
fn name_over_name_max_is_counted_dropped_and_does_not_block() {
    let tmp = tempdir("name_max");
    let out = tmp.0.join("out");
    let long = "n".repeat(300);
    let sink = LocalFileSink::new(LocalFileOptions::new(&out)).unwrap();
    let good = sink.path_for(&entries("web", ID_A, "x", 1)[0]);
    let (tx, rx) = queue(1000);
    let positions = Arc::new(Mutex::new(PositionStore::load(&tmp.0).unwrap()));
    let stats = Arc::new(DispatchStats::default());
    let dispatcher = Dispatcher::new(
        rx,
        vec![Box::new(sink)],
        positions,
        options(Duration::from_millis(50)),
        stats.clone(),
        Arc::new(SinkTimings::default()),
        Arc::new(AtomicBool::new(false)),
    );
    let mut e = entries("web", ID_A, "ok", 4);
    e.extend(entries(&long, ID_B, "long", 3));
    tx.send(batch(e, &[(ID_A, "web", 100, 4), (ID_B, &long, 200, 3)]))
        .unwrap();
    tx.send(batch(
        entries("web", ID_A, "after", 2),
        &[(ID_A, "web", 300, 2)],
    ))
    .unwrap();
    drop(tx);
    let left = dispatcher.run();
    assert_eq!(left.lines, 0);
    let mut want = msgs("ok", 4);
    want.extend(msgs("after", 2));
    assert_eq!(messages(&good), want);
    assert_eq!(
        stats
            .dropped
            .lock()
            .unwrap()
            .get("local_file_unwritable_path"),
        Some(&3)
    );
    assert_eq!(stats.lines_delivered.load(SeqCst), 9);
}

// ---- A sink flapping at shutdown ----

/// Fails every write while `fail` is set, and fails the first write of all.
struct Flapping {
    calls: Arc<AtomicUsize>,
    written: Arc<Mutex<Vec<String>>>,
}

impl Sink for Flapping {
    fn name(&self) -> &'static str {
        "stdout"
    }
    fn write_batch(&mut self, entries: &[LogEntry]) -> Result<(), SinkError> {
        // Down on odd calls, up on even ones.
        if self.calls.fetch_add(1, SeqCst) % 2 == 0 {
            return Err(SinkError::Write {
                sink: "stdout",
                source: std::io::Error::from_raw_os_error(libc::EPIPE),
            });
        }
        let mut w = self.written.lock().unwrap();
        w.extend(
            entries
                .iter()
                .map(|e| String::from_utf8_lossy(&e.message).into_owned()),
        );
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[test]
fn flapping_sink_at_shutdown_never_lets_positions_pass_a_lost_batch() {
    let tmp = tempdir("flapping");
    let calls = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(Mutex::new(Vec::new()));
    let sink = Flapping {
        calls: calls.clone(),
        written: written.clone(),
    };
    let (tx, rx) = queue(1000);
    let positions = Arc::new(Mutex::new(PositionStore::load(&tmp.0).unwrap()));
    let stats = Arc::new(DispatchStats::default());
    // Stopped already, with no time left for retries: the first failure gives a batch up.
    let stop = Arc::new(AtomicBool::new(true));
    let mut opts = options(Duration::from_millis(10));
    opts.shutdown_timeout = Duration::ZERO;
    // Each batch below is a full one: delivered on its own, not merged with the next.
    opts.batch_size = 2;
    let dispatcher = Dispatcher::new(
        rx,
        vec![Box::new(sink)],
        positions.clone(),
        opts,
        stats,
        Arc::new(SinkTimings::default()),
        stop,
    );
    // Batch 1 (A) fails and is given up; batch 2 (A and B) gets through.
    tx.send(batch(
        entries("web", ID_A, "lost", 2),
        &[(ID_A, "web", 100, 2)],
    ))
    .unwrap();
    let mut second = entries("web", ID_A, "later", 1);
    second.extend(entries("db", ID_B, "b", 1));
    tx.send(batch(
        second,
        &[(ID_A, "web", 200, 1), (ID_B, "db", 300, 1)],
    ))
    .unwrap();
    drop(tx);
    let left = dispatcher.run();
    assert_eq!(left.lines, 2);
    assert_eq!(*written.lock().unwrap(), vec!["later-0", "b-0"]);
    let committed = PositionStore::load(&tmp.0).unwrap();
    // Before: A's position moved to 200, past the 2 lost lines, which were never read again.
    assert_eq!(committed.resume(ID_A), None, "{:?}", committed.get(ID_A));
    assert_eq!(committed.resume(ID_B).unwrap().since_ns, 300);
}

// ---- Loki: 413, Retry-After, configuration errors ----

/// A Loki stand-in: answers each push with `answer(values in the push)` and records the
/// values it accepted (2xx).
struct FakeLoki {
    url: String,
    accepted: Arc<Mutex<Vec<String>>>,
    pushes: Arc<Mutex<Vec<(Instant, u16)>>>,
}

fn fake_loki(answer: impl Fn(usize, usize) -> (u16, &'static str) + Send + 'static) -> FakeLoki {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let pushes = Arc::new(Mutex::new(Vec::new()));
    let (acc, pu) = (accepted.clone(), pushes.clone());
    thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let Some(body) = read_body(&stream) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let values: Vec<String> = v["streams"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s["values"].as_array().unwrap().iter())
                .map(|v| v[1].as_str().unwrap().to_string())
                .collect();
            let (status, extra) = answer(n, values.len());
            pu.lock().unwrap().push((Instant::now(), status));
            if (200..300).contains(&status) {
                acc.lock().unwrap().extend(values);
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n{extra}\r\nno"
            );
        }
    });
    FakeLoki {
        url,
        accepted,
        pushes,
    }
}

/// The request body, gunzipped.
fn read_body(stream: &TcpStream) -> Option<Vec<u8>> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    let mut len = 0;
    let mut gzip = false;
    r.read_line(&mut line).ok()?;
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        gzip |= l == "content-encoding: gzip";
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .ok()?;
        body = out;
    }
    Some(body)
}

#[test]
fn loki_413_splits_the_batch_until_it_fits() {
    // Loki takes at most 3 values per push.
    let loki = fake_loki(|_, values| if values > 3 { (413, "") } else { (204, "") });
    let mut sink = LokiSink::new(LokiOptions::new(&loki.url)).unwrap();
    let batch = entries("web", ID_A, "m", 10);
    // Before: the whole batch was dropped as loki_too_large.
    sink.write_batch(&batch).unwrap();
    assert_eq!(*loki.accepted.lock().unwrap(), msgs("m", 10));
    assert_eq!(sink.stats().entries_sent(), 10);
    assert_eq!(sink.stats().entries_rejected(), 0);
}

#[test]
fn loki_413_on_a_single_entry_drops_only_that_entry() {
    // Loki refuses any push holding "m-1", whatever its size.
    let loki = fake_loki_by_content();
    let mut sink = LokiSink::new(LokiOptions::new(&loki.url)).unwrap();
    let err = sink.write_batch(&entries("web", ID_A, "m", 4)).unwrap_err();
    assert_eq!(err.dropped_lines(), Some(1));
    assert_eq!(err.drop_reason(), Some("loki_too_large"));
    assert_eq!(*loki.accepted.lock().unwrap(), vec!["m-0", "m-2", "m-3"]);
}

/// Answers 413 to any push containing the value `m-1`.
fn fake_loki_by_content() -> FakeLoki {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let acc = accepted.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let Some(body) = read_body(&stream) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let values: Vec<String> = v["streams"][0]["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v[1].as_str().unwrap().to_string())
                .collect();
            let status = if values.iter().any(|v| v == "m-1") {
                413
            } else {
                acc.lock().unwrap().extend(values);
                204
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    FakeLoki {
        url,
        accepted,
        pushes: Arc::default(),
    }
}

/// A 429 with `Retry-After: 3` is retried no sooner than 3 s later (the backoff alone waits
/// 0.5 to 1 s), and the part of the batch that landed before it is not pushed again.
#[test]
fn loki_429_retry_after_is_honoured_and_the_retry_skips_what_landed() {
    // 5 values per push at most (413 above); the second push of 5 is refused once with 429.
    let loki = fake_loki(|n, values| match (n, values) {
        (_, v) if v > 5 => (413, ""),
        (2, _) => (429, "Retry-After: 3\r\n"),
        _ => (204, ""),
    });
    let sink = LokiSink::new(LokiOptions::new(&loki.url)).unwrap();
    let tmp = tempdir("retry_after");
    let (tx, rx) = queue(1000);
    let positions = Arc::new(Mutex::new(PositionStore::load(&tmp.0).unwrap()));
    let stats = Arc::new(DispatchStats::default());
    let mut opts = options(Duration::from_millis(10));
    opts.batch_size = 10;
    let dispatcher = Dispatcher::new(
        rx,
        vec![Box::new(sink)],
        positions,
        opts,
        stats.clone(),
        Arc::new(SinkTimings::default()),
        Arc::new(AtomicBool::new(false)),
    );
    tx.send(batch(
        entries("web", ID_A, "m", 10),
        &[(ID_A, "web", 100, 10)],
    ))
    .unwrap();
    drop(tx);
    dispatcher.run();
    let pushes = loki.pushes.lock().unwrap().clone();
    let statuses: Vec<u16> = pushes.iter().map(|p| p.1).collect();
    assert_eq!(statuses, vec![413, 204, 429, 204]);
    let waited = pushes[3].0 - pushes[2].0;
    assert!(waited >= Duration::from_secs(3), "retried after {waited:?}");
    assert_eq!(*loki.accepted.lock().unwrap(), msgs("m", 10));
    assert_eq!(stats.retries.load(SeqCst), 1);
}

/// A 401 is held and retried (nothing is lost), shown at once in the dispatcher's
/// configuration errors (`/health`), and cleared when Loki accepts again.
#[test]
fn loki_401_is_a_configuration_error_until_it_clears() {
    let ok = Arc::new(AtomicBool::new(false));
    let ok2 = ok.clone();
    let loki = fake_loki(move |_, _| {
        if ok2.load(SeqCst) {
            (204, "")
        } else {
            (401, "")
        }
    });
    let sink = LokiSink::new(LokiOptions::new(&loki.url)).unwrap();
    let tmp = tempdir("auth");
    let (tx, rx) = queue(1000);
    let positions = Arc::new(Mutex::new(PositionStore::load(&tmp.0).unwrap()));
    let stats = Arc::new(DispatchStats::default());
    let dispatcher = Dispatcher::new(
        rx,
        vec![Box::new(sink)],
        positions,
        options(Duration::from_millis(10)),
        stats.clone(),
        Arc::new(SinkTimings::default()),
        Arc::new(AtomicBool::new(false)),
    );
    tx.send(batch(
        entries("web", ID_A, "m", 3),
        &[(ID_A, "web", 100, 3)],
    ))
    .unwrap();
    drop(tx);
    let run = thread::spawn(move || dispatcher.run());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let errors = stats.config_errors.lock().unwrap().clone();
        if let Some(e) = errors.get("loki") {
            assert!(e.contains("401"), "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "no configuration error shown");
        thread::sleep(Duration::from_millis(5));
    }
    ok.store(true, SeqCst);
    run.join().unwrap();
    assert!(stats.config_errors.lock().unwrap().is_empty());
    assert_eq!(*loki.accepted.lock().unwrap(), msgs("m", 3));
    assert_eq!(stats.dropped_total(), 0);
}

// ---- helpers ----

fn options(commit_interval: Duration) -> DispatchOptions {
    DispatchOptions {
        batch_size: 1000,
        batch_timeout: Duration::from_millis(1),
        commit_interval,
        shutdown_timeout: Duration::from_secs(30),
        cleanup_interval: Duration::from_secs(60),
        max_position_age: Duration::from_secs(12 * 3600),
    }
}

/// A batch with checkpoints `(container id, name, since_ns, lines)`.
fn batch(entries: Vec<LogEntry>, checkpoints: &[(&str, &str, i64, u64)]) -> Batch {
    Batch {
        entries,
        checkpoints: checkpoints
            .iter()
            .map(|&(id, name, since_ns, lines)| Checkpoint {
                container_id: Arc::from(id),
                container_name: Arc::from(name),
                resume: Resume { since_ns, skip: 0 },
                newest_ns: since_ns,
                lines,
                bytes: lines,
            })
            .collect(),
        removed: vec![],
        file_checkpoints: vec![],
    }
}
