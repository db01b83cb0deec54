//! Docker API version negotiation and Docker reachability, for the daemon binary.
//!
//! Against the synthetic engine of the benchmarks (`benches/support/fake_dockerd.rs`), started
//! in-process, serving the API range of Engine 29.0 (1.44 to 1.52) or of dockerd 20.10 (1.12
//! to 1.41) and answering any other version with dockerd's `400 client version ... is too
//! old/new`: `--once` and the daemon read every line from both and report the negotiated
//! version in `/health`, `/debug/goroutines` and `docker_api_version_info`; an engine whose
//! minimum is above what this program speaks stops it with a message that says so;
//! `DOCKER_API_VERSION` pins the version. With nothing listening on the socket, the daemon
//! stays up, `/health` answers 503 naming the reason and `docker_up` is 0; once an engine
//! listens there, it captures everything. `--once` still fails at once.
//!
//! And against the real dockerd 20.10 (LOGCAP_DOCKER_SOCK, as the other Docker tests): the
//! client negotiates 1.41.

#[path = "../benches/support/fake_dockerd.rs"]
#[allow(dead_code)]
mod fake_dockerd;
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fake_dockerd::{ApiRange, Mode, ServerConfig, ServerStats};
use log_capturer::sources::docker::{ApiVersion, Client};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_log_capturer");
const CONTAINERS: usize = 3;
const LINES: usize = 400;
const ENGINE_29: ApiRange = ((1, 44), (1, 52));
const ENGINE_20_10: ApiRange = ((1, 12), (1, 41));
const BOUND: Duration = Duration::from_secs(30);

/// A temporary directory, removed unless the test fails.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Dir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "logcap-docker-api-{}-{nanos:x}-{test}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("---- test files kept in {} ----", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// The synthetic engine on a thread; stopped and its socket removed on drop.
struct Engine {
    stop: Arc<AtomicBool>,
    stats: Arc<ServerStats>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    socket: PathBuf,
}

impl Engine {
    fn start(socket: &Path, api_versions: ApiRange) -> Engine {
        Engine::with_containers(socket, api_versions, CONTAINERS)
    }

    fn with_containers(socket: &Path, api_versions: ApiRange, containers: usize) -> Engine {
        let stop = Arc::new(AtomicBool::new(false));
        let (stats, thread) = fake_dockerd::spawn(
            ServerConfig {
                socket: socket.to_path_buf(),
                mode: Mode::Bulk,
                containers,
                lines: LINES,
                rate: 1,
                api_versions: Some(api_versions),
            },
            stop.clone(),
        )
        .expect("fake engine");
        Engine {
            stop,
            stats,
            thread: Some(thread),
            socket: socket.to_path_buf(),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.socket);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a config reading `socket` into `dir/out`, the HTTP API on `port` (0: off).
fn write_config(dir: &Path, socket: &Path, port: u16) -> PathBuf {
    write_config_for(dir, socket, port, "")
}

/// [`write_config`], capturing only the containers whose name contains `include` (if set).
fn write_config_for(dir: &Path, socket: &Path, port: u16, include: &str) -> PathBuf {
    let d = dir.display();
    let yaml = format!(
        r#"app:
  log_level: "info"
  log_format: "text"
server:
  enabled: {server}
  host: "127.0.0.1"
  port: {port}
metrics:
  enabled: false
container_monitor:
  enabled: true
  socket_path: "unix://{sock}"
  reconnect_interval: "2s"
  include_names: [{include}]
file_monitor_service:
  enabled: false
positions:
  enabled: true
  directory: "{d}/positions"
  flush_interval: "1s"
sinks:
  local_file:
    enabled: true
    directory: "{d}/out"
    filename_pattern: "{{nomedocontainer}}.log"
    output_format: "json"
  loki:
    enabled: false
  stdout:
    enabled: false
  blackhole:
    enabled: false
"#,
        server = port != 0,
        sock = socket.display(),
        include = if include.is_empty() {
            String::new()
        } else {
            format!("\"{include}\"")
        },
    );
    let path = dir.join("config.yaml");
    fs::write(&path, yaml).unwrap();
    path
}

/// The capturer process; killed on drop if still running.
struct Capturer {
    child: Child,
    stderr: PathBuf,
}

impl Capturer {
    fn start(dir: &Path, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Capturer {
        let stderr = dir.join("capturer.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(config).args(args);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("SSW_") || k == "DOCKER_HOST" || k == "DOCKER_API_VERSION" {
                cmd.env_remove(&key);
            }
        }
        cmd.env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap());
        Capturer {
            child: cmd.spawn().expect("capturer"),
            stderr,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the capturer did not exit within {within:?}; its log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the capturer exited ({status}); its log:\n{}", self.log());
        }
    }

    /// SIGTERM (our own unreaped child), then its exit status.
    fn terminate(&mut self) -> ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        self.wait_exit(BOUND)
    }
}

