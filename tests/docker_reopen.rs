//! Issue 11, section 2, on the real dockerd (LOGCAP_DOCKER_SOCK; without it these tests fail,
//! loudly): reopens ask for a tail window, not `since`, and only hung streams are rotated.
//!
//! - A cut where the first window is too small: the capturer stops after 3000 lines, the
//!   container logs 6000 more, the capturer starts again with no rate known (a first window
//!   of about 3000 lines): the window is widened, and every line arrives exactly once,
//!   counted against `docker logs`.
//! - A stream delivering a line every 100 ms under a 1 s rotation is neither probed nor
//!   reopened; once silent it is probed, and left open (dockerd has nothing newer).

use std::fs;
use std::thread;
use std::time::Duration;

mod support;
use support::{docker, wait_for};
#[path = "support/capturer.rs"]
mod capturer;
use capturer::{get_json, Env, POLL};

fn numbers(range: std::ops::RangeInclusive<usize>) -> Vec<String> {
    range.map(|n| n.to_string()).collect()
}

fn capture_stat(addr: &str, key: &str) -> u64 {
    get_json(addr, "/stats")["capture"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("/stats capture.{key}"))
}

/// `docker logs NAME` (stdout), one message per line.
fn docker_logs(name: &str) -> Vec<String> {
    docker(&["logs", name])
        .lines()
        .map(str::to_string)
        .collect()
}

fn with_rotation(env: &Env, name: &str, positions: &str, rotation: &str) -> std::path::PathBuf {
    let path = env.config(name, positions);
    let yaml = fs::read_to_string(&path).unwrap().replace(
        "stream_rotation_interval: \"30s\"",
        &format!("stream_rotation_interval: \"{rotation}\""),
    );
    fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn a_cut_whose_first_window_is_too_small_reads_every_line_once() {
    let mut env = Env::new("cut");
    let positions = format!(
        "  enabled: true\n  directory: \"{}/positions\"\n  flush_interval: \"1s\"",
        env.dir.display()
    );
    let config = env.config("config.yaml", &positions);
    // Lines 1..1000 three seconds before the rest: older than the resume point minus the
    // overlap, so that a window reaching them is seen to cover it.
    let name = env.create(
        "w",
        &[],
        "seq 1 1000; sleep 3; seq 1001 3000; while [ ! -f /go ]; do usleep 50000; done; \
         seq 3001 9000; while [ ! -f /end ]; do usleep 50000; done; seq 9001 9500",
    );
    let first = env.spawn(&config, &[]);
    docker(&["start", &name]);
    wait_for("3000 lines captured", Duration::from_secs(60), || {
        env.captured(&name).len() >= 3000
    });
    env.terminate(first);
    assert_eq!(env.captured(&name), numbers(1..=3000));

    // 6000 lines while the capturer is down: twice the first window.
    docker(&["exec", &name, "touch", "/go"]);
    wait_for("9000 lines logged", Duration::from_secs(60), || {
        docker_logs(&name).len() >= 9000
    });
    let second = env.spawn(&config, &[]);
    let addr = env.api_addr(second);
    wait_for("9000 lines captured", Duration::from_secs(60), || {
        env.captured(&name).len() >= 9000
    });
    docker(&["exec", &name, "touch", "/end"]);
    env.wait_exited(&name, Duration::from_secs(60));
    wait_for("9500 lines captured", Duration::from_secs(60), || {
        env.captured(&name).len() >= 9500
    });
    let widened = capture_stat(&addr, "windows_widened");
    let before_window = capture_stat(&addr, "lines_before_window");
    let skipped = capture_stat(&addr, "lines_skipped");
    env.terminate(second);

    let got = env.captured(&name);
    eprintln!(
        "cut: {} lines captured, windows widened {widened}, {before_window} lines before the \
         window dropped, {skipped} repeats skipped",
        got.len()
    );
    assert_eq!(got, docker_logs(&name), "against docker logs");
    assert_eq!(got, numbers(1..=9500), "every line once, in order");
    assert!(
        widened >= 1,
        "the first window covered: the cut was not tested"
    );
    // The widened window reached lines 1..1000 (and no `since` query was needed for them).
    assert!(before_window >= 1000, "{before_window}");
}

#[test]
fn a_delivering_stream_is_not_rotated_and_a_quiet_one_is_only_probed() {
    let mut env = Env::new("deliver");
    let config = with_rotation(&env, "config.yaml", "  enabled: false", "1s");
    let name = env.create(
        "d",
        &[],
        "i=1; while [ $i -le 50 ]; do echo $i; usleep 100000; i=$((i+1)); done; \
         while [ ! -f /end ]; do usleep 50000; done",
    );
    let i = env.spawn(&config, &[]);
    let addr = env.api_addr(i);
    docker(&["start", &name]);
    // Five seconds of a line every 100 ms: five rotation intervals.
    let mut samples = 0;
    while env.captured(&name).len() < 45 {
        let stats = get_json(&addr, "/stats");
        let (rotations, probes) = (
            stats["capture"]["rotations"].as_u64().unwrap(),
            stats["capture"]["stream_probes"].as_u64().unwrap(),
        );
        assert_eq!(
            (rotations, probes),
            (0, 0),
            "a delivering stream was rotated or probed after {} lines",
            env.captured(&name).len()
        );
        samples += 1;
        thread::sleep(POLL);
    }
    assert!(samples >= 10, "{samples} samples");
    // Silent now: probed every second, never reopened.
    wait_for("two probes", Duration::from_secs(15), || {
        capture_stat(&addr, "stream_probes") >= 2
    });
    assert_eq!(capture_stat(&addr, "rotations"), 0);
    assert_eq!(capture_stat(&addr, "streams_opened"), 1);
    docker(&["exec", &name, "touch", "/end"]);
    env.wait_exited(&name, Duration::from_secs(30));
    env.terminate(i);
    assert_eq!(env.captured(&name), numbers(1..=50));
}
