//! Issue 11, section 2: a stream that stops delivering while dockerd's log grows (moby#23913,
//! #37646) is found by the `tail=1` probe and reopened from its resume point with a tail
//! window; a silent stream whose probe shows nothing new is left alone.
//!
//! A real dockerd cannot be made to hang a follow stream on demand, so a small in-test daemon
//! does: its log is three lines (O, then A ten seconds later, then B); the first follow stream
//! sends O and A, then nothing (hung). The probe (`follow=0&tail=1`) shows B. Every later
//! stream gets what dockerd would send for its query (`tail`, `since`), then stays open.

use std::fs;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[path = "support/one_container.rs"]
mod one_container;
use one_container::{hold, param, send_line, stream_head, Capturer, Container, FakeEngine};

/// The log: (timestamp in seconds after [`base`], text).
const LOG: [(u32, &str); 3] = [(1, "line O"), (11, "line A"), (12, "line B")];

/// The log's epoch, in Unix seconds: a minute before the test, as for a container logging
/// now. A reopen's tail window is sized from the time between its resume point and now, so
/// a log stamped hours back asks for a window larger than `MAX_TAIL`, and the reopen rightly
/// falls back to `since` (this test once used a fixed date and failed from 07:00 UTC on).
fn base() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| chrono::Utc::now().timestamp() - 60)
}

/// `base + secs` (+ `nanos`) as dockerd writes a timestamp.
fn stamp(secs: u32, nanos: u32) -> String {
    chrono::DateTime::from_timestamp(base() + i64::from(secs), nanos)
        .expect("a time in range")
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[derive(Default)]
struct Seen {
    /// The targets of the logs requests, in order.
    logs: Mutex<Vec<String>>,
    follows: AtomicU32,
    probes: AtomicU32,
}

/// The lines `LOG[..]` as dockerd sends them.
fn send_lines(conn: &mut std::os::unix::net::UnixStream, lines: &[(u32, &str)]) {
    for (secs, text) in lines {
        send_line(conn, &format!("{} {text}\n", stamp(*secs, 0)));
    }
}

#[test]
fn a_hung_stream_is_reopened_once_the_probe_shows_a_newer_line() {
    let dir = std::env::temp_dir().join(format!("logcap-hung-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let engine = FakeEngine::start(
        &dir.join("d.sock"),
        Container {
            id: "6a1f0c0ffee0d15ea5e5b0a710ad0f0ccac1a0b0c0d0e0f1011121314151617b",
            name: "hung-web",
            started_at: Box::leak(stamp(0, 500_000_000).into_boxed_str()),
        },
        Arc::new(move |conn, target, stop| {
            s.logs.lock().unwrap().push(target.to_string());
            let follow = param(target, "follow") == Some("1");
            stream_head(conn);
            if follow && s.follows.fetch_add(1, Ordering::Relaxed) == 0 {
                // The first stream hangs after A, while the log holds B.
                send_lines(conn, &LOG[..2]);
                hold(conn, stop);
                return;
            }
            if !follow {
                s.probes.fetch_add(1, Ordering::Relaxed);
            }
            let tail = param(target, "tail").and_then(|t| t.parse::<usize>().ok());
            let since = param(target, "since")
                .and_then(|s| s.split('.').next()?.parse::<i64>().ok())
                .map(|s| s - base());
            let first = tail.map_or(0, |n| LOG.len().saturating_sub(n));
            let lines: Vec<(u32, &str)> = LOG[first..]
                .iter()
                .copied()
                .filter(|&(t, _)| since.is_none_or(|s| i64::from(t) >= s))
                .collect();
            send_lines(conn, &lines);
            if follow {
                hold(conn, stop);
            } else {
                use std::io::Write;
                let _ = conn.write_all(b"0\r\n\r\n");
            }
        }),
    );
    let mut capturer = Capturer::start(
        &dir,
        &engine,
        "debug",
        "  stream_rotation_interval: \"1s\"\n  stream_idle_timeout: \"0\"\n  reconnect_interval: \"60s\"",
    );
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
        capturer.assert_running();
        let probes_after = seen.probes.load(Ordering::Relaxed);
        if messages().len() >= 3 && probes_after >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not within 30 s: {:?}, {probes_after} probes, requests {:?}",
            messages(),
            seen.logs.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let requests = seen.logs.lock().unwrap().clone();
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
    let text = capturer.log_text();
    assert_eq!(text.matches("delivered nothing for").count(), 1, "{text}");
    drop(capturer);
    drop(engine);
    let _ = fs::remove_dir_all(&dir);
}
