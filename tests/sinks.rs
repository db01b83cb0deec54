//! Sinks: golden output bytes, file names, appends, and Loki against an in-test HTTP receiver.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use log_capturer::decode::timestamp::parse_rfc3339_nanos;
use log_capturer::decode::StreamKind;
use log_capturer::pipeline::entry::{Labels, LogEntry};
use log_capturer::sink::format::{json_line, GoLayout, TextFormatter};
use log_capturer::sink::{
    BlackholeSink, LocalFileOptions, LocalFileSink, LokiAuth, LokiOptions, LokiSink, OutputFormat,
    Sink, SinkError, StdoutSink, TextFormatOptions,
};
use serde_json::{json, Value};

fn ts(s: &str) -> i64 {
    parse_rfc3339_nanos(s.as_bytes()).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> Arc<Labels> {
    Arc::new(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn web_labels() -> Arc<Labels> {
    labels(&[
        ("compose_service", "web"),
        (
            "container_id",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        ("container_name", "demo-web-1"),
        ("image", "busybox:latest"),
    ])
}

fn entry(time: &str, msg: &[u8], stream: StreamKind, labels: &Arc<Labels>) -> LogEntry {
    LogEntry {
        fields: Default::default(),
        timestamp_ns: ts(time),
        processed_at_ns: ts("2026-11-27T22:23:12.8Z"),
        message: Bytes::copy_from_slice(msg),
        stream,
        source_type: "docker",
        source_id: Arc::from("0123456789ab"),
        labels: Arc::clone(labels),
    }
}

/// The two golden entries and their exact JSON lines.
fn golden() -> (Vec<LogEntry>, &'static str) {
    let web = web_labels();
    let other = labels(&[("a", "1"), ("container_name", "x"), ("z", "<&>")]);
    let entries = vec![
        entry(
            "2026-11-27T22:23:12.750760435Z",
            b"GET /a?b=1&c=<x> \"ok\"\t\xff",
            StreamKind::Stdout,
            &web,
        ),
        entry(
            "2026-11-27T22:23:13Z",
            b"caf\xc3\xa9 \\ done",
            StreamKind::Stderr,
            &other,
        ),
    ];
    let expected = concat!(
        r#"{"labels":{"compose_service":"web","container_id":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","container_name":"demo-web-1","image":"busybox:latest","stream":"stdout"},"#,
        r#""message":"GET /a?b=1\u0026c=\u003cx\u003e \"ok\"\t\ufffd","processed_at":"2026-11-27T22:23:12.8Z","source_id":"0123456789ab","source_type":"docker","timestamp":"2026-11-27T22:23:12.750760435Z"}"#,
        "\n",
        r#"{"labels":{"a":"1","container_name":"x","stream":"stderr","z":"\u003c\u0026\u003e"},"message":"café \\ done","processed_at":"2026-11-27T22:23:12.8Z","source_id":"0123456789ab","source_type":"docker","timestamp":"2026-11-27T22:23:13Z"}"#,
        "\n",
    );
    (entries, expected)
}

#[test]
fn json_line_golden_bytes() {
    let (entries, expected) = golden();
    let mut out = Vec::new();
    for e in &entries {
        json_line(&mut out, e);
    }
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    // Valid JSON, and the message decodes back (with the invalid byte replaced).
    let first: Value = serde_json::from_str(expected.lines().next().unwrap()).unwrap();
    assert_eq!(first["message"], "GET /a?b=1&c=<x> \"ok\"\t\u{fffd}");
}

#[test]
fn file_sink_json_golden_file() {
    let dir = tempdir("golden");
    let mut sink = LocalFileSink::new(LocalFileOptions {
        filename_pattern: "all.log".into(),
        ..LocalFileOptions::new(&*dir)
    })
    .unwrap();
    let (entries, expected) = golden();
    sink.write_batch(&entries).unwrap();
    sink.flush().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("all.log")).unwrap(),
        expected
    );
    assert_eq!(sink.name(), "local_file");
}

#[test]
fn stdout_sink_writes_json_lines() {
    let (entries, expected) = golden();
    let mut sink = StdoutSink::with_writer(Vec::new());
    sink.write_batch(&entries[..1]).unwrap();
    sink.write_batch(&[]).unwrap();
    sink.write_batch(&entries[1..]).unwrap();
    sink.flush().unwrap();
    assert_eq!(sink.name(), "stdout");
    assert_eq!(String::from_utf8(sink.into_inner()).unwrap(), expected);
}

#[test]
fn text_format_with_go_layout() {
    let (entries, _) = golden();
    let mut labels = (*web_labels()).clone();
    labels.insert("service".into(), "api".into());
    labels.insert("level".into(), "info".into());
    let mut e = entries[0].clone();
    e.labels = Arc::new(labels);
    e.message = Bytes::from_static(b"plain \xff bytes");

    let f = TextFormatter::new(TextFormatOptions {
        include_timestamp: true,
        timestamp_format: "2006-01-02 15:04:05.000".into(),
        include_labels: true,
        field_separator: " | ".into(),
        raw_message_only: false,
    });
    let mut out = Vec::new();
    f.line(&mut out, &e);
    assert_eq!(
        out,
        b"2026-11-27 22:23:12.750 | [DOCKER:0123456789ab] | {container_name=demo-web-1,level=info,service=api} | plain \xff bytes\n"
    );

    // The Go sample config: no timestamp, no labels.
    let f = TextFormatter::new(TextFormatOptions {
        include_timestamp: false,
        include_labels: false,
        field_separator: String::new(),
        ..TextFormatOptions::default()
    });
    out.clear();
    f.line(&mut out, &e);
    assert_eq!(out, b"[DOCKER:0123456789ab] | plain \xff bytes\n");

    // Default layout, RFC3339 names, other separator.
    let f = TextFormatter::new(TextFormatOptions {
        include_timestamp: true,
        field_separator: "\t".into(),
        ..TextFormatOptions::default()
    });
    out.clear();
    f.line(&mut out, &e);
    assert_eq!(
        out,
        b"2026-11-27T22:23:12.750Z\t[DOCKER:0123456789ab]\tplain \xff bytes\n"
    );

    let f = TextFormatter::new(TextFormatOptions {
        raw_message_only: true,
        ..TextFormatOptions::default()
    });
    out.clear();
    f.line(&mut out, &e);
    assert_eq!(out, b"plain \xff bytes\n");

    let t = e.timestamp_ns;
    assert_eq!(GoLayout::parse("RFC3339").format(t), "2026-11-27T22:23:12Z");
    assert_eq!(
        GoLayout::parse("RFC3339Nano").format(t),
        "2026-11-27T22:23:12.750760435Z"
    );
    assert_eq!(
        GoLayout::parse("02/01/2006 15:04:05.000000 MST Z07:00").format(t),
        "27/11/2026 22:23:12.750760 UTC Z"
    );
}

#[test]
fn file_sink_text_output() {
    let dir = tempdir("text");
    let mut sink = LocalFileSink::new(LocalFileOptions {
        filename_pattern: "logs-{date}-{hour}.log".into(),
        output_format: OutputFormat::from_go("TEXT"),
        ..LocalFileOptions::new(&*dir)
    })
    .unwrap();
    let (entries, _) = golden();
    sink.write_batch(&entries).unwrap();
    sink.flush().unwrap();
    assert_eq!(
        std::fs::read(dir.join("logs-2026-11-27-22.log")).unwrap(),
        b"[DOCKER:0123456789ab] | GET /a?b=1&c=<x> \"ok\"\t\xff\n[DOCKER:0123456789ab] | caf\xc3\xa9 \\ done\n"
    );
}

#[test]
fn filename_patterns_and_sanitizing() {
    let opts = LocalFileOptions::new("/unused");
    let web = web_labels();
    let e = entry(
        "2026-11-27T22:23:12.750760435Z",
        b"m",
        StreamKind::Stdout,
        &web,
    );
    // Go default name: {date}_{source_type}_{name}.log, date of the log timestamp in UTC.
    assert_eq!(opts.file_name(&e), "2026-11-27_docker_demo-web-1.log");

    let odd = labels(&[("container_name", "/a b:c/d\\e*f?g\"h<i>j|k")]);
    let e2 = entry(
        "2026-11-27T23:59:59.999999999Z",
        b"m",
        StreamKind::Stdout,
        &odd,
    );
    assert_eq!(
        opts.file_name(&e2),
        "2026-11-27_docker_a_b_c_d_e_f_g_h_i_j_k.log"
    );
    let mut e3 = e2.clone();
    e3.timestamp_ns += 1; // next UTC day
    assert_eq!(
        opts.file_name(&e3),
        "2026-11-28_docker_a_b_c_d_e_f_g_h_i_j_k.log"
    );

    // No name at all: the part is left out.
    let none = labels(&[]);
    let e4 = entry("2026-01-05T01:02:03Z", b"m", StreamKind::Stdout, &none);
    assert_eq!(opts.file_name(&e4), "2026-01-05_docker.log");

    // Patterns with placeholders.
    let p = |pat: &str| LocalFileOptions {
        filename_pattern: pat.into(),
        ..LocalFileOptions::new("/unused")
    };
    assert_eq!(
        p("logs-{date}-{hour}.log").file_name(&e),
        "logs-2026-11-27-22.log"
    );
    assert_eq!(
        p("{nomedocontainer}-{idcontainer}-{date}.log").file_name(&e),
        "demo-web-1-0123456789ab-2026-11-27.log"
    );
    assert_eq!(
        p("{nomedocontainer}_{hour}.log").file_name(&e2),
        "a_b_c_d_e_f_g_h_i_j_k_23.log"
    );
    // Without labels: the id falls back to the source id; the Go "unknown" names otherwise.
    assert_eq!(
        p("{nomedocontainer}-{idcontainer}-{nomedoarquivomonitorado}.log").file_name(&e4),
        "unknown-container-0123456789ab-unknown-file.log"
    );
    assert_eq!(
        p("{source_type}-{name}.log").file_name(&e),
        "docker-demo-web-1.log"
    );

    // Pattern per source type; file sources use the monitored file's name without extension.
    let per_type = LocalFileOptions {
        filename_pattern: "logs-{date}-{hour}.log".into(),
        filename_pattern_containers: "logs-{nomedocontainer}-{date}-{hour}.log".into(),
        filename_pattern_files: "logs-{nomedoarquivomonitorado}-{date}-{hour}.log".into(),
        ..LocalFileOptions::new("/unused")
    };
    assert_eq!(per_type.file_name(&e), "logs-demo-web-1-2026-11-27-22.log");
    let fl = labels(&[("file_path", "/var/log/my app.log")]);
    let mut fe = entry("2026-11-27T08:00:00Z", b"m", StreamKind::Stdout, &fl);
    fe.source_type = "file";
    assert_eq!(per_type.file_name(&fe), "logs-my_app-2026-11-27-08.log");
    fe.source_type = "api";
    assert_eq!(per_type.file_name(&fe), "logs-2026-11-27-08.log");
}

#[test]
fn file_sink_appends_across_batches_and_reopen_and_never_deletes() {
    let dir = tempdir("append");
    std::fs::write(dir.join("unrelated.log"), b"keep me\n").unwrap();
    std::fs::write(dir.join("old.log.1"), b"keep me too\n").unwrap();
    let web = web_labels();
    let lines = |from: usize, to: usize| -> Vec<LogEntry> {
        (from..to)
            .map(|i| {
                let mut e = entry(
                    "2026-11-27T22:23:12Z",
                    format!("line {i}").as_bytes(),
                    StreamKind::Stdout,
                    &web,
                );
                e.timestamp_ns += i as i64;
                e
            })
            .collect()
    };
    let opts = LocalFileOptions::new(dir.join("nested/out"));
    let path;
    {
        let mut sink = LocalFileSink::new(opts.clone()).unwrap();
        path = sink.path_for(&lines(0, 1)[0]);
        sink.write_batch(&lines(0, 3)).unwrap();
        sink.write_batch(&lines(3, 5)).unwrap();
        sink.flush().unwrap();
    }
    {
        let mut sink = LocalFileSink::new(opts).unwrap();
        sink.write_batch(&lines(5, 7)).unwrap();
        sink.flush().unwrap();
        assert_eq!(sink.written().0, 2);
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let got: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["message"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let want: Vec<String> = (0..7).map(|i| format!("line {i}")).collect();
    assert_eq!(got, want);
    assert_eq!(
        path.file_name().unwrap(),
        "2026-11-27_docker_demo-web-1.log"
    );
    assert_eq!(
        std::fs::read(dir.join("unrelated.log")).unwrap(),
        b"keep me\n"
    );
    assert_eq!(
        std::fs::read(dir.join("old.log.1")).unwrap(),
        b"keep me too\n"
    );
}

#[test]
fn file_sink_bounds_open_handles() {
    let dir = tempdir("lru");
    let mut sink = LocalFileSink::new(LocalFileOptions {
        max_open_files: 2,
        ..LocalFileOptions::new(&*dir)
    })
    .unwrap();
    let all: Vec<Arc<Labels>> = (0..5)
        .map(|i| labels(&[("container_name", &format!("c{i}"))]))
        .collect();
    for round in 0..3 {
        let batch: Vec<LogEntry> = all
            .iter()
            .map(|l| {
                entry(
                    "2026-11-27T10:00:00Z",
                    format!("r{round}").as_bytes(),
                    StreamKind::Stdout,
                    l,
                )
            })
            .collect();
        sink.write_batch(&batch).unwrap();
        assert!(sink.open_files() <= 2);
    }
    sink.flush().unwrap();
    for i in 0..5 {
        let text =
            std::fs::read_to_string(dir.join(format!("2026-11-27_docker_c{i}.log"))).unwrap();
        assert_eq!(text.lines().count(), 3, "c{i}");
    }
}

#[test]
fn blackhole_counts() {
    let mut sink = BlackholeSink::new();
    let counters = sink.counters();
    let (entries, _) = golden();
    sink.write_batch(&entries).unwrap();
    sink.write_batch(&entries[..1]).unwrap();
    sink.write_batch(&[]).unwrap();
    sink.flush().unwrap();
    let bytes = (2 * entries[0].message.len() + entries[1].message.len()) as u64;
    assert_eq!(
        (counters.entries(), counters.bytes(), counters.batches()),
        (3, bytes, 2)
    );
    assert_eq!(sink.name(), "blackhole");
}

// ---- Loki against an in-test receiver ----

#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    fn json(&self) -> Value {
        let raw = if self.header("content-encoding") == Some("gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&self.body[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            self.body.clone()
        };
        serde_json::from_slice(&raw).unwrap()
    }
}

/// Serves one connection per answer (status, extra headers, body), then stops.
fn receiver(answers: Vec<(u16, &'static str, &'static str)>) -> (String, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for (status, extra, body) in answers {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let req = read_request(&stream);
            let mut stream = stream;
            let answer = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).unwrap();
            let _ = stream.flush();
            tx.send(req).unwrap();
        }
    });
    (url, rx)
}

