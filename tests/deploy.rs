//! The capturer shipped as a container image (`scripts/image.sh`), run as a container on the
//! real dockerd that `scripts/test.sh` starts (LOGCAP_DOCKER_SOCK), with the Docker socket
//! mounted as `deploy/compose.yaml` does: which io engine each seccomp profile lets it run, that
//! it captures other containers and never itself, that its HEALTHCHECK passes, and that its
//! positions survive the container through the volume. Also the systemd unit, where
//! `systemd-analyze` exists.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{docker, docker_command, socket, IMAGE};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// One image per test binary, built on first use from the binary cargo just built and removed
/// when the last test using it is done (tests of this file run in parallel).
static BUILT: Mutex<usize> = Mutex::new(0);

fn image_tag() -> String {
    format!("log_capturer:test-{}", std::process::id())
}

struct ImageRef;

impl ImageRef {
    fn acquire() -> ImageRef {
        let mut users = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        if *users == 0 {
            let out = Command::new("bash")
                .arg(format!("{ROOT}/scripts/image.sh"))
                .args(["--binary", env!("CARGO_BIN_EXE_log_capturer")])
                .args(["--tag", &image_tag()])
                .env("DOCKER_HOST", format!("unix://{}", socket().display()))
                .output()
                .expect("bash scripts/image.sh");
            assert!(
                out.status.success(),
                "scripts/image.sh failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        *users += 1;
        ImageRef
    }
}

impl Drop for ImageRef {
    fn drop(&mut self) {
        let mut users = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        *users -= 1;
        if *users == 0 {
            let sock = std::env::var("LOGCAP_DOCKER_SOCK").unwrap_or_default();
            let _ = Command::new("docker")
                .arg("-H")
                .arg(format!("unix://{sock}"))
                .args(["rmi", "-f", &image_tag()])
                .output();
        }
    }
}

/// What a test created: removed however the test ends.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let sock = std::env::var("LOGCAP_DOCKER_SOCK").unwrap_or_default();
        // -v: also the anonymous volume each capturer gets from the image's VOLUME.
        if !self.containers.is_empty() {
            let _ = Command::new("docker")
                .arg("-H")
                .arg(format!("unix://{sock}"))
                .args(["rm", "-f", "-v"])
                .args(&self.containers)
                .output();
        }
        for v in &self.volumes {
            let _ = Command::new("docker")
                .arg("-H")
                .arg(format!("unix://{sock}"))
                .args(["volume", "rm", "-f", v])
                .output();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Cleanup {
    fn dir(&mut self, name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("logcap-deploy-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        self.dirs.push(d.clone());
        d
    }

    fn name(&mut self, what: &str) -> String {
        let n = format!("logcap-deploy-{}-{what}", std::process::id());
        self.containers.push(n.clone());
        n
    }
}

/// `docker run -d` of the capturer image as the compose file runs it: the socket mounted at
/// /var/run/docker.sock, output in a host folder, and `extra` options (seccomp, volume).
fn run_capturer(name: &str, output: &Path, extra: &[&str]) -> String {
    let sock = socket();
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        name.into(),
        "--network".into(),
        "none".into(),
        "-v".into(),
        format!("{}:/var/run/docker.sock", sock.display()),
        "-v".into(),
        format!("{}:/app/logs/output", output.display()),
        // Delivered within 200 ms instead of the 5 s default: the test waits less.
        "-e".into(),
        "SSW_DISPATCHER_BATCH_TIMEOUT=200ms".into(),
        // The image's HEALTHCHECK, checked every second instead of every 30.
        "--health-interval".into(),
        "1s".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(image_tag());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args)
}

/// A busybox container printing `{prefix}-1` .. `{prefix}-{n}`, then waiting (for /go, when
/// `then` is given, before printing `{then}-1` .. `{then}-{n}`), then sleeping.
fn run_emitter(name: &str, prefix: &str, n: usize, then: Option<&str>) -> String {
    let mut script = format!("i=1; while [ $i -le {n} ]; do echo {prefix}-$i; i=$((i+1)); done; ");
    if let Some(then) = then {
        script.push_str(&format!(
            "while [ ! -e /go ]; do sleep 0.1; done; \
             i=1; while [ $i -le {n} ]; do echo {then}-$i; i=$((i+1)); done; "
        ));
    }
    script.push_str("exec sleep 3600");
    docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        &script,
    ])
}

/// Every entry (parsed JSON line) the local_file sink wrote into `output`.
fn entries(output: &Path) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    let Ok(dir) = std::fs::read_dir(output) else {
        return all;
    };
    for f in dir.flatten() {
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        for line in text.lines() {
            // A line being written may be cut short: skip what does not parse yet.
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                all.push(v);
            }
        }
    }
    all
}

