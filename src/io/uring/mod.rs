//! The io_uring engine: every connect, send and recv of a stream is a ring submission, and a
//! stream is closed by cancelling what it has in flight and reaping every completion before
//! its buffer is released and its fd closed.
//!
//! Why this order matters (NOTES section 2): an io_uring recv holds its own reference to the
//! file, so `close(fd)` alone neither stops the read nor closes the socket, and the kernel
//! may still write into the buffer. So a buffer handed to the kernel lives in the op table
//! entry of its op, and that entry is only removed when the op's completion is reaped.
//!
//! This is the only module of the crate with `unsafe` code.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};
use slab::Slab;

use super::table::StreamTable;
use super::{Engine, EngineKind, Event, IoStats, OpKind, StreamId};

// The receive-mode experiment (benches/recv_modes.rs) is built only when asked for: it is a
// measurement harness, not part of the engine, and it needs this module's unsafe licence.
#[cfg(feature = "recv-modes-experiment")]
#[doc(hidden)]
pub mod recv_modes;

/// Submission queue entries. Not a limit on streams: a full queue is submitted and reused.
const SQ_ENTRIES: u32 = 256;
/// Completion queue entries: room for one recv completion per stream at 4096 streams without
/// relying on the kernel's overflow list.
const CQ_ENTRIES: u32 = 8192;
/// Size of a fresh receive buffer. Received bytes are split off and handed out; the rest of
/// the allocation serves the next receives, so an idle stream costs one such buffer.
const RECV_BUFFER: usize = 64 * 1024;
/// Below this much spare room, the next receive gets a fresh buffer instead.
const RECV_MIN_SPARE: usize = 4 * 1024;
/// A stream's receive buffer starts this small and doubles (up to [`RECV_BUFFER`]) each time a
/// receive fills it; it halves when a receive uses less than a sixteenth of it. A slow stream
/// (a line now and then) thus lends the kernel 4 KiB, not 64 KiB: with 1000 followed streams
/// the 64 KiB buffers alone were 64 MiB of RSS (issue 5, many streams).
const RECV_BUFFER_MIN: usize = 4 * 1024;
/// How long `io_uring_enter` may keep failing with EAGAIN/ENOMEM before the engine gives up.
const ENTER_RETRY_FOR: Duration = Duration::from_secs(60);
/// First and longest backoff between retries of a failed `io_uring_enter`.
const ENTER_BACKOFF_START: Duration = Duration::from_millis(1);
const ENTER_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// `IORING_RECVSEND_POLL_FIRST` from `<linux/io_uring.h>` (5.19), not exported by the crate.
const IORING_RECVSEND_POLL_FIRST: u16 = 1;

/// What the kernel offers, found by [`probe`].
#[derive(Clone, Debug)]
pub struct UringSupport {
    /// `IORING_ASYNC_CANCEL_FD | _ALL` (5.19): one cancel per stream instead of one per op.
    pub cancel_by_fd: bool,
    /// The ring could be set up with `SINGLE_ISSUER | DEFER_TASKRUN` (6.1).
    pub defer_taskrun: bool,
    /// Waits take a minimum wait (`IORING_FEAT_MIN_TIMEOUT`, 6.12): "wait this long for
    /// `want` completions, then return with whatever is in", which is how a poll coalesces
    /// completions without a timer or a second syscall.
    pub min_timeout: bool,
    /// Recvs take `IORING_RECVSEND_POLL_FIRST` (5.19).
    pub poll_first: bool,
}

/// Checks that io_uring can run this engine here: a ring can be set up (seccomp profiles and
/// `kernel.io_uring_disabled` make this fail with EPERM), the kernel knows every opcode the
/// engine submits, and waits can carry a timeout (`IORING_FEAT_EXT_ARG`, 5.11).
pub fn probe() -> Result<UringSupport, String> {
    let mut ring = IoUring::new(8).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    if !ring.params().is_feature_ext_arg() {
        return Err("kernel lacks IORING_FEAT_EXT_ARG (needs Linux 5.11)".into());
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    for (code, name) in [
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::Send::CODE, "SEND"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("kernel does not support IORING_OP_{name}"));
        }
    }
    let min_timeout = ring.params().is_feature_min_timeout();
    let poll_first = probe_poll_first(&mut ring).unwrap_or(false);
    let cancel_by_fd = probe_cancel_by_fd(ring).unwrap_or(false);
    let defer_taskrun = build_ring(true).is_ok();
    Ok(UringSupport {
        cancel_by_fd,
        defer_taskrun,
        min_timeout,
        poll_first,
    })
}

