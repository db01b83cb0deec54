//! Issue 12 (faults), the parts about state and the HTTP API: a second instance on the same
//! positions directory, a corrupt positions file seen by the binary, the API's bearer token,
//! its connection and time limits, and 200 concurrent clients posting lines with none lost.
//! No Docker: the binary runs with `container_monitor.enabled: false`, the API in-process.

#[path = "support/api_state.rs"]
mod api_state;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[path = "support/scratch.rs"]
mod scratch;
use scratch::Scratch;

use log_capturer::api::{self, ApiOptions, ApiServers};
use log_capturer::config::Config;
use log_capturer::pipeline::{queue, QueueReceiver, Received};
use log_capturer::state::lock::LOCK_FILE;
use log_capturer::state::positions::{CONTAINER_POSITIONS_BAK, CONTAINER_POSITIONS_FILE};

const BIN: &str = env!("CARGO_BIN_EXE_log_capturer");
const POLL: Duration = Duration::from_millis(20);

fn command(config: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config);
    for (k, _) in std::env::vars() {
        if k.starts_with("SSW_") || k == "DOCKER_HOST" || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// Waits for the child's exit and its stderr, killing it past `within`.
fn finish(mut child: Child, within: Duration) -> (ExitStatus, String) {
    let mut pipe = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the capturer did not exit within {within:?}");
        }
        thread::sleep(POLL);
    };
    (status, reader.join().unwrap())
}