fn messages_of(output: &Path, container_id: &str) -> Vec<String> {
    entries(output)
        .iter()
        .filter(|e| e["labels"]["container_id"] == container_id)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn expected(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-{i}")).collect()
}

fn logs(container: &str) -> String {
    let out = docker_command()
        .args(["logs", container])
        .output()
        .expect("docker logs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `f` until it returns Some or `limit` passes; the panic says what was awaited.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The capturer's "io engine: ..." log line, once it has written it.
fn engine_line(capturer: &str) -> String {
    wait_for(Duration::from_secs(20), "the io engine log line", || {
        logs(capturer)
            .lines()
            .find(|l| l.contains("io engine: "))
            .map(str::to_string)
    })
}

/// Runs a capturer with `seccomp` options next to an emitter; checks the engine it reports
/// (`engine`, and `reason` in its line), that it captured the emitter's lines exactly and
/// none of its own, and that the image's HEALTHCHECK turns healthy.
fn engine_under_profile(what: &str, seccomp: &[&str], engine: &str, reason: &str) {
    let _image = ImageRef::acquire();
    let mut c = Cleanup::default();
    let output = c.dir(what);
    let capturer_name = c.name(&format!("{what}-capturer"));
    let capturer = run_capturer(&capturer_name, &output, seccomp);
    let line = engine_line(&capturer);
    assert!(
        line.contains(&format!("io engine: {engine} (")) && line.contains(reason),
        "{what}: expected io engine {engine} ({reason}), the capturer logged: {line}"
    );

    // Started after the capturer, so it is found through the events stream; by then the
    // capturer's own stream holds its start-up lines, which it must never capture.
    let emitter = run_emitter(&c.name(&format!("{what}-emitter")), "line", 50, None);
    let want = expected("line", 50);
    wait_for(Duration::from_secs(30), "the emitter's 50 lines", || {
        (messages_of(&output, &emitter).len() >= want.len()).then_some(())
    });
    assert_eq!(
        messages_of(&output, &emitter),
        want,
        "{what}: captured lines"
    );

    let own: Vec<_> = entries(&output)
        .into_iter()
        .filter(|e| e["labels"]["container_id"] == capturer.as_str())
        .collect();
    assert!(
        own.is_empty(),
        "{what}: the capturer captured its own container: {own:?}"
    );
    assert!(
        logs(&capturer)
            .lines()
            .any(|l| l.contains("own container") && l.contains(&capturer)),
        "{what}: the capturer did not log its own container id {capturer}"
    );

    wait_for(Duration::from_secs(20), "HEALTHCHECK healthy", || {
        let s = docker(&["inspect", "-f", "{{.State.Health.Status}}", &capturer]);
        (s == "healthy").then_some(())
    });
}

/// Whether this dockerd's default seccomp profile lets io_uring through: allowed from 20.10
/// (moby#39415) until Docker 25 blocked it again (moby#46762); Debian's 20.10 here allows it.
fn default_profile_allows_io_uring() -> bool {
    let version = docker(&["version", "--format", "{{.Server.Version}}"]);
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("unparsable server version {version:?}"));
    (20..25).contains(&major)
}

#[test]
fn default_seccomp_profile_engine_matches_what_it_allows() {
    if default_profile_allows_io_uring() {
        engine_under_profile("default", &[], "io_uring", "probe passed");
    } else {
        engine_under_profile("default", &[], "epoll", "Operation not permitted");
    }
}

#[test]
fn shipped_io_uring_profile_runs_io_uring() {
    let profile = format!("seccomp={ROOT}/deploy/seccomp-io_uring.json");
    engine_under_profile(
        "uring",
        &["--security-opt", &profile],
        "io_uring",
        "probe passed",
    );
}

/// Docker 25's default profile (io_uring blocked), shipped for engines older than 25: the
/// fallback a stock modern Docker host gives.
#[test]
fn profile_without_io_uring_falls_back_to_epoll() {
    let profile = format!("seccomp={ROOT}/deploy/seccomp-no-io_uring.json");
    engine_under_profile(
        "epoll",
        &["--security-opt", &profile],
        "epoll",
        "io_uring_setup failed: Operation not permitted",
    );
}

/// The capturer's container is stopped (SIGTERM: positions committed into the volume) and
/// removed; the emitter logs more while no capturer runs; a new capturer container on the same
/// volume delivers only the new lines: every line exactly once, in order. Without the volume
/// the new container would start from the emitter's first line again.
#[test]
fn positions_survive_the_container_through_the_volume() {
    let _image = ImageRef::acquire();
    let mut c = Cleanup::default();
    let output = c.dir("restart");
    let volume = format!("logcap-deploy-{}-positions", std::process::id());
    docker(&["volume", "create", &volume]);
    c.volumes.push(volume.clone());
    let mount = format!("{volume}:/app/data/positions");

    let emitter = run_emitter(&c.name("restart-emitter"), "before", 40, Some("after"));
    let first = run_capturer(&c.name("restart-capturer-1"), &output, &["-v", &mount]);
    wait_for(
        Duration::from_secs(30),
        "the 40 lines before the restart",
        || (messages_of(&output, &emitter).len() >= 40).then_some(()),
    );
    docker(&["stop", "-t", "30", &first]);
    let exit = docker(&["inspect", "-f", "{{.State.ExitCode}}", &first]);
    assert_eq!(
        exit,
        "0",
        "first capturer's exit code; its log:\n{}",
        logs(&first)
    );
    docker(&["rm", "-v", &first]);

    docker(&["exec", &emitter, "touch", "/go"]);
    wait_for(
        Duration::from_secs(20),
        "the emitter's lines after /go",
        || logs(&emitter).contains("after-40").then_some(()),
    );

    let second = run_capturer(&c.name("restart-capturer-2"), &output, &["-v", &mount]);
    let mut want = expected("before", 40);
    want.extend(expected("after", 40));
    // The stream is in order: once after-40 is in, a replay of the earlier lines would be too.
    wait_for(
        Duration::from_secs(30),
        "after-40 delivered by the second capturer",
        || {
            messages_of(&output, &emitter)
                .iter()
                .any(|m| m == "after-40")
                .then_some(())
        },
    );
    let got = messages_of(&output, &emitter);
    let distinct: BTreeSet<_> = got.iter().collect();
    assert_eq!(
        got,
        want,
        "lines across the restart: {} captured, {} distinct; second capturer's log:\n{}",
        got.len(),
        distinct.len(),
        logs(&second)
    );
}

/// The Go image's defaults, in the image scripts/image.sh builds and in the users' Dockerfile
/// (which cannot be built here: its base images cannot be pulled).
#[test]
fn image_and_dockerfile_keep_the_go_defaults() {
    let _image = ImageRef::acquire();
    let config = docker(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Healthcheck.Test}} {{json .Config.ExposedPorts}} {{json .Config.Volumes}} {{json .Config.Entrypoint}}",
        &image_tag(),
    ]);
    assert_eq!(
        config,
        r#"["CMD","/app/log_capturer","--healthcheck","http://localhost:8001/health"] {"8001/tcp":{},"8401/tcp":{}} {"/app/data/positions":{}} ["/app/log_capturer"]"#
    );
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    for line in [
        "EXPOSE 8401 8001",
        r#"VOLUME ["/app/data/positions"]"#,
        r#"CMD ["/app/log_capturer", "--healthcheck", "http://localhost:8001/health"]"#,
        "COPY configs/config.yaml /app/configs/config.yaml",
        r#"ENTRYPOINT ["/app/log_capturer"]"#,
    ] {
        assert!(dockerfile.contains(line), "Dockerfile lacks {line}");
    }
}

/// `systemd-analyze verify` on deploy/log_capturer.service, where the tool exists (it cannot
/// be installed without systemd as init). ExecStart must name an existing binary for the
/// verifier, so a copy of the unit points it at the one cargo built.
#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(format!("{ROOT}/deploy/log_capturer.service"))
        .expect("deploy/log_capturer.service");
    for key in [
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "SupplementaryGroups=docker",
        "LimitNOFILE=",
    ] {
        assert!(unit.contains(key), "the unit lacks {key}");
    }
    let Ok(tool) = which("systemd-analyze") else {
        eprintln!("systemd-analyze not installed: deploy/log_capturer.service not verified");
        return;
    };
    let mut c = Cleanup::default();
    let dir = c.dir("unit");
    let copy = unit.replace(
        "/usr/local/bin/log_capturer",
        env!("CARGO_BIN_EXE_log_capturer"),
    );
    let path = dir.join("log_capturer.service");
    std::fs::write(&path, copy).unwrap();
    let out = Command::new(tool)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Without systemd as PID 1 the verifier still parses the unit; complaints about the unit
    // name the file.
    assert!(
        out.status.success() && !text.contains("log_capturer.service:"),
        "systemd-analyze verify: {text}"
    );
}

fn which(tool: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or(())
}
