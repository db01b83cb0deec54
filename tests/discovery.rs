//! Discovery against a real dockerd (started by scripts/test.sh, which exports
//! LOGCAP_DOCKER_SOCK): the list at start, the events stream, the reconcile pass, filters, the
//! own container, and stopping.
//!
//! Tests run in parallel against one engine shared with other test files: every test names its
//! containers with a unique prefix, filters on it, and only looks at its own containers.
//! Waits are bounded waits on the channel, never fixed sleeps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log_capturer::config::Config;
use log_capturer::sources::docker::discovery::{
    filter_from_config, ContainerEvent, Discovery, OwnContainer,
};
use log_capturer::sources::docker::Client;

mod support;
use support::{docker, remove_containers, socket, IMAGE};

/// Runs until stopped, and stops at once on SIGTERM.
const FOREVER: &str = "trap 'exit 0' TERM; while true; do sleep 0.1; done";
/// Generous bound for anything the events stream should deliver "promptly".
const PROMPT: Duration = Duration::from_secs(10);
/// A reconcile interval long enough that only the events stream can explain a prompt report.
const NO_RECONCILE: Duration = Duration::from_secs(300);

/// A name prefix no other test (or test run) uses.
fn unique_prefix(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "logcap-disc-{test}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A container removed when the test ends, however it ends.
struct Container {
    id: String,
}

impl Container {
    fn run(name: &str, script: &str) -> Container {
        let id = docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            IMAGE,
            "sh",
            "-c",
            script,
        ]);
        assert_eq!(id.len(), 64, "container id {id:?}");
        Container { id }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        remove_containers(&[&self.id]);
    }
}

/// A running discovery thread, stopped and joined when dropped.
struct Running {
    rx: Receiver<ContainerEvent>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Everything received, for failure messages.
    seen: Vec<ContainerEvent>,
}

impl Running {
    fn start(discovery: Discovery) -> Running {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = discovery.spawn(tx, stop.clone()).expect("spawn discovery");
        Running {
            rx,
            stop,
            handle: Some(handle),
            seen: Vec::new(),
        }
    }

    /// Discovery of the containers whose name starts with `prefix`, none of them "own".
    fn with_prefix(prefix: &str, reconcile_every: Duration) -> Running {
        let prefix = prefix.to_string();
        Running::start(
            Discovery::new(
                Client::new(&socket()),
                move |name: &str, _: &BTreeMap<String, String>| name.starts_with(&prefix),
                reconcile_every,
            )
            .with_own_container(OwnContainer::none()),
        )
    }

    /// The next event that `want` accepts, within `within`; panics with what was seen.
    fn expect(
        &mut self,
        what: &str,
        within: Duration,
        want: impl Fn(&ContainerEvent) -> bool,
    ) -> ContainerEvent {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if want(&event) {
                        return event;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {what} within {within:?}; seen: {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("discovery ended before {what}; seen: {:#?}", self.seen)
                }
            }
        }
    }

    fn expect_running(&mut self, id: &str) -> ContainerEvent {
        self.expect(
            &format!("Running({id})"),
            PROMPT,
            |e| matches!(e, ContainerEvent::Running(info) if info.id == id),
        )
    }

    fn expect_stopped(&mut self, id: &str) {
        self.expect(
            &format!("Stopped({id})"),
            PROMPT,
            |e| matches!(e, ContainerEvent::Stopped { id: x } if x == id),
        );
    }

    fn ever_about(&self, id: &str) -> Vec<&ContainerEvent> {
        self.seen.iter().filter(|e| e.id() == id).collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[test]
fn running_container_is_reported_at_start() {
    let prefix = unique_prefix("atstart");
    let name = format!("{prefix}-a");
    let c = Container::run(&name, FOREVER);
    let mut d = Running::with_prefix(&prefix, NO_RECONCILE);
    let ContainerEvent::Running(info) = d.expect_running(&c.id) else {
        unreachable!()
    };
    assert_eq!(info.name, name);
    assert_eq!(info.image, IMAGE);
    assert!(info.running);
    assert!(!info.tty);
    let created = info.created.expect("inspect's Created parses");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        (now - 120_000_000_000..=now + 1_000_000_000).contains(&created),
        "created {created} vs now {now}"
    );
}