/// A connected pair of unix stream sockets for the probes.
fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Older kernels refuse a recv with a nonzero `ioprio` (EINVAL), so the flag is tried: a recv
/// with POLL_FIRST on a socket holding one byte must return that byte.
fn probe_poll_first(ring: &mut IoUring) -> io::Result<bool> {
    let (a, b) = socket_pair()?;
    rustix::io::write(&b, b"x")?;
    let mut buf = Box::new([0u8; 16]);
    let entry = opcode::Recv::new(Fd(a.as_raw_fd()), buf.as_mut_ptr(), buf.len() as u32)
        .ioprio(IORING_RECVSEND_POLL_FIRST)
        .build()
        .user_data(2);
    // SAFETY: the kernel writes into `buf` until this recv's completion. The byte is already
    // queued, so the recv completes at once; should the wait fail, `buf` is leaked rather
    // than freed while the recv might still be pending.
    unsafe { ring.submission().push(&entry) }.map_err(|_| io::Error::other("probe ring full"))?;
    if let Err(e) = ring.submit_and_wait(1) {
        std::mem::forget(buf);
        return Err(e);
    }
    let result = ring.completion().next().map(|cqe| cqe.result());
    if result.is_none() {
        std::mem::forget(buf);
    }
    Ok(result == Some(1))
}

/// Cancel-by-fd is a flag of ASYNC_CANCEL, not an opcode, so `register_probe` cannot tell:
/// cancel all ops of an idle socket and see whether the kernel answers with a count (0 here;
/// with `_ALL` it counts what it cancelled) or ENOENT, or EINVAL for flags it does not know.
fn probe_cancel_by_fd(mut ring: IoUring) -> io::Result<bool> {
    let (a, _b) = socket_pair()?;
    let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(a.as_raw_fd())).all())
        .build()
        .user_data(1);
    // SAFETY: the entry references no memory; the fd outlives the wait below, which reaps the
    // one completion before `a` is dropped.
    unsafe { ring.submission().push(&entry) }.map_err(|_| io::Error::other("probe ring full"))?;
    ring.submit_and_wait(1)?;
    let result = ring.completion().next().map(|cqe| cqe.result());
    Ok(matches!(result, Some(r) if r >= 0 || r == -libc::ENOENT))
}

fn build_ring(defer_taskrun: bool) -> io::Result<IoUring> {
    let mut builder = IoUring::builder();
    builder.setup_cqsize(CQ_ENTRIES);
    if defer_taskrun {
        // Completions are then processed only when this thread waits for them: no task-work
        // interrupts while the thread is busy decoding.
        builder.setup_single_issuer().setup_defer_taskrun();
    }
    builder.build(SQ_ENTRIES)
}

/// Where a stream is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Sending,
    Receiving,
    /// EOF or an error was reported: nothing more is submitted.
    Finished,
}

struct Stream {
    fd: OwnedFd,
    phase: Phase,
    /// Keys of this stream's ops in the op table. The fd and the stream itself go away only
    /// once this is empty.
    in_flight: Vec<usize>,
    /// The request, until the connect completes and a send takes it.
    request: Bytes,
    /// Receive buffer while no recv holds it.
    buf: BytesMut,
    recv_armed: bool,
    /// The last recv's completion said the socket had more queued (`F_SOCK_NONEMPTY`).
    nonempty: bool,
    /// Waiting in [`UringEngine::paced`] for its next recv.
    paced: bool,
    /// The caller says the stream is live ([`Engine::set_live`]): only then is it paced.
    live: bool,
    /// Whether it is slow enough to pace ([`super::RateMeter`]).
    rate: super::RateMeter,
    /// Size of the next receive buffer: [`RECV_BUFFER_MIN`]..=[`RECV_BUFFER`], by use.
    recv_size: usize,
    paused: bool,
    /// When `close` was called; set once.
    closing: Option<Instant>,
    /// A cancel could not be queued (ring full and its submit failed): `poll` retries.
    cancel_owed: bool,
}

/// The memory an op lends to the kernel. Held in the op table until the op's completion is
/// reaped, whatever happens to the stream meanwhile.
enum Lent {
    #[expect(
        dead_code,
        reason = "never read by us: the kernel reads it until the completion"
    )]
    Connect(Box<libc::sockaddr_un>),
    Send(Bytes),
    Recv(BytesMut),
    Cancel,
}

struct Op {
    stream: StreamId,
    kind: OpKind,
    lent: Lent,
}