fn read_request(stream: &TcpStream) -> Request {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap().to_string();
    let path = parts.next().unwrap().to_string();
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers["content-length"].parse().unwrap();
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    Request {
        method,
        path,
        headers,
        body,
    }
}

#[test]
fn loki_small_push_format_headers_and_labels() {
    let (url, rx) = receiver(vec![(204, "", "")]);
    let mut opts = LokiOptions::new(url);
    opts.tenant_id = "team-a".into();
    opts.auth = LokiAuth {
        r#type: "basic".into(),
        username: "user".into(),
        password: "pa:ss".into(),
        token: String::new(),
    };
    opts.headers.insert("X-Extra".into(), "yes".into());
    opts.default_labels.insert("env".into(), "prod".into());
    opts.default_labels
        .insert("service".into(), "default-svc".into());
    let mut sink = LokiSink::new(opts).unwrap();

    let web = web_labels();
    let other = labels(&[
        ("container_name", "db"),
        ("com.docker.compose.project", "demo"),
        ("9lives", "x"),
        ("service", "pg"),
        ("temp_x", "drop"),
    ]);
    let batch = vec![
        entry(
            "2026-11-27T22:23:12.000000001Z",
            b"one",
            StreamKind::Stdout,
            &web,
        ),
        entry(
            "2026-11-27T22:23:12.000000002Z",
            b"two <b>",
            StreamKind::Stderr,
            &web,
        ),
        entry(
            "2026-11-27T22:23:12.000000003Z",
            b"three",
            StreamKind::Stdout,
            &other,
        ),
        entry(
            "2026-11-27T22:23:12.000000004Z",
            b"four\"\xff",
            StreamKind::Stdout,
            &web,
        ),
    ];
    sink.write_batch(&batch).unwrap();
    let req = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/loki/api/v1/push");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("content-encoding"), None);
    assert_eq!(req.header("x-scope-orgid"), Some("team-a"));
    assert_eq!(req.header("x-extra"), Some("yes"));
    // base64("user:pa:ss")
    assert_eq!(req.header("authorization"), Some("Basic dXNlcjpwYTpzcw=="));
    let t = ts("2026-11-27T22:23:12Z");
    assert_eq!(
        req.json(),
        json!({"streams": [
            {"stream": {"compose_service": "web", "container_name": "demo-web-1", "env": "prod",
                        "service": "default-svc", "stream": "stdout"},
             "values": [[(t + 1).to_string(), "one"], [(t + 4).to_string(), "four\"\u{fffd}"]]},
            {"stream": {"compose_service": "web", "container_name": "demo-web-1", "env": "prod",
                        "service": "default-svc", "stream": "stderr"},
             "values": [[(t + 2).to_string(), "two <b>"]]},
            {"stream": {"com_docker_compose_project": "demo", "container_name": "db", "env": "prod",
                        "label_9lives": "x", "service": "pg", "stream": "stdout"},
             "values": [[(t + 3).to_string(), "three"]]}
        ]})
    );
    let stats = sink.stats();
    assert_eq!((stats.batches_sent(), stats.entries_sent()), (1, 4));
    assert_eq!(sink.name(), "loki");
}