#[test]
fn tty_container_is_reported_with_tty() {
    let prefix = unique_prefix("tty");
    let name = format!("{prefix}-t");
    let id = docker(&[
        "run",
        "-d",
        "-t",
        "--network",
        "none",
        "--name",
        &name,
        IMAGE,
        "sh",
        "-c",
        FOREVER,
    ]);
    let c = Container { id };
    let mut d = Running::with_prefix(&prefix, NO_RECONCILE);
    let ContainerEvent::Running(info) = d.expect_running(&c.id) else {
        unreachable!()
    };
    assert!(info.tty);
}

#[test]
fn container_started_after_spawn_is_reported_promptly() {
    let prefix = unique_prefix("later");
    let mut d = Running::with_prefix(&prefix, NO_RECONCILE);
    let c = Container::run(&format!("{prefix}-b"), FOREVER);
    let t0 = Instant::now();
    d.expect_running(&c.id);
    assert!(t0.elapsed() < PROMPT);
}

#[test]
fn stopping_a_container_reports_stopped_once() {
    let prefix = unique_prefix("stop");
    let mut d = Running::with_prefix(&prefix, NO_RECONCILE);
    let c = Container::run(&format!("{prefix}-c"), FOREVER);
    d.expect_running(&c.id);
    docker(&["stop", "-t", "5", &c.id]);
    d.expect_stopped(&c.id);
    // `die` and `stop` both arrive: one Stopped. The destroy that follows proves the events
    // after them were handled.
    docker(&["rm", &c.id]);
    d.expect(
        &format!("Removed({})", c.id),
        PROMPT,
        |e| matches!(e, ContainerEvent::Removed { id } if *id == c.id),
    );
    let stops = d
        .ever_about(&c.id)
        .into_iter()
        .filter(|e| matches!(e, ContainerEvent::Stopped { .. }))
        .count();
    assert_eq!(stops, 1, "{:#?}", d.seen);
}

#[test]
fn removing_a_container_reports_removed() {
    let prefix = unique_prefix("rm");
    let mut d = Running::with_prefix(&prefix, NO_RECONCILE);
    let c = Container::run(&format!("{prefix}-d"), FOREVER);
    d.expect_running(&c.id);
    docker(&["rm", "-f", &c.id]);
    d.expect(
        &format!("Removed({})", c.id),
        PROMPT,
        |e| matches!(e, ContainerEvent::Removed { id } if *id == c.id),
    );
    let about = d.ever_about(&c.id);
    assert!(
        about
            .iter()
            .any(|e| matches!(e, ContainerEvent::Stopped { .. })),
        "a running container removed by force also stops first: {about:#?}"
    );
}

#[test]
fn renaming_a_container_reports_renamed_with_the_new_name() {
    let prefix = unique_prefix("rename");
    let mut d = Running::with_prefix(&prefix, NO_RECONCILE);
    let c = Container::run(&format!("{prefix}-old"), FOREVER);
    d.expect_running(&c.id);
    let new_name = format!("{prefix}-new");
    docker(&["rename", &c.id, &new_name]);
    let event = d.expect(
        &format!("Renamed({})", c.id),
        PROMPT,
        |e| matches!(e, ContainerEvent::Renamed(info) if info.id == c.id),
    );
    let ContainerEvent::Renamed(info) = event else {
        unreachable!()
    };
    assert_eq!(info.name, new_name);
    assert!(info.running);
}

#[test]
fn restarting_a_container_reports_stopped_then_running() {
    let prefix = unique_prefix("restart");
    let mut d = Running::with_prefix(&prefix, NO_RECONCILE);
    let c = Container::run(&format!("{prefix}-r"), FOREVER);
    d.expect_running(&c.id);
    docker(&["restart", "-t", "5", &c.id]);
    d.expect_stopped(&c.id);
    d.expect_running(&c.id);
}