/// The io_uring stream engine. One per thread: `!Send`, because with `SINGLE_ISSUER` only the
/// thread that set up the ring may submit to it.
pub struct UringEngine {
    ring: IoUring,
    ops: Slab<Op>,
    streams: StreamTable<Stream>,
    /// Events produced outside `poll` (a close with nothing in flight, completions reaped
    /// by a close), delivered by it.
    pending: Vec<Event>,
    /// Streams whose cancel could not be queued yet (see [`Stream::cancel_owed`]).
    owed: Vec<StreamId>,
    stats: Arc<IoStats>,
    support: UringSupport,
    /// Completions copied out of the ring before handling, since handling submits.
    reaped: Vec<(u64, i32, u32)>,
    /// See [`Engine::set_coalesce`]; used only when the kernel has `min_timeout`.
    coalesce: Duration,
    /// Consecutive `io_uring_enter` failures the kernel called transient (EAGAIN, ENOMEM),
    /// and since when: `poll` backs off and retries them, and gives up only after
    /// [`ENTER_RETRY_FOR`].
    enter_failures: u32,
    enter_failing_since: Option<Instant>,
    /// The kernel's CQ overflow count last seen: an increase is logged once and counted.
    cq_overflow_seen: u32,
    /// Tests: the next submits fail as if the SQ were full and the kernel said EAGAIN.
    #[cfg(test)]
    fail_submits: u32,
    /// Tests: the next waits fail with this errno.
    #[cfg(test)]
    fail_enters: (u32, i32),
    /// See [`Engine::set_pacing`].
    pacing: Duration,
    /// Streams whose next recv waits for the pacing delay, in the order they are due (one
    /// delay for all, so a queue is enough). Stale ids (closed since) are skipped.
    paced: VecDeque<(Instant, StreamId)>,
    /// Taken once per poll: what a paced stream's delay counts from.
    now: Instant,
    _single_thread: PhantomData<*const ()>,
}

impl UringEngine {
    /// Sets up a ring as [`probe`] found possible.
    pub fn new(support: UringSupport) -> io::Result<Self> {
        let ring = build_ring(support.defer_taskrun)?;
        Ok(UringEngine {
            ring,
            ops: Slab::new(),
            streams: StreamTable::default(),
            pending: Vec::new(),
            owed: Vec::new(),
            stats: Arc::default(),
            support,
            reaped: Vec::new(),
            coalesce: Duration::ZERO,
            enter_failures: 0,
            enter_failing_since: None,
            cq_overflow_seen: 0,
            #[cfg(test)]
            fail_submits: 0,
            #[cfg(test)]
            fail_enters: (0, 0),
            pacing: Duration::ZERO,
            paced: VecDeque::new(),
            now: Instant::now(),
            _single_thread: PhantomData,
        })
    }

    pub fn support(&self) -> &UringSupport {
        &self.support
    }

    /// Queues `entry` for the op `op`, recording the op in the table first so that its
    /// completion always finds it. The op is in flight from here on.
    fn submit(&mut self, entry: squeue::Entry, op: Op) -> io::Result<()> {
        let kind = op.kind;
        let stream = op.stream;
        let key = self.ops.insert(op);
        let entry = entry.user_data(key as u64);
        #[cfg(test)]
        if self.fail_submits > 0 {
            self.fail_submits -= 1;
            self.ops.remove(key);
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        loop {
            // SAFETY: every pointer in `entry` points into memory owned by `self.ops[key]`
            // (a boxed address, a `Bytes`, or a `BytesMut`'s heap allocation, none of which
            // moves when the table grows) or is a plain fd owned by the stream, and both stay
            // alive until this op's completion is reaped in `complete`.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                break;
            }
            // Queue full: hand what is queued to the kernel to make room.
            if let Err(e) = self.ring.submit() {
                // The entry never reached the kernel: the op is not in flight.
                self.ops.remove(key);
                return Err(e);
            }
        }
        self.stats.op_submitted(kind);
        if let Some(s) = self.streams.get_mut(stream) {
            s.in_flight.push(key);
        }
        Ok(())
    }

