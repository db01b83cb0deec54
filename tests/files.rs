//! File monitoring end to end: the daemon binary tails files a writer thread of the test
//! appends numbered lines to, with no Docker (container_monitor disabled), through the
//! local_file sink (`filename_pattern_files: "{nomedoarquivomonitorado}.log"`).
//!
//! - rename+create and copytruncate rotations and a SIGTERM restart, all while writing:
//!   every line exactly once, `source_type` `file`, one `source_id` per path;
//! - a SIGKILL restart while writing: no line missing, duplicates bounded by what a commit
//!   interval delivers;
//! - a file created after start in a watched directory is read, an excluded file is never
//!   opened (an inotify watch of the test's own sees no open), a symlink to a file outside
//!   is not followed, a listed file missing at start is picked up when it appears;
//! - a `file_positions.json` written by Go is resumed from;
//! - processing: pipelines chosen per file; `multiline` stack traces (the fixture
//!   `stack_traces.txt`) written in pieces, across a SIGTERM or SIGKILL restart, across a
//!   rename or a copytruncate: each group once and whole;
//! - `file_positions.json` pruning: records of files gone dropped, of existing ones kept.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/scratch.rs"]
mod scratch;
use scratch::Scratch;

const BIN: &str = env!("CARGO_BIN_EXE_log_capturer");
const POLL: Duration = Duration::from_millis(50);
const WITHIN: Duration = Duration::from_secs(60);

/// The capturer as a child process, killed if the test ends first.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(s: &Scratch, config: &Path, n: usize) -> Daemon {
        Daemon::start_args(s, config, n, &[])
    }

    fn start_args(s: &Scratch, config: &Path, n: usize, args: &[&str]) -> Daemon {
        let log = s.0.join(format!("capturer-{n}.log"));
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(config).args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("SSW_") || k == "DOCKER_HOST" || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start the capturer");
        let d = Daemon { child, log };
        d.wait_log("file monitoring:");
        d
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, what: &str) {
        wait_until(&format!("{what:?} in the log"), || {
            self.log().contains(what)
        });
    }

    fn signal(&mut self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// SIGTERM; the capturer must exit 0.
    fn terminate(mut self) -> String {
        self.signal(rustix::process::Signal::TERM);
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit {status}:\n{}", self.log());
                return self.log();
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            thread::sleep(POLL);
        }
    }

    /// Waits for an exit of its own (`--once`), which must be 0.
    fn wait_exit(mut self) -> String {
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit {status}:\n{}", self.log());
                return self.log();
            }
            assert!(Instant::now() < deadline, "no exit");
            thread::sleep(POLL);
        }
    }

    fn kill(mut self) {
        self.signal(rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let text = self.log();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "---- last lines of {} ----\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(POLL);
    }
}

/// A config with the file monitor on, Docker off, and the file sink in `out/`.
fn config(s: &Scratch, pipeline: &str) -> PathBuf {
    config_with(s, pipeline, "batch_size: 500\n  batch_timeout: 100ms", true)
}

/// [`config`] with these `dispatcher:` lines, and inotify or polling.
fn config_with(s: &Scratch, pipeline: &str, dispatcher: &str, inotify: bool) -> PathBuf {
    let dir = s.0.display();
    let pipeline_path = s.0.join("file_pipeline.yml");
    fs::write(&pipeline_path, pipeline).unwrap();
    let yaml = format!(
        "app:\n  log_level: info\n  log_format: text\n\
         server:\n  enabled: true\n  host: 127.0.0.1\n  port: {port}\n\
         metrics:\n  enabled: false\n\
         container_monitor:\n  enabled: false\n\
         file_monitor_service:\n  enabled: true\n  pipeline_file: {pipeline}\n  \
         read_interval: 100ms\n  inotify: {inotify}\n\
         dispatcher:\n  {dispatcher}\n\
         positions:\n  directory: {dir}/positions\n  flush_interval: 1s\n\
         sinks:\n  loki:\n    enabled: false\n  local_file:\n    enabled: true\n    \
         directory: {dir}/out\n    output_format: json\n    \
         filename_pattern_files: \"{{nomedoarquivomonitorado}}.log\"\n",
        pipeline = pipeline_path.display(),
        port = free_port(),
    );
    let path = s.0.join("config.yaml");
    fs::write(&path, yaml).unwrap();
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// GET `path` from the capturer's API: the body.
fn get(d: &Daemon, path: &str) -> String {
    use std::io::Read;
    let log = d.log();
    let addr = log
        .lines()
        .find_map(|l| l.split("HTTP API listening on ").nth(1))
        .expect("the API address in the log")
        .trim()
        .to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// The JSON entries the file sink wrote to `out/NAME.log`.
fn captured(s: &Scratch, name: &str) -> Vec<Value> {
    let text = fs::read_to_string(s.0.join("out").join(format!("{name}.log"))).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn messages(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|v| v["message"].as_str().unwrap().to_string())
        .collect()
}

/// How a writer rotates its file at line `at`.
#[derive(Clone)]
enum Rotation {
    None,
    /// logrotate `create`: rename to `.1`, a few more lines to the old fd (the program has
    /// not reopened yet), then a new file at the path.
    RenameCreate {
        at: usize,
    },
    /// logrotate `copytruncate`: copy to `.1`, then truncate in place and go on writing.
    /// The copy-to-truncate window loses lines for every tailer (logrotate says so), so the
    /// writer waits until the capturer delivered its last line before truncating.
    CopyTruncate {
        at: usize,
        out: PathBuf,
    },
}

/// Appends `{prefix} {i:06}` for i in 1..=n, one line per `every`; `written` counts them.
fn writer(
    path: PathBuf,
    prefix: &'static str,
    n: usize,
    every: Duration,
    rotation: Rotation,
    written: Arc<AtomicUsize>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap()
        };
        let mut f = open(&path);
        let rotated = PathBuf::from(format!("{}.1", path.display()));
        for i in 1..=n {
            match &rotation {
                Rotation::RenameCreate { at } if i == *at => {
                    fs::rename(&path, &rotated).unwrap();
                    for j in i..i + 5 {
                        writeln!(f, "{prefix} {j:06}").unwrap();
                    }
                    f = open(&path);
                }
                Rotation::CopyTruncate { at, out } if i == *at => {
                    let last = format!("\"{prefix} {:06}\"", i - 1);
                    wait_until("the last line before copytruncate delivered", || {
                        fs::read_to_string(out).unwrap_or_default().contains(&last)
                    });
                    fs::copy(&path, &rotated).unwrap();
                    f.set_len(0).unwrap();
                }
                _ => {}
            }
            if let Rotation::RenameCreate { at } = rotation {
                if (at..at + 5).contains(&i) {
                    written.store(i, SeqCst);
                    continue;
                }
            }
            writeln!(f, "{prefix} {i:06}").unwrap();
            written.store(i, SeqCst);
            thread::sleep(every);
        }
    })
}