#[test]
fn loki_big_push_is_gzipped_with_bearer_and_default_service() {
    let (url, rx) = receiver(vec![(200, "", "")]);
    let mut opts = LokiOptions::new(url);
    opts.push_endpoint = "/custom/push".into();
    opts.auth = LokiAuth {
        r#type: "bearer".into(),
        token: "tok123".into(),
        ..Default::default()
    };
    let mut sink = LokiSink::new(opts).unwrap();
    let l = labels(&[
        ("container_name", "big"),
        ("container_id", "abc"),
        ("image", "i"),
    ]);
    let batch: Vec<LogEntry> = (0..50)
        .map(|i| {
            let mut e = entry(
                "2026-11-27T00:00:00Z",
                format!("line {i:03} {}", "x".repeat(80)).as_bytes(),
                StreamKind::Stdout,
                &l,
            );
            e.timestamp_ns += i;
            e
        })
        .collect();
    assert!(sink.push_body(&batch).len() >= 1024);
    sink.write_batch(&batch).unwrap();
    let req = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(req.path, "/custom/push");
    assert_eq!(req.header("content-encoding"), Some("gzip"));
    assert_eq!(req.header("authorization"), Some("Bearer tok123"));
    assert_eq!(req.header("x-scope-orgid"), None);
    assert!(req.body.len() < 1024, "compressed {}", req.body.len());
    let body = req.json();
    let streams = body["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1);
    assert_eq!(
        streams[0]["stream"],
        json!({"container_name": "big", "service": "ssw-log-capturer", "stream": "stdout"})
    );
    let values = streams[0]["values"].as_array().unwrap();
    assert_eq!(values.len(), 50);
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v[0], (batch[i].timestamp_ns).to_string());
        assert_eq!(v[1], String::from_utf8(batch[i].message.to_vec()).unwrap());
    }
}

