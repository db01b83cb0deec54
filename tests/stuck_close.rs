//! A stream whose close never completes (issue 12). The kernel cannot be made to withhold a
//! cancel's completion on demand, so the engine here is the epoll engine wrapped to withhold
//! a stream's `Closed` (as a cancel the kernel never completes would); the streams are real
//! ones, of a container on the real dockerd (LOGCAP_DOCKER_SOCK; without it this fails,
//! loudly).
//!
//! - During the run: the first rotation's close is withheld; after the close deadline the
//!   stream is counted in `streams_stuck_closing`, the container goes on with a new stream,
//!   and every line is delivered once, in order. When the withheld `Closed` comes after all,
//!   the gauge goes back to 0.
//! - At stop: every close is withheld; the capture ends within the drain deadline instead of
//!   waiting forever, counting the streams it left behind.

use std::collections::HashSet;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log_capturer::io::epoll::EpollEngine;
use log_capturer::io::{Engine, EngineKind, Event, IoStats, StreamId};
use log_capturer::pipeline::{queue_bounded, Received};
use log_capturer::sources::docker::capture::{
    Capture, CaptureOptions, CaptureStats, DRAIN_DEADLINE,
};
use log_capturer::sources::docker::discovery::ContainerEvent;
use log_capturer::sources::docker::reader::LogReader;
use log_capturer::sources::docker::Client;

mod support;
use support::{docker, remove_containers, socket, wait_for, IMAGE};

/// What the test tells the wrapper.
#[derive(Default)]
struct Control {
    /// Withhold the `Closed` of the next stream closed (once).
    stick_next: AtomicBool,
    /// Withhold every `Closed` from now on.
    stick_all: AtomicBool,
    /// Hand the withheld `Closed` events out at the next poll.
    release: AtomicBool,
    withheld: AtomicU64,
}

struct Withholding {
    inner: EpollEngine,
    control: Arc<Control>,
    sticking: HashSet<StreamId>,
    held: Vec<StreamId>,
}

impl Engine for Withholding {
    fn kind(&self) -> EngineKind {
        self.inner.kind()
    }
    fn open(&mut self, path: &Path, request: Bytes) -> io::Result<StreamId> {
        self.inner.open(path, request)
    }
    fn adopt(&mut self, fd: OwnedFd) -> io::Result<StreamId> {
        self.inner.adopt(fd)
    }
    fn close(&mut self, id: StreamId) {
        if self.control.stick_all.load(Relaxed) || self.control.stick_next.swap(false, Relaxed) {
            self.sticking.insert(id);
        }
        self.inner.close(id)
    }
    fn set_paused(&mut self, id: StreamId, paused: bool) {
        self.inner.set_paused(id, paused)
    }
    fn poll(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        let start = events.len();
        self.inner.poll(events, timeout)?;
        let mut kept = Vec::new();
        for event in events.drain(start..) {
            match event {
                Event::Closed(id) if self.sticking.remove(&id) => {
                    self.held.push(id);
                    self.control.withheld.fetch_add(1, Relaxed);
                }
                other => kept.push(other),
            }
        }
        events.extend(kept);
        if self.control.release.swap(false, Relaxed) {
            events.extend(self.held.drain(..).map(Event::Closed));
        }
        Ok(())
    }
    fn set_coalesce(&mut self, window: Duration) {
        self.inner.set_coalesce(window)
    }
    fn set_pacing(&mut self, delay: Duration) {
        self.inner.set_pacing(delay)
    }
    fn set_live(&mut self, id: StreamId, live: bool) {
        self.inner.set_live(id, live)
    }
    fn live_streams(&self) -> usize {
        // A withheld stream is still open as far as its user can tell.
        self.inner.live_streams() + self.held.len() + self.sticking.len()
    }
    fn stats(&self) -> Arc<IoStats> {
        self.inner.stats()
    }
}

struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        remove_containers(&[&self.0]);
    }
}

