//! The epoll engine, for hosts where io_uring is blocked. Same contract as the io_uring one:
//! readiness, not submissions, so between two `poll` calls nothing of a stream is held by the
//! kernel; "in flight" here counts the operation each stream is waiting to perform (connect
//! retry, send, recv), so the counters mean the same on both engines.
//!
//! Received bytes are read into one scratch buffer per engine and copied out to exactly the
//! size received: no unsafe code and no per-stream receive buffer.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::table::StreamTable;
use super::{Engine, EngineKind, Event, IoStats, OpKind, StreamId};

const SCRATCH: usize = 64 * 1024;
/// Reads per readiness event, so one busy stream cannot starve the others.
const READS_PER_WAKEUP: usize = 4;
/// A unix connect answers EAGAIN when the listener's backlog is full; retry this often.
const CONNECT_RETRY: Duration = Duration::from_millis(10);

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Sending,
    Receiving,
    Finished,
}

struct Stream {
    fd: OwnedFd,
    path: PathBuf,
    phase: Phase,
    request: Bytes,
    paused: bool,
    /// The readiness the fd is registered for, if any.
    registered: Option<epoll::EventFlags>,
    /// The operation this stream waits to perform: what the counters call in flight.
    waiting: Option<OpKind>,
    /// Waiting in [`EpollEngine::paced`] before it reads again (see [`Engine::set_pacing`]).
    paced: bool,
    /// The caller says the stream is live ([`Engine::set_live`]): only then is it paced.
    live: bool,
    /// Whether it is slow enough to pace ([`super::RateMeter`]).
    rate: super::RateMeter,
}

pub struct EpollEngine {
    epoll: OwnedFd,
    streams: StreamTable<Stream>,
    pending: Vec<Event>,
    stats: Arc<IoStats>,
    scratch: Vec<u8>,
    ready: Vec<epoll::Event>,
    /// See [`Engine::set_coalesce`].
    coalesce: Duration,
    /// See [`Engine::set_pacing`]: a paced stream is taken out of the epoll set until due.
    pacing: Duration,
    paced: VecDeque<(Instant, StreamId)>,
    /// Taken once per poll.
    now: Instant,
}

fn key(id: StreamId) -> u64 {
    (u64::from(id.generation) << 32) | u64::from(id.index)
}

fn id_of(key: u64) -> StreamId {
    StreamId {
        index: key as u32,
        generation: (key >> 32) as u32,
    }
}

impl EpollEngine {
    pub fn new() -> io::Result<Self> {
        Ok(EpollEngine {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            streams: StreamTable::default(),
            pending: Vec::new(),
            stats: Arc::default(),
            scratch: Vec::with_capacity(SCRATCH),
            ready: Vec::with_capacity(1024),
            coalesce: Duration::ZERO,
            pacing: Duration::ZERO,
            paced: VecDeque::new(),
            now: Instant::now(),
        })
    }

    fn set_waiting(&mut self, id: StreamId, op: Option<OpKind>) {
        let stream = self.streams.get_mut(id).expect("live stream");
        if stream.waiting == op {
            return;
        }
        if let Some(old) = stream.waiting {
            self.stats.op_reaped(old);
        }
        if let Some(new) = op {
            self.stats.op_submitted(new);
        }
        stream.waiting = op;
    }

    /// Registers the fd for `flags` (or removes it for `None`).
    fn register(&mut self, id: StreamId, flags: Option<epoll::EventFlags>) -> io::Result<()> {
        let stream = self.streams.get_mut(id).expect("live stream");
        if stream.registered == flags {
            return Ok(());
        }
        let data = epoll::EventData::new_u64(key(id));
        match (stream.registered, flags) {
            (None, Some(f)) => epoll::add(&self.epoll, &stream.fd, data, f)?,
            (Some(_), Some(f)) => epoll::modify(&self.epoll, &stream.fd, data, f)?,
            (Some(_), None) => epoll::delete(&self.epoll, &stream.fd)?,
            (None, None) => {}
        }
        stream.registered = flags;
        Ok(())
    }