#[test]
fn loki_errors_are_classified() {
    let (url, rx) = receiver(vec![
        (500, "", "internal error"),
        (429, "Retry-After: 7\r\n", "ingestion rate limit exceeded"),
        (
            400,
            "",
            "entry with timestamp 2026-11-27 22:23:12 +0000 UTC ignored, reason: 'entry out of order' for stream: {service=\"x\"}",
        ),
        (400, "", "error at least one label pair is required per stream"),
        (204, "", ""),
    ]);
    let mut sink = LokiSink::new(LokiOptions::new(url)).unwrap();
    let web = web_labels();
    let batch = vec![entry(
        "2026-11-27T22:23:12Z",
        b"m",
        StreamKind::Stdout,
        &web,
    )];

    let err = sink.write_batch(&batch).unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.status(), Some(500));
    assert_eq!(err.drop_reason(), None);
    assert!(err.to_string().contains("\"internal error\""), "{err}");

    let err = sink.write_batch(&batch).unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(err.status(), Some(429));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));

    let err = sink.write_batch(&batch).unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.drop_reason(), Some("loki_out_of_order"));
    assert!(
        err.to_string().contains("reason: 'entry out of order'"),
        "{err}"
    );
    assert!(matches!(&err, SinkError::Http { body, .. } if body.contains("entry out of order")));

    let err = sink.write_batch(&batch).unwrap_err();
    assert!(!err.is_retryable());
    assert_eq!(err.drop_reason(), Some("loki_bad_request"));

    sink.write_batch(&batch).unwrap();
    assert_eq!(rx.iter().take(5).count(), 5);

    let stats = sink.stats();
    assert_eq!(stats.failures(), 2);
    assert_eq!((stats.batches_rejected(), stats.entries_rejected()), (2, 2));
    assert_eq!((stats.batches_sent(), stats.entries_sent()), (1, 1));
    assert!(stats
        .last_rejection()
        .unwrap()
        .starts_with("loki_bad_request: 400"));

    // Nothing listening: a connection error, retryable.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut sink = LokiSink::new(LokiOptions::new(closed_url)).unwrap();
    let err = sink.write_batch(&batch).unwrap_err();
    assert!(matches!(err, SinkError::Connection { .. }), "{err}");
    assert!(err.is_retryable());
}

