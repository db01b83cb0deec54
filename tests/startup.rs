//! The binary as an operator starts it: command-line forms (Go's `-config`, the
//! `ssw-logs-capture` name), start-up messages that say what to do, exit codes, the log's
//! format and level, running without Docker, and the `containers_monitored` series of a removed
//! container (the one test here that needs the real dockerd, via LOGCAP_DOCKER_SOCK).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

#[path = "support/scratch.rs"]
mod scratch;
mod support;
use scratch::Scratch;
use support::{docker, remove_containers, socket, IMAGE};

const BIN: &str = env!("CARGO_BIN_EXE_log_capturer");
const GO_NAME_BIN: &str = env!("CARGO_BIN_EXE_ssw-logs-capture");
/// Bound on a run that loads its config and stops (or fails) at once.
const QUICK: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// What a finished run gave.
struct Run {
    status: ExitStatus,
    stderr: String,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// The command, with a clean environment for what the program reads (the test runner's own
/// DOCKER_HOST, SSW_* or RUST_LOG must not leak in).
fn command(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SSW_") || k == "DOCKER_HOST" || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// Runs to the end (at most `QUICK`), stderr collected.
fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut child = command(bin, args, env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the capturer");
    let mut pipe = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let status = wait(&mut child, QUICK);
    Run {
        status,
        stderr: reader.join().unwrap(),
    }
}

fn wait(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the capturer did not exit within {within:?}");
        }
        thread::sleep(POLL);
    }
}

