//! Processing pipelines, golden: entries in, exact fields out. The Go team's `pipelines.yaml`
//! (its copy `tests/fixtures/go_pipelines.yaml`, and the original under `../shared` when this
//! checkout sits next to it) and the project's fixture covering every step type.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log_capturer::decode::StreamKind;
use log_capturer::pipeline::entry::{Labels, LogEntry};
use log_capturer::pipeline::processing::{Grouper, Processor, Source};

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file)
}

fn reference() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/log_capturer_go/pipelines.yaml")
}

fn load(path: &Path) -> Processor {
    let text = std::fs::read_to_string(path).unwrap();
    Processor::from_str(&text, path, true).unwrap_or_else(|e| panic!("{e}"))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn entry(msg: &str, stream: StreamKind, source_type: &'static str, l: &Labels) -> LogEntry {
    LogEntry {
        fields: Default::default(),
        timestamp_ns: 7,
        processed_at_ns: 8,
        message: Bytes::copy_from_slice(msg.as_bytes()),
        stream,
        source_type,
        source_id: Arc::from("0123456789ab"),
        labels: Arc::new(l.clone()),
    }
}

/// A container's labels as the capture thread builds them.
fn container(name: &str) -> Labels {
    labels(&[
        ("container_id", "0123456789abcdef"),
        ("container_name", name),
        ("image", "img"),
    ])
}

struct Case {
    /// Labels of the source; `source_type` and the file path.
    source: Labels,
    source_type: &'static str,
    path: Option<&'static str>,
    message: &'static str,
    pipeline: &'static str,
    /// Fields added (besides the source's labels), the message and timestamp out.
    fields: &'static [(&'static str, &'static str)],
    message_out: &'static str,
    timestamp_ns: i64,
}

/// `date -u -d 2024-01-15T10:30:00Z +%s`
const T: i64 = 1_705_314_600 * 1_000_000_000;

fn go_cases() -> Vec<Case> {
    let mut compose = container("proj-mysql-1");
    compose.insert("compose_service".into(), "mysql".into());
    vec![
        Case {
            source: container("mysql"),
            source_type: "docker",
            path: None,
            message: "2024-01-15T10:30:00.123456Z 0 [Warning] Access denied for user 'x'",
            pipeline: "mysql",
            fields: &[
                ("_temp_time", "2024-01-15T10:30:00.123456Z"),
                ("component", "database"),
                ("level", "Warning"),
                ("msg", "Access denied for user 'x'"),
                ("service", "mysql"),
            ],
            message_out: "2024-01-15T10:30:00.123456Z 0 [Warning] Access denied for user 'x'",
            timestamp_ns: T + 123_456_000,
        },
        Case {
            source: compose,
            source_type: "docker",
            path: None,
            message: "mysqld: ready for connections.",
            pipeline: "mysql",
            // The timestamp step fails on a line without a time: the line goes out as it came.
            fields: &[],
            message_out: "mysqld: ready for connections.",
            timestamp_ns: 7,
        },
        Case {
            source: container("freeswitch"),
            source_type: "docker",
            path: None,
            message:
                "\x1b[32m2024-01-15 10:30:00.250000 97.53% [NOTICE] sofia.c:7 Call started\x1b[0m",
            pipeline: "freeswitch",
            fields: &[
                ("_temp_time", "2024-01-15 10:30:00.250000"),
                ("component", "voip"),
                ("level", "NOTICE"),
                ("msg", "sofia.c:7 Call started"),
                ("service", "freeswitch"),
            ],
            message_out: "2024-01-15 10:30:00.250000 97.53% [NOTICE] sofia.c:7 Call started",
            timestamp_ns: T + 250_000_000,
        },
        Case {
            source: container("grafana"),
            source_type: "docker",
            path: None,
            message: r#"logger=context userId=1 t=2024-01-15T10:30:00.000000005Z level=error msg="Request Completed" status=500"#,
            pipeline: "grafana",
            fields: &[
                ("_temp_logger", "context"),
                ("_temp_time", "2024-01-15T10:30:00.000000005Z"),
                ("component", "monitoring"),
                ("level", "error"),
                ("msg", "Request Completed"),
                ("service", "grafana"),
            ],
            message_out: r#"logger=context userId=1 t=2024-01-15T10:30:00.000000005Z level=error msg="Request Completed" status=500"#,
            timestamp_ns: T + 5,
        },
        Case {
            source: container("prometheus"),
            source_type: "docker",
            path: None,
            message: r#"level=warn ts=2024-01-15T10:30:00.042Z caller=main.go:1 msg="WAL segment loaded""#,
            pipeline: "prometheus",
            fields: &[
                ("_temp_time", "2024-01-15T10:30:00.042Z"),
                ("component", "monitoring"),
                ("level", "warn"),
                ("msg", "WAL segment loaded"),
                ("service", "prometheus"),
            ],
            message_out: r#"level=warn ts=2024-01-15T10:30:00.042Z caller=main.go:1 msg="WAL segment loaded""#,
            timestamp_ns: T + 42_000_000,
        },
        Case {
            source: container("log_generator"),
            source_type: "docker",
            path: None,
            message: r#"{"timestamp":"2024-01-15T10:30:00Z","level":"error","message":"disk full","user":"u1"}"#,
            pipeline: "json_logs",
            fields: &[
                ("_temp_time", "2024-01-15T10:30:00Z"),
                ("component", "app"),
                ("level", "error"),
                ("msg", "disk full"),
                ("service", "application"),
            ],
            message_out: r#"{"timestamp":"2024-01-15T10:30:00Z","level":"error","message":"disk full","user":"u1"}"#,
            timestamp_ns: T,
        },
        Case {
            // Go's strings.Contains("mysql", name) took a container named "sql" for mysql;
            // here it is unmapped and goes through `default`.
            source: container("sql"),
            source_type: "docker",
            path: None,
            message: "GET /health 200 WARN slow",
            pipeline: "default",
            fields: &[
                ("level", "warn"),
                ("msg", "GET /health 200 WARN slow"),
                ("pipeline", "default"),
                ("service", "log-capturer"),
            ],
            message_out: "GET /health 200 WARN slow",
            timestamp_ns: 7,
        },
        Case {
            source: labels(&[("file_path", "/var/log/syslog")]),
            source_type: "file",
            path: Some("/var/log/syslog"),
            message: "2024-01-15T12:30:00.000001+02:00 host1 sshd[42]: error: auth failed",
            pipeline: "syslog",
            fields: &[
                ("_temp_hostname", "host1"),
                ("_temp_process", "sshd[42]"),
                ("_temp_time", "2024-01-15T12:30:00.000001+02:00"),
                ("component", "syslog"),
                ("level", "error"),
                ("msg", "error: auth failed"),
                ("service", "system"),
            ],
            message_out: "2024-01-15T12:30:00.000001+02:00 host1 sshd[42]: error: auth failed",
            timestamp_ns: T + 1_000,
        },
    ]
}

fn run_cases(p: &Processor, cases: &[Case]) {
    for case in cases {
        let id = p
            .select(&Source {
                source_type: case.source_type,
                labels: &case.source,
                path: case.path,
            })
            .unwrap_or_else(|| panic!("{:?}: no pipeline", case.message));
        assert_eq!(p.name(id), case.pipeline, "{:?}", case.message);
        let mut e = entry(
            case.message,
            StreamKind::Stdout,
            case.source_type,
            &case.source,
        );
        p.apply(id, &mut e, case.path.unwrap_or(""));
        let mut want = case.source.clone();
        want.extend(labels(case.fields));
        assert_eq!(e.label_map(), want, "{:?}", case.message);
        assert_eq!(e.message, case.message_out.as_bytes(), "{:?}", case.message);
        assert_eq!(e.timestamp_ns, case.timestamp_ns, "{:?}", case.message);
    }
}

fn check_go_pipelines(path: &Path) {
    let p = load(path);
    let names: Vec<&str> = p.pipelines().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "default",
            "mysql",
            "freeswitch",
            "grafana",
            "prometheus",
            "json_logs",
            "syslog",
            "kernel",
            "file_monitoring"
        ]
    );
    let steps: usize = p.pipelines().iter().map(|p| p.steps.len()).sum();
    assert_eq!(steps, 46);
    run_cases(&p, &go_cases());
    // source_mapping in file order: syslog's `source_type:file` comes before
    // file_monitoring's patterns, so every file goes through syslog.
    let auth = labels(&[]);
    let id = p
        .select(&Source {
            source_type: "file",
            labels: &auth,
            path: Some("/var/log/auth.log"),
        })
        .unwrap();
    assert_eq!(p.name(id), "syslog");
    assert_eq!(
        p.stats().failed.load(Relaxed),
        1,
        "the mysql line without a time"
    );
}