    fn submit_connect(&mut self, id: StreamId, path: &Path) -> io::Result<()> {
        let addr = sockaddr_un(path)?;
        let fd = self.stream(id).fd.as_raw_fd();
        let entry = opcode::Connect::new(
            Fd(fd),
            (&*addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
        .build();
        self.submit(
            entry,
            Op {
                stream: id,
                kind: OpKind::Connect,
                lent: Lent::Connect(addr),
            },
        )
    }

    fn submit_send(&mut self, id: StreamId, data: Bytes) -> io::Result<()> {
        let fd = self.stream(id).fd.as_raw_fd();
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(Fd(fd), data.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        self.submit(
            entry,
            Op {
                stream: id,
                kind: OpKind::Send,
                lent: Lent::Send(data),
            },
        )
    }

    /// Arms a recv unless one is armed, the stream is paused, finished or closing.
    fn arm_recv(&mut self, id: StreamId) -> io::Result<()> {
        let poll_first = self.support.poll_first;
        let stream = self.stream_mut(id);
        if stream.recv_armed
            || stream.paced
            || stream.paused
            || stream.phase != Phase::Receiving
            || stream.closing.is_some()
        {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut stream.buf);
        if buf.capacity() - buf.len() < RECV_MIN_SPARE.min(stream.recv_size / 4) {
            // Reuses the old allocation when every slice handed out of it has been dropped.
            buf.reserve(stream.recv_size);
        }
        let spare = buf.spare_capacity_mut();
        let (ptr, len) = (spare.as_mut_ptr().cast::<u8>(), spare.len());
        let fd = stream.fd.as_raw_fd();
        // A stream just drained has nothing to read yet, almost always: POLL_FIRST skips the
        // recv attempt that would fail with EAGAIN before the poll is armed, which is one
        // socket read per line saved when lines come one at a time. Unless the last recv said
        // more was queued.
        let ioprio = if poll_first && !stream.nonempty {
            IORING_RECVSEND_POLL_FIRST
        } else {
            0
        };
        let entry = opcode::Recv::new(Fd(fd), ptr, u32::try_from(len).unwrap_or(u32::MAX))
            .ioprio(ioprio)
            .build();
        stream.recv_armed = true;
        let result = self.submit(
            entry,
            Op {
                stream: id,
                kind: OpKind::Recv,
                lent: Lent::Recv(buf),
            },
        );
        if result.is_err() {
            self.stream_mut(id).recv_armed = false;
        }
        result
    }

    fn submit_cancel(&mut self, id: StreamId) -> io::Result<()> {
        let stream = self.stream(id);
        let targets: Vec<squeue::Entry> = if self.support.cancel_by_fd {
            let fd = stream.fd.as_raw_fd();
            vec![opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all()).build()]
        } else {
            stream
                .in_flight
                .iter()
                .filter(|&&key| self.ops[key].kind != OpKind::Cancel)
                .map(|&key| opcode::AsyncCancel::new(key as u64).build())
                .collect()
        };
        for entry in targets {
            self.submit(
                entry,
                Op {
                    stream: id,
                    kind: OpKind::Cancel,
                    lent: Lent::Cancel,
                },
            )?;
        }
        Ok(())
    }

    fn stream(&self, id: StreamId) -> &Stream {
        self.streams.get(id).expect("live stream")
    }

    fn stream_mut(&mut self, id: StreamId) -> &mut Stream {
        self.streams.get_mut(id).expect("live stream")
    }

    /// Reports a failure and stops submitting for the stream; it stays until `close`.
    fn fail(&mut self, id: StreamId, error: io::Error, events: &mut Vec<Event>) {
        self.stream_mut(id).phase = Phase::Finished;
        events.push(Event::Error(id, error));
    }

    /// Handles one reaped completion. The op leaves the table here, and with it the memory it
    /// lent to the kernel returns to its owner.
    fn complete(&mut self, key: usize, result: i32, flags: u32, events: &mut Vec<Event>) {
        let Some(op) = self.ops.try_remove(key) else {
            tracing::error!("io_uring completion for unknown op {key} (result {result})");
            return;
        };
        self.stats.op_reaped(op.kind);
        let id = op.stream;
        let Some(stream) = self.streams.get_mut(id) else {
            // Cannot happen: a stream is removed only once its in-flight list is empty.
            tracing::error!("io_uring completion for {id}, which is gone");
            return;
        };
        stream.in_flight.retain(|&k| k != key);

        if let Some(since) = stream.closing {
            match op.lent {
                Lent::Cancel
                    if result < 0 && result != -libc::ENOENT && result != -libc::EALREADY =>
                {
                    tracing::warn!(
                        "cancel for {id} failed: {}",
                        io::Error::from_raw_os_error(-result)
                    );
                }
                _ => {}
            }
            if stream.in_flight.is_empty() {
                let nanos = since.elapsed().as_nanos().min(u64::MAX as u128) as u64;
                self.stats.cancel_reaped(nanos);
                self.finalize(id, events);
            }
            return;
        }

        let next = match op.lent {
            Lent::Connect(_) if result < 0 => Err(os_error("connect", result)),
            Lent::Connect(_) => {
                let stream = self.stream_mut(id);
                stream.phase = Phase::Sending;
                let request = std::mem::take(&mut stream.request);
                self.submit_send(id, request)
            }
            Lent::Send(_) if result < 0 => Err(os_error("send", result)),
            Lent::Send(data) => {
                let rest = data.slice(result as usize..);
                if rest.is_empty() {
                    self.stream_mut(id).phase = Phase::Receiving;
                    self.arm_recv(id)
                } else {
                    self.submit_send(id, rest)
                }
            }
            Lent::Recv(mut buf) => {
                let stream = self.stream_mut(id);
                stream.recv_armed = false;
                if result > 0 {
                    let n = result as usize;
                    // SAFETY: the kernel wrote `n` bytes into the spare capacity starting at
                    // `buf.len()`, which this op owned until the completion just reaped.
                    unsafe { buf.set_len(buf.len() + n) };
                    if buf.len() == buf.capacity() {
                        stream.recv_size = (stream.recv_size * 2).min(RECV_BUFFER);
                    } else if n < stream.recv_size / 16 {
                        stream.recv_size = (stream.recv_size / 2).max(RECV_BUFFER_MIN);
                    }
                    let data = buf.split().freeze();
                    stream.buf = buf;
                    stream.nonempty = cqueue::sock_nonempty(flags);
                    self.stats.received(n);
                    events.push(Event::Data(id, data));
                    let (now, pacing) = (self.now, self.pacing);
                    let stream = self.stream_mut(id);
                    stream.rate.record(n, now);
                    if stream.live && stream.rate.may_pace(n, pacing, now) {
                        self.stream_mut(id).paced = true;
                        self.paced.push_back((self.now + self.pacing, id));
                        Ok(())
                    } else {
                        self.arm_recv(id)
                    }
                } else if result == 0 {
                    stream.buf = buf;
                    stream.phase = Phase::Finished;
                    events.push(Event::Eof(id));
                    Ok(())
                } else if result == -libc::EINTR || result == -libc::EAGAIN {
                    stream.buf = buf;
                    self.arm_recv(id)
                } else {
                    stream.buf = buf;
                    Err(os_error("recv", result))
                }
            }
            // A cancel is only ever submitted for a closing stream, handled above.
            Lent::Cancel => Ok(()),
        };
        if let Err(e) = next {
            self.fail(id, e, events);
        }
    }

    /// The last step of a close: nothing of the stream is in flight, so its fd can be closed
    /// and its buffer freed.
    fn finalize(&mut self, id: StreamId, events: &mut Vec<Event>) {
        if let Some(stream) = self.streams.remove(id) {
            debug_assert!(stream.in_flight.is_empty());
            if stream.cancel_owed {
                // Its ops completed before the cancel could be queued: nothing is left to
                // cancel, and a retry would look up a stream that is gone.
                self.owed.retain(|&owed| owed != id);
            }
            drop(stream.fd);
            self.stats.stream_closed();
            events.push(Event::Closed(id));
        }
    }

    /// Handles every completion the ring holds, pushing the events to `events`.
    fn reap(&mut self, events: &mut Vec<Event>) {
        self.reaped.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
        );
        let reaped = std::mem::take(&mut self.reaped);
        for &(key, result, flags) in &reaped {
            self.complete(key as usize, result, flags, events);
        }
        self.reaped = reaped;
        self.reaped.clear();
    }

    /// A failed wait. EAGAIN and ENOMEM are the kernel saying "not now" (no memory for the
    /// submission's work, or too many requests in flight): what is queued stays queued, so the
    /// wait is tried again after a backoff, and completions already posted are still reaped.
    /// Only a failure that lasts [`ENTER_RETRY_FOR`], or any other error, ends the engine.
    fn enter_failed(&mut self, error: io::Error, timeout: Option<Duration>) -> io::Result<()> {
        if !matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::ENOMEM)) {
            return Err(error);
        }
        let since = *self.enter_failing_since.get_or_insert_with(Instant::now);
        self.enter_failures += 1;
        if since.elapsed() >= ENTER_RETRY_FOR {
            return Err(io::Error::new(
                error.kind(),
                format!(
                    "io_uring_enter kept failing for {:?} ({} tries): {error}",
                    since.elapsed(),
                    self.enter_failures
                ),
            ));
        }
        if self.enter_failures == 1 {
            tracing::warn!("io_uring_enter failed, retrying with backoff: {error}");
        }
        let backoff = ENTER_BACKOFF_START
            .saturating_mul(1 << self.enter_failures.min(10))
            .min(ENTER_BACKOFF_MAX)
            .min(timeout.unwrap_or(ENTER_BACKOFF_MAX));
        std::thread::sleep(backoff);
        Ok(())
    }

    /// Completions the kernel could not post because the CQ was full wait on its overflow
    /// list (not lost on 5.5+), but they mean the CQ is too small for the load: counted, and
    /// logged the first time.
    fn note_overflow(&mut self) {
        let overflow = self.ring.completion().overflow();
        if overflow != self.cq_overflow_seen {
            let new = overflow.wrapping_sub(self.cq_overflow_seen);
            if self.cq_overflow_seen == 0 {
                tracing::warn!(
                    "io_uring completion queue overflowed ({new} completions waited on the \
                     kernel's overflow list): more streams than CQ_ENTRIES={CQ_ENTRIES} expects"
                );
            }
            self.cq_overflow_seen = overflow;
            self.stats.cq_overflowed(u64::from(new));
        }
    }

    #[cfg(test)]
    fn injected_enter_failure(&mut self) -> Option<io::Result<()>> {
        let (count, errno) = self.fail_enters;
        (count > 0).then(|| {
            self.fail_enters.0 -= 1;
            Err(io::Error::from_raw_os_error(errno))
        })
    }

    #[cfg(not(test))]
    fn injected_enter_failure(&mut self) -> Option<io::Result<()>> {
        None
    }

    /// Arms the recvs whose pacing delay is over; returns when the next one is due.
    fn arm_paced(&mut self, events: &mut Vec<Event>) -> Option<Instant> {
        while let Some(&(due, id)) = self.paced.front() {
            if due > self.now {
                return Some(due);
            }
            self.paced.pop_front();
            let Some(stream) = self.streams.get_mut(id) else {
                continue;
            };
            stream.paced = false;
            // Whatever came during the delay is queued: the recv should try at once, not
            // arm a poll first.
            stream.nonempty = true;
            if let Err(e) = self.arm_recv(id) {
                self.fail(id, e, events);
            }
        }
        None
    }

    fn retry_owed_cancels(&mut self) {
        if self.owed.is_empty() {
            return;
        }
        for id in std::mem::take(&mut self.owed) {
            if !self.streams.get(id).is_some_and(|s| s.cancel_owed) {
                continue;
            }
            if self.submit_cancel(id).is_ok() {
                self.stream_mut(id).cancel_owed = false;
            } else {
                self.owed.push(id);
            }
        }
    }
}

