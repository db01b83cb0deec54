//! The engines' cancellation contract, against in-test servers: a real dockerd cannot be made
//! to hold a stream open without ever sending a byte, and that is exactly the case where the
//! Go capturer leaked.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log_capturer::io::uring::{self, UringEngine, UringSupport};
use log_capturer::io::{select_engine, Engine, EngineChoice, EngineKind, Event, StreamId};

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.multiplexed-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
const DEADLINE: Duration = Duration::from_secs(30);

/// fd counts are per process: the tests of this file take turns.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Answers each request with a response head and then, as a stuck dockerd would, nothing;
/// counts the connections it accepted and those its peer closed. Dropping it waits until
/// every connection is closed and the listener is gone, so that the next test counts fds from
/// a quiet process.
struct SilentServer {
    path: PathBuf,
    _dir: TempDir,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl SilentServer {
    fn start(then: fn(&mut UnixStream)) -> SilentServer {
        let dir = TempDir::new();
        let path = dir.0.join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, c, s) = (accepted.clone(), closed.clone(), stop.clone());
        let acceptor = thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { return };
                a.fetch_add(1, SeqCst);
                let c = c.clone();
                thread::spawn(move || {
                    read_request(&mut conn);
                    then(&mut conn);
                    // Wait for the client to close: read returns 0 (or an error) only then.
                    let mut byte = [0u8; 1];
                    while matches!(conn.read(&mut byte), Ok(n) if n > 0) {}
                    // Closed before it is counted, so that a test waiting for the count also
                    // sees the fd gone.
                    drop(conn);
                    c.fetch_add(1, SeqCst);
                });
            }
        });
        SilentServer {
            path,
            _dir: dir,
            accepted,
            closed,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn open_connections(&self) -> usize {
        self.accepted.load(SeqCst) - self.closed.load(SeqCst)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // Wakes the acceptor, which sees the flag and drops the listener.
        drop(UnixStream::connect(&self.path));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        if !thread::panicking() {
            wait_for("the server's connections to close", || {
                self.open_connections() == 0
            });
        }
    }
}

fn read_request(conn: &mut UnixStream) {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => return,
        }
    }
}

fn silent(conn: &mut UnixStream) {
    conn.write_all(HEAD).unwrap();
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "logcap-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn engine(choice: EngineChoice) -> Box<dyn Engine> {
    let (engine, selection) = select_engine(choice).expect("engine");
    let want = if choice == EngineChoice::Epoll {
        EngineKind::Epoll
    } else {
        EngineKind::Uring
    };
    assert_eq!(engine.kind(), want, "{selection}");
    engine
}

fn request() -> Bytes {
    Bytes::from_static(b"GET /v1.41/containers/x/logs?follow=1 HTTP/1.1\r\nHost: docker\r\n\r\n")
}