#[test]
fn go_pipelines_fixture_golden() {
    check_go_pipelines(&fixture("go_pipelines.yaml"));
}

/// The Go team's own file, when it is there; says on stderr whether it ran.
#[test]
fn go_reference_pipelines_golden() {
    use std::io::Write;
    let path = reference();
    if !path.is_file() {
        let _ = writeln!(
            std::io::stderr(),
            "processing golden tests: {} not found: ran on tests/fixtures/go_pipelines.yaml only",
            path.display()
        );
        return;
    }
    check_go_pipelines(&path);
}

/// The fixture is the Go file unchanged.
#[test]
fn go_pipelines_fixture_is_the_reference_file() {
    if reference().is_file() {
        assert_eq!(
            std::fs::read(reference()).unwrap(),
            std::fs::read(fixture("go_pipelines.yaml")).unwrap()
        );
    }
}

/// Every step type of the project's fixture, the multiline step through a [`Grouper`] as the
/// capture thread drives it.
#[test]
fn every_step_type_golden() {
    let p = load(&fixture("pipelines_all_steps.yaml"));
    let java = container("java-app");
    let id = p
        .select(&Source {
            source_type: "docker",
            labels: &java,
            path: None,
        })
        .unwrap();
    assert_eq!(p.name(id), "java");
    let spec = p.multiline(id).expect("java joins lines").clone();
    assert_eq!(spec.max_wait, Duration::from_millis(500));
    let mut g = Grouper::new(spec);
    let now = Instant::now();
    let lines = [
        (
            StreamKind::Stdout,
            "2024-01-15 12:30:00,125 ERROR [main] \x1b[31mjob failed\x1b[0m",
        ),
        (
            StreamKind::Stderr,
            "2024-01-15 12:30:01,000 WARN [gc] pause",
        ),
        (StreamKind::Stdout, "java.lang.IllegalStateException: boom"),
        (
            StreamKind::Stdout,
            "\tat com.example.Main.run(Main.java:10)",
        ),
        (
            StreamKind::Stdout,
            "2024-01-15 12:30:02,000 INFO [main] next",
        ),
    ];
    for (i, (stream, text)) in lines.iter().enumerate() {
        g.push(entry(text, *stream, "docker", &java), i, now);
    }
    g.finish();
    let released = g.release();
    assert_eq!(released.lines, 5);
    assert_eq!(released.position, Some(4));
    let mut out = released.entries;
    assert_eq!(out.len(), 3);
    for e in &mut out {
        p.apply(id, e, "");
    }
    let trace = &out[0];
    assert_eq!(
        trace.message,
        "2024-01-15 12:30:00,125 ERROR [main] job failed\njava.lang.IllegalStateException: boom\n\tat com.example.Main.run(Main.java:10)"
            .as_bytes()
    );
    // 12:30:00.125 at +02:00 = 10:30:00.125Z
    assert_eq!(trace.timestamp_ns, T + 125_000_000);
    let mut want = java.clone();
    want.extend(labels(&[
        ("_temp_time", "2024-01-15 12:30:00,125"),
        ("exception", "java.lang.IllegalStateException"),
        ("level", "error"),
        ("logged_at", "2024-01-15T10:30:00.125Z"),
        // `.` stops at the first newline: the head line's text.
        ("msg", "job failed"),
        ("service", "java-app"),
        ("summary", "error: job failed"),
    ]));
    assert_eq!(trace.label_map(), want);
    assert_eq!(out[1].stream, StreamKind::Stderr);
    assert_eq!(out[1].label("level").unwrap(), "warn");
    assert_eq!(out[2].label("msg").unwrap(), "next");

    // json_parse flattens; field_remove; an entry that is not JSON goes out as it came.
    let json = container("json-logger");
    let id = p
        .select(&Source {
            source_type: "docker",
            labels: &json,
            path: None,
        })
        .unwrap();
    assert_eq!(p.name(id), "json");
    let mut e = entry(
        r#"{"level":"info","msg":"ok","http":{"status":200,"path":"/x"},"trace_id":"t1","tags":["a"],"gone":null}"#,
        StreamKind::Stdout,
        "docker",
        &json,
    );
    p.apply(id, &mut e, "");
    let mut want = json.clone();
    want.extend(labels(&[
        ("gone", ""),
        ("http.path", "/x"),
        ("http.status", "200"),
        ("level", "info"),
        ("msg", "ok"),
        ("service", "json"),
        ("tags", "[\"a\"]"),
    ]));
    assert_eq!(e.label_map(), want);
    let failed = p.stats().failed.load(Relaxed);
    let mut e = entry("plain text", StreamKind::Stdout, "docker", &json);
    p.apply(id, &mut e, "");
    assert_eq!(e.label_map(), json);
    assert_eq!(p.stats().failed.load(Relaxed), failed + 1);

    // Unmapped: default.
    let other = container("web");
    let id = p
        .select(&Source {
            source_type: "docker",
            labels: &other,
            path: None,
        })
        .unwrap();
    let mut e = entry("an ERROR here", StreamKind::Stdout, "docker", &other);
    p.apply(id, &mut e, "");
    let mut want = other.clone();
    want.extend(labels(&[("level", "error"), ("service", "other")]));
    assert_eq!(e.label_map(), want);
}

