//! The queue's byte budget (`dispatcher.max_queue_bytes`) against the real dockerd
//! (LOGCAP_DOCKER_SOCK; without it this fails, loudly): a container printing 1 MiB lines while
//! the only sink (Loki) is down. Before the budget, the queue counted entries only and took
//! every line the container wrote (seen: 400 lines of 1 MiB, RSS 557 MiB and rising); now
//! reading pauses at the byte budget. RELIABILITY.md has the figures.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{docker, remove_containers, socket, IMAGE};

const BIN: &str = env!("CARGO_BIN_EXE_log_capturer");
const LINES: usize = 100;
const BUDGET: usize = 8 << 20;

struct Guard {
    child: Child,
    container: String,
    dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_containers(&[&self.container]);
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gauge's value in the metrics text, by the start of its line.
fn gauge(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn docker_ok(args: &[&str]) -> bool {
    support::docker_command()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn one_mib_lines_with_the_only_sink_down_stop_at_the_byte_budget() {
    let sock = socket();
    let dir = std::env::temp_dir().join(format!("log_capturer_queue_bytes_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!("logcap-qbytes-{}", std::process::id());
    let port = free_port();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "app: {{log_level: info, log_format: text}}\n\
             server: {{enabled: true, host: 127.0.0.1, port: {port}}}\n\
             metrics: {{enabled: false}}\n\
             container_monitor:\n  enabled: true\n  socket_path: \"unix://{sock}\"\n  include_names: [\"{name}\"]\n\
             dispatcher: {{queue_size: 20000, max_queue_bytes: {BUDGET}, batch_timeout: 100ms}}\n\
             sinks:\n  local_file: {{enabled: false}}\n  loki: {{enabled: true, url: \"http://127.0.0.1:9\"}}\n\
             positions: {{enabled: true, directory: \"{pos}\"}}\n",
            sock = sock.display(),
            pos = dir.join("positions").display(),
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut guard = Guard {
        child,
        container: name.clone(),
        dir: dir.clone(),
    };
    // 100 lines of 1 MiB of 'a', a mark, then wait to be removed.
    let script = format!(
        "i=0; while [ $i -lt {LINES} ]; do head -c 1048576 /dev/zero | tr '\\0' a; echo; i=$((i+1)); done; touch /done; sleep 3600"
    );
    docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &name,
        IMAGE,
        "sh",
        "-c",
        &script,
    ]);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(90);
    let entry_share = BUDGET / (1 << 20);
    let (mut max_entries, mut max_rss) = (0.0f64, 0u64);
    // Full by bytes: reading pauses with a handful of lines queued, and stays so until the
    // container has written all its lines.
    let mut full = false;
    loop {
        assert!(
            guard.child.try_wait().unwrap().is_none(),
            "the capturer exited; see {}",
            dir.join("stderr.log").display()
        );
        let text = agent
            .get(&url)
            .call()
            .ok()
            .and_then(|r| r.into_string().ok());
        if let Some(text) = text {
            let entries = gauge(&text, "queue_size{component=\"dispatcher\"").unwrap_or_default();
            let utilization = gauge(&text, "dispatcher_queue_utilization").unwrap_or_default();
            max_entries = max_entries.max(entries);
            max_rss = max_rss.max(rss_kib(pid));
            // The budget plus what the reader held when it paused (a line being reassembled,
            // receives in flight).
            assert!(
                entries <= (entry_share + 4) as f64,
                "{entries} lines of 1 MiB queued with a budget of {BUDGET} bytes"
            );
            full |= utilization >= 1.0;
        }
        if full && docker_ok(&["exec", &name, "test", "-f", "/done"]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the queue never filled: {max_entries} entries at most"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "figures: budget {} MiB, {max_entries} lines of 1 MiB queued at most, capturer RSS {} MiB at most",
        BUDGET >> 20,
        max_rss / 1024
    );
}
