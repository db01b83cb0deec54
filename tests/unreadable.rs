//! Containers whose logging driver cannot be read (issue 12), on the real dockerd
//! (LOGCAP_DOCKER_SOCK; without it this fails, loudly). dockerd 20.10 answers the logs of a
//! `--log-driver none` container with `501 configured logging driver does not support
//! reading` (dual logging does not cover `none`): the capturer warns once, counts it in
//! `containers_unreadable` and `/health` `checks.containers_unreadable`, never asks again,
//! and reads the container recreated under the same name with a readable driver.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

mod support;
use support::{docker, wait_for};
#[path = "support/capturer.rs"]
mod capturer;
use capturer::{get_json, Env};

/// How long the capturer is watched for a retry it must not make: the code before this
/// change retried after 1 s, then 2 s, so it asked at least twice more within this.
const NO_RETRY_WINDOW: Duration = Duration::from_secs(4);

fn metric(addr: &str, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(addr).expect("connect to the API");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_log_driver_none_container_is_warned_once_counted_and_not_retried() {
    let mut env = Env::new("unreadable");
    let name = env.create(
        "none",
        &["--log-driver", "none"],
        "while true; do echo none-line; sleep 0.1; done",
    );
    docker(&["start", &name]);
    let config = env.config(
        "config.yaml",
        &format!(
            "  enabled: true\n  directory: \"{}/positions\"\n  flush_interval: \"1s\"",
            env.dir.display()
        ),
    );
    let i = env.spawn(&config, &[]);
    let addr = env.api_addr(i);

    let mut health = serde_json::Value::Null;
    wait_for(
        "checks.containers_unreadable",
        Duration::from_secs(20),
        || {
            health = get_json(&addr, "/health");
            health["checks"]["containers_unreadable"]["count"] == 1
        },
    );
    let check = &health["checks"]["containers_unreadable"];
    assert!(
        check["containers"][&name].is_string(),
        "the check names {name}: {check}"
    );
    assert!(
        check["note"].as_str().unwrap_or_default().contains("501"),
        "{check}"
    );
    assert_eq!(metric(&addr, "containers_unreadable"), Some(1.0));

    let opened = get_json(&addr, "/stats")["capture"]["streams_opened"].clone();
    thread::sleep(NO_RETRY_WINDOW);
    let stats = get_json(&addr, "/stats");
    assert_eq!(
        stats["capture"]["streams_opened"], opened,
        "the container was asked for its log again: {stats}"
    );
    assert_eq!(stats["capture"]["stream_errors"], 1, "{stats}");
    let log = env.log(i);
    let warnings = log
        .lines()
        .filter(|l| l.contains(&name) && l.contains("WARN"))
        .count();
    assert_eq!(warnings, 1, "one warning about {name}:\n{log}");
    assert!(log.contains("logging driver cannot be read"), "{log}");

    // Removed: the gauge goes back to 0.
    docker(&["rm", "-f", &name]);
    wait_for(
        "containers_unreadable back to 0",
        Duration::from_secs(20),
        || metric(&addr, "containers_unreadable") == Some(0.0),
    );
    assert_eq!(
        get_json(&addr, "/health")["checks"]["containers_unreadable"]["count"],
        0
    );

    // Recreated under the same name with the default (json-file) driver: read.
    let again = env.create("none", &[], "seq 1 50; sleep 60");
    assert_eq!(again, name);
    docker(&["start", &name]);
    wait_for(
        "the recreated container's 50 lines",
        Duration::from_secs(20),
        || env.captured(&name).len() >= 50,
    );
    let expected: Vec<String> = (1..=50).map(|n| n.to_string()).collect();
    assert_eq!(env.captured(&name), expected);
    assert_eq!(metric(&addr, "containers_unreadable"), Some(0.0));
    env.terminate(i);
}
