//! Issue 9, section 2: the per-container failure count is reset once dockerd answers a stream,
//! so a stream that breaks after working is reopened after the first backoff step (1 s), not
//! after as many seconds as there were failures before it.
//!
//! A real dockerd cannot be made to refuse a container's log three times and then serve it on
//! demand, so a small in-test daemon does: it answers the version, list and inspect calls, holds
//! the events streams open, refuses the logs request three times (HTTP 500), then answers one
//! with a line and breaks it mid-body. The capturer's log says the delay of every reopen.

use std::fs;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[path = "support/one_container.rs"]
mod one_container;
use one_container::{answer_json, send_line, stream_head, Capturer, Container, FakeEngine};

#[test]
fn a_stream_that_breaks_after_working_is_reopened_after_the_first_backoff_step() {
    let dir = std::env::temp_dir().join(format!("logcap-backoff-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let logs_requests = Arc::new(AtomicU32::new(0));
    let count = logs_requests.clone();
    let engine = FakeEngine::start(
        &dir.join("d.sock"),
        Container {
            id: "5e1f0c0ffee0d15ea5e5b0a710ad0f0ccac1a0b0c0d0e0f1011121314151617a",
            name: "backoff-web",
            started_at: "2026-11-30T00:00:01.000000000Z",
        },
        Arc::new(move |conn, _target, _stop| {
            let n = count.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= 3 || n >= 5 {
                answer_json(
                    conn,
                    "500 Internal Server Error",
                    r#"{"message":"refused on purpose"}"#,
                );
            } else {
                // Answered, one line, then the connection breaks mid-body.
                stream_head(conn);
                send_line(conn, "2026-11-30T00:00:02.000000000Z backoff line\n");
                thread::sleep(Duration::from_millis(200));
            }
        }),
    );
    let mut capturer = Capturer::start(
        &dir,
        &engine,
        "info",
        "  stream_rotation_interval: \"0s\"\n  reconnect_interval: \"60s\"",
    );
    let delays = || -> Vec<String> {
        fs::read_to_string(dir.join("capturer.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split("log stream failed, reopening in ").nth(1))
            .map(|rest| rest.split(':').next().unwrap_or("").to_string())
            .collect()
    };
    // Three refusals back off 1, 2, 3 s; the fourth stream is answered, then breaks.
    let deadline = Instant::now() + Duration::from_secs(30);
    while delays().len() < 4 {
        capturer.assert_running();
        assert!(
            Instant::now() < deadline,
            "4 reopen delays not logged within 30 s: {:?}",
            delays()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(logs_requests.load(Ordering::Relaxed) >= 4);
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
    drop(engine);
    let _ = fs::remove_dir_all(&dir);
}