#[test]
fn short_lived_container_is_reported_then_stopped() {
    let prefix = unique_prefix("short");
    let mut d = Running::with_prefix(&prefix, NO_RECONCILE);
    let c = Container::run(&format!("{prefix}-s"), "echo one line");
    // It has likely exited before discovery inspects it: still reported, so that its log is
    // read, and its Stopped follows.
    d.expect_running(&c.id);
    d.expect_stopped(&c.id);
}

#[test]
fn filter_from_config_excludes_a_name() {
    let prefix = unique_prefix("filter");
    let skip = Container::run(&format!("{prefix}-skipme"), FOREVER);
    let keep = Container::run(&format!("{prefix}-keep"), FOREVER);
    let mut cfg = Config::defaults().container_monitor;
    cfg.include_names = vec![prefix.clone()];
    cfg.exclude_names = vec!["-skipme".to_string()];
    // Short reconcile interval: two reports of `keep` mean at least one full listing pass
    // after the start, and each pass (the first one too) looked at both containers.
    let mut d = Running::start(
        Discovery::new(
            Client::new(&socket()),
            filter_from_config(&cfg),
            Duration::from_millis(300),
        )
        .with_own_container(OwnContainer::none()),
    );
    d.expect_running(&keep.id);
    d.expect_running(&keep.id);
    assert!(
        d.ever_about(&skip.id).is_empty(),
        "excluded container reported: {:#?}",
        d.seen
    );
}

#[test]
fn own_container_is_never_reported() {
    let prefix = unique_prefix("own");
    let own = Container::run(&format!("{prefix}-self"), FOREVER);
    let other = Container::run(&format!("{prefix}-other"), FOREVER);
    let filter_prefix = prefix.clone();
    let mut d = Running::start(
        Discovery::new(
            Client::new(&socket()),
            move |name: &str, _: &BTreeMap<String, String>| name.starts_with(&filter_prefix),
            Duration::from_millis(300),
        )
        .with_own_container(OwnContainer::from_ids([own.id.clone()])),
    );
    d.expect_running(&other.id);
    // The own container's events too: restart it, then wait for another full pass.
    docker(&["restart", "-t", "5", &own.id]);
    docker(&["restart", "-t", "5", &other.id]);
    d.expect_stopped(&other.id);
    d.expect_running(&other.id);
    d.expect_running(&other.id);
    assert!(
        d.ever_about(&own.id).is_empty(),
        "own container reported: {:#?}",
        d.seen
    );
}

#[test]
fn reconcile_reports_running_containers_again() {
    let prefix = unique_prefix("reconcile");
    let c = Container::run(&format!("{prefix}-e"), FOREVER);
    let mut d = Running::with_prefix(&prefix, Duration::from_millis(300));
    for _ in 0..3 {
        d.expect_running(&c.id);
    }
    let stops = d
        .ever_about(&c.id)
        .into_iter()
        .filter(|e| !matches!(e, ContainerEvent::Running(_) | ContainerEvent::Created(..)))
        .count();
    assert_eq!(stops, 0, "{:#?}", d.seen);
}

#[test]
fn stop_flag_ends_the_thread_within_a_second() {
    let prefix = unique_prefix("flag");
    let mut d = Running::with_prefix(&prefix, NO_RECONCILE);
    // Make sure the thread is past its first listing and following events.
    let c = Container::run(&format!("{prefix}-f"), FOREVER);
    d.expect_running(&c.id);
    let handle = d.handle.take().unwrap();
    let t0 = Instant::now();
    d.stop.store(true, Ordering::Relaxed);
    let deadline = t0 + Duration::from_secs(5);
    while !handle.is_finished() && Instant::now() < deadline {
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(10));
    }
    let took = t0.elapsed();
    assert!(
        handle.is_finished(),
        "discovery still running after {took:?}"
    );
    handle.join().expect("discovery thread panicked");
    assert!(took < Duration::from_millis(1000), "stop took {took:?}");
    // And the channel is closed: the thread dropped its sender.
    loop {
        match d.rx.recv_timeout(Duration::from_secs(1)) {
            Ok(_) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("sender still alive after join"),
        }
    }
}