/// How often each numbered line of `prefix` (1..=n) is in `msgs`.
fn counts(msgs: &[String], prefix: &str, n: usize) -> (Vec<usize>, Vec<usize>) {
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    for m in msgs {
        let num = m
            .strip_prefix(prefix)
            .and_then(|r| r.trim().parse::<usize>().ok())
            .unwrap_or_else(|| panic!("unexpected line {m:?}"));
        *seen.entry(num).or_default() += 1;
    }
    let missing = (1..=n).filter(|i| !seen.contains_key(i)).collect();
    let twice = seen
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(&i, _)| i)
        .collect();
    (missing, twice)
}

fn pipeline(listed: &Path, dir: &Path) -> String {
    format!(
        "files:\n\
         - path: {listed}\n  labels:\n    team: core\n  enabled: true\n\
         - path: /nonexistent/disabled.log\n  enabled: false\n\
         directories:\n\
         - path: {dir}\n  patterns: [\"*.log\"]\n  exclude_patterns: [\"*.gz\", \"*secret*\"]\n  \
         exclude_directories: [archive]\n  recursive: true\n  default_labels:\n    \
         log_type: app\n  enabled: true\n\
         monitoring:\n  directory_scan_interval: 30\n",
        listed = listed.display(),
        dir = dir.display()
    )
}

/// Two files written at once (one listed, one found through `directories:`), one rotated by
/// rename and create, the other by copytruncate, and the capturer restarted by SIGTERM in
/// between: every line exactly once.
#[test]
fn rotations_and_a_sigterm_restart_deliver_every_line_exactly_once() {
    rotations_and_a_sigterm_restart(true);
}

/// The same where inotify is not used (`file_monitor_service.inotify: false`): polling every
/// `read_interval` (100 ms) finds the same changes.
#[test]
fn rotations_and_a_sigterm_restart_when_polling() {
    rotations_and_a_sigterm_restart(false);
}