impl Drop for Capturer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("---- capturer log ----\n{}", self.log());
        }
    }
}

/// `GET path` on the HTTP API: status and body; `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

fn get_json(port: u16, path: &str) -> Option<(u16, Value)> {
    let (status, body) = get(port, path)?;
    Some((status, serde_json::from_str(&body).ok()?))
}

/// Waits for `cond` (polled every 50 ms), failing the test with `what` after [`BOUND`].
fn wait_until(what: &str, capturer: &mut Capturer, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        capturer.assert_running();
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The sequence numbers of the lines captured per container (`seq=0000000017` in each
/// synthetic message), in file order.
fn captured(out: &Path) -> BTreeMap<String, Vec<usize>> {
    let mut by_container = BTreeMap::new();
    let Ok(entries) = fs::read_dir(out) else {
        return by_container;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let text = fs::read_to_string(&path).unwrap();
        // The sink may be writing: a last line without its newline is not complete yet.
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        let mut seqs = Vec::new();
        for line in complete.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let msg = v["message"].as_str().unwrap();
            let seq = msg
                .split("seq=")
                .nth(1)
                .and_then(|s| s.get(..10))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no seq in {msg:?}"));
            seqs.push(seq);
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        by_container.insert(name, seqs);
    }
    by_container
}

fn every_line(out: &Path) -> bool {
    let c = captured(out);
    c.len() == CONTAINERS && c.values().all(|s| s.len() >= LINES)
}

/// Every synthetic container's lines, exactly once and in order.
fn assert_exactly_once(out: &Path) {
    let c = captured(out);
    let want: Vec<usize> = (0..LINES).collect();
    assert_eq!(c.len(), CONTAINERS, "{:?}", c.keys().collect::<Vec<_>>());
    for (name, seqs) in &c {
        assert!(
            *seqs == want,
            "{name}: {} lines, not 0..{LINES} once each",
            seqs.len()
        );
    }
}

fn once_reads_every_line(test: &str, range: ApiRange) {
    let dir = Dir::new(test);
    let socket = dir.0.join("docker.sock");
    let engine = Engine::start(&socket, range);
    let config = write_config(&dir.0, &socket, 0);
    let mut capturer = Capturer::start(&dir.0, &config, &["--once"], &[]);
    let status = capturer.wait_exit(BOUND);
    assert!(status.success(), "exit {status}; log:\n{}", capturer.log());
    assert_exactly_once(&dir.0.join("out"));
    assert_eq!(
        engine.stats.refused.load(Relaxed),
        0,
        "a request was refused"
    );
    let max = format!("{}.{}", range.1 .0, range.1 .1);
    assert!(
        capturer
            .log()
            .contains(&format!("docker API version {max} ")),
        "the negotiated version is not logged:\n{}",
        capturer.log()
    );
}

#[test]
fn once_reads_every_line_from_an_engine_serving_1_44_to_1_52() {
    once_reads_every_line("once-29", ENGINE_29);
}

#[test]
fn once_reads_every_line_from_an_engine_serving_1_12_to_1_41() {
    once_reads_every_line("once-20", ENGINE_20_10);
}

fn daemon_reads_every_line(test: &str, range: ApiRange) {
    let dir = Dir::new(test);
    let socket = dir.0.join("docker.sock");
    let engine = Engine::start(&socket, range);
    let port = free_port();
    let config = write_config(&dir.0, &socket, port);
    let mut capturer = Capturer::start(&dir.0, &config, &[], &[]);
    let out = dir.0.join("out");
    wait_until("every line", &mut capturer, || every_line(&out));
    let max = format!("{}.{}", range.1 .0, range.1 .1);

    let (status, health) = get_json(port, "/health").expect("/health");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["checks"]["docker"]["api_version"], max.as_str());
    assert_eq!(health["checks"]["docker"]["reachable"], true);
    assert_eq!(
        health["checks"]["docker"]["engine_min_api_version"],
        format!("{}.{}", range.0 .0, range.0 .1).as_str()
    );
    let (_, debug) = get_json(port, "/debug/goroutines").expect("/debug/goroutines");
    assert_eq!(debug["docker"]["api_version"], max.as_str(), "{debug}");
    let (_, metrics) = get(port, "/metrics").expect("/metrics");
    for want in [
        format!("docker_api_version_info{{version=\"{max}\"}} 1"),
        "docker_up 1".to_string(),
        "docker_api_errors_total{endpoint=\"containers_list\"} 0".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l == want),
            "no `{want}` in /metrics:\n{metrics}"
        );
    }
    let status = capturer.terminate();
    assert!(status.success(), "exit {status}");
    assert_exactly_once(&out);
    assert_eq!(
        engine.stats.refused.load(Relaxed),
        0,
        "a request was refused"
    );
}

