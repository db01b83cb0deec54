//! Positions under the daemon binary, on the real dockerd that `bash scripts/test.sh` starts
//! (LOGCAP_DOCKER_SOCK; without it these tests fail, loudly). Issue 9, section 4:
//!
//! - `positions.enabled: false`: nothing is read from the positions directory (a `--once` run
//!   reads every line although an earlier run committed them) and nothing is written there;
//! - the records of removed containers are pruned once their lines are delivered and the
//!   grace period (`positions.max_position_age`, looked at every `cleanup_interval`) is over,
//!   while the record of a container that still exists stays.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::docker;
#[path = "support/capturer.rs"]
mod capturer;
use capturer::{Env, POLL};

/// The records of `dir/container_positions.json`, by short id.
fn records(dir: &Path) -> BTreeMap<String, Value> {
    match fs::read(dir.join("container_positions.json")) {
        Ok(data) => serde_json::from_slice(&data).expect("a positions file"),
        Err(_) => BTreeMap::new(),
    }
}

fn short(name: &str) -> String {
    docker(&["inspect", "-f", "{{.Id}}", name])[..12].to_string()
}

#[test]
fn disabled_positions_are_neither_read_nor_written() {
    let mut env = Env::new("posoff");
    let name = env.create("a", &[], "seq 1 500");
    docker(&["start", &name]);
    env.wait_exited(&name, Duration::from_secs(60));
    let want: Vec<String> = (1..=500).map(|i| i.to_string()).collect();
    let positions = env.dir.join("positions");
    let pos = |enabled: bool, dir: &Path| {
        format!(
            "  enabled: {enabled}\n  directory: \"{}\"\n  flush_interval: \"1s\"",
            dir.display()
        )
    };

    // An earlier run with positions: everything read and committed.
    let on = env.config("on.yaml", &pos(true, &positions));
    let i = env.spawn(&on, &["--once"]);
    env.wait_success(i, Duration::from_secs(60));
    assert_eq!(env.captured(&name), want);
    let committed = fs::read(positions.join("container_positions.json")).expect("committed");
    assert!(records(&positions).contains_key(&short(&name)));

    // Disabled, same directory: the committed position is not read (every line again) and
    // the file is not touched.
    let listing = |dir: &std::path::Path| {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        files.sort();
        files
    };
    // The enabled run left its file and its lock (`log_capturer.lock`, see state_lock).
    let before = listing(&positions);
    assert!(before.iter().any(|f| f == "container_positions.json"));
    let off = env.config("off.yaml", &pos(false, &positions));
    let i = env.spawn(&off, &["--once"]);
    env.wait_success(i, Duration::from_secs(60));
    let twice: Vec<String> = want.iter().chain(&want).cloned().collect();
    assert_eq!(env.captured(&name), twice, "the second run read every line");
    assert_eq!(
        fs::read(positions.join("container_positions.json")).unwrap(),
        committed,
        "the positions file was rewritten"
    );
    assert_eq!(listing(&positions), before, "files added or removed");

    // Disabled, a directory that does not exist: it is not created.
    let absent = env.dir.join("never");
    let off = env.config("off2.yaml", &pos(false, &absent));
    let i = env.spawn(&off, &["--once"]);
    env.wait_success(i, Duration::from_secs(60));
    assert_eq!(env.captured(&name).len(), 1500);
    assert!(!absent.exists(), "{} was created", absent.display());
}

#[test]
fn removed_containers_are_pruned_after_40_create_remove_cycles() {
    const ROUNDS: usize = 4;
    const PER_ROUND: usize = 10;
    const LINES: usize = 20;
    let mut env = Env::new("prune");
    let positions = env.dir.join("positions");
    let config = env.config(
        "config.yaml",
        &format!(
            "  enabled: true\n  directory: \"{}\"\n  flush_interval: \"1s\"\n  \
             cleanup_interval: \"1s\"\n  max_position_age: \"2s\"",
            positions.display()
        ),
    );
    let capturer = env.spawn(&config, &[]);
    env.api_addr(capturer);

    // A container that stays: its record must survive every cleanup.
    let kept = env.create("kept", &[], "echo kept; sleep 600");
    docker(&["start", &kept]);
    let want: Vec<String> = (1..=LINES).map(|i| i.to_string()).collect();
    let mut removed = Vec::new();
    for round in 0..ROUNDS {
        let names: Vec<String> = (0..PER_ROUND)
            .map(|k| {
                let name = env.create(
                    &format!("r{round}c{k}"),
                    &[],
                    &format!("seq 1 {LINES}; sleep 600"),
                );
                docker(&["start", &name]);
                name
            })
            .collect();
        // Removed once their lines are delivered (a removal before would lose them: not
        // what this test is about).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !names.iter().all(|n| env.captured(n).len() >= LINES) {
            assert!(
                Instant::now() < deadline,
                "round {round}: lines not delivered"
            );
            thread::sleep(POLL);
        }
        for name in &names {
            removed.push(short(name));
        }
        let mut rm = vec!["rm", "-f"];
        rm.extend(names.iter().map(String::as_str));
        docker(&rm);
        for name in &names {
            assert_eq!(env.captured(name), want, "{name}: exactly once");
        }
    }
    let kept_id = short(&kept);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = records(&positions);
        let left: Vec<&String> = removed.iter().filter(|id| now.contains_key(*id)).collect();
        if left.is_empty() && now.contains_key(&kept_id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} removed containers still have a record (kept one present: {})",
            left.len(),
            removed.len(),
            now.contains_key(&kept_id)
        );
        thread::sleep(POLL);
    }
    env.terminate(capturer);
    let last = records(&positions);
    assert_eq!(
        last.keys().cloned().collect::<Vec<_>>(),
        [kept_id],
        "only the existing container's record is left"
    );
}

#[test]
fn records_of_containers_removed_while_down_are_pruned() {
    let mut env = Env::new("gone");
    let positions = env.dir.join("positions");
    fs::create_dir_all(&positions).unwrap();
    // A record Go (or an earlier run) left for a container that no longer exists.
    fs::write(
        positions.join("container_positions.json"),
        r#"{
  "0badc0ffee00": {
    "container_id": "0badc0ffee00",
    "since": "2026-11-29T10:00:00Z",
    "last_read": "2026-11-29T10:00:01Z",
    "last_log_time": "2026-11-29T10:00:01Z",
    "log_count": 3,
    "bytes_read": 30,
    "status": "active",
    "restart_count": 0
  }
}"#,
    )
    .unwrap();
    let config = env.config(
        "config.yaml",
        &format!(
            "  enabled: true\n  directory: \"{}\"\n  flush_interval: \"1s\"\n  \
             cleanup_interval: \"1s\"\n  max_position_age: \"1s\"",
            positions.display()
        ),
    );
    let capturer = env.spawn(&config, &[]);
    env.api_addr(capturer);
    let deadline = Instant::now() + Duration::from_secs(20);
    while records(&positions).contains_key("0badc0ffee00") {
        assert!(Instant::now() < deadline, "the record is still there");
        thread::sleep(POLL);
    }
    env.terminate(capturer);
    assert!(records(&positions).is_empty());
}