fn rotations_and_a_sigterm_restart(inotify: bool) {
    let s = Scratch::new(
        "files",
        if inotify {
            "rotations"
        } else {
            "rotations-poll"
        },
    );
    let listed_dir = s.0.join("listed");
    let dir = s.0.join("logs");
    fs::create_dir_all(&listed_dir).unwrap();
    fs::create_dir_all(dir.join("archive")).unwrap();
    let listed = listed_dir.join("listed.log");
    let app = dir.join("app.log");
    // Matches *.log but sits in an excluded directory.
    fs::write(dir.join("archive/old.log"), "archived\n").unwrap();
    let cfg = config_with(
        &s,
        &pipeline(&listed, &dir),
        "batch_size: 500\n  batch_timeout: 100ms",
        inotify,
    );
    const N: usize = 4000;
    let (wl, wa) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // The app file must exist for the first scan; the listed one may come later.
    File::create(&app).unwrap();
    let d = Daemon::start(&s, &cfg, 1);
    let every = Duration::from_micros(1500);
    let t1 = writer(
        listed.clone(),
        "listed",
        N,
        every,
        Rotation::RenameCreate { at: 1200 },
        wl.clone(),
    );
    let t2 = writer(
        app.clone(),
        "app",
        N,
        every,
        Rotation::CopyTruncate {
            at: 2600,
            out: s.0.join("out/app.log"),
        },
        wa.clone(),
    );
    // SIGTERM once both are past their first thousand lines (the rename comes before or
    // after it depending on timing; the copytruncate after the restart).
    wait_until("1,500 lines written", || {
        wl.load(SeqCst) >= 1500 && wa.load(SeqCst) >= 1500
    });
    let log1 = d.terminate();
    assert!(log1.contains("monitoring file"), "{log1}");
    let d = Daemon::start(&s, &cfg, 2);
    t1.join().unwrap();
    t2.join().unwrap();
    wait_until("every line delivered", || {
        captured(&s, "listed").len() >= N && captured(&s, "app").len() >= N
    });
    let log2 = d.terminate();
    assert_eq!(
        log1.contains("files are polled"),
        !inotify,
        "inotify {inotify}:\n{log1}"
    );
    assert!(
        log2.contains("truncated or rewritten in place"),
        "copytruncate not seen:\n{log2}"
    );
    assert!(
        log1.contains("replaced by another file")
            || log2.contains("replaced by another file")
            || log1.contains("gone (renamed")
            || log2.contains("gone (renamed"),
        "rename not seen"
    );
    for (name, prefix, path) in [("listed", "listed", &listed), ("app", "app", &app)] {
        let entries = captured(&s, name);
        let (missing, twice) = counts(&messages(&entries), prefix, N);
        assert!(missing.is_empty(), "{name}: missing {missing:?}");
        assert!(twice.is_empty(), "{name}: delivered twice {twice:?}");
        assert_eq!(entries.len(), N, "{name}");
        let ids: BTreeSet<&str> = entries
            .iter()
            .map(|e| e["source_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "{name}: one source_id per path: {ids:?}");
        for e in &entries {
            assert_eq!(e["source_type"], "file");
            assert_eq!(e["labels"]["file_path"], path.display().to_string());
            assert_eq!(e["labels"]["file_name"], format!("{name}.log"));
        }
    }
    assert_eq!(captured(&s, "listed")[0]["labels"]["team"], "core");
    assert_eq!(captured(&s, "app")[0]["labels"]["log_type"], "app");
    assert!(captured(&s, "old").is_empty(), "excluded directory read");
    // The accounting line holds (no `accounting:` error) and the positions are Go-shaped.
    assert!(!log2.contains("accounting:"), "{log2}");
    let positions: Value =
        serde_json::from_slice(&fs::read(s.0.join("positions/file_positions.json")).unwrap())
            .unwrap();
    let rec = &positions[app.display().to_string()];
    assert_eq!(rec["file_path"], app.display().to_string());
    assert_eq!(rec["offset"], fs::metadata(&app).unwrap().len());
    assert!(rec["inode"].as_u64().unwrap() > 0 && rec["fingerprint"].is_u64());
}

/// SIGKILL while writing: after the restart no line is missing, and the lines delivered
/// twice are at most those of one commit interval (1 s here, at ~660 lines/s per file).
#[test]
fn a_sigkill_restart_loses_no_line_and_repeats_a_bounded_few() {
    let s = Scratch::new("files", "sigkill");
    let dir = s.0.join("logs");
    fs::create_dir_all(&dir).unwrap();
    let listed = s.0.join("listed.log");
    let app = dir.join("app.log");
    File::create(&app).unwrap();
    let cfg = config(&s, &pipeline(&listed, &dir));
    const N: usize = 4000;
    let (wl, wa) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let d = Daemon::start(&s, &cfg, 1);
    let every = Duration::from_micros(1500);
    let t1 = writer(
        listed.clone(),
        "listed",
        N,
        every,
        Rotation::None,
        wl.clone(),
    );
    let t2 = writer(app.clone(), "app", N, every, Rotation::None, wa.clone());
    wait_until("2,000 lines written", || {
        wl.load(SeqCst) >= 2000 && wa.load(SeqCst) >= 2000
    });
    // Past at least one commit.
    wait_until("a commit", || {
        s.0.join("positions/file_positions.json").exists()
    });
    d.kill();
    let d = Daemon::start(&s, &cfg, 2);
    t1.join().unwrap();
    t2.join().unwrap();
    wait_until("every line delivered", || {
        let l = messages(&captured(&s, "listed"));
        let a = messages(&captured(&s, "app"));
        counts(&l, "listed", N).0.is_empty() && counts(&a, "app", N).0.is_empty()
    });
    let log = d.terminate();
    assert!(log.contains("resuming at byte"), "{log}");
    for name in ["listed", "app"] {
        let (missing, twice) = counts(&messages(&captured(&s, name)), name, N);
        assert!(missing.is_empty(), "{name}: missing {missing:?}");
        // 1 s commit interval + 100 ms batches at ~660 lines/s, with slack for a loaded
        // machine: well under the 2,000 lines read before the kill.
        assert!(twice.len() <= 1500, "{name}: {} duplicates", twice.len());
        eprintln!(
            "{name}: {} lines delivered twice after SIGKILL",
            twice.len()
        );
    }
}

/// Discovery and its limits: a file created after start is read; an excluded file is never
/// opened; a symlink to a file outside the directory is not followed; a listed file missing
/// at start is a warning, then read once it appears.
#[test]
fn new_files_are_found_and_excluded_or_outside_files_never_opened() {
    let s = Scratch::new("files", "discovery");
    let dir = s.0.join("logs");
    let outside = s.0.join("outside");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("target.log"), "outside 1\n").unwrap();
    std::os::unix::fs::symlink(outside.join("target.log"), dir.join("link.log")).unwrap();
    let secret = dir.join("db-secret.log");
    fs::write(&secret, "password=hunter2\n").unwrap();
    // The test's own inotify watch: any open of the excluded file shows as IN_OPEN.
    use rustix::fs::inotify;
    let ino =
        inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK).unwrap();
    inotify::add_watch(&ino, &secret, inotify::WatchFlags::OPEN).unwrap();
    let listed = s.0.join("later/listed.log");
    let cfg = config(&s, &pipeline(&listed, &dir));
    let d = Daemon::start(&s, &cfg, 1);
    d.wait_log("listed file does not exist");
    fs::write(dir.join("new.log"), "new 1\nnew 2\n").unwrap();
    fs::create_dir_all(listed.parent().unwrap()).unwrap();
    fs::write(&listed, "listed 1\n").unwrap();
    wait_until("the new and the listed file delivered", || {
        captured(&s, "new").len() == 2 && captured(&s, "listed").len() == 1
    });
    // Let a scan and a few passes go by before looking for opens.
    thread::sleep(Duration::from_millis(500));
    let log = d.terminate();
    assert_eq!(messages(&captured(&s, "new")), ["new 1", "new 2"]);
    assert!(captured(&s, "target").is_empty() && captured(&s, "link").is_empty());
    assert!(captured(&s, "db-secret").is_empty());
    assert!(!log.contains("db-secret"), "{log}");
    let mut buf = vec![std::mem::MaybeUninit::uninit(); 4096];
    let mut reader = inotify::Reader::new(&ino, &mut buf);
    assert!(
        reader.next().is_err(),
        "the excluded file was opened by the capturer"
    );
}

