//! The reader against a real dockerd (started by scripts/test.sh, which exports
//! LOGCAP_DOCKER_SOCK): real frames, real chunking, real 16 KiB partials, real TTY streams.

use std::time::{Duration, Instant};

use log_capturer::decode::{LogLine, StreamKind};
use log_capturer::io::{select_engine, EngineChoice};
use log_capturer::sources::docker::reader::{LogReader, ReadError, ReaderEvent, StreamSpec};
use log_capturer::sources::docker::{Client, LogsQuery};

mod support;
use support::{docker, remove_containers, socket, IMAGE};

/// A container removed when the test ends, however it ends.
struct Container(String);

impl Container {
    fn run(tty: bool, script: &str) -> Container {
        let mut args = vec!["run", "-d", "--network", "none"];
        if tty {
            args.push("-t");
        }
        args.extend([IMAGE, "sh", "-c", script]);
        Container(docker(&args))
    }

    fn wait(&self) {
        assert_eq!(docker(&["wait", &self.0]), "0", "container exit code");
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        remove_containers(&[&self.0]);
    }
}

/// Reads one container's log until the stream ends by itself.
fn read_log(choice: EngineChoice, container: &Container, tty: bool, follow: bool) -> Vec<LogLine> {
    let (engine, _) = select_engine(choice).unwrap();
    let mut reader = LogReader::new(engine, &socket());
    let spec = StreamSpec {
        container_id: container.0.clone(),
        tty,
        query: LogsQuery {
            follow,
            since_ns: None,
            tail: None,
        },
    };
    let id = reader.open(&spec).unwrap();
    let mut lines = Vec::new();
    let mut ended: Option<Result<(), ReadError>> = None;
    let mut closed = false;
    let start = Instant::now();
    let mut events = Vec::new();
    while !closed {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "stream did not end"
        );
        reader
            .poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for event in events.drain(..) {
            match event {
                ReaderEvent::Opened(got) if got == id => {
                    assert!(lines.is_empty() && ended.is_none(), "opened late");
                }
                ReaderEvent::Line(got, line) if got == id => lines.push(line),
                ReaderEvent::Ended(got, result) if got == id => {
                    assert!(ended.is_none(), "ended twice");
                    ended = Some(result);
                }
                ReaderEvent::Closed(got) if got == id => closed = true,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    match ended {
        Some(Ok(())) => {}
        other => panic!("stream did not end cleanly: {other:?}"),
    }
    let stats = reader.engine().stats().snapshot();
    assert_eq!(stats.ops_in_flight(), 0, "{stats:?}");
    assert_eq!(stats.streams_live, 0);
    lines
}

fn messages(lines: &[LogLine], stream: StreamKind) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.stream == stream)
        .map(|l| String::from_utf8(l.message.to_vec()).unwrap())
        .collect()
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix} {i}")).collect()
}

fn assert_timestamps(lines: &[LogLine]) {
    for line in lines {
        let ts = line.timestamp_ns.expect("timestamp");
        // Within a day of now: parsed, not garbage.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert!((now - ts).abs() < 86_400 * 1_000_000_000, "timestamp {ts}");
    }
}

const NUMBERED: &str = "for i in $(seq 1 500); do echo \"out $i\"; echo \"err $i\" >&2; done";

fn numbered_lines_after_exit(choice: EngineChoice) {
    let container = Container::run(false, NUMBERED);
    container.wait();
    let lines = read_log(choice, &container, false, false);
    assert_eq!(messages(&lines, StreamKind::Stdout), numbered("out", 500));
    assert_eq!(messages(&lines, StreamKind::Stderr), numbered("err", 500));
    assert_eq!(lines.len(), 1000);
    assert_timestamps(&lines);
}

#[test]
fn uring_reads_numbered_lines_follow0() {
    numbered_lines_after_exit(EngineChoice::Uring);
}

#[test]
fn epoll_reads_numbered_lines_follow0() {
    numbered_lines_after_exit(EngineChoice::Epoll);
}