#[test]
fn a_stream_stuck_closing_is_counted_and_its_container_reads_on_a_new_stream() {
    let name = format!("lcstuck{}", std::process::id());
    let id = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "n=0; while true; do n=$((n+1)); echo $n; sleep 0.02; done",
    ]);
    let _container = Container(id.clone());
    let info = Client::new(&socket()).inspect(&id).expect("inspect");

    let control = Arc::new(Control::default());
    control.stick_next.store(true, Relaxed);
    let (tx, rx) = queue_bounded(100_000, 64 << 20);
    let stats = Arc::new(CaptureStats::default());
    let options = CaptureOptions {
        rotation: Duration::from_millis(700),
        idle_timeout: Duration::ZERO,
        overlap: Duration::from_secs(1),
        // Rotation on time, whatever the stream delivers: the closes this test withholds.
        reopen_window: false,
        follow: true,
        new_from_now: false,
        include_stdout: true,
        include_stderr: true,
    };
    let (events_tx, events_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let sock = socket();
    let capture = {
        let (stats, stop, control) = (stats.clone(), stop.clone(), control.clone());
        thread::spawn(move || {
            // Engines are single-threaded: made on the thread that polls it.
            let engine = Withholding {
                inner: EpollEngine::new().unwrap(),
                control,
                sticking: HashSet::new(),
                held: Vec::new(),
            };
            let reader = LogReader::new(Box::new(engine), &sock);
            let mut capture = Capture::new(
                reader,
                options,
                tx,
                Default::default(),
                stats,
                Arc::default(),
            )
            .with_close_deadline(Duration::from_millis(500));
            capture.run(&events_rx, &stop);
        })
    };
    events_tx.send(ContainerEvent::Running(info)).unwrap();
    let lines: Arc<Mutex<Vec<u64>>> = Arc::default();
    let collector = {
        let lines = lines.clone();
        thread::spawn(move || loop {
            match rx.recv(Duration::from_millis(100)) {
                Received::Batch(batch) => {
                    lines.lock().unwrap().extend(batch.entries.iter().map(|e| {
                        std::str::from_utf8(&e.message)
                            .unwrap()
                            .parse::<u64>()
                            .unwrap()
                    }))
                }
                Received::Timeout => {}
                Received::Closed => return,
            }
        })
    };

    wait_for("a stream stuck closing", Duration::from_secs(15), || {
        stats.streams_stuck_closing.load(Relaxed) == 1
    });
    let opened = stats.streams_opened.load(Relaxed);
    let at_stuck = lines.lock().unwrap().len();
    // The container goes on: a new stream, and lines after the stuck one.
    wait_for(
        "lines read on a new stream",
        Duration::from_secs(15),
        || {
            stats.streams_opened.load(Relaxed) > opened
                || lines.lock().unwrap().len() > at_stuck + 50
        },
    );
    wait_for(
        "lines after the stuck close",
        Duration::from_secs(15),
        || lines.lock().unwrap().len() > at_stuck + 50,
    );
    // The withheld Closed comes after all: the gauge goes back.
    control.release.store(true, Relaxed);
    wait_for("the gauge back to 0", Duration::from_secs(5), || {
        stats.streams_stuck_closing.load(Relaxed) == 0
    });

    // At stop, no close completes: the capture ends by the drain deadline.
    control.stick_all.store(true, Relaxed);
    let stopped = Instant::now();
    stop.store(true, Relaxed);
    wait_for("the capture to end", DRAIN_DEADLINE * 2, || {
        capture.is_finished()
    });
    let took = stopped.elapsed();
    capture.join().unwrap();
    collector.join().unwrap();
    assert!(
        took >= DRAIN_DEADLINE,
        "ended {took:?} after the stop: nothing was stuck?"
    );
    assert!(
        stats.streams_stuck_closing.load(Relaxed) >= 1,
        "the streams left at stop are counted"
    );
    assert!(control.withheld.load(Relaxed) >= 2);

    // Every line once, in order, none missing.
    let lines = lines.lock().unwrap();
    let first = lines[0];
    assert_eq!(first, 1, "read from the first line");
    for (i, w) in lines.windows(2).enumerate() {
        assert_eq!(w[1], w[0] + 1, "line {i}: {} after {}", w[1], w[0]);
    }
}