/// Rotated by rename and create while the capturer is stopped, after lines were added: the
/// rotated file is read from the committed offset, then the new one; every line once.
#[test]
fn a_rotation_while_stopped_loses_nothing() {
    let s = Scratch::new("files", "rotated-while-down");
    let dir = s.0.join("logs");
    fs::create_dir_all(&dir).unwrap();
    let listed = s.0.join("listed.log");
    let append = |path: &Path, from: usize, to: usize| {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for i in from..=to {
            writeln!(f, "listed {i:06}").unwrap();
        }
    };
    append(&listed, 1, 100);
    let cfg = config(&s, &pipeline(&listed, &dir));
    let d = Daemon::start(&s, &cfg, 1);
    wait_until("100 lines", || captured(&s, "listed").len() == 100);
    d.terminate();
    // Written while down, then rotated, then the new file.
    append(&listed, 101, 150);
    fs::rename(&listed, s.0.join("listed.log.1")).unwrap();
    append(&listed, 151, 200);
    let d = Daemon::start(&s, &cfg, 2);
    wait_until("200 lines", || captured(&s, "listed").len() >= 200);
    thread::sleep(Duration::from_millis(300));
    let log = d.terminate();
    assert!(log.contains("rotated while stopped"), "{log}");
    let want: Vec<String> = (1..=200).map(|i| format!("listed {i:06}")).collect();
    assert_eq!(messages(&captured(&s, "listed")), want);
}

