//! Fuzz harnesses (proptest: cargo-fuzz needs a nightly toolchain, this project builds on
//! stable): every parser of outside input takes garbage and near-valid input without a panic.
//!
//! - the log stream: HTTP response head, chunked decoding, frame demux, line assembly
//!   (`LogDecoder`, fed in random splits);
//! - dockerd timestamps (parse, prefix, format);
//! - the config loader (YAML text and `SSW_*` values);
//! - the positions file (and resuming from whatever it accepts);
//! - the HTTP API: request heads (`parse_head`) and `POST /api/v1/logs` bodies, with
//!   `Content-Length` or chunked, over a real connection (every request gets an answer, the
//!   server keeps serving).
//!
//! `FUZZ_CASES` sets the cases per target (default 200: a short run in the test command);
//! `scripts/fuzz.sh` runs them long. A failure prints the minimal input proptest found.

#[path = "support/api_state.rs"]
mod api_state;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use log_capturer::api::{self, server::parse_head, ApiOptions};
use log_capturer::config::Config;
use log_capturer::decode::frame::encode_header;
use log_capturer::decode::timestamp::{
    format_rfc3339_nanos, format_since, parse_prefix, parse_rfc3339_nanos,
};
use log_capturer::decode::{DecodeOptions, LogDecoder};
use log_capturer::pipeline::{queue, QueueReceiver, Received};
use log_capturer::sources::docker::resume::ResumeTracker;
use log_capturer::state::positions::{parse_records, MAX_SKIP};

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // Inputs are generated, not read from a persistence file: a failure prints its input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The log stream

