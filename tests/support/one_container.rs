//! A small in-test Docker engine with one running container, for what a real dockerd cannot be
//! made to do on demand (a log stream that hangs, a logs endpoint that refuses and then breaks):
//! `/version`, `/_ping`, the container list, its inspect and a silent events stream are
//! answered as dockerd 20.10 answers them; the logs route is the test's own. Also the
//! capturer binary run against it, with its log shown when the test fails.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// The test's answer to `GET /containers/{id}/logs`: the connection, the request target
/// (path and query), the engine's stop flag.
pub type LogsRoute = Arc<dyn Fn(&mut UnixStream, &str, &AtomicBool) + Send + Sync>;

/// The container the engine knows.
pub struct Container {
    pub id: &'static str,
    pub name: &'static str,
    /// `State.StartedAt` of its inspect.
    pub started_at: &'static str,
}

pub struct FakeEngine {
    pub socket: PathBuf,
    stop: Arc<AtomicBool>,
}

impl FakeEngine {
    pub fn start(socket: &Path, container: Container, logs: LogsRoute) -> FakeEngine {
        let listener = UnixListener::bind(socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let container = Arc::new(container);
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (flag, container, logs) =
                            (flag.clone(), container.clone(), logs.clone());
                        thread::spawn(move || serve(conn, &container, &*logs, &flag));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeEngine {
            socket: socket.to_path_buf(),
            stop,
        }
    }
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = fs::remove_file(&self.socket);
    }
}

fn serve(
    mut conn: UnixStream,
    c: &Container,
    logs: &(dyn Fn(&mut UnixStream, &str, &AtomicBool) + Send + Sync),
    stop: &AtomicBool,
) {
    let mut head = String::new();
    {
        let mut reader = BufReader::new(&mut conn);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
    }
    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let path = target.split('?').next().unwrap_or("");
    let id = c.id;
    if path == "/version" || path == "/_ping" {
        answer_json(
            &mut conn,
            "200 OK",
            r#"{"ApiVersion":"1.41","MinAPIVersion":"1.12","Version":"20.10.24"}"#,
        );
    } else if path.ends_with("/containers/json") {
        let list = format!(
            r#"[{{"Id":"{id}","Names":["/{}"],"Image":"img","Labels":{{}},"State":"running"}}]"#,
            c.name
        );
        answer_json(&mut conn, "200 OK", &list);
    } else if path.ends_with(&format!("/containers/{id}/json")) {
        let inspect = format!(
            r#"{{"Id":"{id}","Name":"/{}","Created":"2026-11-30T00:00:00.000000000Z","Config":{{"Tty":false,"Image":"img","Labels":{{}}}},"State":{{"Running":true,"StartedAt":"{}"}},"HostConfig":{{"LogConfig":{{"Type":"json-file","Config":{{}}}}}}}}"#,
            c.name, c.started_at
        );
        answer_json(&mut conn, "200 OK", &inspect);
    } else if path.ends_with("/events") {
        // Nothing happens on this host: the stream stays open and silent.
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        hold(&mut conn, stop);
    } else if path.ends_with(&format!("/containers/{id}/logs")) {
        logs(&mut conn, &target, stop);
    } else {
        let body = r#"{"message":"no such route"}"#;
        answer_json(&mut conn, "404 Not Found", body);
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

pub fn answer_json(conn: &mut UnixStream, status: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nApi-Version: 1.41\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A query parameter of a request target.
pub fn param<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The head of a log stream's answer (multiplexed frames in HTTP chunks).
pub fn stream_head(conn: &mut UnixStream) {
    let _ = conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
}

/// One stdout line as dockerd sends it with timestamps: a frame in one HTTP chunk.
pub fn send_line(conn: &mut UnixStream, line: &str) {
    let mut frame = vec![1u8, 0, 0, 0];
    frame.extend_from_slice(&(line.len() as u32).to_be_bytes());
    frame.extend_from_slice(line.as_bytes());
    let _ = write!(conn, "{:x}\r\n", frame.len());
    let _ = conn.write_all(&frame);
    let _ = conn.write_all(b"\r\n");
}

/// Keeps a stream open and silent until the client closes it or the engine stops: a hung
/// stream, or an events stream on a quiet host.
pub fn hold(conn: &mut UnixStream, stop: &AtomicBool) {
    conn.set_read_timeout(Some(Duration::from_millis(50))).ok();
    while !stop.load(Ordering::Relaxed) {
        let mut byte = [0u8; 1];
        if let Ok(0) = conn.read(&mut byte) {
            return;
        }
    }
}

/// The capturer binary against the engine, writing `{dir}/out/{container name}.log` (JSON
/// lines), positions off; `container_monitor` gets `monitor` (indented YAML lines) beside
/// the socket. Killed when dropped; its log is printed if the test is failing.
pub struct Capturer {
    pub child: Child,
    pub log: PathBuf,
}

impl Capturer {
    pub fn start(dir: &Path, engine: &FakeEngine, log_level: &str, monitor: &str) -> Capturer {
        let config = dir.join("config.yaml");
        fs::write(
            &config,
            format!(
                r#"app:
  log_level: "{log_level}"
  log_format: "text"
server:
  enabled: false
metrics:
  enabled: false
container_monitor:
  enabled: true
  socket_path: "unix://{sock}"
{monitor}
positions:
  enabled: false
sinks:
  local_file:
    enabled: true
    directory: "{dir}/out"
    filename_pattern: "{{nomedocontainer}}.log"
    output_format: "json"
"#,
                sock = engine.socket.display(),
                dir = dir.display()
            ),
        )
        .unwrap();
        let log = dir.join("capturer.log");
        let child = Command::new(env!("CARGO_BIN_EXE_log_capturer"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", format!("log_capturer={log_level}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Capturer { child, log }
    }

    pub fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the capturer exited"
        );
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Capturer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("---- capturer log ----\n{}", self.log_text());
        }
    }
}