/// SIGKILL right after a rename+create rotation, while the program still appends to the
/// rotated file (it has not reopened yet): the restart reads the rotated file from its
/// committed offset, so its later lines are not lost; every line once.
#[test]
fn a_sigkill_while_a_rotated_file_is_still_read_loses_none_of_it() {
    let s = Scratch::new("files", "kill-draining");
    let dir = s.0.join("logs");
    fs::create_dir_all(&dir).unwrap();
    let listed = s.0.join("listed.log");
    let rotated = s.0.join("listed.log.1");
    let mut old = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&listed)
        .unwrap();
    let write = |f: &mut File, from: usize, to: usize| {
        for i in from..=to {
            writeln!(f, "listed {i:06}").unwrap();
        }
    };
    write(&mut old, 1, 100);
    let cfg = config(&s, &pipeline(&listed, &dir));
    let d = Daemon::start(&s, &cfg, 1);
    wait_until("100 lines", || captured(&s, "listed").len() == 100);
    fs::rename(&listed, &rotated).unwrap();
    fs::write(&listed, "new 000001\n").unwrap();
    write(&mut old, 101, 150);
    let key = listed.display().to_string();
    wait_until("the rotated file's position committed", || {
        let p: Value = fs::read(s.0.join("positions/file_positions.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        p[&key]["rotated"]["offset"] == fs::metadata(&rotated).unwrap().len()
            && p[&key]["offset"] == 11
    });
    d.kill();
    write(&mut old, 151, 200);
    let d = Daemon::start(&s, &cfg, 2);
    wait_until("201 lines", || captured(&s, "listed").len() >= 201);
    thread::sleep(Duration::from_millis(300));
    let log = d.terminate();
    assert!(log.contains("rotated before the stop"), "{log}");
    let mut want: Vec<String> = (1..=200).map(|i| format!("listed {i:06}")).collect();
    want.push("new 000001".into());
    let mut got = messages(&captured(&s, "listed"));
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

/// A queue far smaller than the file: reading pauses (the containers' rule) instead of
/// queueing the file, every line is delivered once, and the accounting line balances.
#[test]
fn a_full_queue_pauses_reading_and_the_accounting_balances() {
    let s = Scratch::new("files", "backpressure");
    let dir = s.0.join("logs");
    fs::create_dir_all(&dir).unwrap();
    let listed = s.0.join("big.log");
    const N: usize = 30_000;
    let text: String = (1..=N).map(|i| format!("big {i:06}\n")).collect();
    fs::write(&listed, &text).unwrap();
    let cfg = config_with(
        &s,
        &pipeline(&listed, &dir),
        "queue_size: 100\n  batch_size: 100\n  batch_timeout: 50ms",
        true,
    );
    let log = Daemon::start_args(&s, &cfg, 1, &["--once"]).wait_exit();
    let got = messages(&captured(&s, "big"));
    let want: Vec<String> = (1..=N).map(|i| format!("big {i:06}")).collect();
    assert!(got == want, "{} lines, not each once in order", got.len());
    let paused: u64 = log
        .split("paused ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pause count in\n{log}"));
    assert!(paused > 0, "reading never paused:\n{log}");
    assert!(
        log.contains(&format!(
            "done: {N} lines read, {N} delivered, 0 dropped, 0 undelivered"
        )),
        "{log}"
    );
}

/// A `file_positions.json` as Go writes it (no fingerprint) is resumed from its offset.
#[test]
fn a_go_file_positions_json_is_resumed_from() {
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new("files", "go-positions");
    let dir = s.0.join("logs");
    fs::create_dir_all(&dir).unwrap();
    let listed = s.0.join("go.log");
    let text: String = (1..=10).map(|i| format!("go {i}\n")).collect();
    fs::write(&listed, &text).unwrap();
    let offset = text.find("go 6").unwrap();
    let meta = fs::metadata(&listed).unwrap();
    let key = listed.display().to_string();
    fs::create_dir_all(s.0.join("positions")).unwrap();
    fs::write(
        s.0.join("positions/file_positions.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            key.clone(): {
                "file_path": key,
                "offset": offset,
                "size": meta.len(),
                "last_modified": "2026-11-29T10:00:00.123456789+01:00",
                "inode": meta.ino(),
                "device": meta.dev(),
                "last_read": "2026-11-29T10:00:01Z",
                "log_count": 5,
            }
        }))
        .unwrap(),
    )
    .unwrap();
    let cfg = config(&s, &pipeline(&listed, &dir));
    let d = Daemon::start(&s, &cfg, 1);
    wait_until("lines 6-10", || captured(&s, "go").len() >= 5);
    d.wait_log("HTTP API listening on");
    // The API shows the file: metrics (Go's labels), /stats, and /positions once committed.
    let metrics = get(&d, "/metrics");
    let series = format!("files_monitored{{filepath=\"{key}\",source_type=\"file\"}} 1");
    assert!(metrics.contains(&series), "{series} not in\n{metrics}");
    assert!(metrics.contains("total_files_monitored 1"), "{metrics}");
    let health: Value = serde_json::from_str(&get(&d, "/health")).unwrap();
    assert_eq!(
        health["services"]["file_monitor"]["files_monitored"], 1,
        "{health}"
    );
    let stats: Value = serde_json::from_str(&get(&d, "/stats")).unwrap();
    assert_eq!(stats["files"]["monitored"], 1);
    assert_eq!(stats["files"]["files"][&key]["offset"], text.len());
    wait_until("the position committed", || {
        let p: Value = serde_json::from_str(&get(&d, "/positions")).unwrap();
        p["files"][&key]["offset"] == text.len()
    });
    thread::sleep(Duration::from_millis(300));
    let _ = d.terminate();
    assert_eq!(
        messages(&captured(&s, "go")),
        ["go 6", "go 7", "go 8", "go 9", "go 10"]
    );
    let positions: Value =
        serde_json::from_slice(&fs::read(s.0.join("positions/file_positions.json")).unwrap())
            .unwrap();
    assert_eq!(positions[&key]["offset"], text.len());
    assert_eq!(positions[&key]["log_count"], 10);
}

// --- Processing pipelines on file entries ---

/// [`config`] with `processing` on, through the pipelines file at `pipelines`.
fn config_processing(s: &Scratch, pipeline: &str, pipelines: &Path) -> PathBuf {
    let path = config(s, pipeline);
    let mut yaml = fs::read_to_string(&path).unwrap();
    yaml.push_str(&format!(
        "processing:\n  enabled: true\n  pipelines_file: {}\n  skip_failed_logs: true\n",
        pipelines.display()
    ));
    fs::write(&path, yaml).unwrap();
    path
}