fn sigterm(child: &Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .unwrap_or_else(|e| panic!("kill -TERM {pid:?}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Command line (issue 10, section 5)

#[test]
fn go_single_dash_config_and_the_go_binary_name_are_accepted() {
    let s = Scratch::new("startup", "cli-forms");
    let cfg = s.config("", "");
    let path = cfg.to_str().unwrap();
    let with_eq = format!("-config={path}");
    let forms: [(&str, Vec<&str>); 5] = [
        (BIN, vec!["--config", path, "--once"]),
        (BIN, vec!["-config", path, "-once"]),
        (BIN, vec![&with_eq, "--once"]),
        (GO_NAME_BIN, vec!["-config", path, "--once"]),
        (GO_NAME_BIN, vec!["--config", path, "--once"]),
    ];
    for (bin, args) in forms {
        let r = run(bin, &args, &[]);
        assert_eq!(r.code(), Some(0), "{bin} {args:?}:\n{}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("configuration loaded from {path}")),
            "{bin} {args:?} did not read {path}:\n{}",
            r.stderr
        );
    }
    // Only our own options take the single dash; anything else is still refused.
    let r = run(BIN, &["-bogus", path], &[]);
    assert_eq!(r.code(), Some(2), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------------------
// Start-up messages (issue 10, section 4)

#[test]
fn a_missing_config_file_names_the_flag_and_the_variable() {
    let s = Scratch::new("startup", "no-config");
    let missing = s.0.join("absent.yaml");
    let r = run(BIN, &["--config", missing.to_str().unwrap()], &[]);
    assert_eq!(r.code(), Some(2), "{}", r.stderr);
    for needle in [missing.to_str().unwrap(), "--config", "SSW_CONFIG_FILE"] {
        assert!(r.stderr.contains(needle), "no {needle:?} in:\n{}", r.stderr);
    }
}

#[test]
fn docker_host_over_tcp_exits_2_naming_the_variable() {
    let s = Scratch::new("startup", "tcp-host");
    let cfg = s.config("", "");
    let yaml = fs::read_to_string(&cfg)
        .unwrap()
        .replace("container_monitor:\n  enabled: false\n", "");
    fs::write(&cfg, yaml).unwrap();
    let r = run(
        BIN,
        &["--config", cfg.to_str().unwrap()],
        &[("DOCKER_HOST", "tcp://127.0.0.1:2375")],
    );
    assert_eq!(r.code(), Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("DOCKER_HOST") && r.stderr.contains("tcp://127.0.0.1:2375"),
        "{}",
        r.stderr
    );
    let r = run(
        BIN,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--docker-socket",
            "tcp://x:1",
        ],
        &[],
    );
    assert_eq!(r.code(), Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--docker-socket"), "{}", r.stderr);
}

#[test]
fn a_missing_docker_socket_names_every_way_to_set_it() {
    let s = Scratch::new("startup", "no-socket");
    let cfg = s.config("", "");
    let yaml = fs::read_to_string(&cfg)
        .unwrap()
        .replace("container_monitor:\n  enabled: false\n", "");
    fs::write(&cfg, yaml).unwrap();
    let absent = s.0.join("docker.sock");
    let absent = absent.to_str().unwrap();
    let mut child = command(
        BIN,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--once",
            "--docker-socket",
            absent,
        ],
        &[],
    )
    .stdout(Stdio::null())
    .stderr(fs::File::create(s.0.join("stderr")).unwrap())
    .spawn()
    .unwrap();
    // Whether the program gives up or keeps retrying, the message must be in its log.
    let deadline = Instant::now() + QUICK;
    let wanted = [
        "--docker-socket",
        "DOCKER_HOST",
        "container_monitor.socket_path",
        absent,
    ];
    let text = loop {
        let text = fs::read_to_string(s.0.join("stderr")).unwrap_or_default();
        if wanted.iter().all(|w| text.contains(w)) {
            break text;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = fs::read_to_string(s.0.join("stderr")).unwrap_or_default();
            panic!("the log does not name {wanted:?}:\n{text}");
        }
        thread::sleep(POLL);
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains(absent));
}

#[test]
fn a_misspelt_key_is_a_warning_naming_the_closest_key() {
    let s = Scratch::new("startup", "typo");
    let cfg = s.config("", "dispatcher:\n  queue_sise: 100\n  batch_timout: 1s\n");
    let r = run(BIN, &["--config", cfg.to_str().unwrap(), "--once"], &[]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr);
    let warnings: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") && l.contains("did you mean"))
        .collect();
    assert_eq!(warnings.len(), 2, "{}", r.stderr);
    assert!(warnings
        .iter()
        .any(|l| l.contains("dispatcher.queue_sise") && l.contains("dispatcher.queue_size")));
    assert!(warnings
        .iter()
        .any(|l| l.contains("dispatcher.batch_timout") && l.contains("dispatcher.batch_timeout?")));
}

#[test]
fn an_enabled_sink_that_does_not_exist_here_stops_the_start() {
    let s = Scratch::new("startup", "kafka");
    let dir = s.0.display().to_string();
    let cfg = s.config(
        "",
        &format!(
            "sinks:\n  local_file:\n    enabled: true\n    directory: {dir}/out\n  loki:\n    \
             enabled: false\n  kafka:\n    enabled: true\n    brokers: [\"k:9092\"]\n"
        ),
    );
    let r = run(BIN, &["--config", cfg.to_str().unwrap(), "--once"], &[]);
    assert_eq!(r.code(), Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("sinks.kafka.enabled"), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------------------
// The log (issue 10, section 3)

/// The lines of the capturer's own log (`--once`, no Docker: a handful of info lines).
fn log_of(s: &Scratch, log_level: &str, log_format: &str, env: &[(&str, &str)]) -> Vec<String> {
    let cfg = s.config(
        &format!("  log_level: {log_level}\n  log_format: {log_format}\n"),
        "",
    );
    let r = run(BIN, &["--config", cfg.to_str().unwrap(), "--once"], env);
    assert_eq!(r.code(), Some(0), "{}", r.stderr);
    r.stderr.lines().map(str::to_string).collect()
}

#[test]
fn log_format_json_or_text_and_rust_log_over_log_level() {
    let s = Scratch::new("startup", "log-format");
    let json = log_of(&s, "info", "json", &[]);
    assert!(!json.is_empty());
    for line in &json {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(json.iter().any(|l| l.contains("\"level\":\"INFO\"")));

    let text = log_of(&s, "info", "text", &[]);
    assert!(!text.is_empty());
    assert!(text
        .iter()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_err()));
    assert!(text.iter().any(|l| l.contains(" INFO ")), "{text:?}");

    // SSW_LOG_FORMAT wins over the file.
    let env_text = log_of(&s, "info", "json", &[("SSW_LOG_FORMAT", "text")]);
    assert!(
        env_text.iter().any(|l| l.contains(" INFO ")),
        "{env_text:?}"
    );
    assert!(env_text.iter().all(|l| !l.starts_with('{')), "{env_text:?}");

    // RUST_LOG wins over app.log_level, both ways.
    let quiet = log_of(&s, "debug", "text", &[("RUST_LOG", "warn")]);
    assert!(
        quiet
            .iter()
            .all(|l| !l.contains(" INFO ") && !l.contains(" DEBUG ")),
        "{quiet:?}"
    );
    let loud = log_of(&s, "error", "text", &[("RUST_LOG", "info")]);
    assert!(loud.iter().any(|l| l.contains(" INFO ")), "{loud:?}");
    let level_only = log_of(&s, "error", "text", &[]);
    assert!(level_only.is_empty(), "{level_only:?}");
}

// ---------------------------------------------------------------------------------------------
// Running without Docker (issue 10, section 4)

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request; the status code and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

fn files_containing(dir: &Path, needle: &str) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| fs::read_to_string(e.ok()?.path()).ok())
        .map(|text| text.matches(needle).count())
        .sum()
}

#[test]
fn container_monitor_disabled_runs_the_api_and_sinks_without_docker() {
    let s = Scratch::new("startup", "no-docker");
    let port = free_port();
    let cfg = s.config("  log_format: text\n", "");
    let yaml = fs::read_to_string(&cfg).unwrap().replace(
        "server:\n  enabled: false\n",
        &format!("server:\n  enabled: true\n  host: 127.0.0.1\n  port: {port}\n"),
    );
    // The file enables the monitor; the variable turns it off. The socket does not exist.
    let yaml = yaml.replace(
        "container_monitor:\n  enabled: false\n",
        &format!(
            "container_monitor:\n  enabled: true\n  socket_path: unix://{}/absent.sock\n",
            s.0.display()
        ),
    );
    fs::write(&cfg, yaml).unwrap();
    let stderr_path = s.0.join("stderr");
    let mut child = command(
        BIN,
        &["--config", cfg.to_str().unwrap()],
        &[("SSW_CONTAINER_MONITOR_ENABLED", "false")],
    )
    .stdout(Stdio::null())
    .stderr(fs::File::create(&stderr_path).unwrap())
    .spawn()
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let message = format!("ingested-without-docker-{}", std::process::id());
    let body = format!(r#"{{"message":"{message}","source_type":"api","source_id":"t1"}}"#);
    let deadline = Instant::now() + QUICK;
    loop {
        if let Ok((status, answer)) = http(addr, "POST", "/api/v1/logs", &body) {
            assert_eq!(status, 202, "{answer}");
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "exited ({status}) instead of serving:\n{}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the API never answered on {addr}"
        );
        thread::sleep(POLL);
    }
    // Delivered to the local_file sink.
    let out = s.0.join("out");
    while files_containing(&out, &message) == 0 {
        assert!(
            Instant::now() < deadline,
            "the line never reached {}",
            out.display()
        );
        thread::sleep(POLL);
    }
    sigterm(&child);
    let status = wait(&mut child, QUICK);
    let log = fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(files_containing(&out, &message), 1);
    assert!(log.contains("Docker is not contacted"), "{log}");
    assert!(!log.contains("absent.sock"), "it tried the socket:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// containers_monitored follows removals (issue 10, section 4; real dockerd)

fn metrics(addr: SocketAddr) -> String {
    http(addr, "GET", "/metrics", "")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

#[test]
fn containers_monitored_drops_the_series_of_a_removed_container() {
    let sock = socket();
    let s = Scratch::new("startup", "monitored");
    let name = format!("lcstartup{}-gone", std::process::id());
    remove_containers(&[name.as_str()]);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            remove_containers(&[self.0.as_str()]);
        }
    }
    let _cleanup = Cleanup(name.clone());
    let port = free_port();
    let cfg = s.config("", "");
    let yaml = fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "server:\n  enabled: false\n",
            &format!("server:\n  enabled: true\n  host: 127.0.0.1\n  port: {port}\n"),
        )
        .replace(
            "container_monitor:\n  enabled: false\n",
            &format!(
                "container_monitor:\n  enabled: true\n  socket_path: unix://{}\n  \
                 include_names: [\"{name}\"]\n  reconnect_interval: 2s\n",
                sock.display()
            ),
        );
    fs::write(&cfg, yaml).unwrap();
    let stderr_path = s.0.join("stderr");
    struct Kill(Option<Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut guard = Kill(Some(
        command(BIN, &["--config", cfg.to_str().unwrap()], &[])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    ));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // A running container removed by force, then one that exited by itself (its series
    // at 0) before it was removed.
    for (script, live_value) in [("echo one; sleep 600", " 1"), ("echo one", " 0")] {
        let id = docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            &name,
            IMAGE,
            "sh",
            "-c",
            script,
        ]);
        let short = id[..12].to_string();
        let series = |body: &str| {
            body.lines()
                .filter(|l| l.starts_with("containers_monitored{") && l.contains(&short))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        loop {
            let got = series(&metrics(addr));
            if got.len() == 1 && got[0].ends_with(live_value) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{script}: no containers_monitored series at{live_value} for {short}: {got:?}\n{}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            );
            thread::sleep(POLL);
        }
        docker(&["rm", "-f", &name]);
        loop {
            let body = metrics(addr);
            if !body.is_empty() && series(&body).is_empty() {
                assert!(body.contains("total_containers_monitored 0"), "{body}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{script}: the series of removed {short} stayed: {:?}",
                series(&body)
            );
            thread::sleep(POLL);
        }
    }
    let child = guard.0.as_mut().unwrap();
    sigterm(child);
    let status = wait(child, QUICK);
    guard.0 = None;
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        fs::read_to_string(&stderr_path).unwrap_or_default()
    );
}
