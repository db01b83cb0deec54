//! The daemon binary (`log_capturer --config FILE`) against the real dockerd that
//! `bash scripts/test.sh` starts (it exports LOGCAP_DOCKER_SOCK; without it these tests fail,
//! loudly). Issue 3, section 7:
//!
//! - 8 containers printing numbered lines on stdout and stderr, rotation every 200 ms, file
//!   sink: every line exactly once per container, in order per stream (io_uring, and epoll);
//! - the capturer SIGTERMed and restarted twice mid-run: exactly once overall; SIGKILLed and
//!   restarted twice: nothing missing, duplicates within the commit-interval bound;
//! - container stop, start, restart, and containers created after the capturer started;
//! - the Loki sink against an in-test receiver that answers 500 for 10 s, then 204;
//! - `--once`: exact counts, exit 0, and nothing twice across runs.
//!
//! Every test writes its own config into a fresh temporary directory and captures only the
//! containers whose names carry its own prefix (`include_names` is a substring match), so the
//! tests run in parallel. Waits are deadline loops on observable conditions. Containers are
//! removed and capturers killed by guards however a test ends; on failure the capturer's
//! stderr tail is printed and the temporary directory kept.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log_capturer::config::Config;
use serde_json::Value;

mod support;
use support::{docker, docker_command, remove_containers, socket, IMAGE};

const BIN: &str = env!("CARGO_BIN_EXE_log_capturer");
/// How long a SIGTERMed capturer may take to exit (drain, flush, commit) with healthy sinks.
const EXIT_BOUND: Duration = Duration::from_secs(15);
/// How long after the containers' last line the capturer may take to deliver everything.
const DELIVERY_BOUND: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------
// Docker

/// `docker logs NAME`, split into its stdout and stderr lines: the ground truth.
fn docker_logs(name: &str) -> (Vec<String>, Vec<String>) {
    let out = docker_command()
        .args(["logs", name])
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker logs {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = |b: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(b)
            .lines()
            .map(str::to_string)
            .collect()
    };
    (lines(&out.stdout), lines(&out.stderr))
}

/// `(status, exit code)` of each container, by name.
fn container_states(names: &[String]) -> BTreeMap<String, (String, i64)> {
    let mut args = vec![
        "inspect",
        "-f",
        "{{.Name}} {{.State.Status}} {{.State.ExitCode}}",
    ];
    args.extend(names.iter().map(String::as_str));
    let mut states = BTreeMap::new();
    for line in docker(&args).lines() {
        let mut parts = line.split_whitespace();
        let name = parts.next().unwrap().trim_start_matches('/').to_string();
        let status = parts.next().unwrap().to_string();
        let code = parts.next().unwrap().parse().unwrap();
        states.insert(name, (status, code));
    }
    states
}

/// `usleep US; ` or nothing for 0.
fn pause(usleep_us: u32) -> String {
    if usleep_us == 0 {
        String::new()
    } else {
        format!("usleep {usleep_us}; ")
    }
}

/// A busybox loop printing `out 1..n` on stdout and `err 1..n` on stderr, `usleep_us` apart.
fn numbered_script(n: usize, usleep_us: u32) -> String {
    format!(
        "i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo \"out $i\"; echo \"err $i\" >&2; \
         {}done",
        pause(usleep_us)
    )
}

/// Like [`numbered_script`] but every line carries the run number (`r2 out 17`), counted in a
/// file of the container's own filesystem, which survives stop and start.
fn run_numbered_script(n: usize, usleep_us: u32, then: &str) -> String {
    format!(
        "r=$(cat /runs 2>/dev/null || echo 0); r=$((r+1)); echo $r > /runs; i=0; \
         while [ $i -lt {n} ]; do i=$((i+1)); echo \"r$r out $i\"; echo \"r$r err $i\" >&2; \
         {}done; {then}",
        pause(usleep_us)
    )
}

// ---------------------------------------------------------------------------------------------
// The test environment: a temporary directory, a name prefix, containers, capturer logs.

struct TestEnv {
    dir: PathBuf,
    /// Every container of the test has a name starting with this; `include_names` is this.
    prefix: String,
    containers: RefCell<Vec<(String, String)>>,
    logs: RefCell<Vec<PathBuf>>,
}

impl TestEnv {
    fn new(test: &str) -> TestEnv {
        socket();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let prefix = format!("lcd{}{:x}-{test}-", std::process::id(), nanos % 0xfff);
        let dir = std::env::temp_dir()
            .join("logcap-daemon-tests")
            .join(prefix.trim_end_matches('-'));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TestEnv {
            dir,
            prefix,
            containers: RefCell::default(),
            logs: RefCell::default(),
        }
    }

    fn out_dir(&self) -> PathBuf {
        self.dir.join("out")
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// `docker run -d` a busybox `sh -c script` named `prefix + suffix`; returns its name.
    fn run(&self, suffix: &str, script: &str) -> String {
        let name = self.name(suffix);
        let id = docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            script,
        ]);
        self.containers.borrow_mut().push((name.clone(), id));
        name
    }

    fn id_of(&self, name: &str) -> String {
        self.containers
            .borrow()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| id.clone())
            .unwrap()
    }

    /// Waits until every named container has exited, with code 0.
    fn wait_exited(&self, names: &[String], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let states = container_states(names);
            if states.values().all(|(s, _)| s == "exited") {
                for (name, (_, code)) in &states {
                    assert_eq!(*code, 0, "container {name} exit code");
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containers still running after {within:?}: {states:?}"
            );
            thread::sleep(POLL);
        }
    }

    fn config_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let names: Vec<String> = self
            .containers
            .borrow()
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        remove_containers(&names);
        if thread::panicking() {
            for log in self.logs.borrow().iter() {
                eprintln!(
                    "---- last lines of {} ----\n{}",
                    log.display(),
                    tail(log, 40)
                );
            }
            eprintln!("---- test files kept in {} ----", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Configuration

struct Settings {
    rotation: &'static str,
    flush_interval: &'static str,
    batch_timeout: &'static str,
    queue_size: usize,
    batch_size: usize,
    log_level: &'static str,
    local_file: bool,
    /// The receiver's base URL, for the Loki sink.
    loki_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            rotation: "200ms",
            flush_interval: "1s",
            batch_timeout: "200ms",
            queue_size: 20000,
            batch_size: 500,
            log_level: "info",
            local_file: true,
            loki_url: None,
        }
    }
}

const LOKI_TENANT: &str = "daemon-test-tenant";
const LOKI_HEADER: (&str, &str) = ("X-Daemon-Test", "yes");