/// Polls until `done` says so; any event the test did not expect fails it.
fn poll_until(
    engine: &mut dyn Engine,
    what: &str,
    mut on_event: impl FnMut(Event),
    mut done: impl FnMut() -> bool,
) {
    let start = Instant::now();
    let mut events = Vec::new();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        engine
            .poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for event in events.drain(..) {
            on_event(event);
        }
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Opens `n` streams and waits until each has received the response head, so that each has
/// exactly one recv in flight.
fn open_streams(engine: &mut dyn Engine, path: &Path, n: usize) -> HashSet<StreamId> {
    let mut waiting: HashSet<StreamId> = (0..n)
        .map(|_| engine.open(path, request()).unwrap())
        .collect();
    let live = waiting.clone();
    let mut received = Vec::new();
    let pending = std::cell::RefCell::new(&mut waiting);
    poll_until(
        engine,
        "response heads",
        |event| match event {
            Event::Data(id, data) => {
                received.extend_from_slice(&data);
                pending.borrow_mut().remove(&id);
            }
            other => panic!("unexpected {other:?}"),
        },
        || pending.borrow().is_empty(),
    );
    assert_eq!(received.len(), n * HEAD.len());
    live
}

fn close_all(engine: &mut dyn Engine, streams: &HashSet<StreamId>) {
    for &id in streams {
        engine.close(id);
    }
    let mut open = streams.clone();
    let pending = std::cell::RefCell::new(&mut open);
    poll_until(
        engine,
        "closes",
        |event| match event {
            Event::Closed(id) => assert!(pending.borrow_mut().remove(&id), "{id} closed twice"),
            // Data and errors of a stream may still arrive in the batch where it was closed
            // only if the close came after; here every close precedes the poll.
            other => panic!("event after close: {other:?}"),
        },
        || pending.borrow().is_empty(),
    );
}

/// The storm: 200 silent streams, rotated 20 times.
fn rotation_storm(make: impl FnOnce() -> Box<dyn Engine>) {
    let _serial = serial();
    let server = SilentServer::start(silent);
    let fds_before = open_fds();
    let mut engine = make();
    let stats = engine.stats();
    const STREAMS: usize = 200;
    let mut live = open_streams(&mut *engine, &server.path, STREAMS);
    for round in 1..=20 {
        let s = stats.snapshot();
        assert_eq!(s.recv_in_flight, STREAMS as i64, "round {round}: {s:?}");
        assert_eq!(
            s.ops_in_flight(),
            engine.live_streams() as i64,
            "round {round}: {s:?}"
        );
        assert_eq!(engine.live_streams(), STREAMS);

        // Rotation: the old streams are closed and new ones opened in the same breath.
        for &id in &live {
            engine.close(id);
        }
        let mut old = live.clone();
        let mut fresh: HashSet<StreamId> = (0..STREAMS)
            .map(|_| engine.open(&server.path, request()).unwrap())
            .collect();
        live = fresh.clone();
        let state = std::cell::RefCell::new((&mut old, &mut fresh));
        poll_until(
            &mut *engine,
            "rotation",
            |event| {
                let (old, fresh) = &mut *state.borrow_mut();
                match event {
                    Event::Closed(id) => assert!(old.remove(&id), "unexpected close of {id}"),
                    Event::Data(id, _) => assert!(fresh.remove(&id), "data for {id}"),
                    other => panic!("unexpected {other:?}"),
                }
            },
            || {
                let (old, fresh) = &*state.borrow();
                old.is_empty() && fresh.is_empty()
            },
        );
        let s = stats.snapshot();
        assert_eq!(s.ops_in_flight(), STREAMS as i64, "round {round}: {s:?}");
        assert_eq!(s.streams_live, STREAMS as i64);
        assert_eq!(s.cancellations, (round * STREAMS) as u64);
        // The server must see every old connection end: a cancelled read that still held the
        // socket would keep it open (NOTES section 2).
        wait_for("server to see the old connections closed", || {
            server.closed.load(SeqCst) == round * STREAMS
        });
        assert_eq!(server.open_connections(), STREAMS);
    }
    close_all(&mut *engine, &live);
    let s = stats.snapshot();
    assert_eq!(s.ops_in_flight(), 0, "{s:?}");
    assert_eq!(s.streams_live, 0);
    assert_eq!(s.streams_opened, s.streams_closed);
    assert_eq!(s.cancel_reaped_count, s.cancellations);
    drop(engine);
    wait_for("server to see all connections closed", || {
        server.open_connections() == 0
    });
    assert_eq!(open_fds(), fds_before, "fds leaked");
}

#[test]
fn uring_rotation_storm_cancels_and_reaps_everything() {
    rotation_storm(|| engine(EngineChoice::Uring));
}

/// The same on the path for kernels older than 5.19: one cancel per op, by user_data.
#[test]
fn uring_rotation_storm_with_cancel_by_user_data() {
    rotation_storm(|| {
        let support = UringSupport {
            cancel_by_fd: false,
            ..uring::probe().expect("io_uring")
        };
        Box::new(UringEngine::new(support).unwrap())
    });
}

#[test]
fn epoll_rotation_storm_cancels_and_reaps_everything() {
    rotation_storm(|| engine(EngineChoice::Epoll));
}

/// IORING_ASYNC_CANCEL_FD | _ALL exist since 5.19: the probe must find them there.
#[test]
fn probe_finds_cancel_by_fd_where_the_kernel_has_it() {
    let _serial = serial();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    let support = uring::probe().expect("io_uring");
    assert_eq!(
        support.cancel_by_fd,
        (major, minor) >= (5, 19),
        "kernel {release}"
    );
}

fn small_body(conn: &mut UnixStream) {
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
}

/// A stream the peer ends: all bytes, then EOF, then nothing until close.
fn eof_is_reported(choice: EngineChoice) {
    let _serial = serial();
    let server = SilentServer::start(small_body);
    let mut engine = engine(choice);
    let id = engine.open(&server.path, request()).unwrap();
    let mut bytes = Vec::new();
    let mut eof = false;
    let flag = std::cell::Cell::new(false);
    poll_until(
        &mut *engine,
        "eof",
        |event| match event {
            Event::Data(got, data) if got == id => bytes.extend_from_slice(&data),
            Event::Eof(got) if got == id => flag.set(true),
            other => panic!("unexpected {other:?}"),
        },
        || flag.get(),
    );
    eof |= flag.get();
    assert!(eof);
    assert!(
        bytes.ends_with(b"\r\n\r\nhello"),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(engine.stats().snapshot().ops_in_flight(), 0);
    engine.close(id);
    let mut events = Vec::new();
    engine.poll(&mut events, Some(Duration::ZERO)).unwrap();
    assert!(
        matches!(events.as_slice(), [Event::Closed(got)] if *got == id),
        "{events:?}"
    );
    // Nothing was in flight, so nothing had to be cancelled.
    assert_eq!(engine.stats().snapshot().cancellations, 0);
}

#[test]
fn uring_reports_eof() {
    eof_is_reported(EngineChoice::Uring);
}

#[test]
fn epoll_reports_eof() {
    eof_is_reported(EngineChoice::Epoll);
}

fn missing_socket_is_an_error(choice: EngineChoice) {
    let _serial = serial();
    let dir = TempDir::new();
    let mut engine = engine(choice);
    let id = engine.open(&dir.0.join("absent.sock"), request()).unwrap();
    let error = std::cell::RefCell::new(None);
    poll_until(
        &mut *engine,
        "connect error",
        |event| match event {
            Event::Error(got, e) if got == id => *error.borrow_mut() = Some(e),
            other => panic!("unexpected {other:?}"),
        },
        || error.borrow().is_some(),
    );
    let error = error.into_inner().unwrap();
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}");
    assert!(error.to_string().starts_with("connect"), "{error}");
    engine.close(id);
    assert_eq!(engine.stats().snapshot().ops_in_flight(), 0);
}

#[test]
fn uring_connect_error_is_reported() {
    missing_socket_is_an_error(EngineChoice::Uring);
}

#[test]
fn epoll_connect_error_is_reported() {
    missing_socket_is_an_error(EngineChoice::Epoll);
}

/// A paused stream arms no new receive: what the peer sends then waits in the socket, not in
/// memory. The io_uring recv armed before the pause stays in flight (it is only replaced once
/// it completes); epoll simply stops watching the fd.
fn pause_holds_back_reads(choice: EngineChoice, in_flight_while_paused: i64) {
    let _serial = serial();
    let server = SilentServer::start(silent);
    let mut engine = engine(choice);
    let stats = engine.stats();
    let ids = open_streams(&mut *engine, &server.path, 1);
    let id = *ids.iter().next().unwrap();
    engine.set_paused(id, true);
    let mut events = Vec::new();
    engine.poll(&mut events, Some(Duration::ZERO)).unwrap();
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(stats.snapshot().recv_in_flight, in_flight_while_paused);
    engine.set_paused(id, false);
    assert_eq!(stats.snapshot().recv_in_flight, 1);
    close_all(&mut *engine, &ids);
    assert_eq!(stats.snapshot().ops_in_flight(), 0);
}

#[test]
fn uring_pause_and_resume() {
    pause_holds_back_reads(EngineChoice::Uring, 1);
}

#[test]
fn epoll_pause_and_resume() {
    pause_holds_back_reads(EngineChoice::Epoll, 0);
}

/// Opened by `close_while_data_waits`: every connection then sends one chunk.
static GATE: (Mutex<bool>, std::sync::Condvar) = (Mutex::new(false), std::sync::Condvar::new());
static CHUNKS_SENT: AtomicUsize = AtomicUsize::new(0);

fn head_then_chunk_at_gate(conn: &mut UnixStream) {
    conn.write_all(HEAD).unwrap();
    wait_gate(&GATE);
    conn.write_all(b"5\r\nhello\r\n").unwrap();
    CHUNKS_SENT.fetch_add(1, SeqCst);
}

/// `close` finishes its stream before it returns (io_uring: the cancel is submitted and its
/// completions reaped in the call), and whatever it reaped for other streams is delivered by
/// the next poll, except for streams closed in between: after `close`, only `Closed`.
fn close_while_data_waits(choice: EngineChoice) {
    let _serial = serial();
    open_gate(&GATE, false);
    CHUNKS_SENT.store(0, SeqCst);
    let server = SilentServer::start(head_then_chunk_at_gate);
    let mut engine = engine(choice);
    let stats = engine.stats();
    let mut ids: Vec<StreamId> = open_streams(&mut *engine, &server.path, 3)
        .into_iter()
        .collect();
    ids.sort();
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    open_gate(&GATE, true);
    // Once written, the chunks are in the client sockets: nothing is polled from here on.
    wait_for("the chunks to be sent", || CHUNKS_SENT.load(SeqCst) == 3);

    engine.close(a);
    assert_eq!(engine.live_streams(), 2, "a's close is complete on return");
    assert_eq!(stats.snapshot().streams_live, 2);
    wait_for("a's connection to close", || {
        server.closed.load(SeqCst) == 1
    });
    engine.close(b);
    assert_eq!(engine.live_streams(), 1);

    let seen = std::cell::RefCell::new((Vec::new(), Vec::new()));
    poll_until(
        &mut *engine,
        "c's chunk and the closes",
        |event| match event {
            Event::Closed(id) => seen.borrow_mut().0.push(id),
            Event::Data(id, data) if id == c => seen.borrow_mut().1.extend_from_slice(&data),
            other => panic!("event after close: {other:?}"),
        },
        || seen.borrow().0.len() == 2 && seen.borrow().1.len() == 10,
    );
    let (mut closed, c_data) = seen.into_inner();
    closed.sort();
    assert_eq!(closed, [a, b]);
    assert_eq!(c_data, b"5\r\nhello\r\n");
    close_all(&mut *engine, &[c].into_iter().collect());
    assert_eq!(stats.snapshot().ops_in_flight(), 0);
}

#[test]
fn uring_close_completes_before_returning() {
    close_while_data_waits(EngineChoice::Uring);
}

#[test]
fn epoll_close_completes_before_returning() {
    close_while_data_waits(EngineChoice::Epoll);
}

/// Opened by `paced_stream_waits_in_the_socket` after the first chunk was read.
static GATE2: (Mutex<bool>, std::sync::Condvar) = (Mutex::new(false), std::sync::Condvar::new());

fn wait_gate(gate: &(Mutex<bool>, std::sync::Condvar)) {
    let mut open = gate.0.lock().unwrap();
    while !*open {
        open = gate.1.wait(open).unwrap();
    }
}

fn open_gate(gate: &(Mutex<bool>, std::sync::Condvar), open: bool) {
    *gate.0.lock().unwrap() = open;
    gate.1.notify_all();
}

fn head_then_two_chunks_at_gates(conn: &mut UnixStream) {
    conn.write_all(HEAD).unwrap();
    wait_gate(&GATE);
    conn.write_all(b"5\r\nhello\r\n").unwrap();
    CHUNKS_SENT.fetch_add(1, SeqCst);
    wait_gate(&GATE2);
    conn.write_all(b"5\r\nworld\r\n").unwrap();
    CHUNKS_SENT.fetch_add(1, SeqCst);
}

/// With pacing, a small receive on a slow stream marked live is not followed by another recv
/// until the delay is over: the next chunk waits in the socket, nothing is in flight, and a
/// close completes at once.
fn paced_stream_waits_in_the_socket(choice: EngineChoice) {
    let _serial = serial();
    open_gate(&GATE, false);
    open_gate(&GATE2, false);
    CHUNKS_SENT.store(0, SeqCst);
    let server = SilentServer::start(head_then_two_chunks_at_gates);
    let mut engine = engine(choice);
    engine.set_pacing(Duration::from_secs(20));
    let stats = engine.stats();
    let ids = open_streams(&mut *engine, &server.path, 1);
    let id = *ids.iter().next().unwrap();
    engine.set_live(id, true);
    assert_eq!(stats.snapshot().recv_in_flight, 1, "the head is not paced");
    // Only a stream with a measured rate is paced: the first window (1 s from the head's
    // receive) must be over when the chunk is received; at the head and 10 bytes in 1.1 s it
    // is slow enough that 20 s of it queue under `PACE_BELOW`.
    thread::sleep(Duration::from_millis(1100));
    open_gate(&GATE, true);
    let mut got = Vec::new();
    poll_until(
        &mut *engine,
        "the first chunk",
        |event| match event {
            Event::Data(_, data) => got.extend_from_slice(&data),
            other => panic!("unexpected {other:?}"),
        },
        || CHUNKS_SENT.load(SeqCst) == 1 && stats.snapshot().bytes_received as usize > HEAD.len(),
    );
    assert_eq!(got, b"5\r\nhello\r\n");
    assert_eq!(stats.snapshot().ops_in_flight(), 0, "no recv while paced");
    open_gate(&GATE2, true);
    wait_for("the second chunk to be sent", || {
        CHUNKS_SENT.load(SeqCst) == 2
    });
    let mut events = Vec::new();
    for _ in 0..3 {
        engine
            .poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
    }
    assert!(events.is_empty(), "read during the delay: {events:?}");
    engine.close(id);
    assert_eq!(engine.live_streams(), 0);
    engine.poll(&mut events, Some(Duration::ZERO)).unwrap();
    assert!(
        matches!(events[..], [Event::Closed(c)] if c == id),
        "{events:?}"
    );
    assert_eq!(stats.snapshot().ops_in_flight(), 0);
}

#[test]
fn uring_paced_stream_waits_in_the_socket() {
    paced_stream_waits_in_the_socket(EngineChoice::Uring);
}

#[test]
fn epoll_paced_stream_waits_in_the_socket() {
    paced_stream_waits_in_the_socket(EngineChoice::Epoll);
}

/// A stream the caller did not mark live (or unmarked: it fell behind its writer) is never
/// paced, however small its receives: the second chunk is read as soon as it is sent.
fn stream_not_live_is_not_paced(choice: EngineChoice) {
    let _serial = serial();
    open_gate(&GATE, false);
    open_gate(&GATE2, false);
    CHUNKS_SENT.store(0, SeqCst);
    let server = SilentServer::start(head_then_two_chunks_at_gates);
    let mut engine = engine(choice);
    engine.set_pacing(Duration::from_secs(3600));
    let stats = engine.stats();
    let ids = open_streams(&mut *engine, &server.path, 1);
    let id = *ids.iter().next().unwrap();
    // Marked live, then unmarked, as the reader does when a stream's lines grow old.
    engine.set_live(id, true);
    engine.set_live(id, false);
    let mut got = Vec::new();
    let mut on_data = |event| match event {
        Event::Data(_, data) => got.extend_from_slice(&data),
        other => panic!("unexpected {other:?}"),
    };
    open_gate(&GATE, true);
    poll_until(&mut *engine, "the first chunk", &mut on_data, || {
        stats.snapshot().bytes_received as usize == HEAD.len() + 10
    });
    open_gate(&GATE2, true);
    poll_until(&mut *engine, "the second chunk", &mut on_data, || {
        stats.snapshot().bytes_received as usize == HEAD.len() + 20
    });
    assert_eq!(got, b"5\r\nhello\r\n5\r\nworld\r\n");
    assert_eq!(stats.snapshot().recv_in_flight, 1, "re-armed at once");
    engine.close(id);
}

#[test]
fn uring_stream_not_live_is_not_paced() {
    stream_not_live_is_not_paced(EngineChoice::Uring);
}

#[test]
fn epoll_stream_not_live_is_not_paced() {
    stream_not_live_is_not_paced(EngineChoice::Epoll);
}