#[test]
fn daemon_reads_every_line_from_an_engine_serving_1_44_to_1_52() {
    daemon_reads_every_line("daemon-29", ENGINE_29);
}

#[test]
fn daemon_reads_every_line_from_an_engine_serving_1_12_to_1_41() {
    daemon_reads_every_line("daemon-20", ENGINE_20_10);
}

#[test]
fn engine_minimum_above_ours_stops_with_a_message_saying_so() {
    let dir = Dir::new("too-new");
    let socket = dir.0.join("docker.sock");
    let _engine = Engine::start(&socket, ((1, 53), (1, 60)));
    let config = write_config(&dir.0, &socket, 0);
    for args in [&["--once"][..], &[]] {
        let mut capturer = Capturer::start(&dir.0, &config, args, &[]);
        let status = capturer.wait_exit(BOUND);
        assert_eq!(status.code(), Some(1), "{args:?}: {status}");
        let log = capturer.log();
        assert!(
            log.contains(
                "minimum API version 1.53 is above the highest this log_capturer supports (1.52)"
            ),
            "{args:?}: {log}"
        );
    }
}

#[test]
fn docker_api_version_pins_the_version() {
    let dir = Dir::new("pinned");
    let socket = dir.0.join("docker.sock");
    let engine = Engine::start(&socket, ENGINE_29);
    let config = write_config(&dir.0, &socket, 0);
    // Pinned below the engine's range: no negotiation, so the engine's refusal is the error.
    let mut capturer = Capturer::start(
        &dir.0,
        &config,
        &["--once"],
        &[("DOCKER_API_VERSION", "1.41")],
    );
    let status = capturer.wait_exit(BOUND);
    assert_eq!(status.code(), Some(1), "{status}");
    assert!(
        capturer
            .log()
            .contains("client version 1.41 is too old. Minimum supported API version is 1.44"),
        "{}",
        capturer.log()
    );
    assert!(engine.stats.refused.load(Relaxed) >= 1);
    drop(capturer);
    // Pinned within it: that version, and every line.
    let refused = engine.stats.refused.load(Relaxed);
    let mut capturer = Capturer::start(
        &dir.0,
        &config,
        &["--once"],
        &[("DOCKER_API_VERSION", "1.45")],
    );
    let status = capturer.wait_exit(BOUND);
    assert!(status.success(), "exit {status}; log:\n{}", capturer.log());
    assert!(capturer
        .log()
        .contains("docker API version 1.45, pinned by DOCKER_API_VERSION"));
    assert_exactly_once(&dir.0.join("out"));
    assert_eq!(engine.stats.refused.load(Relaxed), refused);
}

