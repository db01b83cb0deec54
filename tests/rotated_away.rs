//! The saved position rotated away while the capturer is down (issue 12), on the real
//! dockerd (LOGCAP_DOCKER_SOCK; without it this fails, loudly).
//!
//! A container logs under `--log-opt max-size=1k --log-opt max-file=2` (about 25 lines on
//! disk at any time). The capturer reads it, is stopped (SIGTERM: positions committed), the
//! container then logs enough for dockerd to delete every file holding the saved position,
//! and the capturer starts again. Before the fix, the restarted stream's first `skip` lines
//! (new ones, stamped after everything delivered) were dropped as repeats.
//!
//! Asserted: every line in `docker logs` when the capturer starts again, and at the end, was
//! delivered, none twice, in
//! order; the only lines missing are lines dockerd deleted while the capturer was down (never
//! in the final `docker logs`, numbered after the last line of the first run). How many is
//! printed: dockerd deleted them, the capturer cannot tell their number.

use std::collections::BTreeSet;
use std::time::Duration;

mod support;
use support::{docker, wait_for};
#[path = "support/capturer.rs"]
mod capturer;
use capturer::Env;

/// Every line is `N tag`, N counting up across the phases: `a` while the capturer runs, `b`
/// the burst while it is down, `c` after it is back.
const SCRIPT: &str = "n=0; \
    while [ ! -e /tmp/phase2 ]; do n=$((n+1)); echo \"$n a\"; sleep 0.2; done; \
    for i in $(seq 1 200); do n=$((n+1)); echo \"$n b\"; done; \
    while [ ! -e /tmp/phase3 ]; do sleep 0.05; done; \
    for i in $(seq 1 5); do n=$((n+1)); echo \"$n c\"; sleep 0.05; done; \
    n=$((n+1)); echo \"$n end\"";

fn numbers(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| {
            l.split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a numbered line: {l:?}"))
        })
        .collect()
}

#[test]
fn a_position_rotated_away_while_down_loses_no_line_still_in_the_log() {
    let mut env = Env::new("rotaway");
    let name = env.create(
        "c",
        &["--log-opt", "max-size=1k", "--log-opt", "max-file=2"],
        SCRIPT,
    );
    let positions = format!(
        "  enabled: true\n  directory: \"{}/positions\"\n  flush_interval: \"1s\"",
        env.dir.display()
    );
    let config = env.config("config.yaml", &positions);
    docker(&["start", &name]);

    // First run: at least 25 lines read (more than dockerd keeps on disk), then SIGTERM.
    let first = env.spawn(&config, &[]);
    wait_for("25 lines in the first run", Duration::from_secs(30), || {
        env.captured(&name).len() >= 25
    });
    env.terminate(first);
    let first_run = numbers(&env.captured(&name));
    let first_max = *first_run.iter().max().unwrap();

    // Down: 200 lines more, every file holding the saved position deleted.
    docker(&["exec", &name, "touch", "/tmp/phase2"]);
    wait_for("the burst to be logged", Duration::from_secs(30), || {
        docker(&["logs", &name]).lines().any(|l| l.ends_with(" b"))
            && numbers(
                &docker(&["logs", &name])
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>(),
            )
            .last()
            .is_some_and(|&n| n >= first_max + 200)
    });
    let on_disk = numbers(
        &docker(&["logs", &name])
            .lines()
            .map(String::from)
            .collect::<Vec<_>>(),
    );
    assert!(
        on_disk[0] > first_max,
        "the saved position is still on disk (oldest line {}, first run read up to {first_max})",
        on_disk[0]
    );

    // Back: the rest, then the container ends.
    let second = env.spawn(&config, &[]);
    docker(&["exec", &name, "touch", "/tmp/phase3"]);
    env.wait_exited(&name, Duration::from_secs(30));
    let last: u64 = numbers(
        &docker(&["logs", &name])
            .lines()
            .map(String::from)
            .collect::<Vec<_>>(),
    )
    .last()
    .copied()
    .unwrap();
    wait_for("the last line delivered", Duration::from_secs(30), || {
        numbers(&env.captured(&name)).contains(&last)
    });
    env.terminate(second);

    let captured = numbers(&env.captured(&name));
    let in_log: Vec<u64> = numbers(
        &docker(&["logs", &name])
            .lines()
            .map(String::from)
            .collect::<Vec<_>>(),
    );
    let set: BTreeSet<u64> = captured.iter().copied().collect();
    assert_eq!(
        set.len(),
        captured.len(),
        "a line delivered twice: {captured:?}"
    );
    assert!(
        captured.windows(2).all(|w| w[0] < w[1]),
        "out of order: {captured:?}"
    );
    // What was on disk when the capturer started again, and what is at the end.
    let dropped: Vec<u64> = on_disk
        .iter()
        .chain(&in_log)
        .copied()
        .filter(|n| !set.contains(n))
        .collect();
    assert!(
        dropped.is_empty(),
        "lines still in docker logs but not delivered: {dropped:?}\ncaptured: {captured:?}"
    );
    let missing: Vec<u64> = (1..=last).filter(|n| !set.contains(n)).collect();
    assert!(
        missing
            .iter()
            .all(|&n| n > first_max && !in_log.contains(&n)),
        "missing lines that were not deleted while the capturer was down: {missing:?}"
    );
    println!(
        "{} lines logged; first run read 1..={first_max}; {} in docker logs at the end; \
         {} delivered; {} deleted by dockerd while the capturer was down (lost upstream); \
         0 duplicates",
        last,
        in_log.len(),
        captured.len(),
        missing.len()
    );
    assert!(
        env.log(second)
            .contains("rotated away while the capturer was down"),
        "{}",
        env.log(second)
    );
}
