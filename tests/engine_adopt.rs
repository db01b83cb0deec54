//! `Engine::adopt`: a socket another thread connected (and sent its request on) is read and
//! closed under the same contract as an opened stream, on both engines. A socket pair stands
//! in for dockerd: what matters is the socket, not the peer.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use log_capturer::io::{select_engine, Engine, EngineChoice, Event, StreamId};

/// Polls until `done` says so; every event of `id` goes to `seen`.
fn poll_until(engine: &mut dyn Engine, seen: &mut Vec<Event>, done: impl Fn(&[Event]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut events = Vec::new();
    while !done(seen) {
        assert!(Instant::now() < deadline, "seen: {seen:?}");
        engine
            .poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        seen.append(&mut events);
    }
}

fn adopted_socket_is_read_to_eof_then_closed(choice: EngineChoice) {
    let (engine, _) = select_engine(choice).unwrap();
    let mut engine = engine;
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let id: StreamId = engine.adopt(ours.into()).unwrap();
    peer.write_all(b"HTTP/1.1 200 OK\r\n\r\nhello").unwrap();
    drop(peer);
    let mut seen = Vec::new();
    poll_until(&mut *engine, &mut seen, |s| {
        s.iter().any(|e| matches!(e, Event::Eof(x) if *x == id))
    });
    let data: Vec<u8> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Data(x, bytes) if *x == id => Some(bytes.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(data, b"HTTP/1.1 200 OK\r\n\r\nhello");
    engine.close(id);
    poll_until(&mut *engine, &mut seen, |s| {
        s.iter().any(|e| matches!(e, Event::Closed(x) if *x == id))
    });
    assert_eq!(engine.live_streams(), 0);
    let stats = engine.stats().snapshot();
    assert_eq!(stats.ops_in_flight(), 0, "{stats:?}");
    assert_eq!(stats.streams_live, 0);
}

/// Closing an adopted stream while its receive waits (the peer silent) cancels and reaps it.
fn adopted_silent_socket_closes(choice: EngineChoice) {
    let (engine, _) = select_engine(choice).unwrap();
    let mut engine = engine;
    let (ours, peer) = UnixStream::pair().unwrap();
    let id = engine.adopt(ours.into()).unwrap();
    let mut seen = Vec::new();
    engine
        .poll(&mut seen, Some(Duration::from_millis(20)))
        .unwrap();
    assert!(seen.is_empty(), "{seen:?}");
    engine.close(id);
    poll_until(&mut *engine, &mut seen, |s| {
        s.iter().any(|e| matches!(e, Event::Closed(x) if *x == id))
    });
    assert_eq!(engine.stats().snapshot().ops_in_flight(), 0);
    drop(peer);
}

#[test]
fn uring_adopted_socket_is_read_to_eof_then_closed() {
    adopted_socket_is_read_to_eof_then_closed(EngineChoice::Uring);
    adopted_silent_socket_closes(EngineChoice::Uring);
}

#[test]
fn epoll_adopted_socket_is_read_to_eof_then_closed() {
    adopted_socket_is_read_to_eof_then_closed(EngineChoice::Epoll);
    adopted_silent_socket_closes(EngineChoice::Epoll);
}