/// Writes the config file and checks that the library reads it as meant.
fn write_config(env: &TestEnv, s: &Settings) -> PathBuf {
    let dir = env.dir.display();
    let yaml = format!(
        r#"app:
  log_level: "{level}"
  log_format: "text"
  io_engine: "auto"
server:
  enabled: false
metrics:
  enabled: false
container_monitor:
  enabled: true
  socket_path: "unix://{sock}"
  include_names: ["{prefix}"]
  stream_rotation_interval: "{rotation}"
  stream_idle_timeout: "5m"
  reconnect_interval: "2s"
  new_containers_from: "created"
file_monitor_service:
  enabled: false
dispatcher:
  queue_size: {queue}
  batch_size: {batch}
  batch_timeout: "{batch_timeout}"
positions:
  enabled: true
  directory: "{dir}/positions"
  flush_interval: "{flush}"
sinks:
  local_file:
    enabled: {local_file}
    directory: "{dir}/out"
    filename_pattern: "{{nomedocontainer}}.log"
    output_format: "json"
  loki:
    enabled: {loki}
    url: "{loki_url}"
    tenant_id: "{tenant}"
    batch_size: {batch}
    batch_timeout: "{batch_timeout}"
    timeout: "5s"
    headers:
      {hk}: "{hv}"
  stdout:
    enabled: false
  blackhole:
    enabled: false
"#,
        level = s.log_level,
        sock = socket().display(),
        prefix = env.prefix,
        rotation = s.rotation,
        queue = s.queue_size,
        batch = s.batch_size,
        batch_timeout = s.batch_timeout,
        flush = s.flush_interval,
        local_file = s.local_file,
        loki = s.loki_url.is_some(),
        loki_url = s.loki_url.as_deref().unwrap_or("http://127.0.0.1:9"),
        tenant = LOKI_TENANT,
        hk = LOKI_HEADER.0,
        hv = LOKI_HEADER.1,
    );
    let path = env.config_path("config.yaml");
    fs::write(&path, &yaml).unwrap();
    let (config, _) = Config::from_yaml_str(&yaml, &path, &|_| None)
        .unwrap_or_else(|e| panic!("the test's own config does not load: {e}\n{yaml}"));
    let cm = &config.container_monitor;
    assert_eq!(cm.include_names, vec![env.prefix.clone()]);
    assert!(cm.matches(&env.name("x"), &BTreeMap::new()));
    assert!(!cm.matches("someone-else", &BTreeMap::new()));
    assert_eq!(
        Some(cm.stream_rotation_interval),
        log_capturer::config::parse_duration(s.rotation)
    );
    assert_eq!(config.sinks.local_file.enabled, s.local_file);
    assert_eq!(config.sinks.loki.enabled, s.loki_url.is_some());
    assert!(!config.sinks.stdout.enabled && !config.sinks.blackhole.enabled);
    path
}

// ---------------------------------------------------------------------------------------------
// The capturer process

struct Capturer {
    child: Child,
    stderr: PathBuf,
}

impl Capturer {
    /// Starts `log_capturer --config CONFIG ARGS...`, stderr to `capturer-N.log` in the test dir.
    fn start(env: &TestEnv, config: &Path, args: &[&str]) -> Capturer {
        let n = env.logs.borrow().len() + 1;
        let stderr = env.dir.join(format!("capturer-{n}.log"));
        let file = fs::File::create(&stderr).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(config).args(args);
        // Only the test's config counts: no SSW_* override, no DOCKER_HOST.
        for (key, _) in std::env::vars_os() {
            let key_str = key.to_string_lossy();
            if key_str.starts_with("SSW_") || key_str == "DOCKER_HOST" || key_str == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        cmd.env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        env.logs.borrow_mut().push(stderr.clone());
        Capturer { child, stderr }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The pid is our own child's, not yet reaped (only this struct waits for it), so the
    /// signal cannot reach another process.
    fn signal(&self, sig: i32) {
        let pid = rustix::process::Pid::from_raw(self.pid()).expect("a child pid");
        let sig = rustix::process::Signal::from_named_raw(sig).expect("a named signal");
        rustix::process::kill_process(pid, sig)
            .unwrap_or_else(|e| panic!("kill({pid:?}, {sig:?}): {e}"));
    }

    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics (with the stderr tail) if the capturer has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "the capturer exited on its own ({status}); stderr:\n{}",
                tail(&self.stderr, 40)
            );
        }
    }

    /// SIGTERM; expects exit 0 within [`EXIT_BOUND`]. Returns how long it took.
    fn terminate(&mut self) -> Duration {
        self.assert_running();
        let t0 = Instant::now();
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(EXIT_BOUND).unwrap_or_else(|| {
            panic!(
                "the capturer did not exit within {EXIT_BOUND:?} of SIGTERM; stderr:\n{}",
                tail(&self.stderr, 40)
            )
        });
        assert!(
            status.success(),
            "the capturer exited with {status} after SIGTERM; stderr:\n{}",
            tail(&self.stderr, 40)
        );
        self.assert_nothing_dropped();
        t0.elapsed()
    }

    /// The daemon's last words count the lines dropped and left undelivered: both must be 0.
    fn assert_nothing_dropped(&self) {
        let text = self.stderr_text();
        let done = text
            .lines()
            .rev()
            .find(|l| l.contains("done: "))
            .unwrap_or_else(|| {
                panic!("no final `done:` line; stderr:\n{}", tail(&self.stderr, 40))
            });
        assert!(
            done.contains(" 0 dropped, 0 undelivered"),
            "lines dropped or undelivered: {done}"
        );
        assert_accounting(&text, done);
    }

    fn kill(&mut self) {
        self.assert_running();
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10))
            .expect("exit after SIGKILL");
    }

    /// `--once` runs: waits for the exit, expects 0.
    fn expect_success(&mut self, within: Duration) -> Duration {
        let t0 = Instant::now();
        let status = self.wait_exit(within).unwrap_or_else(|| {
            panic!(
                "the capturer did not exit within {within:?}; stderr:\n{}",
                tail(&self.stderr, 40)
            )
        });
        assert!(
            status.success(),
            "the capturer exited with {status}; stderr:\n{}",
            tail(&self.stderr, 40)
        );
        self.assert_nothing_dropped();
        t0.elapsed()
    }

    /// VmRSS in KiB.
    fn rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Capturer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What was captured, and how it compares with what was logged

/// `(container name, stream)`.
type Key = (String, String);
type Lines = BTreeMap<Key, Vec<String>>;

fn key(name: &str, stream: &str) -> Key {
    (name.to_string(), stream.to_string())
}

