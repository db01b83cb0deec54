//! The daemon binary in a temporary directory, for the test files that need no more than one
//! capturer at a time, busybox containers and the file sink: `docker_rotation.rs`,
//! `docker_positions.rs` (include it with `#[path = "support/capturer.rs"] mod capturer;`
//! beside `mod support;`). Containers and processes are removed however a test ends; on
//! failure the capturer's log is printed and the directory kept.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::{docker, docker_command, remove_containers, socket, IMAGE};

pub const BIN: &str = env!("CARGO_BIN_EXE_log_capturer");
pub const POLL: Duration = Duration::from_millis(200);

pub struct Env {
    pub dir: PathBuf,
    /// Every container of the test has a name starting with this; `include_names` is this.
    pub prefix: String,
    containers: Vec<String>,
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Env {
    pub fn new(test: &str) -> Env {
        socket();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let prefix = format!("lcr{}{:x}-{test}-", std::process::id(), nanos % 0xfff);
        let dir = std::env::temp_dir()
            .join("logcap-capturer-tests")
            .join(prefix.trim_end_matches('-'));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Env {
            dir,
            prefix,
            containers: Vec::new(),
            children: Vec::new(),
            logs: Vec::new(),
        }
    }

    pub fn out_dir(&self) -> PathBuf {
        self.dir.join("out")
    }

    /// Writes a config: the file sink into `out/`, the HTTP API on a free port, and
    /// `positions` as given (the YAML lines under `positions:`, indented by two spaces).
    pub fn config(&self, name: &str, positions: &str) -> PathBuf {
        let yaml = format!(
            r#"app:
  log_level: "info"
  log_format: "text"
server:
  enabled: true
  host: "127.0.0.1"
  port: {port}
metrics:
  enabled: false
container_monitor:
  enabled: true
  socket_path: "unix://{sock}"
  include_names: ["{prefix}"]
  stream_rotation_interval: "30s"
file_monitor_service:
  enabled: false
dispatcher:
  queue_size: 50000
  batch_size: 1000
  batch_timeout: "200ms"
positions:
{positions}
sinks:
  local_file:
    enabled: true
    directory: "{out}"
    filename_pattern: "{{nomedocontainer}}.log"
    output_format: "json"
  loki:
    enabled: false
"#,
            sock = socket().display(),
            prefix = self.prefix,
            out = self.out_dir().display(),
            port = free_port(),
        );
        let path = self.dir.join(name);
        fs::write(&path, yaml).unwrap();
        path
    }

    /// Starts `log_capturer --config CONFIG ARGS...` (no `SSW_*`, `DOCKER_HOST`, `RUST_LOG`
    /// from the test's environment); returns its index for the other calls.
    pub fn spawn(&mut self, config: &PathBuf, args: &[&str]) -> usize {
        let log = self
            .dir
            .join(format!("capturer-{}.log", self.logs.len() + 1));
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(config).args(args);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("SSW_") || k == "DOCKER_HOST" || k == "RUST_LOG" {
                cmd.env_remove(&key);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the capturer");
        self.children.push(child);
        self.logs.push(log);
        self.children.len() - 1
    }

    /// The capturer's log so far.
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(&self.logs[i]).unwrap_or_default()
    }

    /// The address the capturer's HTTP API listens on, once it does.
    pub fn api_addr(&self, i: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.log(i);
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.split("HTTP API listening on ").nth(1))
            {
                return addr.trim().to_string();
            }
            assert!(Instant::now() < deadline, "no API address in:\n{text}");
            thread::sleep(POLL);
        }
    }

    /// Waits for process `i` (a capturer, or `docker logs`) to exit; panics unless it
    /// exits with 0 within `within`.
    pub fn wait_success(&mut self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.children[i].try_wait().unwrap() {
                assert!(status.success(), "process {i} exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "process {i} did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM to capturer `i`, which must exit 0.
    pub fn terminate(&mut self, i: usize) {
        let pid = rustix::process::Pid::from_raw(self.children[i].id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        self.wait_success(i, Duration::from_secs(20));
    }

    /// `docker create` a busybox `sh -c script` named `prefix + suffix`, with extra
    /// `docker create` options; returns its name.
    pub fn create(&mut self, suffix: &str, options: &[&str], script: &str) -> String {
        let name = format!("{}{suffix}", self.prefix);
        let mut args = vec!["create", "--name", &name, "--network", "none"];
        args.extend(options);
        args.extend([IMAGE, "sh", "-c", script]);
        docker(&args);
        self.containers.push(name.clone());
        name
    }

    /// `docker logs -f -t NAME` into `file`, a process of this test until the container
    /// stops; returns its index and the file.
    pub fn follow_with_docker_logs(&mut self, name: &str) -> (usize, PathBuf) {
        let path = self.dir.join(format!("docker-logs-{name}.txt"));
        let child = docker_command()
            .args(["logs", "-f", "-t", name])
            .stdout(fs::File::create(&path).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker logs -f");
        self.children.push(child);
        (self.children.len() - 1, path)
    }

    pub fn wait_exited(&self, name: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while docker(&["inspect", "-f", "{{.State.Status}}", name]) != "exited" {
            assert!(Instant::now() < deadline, "{name} still running");
            thread::sleep(POLL);
        }
    }

    /// The messages the file sink wrote for a container, in order.
    pub fn captured(&self, name: &str) -> Vec<String> {
        let text =
            fs::read_to_string(self.out_dir().join(format!("{name}.log"))).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| v["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        remove_containers(&self.containers);
        if thread::panicking() {
            for log in &self.logs {
                let text = fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "---- last lines of {} ----\n{}",
                    log.display(),
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
            eprintln!("---- test files kept in {} ----", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// GET `path` from the API, its JSON body.
pub fn get_json(addr: &str, path: &str) -> Value {
    let mut s = TcpStream::connect(addr).expect("connect to the API");
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split("\r\n\r\n").nth(1).expect("an HTTP body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// A TCP port free right now on 127.0.0.1 (`server.port: 0` means the default, 8401).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