/// Follows a container while it writes; its exit ends the stream cleanly (EOF), reported as
/// `Ended(Ok)`.
fn follow_until_container_stops(choice: EngineChoice) {
    let script = "sleep 1; for i in $(seq 1 300); do echo \"out $i\"; echo \"err $i\" >&2; \
                  usleep 2000; done";
    let container = Container::run(false, script);
    let lines = read_log(choice, &container, false, true);
    assert_eq!(messages(&lines, StreamKind::Stdout), numbered("out", 300));
    assert_eq!(messages(&lines, StreamKind::Stderr), numbered("err", 300));
    container.wait();
}

#[test]
fn uring_follows_until_the_container_stops() {
    follow_until_container_stops(EngineChoice::Uring);
}

#[test]
fn epoll_follows_until_the_container_stops() {
    follow_until_container_stops(EngineChoice::Epoll);
}

/// dockerd cuts a 40 KiB line into 16 KiB partial messages, each with its own timestamp
/// prefix; the reader gives back the one line.
fn long_line(choice: EngineChoice) {
    let script = "echo before; head -c 40960 /dev/zero | tr '\\0' x; echo; echo after";
    let container = Container::run(false, script);
    container.wait();
    let lines = read_log(choice, &container, false, false);
    let got = messages(&lines, StreamKind::Stdout);
    assert_eq!(
        got.len(),
        3,
        "{:?}",
        got.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
    assert_eq!(got[0], "before");
    assert_eq!(got[1], "x".repeat(40960));
    assert_eq!(got[2], "after");
    assert!(lines.iter().all(|l| !l.truncated));
}

#[test]
fn uring_reassembles_a_40k_line() {
    long_line(EngineChoice::Uring);
}

#[test]
fn epoll_reassembles_a_40k_line() {
    long_line(EngineChoice::Epoll);
}

/// A TTY container's stream is raw: no frame headers, `\r\n` line ends, stderr merged.
fn tty_stream(choice: EngineChoice) {
    let script = "for i in $(seq 1 200); do echo \"tty $i\"; done";
    let container = Container::run(true, script);
    container.wait();
    let client = Client::new(&socket());
    assert!(client.inspect(&container.0).unwrap().tty);
    let lines = read_log(choice, &container, true, false);
    assert_eq!(messages(&lines, StreamKind::Stdout), numbered("tty", 200));
    assert_eq!(lines.len(), 200);
    assert_timestamps(&lines);
}

#[test]
fn uring_reads_a_tty_container() {
    tty_stream(EngineChoice::Uring);
}

#[test]
fn epoll_reads_a_tty_container() {
    tty_stream(EngineChoice::Epoll);
}

/// Asking for a container that does not exist ends the stream with dockerd's own message.
#[test]
fn missing_container_is_a_clear_error() {
    socket();
    let (engine, _) = select_engine(EngineChoice::Auto).unwrap();
    let mut reader = LogReader::new(engine, &socket());
    let spec = StreamSpec {
        container_id: "no-such-container-xyz".into(),
        tty: false,
        query: LogsQuery {
            follow: false,
            since_ns: None,
            tail: None,
        },
    };
    let id = reader.open(&spec).unwrap();
    let mut events = Vec::new();
    let mut error = None;
    let start = Instant::now();
    while reader.live_streams() > 0 {
        assert!(start.elapsed() < Duration::from_secs(30));
        reader
            .poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for event in events.drain(..) {
            if let ReaderEvent::Ended(got, Err(e)) = event {
                assert_eq!(got, id);
                error = Some(e.to_string());
            }
        }
    }
    let error = error.expect("an error");
    assert!(
        error.contains("404") && error.contains("no-such-container-xyz"),
        "{error}"
    );
}

/// The control client sees running containers, with their TTY flag and name.
#[test]
fn client_lists_running_containers() {
    let container = Container::run(false, "sleep 30");
    let client = Client::new(&socket());
    let found = client.running_containers().unwrap();
    let info = found.iter().find(|c| c.id == container.0).expect("listed");
    assert!(info.running && !info.tty);
    assert_eq!(info.image, IMAGE);
    assert!(!info.name.starts_with('/'));
}