/// `field_add` templates: Go wrote `{{message}}` literally.
#[test]
fn field_add_substitutes_source_templates() {
    let file = r#"
pipelines:
  - name: files
    steps:
      - name: meta
        type: field_add
        config:
          fields:
            file_path: "{{source_path}}"
            file_name: "{{source_filename}}"
            msg: "{{message}}"
            where: "{{host}}/{{source_filename}}"
source_mapping:
  files: ["source_type:file"]
"#;
    let p = Processor::from_str(file, Path::new("inline.yaml"), true).unwrap();
    let l = labels(&[("host", "h1")]);
    let id = p
        .select(&Source {
            source_type: "file",
            labels: &l,
            path: Some("/var/log/app/x.log"),
        })
        .unwrap();
    let mut e = entry("hello", StreamKind::Stdout, "file", &l);
    p.apply(id, &mut e, "/var/log/app/x.log");
    let want: BTreeMap<String, String> = labels(&[
        ("file_name", "x.log"),
        ("file_path", "/var/log/app/x.log"),
        ("host", "h1"),
        ("msg", "hello"),
        ("where", "h1/x.log"),
    ]);
    assert_eq!(e.label_map(), want);
}

#[path = "support/scratch.rs"]
mod scratch;

/// A pipelines file the program cannot run stops the start: exit 2, naming the file, the
/// pipeline, the step and the key.
#[test]
fn a_bad_pipelines_file_stops_the_start_naming_where() {
    let dir = scratch::Scratch::new("processing", "badfile");
    let bad = dir.0.join("pipelines.yaml");
    std::fs::write(
        &bad,
        "pipelines:\n  - name: app\n    steps:\n      - name: when\n        type: timestamp_parse\n        \
         config:\n          format: \"Jan 02 15:04\"\n",
    )
    .unwrap();
    let config = dir.config(
        "",
        &format!(
            "processing:\n  enabled: true\n  pipelines_file: {}\n",
            bad.display()
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_log_capturer"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let want = format!(
        "{}: pipelines[0] \"app\" step \"when\" config.format: layout \"Jan 02 15:04\": the Go token \"Jan\"",
        bad.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
}