/// Bytes that look like a dockerd logs response, then damaged: a head (sometimes odd), a
/// chunked body of frames with timestamps, random bytes flipped, inserted or cut.
fn stream_input() -> impl Strategy<Value = Vec<u8>> {
    let head = prop_oneof![
        Just(
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.multiplexed-stream\r\n\
              Transfer-Encoding: chunked\r\n\r\n"
                .to_string()
        ),
        Just("HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n".to_string()),
        Just("HTTP/1.1 404 Not Found\r\nContent-Length: 29\r\n\r\n".to_string()),
        Just("HTTP/1.0 200 OK\r\n\r\n".to_string()),
        "[ -~\r\n]{0,80}",
    ];
    let frame = (
        0u8..5,
        any::<i64>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(|(stream, ts, text, lie, len)| {
            let mut payload = format_rfc3339_nanos(ts).into_bytes();
            payload.push(b' ');
            payload.extend_from_slice(&text);
            payload.push(b'\n');
            let declared = if lie { len } else { payload.len() as u32 };
            let mut f = encode_header(stream, declared).to_vec();
            f.extend_from_slice(&payload);
            f
        });
    let chunk_size_lie = any::<Option<u16>>();
    (
        head,
        proptest::collection::vec((frame, chunk_size_lie), 0..8),
        any::<bool>(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        any::<Option<usize>>(),
    )
        .prop_map(|(head, frames, last, flips, cut)| {
            let mut out = head.into_bytes();
            for (f, lie) in frames {
                let size = lie.map_or(f.len(), usize::from);
                out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
                out.extend_from_slice(&f);
                out.extend_from_slice(b"\r\n");
            }
            if last {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            for (at, byte) in flips {
                if !out.is_empty() {
                    let i = at % out.len();
                    out[i] = byte;
                }
            }
            if let Some(cut) = cut {
                out.truncate(cut % (out.len() + 1));
            }
            out
        })
}

fn decode_in_pieces(input: &[u8], splits: &[usize], options: DecodeOptions) {
    let mut decoder = LogDecoder::new(options);
    let mut out = Vec::new();
    let mut rest = input;
    let mut fed = 0u64;
    for &s in splits {
        if rest.is_empty() {
            break;
        }
        let n = 1 + s % rest.len();
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        fed += n as u64;
        if let Err(e) = decoder.feed(Bytes::copy_from_slice(piece), &mut out) {
            if let Some(at) = e.offset() {
                assert!(
                    at <= fed,
                    "error offset {at} beyond the {fed} bytes fed: {e}"
                );
            }
            return;
        }
    }
    if !rest.is_empty() {
        fed += rest.len() as u64;
        if let Err(e) = decoder.feed(Bytes::copy_from_slice(rest), &mut out) {
            if let Some(at) = e.offset() {
                assert!(
                    at <= fed,
                    "error offset {at} beyond the {fed} bytes fed: {e}"
                );
            }
            return;
        }
    }
    let _ = decoder.finish(&mut out);
}

proptest! {
    #![proptest_config(cases(200))]

    #[test]
    fn log_stream_garbage(
        input in proptest::collection::vec(any::<u8>(), 0..512),
        splits in proptest::collection::vec(any::<usize>(), 0..16),
        tty in any::<bool>(),
        timestamps in any::<bool>(),
    ) {
        decode_in_pieces(&input, &splits, DecodeOptions { tty, timestamps });
    }

    #[test]
    fn log_stream_damaged(
        input in stream_input(),
        splits in proptest::collection::vec(any::<usize>(), 0..16),
        tty in any::<bool>(),
        timestamps in any::<bool>(),
    ) {
        decode_in_pieces(&input, &splits, DecodeOptions { tty, timestamps });
    }

    // -----------------------------------------------------------------------------------------
    // Timestamps

    #[test]
    fn timestamps(
        raw in proptest::collection::vec(any::<u8>(), 0..48),
        text in "[0-9TZ:.+-]{0,40}",
        ns in any::<i64>(),
    ) {
        let _ = parse_rfc3339_nanos(&raw);
        let _ = parse_rfc3339_nanos(text.as_bytes());
        let _ = parse_prefix(&raw);
        let _ = parse_prefix(text.as_bytes());
        let formatted = format_rfc3339_nanos(ns);
        prop_assert_eq!(parse_rfc3339_nanos(formatted.as_bytes()).ok(), Some(ns), "{}", formatted);
        let _ = format_since(ns);
    }

    // -----------------------------------------------------------------------------------------
    // Config loader

    #[test]
    fn config_text(text in "[ -~\n\t]{0,400}") {
        let _ = Config::from_yaml_str(&text, Path::new("fuzz.yaml"), &|_| None);
    }

    #[test]
    fn config_values(
        entries in proptest::collection::vec((config_key(), yaml_value()), 0..12),
        env in proptest::collection::vec((env_var(), "[ -~]{0,24}"), 0..4),
    ) {
        let mut sections: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for ((section, key), value) in &entries {
            sections.entry(section).or_default().push(format!("{key}: {value}"));
        }
        let mut yaml = String::new();
        for (section, lines) in &sections {
            let mut indent = String::new();
            for part in section.split('.') {
                yaml.push_str(&format!("{indent}{part}:\n"));
                indent.push_str("  ");
            }
            for l in lines {
                yaml.push_str(&format!("{indent}{l}\n"));
            }
        }
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let _ = Config::from_yaml_str(&yaml, Path::new("fuzz.yaml"), &|k| env.get(k).cloned());
    }

    // -----------------------------------------------------------------------------------------
    // Positions file

    #[test]
    fn positions_garbage(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_records(&data);
    }

    #[test]
    fn positions_records(records in proptest::collection::vec(position_record(), 0..6)) {
        let text = format!("{{{}}}", records.join(","));
        if let Ok(parsed) = parse_records(text.as_bytes()) {
            for (id, p) in &parsed {
                prop_assert!(p.skip <= MAX_SKIP, "{}: skip {}", id, p.skip);
                if let Some(resume) = p.resume() {
                    let mut tracker = ResumeTracker::resuming(1_000_000_000, resume);
                    tracker.reopen();
                    for ts in [resume.since_ns, resume.since_ns.saturating_add(1), i64::MAX] {
                        tracker.admit(ts);
                    }
                    let _ = tracker.resume();
                }
            }
        }
    }
}

fn config_key() -> impl Strategy<Value = (&'static str, &'static str)> {
    let keys: &[(&str, &[&str])] = &[
        (
            "app",
            &[
                "log_level",
                "log_format",
                "io_engine",
                "default_configs",
                "name",
            ],
        ),
        (
            "server",
            &[
                "enabled",
                "host",
                "port",
                "auth_token",
                "read_timeout",
                "write_timeout",
                "idle_timeout",
                "max_header_bytes",
                "max_connections",
                "tls_enabled",
            ],
        ),
        ("metrics", &["enabled", "host", "port", "path"]),
        (
            "container_monitor",
            &[
                "enabled",
                "socket_path",
                "include_names",
                "exclude_labels",
                "stream_rotation_interval",
                "stream_idle_timeout",
                "new_containers_from",
                "reconnect_interval",
            ],
        ),
        (
            "dispatcher",
            &["queue_size", "batch_size", "batch_timeout", "queue_sise"],
        ),
        ("positions", &["enabled", "directory", "flush_interval"]),
        (
            "sinks.loki",
            &[
                "enabled",
                "url",
                "batch_size",
                "timeout",
                "headers",
                "default_labels",
            ],
        ),
        (
            "sinks.local_file",
            &["enabled", "directory", "output_format", "filename_pattern"],
        ),
    ];
    proptest::sample::select(keys).prop_flat_map(|(section, names)| {
        proptest::sample::select(names).prop_map(move |k| (section, k))
    })
}

fn yaml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("true".to_string()),
        Just("~".to_string()),
        Just("\"\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("[a, 1, {b: 2}]".to_string()),
        Just("{x: [1], y: z}".to_string()),
        "\"[ -~&&[^\"\\\\]]{0,20}\"",
        "[0-9]{1,25}(ns|us|ms|s|m|h|d)?",
        "-[0-9]{1,6}s",
    ]
}

fn env_var() -> impl Strategy<Value = String> {
    proptest::sample::select(log_capturer::config::ENV_OVERRIDES).prop_map(str::to_string)
}

fn position_record() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("1e300".to_string()),
        Just("-0".to_string()),
        Just("18446744073709551616".to_string()),
    ];
    let time = prop_oneof![
        any::<i64>().prop_map(|ns| format!("\"{}\"", format_rfc3339_nanos(ns))),
        Just("\"0001-01-01T00:00:00Z\"".to_string()),
        Just("null".to_string()),
        "\"[0-9TZ:.+-]{0,30}\"",
    ];
    let field = prop_oneof![
        number.clone().prop_map(|v| format!("\"skip\": {v}")),
        number.clone().prop_map(|v| format!("\"since_ns\": {v}")),
        number
            .clone()
            .prop_map(|v| format!("\"last_log_time_ns\": {v}")),
        number.clone().prop_map(|v| format!("\"log_count\": {v}")),
        number.prop_map(|v| format!("\"restart_count\": {v}")),
        time.clone().prop_map(|v| format!("\"since\": {v}")),
        time.prop_map(|v| format!("\"last_log_time\": {v}")),
        prop_oneof![
            Just("active"),
            Just("stopped"),
            Just("restarted"),
            Just("removed"),
            Just("")
        ]
        .prop_map(|s| format!("\"status\": \"{s}\"")),
        "[a-z_]{1,10}".prop_map(|k| format!("\"{k}\": [1, \"x\"]")),
    ];
    ("[0-9a-f]{1,64}", proptest::collection::vec(field, 0..6))
        .prop_map(|(id, fields)| format!("\"{id}\": {{{}}}", fields.join(", ")))
}