#[test]
fn once_fails_fast_when_docker_is_unreachable() {
    let dir = Dir::new("once-down");
    let socket = dir.0.join("nobody.sock");
    let config = write_config(&dir.0, &socket, 0);
    let t0 = Instant::now();
    let mut capturer = Capturer::start(&dir.0, &config, &["--once"], &[]);
    let status = capturer.wait_exit(BOUND);
    assert_eq!(status.code(), Some(1), "{status}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(
        capturer.log().contains(&socket.display().to_string()),
        "the error does not name the socket:\n{}",
        capturer.log()
    );
}

#[test]
fn daemon_started_before_docker_stays_degraded_then_captures_everything() {
    let dir = Dir::new("late-engine");
    let socket = dir.0.join("docker.sock");
    let port = free_port();
    let config = write_config(&dir.0, &socket, port);
    let mut capturer = Capturer::start(&dir.0, &config, &[], &[]);

    let mut health = Value::Null;
    wait_until("/health to answer 503", &mut capturer, || {
        match get_json(port, "/health") {
            Some((503, body)) => {
                health = body;
                true
            }
            _ => false,
        }
    });
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["checks"]["docker"]["reachable"], false, "{health}");
    let reason = health["checks"]["docker"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains(&socket.display().to_string()),
        "the reason does not name the socket: {health}"
    );
    let (_, metrics) = get(port, "/metrics").expect("/metrics");
    assert!(metrics.lines().any(|l| l == "docker_up 0"), "{metrics}");
    let version_errors = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("docker_api_errors_total{endpoint=\"version\"} "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    // Retried with backoff, not once and given up.
    wait_until("a second failed attempt", &mut capturer, || {
        get(port, "/metrics").is_some_and(|(_, m)| version_errors(&m) >= 2)
    });
    capturer.assert_running();

    let engine = Engine::start(&socket, ENGINE_29);
    let out = dir.0.join("out");
    wait_until("every line once the engine is up", &mut capturer, || {
        every_line(&out)
    });
    wait_until("/health to answer 200", &mut capturer, || {
        get(port, "/health").is_some_and(|(status, _)| status == 200)
    });
    let (_, metrics) = get(port, "/metrics").expect("/metrics");
    assert!(metrics.lines().any(|l| l == "docker_up 1"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l == "docker_api_version_info{version=\"1.52\"} 1"),
        "{metrics}"
    );
    let status = capturer.terminate();
    assert!(status.success(), "exit {status}");
    assert_exactly_once(&out);
    assert_eq!(engine.stats.refused.load(Relaxed), 0);
}

#[test]
fn real_dockerd_is_spoken_to_in_its_own_version() {
    let client = Client::new(&support::socket());
    let version = client.negotiate().expect("negotiate with dockerd");
    let engine = client.status().engine_versions().expect("engine versions");
    // dockerd 20.10 here: 1.41, minimum 1.12; a newer engine: up to what this program speaks.
    assert_eq!(version, engine.max.min(ApiVersion::HIGHEST));
    assert!(engine.min.is_some_and(|m| m <= version), "{engine:?}");
    client
        .list_containers(true)
        .expect("list at the negotiated version");
    assert_eq!(client.status().api_version(), Some(version));
}