/// Submits what is queued and waits for one completion, or until `timeout` passes.
pub(crate) fn submit_and_wait(ring: &IoUring, timeout: Option<Duration>) -> io::Result<()> {
    submit_and_wait_for(ring, timeout, 1, Duration::ZERO)
}

/// Submits what is queued and waits until `want` completions are in, or `min_wait` has passed
/// with at least one in, or `timeout` has passed. A nonzero `min_wait` needs
/// [`UringSupport::min_timeout`].
fn submit_and_wait_for(
    ring: &IoUring,
    timeout: Option<Duration>,
    want: usize,
    min_wait: Duration,
) -> io::Result<()> {
    let min_wait_usec = u32::try_from(min_wait.as_micros()).unwrap_or(u32::MAX);
    let result = match timeout {
        None if min_wait_usec == 0 => ring.submit_and_wait(want),
        None => {
            let args = SubmitArgs::new().min_wait_usec(min_wait_usec);
            ring.submitter().submit_with_args(want, &args)
        }
        Some(timeout) => {
            let ts = Timespec::from(timeout);
            let args = SubmitArgs::new().timespec(&ts).min_wait_usec(min_wait_usec);
            ring.submitter().submit_with_args(want, &args)
        }
    };
    match result {
        Ok(_) => Ok(()),
        // ETIME: the timeout passed; EINTR: a signal; EBUSY: completions are waiting to be
        // reaped first, which is what the caller does next.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME | libc::EINTR | libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn os_error(what: &str, result: i32) -> io::Error {
    let error = io::Error::from_raw_os_error(-result);
    io::Error::new(error.kind(), format!("{what}: {error}"))
}

fn sockaddr_un(path: &Path) -> io::Result<Box<libc::sockaddr_un>> {
    // SAFETY: sockaddr_un is plain old data, for which all-zero bytes are a valid value.
    let mut addr: Box<libc::sockaddr_un> = Box::new(unsafe { std::mem::zeroed() });
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path too long ({} bytes): {}",
                bytes.len(),
                path.display()
            ),
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(addr)
}