#[derive(Default)]
struct Captured {
    lines: Lines,
    /// Lines of the output that are not a well-formed entry (`file: line`).
    bad: Vec<String>,
    /// Raw JSON objects per container (for format checks).
    entries: BTreeMap<String, Vec<Value>>,
}

impl Captured {
    fn total(&self) -> usize {
        self.lines.values().map(Vec::len).sum()
    }
}

/// Reads every file of the file sink. `running`: the capturer may be writing, so an
/// unterminated last line is ignored rather than reported.
fn read_output(dir: &Path, running: bool) -> Captured {
    let mut captured = Captured::default();
    let Ok(files) = fs::read_dir(dir) else {
        return captured;
    };
    let mut paths: Vec<PathBuf> = files.map(|f| f.unwrap().path()).collect();
    paths.sort();
    for path in paths {
        let text = fs::read(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let mut pieces: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        let last = pieces.pop().unwrap_or_default();
        if !last.is_empty() && !running {
            captured.bad.push(format!(
                "{file}: unterminated last line {:?}",
                String::from_utf8_lossy(last)
            ));
        }
        for (i, raw) in pieces.iter().enumerate() {
            let parsed: Option<Value> = serde_json::from_slice(raw).ok();
            let fields = parsed.as_ref().and_then(|v| {
                Some((
                    v["labels"]["container_name"].as_str()?.to_string(),
                    v["labels"]["stream"].as_str()?.to_string(),
                    v["message"].as_str()?.to_string(),
                ))
            });
            match fields {
                Some((name, stream, message)) => {
                    captured
                        .lines
                        .entry((name.clone(), stream))
                        .or_default()
                        .push(message);
                    captured
                        .entries
                        .entry(name)
                        .or_default()
                        .push(parsed.unwrap());
                }
                None => captured.bad.push(format!(
                    "{file}:{}: {:?}",
                    i + 1,
                    String::from_utf8_lossy(raw)
                )),
            }
        }
    }
    captured
}

fn numbered(prefix: &str, range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i}")).collect()
}

/// `out 1..n` / `err 1..n` for each container.
fn expect_numbered(names: &[String], n: usize) -> Lines {
    let mut want = Lines::new();
    for name in names {
        want.insert(key(name, "stdout"), numbered("out", 1..=n));
        want.insert(key(name, "stderr"), numbered("err", 1..=n));
    }
    want
}

/// How one captured stream differs from the logged one.
#[derive(Debug, Default)]
struct Diff {
    missing: usize,
    /// Extra copies of lines that were logged (a line there 3 times counts 2).
    duplicates: usize,
    /// Lines that were never logged.
    unexpected: usize,
    /// The first occurrences are not in the logged order.
    out_of_order: bool,
    examples: Vec<String>,
}

impl Diff {
    fn exact(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.unexpected == 0 && !self.out_of_order
    }
}

fn diff(got: &[String], want: &[String]) -> Diff {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(want.len());
    for (i, line) in want.iter().enumerate() {
        // Lines logged twice (cannot happen with numbered lines) count by their first index.
        index.entry(line.as_str()).or_insert(i);
    }
    let mut counts = vec![0usize; want.len()];
    let mut d = Diff::default();
    let mut last_first: Option<usize> = None;
    for line in got {
        match index.get(line.as_str()) {
            Some(&i) => {
                counts[i] += 1;
                if counts[i] == 1 {
                    if last_first.is_some_and(|l| l > i) && !d.out_of_order {
                        d.out_of_order = true;
                        d.examples.push(format!(
                            "{line:?} first seen after {:?}",
                            want[last_first.unwrap()]
                        ));
                    }
                    last_first = Some(last_first.map_or(i, |l| l.max(i)));
                } else if d.examples.len() < 6 {
                    d.examples.push(format!("{line:?} x{}", counts[i]));
                }
            }
            None => {
                d.unexpected += 1;
                if d.examples.len() < 6 {
                    d.examples.push(format!("unexpected {line:?}"));
                }
            }
        }
    }
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            d.missing += 1;
            if d.examples.len() < 10 {
                d.examples.push(format!("missing {:?}", want[i]));
            }
        } else {
            d.duplicates += c - 1;
        }
    }
    d
}

/// Per stream diffs (keys of both sides), and the totals.
fn diffs(got: &Lines, want: &Lines) -> BTreeMap<Key, Diff> {
    let empty = Vec::new();
    let mut keys: Vec<&Key> = want.keys().chain(got.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            let g = got.get(k).unwrap_or(&empty);
            let w = want.get(k).unwrap_or(&empty);
            (k.clone(), diff(g, w))
        })
        .collect()
}

fn describe(diffs: &BTreeMap<Key, Diff>) -> String {
    let mut s = String::new();
    let (mut missing, mut dups, mut unexpected) = (0, 0, 0);
    for ((name, stream), d) in diffs {
        missing += d.missing;
        dups += d.duplicates;
        unexpected += d.unexpected;
        if !d.exact() {
            s.push_str(&format!(
                "\n  {name} {stream}: {} missing, {} duplicates, {} unexpected{}; e.g. {}",
                d.missing,
                d.duplicates,
                d.unexpected,
                if d.out_of_order { ", OUT OF ORDER" } else { "" },
                d.examples.join(", ")
            ));
        }
    }
    format!("{missing} missing, {dups} duplicates, {unexpected} unexpected in all:{s}")
}

/// Exactly once, in order: the captured lines of each stream are the logged ones.
fn assert_exact(captured: &Captured, want: &Lines) {
    assert!(
        captured.bad.is_empty(),
        "malformed output lines: {:?}",
        captured.bad
    );
    let d = diffs(&captured.lines, want);
    assert!(
        d.values().all(Diff::exact) && captured.lines == *want,
        "captured lines differ from the logged ones: {}",
        describe(&d)
    );
}

/// Polls the file sink until every logged line is there (or the deadline passes: panic).
fn wait_complete(
    env: &TestEnv,
    capturer: &mut Capturer,
    want: &dyn Fn() -> Lines,
    within: Duration,
) -> Captured {
    let deadline = Instant::now() + within;
    loop {
        capturer.assert_running();
        let want = want();
        let captured = read_output(&env.out_dir(), true);
        let d = diffs(&captured.lines, &want);
        if d.values().all(|d| d.missing == 0) {
            return captured;
        }
        assert!(
            Instant::now() < deadline,
            "not every line was captured within {within:?}: {}",
            describe(&d)
        );
        thread::sleep(POLL);
    }
}

