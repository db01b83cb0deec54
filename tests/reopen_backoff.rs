//! Issue 9, section 2: the per-container failure count is reset once dockerd answers a stream,
//! so a stream that breaks after working is reopened after the first backoff step (1 s), not
//! after as many seconds as there were failures before it.
//!
//! A real dockerd cannot be made to refuse a container's log three times and then serve it on
//! demand, so a small in-test daemon does: it answers the version, list and inspect calls, holds
//! the events streams open, refuses the logs request three times (HTTP 500), then answers one
//! with a line and breaks it mid-body. The capturer's log says the delay of every reopen.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_log_capturer");
const ID: &str = "5e1f0c0ffee0d15ea5e5b0a710ad0f0ccac1a0b0c0d0e0f1011121314151617a";

/// The in-test daemon: how many logs requests it has answered, and a stop flag.
struct Daemon {
    socket: PathBuf,
    logs_requests: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
}

impl Daemon {
    fn start(socket: &Path) -> Daemon {
        let listener = UnixListener::bind(socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let logs_requests = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, flag) = (logs_requests.clone(), stop.clone());
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (count, flag) = (count.clone(), flag.clone());
                        thread::spawn(move || serve(conn, &count, &flag));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Daemon {
            socket: socket.to_path_buf(),
            logs_requests,
            stop,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = fs::remove_file(&self.socket);
    }
}

fn answer_json(conn: &mut UnixStream, status: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nApi-Version: 1.41\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn serve(mut conn: UnixStream, logs_requests: &AtomicU32, stop: &AtomicBool) {
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
    if path == "/version" || path == "/_ping" {
        answer_json(
            &mut conn,
            "200 OK",
            r#"{"ApiVersion":"1.41","MinAPIVersion":"1.12","Version":"20.10.24"}"#,
        );
    } else if path.ends_with("/containers/json") {
        let list = format!(
            r#"[{{"Id":"{ID}","Names":["/backoff-web"],"Image":"img","Labels":{{}},"State":"running"}}]"#
        );
        answer_json(&mut conn, "200 OK", &list);
    } else if path.ends_with(&format!("/containers/{ID}/json")) {
        let inspect = format!(
            r#"{{"Id":"{ID}","Name":"/backoff-web","Created":"2026-11-30T00:00:00.000000000Z","Config":{{"Tty":false,"Image":"img","Labels":{{}}}},"State":{{"Running":true,"StartedAt":"2026-11-30T00:00:01.000000000Z"}},"HostConfig":{{"LogConfig":{{"Type":"json-file","Config":{{}}}}}}}}"#
        );
        answer_json(&mut conn, "200 OK", &inspect);
    } else if path.ends_with("/events") {
        // Nothing happens on this host: the stream stays open and silent.
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        while !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(50));
        }
    } else if path.ends_with(&format!("/containers/{ID}/logs")) {
        let n = logs_requests.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= 3 || n >= 5 {
            answer_json(
                &mut conn,
                "500 Internal Server Error",
                r#"{"message":"refused on purpose"}"#,
            );
        } else {
            // Answered, one line, then the connection breaks mid-body.
            let line = b"2026-11-30T00:00:02.000000000Z backoff line\n";
            let mut frame = vec![1u8, 0, 0, 0];
            frame.extend_from_slice(&(line.len() as u32).to_be_bytes());
            frame.extend_from_slice(line);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            let _ = write!(conn, "{:x}\r\n", frame.len());
            let _ = conn.write_all(&frame);
            let _ = conn.write_all(b"\r\n");
            thread::sleep(Duration::from_millis(200));
        }
    } else {
        answer_json(&mut conn, "404 Not Found", r#"{"message":"no such route"}"#);
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
}

struct Capturer {
    child: Child,
    log: PathBuf,
}

impl Drop for Capturer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- capturer log ----\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

#[test]
fn a_stream_that_breaks_after_working_is_reopened_after_the_first_backoff_step() {
    let dir = std::env::temp_dir().join(format!("logcap-backoff-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let daemon = Daemon::start(&dir.join("d.sock"));
    let config = dir.join("config.yaml");
    fs::write(
        &config,
        format!(
            r#"app:
  log_level: "info"
  log_format: "text"
server:
  enabled: false
metrics:
  enabled: false
container_monitor:
  enabled: true
  socket_path: "unix://{sock}"
  stream_rotation_interval: "0s"
  reconnect_interval: "60s"
positions:
  enabled: false
sinks:
  local_file:
    enabled: true
    directory: "{dir}/out"
    filename_pattern: "{{nomedocontainer}}.log"
    output_format: "json"
"#,
            sock = daemon.socket.display(),
            dir = dir.display()
        ),
    )
    .unwrap();
    let log = dir.join("capturer.log");
    let mut capturer = Capturer {
        child: Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log: log.clone(),
    };
    let delays = || -> Vec<String> {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split("log stream failed, reopening in ").nth(1))
            .map(|rest| rest.split(':').next().unwrap_or("").to_string())
            .collect()
    };
    // Three refusals back off 1, 2, 3 s; the fourth stream is answered, then breaks.
    let deadline = Instant::now() + Duration::from_secs(30);
    while delays().len() < 4 {
        assert!(
            capturer.child.try_wait().unwrap().is_none(),
            "the capturer exited"
        );
        assert!(
            Instant::now() < deadline,
            "4 reopen delays not logged within 30 s: {:?}",
            delays()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.logs_requests.load(Ordering::Relaxed) >= 4);
    assert_eq!(delays()[..4], ["1s", "2s", "3s", "1s"]);
    // The line the fourth stream carried was delivered.
    let out = dir.join("out").join("backoff-web.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("backoff line")
    {
        assert!(
            Instant::now() < deadline,
            "the answered line was not delivered"
        );
        thread::sleep(Duration::from_millis(100));
    }
    drop(capturer);
    drop(daemon);
    let _ = fs::remove_dir_all(&dir);
}