fn sigterm(child: &Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

// ---------------------------------------------------------------------------------------------
// State

#[test]
fn a_second_instance_on_the_same_positions_exits_2_naming_the_first() {
    let s = Scratch::new("faults", "second");
    let config = s.config("", "");
    let first = command(&config).spawn().expect("spawn the first capturer");
    let lock = s.positions().join(LOCK_FILE);
    let want = format!("{}\n", first.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs::read_to_string(&lock).ok().as_deref() != Some(want.as_str()) {
        assert!(Instant::now() < deadline, "the first never took the lock");
        thread::sleep(POLL);
    }
    let second = command(&config).spawn().expect("spawn the second capturer");
    let (status, stderr) = finish(second, Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.id())),
        "the holder is not named:\n{stderr}"
    );
    assert!(
        stderr.contains(&s.positions().display().to_string()),
        "{stderr}"
    );
    // The first is unaffected and stops cleanly; then the directory is free again.
    sigterm(&first);
    let (status, stderr) = finish(first, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stderr}");
    let third = command(&config).arg("--once").spawn().unwrap();
    let (status, stderr) = finish(third, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn a_corrupt_positions_file_stops_the_start_naming_the_backup() {
    let s = Scratch::new("faults", "corrupt");
    let config = s.config("", "");
    fs::create_dir_all(s.positions()).unwrap();
    let good = "{\n  \"0123456789ab\": {\n    \"container_id\": \"0123456789ab\",\n    \
                \"since_ns\": 1700000000000000000,\n    \"skip\": 1\n  }\n}";
    fs::write(s.positions().join(CONTAINER_POSITIONS_BAK), good).unwrap();
    fs::write(s.positions().join(CONTAINER_POSITIONS_FILE), "{\n  \"0123").unwrap();
    let run = command(&config).arg("--once").spawn().unwrap();
    let (status, stderr) = finish(run, Duration::from_secs(20));
    assert_ne!(status.code(), Some(0), "{stderr}");
    let bak = s.positions().join(CONTAINER_POSITIONS_BAK);
    let file = s.positions().join(CONTAINER_POSITIONS_FILE);
    assert!(
        stderr.contains(&format!("mv {} {}", bak.display(), file.display())),
        "{stderr}"
    );
    // Untouched, both.
    assert_eq!(fs::read_to_string(&file).unwrap(), "{\n  \"0123");
    assert_eq!(fs::read_to_string(&bak).unwrap(), good);
}

// ---------------------------------------------------------------------------------------------
// HTTP API: an in-process server with its own limits.

struct Api {
    servers: Option<ApiServers>,
    addr: SocketAddr,
    rx: QueueReceiver,
    stop: Arc<AtomicBool>,
    dir: PathBuf,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(s) = self.servers.take() {
            s.join();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn api_with(name: &str, capacity: usize, edit: impl FnOnce(&mut Config)) -> Api {
    let dir = std::env::temp_dir().join(format!("logcap-faults-api-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mut config = Config::defaults();
    config.server.enabled = true;
    config.server.host = "127.0.0.1".into();
    config.server.port = 0;
    config.metrics.enabled = false;
    edit(&mut config);
    let (tx, rx) = queue(capacity);
    let shared = api_state::shared(&dir, tx.gauge(), "test");
    let stop = Arc::new(AtomicBool::new(false));
    let options = ApiOptions {
        thread_count: || 20,
        ..ApiOptions::default()
    };
    let servers =
        api::start_with(&config, shared, Some(tx), stop.clone(), options).expect("servers start");
    Api {
        addr: servers.api_addr.expect("api bound"),
        servers: Some(servers),
        rx,
        stop,
        dir,
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

fn parse_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// One request on its own connection (`Connection: close`), with extra header lines.
fn call(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_answer(&raw)
}

fn messages(rx: &QueueReceiver, n: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        if let Received::Batch(b) = rx.recv(POLL) {
            got.extend(
                b.entries
                    .iter()
                    .map(|e| String::from_utf8_lossy(&e.message).to_string()),
            );
        }
    }
    got
}

#[test]
fn the_bearer_token_guards_post_logs_and_config_only() {
    let f = api_with("token", 100, |c| {
        c.server.auth_token = "s3cret-token".into()
    });
    let line = r#"{"message":"guarded line"}"#;
    for headers in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Bearer s3cret-token-and-more\r\n",
        "Authorization: Basic s3cret-token\r\n",
        "Authorization: s3cret-token\r\n",
    ] {
        let a = call(f.addr, "POST", "/api/v1/logs", headers, line);
        assert_eq!(a.status, 401, "{headers:?}: {a:?}");
        assert!(
            a.head.contains("WWW-Authenticate: Bearer"),
            "{headers:?}: {a:?}"
        );
        let a = call(f.addr, "GET", "/config", headers, "");
        assert_eq!(a.status, 401, "{headers:?}: {a:?}");
        assert!(!a.body.contains("s3cret"), "{a:?}");
    }
    assert!(messages(&f.rx, 1, Duration::from_millis(300)).is_empty());
    let good = "Authorization: Bearer s3cret-token\r\n";
    assert_eq!(call(f.addr, "POST", "/api/v1/logs", good, line).status, 202);
    assert_eq!(
        messages(&f.rx, 1, Duration::from_secs(5)),
        vec!["guarded line"]
    );
    let a = call(
        f.addr,
        "GET",
        "/config",
        "authorization: bearer s3cret-token\r\n",
        "",
    );
    assert_eq!(a.status, 200, "{a:?}");
    // The token itself is masked in /config.
    assert!(!a.body.contains("s3cret-token"), "{}", a.body);
    // Everything else stays open (a HEALTHCHECK or scraper has no token).
    for path in ["/health", "/stats", "/metrics", "/positions"] {
        assert_eq!(call(f.addr, "GET", path, "", "").status, 200, "{path}");
    }
}

#[test]
fn the_token_comes_from_the_file_or_ssw_server_auth_token() {
    let s = Scratch::new("faults", "token-env");
    let path = s.0.join("c.yaml");
    fs::write(&path, "server:\n  auth_token: from-file\n").unwrap();
    let load = |env: &[(&str, &str)]| {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with_env(Some(&path), &|k| env.get(k).cloned())
            .unwrap()
            .0
            .server
            .auth_token
    };
    assert_eq!(load(&[]), "from-file");
    assert_eq!(load(&[("SSW_SERVER_AUTH_TOKEN", "from-env")]), "from-env");
}

#[test]
fn connections_over_the_limit_get_503_at_once_and_the_rest_are_served() {
    let f = api_with("conn-limit", 100, |c| c.server.max_connections = 4);
    // Four clients that connect and say nothing hold every slot...
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(f.addr).unwrap())
        .collect();
    // ...once the server has taken them all (a served request proves the accept loop saw them).
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let t = Instant::now();
        let a = call(f.addr, "GET", "/health", "", "");
        if a.status == 503 {
            break t.elapsed();
        }
        assert!(Instant::now() < deadline, "never refused: {a:?}");
        thread::sleep(POLL);
    };
    assert!(
        refused < Duration::from_secs(2),
        "refused after {refused:?}"
    );
    let a = call(f.addr, "GET", "/health", "", "");
    assert_eq!(a.status, 503, "{a:?}");
    assert!(a.head.contains("Retry-After: 1"), "{a:?}");
    // A slot freed is a client served.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(f.addr, "GET", "/health", "", "").status != 200 {
        assert!(Instant::now() < deadline, "slots never freed");
        thread::sleep(POLL);
    }
}

#[test]
fn a_client_that_stops_mid_request_is_cut_off_at_read_timeout() {
    let f = api_with("slow", 100, |c| {
        c.server.read_timeout = Duration::from_millis(400);
        c.server.idle_timeout = Duration::from_millis(400);
    });
    // Half a head, then silence.
    let mut slow_head = TcpStream::connect(f.addr).unwrap();
    slow_head
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow_head
        .write_all(b"POST /api/v1/logs HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    // A whole head, half the body, then silence.
    let mut slow_body = TcpStream::connect(f.addr).unwrap();
    slow_body
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow_body
        .write_all(b"POST /api/v1/logs HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"mess")
        .unwrap();
    // Nothing at all.
    let mut silent = TcpStream::connect(f.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    // Meanwhile others are served.
    assert_eq!(call(f.addr, "GET", "/health", "", "").status, 200);
    let mut raw = Vec::new();
    slow_head.read_to_end(&mut raw).unwrap();
    assert_eq!(parse_answer(&raw).status, 408, "{raw:?}");
    let mut raw = Vec::new();
    slow_body.read_to_end(&mut raw).unwrap();
    let a = parse_answer(&raw);
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.body.contains("time limit"), "{a:?}");
    let mut raw = Vec::new();
    silent.read_to_end(&mut raw).unwrap();
    assert!(raw.is_empty(), "{raw:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "cut off after {took:?}");
    assert!(messages(&f.rx, 1, Duration::from_millis(200)).is_empty());
}

#[test]
fn heads_over_max_header_bytes_get_431() {
    let f = api_with("big-head", 100, |c| c.server.max_header_bytes = 4096);
    let big = format!("X-Pad: {}\r\n", "a".repeat(8192));
    let a = call(f.addr, "GET", "/health", &big, "");
    assert_eq!(a.status, 431, "{a:?}");
}

/// Sends `raw` whole and reads the one answer (the request says `Connection: close`).
fn raw_call(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    parse_answer(&answer)
}

#[test]
fn chunked_bodies_are_decoded_and_bounded() {
    let f = api_with("chunked", 100, |_| {});
    let head = "POST /api/v1/logs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    // Go's net/http sends a body of unknown length like this: chunks, an extension, a trailer.
    let good = format!(
        "{head}5;ext=1\r\n{{\"mes\r\nf\r\nsage\":\"chunked \r\n6\r\nline\"}}\r\n0\r\nX-T: 1\r\n\r\n"
    );
    let a = raw_call(f.addr, good.as_bytes());
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(
        messages(&f.rx, 1, Duration::from_secs(5)),
        vec!["chunked line"]
    );
    for (body, why) in [
        ("zz\r\nabc\r\n0\r\n\r\n", "bad chunk size"),
        ("3\r\nabcdef\r\n0\r\n\r\n", "CRLF"),
        ("fffffffffffffffffff\r\n", "bad chunk size"),
        ("100001\r\n", "over the limit"),
    ] {
        let a = raw_call(f.addr, format!("{head}{body}").as_bytes());
        assert_eq!(a.status, 400, "{body:?}: {a:?}");
        assert!(a.body.contains(why), "{body:?}: {a:?}");
    }
    assert!(messages(&f.rx, 1, Duration::from_millis(200)).is_empty());
}

#[test]
fn keep_alive_and_expect_continue_work() {
    let f = api_with("keepalive", 100, |_| {});
    let mut s = TcpStream::connect(f.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for i in 0..3 {
        let body = format!(r#"{{"message":"kept {i}"}}"#);
        let head = format!(
            "POST /api/v1/logs HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut cont = [0u8; 25];
        s.read_exact(&mut cont).unwrap();
        assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(body.as_bytes()).unwrap();
        let answer = read_one_answer(&mut s);
        assert_eq!(answer.status, 202, "{answer:?}");
    }
    assert_eq!(
        messages(&f.rx, 3, Duration::from_secs(5)),
        vec!["kept 0", "kept 1", "kept 2"]
    );
}

/// Reads one answer with a Content-Length body from a kept-alive connection.
fn read_one_answer(s: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    raw.extend_from_slice(&body);
    parse_answer(&raw)
}

/// 200 clients at once, each posting its lines on a kept-alive connection (retrying a 503,
/// the answer to a full queue, as a client must) and polling /health: every line accepted
/// arrives exactly once.
#[test]
fn two_hundred_concurrent_clients_lose_no_posted_line() {
    const CLIENTS: usize = 200;
    const LINES: usize = 10;
    let f = api_with("load", 500, |_| {});
    let mut got = Vec::<String>::new();
    thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let addr = f.addr;
                scope.spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    for i in 0..LINES {
                        let body = format!(r#"{{"message":"client {c} line {i}"}}"#);
                        let mut tries = 0;
                        loop {
                            let head = format!(
                                "POST /api/v1/logs HTTP/1.1\r\nHost: t\r\n\
                                 Content-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            s.write_all(head.as_bytes()).unwrap();
                            let a = read_one_answer(&mut s);
                            match a.status {
                                202 => break,
                                503 if tries < 500 => {
                                    tries += 1;
                                    thread::sleep(Duration::from_millis(10));
                                }
                                _ => panic!("client {c} line {i}: {a:?}"),
                            }
                        }
                        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                            .unwrap();
                        // 503 is /health saying degraded while the queue is over 70%.
                        let h = read_one_answer(&mut s);
                        assert!(
                            matches!(h.status, 200 | 503) && h.body.contains("\"status\""),
                            "{h:?}"
                        );
                    }
                })
            })
            .collect();
        // The dispatcher's part: drain the queue while they post.
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < CLIENTS * LINES && Instant::now() < deadline {
            if let Received::Batch(b) = f.rx.recv(POLL) {
                got.extend(
                    b.entries
                        .iter()
                        .map(|e| String::from_utf8_lossy(&e.message).to_string()),
                );
                // Delivered: room for more.
                f.rx.release(&b.entries);
            }
        }
        for c in clients {
            c.join().unwrap();
        }
    });
    // Nothing more comes after the last one.
    assert!(messages(&f.rx, 1, Duration::from_millis(200)).is_empty());
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(got.len(), CLIENTS * LINES, "lines received");
    assert_eq!(unique.len(), CLIENTS * LINES, "distinct lines received");
    for c in 0..CLIENTS {
        for i in 0..LINES {
            assert!(unique.contains(&format!("client {c} line {i}")));
        }
    }
}