impl Engine for UringEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Uring
    }

    fn open(&mut self, path: &Path, request: Bytes) -> io::Result<StreamId> {
        // A blocking socket: io_uring polls it internally, while O_NONBLOCK would hand EAGAIN
        // back to us instead of waiting.
        let fd = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        let id = self.streams.insert(Stream {
            fd,
            phase: Phase::Connecting,
            in_flight: Vec::new(),
            request,
            buf: BytesMut::new(),
            recv_size: RECV_BUFFER_MIN,
            recv_armed: false,
            nonempty: false,
            paced: false,
            live: false,
            rate: super::RateMeter::default(),
            paused: false,
            closing: None,
            cancel_owed: false,
        });
        self.stats.stream_opened();
        if let Err(e) = self.submit_connect(id, path) {
            self.streams.remove(id);
            self.stats.stream_closed();
            return Err(e);
        }
        Ok(id)
    }

    fn adopt(&mut self, fd: OwnedFd) -> io::Result<StreamId> {
        // Blocking, as in `open`: io_uring polls it internally.
        rustix::io::ioctl_fionbio(&fd, false)?;
        let id = self.streams.insert(Stream {
            fd,
            phase: Phase::Receiving,
            in_flight: Vec::new(),
            request: Bytes::new(),
            buf: BytesMut::new(),
            recv_size: RECV_BUFFER_MIN,
            recv_armed: false,
            nonempty: false,
            paced: false,
            live: false,
            rate: super::RateMeter::default(),
            paused: false,
            closing: None,
            cancel_owed: false,
        });
        self.stats.stream_opened();
        if let Err(e) = self.arm_recv(id) {
            self.streams.remove(id);
            self.stats.stream_closed();
            return Err(e);
        }
        Ok(id)
    }

    fn close(&mut self, id: StreamId) {
        let Some(stream) = self.streams.get_mut(id) else {
            return;
        };
        if stream.closing.is_some() {
            return;
        }
        stream.closing = Some(Instant::now());
        let idle = stream.in_flight.is_empty();
        super::discard_events_of(&mut self.pending, id);
        if idle {
            let mut events = std::mem::take(&mut self.pending);
            self.finalize(id, &mut events);
            self.pending = events;
            return;
        }
        self.stats.cancelled();
        if let Err(e) = self.submit_cancel(id) {
            tracing::warn!("cancel for {id} not queued yet, will retry: {e}");
            self.stream_mut(id).cancel_owed = true;
            self.owed.push(id);
            return;
        }
        // Submit the cancel now and reap what it completes (with DEFER_TASKRUN the cancelled
        // recv's completion is posted by the task work this enter runs): the fd is closed and
        // the buffer freed before `close` returns, instead of when the thread next polls,
        // after whatever else it does first (decoding, other closes: that wait was most of
        // the cancel-to-reaped time in the rotation storm).
        if let Err(e) = submit_and_wait(&self.ring, Some(Duration::ZERO)) {
            tracing::warn!("io_uring submit of the cancel for {id} failed, will reap later: {e}");
            return;
        }
        let mut events = std::mem::take(&mut self.pending);
        self.reap(&mut events);
        self.pending = events;
    }

    fn set_paused(&mut self, id: StreamId, paused: bool) {
        let Some(stream) = self.streams.get_mut(id) else {
            return;
        };
        stream.paused = paused;
        if !paused {
            if let Err(e) = self.arm_recv(id) {
                let mut events = std::mem::take(&mut self.pending);
                self.fail(id, e, &mut events);
                self.pending = events;
            }
        }
    }

    fn poll(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        self.retry_owed_cancels();
        events.append(&mut self.pending);
        self.now = Instant::now();
        let mut timeout = timeout;
        if let Some(due) = self.arm_paced(events) {
            let until = due - self.now;
            timeout = Some(timeout.map_or(until, |t| t.min(until)));
        }
        let ready = !events.is_empty() || !self.ring.completion().is_empty();
        let waited = self.injected_enter_failure().unwrap_or_else(|| {
            if ready {
                submit_and_wait(&self.ring, Some(Duration::ZERO))
            } else if self.support.min_timeout && !self.coalesce.is_zero() {
                // Every op in flight completes at most once before we reap: asking for more
                // than that would always sit out the minimum wait.
                let want = self.ops.len().clamp(1, super::COALESCE_COMPLETIONS);
                submit_and_wait_for(&self.ring, timeout, want, self.coalesce)
            } else {
                submit_and_wait(&self.ring, timeout)
            }
        });
        match waited {
            Ok(()) => {
                if let Some(since) = self.enter_failing_since.take() {
                    tracing::info!(
                        "io_uring_enter works again after {} transient failures in {:?}",
                        self.enter_failures,
                        since.elapsed()
                    );
                }
                self.enter_failures = 0;
            }
            Err(e) => self.enter_failed(e, timeout)?,
        }
        self.note_overflow();
        self.reap(events);
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

impl Drop for UringEngine {
    /// Closes every stream the proper way: cancel, reap, close. Should the kernel fail to
    /// complete an op, its memory is leaked rather than freed under the kernel's feet.
    fn drop(&mut self) {
        for id in self.streams.ids() {
            self.close(id);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut events = Vec::new();
        while !self.ops.is_empty() && Instant::now() < deadline {
            if let Err(e) = self.poll(&mut events, Some(Duration::from_millis(100))) {
                tracing::error!("io_uring wait failed while shutting down: {e}");
                break;
            }
            events.clear();
        }
        if !self.ops.is_empty() {
            tracing::error!(
                "{} io_uring ops not reaped at shutdown; leaking their buffers",
                self.ops.len()
            );
            std::mem::forget(std::mem::take(&mut self.ops));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    struct Server {
        dir: PathBuf,
        listener: UnixListener,
    }

    impl Server {
        fn new(name: &str) -> Server {
            let dir =
                std::env::temp_dir().join(format!("uring-unit-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let listener = UnixListener::bind(dir.join("s.sock")).unwrap();
            Server { dir, listener }
        }

        fn path(&self) -> PathBuf {
            self.dir.join("s.sock")
        }

        /// Accepts the engine's connection and reads its whole request: from here on the
        /// stream has a recv armed and nothing else in flight.
        fn accept(&self, engine: &mut UringEngine, request: &[u8]) -> UnixStream {
            // The connect is submitted by the engine's next poll.
            self.listener.set_nonblocking(true).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut events = Vec::new();
            let mut conn = loop {
                match self.listener.accept() {
                    Ok((conn, _)) => break conn,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        assert!(Instant::now() < deadline, "no connection");
                        engine
                            .poll(&mut events, Some(Duration::from_millis(1)))
                            .unwrap();
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            };
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_millis(10)))
                .unwrap();
            let mut got = Vec::new();
            while got.len() < request.len() || engine.stats.in_flight(OpKind::Recv) == 0 {
                assert!(Instant::now() < deadline, "request not sent: {got:?}");
                let mut buf = [0u8; 256];
                if let Ok(n) = conn.read(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                }
                engine
                    .poll(&mut events, Some(Duration::from_millis(1)))
                    .unwrap();
            }
            assert_eq!(got, request);
            assert!(events.is_empty(), "{events:?}");
            conn
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn engine() -> UringEngine {
        UringEngine::new(probe().expect("io_uring is available on the test machines")).unwrap()
    }

    fn poll_until(
        engine: &mut UringEngine,
        what: &str,
        done: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        let mut all = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(&all) {
            assert!(Instant::now() < deadline, "{what}: {all:?}");
            let mut events = Vec::new();
            engine
                .poll(&mut events, Some(Duration::from_millis(10)))
                .unwrap();
            all.append(&mut events);
        }
        all
    }

    /// A cancel that could not be queued (SQ full and the submit refused) is owed; if the
    /// stream's last op completes by itself before the retry, the stream is finalized and the
    /// retry must not touch it, nor a new stream that got its id. It used to panic on
    /// `expect("live stream")` in the capture thread.
    #[test]
    fn an_owed_cancel_of_a_finalized_stream_is_dropped() {
        let server = Server::new("owed");
        let mut engine = engine();
        let request = Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n");
        let id = engine.open(&server.path(), request.clone()).unwrap();
        let mut conn = server.accept(&mut engine, &request);

        engine.fail_submits = 1;
        engine.close(id);
        assert_eq!(engine.owed, [id], "the cancel is owed");
        // The recv completes by itself: the stream's last op is in, so it is finalized.
        conn.write_all(b"late").unwrap();
        let events = poll_until(&mut engine, "closed", |e| {
            e.iter().any(|e| matches!(e, Event::Closed(_)))
        });
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::Closed(s) if *s == id))
                .count(),
            1,
            "{events:?}"
        );
        assert!(engine.owed.is_empty());

        // A new stream (possibly with the same slot) keeps its recv armed through polls.
        let id2 = engine.open(&server.path(), request.clone()).unwrap();
        let _conn2 = server.accept(&mut engine, &request);
        let mut events = Vec::new();
        for _ in 0..3 {
            engine
                .poll(&mut events, Some(Duration::from_millis(1)))
                .unwrap();
        }
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(engine.stats.in_flight(OpKind::Recv), 1);
        assert_eq!(engine.stats.in_flight(OpKind::Cancel), 0);
        engine.close(id2);
        poll_until(&mut engine, "second closed", |e| {
            e.iter().any(|e| matches!(e, Event::Closed(s) if *s == id2))
        });
        assert_eq!(engine.ops.len(), 0);
        assert_eq!(engine.live_streams(), 0);
    }

    /// EAGAIN and ENOMEM from io_uring_enter are the kernel saying "not now": polls keep
    /// going and data still arrives; another error ends the engine.
    #[test]
    fn transient_enter_failures_are_retried() {
        let server = Server::new("enter");
        let mut engine = engine();
        let request = Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n");
        let id = engine.open(&server.path(), request.clone()).unwrap();
        let mut conn = server.accept(&mut engine, &request);
        conn.write_all(b"hello").unwrap();
        for (round, errno) in [libc::EAGAIN, libc::ENOMEM].into_iter().enumerate() {
            engine.fail_enters = (3, errno);
            let mut events = Vec::new();
            for _ in 0..3 {
                engine
                    .poll(&mut events, Some(Duration::from_millis(1)))
                    .expect("a transient failure is retried, not returned");
            }
            assert_eq!(engine.enter_failures, 3 * (round as u32 + 1));
        }
        let events = poll_until(&mut engine, "data", |e| {
            e.iter().any(|e| matches!(e, Event::Data(..)))
        });
        let data: Vec<u8> = events
            .iter()
            .filter_map(|e| match e {
                Event::Data(s, d) if *s == id => Some(d.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(data, b"hello");
        assert_eq!(engine.enter_failures, 0, "reset by a good wait");
        engine.fail_enters = (1, libc::EBADF);
        let mut events = Vec::new();
        let err = engine.poll(&mut events, Some(Duration::ZERO)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
}