/// The `labels` of an entry, as text.
fn labels(v: &Value) -> BTreeMap<String, String> {
    v["labels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// Two files mapped in the pipelines file's order: the listed one by its `file_path`, the
/// one found in a directory by `source_type:file`; templates filled from the file's path and
/// labels. Exact labels out in the file sink's JSON.
#[test]
fn file_entries_go_through_the_pipeline_their_path_or_type_maps_to() {
    let s = Scratch::new("files", "processing");
    let listed = s.0.join("listed").join("app.log");
    let dir = s.0.join("dir");
    fs::create_dir_all(listed.parent().unwrap()).unwrap();
    fs::create_dir_all(&dir).unwrap();
    fs::write(&listed, "GET /a 200\nno status here\n").unwrap();
    fs::write(dir.join("web.log"), "level=WARN disk low\n").unwrap();
    let pipelines = s.0.join("pipelines.yaml");
    fs::write(
        &pipelines,
        format!(
            r#"
pipelines:
  - name: by_path
    steps:
      - name: status
        type: regex_extract
        config: {{ pattern: '^(\S+) (\S+) (\d+)$', fields: [method, url, status] }}
      - name: where
        type: field_add
        config:
          fields: {{ src: "{{{{source_path}}}}", fname: "{{{{source_filename}}}}", owner: "{{{{team}}}}-x", status: "none" }}
      - name: drop_team
        type: field_remove
        config: {{ fields: [team] }}
  - name: any_file
    steps:
      - name: level
        type: log_level_extract
        config: {{ pattern: 'level=(\w+)', field: level }}
      - name: kind
        type: field_add
        config: {{ fields: {{ kind: "file:{{{{file_name}}}}" }} }}
source_mapping:
  by_path: ["file_path:{listed}"]
  any_file: ["source_type:file"]
"#,
            listed = listed.display()
        ),
    )
    .unwrap();
    let cfg = config_processing(&s, &pipeline(&listed, &dir), &pipelines);
    let log = Daemon::start_args(&s, &cfg, 1, &["--once"]).wait_exit();
    assert!(
        log.contains(&format!(
            "monitoring file {} (pipeline by_path)",
            listed.display()
        )),
        "{log}"
    );

    let app = captured(&s, "app");
    assert_eq!(messages(&app), ["GET /a 200", "no status here"], "{log}");
    let path = listed.display().to_string();
    let want = |extra: &[(&str, &str)]| -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = [
            ("file_path", path.as_str()),
            ("file_name", "app.log"),
            ("src", path.as_str()),
            ("fname", "app.log"),
            ("owner", "core-x"),
            ("stream", "stdout"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        m.remove("team");
        m
    };
    assert_eq!(
        labels(&app[0]),
        want(&[("method", "GET"), ("url", "/a"), ("status", "200")])
    );
    assert_eq!(labels(&app[1]), want(&[("status", "none")]));
    assert!(app.iter().all(|e| e["source_type"] == "file"));

    let web = captured(&s, "web");
    assert_eq!(messages(&web), ["level=WARN disk low"], "{log}");
    let web_path = dir.join("web.log").display().to_string();
    let want: BTreeMap<String, String> = [
        ("file_path", web_path.as_str()),
        ("file_name", "web.log"),
        ("log_type", "app"),
        ("level", "warn"),
        ("kind", "file:web.log"),
        ("stream", "stdout"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(labels(&web[0]), want);
}

/// The Go team's pipelines file (the fixture): its `syslog` pipeline is mapped to
/// `source_type:file`, so a monitored file's syslog lines get its fields and timestamp.
#[test]
fn the_go_pipelines_file_maps_files_to_its_syslog_pipeline() {
    let s = Scratch::new("files", "processing-go");
    let listed = s.0.join("syslog");
    let dir = s.0.join("dir");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        &listed,
        "2026-11-30T04:00:00.123456+00:00 host1 sshd[42]: error: connection reset\nplain\n",
    )
    .unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/go_pipelines.yaml");
    let cfg = config_processing(&s, &pipeline(&listed, &dir), &fixture);
    let log = Daemon::start_args(&s, &cfg, 1, &["--once"]).wait_exit();
    let out = captured(&s, "syslog");
    assert_eq!(out.len(), 2, "{log}");
    let l = labels(&out[0]);
    for (k, v) in [
        ("_temp_hostname", "host1"),
        ("_temp_process", "sshd[42]"),
        ("msg", "error: connection reset"),
        ("level", "error"),
        ("service", "system"),
        ("component", "syslog"),
        ("team", "core"),
    ] {
        assert_eq!(l.get(k).map(String::as_str), Some(v), "{k} in {l:?}");
    }
    assert_eq!(
        out[0]["timestamp"], "2026-11-30T04:00:00.123456Z",
        "{}",
        out[0]
    );
    let l = labels(&out[1]);
    assert_eq!(
        (
            l["msg"].as_str(),
            l["level"].as_str(),
            l.get("_temp_hostname")
        ),
        ("plain", "info", None)
    );
}

// --- Multiline on monitored files, and pruning of file_positions.json ---

/// `max_lines` of the tests' `multiline` step.
const MAX_LINES: usize = 10;

/// The groups of `tests/fixtures/stack_traces.txt`, each as its lines.
fn trace_groups() -> Vec<Vec<String>> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stack_traces.txt");
    let text = fs::read_to_string(fixture).unwrap();
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    body.trim()
        .split("\n\n")
        .map(|g| g.lines().map(String::from).collect())
        .collect()
}

/// The entries the groups must come out as: each joined with `\n`, in pieces of
/// [`MAX_LINES`] lines.
fn joined(groups: &[Vec<String>]) -> Vec<String> {
    groups
        .iter()
        .flat_map(|g| g.chunks(MAX_LINES).map(|c| c.join("\n")))
        .collect()
}

/// The file text of these lines.
fn text_of(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn append_text(path: &Path, text: &str) {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// [`config_processing`] with a pipeline joining stack traces, mapped to every file.
fn config_multiline(s: &Scratch, listed: &Path, dir: &Path, max_wait: &str) -> PathBuf {
    let pipelines = s.0.join("pipelines.yaml");
    fs::write(
        &pipelines,
        format!(
            r#"pipelines:
  - name: traces
    steps:
      - name: join
        type: multiline
        config:
          firstline: '^(\d{{4}}-\d{{2}}-\d{{2}} |Traceback )'
          max_lines: {MAX_LINES}
          max_wait: {max_wait}
source_mapping:
  traces: ["source_type:file"]
"#
        ),
    )
    .unwrap();
    config_processing(s, &pipeline(listed, dir), &pipelines)
}

/// The committed `file_positions.json`, or null.
fn file_positions(s: &Scratch) -> Value {
    fs::read(s.0.join("positions/file_positions.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Java and Python stack traces written to a monitored file in pieces cut anywhere (lines
/// and groups split across writes): each group comes out once, whole, in order; the one over
/// `max_lines` in pieces of `max_lines`; the last one `max_wait` after its last line, the
/// file being quiet. The position reaches the end only then.
#[test]
fn stack_traces_written_in_pieces_come_out_joined_each_once_and_whole() {
    let s = Scratch::new("files", "multiline-pieces");
    let dir = s.0.join("logs");
    fs::create_dir_all(&dir).unwrap();
    let listed = s.0.join("traces.log");
    File::create(&listed).unwrap();
    let cfg = config_multiline(&s, &listed, &dir, "2s");
    let d = Daemon::start(&s, &cfg, 1);
    let groups = trace_groups();
    let lines = groups.concat();
    let text = text_of(&lines);
    for piece in text.as_bytes().chunks(37) {
        append_text(&listed, std::str::from_utf8(piece).unwrap());
        // A writer's pace, far below max_wait.
        thread::sleep(Duration::from_millis(10));
    }
    let want = joined(&groups);
    wait_until("every group delivered", || {
        captured(&s, "traces").len() >= want.len()
    });
    let key = listed.display().to_string();
    wait_until("the position at the end of the file", || {
        file_positions(&s)[&key]["offset"] == text.len()
    });
    d.wait_log("HTTP API listening on");
    let metrics = get(&d, "/metrics");
    let joined_lines = format!("processing_lines_joined_total {}", lines.len() - want.len());
    assert!(
        metrics.contains(&joined_lines),
        "{joined_lines} not in\n{metrics}"
    );
    let log = d.terminate();
    assert_eq!(messages(&captured(&s, "traces")), want, "{log}");
    let n = want.len();
    assert!(
        log.contains(&format!("done: {n} lines read, {n} delivered, 0 dropped")),
        "{log}"
    );
    assert_eq!(file_positions(&s)[&key]["log_count"], n);
}

/// SIGTERM (or SIGKILL) while a Python trace is half written: the position stops at its
/// first line, the next start reads it again, and every group comes out once and whole.
fn restart_mid_group(kill: bool) {
    let s = Scratch::new(
        "files",
        if kill {
            "multiline-kill"
        } else {
            "multiline-term"
        },
    );
    let dir = s.0.join("logs");
    fs::create_dir_all(&dir).unwrap();
    let listed = s.0.join("traces.log");
    File::create(&listed).unwrap();
    // max_wait far longer than the test: only the next first line (or the end of `--once`)
    // completes a group.
    let cfg = config_multiline(&s, &listed, &dir, "5m");
    let d = Daemon::start(&s, &cfg, 1);
    let groups = trace_groups();
    let done = groups[..2].concat();
    let held = &groups[2][..3];
    append_text(&listed, &text_of(&[done.clone(), held.to_vec()].concat()));
    wait_until("the first two groups", || captured(&s, "traces").len() == 2);
    let key = listed.display().to_string();
    let held_at = text_of(&done).len();
    wait_until("the position at the held group's first line", || {
        file_positions(&s)[&key]["offset"] == held_at
    });
    if kill {
        d.kill();
    } else {
        let log = d.terminate();
        assert!(
            log.contains("3 lines of unfinished multiline groups left for the next start"),
            "{log}"
        );
    }
    let rest = [groups[2][3..].to_vec(), groups[3..].concat()].concat();
    append_text(&listed, &text_of(&rest));
    let log = Daemon::start_args(&s, &cfg, 2, &["--once"]).wait_exit();
    assert!(
        log.contains(&format!("resuming at byte {held_at}")),
        "{log}"
    );
    assert_eq!(messages(&captured(&s, "traces")), joined(&groups), "{log}");
    assert_eq!(
        file_positions(&s)[&key]["offset"],
        fs::metadata(&listed).unwrap().len()
    );
}

#[test]
fn a_sigterm_mid_group_reads_the_group_again_whole() {
    restart_mid_group(false);
}

#[test]
fn a_sigkill_mid_group_loses_and_splits_no_group() {
    restart_mid_group(true);
}

/// A group held when its file rotates or goes. Rename and create: the writer finishes the
/// trace in the renamed file (it has not reopened yet), and the trace stays whole; the new
/// file's first line completes it (a group never spans two files). Copytruncate, deletion:
/// the group held is complete at once (no line can join it any more), so lines written after
/// a truncation do not join it. `max_wait` is longer than the test: nothing here completes a
/// group by time. Then a SIGTERM with a group held in each file, and `--once` delivers them.
#[test]
fn a_group_held_across_a_rotation_stays_whole_and_never_spans_two_files() {
    let s = Scratch::new("files", "multiline-rotation");
    let dir = s.0.join("logs");
    fs::create_dir_all(&dir).unwrap();
    let listed = s.0.join("traces.log");
    let (ct, del) = (dir.join("ct.log"), dir.join("del.log"));
    for f in [&listed, &ct, &del] {
        File::create(f).unwrap();
    }
    let cfg = config_multiline(&s, &listed, &dir, "5m");
    let d = Daemon::start(&s, &cfg, 1);
    d.wait_log("HTTP API listening on");
    let groups = trace_groups();
    let long = &groups[4];
    assert!(long.len() > MAX_LINES);
    let n = |name: &str| captured(&s, name).len();
    let read_to_end = |path: &Path| {
        let key = path.display().to_string();
        wait_until(&format!("{key} read to its end"), || {
            let stats: Value = serde_json::from_str(&get(&d, "/stats")).unwrap_or_default();
            stats["files"]["files"][&key]["offset"] == fs::metadata(path).unwrap().len()
        });
    };

    // Rename and create, in the middle of the long trace.
    let mut old = OpenOptions::new().append(true).open(&listed).unwrap();
    let head = [groups[0].clone(), groups[1].clone(), long[..5].to_vec()].concat();
    old.write_all(text_of(&head).as_bytes()).unwrap();
    wait_until("the groups before the long trace", || n("traces") == 2);
    fs::rename(&listed, s.0.join("traces.log.1")).unwrap();
    old.write_all(text_of(&long[5..]).as_bytes()).unwrap();
    // Its first MAX_LINES lines come out by max_lines: the renamed file's end was read, so
    // the new file's lines cannot come before it.
    wait_until("the long trace's first piece", || n("traces") == 3);
    append_text(&listed, &text_of(&groups[5..].concat()));
    // The rest of the long trace (by the new file's first line), the Python trace (by the
    // last group's first line); the last group is held.
    wait_until("the new file's groups but the last", || n("traces") == 5);

    // Copytruncate while a Python trace is held (nothing after it yet).
    append_text(
        &ct,
        &text_of(&[groups[0].clone(), groups[2].clone()].concat()),
    );
    wait_until("ct's first line", || n("ct") == 1);
    read_to_end(&ct);
    fs::copy(&ct, dir.join("ct.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&ct)
        .unwrap()
        .set_len(0)
        .unwrap();
    wait_until("the trace held, completed by the truncation", || {
        n("ct") == 2
    });
    let late = "  File \"/srv/late.py\", line 1, in <module>".to_string();
    append_text(&ct, &text_of(&[late.clone(), groups[6][0].clone()]));
    wait_until("the line after the truncation", || n("ct") == 3);

    // Deleted while a trace is held.
    append_text(&del, &text_of(&groups[2]));
    read_to_end(&del);
    fs::remove_file(&del).unwrap();
    wait_until("the trace held, completed by the deletion", || {
        n("del") == 1
    });

    let log = d.terminate();
    assert!(
        log.contains("truncated or rewritten in place"),
        "copytruncate not seen:\n{log}"
    );
    for f in [&listed, &ct] {
        let line = format!(
            "{}: 1 lines of unfinished multiline groups left",
            f.display()
        );
        assert!(log.contains(&line), "{line} not in\n{log}");
    }
    let log = Daemon::start_args(&s, &cfg, 2, &["--once"]).wait_exit();
    let want_listed = joined(&[&groups[..2], &groups[4..]].concat());
    let want_ct = [
        joined(&[groups[0].clone(), groups[2].clone()]),
        vec![late, groups[6][0].clone()],
    ]
    .concat();
    assert_eq!(messages(&captured(&s, "traces")), want_listed, "{log}");
    assert_eq!(messages(&captured(&s, "ct")), want_ct, "{log}");
    assert_eq!(messages(&captured(&s, "del")), joined(&groups[2..3]));
}

/// `file_positions.json` does not grow forever under a glob over dated names: the records
/// of files deleted (and read to their end) are dropped `max_position_age` after, and so are
/// those of files deleted while the capturer was down; a file that exists is never pruned,
/// however quiet. The files thread stops tracking the deleted ones too.
#[test]
fn records_of_files_gone_are_pruned_and_those_of_existing_files_kept() {
    let s = Scratch::new("files", "prune");
    let dir = s.0.join("logs");
    fs::create_dir_all(&dir).unwrap();
    let listed = s.0.join("listed.log");
    fs::write(&listed, "listed 1\n").unwrap();
    let days = [
        "app-2026-11-28.log",
        "app-2026-11-29.log",
        "app-2026-11-30.log",
    ];
    for day in days {
        fs::write(dir.join(day), format!("{day} 1\n")).unwrap();
    }
    let cfg = config(&s, &pipeline(&listed, &dir));
    let yaml = fs::read_to_string(&cfg).unwrap().replace(
        "  flush_interval: 1s\n",
        "  flush_interval: 1s\n  cleanup_interval: 200ms\n  max_position_age: 1s\n",
    );
    fs::write(&cfg, yaml).unwrap();
    let keys = || -> BTreeSet<String> {
        file_positions(&s)
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let path = |name: &str| dir.join(name).display().to_string();
    let listed_key = listed.display().to_string();
    let d = Daemon::start(&s, &cfg, 1);
    let all: BTreeSet<String> = days
        .iter()
        .map(|d| path(d))
        .chain([listed_key.clone()])
        .collect();
    wait_until("a record per file", || keys() == all);
    fs::remove_file(dir.join(days[0])).unwrap();
    fs::remove_file(dir.join(days[1])).unwrap();
    let left: BTreeSet<String> = [path(days[2]), listed_key.clone()].into();
    wait_until("the deleted files' records pruned", || keys() == left);
    d.wait_log("HTTP API listening on");
    let stats: Value = serde_json::from_str(&get(&d, "/stats")).unwrap();
    assert_eq!(stats["files"]["monitored"], 2, "{stats}");
    let log = d.terminate();
    for day in &days[..2] {
        assert!(
            log.contains(&format!("{}: gone and read to its end", path(day))),
            "{log}"
        );
    }
    // The quiet file outlived max_position_age many times over and is still there.
    assert_eq!(keys(), left);
    assert_eq!(file_positions(&s)[path(days[2])]["log_count"], 1);

    // Deleted while the capturer is down: marked at the next start, pruned as well.
    fs::remove_file(dir.join(days[2])).unwrap();
    let d = Daemon::start(&s, &cfg, 2);
    let only: BTreeSet<String> = [listed_key.clone()].into();
    wait_until("the record of the file deleted while down pruned", || {
        keys() == only
    });
    d.terminate();
    assert_eq!(file_positions(&s)[&listed_key]["log_count"], 1);
}