#[test]
fn daemon_negotiates_again_when_the_engine_comes_back_upgraded() {
    let dir = Dir::new("upgraded");
    let socket = dir.0.join("docker.sock");
    let old = Engine::start(&socket, ENGINE_20_10);
    let port = free_port();
    let config = write_config(&dir.0, &socket, port);
    let mut capturer = Capturer::start(&dir.0, &config, &[], &[]);
    let out = dir.0.join("out");
    wait_until("every line from the 1.41 engine", &mut capturer, || {
        every_line(&out)
    });
    let version =
        |port| get_json(port, "/health").map(|(_, h)| h["checks"]["docker"]["api_version"].clone());
    assert_eq!(version(port), Some(Value::from("1.41")));
    drop(old);
    // The upgraded engine has one container more: a new one, read from its first line by a
    // stream opened at the version negotiated again.
    let new = Engine::with_containers(&socket, ENGINE_29, CONTAINERS + 1);
    wait_until("the version negotiated again", &mut capturer, || {
        version(port) == Some(Value::from("1.52"))
    });
    let newcomer = "bench-0003";
    wait_until("every line of the new container", &mut capturer, || {
        captured(&out)
            .get(newcomer)
            .is_some_and(|s| s.len() >= LINES)
    });
    assert_eq!(captured(&out)[newcomer], (0..LINES).collect::<Vec<_>>());
    let status = capturer.terminate();
    assert!(status.success(), "exit {status}");
    drop(new);
}

#[test]
fn client_refused_for_its_version_negotiates_again_and_retries_once() {
    let dir = Dir::new("refused");
    let socket = dir.0.join("docker.sock");
    let old = Engine::start(&socket, ENGINE_20_10);
    let client = Client::new(&socket);
    assert_eq!(client.negotiate().unwrap(), ApiVersion::new(1, 41));
    drop(old);
    // Upgraded between two calls: the next call, still at 1.41, is refused once, then
    // succeeds at 1.52.
    let new = Engine::start(&socket, ENGINE_29);
    let list = client
        .list_containers(true)
        .expect("list after the upgrade");
    assert_eq!(list.len(), CONTAINERS);
    assert_eq!(new.stats.refused.load(Relaxed), 1);
    assert_eq!(client.status().api_version(), Some(ApiVersion::new(1, 52)));
    assert_eq!(client.status().errors().get("containers_list"), None);
}

#[test]
fn once_and_daemon_speak_the_real_dockerds_version() {
    let socket = support::socket();
    let dir = Dir::new("dockerd");
    let name = format!("lcapi{}-real", std::process::id());
    let _guard = Containers(vec![name.clone()]);
    support::docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        support::IMAGE,
        "sh",
        "-c",
        "i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo \"line $i\"; done",
    ]);
    let engine = Client::new(&socket)
        .negotiate()
        .expect("negotiate with dockerd");
    let port = free_port();
    let config = write_config_for(&dir.0, &socket, port, &name);
    let out = dir.0.join("out");
    let lines = |out: &Path| -> Vec<String> {
        let text = fs::read_to_string(out.join(format!("{name}.log"))).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let want: Vec<String> = (1..=300).map(|i| format!("line {i}")).collect();

    // The container may still be writing: --once reads what is there, the daemon the rest.
    let mut once = Capturer::start(&dir.0, &config, &["--once"], &[]);
    let status = once.wait_exit(BOUND);
    assert!(status.success(), "exit {status}; log:\n{}", once.log());
    assert!(
        once.log()
            .contains(&format!("docker API version {engine} ")),
        "{}",
        once.log()
    );
    let got = lines(&out);
    assert_eq!(got[..], want[..got.len()], "--once read other lines");
    drop(once);

    let mut daemon = Capturer::start(&dir.0, &config, &[], &[]);
    wait_until("every line of the container", &mut daemon, || {
        lines(&out).len() >= 300
    });
    // --once may have read everything already: wait for the daemon's API too.
    let mut health = Value::Null;
    wait_until("/health", &mut daemon, || {
        get_json(port, "/health").is_some_and(|(_, h)| {
            health = h;
            true
        })
    });
    assert_eq!(
        health["checks"]["docker"]["api_version"],
        engine.to_string().as_str()
    );
    let status = daemon.terminate();
    assert!(status.success(), "exit {status}");
    assert_eq!(lines(&out), want);
}

/// Removes the named containers however the test ends.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        support::remove_containers(&self.0);
    }
}
