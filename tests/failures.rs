//! A thread that panics, and a shutdown that does not finish (issue 12): `/health` turns 503
//! naming the failed component before the process exits 70 (`EX_SOFTWARE`), and a shutdown
//! past its deadline exits 70 naming what did not finish. The panics are real ones, made by
//! the daemon's test hook (`LOGCAP_TEST_PANIC=COMPONENT`, see `src/failure.rs`); so is the io
//! engine failure (`LOGCAP_TEST_PANIC=engine`: the capture thread's poll returns an error). The
//! discovery test needs the real dockerd (`LOGCAP_DOCKER_SOCK`); the others run without
//! Docker.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

#[path = "support/scratch.rs"]
mod scratch;
mod support;
use scratch::Scratch;

const BIN: &str = env!("CARGO_BIN_EXE_log_capturer");
const POLL: Duration = Duration::from_millis(20);
/// The exit code of a failed process.
const EXIT_SOFTWARE: i32 = 70;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config with the HTTP API on `port`, a local_file sink, and Docker (the test's dockerd)
/// only when `docker` is set.
fn config(s: &Scratch, port: u16, docker: bool) -> std::path::PathBuf {
    let dir = s.0.display();
    let monitor = if docker {
        format!(
            "container_monitor:\n  enabled: true\n  socket_path: \"unix://{}\"\n  \
             include_names: [\"no-container-matches-this-{}\"]\n",
            support::socket().display(),
            std::process::id()
        )
    } else {
        "container_monitor:\n  enabled: false\n".to_string()
    };
    let yaml = format!(
        "app:\n  log_level: info\n  log_format: text\n\
         server:\n  enabled: true\n  host: 127.0.0.1\n  port: {port}\n\
         metrics:\n  enabled: false\n{monitor}\
         positions:\n  directory: {dir}/positions\n\
         sinks:\n  loki:\n    enabled: false\n  local_file:\n    enabled: true\n    directory: {dir}/out\n"
    );
    let path = s.0.join("config.yaml");
    fs::write(&path, yaml).unwrap();
    path
}

fn spawn(s: &Scratch, config: &std::path::Path, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config);
    for (k, _) in std::env::vars() {
        if k.starts_with("SSW_")
            || k == "DOCKER_HOST"
            || k == "RUST_LOG"
            || k.starts_with("LOGCAP_TEST_")
        {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(s.0.join("capturer.log")).unwrap())
        .spawn()
        .expect("spawn the capturer")
}

fn log(s: &Scratch) -> String {
    fs::read_to_string(s.0.join("capturer.log")).unwrap_or_default()
}

/// GET `path`: status and body, or `None` when nothing answers.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_string()))
}

/// What the test saw of the process until it exited.
struct Seen {
    /// A 200 from `/health` before the failure.
    healthy_first: bool,
    /// The first 503 body of `/health`, if any came before the exit.
    failed_health: Option<serde_json::Value>,
    /// From the first 503 to the exit.
    failed_for: Duration,
    status: ExitStatus,
}

/// Polls `/health` until the process exits (at most `within`).
fn watch(child: &mut Child, addr: SocketAddr, within: Duration) -> Seen {
    let deadline = Instant::now() + within;
    let mut seen = Seen {
        healthy_first: false,
        failed_health: None,
        failed_for: Duration::ZERO,
        status: ExitStatus::default(),
    };
    let mut failed_at = None;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            seen.status = status;
            seen.failed_for = failed_at.map_or(Duration::ZERO, |t: Instant| t.elapsed());
            return seen;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the capturer did not exit within {within:?}");
        }
        if seen.failed_health.is_none() {
            match get(addr, "/health") {
                Some((200, _)) => seen.healthy_first = true,
                Some((503, body)) => {
                    failed_at = Some(Instant::now());
                    seen.failed_health = serde_json::from_str(&body).ok();
                }
                _ => {}
            }
        }
        thread::sleep(POLL);
    }
}

/// `LOGCAP_TEST_PANIC=component` 1.5 s after start: health 200, then 503 naming the
/// component, then exit 70; the log names it too.
fn panicking_thread_fails_the_process(component: &str, docker: bool) {
    let s = Scratch::new("failures", component);
    let port = free_port();
    let config = config(&s, port, docker);
    watch_panic(&s, port, &config, component);
}