/// Polls until at least `fraction` of `want`'s lines are in the file sink; returns the fraction.
fn wait_fraction(env: &TestEnv, capturer: &mut Capturer, want: &Lines, fraction: f64) -> f64 {
    let total: usize = want.values().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        capturer.assert_running();
        let got = read_output(&env.out_dir(), true).total();
        let f = got as f64 / total as f64;
        if f >= fraction {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {total} lines captured after 60 s"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Checks the JSON entries of one container against what Docker says about it.
fn assert_entry_format(captured: &Captured, name: &str, id: &str) {
    let entries = captured
        .entries
        .get(name)
        .expect("entries of the container");
    for e in entries {
        let obj = e.as_object().unwrap();
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        for key in [
            "labels",
            "message",
            "processed_at",
            "source_id",
            "source_type",
            "timestamp",
        ] {
            assert!(keys.contains(&key), "no {key} in {e}");
        }
        assert_eq!(e["source_type"], "docker", "{e}");
        assert_eq!(e["source_id"], &id[..12], "{e}");
        assert_eq!(e["labels"]["container_id"], id, "{e}");
        assert_eq!(e["labels"]["image"], IMAGE, "{e}");
        let ts = e["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.contains('T'), "timestamp {ts}");
        let stream = e["labels"]["stream"].as_str().unwrap();
        let message = e["message"].as_str().unwrap();
        let want_prefix = if stream == "stdout" { "out " } else { "err " };
        assert!(message.starts_with(want_prefix), "{stream} line {e}");
    }
}

fn log_line(capturer: &Capturer, needle: &str) -> Option<String> {
    capturer
        .stderr_text()
        .lines()
        .find(|l| l.contains(needle))
        .map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// 1. Steady output, 200 ms rotation, file sink: exactly once, in order

/// `containers` containers print `lines` numbered lines per stream, 50 ms apart; half start
/// before the capturer, half after. Returns the test's duration.
fn steady(test: &str, containers: usize, lines: usize, args: &[&str]) -> Duration {
    let t0 = Instant::now();
    let env = TestEnv::new(test);
    let config = write_config(&env, &Settings::default());
    let script = numbered_script(lines, 50_000);
    let mut names = Vec::new();
    for i in 0..containers / 2 {
        names.push(env.run(&format!("c{i}"), &script));
    }
    let mut capturer = Capturer::start(&env, &config, args);
    for i in containers / 2..containers {
        names.push(env.run(&format!("c{i}"), &script));
    }
    let want = expect_numbered(&names, lines);
    env.wait_exited(&names, Duration::from_secs(120));
    wait_complete(&env, &mut capturer, &|| want.clone(), DELIVERY_BOUND);
    let engine = log_line(&capturer, "io engine:");
    let stop = capturer.terminate();
    let captured = read_output(&env.out_dir(), false);
    assert_exact(&captured, &want);
    for name in &names {
        assert_entry_format(&captured, name, &env.id_of(name));
    }
    eprintln!(
        "{test}: {} lines from {containers} containers exactly once; {}; exit {stop:?} after \
         SIGTERM; {:?} in all",
        captured.total(),
        engine
            .as_deref()
            .unwrap_or("(no io engine line in the log)"),
        t0.elapsed()
    );
    if args.contains(&"epoll") {
        let engine = engine.expect("the capturer logs its io engine");
        assert!(engine.contains("io engine: epoll"), "{engine}");
    }
    t0.elapsed()
}

#[test]
fn steady_8_containers_rotated_every_200ms_exactly_once() {
    steady("steady", 8, 400, &[]);
}

#[test]
fn steady_containers_on_epoll_exactly_once() {
    steady("epoll", 4, 200, &["--io-engine", "epoll"]);
}

// ---------------------------------------------------------------------------------------------
// 2. Restarts mid-run

const RESTART_CONTAINERS: usize = 6;
const RESTART_LINES: usize = 400;
const RESTART_USLEEP: u32 = 50_000;

/// Runs the numbered containers with the capturer stopped (by `sig`) and restarted when a
/// quarter and half of the lines are captured. Returns the environment (its guard), the final
/// output and the logged lines.
fn restarted_twice(test: &str, sig: i32, settings: &Settings) -> (TestEnv, Captured, Lines) {
    let env = TestEnv::new(test);
    let config = write_config(&env, settings);
    let script = numbered_script(RESTART_LINES, RESTART_USLEEP);
    let names: Vec<String> = (0..RESTART_CONTAINERS)
        .map(|i| env.run(&format!("c{i}"), &script))
        .collect();
    let want = expect_numbered(&names, RESTART_LINES);
    let mut capturer = Capturer::start(&env, &config, &[]);
    for (round, fraction) in [0.25, 0.5].into_iter().enumerate() {
        let reached = wait_fraction(&env, &mut capturer, &want, fraction);
        let running = container_states(&names)
            .values()
            .filter(|(s, _)| s == "running")
            .count();
        assert_eq!(
            running, RESTART_CONTAINERS,
            "containers ended before restart {round}: the test would not restart mid-run"
        );
        if sig == libc::SIGTERM {
            let took = capturer.terminate();
            eprintln!(
                "{test}: SIGTERM at {:.0}% captured, exit 0 after {took:?}",
                reached * 100.0
            );
        } else {
            capturer.kill();
            eprintln!("{test}: SIGKILL at {:.0}% captured", reached * 100.0);
        }
        capturer = Capturer::start(&env, &config, &[]);
    }
    env.wait_exited(&names, Duration::from_secs(120));
    wait_complete(&env, &mut capturer, &|| want.clone(), DELIVERY_BOUND);
    capturer.terminate();
    let captured = read_output(&env.out_dir(), false);
    (env, captured, want)
}

#[test]
fn sigterm_restarts_mid_run_deliver_exactly_once() {
    let t0 = Instant::now();
    let (_env, captured, want) = restarted_twice("sigterm", libc::SIGTERM, &Settings::default());
    assert_exact(&captured, &want);
    eprintln!(
        "sigterm: {} lines exactly once across 3 capturer runs in {:?}",
        captured.total(),
        t0.elapsed()
    );
}

/// After SIGKILL, the lines delivered after the last commit of positions come again. A
/// position is committed every `positions.flush_interval` (F, 1 s here); lines are delivered
/// `dispatcher.batch_timeout` (B, 200 ms) after they are read at most, and the dispatcher looks
/// at the commit clock at least every 500 ms. So a kill repeats at most the lines a container
/// wrote in F + B + 0.5 s: at 2 lines per 50 ms, 40 lines/s x 1.7 s = 68 per container. The
/// test allows twice that (a loaded 2-core machine delays fsyncs and batches) per container
/// per kill.
#[test]
fn sigkill_restarts_mid_run_lose_nothing_and_repeat_within_the_commit_window() {
    let t0 = Instant::now();
    let settings = Settings::default();
    let (_env, captured, want) = restarted_twice("sigkill", libc::SIGKILL, &settings);
    let kills = 2.0;
    let rate = 2.0 / (f64::from(RESTART_USLEEP) / 1e6); // lines per second per container
    let window = 1.0 + 0.2 + 0.5; // flush_interval + batch_timeout + dispatcher tick, seconds
    let per_container = (rate * window * kills * 2.0).ceil() as usize;
    let allowed = per_container * RESTART_CONTAINERS;
    assert!(
        captured.bad.is_empty(),
        "malformed output lines after SIGKILL (a torn line?): {:?}",
        captured.bad
    );
    let d = diffs(&captured.lines, &want);
    let missing: usize = d.values().map(|d| d.missing).sum();
    let unexpected: usize = d.values().map(|d| d.unexpected).sum();
    let duplicates: usize = d.values().map(|d| d.duplicates).sum();
    assert!(
        missing == 0 && unexpected == 0 && d.values().all(|d| !d.out_of_order),
        "SIGKILL lost or reordered lines: {}",
        describe(&d)
    );
    let mut by_container: BTreeMap<&str, usize> = BTreeMap::new();
    for ((name, _), diff) in &d {
        *by_container.entry(name.as_str()).or_default() += diff.duplicates;
    }
    eprintln!(
        "sigkill: {duplicates} duplicated lines of {} after 2 SIGKILLs (allowed {allowed}: \
         {per_container} per container); per container {:?}; {:?} in all",
        captured.total() - duplicates,
        by_container.values().collect::<Vec<_>>(),
        t0.elapsed()
    );
    for (name, dups) in &by_container {
        assert!(
            *dups <= per_container,
            "{name}: {dups} duplicates, over the bound of {per_container}: {}",
            describe(&d)
        );
    }
    assert!(duplicates <= allowed);
}

// ---------------------------------------------------------------------------------------------
// 3. Container stop, start, restart, and containers created after the capturer started

#[test]
fn container_stop_start_restart_and_late_containers_exactly_once() {
    const RUN: usize = 200;
    let t0 = Instant::now();
    let env = TestEnv::new("lifecycle");
    let config = write_config(&env, &Settings::default());
    // RUN lines per stream and run, 20 ms apart, then sleep (still running).
    let script = run_numbered_script(RUN, 20_000, "exec sleep 600");
    let restarted = env.run("restarted", &script); // running before the capturer starts
    let mut capturer = Capturer::start(&env, &config, &[]);
    let stopped = env.run("stopped", &script); // created after it started
    let names = vec![restarted.clone(), stopped.clone()];
    let truth = |names: &[String]| -> Lines {
        let mut lines = Lines::new();
        for name in names {
            let (out, err) = docker_logs(name);
            lines.insert(key(name, "stdout"), out);
            lines.insert(key(name, "stderr"), err);
        }
        lines
    };

    // Stop `stopped` while it prints (once 20 of its lines are captured), start it again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_output(&env.out_dir(), true)
        .lines
        .get(&key(&stopped, "stdout"))
        .map_or(0, Vec::len)
        < 20
    {
        capturer.assert_running();
        assert!(Instant::now() < deadline, "no line of {stopped} captured");
        thread::sleep(Duration::from_millis(50));
    }
    docker(&["stop", "-t", "1", &stopped]);
    let (out, _) = docker_logs(&stopped);
    assert!(
        out.len() < RUN,
        "{stopped} finished its run before the stop: {} lines",
        out.len()
    );
    docker(&["start", &stopped]);
    // Restart `restarted` once its first run is complete.
    let deadline = Instant::now() + Duration::from_secs(30);
    while docker_logs(&restarted).1.len() < RUN {
        assert!(
            Instant::now() < deadline,
            "{restarted} did not print its run"
        );
        thread::sleep(POLL);
    }
    docker(&["restart", "-t", "1", &restarted]);
    // A container created now, that prints as fast as it can and exits.
    let late = env.run("late", &numbered_script(300, 0));
    let all = vec![restarted.clone(), stopped.clone(), late.clone()];

    // Both long-lived containers complete their second run; `late` exits.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (last_out, last_err) = (format!("r2 out {RUN}"), format!("r2 err {RUN}"));
    loop {
        let t = truth(&names);
        let done = names.iter().all(|n| {
            t[&key(n, "stdout")].last() == Some(&last_out)
                && t[&key(n, "stderr")].last() == Some(&last_err)
        });
        if done {
            break;
        }
        capturer.assert_running();
        assert!(Instant::now() < deadline, "second runs did not complete");
        thread::sleep(POLL);
    }
    env.wait_exited(std::slice::from_ref(&late), Duration::from_secs(60));
    let want = truth(&all);
    // The ground truth is what the test meant: two runs each, the first of `stopped` cut.
    assert_eq!(
        want[&key(&restarted, "stdout")],
        [numbered("r1 out", 1..=RUN), numbered("r2 out", 1..=RUN)].concat()
    );
    let cut = want[&key(&stopped, "stdout")].len() - RUN;
    assert!(cut > 0 && cut < RUN, "{stopped}: first run of {cut} lines");
    assert_eq!(want[&key(&late, "stderr")], numbered("err", 1..=300));
    wait_complete(&env, &mut capturer, &|| want.clone(), DELIVERY_BOUND);
    capturer.terminate();
    let captured = read_output(&env.out_dir(), false);
    assert_exact(&captured, &want);
    eprintln!(
        "lifecycle: stop mid-run + start ({cut} + {RUN} lines per stream), restart ({RUN} + \
         {RUN}), late container (300): {} lines exactly once in {:?}",
        captured.total(),
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Loki: an outage of 10 s, then every line exactly once

/// How long the receiver answers 500, from the first push it sees.
const LOKI_OUTAGE: Duration = Duration::from_secs(10);
/// The capturer's resident memory may not exceed this while the sink is down.
const RSS_BOUND_KIB: u64 = 100 * 1024;

#[derive(Default)]
struct LokiState {
    first_push: Option<Instant>,
    /// Pushes answered 500, and the lines they carried.
    refused: usize,
    refused_lines: usize,
    /// Pushes answered 204.
    accepted: usize,
    gzipped: usize,
    plain: usize,
    /// Lines of the pushes answered 204, by (container_name, stream).
    lines: Lines,
    /// Everything wrong with the requests.
    errors: Vec<String>,
    /// Distinct stream label sets seen.
    label_sets: Vec<BTreeMap<String, String>>,
}

struct LokiReceiver {
    addr: SocketAddr,
    state: Arc<Mutex<LokiState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LokiReceiver {
    fn start() -> LokiReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(LokiState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut conns = Vec::new();
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let (st, sp) = (st.clone(), sp.clone());
                        conns.push(thread::spawn(move || serve(stream, &st, &sp)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        LokiReceiver {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for LokiReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads more bytes into `buf`; false at EOF, on error or when stopped.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, stop: &AtomicBool) -> bool {
    let mut tmp = [0u8; 65536];
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        match stream.read(&mut tmp) {
            Ok(0) => return false,
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                return true;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// One keep-alive connection: requests parsed by hand (httparse for the head, Content-Length
/// for the body), answered by [`answer`].
fn serve(mut stream: TcpStream, state: &Mutex<LokiState>, stop: &AtomicBool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = Vec::new();
    loop {
        let (head_len, method, path, headers) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut hs);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).to_string(),
                            )
                        })
                        .collect();
                    break (
                        n,
                        req.method.unwrap_or("").to_string(),
                        req.path.unwrap_or("").to_string(),
                        headers,
                    );
                }
                Ok(httparse::Status::Partial) => {
                    if !fill(&mut stream, &mut buf, stop) {
                        return;
                    }
                }
                Err(e) => {
                    state
                        .lock()
                        .unwrap()
                        .errors
                        .push(format!("bad request head: {e}"));
                    return;
                }
            }
        };
        buf.drain(..head_len);
        let Some(length) =
            header(&headers, "content-length").and_then(|v| v.trim().parse::<usize>().ok())
        else {
            state.lock().unwrap().errors.push(format!(
                "request without Content-Length (headers {headers:?})"
            ));
            return;
        };
        while buf.len() < length {
            if !fill(&mut stream, &mut buf, stop) {
                return;
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let response = answer(&method, &path, &headers, &body, state);
        if stream.write_all(response).is_err() {
            return;
        }
    }
}

const ANSWER_500: &[u8] = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\n\
                            Content-Length: 17\r\n\r\nsimulated outage\n";
const ANSWER_204: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";

/// The value of a header (names lower-cased).
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Checks one push and decides the answer: 500 during the outage, 204 after. Lines are
/// counted only from pushes answered 204.
fn answer(
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    state: &Mutex<LokiState>,
) -> &'static [u8] {
    let header = |name: &str| header(headers, name);
    let mut errors = Vec::new();
    if method != "POST" || path != "/loki/api/v1/push" {
        errors.push(format!("{method} {path}: expected POST /loki/api/v1/push"));
    }
    if header("content-type") != Some("application/json") {
        errors.push(format!("Content-Type {:?}", header("content-type")));
    }
    if header("x-scope-orgid") != Some(LOKI_TENANT) {
        errors.push(format!("X-Scope-OrgID {:?}", header("x-scope-orgid")));
    }
    if header(&LOKI_HEADER.0.to_ascii_lowercase()) != Some(LOKI_HEADER.1) {
        errors.push(format!("extra header {} missing", LOKI_HEADER.0));
    }
    let gzipped = header("content-encoding") == Some("gzip");
    let json = if gzipped {
        let mut out = Vec::new();
        match flate2::read::GzDecoder::new(body).read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) => errors.push(format!("gzip body does not decode: {e}")),
        }
        if out.len() < 1024 {
            errors.push(format!("gzipped a body of {} bytes (< 1 KiB)", out.len()));
        }
        out
    } else {
        if body.len() >= 1024 {
            errors.push(format!(
                "a body of {} bytes (>= 1 KiB) not gzipped",
                body.len()
            ));
        }
        body.to_vec()
    };
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let mut lines: Vec<(Key, String)> = Vec::new();
    let mut label_sets = Vec::new();
    match serde_json::from_slice::<Value>(&json) {
        Err(e) => errors.push(format!("body is not JSON: {e}")),
        Ok(v) => match v["streams"].as_array() {
            None => errors.push(format!("no streams array: {v}")),
            Some(streams) => {
                for s in streams {
                    let Some(labels) = s["stream"].as_object() else {
                        errors.push(format!("stream without labels: {s}"));
                        continue;
                    };
                    let labels: BTreeMap<String, String> = labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("<not a string>").into()))
                        .collect();
                    for k in labels.keys() {
                        if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                            errors.push(format!("label name {k:?}"));
                        }
                    }
                    for dropped in ["container_id", "image"] {
                        if labels.contains_key(dropped) {
                            errors.push(format!("high-cardinality label {dropped} sent"));
                        }
                    }
                    if labels.get("service").map(String::as_str) != Some("ssw-log-capturer") {
                        errors.push(format!("service label: {labels:?}"));
                    }
                    let (Some(name), Some(stream)) =
                        (labels.get("container_name"), labels.get("stream"))
                    else {
                        errors.push(format!("labels {labels:?}"));
                        continue;
                    };
                    if stream != "stdout" && stream != "stderr" {
                        errors.push(format!("stream label {stream:?}"));
                    }
                    for value in s["values"].as_array().into_iter().flatten() {
                        let (Some(ts), Some(line)) = (value[0].as_str(), value[1].as_str()) else {
                            errors.push(format!("value {value}"));
                            continue;
                        };
                        match ts.parse::<i64>() {
                            Ok(ts) if (now_ns - ts).abs() < 3600 * 1_000_000_000 => {}
                            _ => errors.push(format!("timestamp {ts:?} is not unix ns of now")),
                        }
                        lines.push(((name.clone(), stream.clone()), line.to_string()));
                    }
                    label_sets.push(labels);
                }
            }
        },
    }
    let mut st = state.lock().unwrap();
    st.errors.extend(errors);
    for set in label_sets {
        if !st.label_sets.contains(&set) {
            st.label_sets.push(set);
        }
    }
    if gzipped {
        st.gzipped += 1;
    } else {
        st.plain += 1;
    }
    let first = *st.first_push.get_or_insert_with(Instant::now);
    if first.elapsed() < LOKI_OUTAGE {
        st.refused += 1;
        st.refused_lines += lines.len();
        return ANSWER_500;
    }
    st.accepted += 1;
    for (key, line) in lines {
        st.lines.entry(key).or_default().push(line);
    }
    ANSWER_204
}

#[test]
fn loki_outage_pauses_reading_then_delivers_exactly_once() {
    let t0 = Instant::now();
    let env = TestEnv::new("loki");
    let receiver = LokiReceiver::start();
    // A small queue: it fills within seconds of the outage, so reading must pause.
    let config = write_config(
        &env,
        &Settings {
            queue_size: 400,
            batch_size: 100,
            log_level: "debug",
            local_file: false,
            loki_url: Some(receiver.url()),
            ..Settings::default()
        },
    );
    let lines = 300;
    let script = numbered_script(lines, 50_000);
    let names: Vec<String> = (0..4).map(|i| env.run(&format!("c{i}"), &script)).collect();
    let want = expect_numbered(&names, lines);
    let total: usize = want.values().map(Vec::len).sum();
    let mut capturer = Capturer::start(&env, &config, &[]);

    let mut max_rss_outage = 0u64;
    let mut max_rss = 0u64;
    let mut exited_at: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        capturer.assert_running();
        let rss = capturer.rss_kib().unwrap_or(0);
        max_rss = max_rss.max(rss);
        let (in_outage, got) = {
            let st = receiver.state.lock().unwrap();
            let in_outage = st.first_push.is_none_or(|f| f.elapsed() < LOKI_OUTAGE);
            let got: usize = st.lines.values().map(Vec::len).sum();
            (in_outage, got)
        };
        if in_outage {
            max_rss_outage = max_rss_outage.max(rss);
        }
        if exited_at.is_none() {
            let states = container_states(&names);
            if states.values().all(|(s, _)| s == "exited") {
                exited_at = Some(Instant::now());
            }
        }
        if exited_at.is_some() && got >= total {
            break;
        }
        if exited_at.is_some_and(|t| t.elapsed() > DELIVERY_BOUND + LOKI_OUTAGE) {
            let st = receiver.state.lock().unwrap();
            panic!(
                "lines still missing {:?} after the containers exited: {}",
                DELIVERY_BOUND + LOKI_OUTAGE,
                describe(&diffs(&st.lines, &want))
            );
        }
        assert!(Instant::now() < deadline, "the Loki test took over 120 s");
        thread::sleep(Duration::from_millis(100));
    }
    let stop = capturer.terminate();
    let log = capturer.stderr_text();
    let st = receiver.state.lock().unwrap();
    assert!(st.errors.is_empty(), "push format errors: {:#?}", st.errors);
    assert!(
        st.refused >= 3,
        "the outage saw only {} pushes: not retried?",
        st.refused
    );
    let d = diffs(&st.lines, &want);
    assert!(
        d.values().all(Diff::exact) && st.lines == want,
        "lines pushed (answered 204) differ from the logged ones: {}",
        describe(&d)
    );
    assert!(st.gzipped > 0, "no push was gzipped");
    for set in &st.label_sets {
        assert!(set.contains_key("container_name") && set.contains_key("stream"));
    }
    // Reading paused: the queue (400 entries) filled while the sink refused.
    let pause = log
        .lines()
        .find(|l| l.contains("pausing"))
        .map(str::to_string);
    assert!(
        pause.is_some(),
        "the capturer never logged that it paused reading during the outage"
    );
    assert!(
        max_rss_outage < RSS_BOUND_KIB,
        "VmRSS reached {max_rss_outage} KiB during the outage (bound {RSS_BOUND_KIB} KiB)"
    );
    eprintln!(
        "loki: {} pushes refused ({} lines, the same held batch), then {} accepted ({} gzipped, \
         {} plain of all pushes); {total} lines exactly once; reader paused ({}); max VmRSS \
         {max_rss_outage} KiB during the outage, {max_rss} KiB overall (bound {RSS_BOUND_KIB}); \
         exit {stop:?} after SIGTERM; {:?} in all",
        st.refused,
        st.refused_lines,
        st.accepted,
        st.gzipped,
        st.plain,
        pause.unwrap().trim(),
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. --once

#[test]
fn once_reads_exact_counts_and_nothing_twice_across_runs() {
    let t0 = Instant::now();
    let env = TestEnv::new("once");
    let config = write_config(&env, &Settings::default());
    let counts = [("a", 300usize), ("b", 1000), ("c", 1)];
    let mut names = Vec::new();
    for (suffix, n) in counts {
        names.push(env.run(suffix, &run_numbered_script(n, 0, "true")));
    }
    let silent = env.run("silent", "true");
    let mut all = names.clone();
    all.push(silent.clone());
    env.wait_exited(&all, Duration::from_secs(60));
    let run_lines = |name: &str, run: usize, n: usize| -> [(Key, Vec<String>); 2] {
        [
            (key(name, "stdout"), numbered(&format!("r{run} out"), 1..=n)),
            (key(name, "stderr"), numbered(&format!("r{run} err"), 1..=n)),
        ]
    };
    let mut want = Lines::new();
    for (name, (_, n)) in names.iter().zip(counts) {
        want.extend(run_lines(name, 1, n));
    }

    // First run: everything, then exit 0.
    let took = Capturer::start(&env, &config, &["--once"]).expect_success(Duration::from_secs(60));
    let captured = read_output(&env.out_dir(), false);
    assert_exact(&captured, &want);
    assert!(!env.out_dir().join(format!("{silent}.log")).exists());
    let first_total = captured.total();

    // Second run, same positions: nothing new.
    let took2 = Capturer::start(&env, &config, &["--once"]).expect_success(Duration::from_secs(60));
    let captured = read_output(&env.out_dir(), false);
    assert_exact(&captured, &want);

    // `a` runs again (its log grows by a second run); a third --once adds exactly that.
    docker(&["start", &names[0]]);
    env.wait_exited(&names[..1], Duration::from_secs(60));
    for (key, mut lines) in run_lines(&names[0], 2, counts[0].1) {
        want.get_mut(&key).unwrap().append(&mut lines);
    }
    let took3 = Capturer::start(&env, &config, &["--once"]).expect_success(Duration::from_secs(60));
    let captured = read_output(&env.out_dir(), false);
    assert_exact(&captured, &want);
    assert!(
        env.dir.join("positions/container_positions.json").exists(),
        "no positions file"
    );
    eprintln!(
        "once: {first_total} lines exactly ({took:?}), second run +0 ({took2:?}), third run +{} \
         ({took3:?}); {:?} in all",
        captured.total() - first_total,
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Exited while the capturer was down

/// A container that exits while the capturer is down: discovery offers running containers
/// only, so the daemon itself reads, at start, every exited container that has a committed
/// position, to its end.
#[test]
fn container_exiting_while_the_capturer_is_down_is_read_at_its_next_start() {
    let env = TestEnv::new("downexit");
    let config = write_config(&env, &Settings::default());
    let name = env.run("c", &numbered_script(100, 20_000));
    let want = expect_numbered(std::slice::from_ref(&name), 100);
    let mut capturer = Capturer::start(&env, &config, &[]);
    wait_fraction(&env, &mut capturer, &want, 0.2);
    capturer.terminate();
    env.wait_exited(std::slice::from_ref(&name), Duration::from_secs(60));
    let mut capturer = Capturer::start(&env, &config, &[]);
    wait_complete(
        &env,
        &mut capturer,
        &|| want.clone(),
        Duration::from_secs(15),
    );
    capturer.terminate();
    assert_exact(&read_output(&env.out_dir(), false), &want);
}

// ---------------------------------------------------------------------------------------------
// A positions file written by log_capturer_go

/// The Go version's `container_positions.json` (keyed by the 12-character id, RFC 3339 times,
/// no nanosecond fields of ours) is resumed from: for a stopped container Go resumes at
/// `last_log_time`, the capture time of its last batch, which is just after the newest line it
/// had read. The lines after it arrive exactly once; none before it comes again.
#[test]
fn go_positions_file_is_resumed_without_loss_or_repeat() {
    use log_capturer::decode::timestamp::{format_rfc3339_nanos, parse_rfc3339_nanos};
    let env = TestEnv::new("gopos");
    let config = write_config(&env, &Settings::default());
    // One stream only: its timestamps follow its file order, so "after line 120" is exact.
    let name = env.run(
        "c",
        "i=0; while [ $i -lt 200 ]; do i=$((i+1)); echo \"out $i\"; done",
    );
    env.wait_exited(std::slice::from_ref(&name), Duration::from_secs(60));
    let logs = docker(&["logs", "-t", &name]);
    let stamp_of = |n: usize| -> i64 {
        let line = logs
            .lines()
            .find(|l| l.ends_with(&format!(" out {n}")))
            .unwrap_or_else(|| panic!("line {n} not in docker logs"));
        parse_rfc3339_nanos(line.split(' ').next().unwrap().as_bytes()).unwrap()
    };
    // Go read lines 1..=120 and stamped its batch a microsecond later.
    let captured_at = stamp_of(120) + 1_000;
    assert!(
        captured_at < stamp_of(121),
        "lines 120 and 121 less than 1 µs apart"
    );
    let id = env.id_of(&name)[..12].to_string();
    let time = format_rfc3339_nanos(captured_at);
    let go_file = format!(
        "{{\n  \"{id}\": {{\n    \"container_id\": \"{id}\",\n    \"since\": \"{time}\",\n    \
         \"last_read\": \"{time}\",\n    \"last_log_time\": \"{time}\",\n    \"log_count\": 120,\n    \
         \"bytes_read\": 1012,\n    \"status\": \"stopped\",\n    \"restart_count\": 0\n  }}\n}}"
    );
    fs::create_dir_all(env.dir.join("positions")).unwrap();
    fs::write(env.dir.join("positions/container_positions.json"), go_file).unwrap();

    Capturer::start(&env, &config, &["--once"]).expect_success(Duration::from_secs(60));
    let mut want = Lines::new();
    want.insert(key(&name, "stdout"), numbered("out", 121..=200));
    assert_exact(&read_output(&env.out_dir(), false), &want);

    // Our own record replaced Go's: a second run adds nothing.
    Capturer::start(&env, &config, &["--once"]).expect_success(Duration::from_secs(60));
    assert_exact(&read_output(&env.out_dir(), false), &want);
}

// ---------------------------------------------------------------------------------------------
// Issue 9 section 2: the accounting identity, checked at every clean exit

/// Every line read is accounted for: `done: R lines read, D delivered, X dropped, U
/// undelivered; discarded: ...` with R = D + X + U, and no `accounting:` error logged.
fn assert_accounting(log: &str, done: &str) {
    assert!(
        !log.contains("accounting:"),
        "the daemon found lines unaccounted for: {}",
        log.lines().find(|l| l.contains("accounting:")).unwrap()
    );
    let number_before = |word: &str| -> u64 {
        let at = done
            .find(word)
            .unwrap_or_else(|| panic!("no `{word}` in {done}"));
        done[..at]
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no number before `{word}` in {done}"))
    };
    let read = number_before(" lines read");
    let out =
        number_before(" delivered") + number_before(" dropped") + number_before(" undelivered");
    assert_eq!(
        read, out,
        "read != delivered + dropped + undelivered: {done}"
    );
    assert!(done.contains("; discarded: repeat="), "{done}");
}

// Issue 12, sinks and disk (RELIABILITY.md): the output directory deleted mid-run.

/// The numbers `prefix N` of one stream, in file order.
fn stream_numbers(captured: &Captured, name: &str, stream: &str) -> Vec<usize> {
    captured
        .lines
        .get(&key(name, stream))
        .map(|lines| {
            lines
                .iter()
                .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn output_directory_deleted_mid_run_later_lines_land_exactly_once() {
    let env = TestEnv::new("rmdir");
    let config = write_config(&env, &Settings::default());
    let mut capturer = Capturer::start(&env, &config, &[]);
    let n = 400;
    let name = env.run("a", &numbered_script(n, 10_000));
    let want = expect_numbered(std::slice::from_ref(&name), n);
    wait_fraction(&env, &mut capturer, &want, 0.2);
    let before = read_output(&env.out_dir(), true);
    fs::remove_dir_all(env.out_dir()).unwrap();
    env.wait_exited(std::slice::from_ref(&name), Duration::from_secs(60));
    let deadline = Instant::now() + DELIVERY_BOUND;
    loop {
        capturer.assert_running();
        let got = read_output(&env.out_dir(), true);
        let done = ["stdout", "stderr"]
            .iter()
            .all(|s| stream_numbers(&got, &name, s).last() == Some(&n));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the last lines never reached the recreated directory (before: to the deleted one)"
        );
        thread::sleep(POLL);
    }
    capturer.signal(libc::SIGTERM);
    assert!(capturer.wait_exit(EXIT_BOUND).is_some());
    let after = read_output(&env.out_dir(), false);
    assert!(after.bad.is_empty(), "{:?}", after.bad);
    for stream in ["stdout", "stderr"] {
        // What was on disk when the directory went is gone with it; everything from the first
        // line not yet there is in the new file, once, in order.
        let seen = stream_numbers(&before, &name, stream)
            .last()
            .copied()
            .unwrap_or(0);
        let got = stream_numbers(&after, &name, stream);
        let first = got[0];
        assert!(
            first <= seen + 1,
            "{stream}: lines {} to {} lost",
            seen + 1,
            first - 1
        );
        assert_eq!(got, (first..=n).collect::<Vec<_>>(), "{stream}");
    }
}