    /// Moves a stream as far as it can go without blocking, then registers for what it waits
    /// on. Data and EOF are appended to `events`.
    fn drive(&mut self, id: StreamId, events: &mut Vec<Event>) {
        if let Err(e) = self.step(id, events) {
            let stream = self.streams.get_mut(id).expect("live stream");
            stream.phase = Phase::Finished;
            events.push(Event::Error(id, e));
        }
        let stream = self.streams.get(id).expect("live stream");
        let (waiting, flags) = match stream.phase {
            Phase::Connecting => (Some(OpKind::Connect), None),
            Phase::Sending => (Some(OpKind::Send), Some(epoll::EventFlags::OUT)),
            // Paused or paced: out of the epoll set, nothing it waits to do.
            Phase::Receiving if stream.paused || stream.paced => (None, None),
            Phase::Receiving => (
                Some(OpKind::Recv),
                Some(epoll::EventFlags::IN | epoll::EventFlags::RDHUP),
            ),
            Phase::Finished => (None, None),
        };
        self.set_waiting(id, waiting);
        if let Err(e) = self.register(id, flags) {
            let stream = self.streams.get_mut(id).expect("live stream");
            stream.phase = Phase::Finished;
            self.set_waiting(id, None);
            events.push(Event::Error(id, e));
        }
    }