#[test]
fn dropping_the_receiver_ends_the_thread() {
    let prefix = unique_prefix("rxgone");
    let c = Container::run(&format!("{prefix}-g"), FOREVER);
    let (tx, rx) = channel();
    let stop = Arc::new(AtomicBool::new(false));
    let prefix2 = prefix.clone();
    let handle = Discovery::new(
        Client::new(&socket()),
        move |name: &str, _: &BTreeMap<String, String>| name.starts_with(&prefix2),
        Duration::from_millis(200),
    )
    .with_own_container(OwnContainer::none())
    .spawn(tx, stop.clone())
    .unwrap();
    let first = rx.recv_timeout(PROMPT).expect("a first event");
    assert_eq!(first.id(), c.id);
    drop(rx);
    // The next reconcile pass (200 ms) fails to send and ends the thread.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !handle.is_finished() && Instant::now() < deadline {
        std::thread::park_timeout(Duration::from_millis(10));
    }
    let finished = handle.is_finished();
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
    assert!(finished, "discovery kept running with no receiver");
}

/// A scripted stand-in for dockerd on a Unix socket, for what a shared real engine cannot be
/// made to do on demand: drop the events stream mid-way.
mod fake {
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::Duration;

    pub const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    pub struct Daemon {
        pub path: std::path::PathBuf,
        /// Request targets, in arrival order.
        pub targets: Arc<Mutex<Vec<String>>>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    fn event(action: &str, time_nano: i64) -> String {
        format!(
            r#"{{"Type":"container","Action":"{action}","Actor":{{"ID":"{ID}","Attributes":{{"name":"fake-x"}}}},"time":{},"timeNano":{time_nano}}}"#,
            time_nano / 1_000_000_000
        ) + "\n"
    }

    fn chunk(s: &str) -> String {
        format!("{:x}\r\n{s}\r\n", s.len())
    }

    fn answer(conn: &mut UnixStream, body: &str) {
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }

    impl Daemon {
        /// Events connection 1: `start` at `t`, `die` at `t + 1`, then the connection drops.
        /// Connection 2: the same two again (a replay, as `since` gives), `start` at `t + 2`,
        /// `rename` at `t + 3`, then held open. Later ones: held.
        pub fn start(t: i64) -> Daemon {
            let path = std::env::temp_dir()
                .join(format!("logcap-disc-fake-{}-{t}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).unwrap();
            listener.set_nonblocking(true).unwrap();
            let targets = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let (targets2, stop2) = (targets.clone(), stop.clone());
            let thread = std::thread::spawn(move || {
                let mut events_conns = 0;
                let mut held = Vec::new();
                while !stop2.load(Ordering::Relaxed) {
                    let mut conn = match listener.accept() {
                        Ok((conn, _)) => conn,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(e) => panic!("accept: {e}"),
                    };
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = conn.read(&mut buf).unwrap();
                        assert!(n > 0, "request cut short");
                        req.extend_from_slice(&buf[..n]);
                    }
                    let text = String::from_utf8(req).unwrap();
                    let target = text.split(' ').nth(1).unwrap().to_string();
                    targets2.lock().unwrap().push(target.clone());
                    if target == "/version" {
                        // What dockerd 20.10 answers: the client negotiates 1.41.
                        answer(&mut conn, r#"{"ApiVersion":"1.41","MinAPIVersion":"1.12"}"#);
                    } else if target == "/v1.41/containers/json?all=1" {
                        answer(
                            &mut conn,
                            &format!(
                                r#"[{{"Id":"{ID}","Names":["/fake-x"],"Image":"img","Labels":{{}},"State":"running"}}]"#
                            ),
                        );
                    } else if target == format!("/v1.41/containers/{ID}/json") {
                        answer(
                            &mut conn,
                            &format!(
                                r#"{{"Id":"{ID}","Name":"/fake-x","Created":"2026-01-01T00:00:00.5Z","Config":{{"Tty":false,"Image":"img","Labels":null}},"State":{{"Running":true}}}}"#
                            ),
                        );
                    } else if target.starts_with("/v1.41/events?") && target.contains("%22event%22")
                    {
                        // The attacher's `create` events: none here.
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                        );
                        held.push(conn);
                    } else if target.starts_with("/v1.41/events?") {
                        events_conns += 1;
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                        );
                        match events_conns {
                            // Dropped without the last chunk: an error for the reader.
                            1 => {
                                let _ = conn.write_all(chunk(&event("start", t)).as_bytes());
                                let _ = conn.write_all(chunk(&event("die", t + 1)).as_bytes());
                            }
                            2 => {
                                let _ = conn.write_all(chunk(&event("start", t)).as_bytes());
                                let _ = conn.write_all(chunk(&event("die", t + 1)).as_bytes());
                                let _ = conn.write_all(chunk(&event("start", t + 2)).as_bytes());
                                let _ = conn.write_all(chunk(&event("rename", t + 3)).as_bytes());
                                held.push(conn);
                            }
                            _ => held.push(conn),
                        }
                    } else {
                        let _ = write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                    }
                }
            });
            Daemon {
                path,
                targets,
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[test]
fn events_reconnect_with_since_and_replays_are_dropped() {
    use log_capturer::decode::timestamp::format_since;

    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
        + 10_000_000;
    let daemon = fake::Daemon::start(t);
    let mut d = Running::start(
        Discovery::new(
            Client::new(&daemon.path),
            |_: &str, _: &BTreeMap<String, String>| true,
            NO_RECONCILE,
        )
        .with_own_container(OwnContainer::none()),
    );
    let ContainerEvent::Running(info) = d.expect_running(fake::ID) else {
        unreachable!()
    };
    assert_eq!(info.created, Some(1_767_225_600_500_000_000));
    d.expect_stopped(fake::ID);
    // The second connection replays `start` and `die` (dropped), then brings `start` and
    // `rename`.
    let t0 = Instant::now();
    d.expect("Renamed", Duration::from_secs(5), |e| {
        matches!(e, ContainerEvent::Renamed(_))
    });
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "reconnect took {:?}",
        t0.elapsed()
    );
    let kinds: Vec<&str> = d
        .seen
        .iter()
        .map(|e| match e {
            ContainerEvent::Created(..) => "created",
            ContainerEvent::Running(_) => "running",
            ContainerEvent::Stopped { .. } => "stopped",
            ContainerEvent::Removed { .. } => "removed",
            ContainerEvent::Renamed(_) => "renamed",
        })
        .collect();
    // The list at start, `start`, `die`, (replays dropped), `start`, `rename`.
    assert_eq!(
        kinds,
        ["running", "running", "stopped", "running", "renamed"]
    );
    let events: Vec<String> = daemon
        .targets
        .lock()
        .unwrap()
        .iter()
        .filter(|t| t.starts_with("/v1.41/events?") && !t.contains("%22event%22"))
        .cloned()
        .collect();
    assert!(events.len() >= 2, "{events:?}");
    assert!(
        events[0].contains("filters=%7B%22type%22%3A%5B%22container%22%5D%7D"),
        "{events:?}"
    );
    assert!(
        events[1].contains(&format!("since={}&", format_since(t + 1 - 1_000_000_000))),
        "reconnect asks for the newest event seen minus 1 s: {events:?}"
    );
    // Stopping with the events connection held open by the daemon.
    let handle = d.handle.take().unwrap();
    let t1 = Instant::now();
    d.stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
    assert!(
        t1.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        t1.elapsed()
    );
}