// ---------------------------------------------------------------------------------------------
// HTTP API

/// One API server for every case: the server must keep serving across all of them.
struct Server {
    addr: SocketAddr,
    rx: Mutex<QueueReceiver>,
    _stop: Arc<AtomicBool>,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("logcap-fuzz-{}", std::process::id()));
        let mut config = Config::defaults();
        config.server.enabled = true;
        config.server.host = "127.0.0.1".into();
        config.server.port = 0;
        config.server.read_timeout = Duration::from_secs(2);
        config.metrics.enabled = false;
        let (tx, rx) = queue(1 << 16);
        let shared = api_state::shared(&dir, tx.gauge(), "fuzz");
        let stop = Arc::new(AtomicBool::new(false));
        let options = ApiOptions {
            thread_count: || 20,
            ..ApiOptions::default()
        };
        let servers = api::start_with(&config, shared, Some(tx), stop.clone(), options)
            .expect("server starts");
        let addr = servers.api_addr.unwrap();
        // Never joined: the server lives as long as the test process.
        std::mem::forget(servers);
        Server {
            addr,
            rx: Mutex::new(rx),
            _stop: stop,
        }
    })
}

/// Sends `raw` on a new connection and returns the status of the first answer (None: closed
/// without one).
fn exchange(addr: SocketAddr, raw: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(raw);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
}