/// Runs the capturer on `config` with the panic hook set for `component` and checks what
/// [`panicking_thread_fails_the_process`] says.
fn watch_panic(s: &Scratch, port: u16, config: &std::path::Path, component: &str) {
    let mut child = spawn(
        s,
        config,
        &[
            ("LOGCAP_TEST_PANIC", component),
            ("LOGCAP_TEST_PANIC_AFTER_MS", "1500"),
        ],
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let seen = watch(&mut child, addr, Duration::from_secs(40));
    let text = log(s);
    assert!(
        seen.healthy_first,
        "never healthy before the panic:\n{text}"
    );
    let health = seen
        .failed_health
        .unwrap_or_else(|| panic!("/health never answered 503 before the exit:\n{text}"));
    let check = &health["checks"]["components"];
    assert_eq!(check["status"], "failed", "{health}");
    let reason = check["failed"][component].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("LOGCAP_TEST_PANIC={component}")),
        "checks.components names {component}: {health}"
    );
    assert_eq!(
        seen.status.code(),
        Some(EXIT_SOFTWARE),
        "exit status {:?}:\n{text}",
        seen.status
    );
    assert!(
        text.contains(&format!("exiting {EXIT_SOFTWARE}: {component} failed")),
        "{text}"
    );
    println!(
        "{component}: /health 503 first seen {:?} before the exit (status {:?})",
        seen.failed_for,
        seen.status.code()
    );
}

#[test]
fn a_capture_thread_panic_turns_health_503_and_exits_70() {
    panicking_thread_fails_the_process("capture", false);
}

#[test]
fn a_dispatcher_panic_turns_health_503_and_exits_70() {
    panicking_thread_fails_the_process("dispatcher", false);
}

#[test]
fn a_discovery_thread_panic_turns_health_503_and_exits_70() {
    panicking_thread_fails_the_process("discovery", true);
}

#[test]
fn a_failed_io_engine_turns_health_503_and_exits_70() {
    // The hook makes the capture thread's poll return an error, as a broken ring would: the
    // component named is the capture thread, the reason the engine's.
    let s = Scratch::new("failures", "engine");
    let port = free_port();
    let config = config(&s, port, false);
    let mut child = spawn(
        &s,
        &config,
        &[
            ("LOGCAP_TEST_PANIC", "engine"),
            ("LOGCAP_TEST_PANIC_AFTER_MS", "1500"),
        ],
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let seen = watch(&mut child, addr, Duration::from_secs(40));
    let text = log(&s);
    assert!(
        seen.healthy_first,
        "never healthy before the failure:\n{text}"
    );
    let health = seen
        .failed_health
        .unwrap_or_else(|| panic!("/health never answered 503 before the exit:\n{text}"));
    let reason = health["checks"]["components"]["failed"]["capture"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.starts_with("io engine failed"), "{health}");
    assert_eq!(seen.status.code(), Some(EXIT_SOFTWARE), "{text}");
    println!(
        "engine: /health 503 first seen {:?} before the exit",
        seen.failed_for
    );
}

#[test]
fn a_shutdown_past_its_deadline_exits_70_naming_what_did_not_finish() {
    let s = Scratch::new("failures", "hang");
    let port = free_port();
    let config = config(&s, port, false);
    let mut child = spawn(&s, &config, &[("LOGCAP_TEST_HANG", "capture")]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = Instant::now() + Duration::from_secs(20);
    while get(addr, "/health").is_none() {
        assert!(Instant::now() < up, "never answered:\n{}", log(&s));
        thread::sleep(POLL);
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let signalled = Instant::now();
    // The deadline: the dispatcher's 10 s plus 20 s of margin (no Loki).
    let seen = watch(&mut child, addr, Duration::from_secs(60));
    let took = signalled.elapsed();
    let text = log(&s);
    assert_eq!(seen.status.code(), Some(EXIT_SOFTWARE), "{text}");
    assert!(
        text.contains("shutdown not finished") && text.contains("still running: capture"),
        "{text}"
    );
    assert!(
        took >= Duration::from_secs(29),
        "exited {took:?} after the signal"
    );
}

// --- The files thread (file_monitor_service) ---

/// The files thread panics (`LOGCAP_TEST_PANIC=files`) while it tails a file: health 503
/// naming `files`, exit 70, like the other threads.
#[test]
fn a_files_thread_panic_turns_health_503_and_exits_70() {
    let s = Scratch::new("failures", "files");
    let port = free_port();
    let path = config(&s, port, false);
    let logs = s.0.join("logs");
    fs::create_dir_all(&logs).unwrap();
    fs::write(logs.join("app.log"), "one\ntwo\n").unwrap();
    let mut yaml = fs::read_to_string(&path).unwrap();
    yaml.push_str(&format!(
        "files_config:\n  watch_directories: [\"{}\"]\n  include_patterns: [\"*.log\"]\n\
         file_monitor_service:\n  enabled: true\n  read_interval: 100ms\n",
        logs.display()
    ));
    fs::write(&path, yaml).unwrap();
    watch_panic(&s, port, &path, "files");
}
