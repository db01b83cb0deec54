//! What the tests that need the real Docker engine share: the socket `scripts/test.sh` starts
//! and the docker CLI pointed at it. Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// The image `scripts/docker-engine.sh` imports: busybox with every applet.
pub const IMAGE: &str = "local/busybox:latest";

/// The engine's socket, from LOGCAP_DOCKER_SOCK; a missing engine fails the test loudly.
pub fn socket() -> PathBuf {
    let sock = std::env::var("LOGCAP_DOCKER_SOCK").expect(
        "LOGCAP_DOCKER_SOCK is not set: these tests need the Docker engine that \
         `bash scripts/test.sh` starts (or `bash scripts/docker-engine.sh start`, then \
         LOGCAP_DOCKER_SOCK=<the socket it prints> cargo test)",
    );
    let path = PathBuf::from(sock);
    assert!(
        path.exists(),
        "LOGCAP_DOCKER_SOCK: no Docker socket at {}",
        path.display()
    );
    path
}

/// The docker CLI, talking to that engine.
pub fn docker_command() -> Command {
    let mut cmd = Command::new("docker");
    cmd.arg("-H").arg(format!("unix://{}", socket().display()));
    cmd
}

/// Runs a docker CLI command that must succeed; its trimmed stdout.
pub fn docker(args: &[&str]) -> String {
    let out = docker_command().args(args).output().expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Removes containers, quietly and without panicking (a panic in a Drop guard while a test
/// unwinds would abort every test): the socket is looked up without `socket()`.
pub fn remove_containers<S: AsRef<str>>(ids: &[S]) {
    let sock = std::env::var("LOGCAP_DOCKER_SOCK").unwrap_or_default();
    if ids.is_empty() || sock.is_empty() {
        return;
    }
    let _ = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{sock}"))
        .args(["rm", "-f"])
        .args(ids.iter().map(AsRef::as_ref))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Waits until `done` (asked every 20 ms) holds, failing the test with `what` after `within`.
pub fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}
