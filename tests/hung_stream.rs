//! Issue 11, section 2: a stream that stops delivering while dockerd's log grows (moby#23913,
//! #37646) is found by the `tail=1` probe and reopened from its resume point with a tail
//! window; a silent stream whose probe shows nothing new is left alone.
//!
//! A real dockerd cannot be made to hang a follow stream on demand, so a small in-test daemon
//! does: its log is three lines (O, then A ten seconds later, then B); the first follow stream
//! sends O and A, then nothing (hung). The probe (`follow=0&tail=1`) shows B. Every later
//! stream gets what dockerd would send for its query (`tail`, `since`), then stays open.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_log_capturer");
const ID: &str = "6a1f0c0ffee0d15ea5e5b0a710ad0f0ccac1a0b0c0d0e0f1011121314151617b";
/// The log: (timestamp in seconds after 2026-11-30T00:00:00Z, text).
const LOG: [(u32, &str); 3] = [(1, "line O"), (11, "line A"), (12, "line B")];

#[derive(Default)]
struct Seen {
    /// The targets of the logs requests, in order.
    logs: Mutex<Vec<String>>,
    follows: AtomicU32,
    probes: AtomicU32,
}

struct Daemon {
    socket: PathBuf,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
}

impl Daemon {
    fn start(socket: &Path) -> Daemon {
        let listener = UnixListener::bind(socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, flag) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, flag) = (s.clone(), flag.clone());
                        thread::spawn(move || serve(conn, &s, &flag));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Daemon {
            socket: socket.to_path_buf(),
            seen,
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

fn answer_json(conn: &mut UnixStream, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nApi-Version: 1.41\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn param<'a>(target: &'a str, key: &str) -> Option<&'a str> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The lines `LOG[..]` as dockerd sends them (stdout frames in HTTP chunks).
fn send_lines(conn: &mut UnixStream, lines: &[(u32, &str)]) {
    for (secs, text) in lines {
        let line = format!("2026-11-30T00:00:{secs:02}.000000000Z {text}\n");
        let mut frame = vec![1u8, 0, 0, 0];
        frame.extend_from_slice(&(line.len() as u32).to_be_bytes());
        frame.extend_from_slice(line.as_bytes());
        let _ = write!(conn, "{:x}\r\n", frame.len());
        let _ = conn.write_all(&frame);
        let _ = conn.write_all(b"\r\n");
    }
}

fn serve(mut conn: UnixStream, seen: &Seen, stop: &AtomicBool) {
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
    let hold = |conn: &mut UnixStream| {
        while !stop.load(Ordering::Relaxed) {
            // A hung stream: open, silent. Ends when the capturer closes it.
            let mut byte = [0u8; 1];
            conn.set_read_timeout(Some(Duration::from_millis(50))).ok();
            match conn.read(&mut byte) {
                Ok(0) => return,
                _ => continue,
            }
        }
    };
    if path == "/version" || path == "/_ping" {
        answer_json(
            &mut conn,
            r#"{"ApiVersion":"1.41","MinAPIVersion":"1.12","Version":"20.10.24"}"#,
        );
    } else if path.ends_with("/containers/json") {
        answer_json(
            &mut conn,
            &format!(
                r#"[{{"Id":"{ID}","Names":["/hung-web"],"Image":"img","Labels":{{}},"State":"running"}}]"#
            ),
        );
    } else if path.ends_with(&format!("/containers/{ID}/json")) {
        answer_json(
            &mut conn,
            &format!(
                r#"{{"Id":"{ID}","Name":"/hung-web","Created":"2026-11-30T00:00:00.000000000Z","Config":{{"Tty":false,"Image":"img","Labels":{{}}}},"State":{{"Running":true,"StartedAt":"2026-11-30T00:00:00.500000000Z"}},"HostConfig":{{"LogConfig":{{"Type":"json-file","Config":{{}}}}}}}}"#
            ),
        );
    } else if path.ends_with("/events") {
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        hold(&mut conn);
    } else if path.ends_with(&format!("/containers/{ID}/logs")) {
        seen.logs.lock().unwrap().push(target.clone());
        let follow = param(&target, "follow") == Some("1");
        let _ = conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        if follow && seen.follows.fetch_add(1, Ordering::Relaxed) == 0 {
            // The first stream hangs after A, while the log holds B.
            send_lines(&mut conn, &LOG[..2]);
            hold(&mut conn);
        } else {
            if !follow {
                seen.probes.fetch_add(1, Ordering::Relaxed);
            }
            let tail = param(&target, "tail").and_then(|t| t.parse::<usize>().ok());
            let since = param(&target, "since")
                .and_then(|s| s.split('.').next()?.parse::<u64>().ok())
                .map(|s| s - 1_795_996_800); // 2026-11-30T00:00:00Z
            let first = tail.map_or(0, |n| LOG.len().saturating_sub(n));
            let lines: Vec<(u32, &str)> = LOG[first..]
                .iter()
                .copied()
                .filter(|&(t, _)| since.is_none_or(|s| u64::from(t) >= s))
                .collect();
            send_lines(&mut conn, &lines);
            if follow {
                hold(&mut conn);
            } else {
                let _ = conn.write_all(b"0\r\n\r\n");
            }
        }
    } else {
        let body = r#"{"message":"no such route"}"#;
        let _ = write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
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
fn a_hung_stream_is_reopened_once_the_probe_shows_a_newer_line() {
    let dir = std::env::temp_dir().join(format!("logcap-hung-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let daemon = Daemon::start(&dir.join("d.sock"));
    let config = dir.join("config.yaml");
    fs::write(
        &config,
        format!(
            r#"app:
  log_level: "debug"
  log_format: "text"
server:
  enabled: false
metrics:
  enabled: false
container_monitor:
  enabled: true
  socket_path: "unix://{sock}"
  stream_rotation_interval: "1s"
  stream_idle_timeout: "0"
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
            .env("RUST_LOG", "log_capturer=debug")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log: log.clone(),
    };
    let out = dir.join("out").join("hung-web.log");
    let messages = || -> Vec<String> {
        fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["message"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    // B arrives through the reopened stream, and two more probes of that (silent, not hung)
    // stream find nothing newer.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            capturer.child.try_wait().unwrap().is_none(),
            "the capturer exited"
        );
        let probes_after = daemon.seen.probes.load(Ordering::Relaxed);
        if messages().len() >= 3 && probes_after >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not within 30 s: {:?}, {probes_after} probes, requests {:?}",
            messages(),
            daemon.seen.logs.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let requests = daemon.seen.logs.lock().unwrap().clone();
    let follows: Vec<&String> = requests.iter().filter(|t| t.contains("follow=1")).collect();
    assert_eq!(messages(), ["line O", "line A", "line B"], "{requests:?}");
    // The hung stream was reopened once, with a tail window and no `since` (which would make
    // dockerd decode the whole log); the reopened stream, silent, was not.
    assert_eq!(follows.len(), 2, "{requests:?}");
    assert!(!follows[0].contains("tail=") && !follows[0].contains("since="));
    assert!(
        follows[1].contains("tail=") && !follows[1].contains("since="),
        "{}",
        follows[1]
    );
    assert!(requests
        .iter()
        .filter(|t| t.contains("follow=0"))
        .all(|t| t.contains("tail=1")));
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("delivered nothing for").count(), 1, "{text}");
    drop(capturer);
    drop(daemon);
    let _ = fs::remove_dir_all(&dir);
}