fn drain(server: &Server) {
    let rx = server.rx.lock().unwrap();
    while let Received::Batch(b) = rx.recv(Duration::ZERO) {
        rx.release(&b.entries);
    }
}

fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        "[ -~&&[^\"\\\\]]{0,16}".prop_map(|s| format!("\"{s}\"")),
        any::<i64>().prop_map(|ns| format!("\"{}\"", format_rfc3339_nanos(ns))),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec(("[a-z]{1,6}", inner), 0..4).prop_map(|v| {
                let fields: Vec<String> =
                    v.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

fn ingest_body() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("message"),
        Just("level"),
        Just("source_type"),
        Just("source_id"),
        Just("labels"),
        Just("timestamp"),
        Just("other"),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..128),
        proptest::collection::vec((field, json_value()), 0..7).prop_map(|fields| {
            let body: Vec<String> = fields
                .into_iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}", body.join(",")).into_bytes()
        }),
    ]
}

proptest! {
    #![proptest_config(cases(200))]

    #[test]
    fn request_heads(
        raw in proptest::collection::vec(any::<u8>(), 0..256),
        text in "[A-Z]{0,7} /[ -~]{0,30} HTTP/1\\.[0-9]\r\n([A-Za-z-]{1,12}: [ -~]{0,20}\r\n){0,5}\r\n",
    ) {
        let _ = parse_head(&raw, 1024);
        let _ = parse_head(text.as_bytes(), 1024);
        let _ = parse_head(text.as_bytes(), 16);
    }
}

proptest! {
    // Each case is a connection: fewer by default.
    #![proptest_config(cases(100))]

    #[test]
    fn post_logs_bodies_always_get_an_answer(
        body in ingest_body(),
        chunks in proptest::option::of(proptest::collection::vec(1usize..24, 0..8)),
    ) {
        let s = server();
        let raw = match &chunks {
            // Content-Length framing.
            None => {
                let mut raw = format!(
                    "POST /api/v1/logs HTTP/1.1\r\nHost: f\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                raw.extend_from_slice(&body);
                raw
            }
            // Chunked framing, cut at the given sizes.
            Some(sizes) => {
                let mut raw =
                    b"POST /api/v1/logs HTTP/1.1\r\nHost: f\r\nTransfer-Encoding: chunked\r\n\r\n"
                        .to_vec();
                let mut rest = &body[..];
                let mut sizes = sizes.iter().copied();
                while !rest.is_empty() {
                    let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
                    raw.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                    raw.extend_from_slice(&rest[..n]);
                    raw.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                }
                raw.extend_from_slice(b"0\r\n\r\n");
                raw
            }
        };
        let status = exchange(s.addr, &raw);
        prop_assert!(matches!(status, Some(202 | 400)), "{:?} for {:?}", status,
            String::from_utf8_lossy(&body));
        drain(s);
    }

    #[test]
    fn raw_requests_leave_the_server_serving(
        raw in proptest::collection::vec(any::<u8>(), 0..256),
        prefix in prop_oneof![Just(""), Just("GET / HTTP/1.1\r\n"), Just("POST /api/v1/logs HTTP/1.1\r\nContent-Length: 5\r\n"),
            Just("POST /api/v1/logs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")],
    ) {
        let s = server();
        let mut input = prefix.as_bytes().to_vec();
        input.extend_from_slice(&raw);
        let _ = exchange(s.addr, &input);
        drain(s);
        prop_assert_eq!(exchange(s.addr, b"GET /health HTTP/1.1\r\nHost: f\r\n\r\n"), Some(200));
    }
}