    fn step(&mut self, id: StreamId, events: &mut Vec<Event>) -> io::Result<()> {
        let stream = self.streams.get_mut(id).expect("live stream");
        if stream.phase == Phase::Connecting {
            let addr = SocketAddrUnix::new(stream.path.as_path())?;
            match rustix::net::connect(&stream.fd, &addr) {
                Ok(()) => stream.phase = Phase::Sending,
                Err(Errno::AGAIN) => return Ok(()),
                Err(e) => return Err(io::Error::new(e.kind(), format!("connect: {e}"))),
            }
        }
        while stream.phase == Phase::Sending {
            match rustix::net::send(
                &stream.fd,
                &stream.request,
                rustix::net::SendFlags::NOSIGNAL,
            ) {
                Ok(n) => {
                    let _ = stream.request.split_to(n);
                    if stream.request.is_empty() {
                        stream.phase = Phase::Receiving;
                    }
                }
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("send: {e}"))),
            }
        }
        let mut reads = 0;
        while stream.phase == Phase::Receiving
            && !stream.paused
            && !stream.paced
            && reads < READS_PER_WAKEUP
        {
            self.scratch.clear();
            match rustix::io::read(
                &stream.fd,
                rustix::buffer::spare_capacity(&mut self.scratch),
            ) {
                Ok(0) => {
                    stream.phase = Phase::Finished;
                    events.push(Event::Eof(id));
                }
                Ok(n) => {
                    self.stats.received(n);
                    events.push(Event::Data(id, Bytes::copy_from_slice(&self.scratch)));
                    reads += 1;
                    stream.rate.record(n, self.now);
                    if stream.live && stream.rate.may_pace(n, self.pacing, self.now) {
                        stream.paced = true;
                        self.paced.push_back((self.now + self.pacing, id));
                        return Ok(());
                    }
                    if n < SCRATCH {
                        // A short read took all the socket held: the next read would only
                        // say EAGAIN (a syscall per line when lines come one at a time), and
                        // level-triggered epoll reports the fd again when more arrives.
                        return Ok(());
                    }
                }
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("recv: {e}"))),
            }
        }
        Ok(())
    }

    /// Completions a coalescing poll waits for: one per stream waiting to send or receive, up
    /// to [`super::COALESCE_COMPLETIONS`], as the io_uring engine counts its ops in flight.
    fn want(&self) -> usize {
        let waiting = self.stats.in_flight(OpKind::Recv) + self.stats.in_flight(OpKind::Send);
        usize::try_from(waiting)
            .unwrap_or(0)
            .clamp(1, super::COALESCE_COMPLETIONS)
    }

    /// One `epoll_wait`; `self.ready` holds what it reported.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let ts = timeout.map(|t| rustix::event::Timespec {
            tv_sec: t.as_secs() as i64,
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        // Capacity from `new`; `spare_capacity` fills up to it and sets the length.
        self.ready.clear();
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut self.ready),
            ts.as_ref(),
        ) {
            Ok(_) | Err(Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn finalize(&mut self, id: StreamId) {
        self.set_waiting(id, None);
        // Deregistering before the close keeps the epoll set exact even if the fd was dup'ed.
        if let Err(e) = self.register(id, None) {
            tracing::warn!("epoll delete for {id}: {e}");
        }
        if let Some(stream) = self.streams.remove(id) {
            drop(stream.fd);
            self.stats.stream_closed();
            self.pending.push(Event::Closed(id));
        }
    }
}

impl Engine for EpollEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Epoll
    }

    fn open(&mut self, path: &Path, request: Bytes) -> io::Result<StreamId> {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        let id = self.streams.insert(Stream {
            fd,
            path: path.to_path_buf(),
            phase: Phase::Connecting,
            request,
            paused: false,
            registered: None,
            waiting: None,
            paced: false,
            live: false,
            rate: super::RateMeter::default(),
        });
        self.stats.stream_opened();
        let mut events = std::mem::take(&mut self.pending);
        self.drive(id, &mut events);
        self.pending = events;
        Ok(id)
    }

    fn adopt(&mut self, fd: OwnedFd) -> io::Result<StreamId> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        let id = self.streams.insert(Stream {
            fd,
            path: PathBuf::new(),
            phase: Phase::Receiving,
            request: Bytes::new(),
            paused: false,
            paced: false,
            live: false,
            rate: super::RateMeter::default(),
            registered: None,
            waiting: None,
        });
        self.stats.stream_opened();
        let mut events = std::mem::take(&mut self.pending);
        self.drive(id, &mut events);
        self.pending = events;
        Ok(id)
    }

    fn close(&mut self, id: StreamId) {
        let Some(stream) = self.streams.get(id) else {
            return;
        };
        let started = Instant::now();
        if stream.waiting.is_some() {
            self.stats.cancelled();
        }
        let had_op = stream.waiting.is_some();
        super::discard_events_of(&mut self.pending, id);
        self.finalize(id);
        if had_op {
            self.stats
                .cancel_reaped(started.elapsed().as_nanos().min(u64::MAX as u128) as u64);
        }
    }

    fn set_paused(&mut self, id: StreamId, paused: bool) {
        let Some(stream) = self.streams.get_mut(id) else {
            return;
        };
        if stream.paused == paused {
            return;
        }
        stream.paused = paused;
        let mut events = std::mem::take(&mut self.pending);
        self.drive(id, &mut events);
        self.pending = events;
    }

    fn poll(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.append(&mut self.pending);
        self.now = Instant::now();
        let mut due_streams = Vec::new();
        let mut next_due = None;
        while let Some(&(due, id)) = self.paced.front() {
            if due > self.now {
                next_due = Some(due - self.now);
                break;
            }
            self.paced.pop_front();
            if let Some(stream) = self.streams.get_mut(id) {
                stream.paced = false;
                due_streams.push(id);
            }
        }
        for id in due_streams {
            self.drive(id, events);
        }
        // Connecting streams wait on no readiness (a unix connect is retried): the scan of
        // every stream only runs while the counters say one is connecting.
        let connecting: Vec<StreamId> = if self.stats.in_flight(OpKind::Connect) > 0 {
            self.streams
                .ids()
                .into_iter()
                .filter(|&id| self.streams.get(id).map(|s| s.phase) == Some(Phase::Connecting))
                .collect()
        } else {
            Vec::new()
        };
        let mut timeout = if events.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        if !connecting.is_empty() {
            timeout = Some(timeout.map_or(CONNECT_RETRY, |t| t.min(CONNECT_RETRY)));
        }
        if let Some(until) = next_due {
            timeout = Some(timeout.map_or(until, |t| t.min(until)));
        }
        self.wait(timeout)?;
        if !self.coalesce.is_zero() && !self.ready.is_empty() && self.ready.len() < self.want() {
            // epoll has no "at least n events" wait: sleep out the window, then take what is
            // ready. Level-triggered, so the second wait reports the first one's fds again.
            // Costs two syscalls per poll, saves a wakeup per event.
            std::thread::sleep(self.coalesce);
            self.wait(Some(Duration::ZERO))?;
        }
        let ready: Vec<StreamId> = self.ready.iter().map(|e| id_of(e.data.u64())).collect();
        for id in ready.into_iter().chain(connecting) {
            if self.streams.get(id).is_some() {
                self.drive(id, events);
            }
        }
        Ok(())
    }

    fn set_coalesce(&mut self, window: Duration) {
        self.coalesce = window;
    }

    fn set_pacing(&mut self, delay: Duration) {
        self.pacing = delay;
    }

    fn set_live(&mut self, id: StreamId, live: bool) {
        if let Some(stream) = self.streams.get_mut(id) {
            stream.live = live;
        }
    }

    fn live_streams(&self) -> usize {
        self.streams.len()
    }

    fn stats(&self) -> Arc<IoStats> {
        self.stats.clone()
    }
}

impl Drop for EpollEngine {
    fn drop(&mut self) {
        for id in self.streams.ids() {
            self.close(id);
        }
    }
}
