//! The capturer as Prometheus sees it, with Debian's real `prometheus` and `promtool`
//! (`bash scripts/prometheus.sh install`; `scripts/test.sh` runs it): the alert rules of
//! `deploy/prometheus/` checked and unit-tested, both `/metrics` endpoints accepted by
//! `promtool check metrics`, and a Prometheus server scraping a capturer that reads a real
//! container on the dockerd of LOGCAP_DOCKER_SOCK, queried through its HTTP API.

mod support;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{docker, remove_containers, socket, IMAGE};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A tool of the prometheus package; missing, the test fails with the command that installs it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: run `bash scripts/prometheus.sh install` \
                 (Debian's prometheus package; scripts/test.sh does it)"
            )
        })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let rules = format!("{ROOT}/deploy/prometheus/alerts.yml");
    let out = run(Command::new(tool("promtool")).args(["check", "rules", &rules]));
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    let tests = format!("{ROOT}/deploy/prometheus/alerts_test.yml");
    let out = run(Command::new(tool("promtool")).args(["test", "rules", &tests]));
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A free loopback port (bound, then released for the child process to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a test started or created: ended and removed however the test ends.
struct Cleanup {
    dir: PathBuf,
    children: Vec<Child>,
    containers: Vec<String>,
}

impl Cleanup {
    fn new(name: &str) -> Cleanup {
        let dir = std::env::temp_dir().join(format!("logcap-prom-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Cleanup {
            dir,
            children: Vec::new(),
            containers: Vec::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_containers(&self.containers);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Ports {
    api: u16,
    metrics: u16,
}

/// The capturer on the host, reading only the containers whose name contains `only`,
/// delivering to the blackhole sink.
fn start_capturer(c: &mut Cleanup, only: &str) -> Ports {
    let ports = Ports {
        api: free_port(),
        metrics: free_port(),
    };
    let config = c.dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "app: {{log_level: info, log_format: text}}\n\
             server: {{enabled: true, host: 127.0.0.1, port: {api}}}\n\
             metrics: {{enabled: true, host: 127.0.0.1, port: {metrics}, path: /metrics}}\n\
             container_monitor:\n  enabled: true\n  socket_path: \"unix://{sock}\"\n  include_names: [\"{only}\"]\n\
             dispatcher: {{batch_timeout: 200ms}}\n\
             sinks:\n  local_file: {{enabled: false}}\n  loki: {{enabled: false}}\n  blackhole: {{enabled: true}}\n\
             positions: {{enabled: true, directory: \"{pos}\"}}\n",
            api = ports.api,
            metrics = ports.metrics,
            sock = socket().display(),
            pos = c.dir.join("positions").display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(c.dir.join("capturer.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_log_capturer"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start log_capturer");
    c.children.push(child);
    wait_for(Duration::from_secs(20), "the capturer's /health", || {
        get(&format!("http://127.0.0.1:{}/health", ports.metrics)).ok()
    });
    ports
}

fn get(url: &str) -> Result<String, String> {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build()
        .get(url)
        .call()
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|e| e.to_string())
}

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
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A busybox container printing `n` lines, then sleeping (its stream stays open).
fn start_emitter(c: &mut Cleanup, name: &str, n: usize) {
    let script =
        format!("i=1; while [ $i -le {n} ]; do echo m-$i; i=$((i+1)); done; exec sleep 3600");
    c.containers.push(name.to_string());
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
    ]);
}

fn promtool_check_metrics(body: &str, what: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on {what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_check_metrics_accepts_both_endpoints() {
    let mut c = Cleanup::new("check");
    let name = format!("logcap-prom-{}-check", std::process::id());
    start_emitter(&mut c, &name, 20);
    let ports = start_capturer(&mut c, &name);
    // Once the container is read, the per-container series exist too.
    let metrics_url = format!("http://127.0.0.1:{}/metrics", ports.metrics);
    wait_for(
        Duration::from_secs(20),
        "the emitter's lines counted",
        || {
            get(&metrics_url).ok().filter(|b| {
                b.lines()
                    .any(|l| l.starts_with("logs_processed_total{") && l.ends_with(" 20"))
            })
        },
    );
    for url in [
        metrics_url,
        format!("http://127.0.0.1:{}/metrics", ports.api),
    ] {
        let body = get(&url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
        // promtool accepts an empty body: make sure it checks the real families.
        for family in ["logs_processed_total", "streams_active", "io_ops_in_flight"] {
            assert!(
                body.contains(&format!("# TYPE {family} ")),
                "{url} lacks {family}"
            );
        }
        promtool_check_metrics(&body, &url);
    }
}

/// `value` of the single series a Prometheus instant query returns, once it returns one.
fn query(prometheus: u16, promql: &str) -> Option<f64> {
    let url = format!(
        "http://127.0.0.1:{prometheus}/api/v1/query?query={}",
        promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    let body: serde_json::Value = serde_json::from_str(&get(&url).ok()?).ok()?;
    assert_eq!(body["status"], "success", "{promql}: {body}");
    let result = body["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

fn start_prometheus(c: &mut Cleanup, target: u16) -> u16 {
    let port = free_port();
    let config = c.dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [\"{ROOT}/deploy/prometheus/alerts.yml\"]\n\
             scrape_configs:\n  - job_name: log_capturer\n    static_configs:\n      - targets: [\"127.0.0.1:{target}\"]\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(c.dir.join("prometheus.log")).unwrap();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            c.dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    c.children.push(child);
    port
}

fn prometheus_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
}

#[test]
fn prometheus_scrapes_streams_and_lines() {
    const LINES: usize = 30;
    let mut c = Cleanup::new("scrape");
    let name = format!("logcap-prom-{}-scrape", std::process::id());
    start_emitter(&mut c, &name, LINES);
    let ports = start_capturer(&mut c, &name);
    let prometheus = start_prometheus(&mut c, ports.metrics);

    // One container matches the filter: one stream, its 30 lines.
    let streams = wait_for(
        Duration::from_secs(60),
        "streams_active == 1 in Prometheus",
        || query(prometheus, "streams_active{job=\"log_capturer\"}").filter(|v| *v == 1.0),
    );
    assert_eq!(streams, 1.0);
    let lines = wait_for(
        Duration::from_secs(30),
        "logs_processed_total reaching 30 in Prometheus",
        || {
            query(
                prometheus,
                "sum(logs_processed_total{job=\"log_capturer\",source_type=\"docker\"})",
            )
            .filter(|v| *v >= LINES as f64)
        },
    );
    assert_eq!(lines, LINES as f64, "lines counted through Prometheus");
    assert_eq!(
        query(prometheus, "up{job=\"log_capturer\"}"),
        Some(1.0),
        "prometheus log:\n{}",
        prometheus_log(&c.dir)
    );

    // The alert rules load in the real server too.
    let rules: serde_json::Value =
        serde_json::from_str(&get(&format!("http://127.0.0.1:{prometheus}/api/v1/rules")).unwrap())
            .unwrap();
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, 10, "alert rules loaded by prometheus: {rules}");
}

/// `log_capturer --healthcheck URL`, the image's HEALTHCHECK: 0 while the metrics server
/// answers, 1 once nothing listens.
#[test]
fn healthcheck_flag_follows_the_metrics_server() {
    let mut c = Cleanup::new("health");
    let name = format!("logcap-prom-{}-health", std::process::id());
    let ports = start_capturer(&mut c, &name);
    let url = format!("http://127.0.0.1:{}/health", ports.metrics);
    let probe = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_log_capturer"))
            .args(["--healthcheck", url])
            .output()
            .expect("log_capturer --healthcheck")
    };
    let up = probe(&url);
    assert_eq!(up.status.code(), Some(0), "{up:?}");
    for child in &mut c.children {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let down = probe(&url);
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert!(
        String::from_utf8_lossy(&down.stderr).contains(&url),
        "the failure names the URL: {down:?}"
    );
}