#[test]
fn loki_rejects_bad_url() {
    let err = LokiSink::new(LokiOptions::new("loki:3100")).err().unwrap();
    assert!(!err.is_retryable());
    assert_eq!(err.drop_reason(), Some("config"));
}

/// A fresh directory under the system temp dir, removed when the test ends (kept, and named,
/// when it fails).
fn tempdir(name: &str) -> TempDir {
    let dir =
        std::env::temp_dir().join(format!("log_capturer_sinks_{}_{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    assert!(Path::new(&dir).is_dir());
    TempDir(dir)
}

struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::PathBuf;
    fn deref(&self) -> &std::path::PathBuf {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// --- Pipeline fields (entry.fields beside the shared labels) -------------------------------

/// An entry whose pipeline wrote fields (added before and after `stream` in key order,
/// overrode one label, removed another, wrote `stream` itself) and the same entry with those
/// labels in its map: every sink renders the two to the same bytes.
#[test]
fn pipeline_fields_render_like_the_same_labels_in_the_map() {
    let web = web_labels();
    let plain = entry("2026-11-27T22:23:12Z", b"m", StreamKind::Stdout, &web);
    let mut fielded = plain.clone();
    for (k, v) in [
        ("level", Some("warn")),
        ("container_name", Some("renamed")),
        ("image", None),
        ("a", Some("first")),
        ("stream", Some("not-the-stream")),
        ("zz", Some("last")),
    ] {
        match v {
            Some(v) => fielded.fields.set(k, v.to_string()),
            None => fielded.fields.remove(k),
        }
    }
    assert!(Arc::ptr_eq(&fielded.labels, &web), "the shared map stays");
    let mut flat = plain.clone();
    flat.labels = Arc::new(fielded.label_map());

    let json = |e: &LogEntry| {
        let mut out = Vec::new();
        json_line(&mut out, e);
        String::from_utf8(out).unwrap()
    };
    assert!(
        json(&fielded).starts_with(concat!(
            r#"{"labels":{"a":"first","compose_service":"web","container_id":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","#,
            r#""container_name":"renamed","level":"warn","stream":"stdout","zz":"last"},"message":"m","#
        )),
        "{}",
        json(&fielded)
    );
    assert_eq!(json(&fielded), json(&flat));

    let text = TextFormatter::new(TextFormatOptions {
        include_labels: true,
        ..TextFormatOptions::default()
    });
    let (mut a, mut b) = (Vec::new(), Vec::new());
    text.line(&mut a, &fielded);
    text.line(&mut b, &flat);
    assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
    assert!(String::from_utf8_lossy(&a).contains("{container_name=renamed,level=warn}"));

    let loki = LokiSink::new(LokiOptions::new("http://127.0.0.1:9/loki/api/v1/push")).unwrap();
    assert_eq!(loki.stream_labels(&fielded), loki.stream_labels(&flat));
    // Plain entries of the container share a stream; the fielded one has its own, which an
    // entry with equal labels in another map joins.
    let body = |batch: &[&LogEntry]| {
        let batch: Vec<LogEntry> = batch.iter().map(|e| (*e).clone()).collect();
        String::from_utf8(loki.push_body(&batch)).unwrap()
    };
    let got = body(&[&plain, &fielded, &plain, &flat]);
    assert_eq!(got, body(&[&plain, &flat, &plain, &flat]));
    let v: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["streams"].as_array().unwrap().len(), 2, "{got}");

    let names = LocalFileOptions {
        filename_pattern: "{nomedocontainer}.log".into(),
        ..LocalFileOptions::new("/unused")
    };
    assert_eq!(names.file_name(&fielded), "renamed.log");
    let dir = tempdir("fields");
    let mut sink = LocalFileSink::new(LocalFileOptions {
        filename_pattern: "{nomedocontainer}.log".into(),
        ..LocalFileOptions::new(&*dir)
    })
    .unwrap();
    // Same container, same hour: the name of the previous line must not be reused.
    sink.write_batch(&[plain.clone(), fielded.clone(), plain.clone()])
        .unwrap();
    sink.flush().unwrap();
    let lines = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!((lines("demo-web-1.log"), lines("renamed.log")), (2, 1));
}
