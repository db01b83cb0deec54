//! Processing pipelines under the daemon binary, on the real dockerd (LOGCAP_DOCKER_SOCK;
//! without it these tests fail, loudly). Issue 14, section 3:
//!
//! - the Go team's pipelines (`tests/fixtures/go_pipelines.yaml`) on containers of the
//!   services it maps (`mysql`, `freeswitch`, the JSON logger `log_generator`, and one it
//!   does not map): the stream labels they reach Loki with, at an in-test receiver, and the
//!   fields in the file sink's JSON;
//! - multiline: Java traces on stdout and Python traces on stderr, interleaved, the capturer
//!   stopped (SIGTERM) while a trace of each is half written and started again: every trace
//!   arrives once, whole.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::docker;
#[path = "support/capturer.rs"]
mod capturer;
use capturer::{Env, POLL};

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file)
}

fn positions(env: &Env) -> String {
    format!(
        "  enabled: true\n  directory: \"{}\"\n  flush_interval: \"1s\"",
        env.dir.join("positions").display()
    )
}

/// `env.config` plus `processing:` with this pipelines file, and the Loki sink when a URL is
/// given.
fn config(env: &Env, name: &str, pipelines: &Path, loki: Option<&str>) -> PathBuf {
    let path = env.config(name, &positions(env));
    let mut yaml = fs::read_to_string(&path).unwrap();
    if let Some(url) = loki {
        let off = "  loki:\n    enabled: false\n";
        assert!(yaml.contains(off));
        yaml = yaml.replace(
            off,
            &format!(
                "  loki:\n    enabled: true\n    url: \"{url}\"\n    batch_timeout: \"200ms\"\n"
            ),
        );
    }
    yaml.push_str(&format!(
        "processing:\n  enabled: true\n  pipelines_file: \"{}\"\n  skip_failed_logs: true\n",
        pipelines.display()
    ));
    fs::write(&path, yaml).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// A Loki push receiver: every stream's labels and lines, answered 204.

type Streams = Vec<(BTreeMap<String, String>, Vec<String>)>;

struct Loki {
    addr: String,
    streams: Arc<Mutex<Streams>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Loki {
    fn start() -> Loki {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let streams = Arc::new(Mutex::new(Streams::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (streams.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut conns = Vec::new();
            while !sp.load(Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (st, sp) = (st.clone(), sp.clone());
                        conns.push(thread::spawn(move || serve(s, &st, &sp)));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Loki {
            addr,
            streams,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Loki {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut s: TcpStream, streams: &Mutex<Streams>, stop: &AtomicBool) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    while !stop.load(Relaxed) {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body: Vec<u8> = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                let body = if head.contains("content-encoding: gzip") {
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(&body[..])
                        .read_to_end(&mut out)
                        .unwrap();
                    out
                } else {
                    body
                };
                let push: Value = serde_json::from_slice(&body).unwrap();
                let mut st = streams.lock().unwrap();
                for stream in push["streams"].as_array().unwrap() {
                    let labels: BTreeMap<String, String> =
                        serde_json::from_value(stream["stream"].clone()).unwrap();
                    let lines = stream["values"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v[1].as_str().unwrap().to_string())
                        .collect();
                    st.push((labels, lines));
                }
                drop(st);
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
                continue;
            }
        }
        match s.read(&mut tmp) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// The Go team's pipelines on containers of the services its `source_mapping` names (as
/// compose services: `mysql` matches the service, not a substring of the name): the Loki
/// stream labels are the pipeline's fields minus Go's drop list (`msg`, `_temp_*`,
/// `container_id`, `image`), and the file sink's JSON has every field under `labels`.
#[test]
fn go_pipelines_label_mapped_containers_at_loki() {
    let mut env = Env::new("pipes");
    let loki = Loki::start();
    let service = |s: &str| format!("com.docker.compose.service={s}");
    let jobs = [
        (
            "mysql",
            "echo '2024-01-15T10:30:00.123456Z 0 [Warning] Access denied for user'",
        ),
        (
            "freeswitch",
            r"printf '\033[32m2024-01-15 10:30:00.250000 97.53%% [NOTICE] sofia.c:7 Call started\033[0m\n'",
        ),
        (
            "log_generator",
            r#"echo '{"timestamp":"2024-01-15T10:30:00Z","level":"error","message":"disk full"}'"#,
        ),
        ("web", "echo 'GET /health 200 WARN slow'"),
    ];
    let mut names = Vec::new();
    for (svc, script) in jobs {
        let name = env.create(svc, &["--label", &service(svc)], script);
        docker(&["start", &name]);
        names.push(name);
    }
    for name in &names {
        env.wait_exited(name, Duration::from_secs(20));
    }
    let cfg = config(
        &env,
        "go.yaml",
        &fixture("go_pipelines.yaml"),
        Some(&loki.url()),
    );
    let i = env.spawn(&cfg, &["--once"]);
    env.wait_success(i, Duration::from_secs(60));
    assert!(
        env.log(i).contains("processing: 9 pipelines from"),
        "{}",
        env.log(i)
    );

    let streams = loki.streams.lock().unwrap().clone();
    let by_name = |name: &str| -> (BTreeMap<String, String>, Vec<String>) {
        let found: Vec<_> = streams
            .iter()
            .filter(|(l, _)| l.get("container_name").map(String::as_str) == Some(name))
            .collect();
        assert_eq!(found.len(), 1, "{name}: {streams:?}");
        found[0].clone()
    };
    let expect = |svc: &str, name: &str, extra: &[(&str, &str)], line: &str| {
        let (labels, lines) = by_name(name);
        let mut want: BTreeMap<String, String> = [
            ("compose_service", svc),
            ("container_name", name),
            ("stream", "stdout"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        want.entry("service".into()).or_insert_with(|| svc.into());
        assert_eq!(labels, want, "{name}");
        assert_eq!(lines, [line], "{name}");
    };
    expect(
        "mysql",
        &names[0],
        &[("component", "database"), ("level", "Warning")],
        "2024-01-15T10:30:00.123456Z 0 [Warning] Access denied for user",
    );
    expect(
        "freeswitch",
        &names[1],
        &[("component", "voip"), ("level", "NOTICE")],
        // The ANSI codes stripped by the pipeline's first step.
        "2024-01-15 10:30:00.250000 97.53% [NOTICE] sofia.c:7 Call started",
    );
    expect(
        "log_generator",
        &names[2],
        &[
            ("component", "app"),
            ("level", "error"),
            ("service", "application"),
        ],
        r#"{"timestamp":"2024-01-15T10:30:00Z","level":"error","message":"disk full"}"#,
    );
    expect(
        "web",
        &names[3],
        &[
            ("level", "warn"),
            ("pipeline", "default"),
            ("service", "log-capturer"),
        ],
        "GET /health 200 WARN slow",
    );

    // The file sink: every field under labels, the pipeline's time as the entry's.
    let text = fs::read_to_string(env.out_dir().join(format!("{}.log", names[0]))).unwrap();
    let v: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(v["labels"]["msg"], "Access denied for user");
    assert_eq!(v["labels"]["_temp_time"], "2024-01-15T10:30:00.123456Z");
    assert_eq!(v["labels"]["level"], "Warning");
    assert_eq!(v["timestamp"], "2024-01-15T10:30:00.123456Z");
}

/// A Java trace (5 lines) on stdout, or a Python one (4 lines) on stderr.
fn java(n: u32) -> Vec<String> {
    vec![
        format!("2024-01-15 10:00:0{n},000 ERROR [main] failed {n}"),
        format!("java.lang.IllegalStateException: boom {n}"),
        format!("\tat a.B.one(B.java:{n}1)"),
        format!("\tat a.B.two(B.java:{n}2)"),
        format!("\tat a.B.three(B.java:{n}3)"),
    ]
}

fn python(n: u32) -> Vec<String> {
    vec![
        "Traceback (most recent call last):".to_string(),
        format!("  File \"app.py\", line {n}, in run"),
        format!("    raise ValueError({n})"),
        format!("ValueError: bad {n}"),
    ]
}

/// `sh` that prints these lines (printf: tabs and quotes as they are).
fn print(lines: &[String], stderr: bool) -> String {
    lines
        .iter()
        .map(|l| {
            let quoted = l
                .replace('\'', r"'\''")
                .replace('\t', r"\t")
                .replace('%', "%%");
            format!("printf '{quoted}\\n'{}; ", if stderr { " >&2" } else { "" })
        })
        .collect()
}

/// How long the container pauses in the middle of its second traces; the capturer is stopped
/// and started again during it. The first traces must be delivered in the pause's first
/// `PAUSE_SECS - 2` seconds: 4 s failed twice in ~60 runs here, both while another test run
/// shared the machine (the capturer's log, at info, said nothing past its start).
const PAUSE_SECS: u64 = 10;
/// The pipeline's `max_wait`: longer than the pause, or the held halves would go out alone.
const MAX_WAIT_SECS: u64 = 14;

#[test]
fn multiline_traces_survive_a_restart_mid_group() {
    let mut env = Env::new("mlrestart");
    let pipelines = env.dir.join("pipelines.yaml");
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
          max_lines: 100
          max_wait: {MAX_WAIT_SECS}s
      - name: level
        type: log_level_extract
        config:
          field: level
source_mapping:
  traces: ["{prefix}app"]
"#,
            prefix = env.prefix
        ),
    )
    .unwrap();
    let (j, p) = (
        (1..=3).map(java).collect::<Vec<_>>(),
        (1..=3).map(python).collect::<Vec<_>>(),
    );
    let script = format!(
        "{}{}{}{}sleep {PAUSE_SECS}; {}{}{}{}",
        print(&j[0], false) + &print(&p[0], true),
        print(&j[1][..2], false),
        print(&p[1][..2], true),
        "",
        print(&j[1][2..], false),
        print(&p[1][2..], true),
        print(&j[2], false),
        print(&p[2], true),
    );
    let name = env.create("app", &[], &script);
    let cfg = config(&env, "ml.yaml", &pipelines, None);
    // At debug the log says when the stream opened and what it read, should the first
    // delivery come late again.
    let yaml = fs::read_to_string(&cfg).unwrap();
    fs::write(
        &cfg,
        yaml.replace("log_level: \"info\"", "log_level: \"debug\""),
    )
    .unwrap();
    let first = env.spawn(&cfg, &[]);
    docker(&["start", &name]);
    // A first trace is out once the second ones start (which one depends on how dockerd
    // interleaved stdout and stderr in its log: groups go out in log order). The lines before
    // the pause come in one burst with it; then stop, mid-group.
    let deadline = Instant::now() + Duration::from_secs(PAUSE_SECS - 2);
    while env.captured(&name).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no trace delivered before the pause"
        );
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500));
    env.terminate(first);
    let log = env.log(first);
    let held: usize = log
        .lines()
        .find_map(|l| {
            let (head, _) = l.split_once(" lines of unfinished multiline groups left")?;
            head.rsplit(' ').next()
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the stop did not come mid-group:\n{log}"));
    let before = env.captured(&name).len();
    // At least the halves of the second traces (2 + 2 lines) were held, and what was
    // delivered is whole traces only.
    assert!(
        held >= 4 && (1..=2).contains(&before),
        "held {held}, delivered {before}"
    );
    let second = env.spawn(&cfg, &[]);
    env.wait_exited(&name, Duration::from_secs(30));
    // The last traces complete after max_wait without a new line.
    let deadline = Instant::now() + Duration::from_secs(MAX_WAIT_SECS + 20);
    while env.captured(&name).len() < 6 {
        assert!(Instant::now() < deadline, "{:?}", env.captured(&name));
        thread::sleep(POLL);
    }
    env.terminate(second);
    let log = env.log(second);
    assert!(!log.contains("accounting:"), "{log}");
    let text = fs::read_to_string(env.out_dir().join(format!("{name}.log"))).unwrap();
    let entries: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |stream: &str| -> Vec<(String, String)> {
        entries
            .iter()
            .filter(|e| e["labels"]["stream"] == stream)
            .map(|e| {
                (
                    e["message"].as_str().unwrap().to_string(),
                    e["labels"]["level"].as_str().unwrap_or("-").to_string(),
                )
            })
            .collect()
    };
    // Each trace once, whole, in order on its stream; the level from the joined entry.
    let want = |traces: &[Vec<String>], level: &str| -> Vec<(String, String)> {
        traces
            .iter()
            .map(|t| (t.join("\n"), level.to_string()))
            .collect()
    };
    assert_eq!(of("stdout"), want(&j, "error"));
    assert_eq!(of("stderr"), want(&p, "-"));
    assert_eq!(entries.len(), 6);
}
