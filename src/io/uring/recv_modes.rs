//! Measurement harness for `benches/recv_modes.rs`: two minimal receive drains over the same
//! socketpair workload, each on its own ring, so the engine's receive mode can be chosen on
//! figures rather than folklore.
//!
//! - [`Mode::SingleShot`]: what [`super::UringEngine`] does. One `IORING_OP_RECV` per stream
//!   in flight, into the spare room of a per-stream `BytesMut` (64 KiB reserved when less than
//!   4 KiB is left); each completion's bytes are `split().freeze()`d into a `Bytes` handed to
//!   the consumer without a copy, and the recv is re-armed.
//! - [`Mode::MultishotInPlace`] / [`Mode::MultishotCopy`]: one `IORING_OP_RECV` with
//!   `IORING_RECV_MULTISHOT` per stream over one provided-buffer ring shared by all streams
//!   (`IORING_REGISTER_PBUF_RING`). The consumer reads the data where the kernel put it and the
//!   buffer goes back to the ring (in place), or the data is first copied into a `Bytes` that
//!   outlives the ring buffer (copy), which is what an engine handing out owned slices must do.
//!   A CQE without `IORING_CQE_F_MORE` (including `-ENOBUFS`) re-arms.
//!
//! Both rings are set up like the engine's (`SINGLE_ISSUER | DEFER_TASKRUN`, same queue sizes).
//! The consumer in every mode counts the newlines of each slice (`memchr`), as the decoder's
//! line splitter would touch every byte; the counts are checked against what the writers sent.
//!
//! [`check_backpressure`] and [`check_cancel`] probe the design constraints that decide the
//! choice besides speed: a paused stream's effect on a shared ring, and cancellation of a
//! multishot recv.
//!
//! Not part of the capturer: `#[doc(hidden)]`, used by the bench only.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use io_uring::types::{BufRingEntry, CancelBuilder, Fd};
use io_uring::{cqueue, opcode, squeue, IoUring};
use serde::{Deserialize, Serialize};

use super::{build_ring, RECV_BUFFER, RECV_MIN_SPARE};

/// user_data of cancel ops (streams use their index).
const CANCEL_UD: u64 = u64::MAX;
/// Buffer group id of the provided-buffer ring.
const BGID: u16 = 7;
/// No CQE for this long while streams are open: the watchdog looks for a missed EOF.
pub const WATCHDOG: Duration = Duration::from_millis(250);
/// Size of the bulk writes (dockerd's maximum message size).
pub const BULK_WRITE: usize = 16 * 1024;

/// How the drain receives.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    SingleShot,
    MultishotInPlace,
    MultishotCopy,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::SingleShot => "single-shot",
            Mode::MultishotInPlace => "multishot in-place",
            Mode::MultishotCopy => "multishot copy-out",
        }
    }
}

/// What each writer write()s.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// One ~140-byte chunked-encoded frame per write, as dockerd sends one log line.
    Lines,
    /// 16 KiB writes made of 128-byte lines.
    Bulk,
}

/// One measured run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Case {
    pub mode: Mode,
    pub streams: usize,
    pub shape: Shape,
    /// Unpaced: bytes each stream's writer sends as fast as it can. Ignored when paced.
    pub bytes_per_stream: u64,
    /// Paced: one message per stream every `pace_us`, for `duration_ms`.
    pub pace_us: Option<u64>,
    pub duration_ms: u64,
    /// Writer threads; streams are dealt round-robin to them.
    pub writers: usize,
    /// Provided-buffer ring (multishot modes only).
    pub ring_entries: u16,
    pub ring_buf_size: u32,
}

/// What a run measured. Times in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub wall_us: u64,
    /// Reading thread only (`getrusage(RUSAGE_THREAD)`).
    pub cpu_user_us: u64,
    pub cpu_sys_us: u64,
    pub vol_ctx_switches: u64,
    /// `io_uring_enter` calls issued by the drain (no SQPOLL: one per submit/wait).
    pub enters: u64,
    /// Every CQE reaped.
    pub cqes: u64,
    pub bytes: u64,
    pub lines: u64,
    /// Recvs submitted after the initial one per stream.
    pub rearms: u64,
    pub enobufs: u64,
    /// Receive buffer memory: single-shot, the peak sum over streams of the allocation the
    /// lent `BytesMut` lives in; multishot, the ring's buffers (shared by all streams).
    pub buffer_bytes: u64,
    /// Process RSS growth: VmHWM at the end minus VmRSS before the run (child process per run).
    pub rss_growth: u64,
    /// Watchdog: streams whose peer had closed (a `MSG_PEEK` read returns 0) while their
    /// recv stayed armed with no CQE for [`WATCHDOG`]. Such a recv is cancelled and reaped.
    pub missed_eof: u64,
    /// Watchdog: a stream with data waiting and no CQE for [`WATCHDOG`] (informational).
    pub stalled_with_data: u64,
}

impl Report {
    pub fn cpu_us(&self) -> u64 {
        self.cpu_user_us + self.cpu_sys_us
    }
}

/// Runs one case: sets up the socketpairs and writers, drains on this thread, checks the
/// totals, and reports.
pub fn run(case: &Case) -> io::Result<Report> {
    let rss_before = proc_status_kib("VmRSS:").unwrap_or(0) * 1024;
    let mut readers = Vec::with_capacity(case.streams);
    let mut writer_ends = Vec::with_capacity(case.streams);
    for _ in 0..case.streams {
        let (r, w) = UnixStream::pair()?;
        readers.push(r);
        writer_ends.push(w);
    }
    let mut groups: Vec<Vec<UnixStream>> = (0..case.writers.max(1)).map(|_| Vec::new()).collect();
    for (i, w) in writer_ends.into_iter().enumerate() {
        let g = i % groups.len();
        groups[g].push(w);
    }
    let msg = message(case.shape);
    let lines_per_msg = memchr::memchr_iter(b'\n', &msg).count() as u64;

    let start = Instant::now();
    let cpu0 = thread_usage()?;
    let writers: Vec<JoinHandle<io::Result<u64>>> = groups
        .into_iter()
        .map(|group| {
            let msg = msg.clone();
            let case = case.clone();
            std::thread::spawn(move || write_group(group, &msg, &case))
        })
        .collect();

    let mut report = match case.mode {
        Mode::SingleShot => SingleShot::new(&readers)?.drain()?,
        Mode::MultishotInPlace | Mode::MultishotCopy => {
            let copy = case.mode == Mode::MultishotCopy;
            Multishot::new(&readers, case.ring_entries, case.ring_buf_size)?.drain(copy)?
        }
    };
    let cpu1 = thread_usage()?;
    report.wall_us = start.elapsed().as_micros() as u64;
    let mut sent = 0;
    for w in writers {
        sent += w
            .join()
            .map_err(|_| io::Error::other("writer panicked"))??;
    }
    let expected_lines = sent / msg.len() as u64 * lines_per_msg;
    if report.bytes != sent || report.lines != expected_lines {
        return Err(io::Error::other(format!(
            "{}: received {} bytes / {} lines, sent {} bytes / {} lines",
            case.mode.label(),
            report.bytes,
            report.lines,
            sent,
            expected_lines
        )));
    }
    report.cpu_user_us = cpu1.user_us - cpu0.user_us;
    report.cpu_sys_us = cpu1.sys_us - cpu0.sys_us;
    report.vol_ctx_switches = cpu1.nvcsw - cpu0.nvcsw;
    let hwm = proc_status_kib("VmHWM:").unwrap_or(0) * 1024;
    report.rss_growth = hwm.saturating_sub(rss_before);
    drop(readers);
    Ok(report)
}

/// The bytes of one write.
pub fn message(shape: Shape) -> Vec<u8> {
    match shape {
        Shape::Lines => {
            // A dockerd follow stream with timestamps: one chunk per frame, one frame per line.
            let text = b"2025-11-21T10:23:12.750760435Z level=info msg=\"request served\" \
                         method=GET path=/api/v1/items status=200 took=3ms\n";
            let mut payload = vec![1u8, 0, 0, 0];
            payload.extend_from_slice(&(text.len() as u32).to_be_bytes());
            payload.extend_from_slice(text);
            let mut out = format!("{:x}\r\n", payload.len()).into_bytes();
            out.extend_from_slice(&payload);
            out.extend_from_slice(b"\r\n");
            out
        }
        Shape::Bulk => {
            let mut line = vec![b'x'; 127];
            line.push(b'\n');
            line.repeat(BULK_WRITE / line.len())
        }
    }
}

fn write_group(mut group: Vec<UnixStream>, msg: &[u8], case: &Case) -> io::Result<u64> {
    let mut sent = 0u64;
    match case.pace_us {
        None => {
            let per_stream = case.bytes_per_stream / msg.len() as u64;
            for _ in 0..per_stream {
                for s in &mut group {
                    s.write_all(msg)?;
                    sent += msg.len() as u64;
                }
            }
        }
        Some(pace) => {
            let interval = Duration::from_micros(pace);
            let ticks = case.duration_ms * 1000 / pace.max(1);
            let start = Instant::now();
            for tick in 0..ticks {
                for s in &mut group {
                    s.write_all(msg)?;
                    sent += msg.len() as u64;
                }
                let next = start + interval * (tick as u32 + 1);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }
    }
    Ok(sent)
}

/// What the consumer does with every received slice in every mode.
#[inline]
fn consume(data: &[u8], report: &mut Report) {
    report.bytes += data.len() as u64;
    report.lines += memchr::memchr_iter(b'\n', data).count() as u64;
}

/// Queues `entry`, submitting first when the queue is full.
///
/// # Safety
/// Every buffer `entry` points to must stay valid until its completion is reaped.
unsafe fn push(ring: &mut IoUring, entry: &squeue::Entry, enters: &mut u64) -> io::Result<()> {
    loop {
        // SAFETY: passed on to the caller (see above).
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        *enters += 1;
        ring.submit()?;
    }
}

/// Submits what is queued and waits for one completion (or `timeout`), counting the enter.
fn enter(ring: &mut IoUring, timeout: Option<Duration>, enters: &mut u64) -> io::Result<()> {
    *enters += 1;
    super::submit_and_wait(ring, timeout)
}

fn reap(ring: &mut IoUring, into: &mut Vec<(u64, i32, u32)>) {
    into.clear();
    into.extend(
        ring.completion()
            .map(|c| (c.user_data(), c.result(), c.flags())),
    );
}

// ---------------------------------------------------------------------------------------------
// Single-shot

struct SingleShot<'a> {
    ring: IoUring,
    fds: &'a [UnixStream],
    /// A stream's buffer while no recv holds it.
    idle: Vec<BytesMut>,
    /// A stream's buffer while its recv is in flight: the kernel writes into its spare room.
    lent: Vec<Option<BytesMut>>,
    /// Size of the allocation each stream's buffer lives in.
    held: Vec<usize>,
    held_sum: usize,
    report: Report,
}

impl<'a> SingleShot<'a> {
    fn new(fds: &'a [UnixStream]) -> io::Result<Self> {
        Ok(SingleShot {
            ring: build_ring(true)?,
            fds,
            idle: (0..fds.len()).map(|_| BytesMut::new()).collect(),
            lent: (0..fds.len()).map(|_| None).collect(),
            held: vec![0; fds.len()],
            held_sum: 0,
            report: Report::default(),
        })
    }

    /// Exactly the engine's `arm_recv`.
    fn arm(&mut self, i: usize) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.idle[i]);
        if buf.capacity() - buf.len() < RECV_MIN_SPARE {
            buf.reserve(RECV_BUFFER);
            self.held_sum = self.held_sum - self.held[i] + buf.capacity();
            self.held[i] = buf.capacity();
            self.report.buffer_bytes = self.report.buffer_bytes.max(self.held_sum as u64);
        }
        let spare = buf.spare_capacity_mut();
        let (ptr, len) = (spare.as_mut_ptr().cast::<u8>(), spare.len());
        let entry = opcode::Recv::new(
            Fd(self.fds[i].as_raw_fd()),
            ptr,
            u32::try_from(len).unwrap_or(u32::MAX),
        )
        .build()
        .user_data(i as u64);
        // The buffer's heap allocation does not move when the `BytesMut` value moves.
        self.lent[i] = Some(buf);
        // SAFETY: the recv writes into `buf`'s spare room; `buf` is owned by `self.lent[i]`
        // from here until this recv's completion is reaped in `drain`, and `Drop` leaks it
        // rather than free it should that never happen.
        let pushed = unsafe { push(&mut self.ring, &entry, &mut self.report.enters) };
        if pushed.is_err() {
            // Never queued: the buffer is ours again.
            self.idle[i] = self.lent[i].take().unwrap_or_default();
        }
        pushed
    }

    fn drain(mut self) -> io::Result<Report> {
        let n = self.fds.len();
        for i in 0..n {
            self.arm(i)?;
        }
        let mut open = vec![true; n];
        let mut rescuing = vec![false; n];
        let mut left = n;
        let mut cqes = Vec::new();
        while left > 0 {
            enter(&mut self.ring, Some(WATCHDOG), &mut self.report.enters)?;
            reap(&mut self.ring, &mut cqes);
            self.report.cqes += cqes.len() as u64;
            if cqes.is_empty() {
                watchdog(
                    &mut self.ring,
                    self.fds,
                    &open,
                    &mut rescuing,
                    &mut self.report,
                )?;
            }
            for &(ud, res, _) in &cqes {
                if ud == CANCEL_UD {
                    continue;
                }
                let i = ud as usize;
                let mut buf = self.lent[i]
                    .take()
                    .expect("recv completion for a lent buffer");
                if rescuing[i] {
                    // The cancelled recv's completion (whatever it carries, the stream ends).
                    if res > 0 {
                        // SAFETY: as below: the kernel wrote `res` bytes it owned until now.
                        unsafe { buf.set_len(buf.len() + res as usize) };
                        consume(&buf.split().freeze(), &mut self.report);
                    }
                    self.idle[i] = buf;
                    open[i] = false;
                    left -= 1;
                } else if res > 0 {
                    // SAFETY: the kernel wrote `res` bytes into the spare room starting at
                    // `buf.len()`, which this recv owned until the completion just reaped.
                    unsafe { buf.set_len(buf.len() + res as usize) };
                    let data: Bytes = buf.split().freeze();
                    self.idle[i] = buf;
                    consume(&data, &mut self.report);
                    drop(data);
                    self.report.rearms += 1;
                    self.arm(i)?;
                } else if res == 0 {
                    self.idle[i] = buf;
                    open[i] = false;
                    left -= 1;
                } else if res == -libc::EINTR || res == -libc::EAGAIN {
                    self.idle[i] = buf;
                    self.report.rearms += 1;
                    self.arm(i)?;
                } else {
                    self.idle[i] = buf;
                    return Err(io::Error::from_raw_os_error(-res));
                }
            }
        }
        Ok(std::mem::take(&mut self.report))
    }
}

impl Drop for SingleShot<'_> {
    fn drop(&mut self) {
        if self.lent.iter().any(Option::is_some) {
            // An error left recvs in flight: the kernel may still write into these buffers
            // until the ring is torn down, so they must never be freed.
            std::mem::forget(std::mem::take(&mut self.lent));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Provided-buffer ring

/// A provided-buffer ring (`IORING_REGISTER_PBUF_RING`) and its buffers, `entries` buffers of
/// `buf_size` bytes in one allocation. Buffer `bid` is `bufs[bid * buf_size..][..buf_size]`.
struct BufRing {
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    bufs: NonNull<u8>,
    bufs_layout: Layout,
    entries: u16,
    buf_size: u32,
    /// Our copy of the tail: buffers are added here and published with a release store.
    tail: u16,
    /// Set when the kernel might still use the memory: then it is leaked, never freed.
    leak: bool,
}

impl BufRing {
    fn new(entries: u16, buf_size: u32) -> io::Result<Self> {
        assert!(entries.is_power_of_two() && entries <= 32768);
        let ring_layout = Layout::from_size_align(
            usize::from(entries) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        let bufs_layout = Layout::from_size_align(usize::from(entries) * buf_size as usize, 4096)
            .map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size; all-zero bytes are valid for both.
        let (ring, bufs) = unsafe {
            (
                std::alloc::alloc_zeroed(ring_layout),
                std::alloc::alloc_zeroed(bufs_layout),
            )
        };
        let (Some(ring), Some(bufs)) = (NonNull::new(ring.cast()), NonNull::new(bufs)) else {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        let mut br = BufRing {
            ring,
            ring_layout,
            bufs,
            bufs_layout,
            entries,
            buf_size,
            tail: 0,
            leak: false,
        };
        for bid in 0..entries {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    fn register(&mut self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: the ring memory stays allocated until `unregister` succeeds; should it fail
        // (or never be called), `Drop` leaks it instead of freeing it.
        let r = unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.entries,
                BGID,
                0,
            )
        };
        self.leak = r.is_ok();
        r
    }

    fn unregister(&mut self, ring: &IoUring) {
        if ring.submitter().unregister_buf_ring(BGID).is_ok() {
            self.leak = false;
        }
    }

    /// Adds buffer `bid` at the tail (visible to the kernel after `publish`).
    fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `slot` < entries, inside the ring allocation. The kernel only reads
        // entries between its head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.ring.as_ptr().add(slot) };
        // SAFETY: `bid` < entries, so the buffer lies inside the buffers allocation.
        let addr = unsafe {
            self.bufs
                .as_ptr()
                .add(usize::from(bid) * self.buf_size as usize)
        };
        entry.set_addr(addr as u64);
        entry.set_len(self.buf_size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's `resv`, inside the ring
        // allocation; the kernel reads it with an acquire load, we store it with release.
        let tail = unsafe { &*BufRingEntry::tail(self.ring.as_ptr()).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// # Safety
    /// A CQE carrying `bid` with result `len` must have been reaped and the buffer not pushed
    /// back since: the kernel has handed it over and will not write it until it is.
    unsafe fn data(&self, bid: u16, len: usize) -> &[u8] {
        debug_assert!(bid < self.entries && len <= self.buf_size as usize);
        // SAFETY: see above; in bounds by the debug_assert'ed invariants.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs
                    .as_ptr()
                    .add(usize::from(bid) * self.buf_size as usize),
                len,
            )
        }
    }

    fn bytes(&self) -> u64 {
        (self.ring_layout.size() + self.bufs_layout.size()) as u64
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: allocated in `new` with these layouts; the kernel no longer references
        // them (never registered, or unregistered).
        unsafe {
            std::alloc::dealloc(self.ring.as_ptr().cast(), self.ring_layout);
            std::alloc::dealloc(self.bufs.as_ptr(), self.bufs_layout);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Multishot

struct Multishot<'a> {
    // Declared before `br`: the ring (and with it the registration) goes first.
    ring: IoUring,
    br: BufRing,
    fds: &'a [UnixStream],
    in_flight: usize,
    report: Report,
}

impl<'a> Multishot<'a> {
    fn new(fds: &'a [UnixStream], entries: u16, buf_size: u32) -> io::Result<Self> {
        let ring = build_ring(true)?;
        let mut br = BufRing::new(entries, buf_size)?;
        br.register(&ring)?;
        Ok(Multishot {
            ring,
            br,
            fds,
            in_flight: 0,
            report: Report::default(),
        })
    }

    fn arm(&mut self, i: usize) -> io::Result<()> {
        let entry = opcode::RecvMulti::new(Fd(self.fds[i].as_raw_fd()), BGID)
            .build()
            .user_data(i as u64);
        // SAFETY: the entry points at no memory of ours but the registered buffer ring, which
        // `self.br` keeps allocated until it is unregistered (or leaks).
        unsafe { push(&mut self.ring, &entry, &mut self.report.enters) }?;
        self.in_flight += 1;
        Ok(())
    }

    fn drain(mut self, copy: bool) -> io::Result<Report> {
        self.report.buffer_bytes = self.br.bytes();
        let n = self.fds.len();
        for i in 0..n {
            self.arm(i)?;
        }
        let mut open = vec![true; n];
        let mut rescuing = vec![false; n];
        let mut left = n;
        let mut cqes = Vec::new();
        while left > 0 {
            // Buffers consumed in the last batch go back before the kernel runs again.
            self.br.publish();
            enter(&mut self.ring, Some(WATCHDOG), &mut self.report.enters)?;
            reap(&mut self.ring, &mut cqes);
            self.report.cqes += cqes.len() as u64;
            if cqes.is_empty() {
                let before = self.report.missed_eof;
                watchdog(
                    &mut self.ring,
                    self.fds,
                    &open,
                    &mut rescuing,
                    &mut self.report,
                )?;
                self.in_flight += (self.report.missed_eof - before) as usize;
            }
            for &(ud, res, flags) in &cqes {
                let more = cqueue::more(flags);
                if !more {
                    self.in_flight -= 1;
                }
                if ud == CANCEL_UD {
                    continue;
                }
                let i = ud as usize;
                if rescuing[i] {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        // SAFETY: as below: this CQE handed buffer `bid` over.
                        consume(
                            unsafe { self.br.data(bid, res.max(0) as usize) },
                            &mut self.report,
                        );
                        self.br.push(bid);
                    }
                    if !more {
                        open[i] = false;
                        left -= 1;
                    }
                } else if res > 0 {
                    let bid = cqueue::buffer_select(flags).expect("recv CQE carries a buffer");
                    // SAFETY: the CQE just reaped handed buffer `bid` over with `res` bytes;
                    // it goes back to the ring (push) only after the last use of `data`.
                    let data = unsafe { self.br.data(bid, res as usize) };
                    if copy {
                        let owned = Bytes::copy_from_slice(data);
                        self.br.push(bid);
                        consume(&owned, &mut self.report);
                    } else {
                        consume(data, &mut self.report);
                        self.br.push(bid);
                    }
                    if !more {
                        self.report.rearms += 1;
                        self.arm(i)?;
                    }
                } else if res == 0 {
                    open[i] = false;
                    left -= 1;
                } else if res == -libc::ENOBUFS {
                    self.report.enobufs += 1;
                    self.report.rearms += 1;
                    self.arm(i)?;
                } else if res == -libc::EINTR || res == -libc::EAGAIN {
                    if !more {
                        self.report.rearms += 1;
                        self.arm(i)?;
                    }
                } else {
                    return Err(io::Error::from_raw_os_error(-res));
                }
            }
        }
        Ok(std::mem::take(&mut self.report))
    }
}

impl Drop for Multishot<'_> {
    fn drop(&mut self) {
        if self.in_flight == 0 {
            self.br.unregister(&self.ring);
        }
        // Else `br.leak` stays set: the buffers are never freed under the kernel.
    }
}

/// Called when no CQE came for [`WATCHDOG`]: a stream whose peer is gone (a peek reads 0
/// bytes) while its recv is still armed missed its EOF completion; cancel that recv so its
/// final CQE ends the stream. Returns with one cancel queued per such stream.
fn watchdog(
    ring: &mut IoUring,
    fds: &[UnixStream],
    open: &[bool],
    rescuing: &mut [bool],
    report: &mut Report,
) -> io::Result<()> {
    for (i, fd) in fds.iter().enumerate() {
        if !open[i] || rescuing[i] {
            continue;
        }
        match peek(fd) {
            Some(0) => {
                report.missed_eof += 1;
                rescuing[i] = true;
                let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd.as_raw_fd())).all())
                    .build()
                    .user_data(CANCEL_UD);
                // SAFETY: references no memory.
                unsafe { push(ring, &entry, &mut report.enters) }?;
            }
            Some(_) => report.stalled_with_data += 1,
            None => {}
        }
    }
    Ok(())
}

/// Bytes waiting in the socket (0: the peer shut down and all was read), None: nothing yet.
fn peek(fd: &UnixStream) -> Option<usize> {
    let mut byte = [0u8; 1];
    let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
    rustix::net::recv(fd, &mut byte, flags).ok().map(|(_, n)| n)
}

// ---------------------------------------------------------------------------------------------
// Design checks

/// A multishot drain over a few sockets for the checks: buffers are handed to the caller,
/// which decides when they go back.
struct CheckRing {
    ring: IoUring,
    br: BufRing,
    enters: u64,
    cqes: Vec<(u64, i32, u32)>,
    /// Set by a check that ended with every op reaped: only then is the ring unregistered
    /// and its memory freed.
    clean: bool,
}

impl CheckRing {
    fn new(entries: u16, buf_size: u32) -> io::Result<Self> {
        let ring = build_ring(true)?;
        let mut br = BufRing::new(entries, buf_size)?;
        br.register(&ring)?;
        Ok(CheckRing {
            ring,
            br,
            enters: 0,
            cqes: Vec::new(),
            clean: false,
        })
    }

    fn arm(&mut self, fd: &UnixStream, ud: u64) -> io::Result<()> {
        let entry = opcode::RecvMulti::new(Fd(fd.as_raw_fd()), BGID)
            .build()
            .user_data(ud);
        // SAFETY: as in `Multishot::arm`: only the registered ring is referenced.
        unsafe { push(&mut self.ring, &entry, &mut self.enters) }
    }

    fn cancel(&mut self, fd: &UnixStream) -> io::Result<()> {
        let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd.as_raw_fd())).all())
            .build()
            .user_data(CANCEL_UD);
        // SAFETY: references no memory.
        unsafe { push(&mut self.ring, &entry, &mut self.enters) }
    }

    /// Publishes returned buffers, waits up to `timeout` and returns what completed.
    fn step(&mut self, timeout: Duration) -> io::Result<Vec<(u64, i32, u32)>> {
        self.br.publish();
        enter(&mut self.ring, Some(timeout), &mut self.enters)?;
        reap(&mut self.ring, &mut self.cqes);
        Ok(self.cqes.clone())
    }

    fn give_back(&mut self, bids: impl IntoIterator<Item = u16>) {
        for bid in bids {
            self.br.push(bid);
        }
        self.br.publish();
    }
}

impl Drop for CheckRing {
    fn drop(&mut self) {
        // A check that failed half-way may leave a recv armed: then `br.leak` stays set and
        // the buffers are never freed under the kernel.
        if self.clean {
            self.br.unregister(&self.ring);
        }
    }
}

/// Writes `total` bytes to `w` in 4 KiB writes from a new thread, then closes `w`.
fn spawn_fill(mut w: UnixStream, total: usize) -> JoinHandle<io::Result<()>> {
    std::thread::spawn(move || {
        let chunk = vec![b'a'; 4096];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n])?;
            left -= n;
        }
        Ok(())
    })
}

/// What [`check_backpressure`] saw.
#[derive(Debug, Default)]
pub struct BackpressureReport {
    pub ring_buffers: u16,
    /// Shared ring, pause = stop giving buffers back (no cancel): how many ring buffers the
    /// paused stream A ended up holding, and how its recv ended.
    pub held_by_paused: usize,
    pub paused_final: i32,
    /// Meanwhile stream B got data: its recv result(s) and the bytes it received.
    pub other_results: Vec<i32>,
    pub other_bytes_while_paused: usize,
    pub other_bytes_after_resume: usize,
    /// Pause = ASYNC_CANCEL of A's multishot recv, decided on the first batch of CQEs that
    /// carried A data: how many ring buffers that batch had already filled for A, how many
    /// A's recv still took after the cancel was submitted (before its final CQE), and
    /// whether B then got its data.
    pub taken_before_pause: usize,
    pub taken_after_cancel_pause: usize,
    pub cancel_pause_final: i32,
    pub other_bytes_with_cancel_pause: usize,
}

/// A slow consumer on a shared buffer ring. Stream A gets 256 KiB its consumer does not take
/// (paused); stream B then gets 1 KiB. First with "pause" meaning only that A's buffers are
/// not given back, then with pause = cancel A's multishot recv.
pub fn check_backpressure() -> io::Result<BackpressureReport> {
    const ENTRIES: u16 = 16;
    const A: u64 = 0;
    const B: u64 = 1;
    let mut out = BackpressureReport {
        ring_buffers: ENTRIES,
        ..Default::default()
    };
    let mut p = CheckRing::new(ENTRIES, 4096)?;

    // Part 1: pause by holding buffers.
    let (a, aw) = UnixStream::pair()?;
    let (b, mut bw) = UnixStream::pair()?;
    p.arm(&a, A)?;
    p.arm(&b, B)?;
    let fill = spawn_fill(aw, 256 * 1024);
    let mut held_a = Vec::new();
    let mut a_open = true;
    let deadline = Instant::now() + Duration::from_secs(5);
    while a_open && Instant::now() < deadline {
        for (ud, res, flags) in p.step(Duration::from_millis(50))? {
            if ud == A {
                held_a.extend(cqueue::buffer_select(flags));
                if !cqueue::more(flags) {
                    out.paused_final = res;
                    a_open = false;
                }
            }
        }
    }
    out.held_by_paused = held_a.len();
    bw.write_all(&[b'b'; 1024])?;
    let mut b_armed = true;
    let mut b_got = 0;
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        for (ud, res, flags) in p.step(Duration::from_millis(50))? {
            if ud == B {
                out.other_results.push(res);
                if res > 0 {
                    b_got += res as usize;
                    p.give_back(cqueue::buffer_select(flags));
                }
                if !cqueue::more(flags) {
                    b_armed = false;
                }
            }
        }
    }
    out.other_bytes_while_paused = b_got;
    // Resume: give A's buffers back, re-arm whoever ended, drain A to EOF and B's 1 KiB.
    p.give_back(held_a.drain(..));
    let mut a_done = false;
    if !b_armed {
        p.arm(&b, B)?;
    }
    if !a_open {
        p.arm(&a, A)?;
        a_open = true;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while (a_open || b_got < 1024) && Instant::now() < deadline {
        for (ud, res, flags) in p.step(Duration::from_millis(50))? {
            p.give_back(cqueue::buffer_select(flags));
            if ud == B && res > 0 {
                b_got += res as usize;
                out.other_bytes_after_resume += res as usize;
            }
            if ud == B && !cqueue::more(flags) {
                b_armed = false;
                if res < 0 {
                    p.arm(&b, B)?;
                    b_armed = true;
                }
            }
            if ud == A && !cqueue::more(flags) {
                if res == 0 {
                    a_open = false;
                    a_done = true;
                } else {
                    p.arm(&a, A)?;
                }
            }
        }
    }
    fill.join()
        .map_err(|_| io::Error::other("writer panicked"))??;
    // B's recv is still armed: cancel and reap it before reusing the ring.
    if b_armed {
        p.cancel(&b)?;
        reap_until_final(&mut p, B)?;
    }
    if !a_done {
        return Err(io::Error::other("paused stream never drained after resume"));
    }

    // Part 2: pause by cancelling A's recv as soon as its first data arrives.
    let (c, cw) = UnixStream::pair()?;
    let (d, mut dw) = UnixStream::pair()?;
    p.arm(&c, A)?;
    p.arm(&d, B)?;
    let fill = spawn_fill(cw, 256 * 1024);
    let mut queued_for_paused = Vec::new();
    let mut paused = false;
    let mut c_final = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while c_final.is_none() && Instant::now() < deadline {
        for (ud, res, flags) in p.step(Duration::from_millis(50))? {
            if ud != A {
                continue;
            }
            if let Some(bid) = cqueue::buffer_select(flags) {
                if paused {
                    out.taken_after_cancel_pause += 1;
                }
                // Data delivered to a paused stream has to wait for its consumer; here the
                // buffer is kept, as an engine would have to copy it out or hold it.
                queued_for_paused.push(bid);
            }
            if !cqueue::more(flags) {
                c_final = Some(res);
            }
        }
        if !paused && !queued_for_paused.is_empty() {
            out.taken_before_pause = queued_for_paused.len();
            p.cancel(&c)?;
            paused = true;
        }
    }
    out.cancel_pause_final = c_final.ok_or_else(|| io::Error::other("no final CQE"))?;
    // Every remaining cancel CQE is reaped below along with D's data.
    p.give_back(queued_for_paused.drain(..));
    dw.write_all(&[b'd'; 1024])?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while out.other_bytes_with_cancel_pause < 1024 && Instant::now() < deadline {
        for (ud, res, flags) in p.step(Duration::from_millis(50))? {
            if ud == B && res > 0 {
                out.other_bytes_with_cancel_pause += res as usize;
                p.give_back(cqueue::buffer_select(flags));
            }
        }
    }
    // Resume C: re-arm and drain it to EOF, then cancel D's recv.
    p.arm(&c, A)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut c_open = true;
    while c_open && Instant::now() < deadline {
        for (ud, res, flags) in p.step(Duration::from_millis(50))? {
            p.give_back(cqueue::buffer_select(flags));
            if ud == A && !cqueue::more(flags) {
                if res == 0 {
                    c_open = false;
                } else {
                    p.arm(&c, A)?;
                }
            }
        }
    }
    fill.join()
        .map_err(|_| io::Error::other("writer panicked"))??;
    p.cancel(&d)?;
    reap_until_final(&mut p, B)?;
    p.clean = !c_open;
    Ok(out)
}

/// Reaps until the op `ud` posts its final CQE (no F_MORE) and every cancel has completed;
/// gives buffers back. Returns the final result.
fn reap_until_final(p: &mut CheckRing, ud: u64) -> io::Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut final_res = None;
    let mut cancel_done = false;
    while (final_res.is_none() || !cancel_done) && Instant::now() < deadline {
        for (u, res, flags) in p.step(Duration::from_millis(50))? {
            p.give_back(cqueue::buffer_select(flags));
            if u == CANCEL_UD {
                cancel_done = true;
            } else if u == ud && !cqueue::more(flags) {
                final_res = Some(res);
            }
        }
    }
    final_res.ok_or_else(|| io::Error::other(format!("no final CQE for op {ud} after cancel")))
}

/// What [`check_cancel`] saw.
#[derive(Debug, Default)]
pub struct CancelReport {
    pub rounds: usize,
    /// Rounds whose recv posted a final CQE (no F_MORE) after ASYNC_CANCEL.
    pub final_seen: usize,
    /// Final CQE results, (result, count).
    pub final_results: Vec<(i32, usize)>,
    /// Final CQEs that carried a buffer (IORING_CQE_F_BUFFER).
    pub final_with_buffer: usize,
    /// Data CQEs reaped after the cancel was submitted, over all rounds.
    pub data_after_cancel: usize,
    /// Cancel CQE results, (result, count).
    pub cancel_results: Vec<(i32, usize)>,
    /// Afterwards: buffers the kernel could still take from the ring (== ring size when no
    /// buffer was lost to a cancelled recv).
    pub buffers_usable_after: usize,
    pub ring_buffers: u16,
}

fn bump(v: &mut Vec<(i32, usize)>, key: i32) {
    match v.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => v.push((key, 1)),
    }
}

/// Cancels a multishot recv `rounds` times, alternately on an idle socket and on one a writer
/// keeps busy, and checks that the final CQE arrives and that no ring buffer is lost.
pub fn check_cancel(rounds: usize) -> io::Result<CancelReport> {
    const ENTRIES: u16 = 8;
    let mut out = CancelReport {
        rounds,
        ring_buffers: ENTRIES,
        ..Default::default()
    };
    let mut p = CheckRing::new(ENTRIES, 4096)?;
    for round in 0..rounds {
        let (r, w) = UnixStream::pair()?;
        p.arm(&r, 0)?;
        let busy = round % 2 == 1;
        // Idle rounds keep the peer open (and silent) until the end of the round.
        let (writer, _idle_peer) = if busy {
            (Some(spawn_fill(w, usize::MAX >> 1)), None)
        } else {
            (None, Some(w))
        };
        if busy {
            // Let data flow: reap a few CQEs, giving buffers back at once.
            let mut seen = 0;
            while seen < 3 {
                for (_, res, flags) in p.step(Duration::from_millis(50))? {
                    p.give_back(cqueue::buffer_select(flags));
                    if !cqueue::more(flags) {
                        // -ENOBUFS: the writer outran the 8 buffers; re-arm like a drain.
                        if res <= 0 && res != -libc::ENOBUFS {
                            return Err(io::Error::other(format!("recv ended early: {res}")));
                        }
                        p.arm(&r, 0)?;
                    }
                    seen += 1;
                }
            }
        } else if let Some(&(_, res, _)) = p.step(Duration::ZERO)?.first() {
            return Err(io::Error::other(format!("idle recv completed: {res}")));
        }
        p.cancel(&r)?;
        let deadline = Instant::now() + Duration::from_secs(2);
        let (mut final_seen, mut cancel_seen) = (false, false);
        while !(final_seen && cancel_seen) && Instant::now() < deadline {
            for (ud, res, flags) in p.step(Duration::from_millis(50))? {
                let bid = cqueue::buffer_select(flags);
                if ud == CANCEL_UD {
                    bump(&mut out.cancel_results, res);
                    cancel_seen = true;
                    continue;
                }
                if cqueue::more(flags) {
                    out.data_after_cancel += 1;
                } else {
                    final_seen = true;
                    out.final_seen += 1;
                    bump(&mut out.final_results, res);
                    out.final_with_buffer += usize::from(bid.is_some());
                }
                p.give_back(bid);
            }
        }
        if !final_seen {
            return Err(io::Error::other(format!("round {round}: no final CQE")));
        }
        drop(r);
        if let Some(wr) = writer {
            // The reader end is closed: the writer fails with EPIPE and ends.
            let _ = wr.join();
        }
    }
    // Every buffer must still be usable: hold all that one stream receives until ENOBUFS.
    let (r, w) = UnixStream::pair()?;
    let fill = spawn_fill(w, usize::from(ENTRIES) * 4096 * 2);
    p.arm(&r, 0)?;
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ended = false;
    while !ended && Instant::now() < deadline {
        for (_, res, flags) in p.step(Duration::from_millis(50))? {
            held.extend(cqueue::buffer_select(flags));
            if !cqueue::more(flags) {
                ended = true;
                if res != -libc::ENOBUFS {
                    return Err(io::Error::other(format!("expected ENOBUFS, got {res}")));
                }
            }
        }
    }
    out.buffers_usable_after = held.len();
    p.give_back(held);
    // Drain the rest so the writer ends, then nothing is armed.
    let mut open = true;
    p.arm(&r, 0)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while open && Instant::now() < deadline {
        for (_, res, flags) in p.step(Duration::from_millis(50))? {
            p.give_back(cqueue::buffer_select(flags));
            if !cqueue::more(flags) {
                if res == 0 {
                    open = false;
                } else {
                    p.arm(&r, 0)?;
                }
            }
        }
    }
    fill.join()
        .map_err(|_| io::Error::other("writer panicked"))??;
    p.clean = !open;
    Ok(out)
}

/// What [`check_eof_race`] saw.
#[derive(Debug, Default)]
pub struct EofRaceReport {
    pub multishot: bool,
    pub rounds: usize,
    /// Rounds where all 123 bytes arrived but no EOF CQE came within 200 ms although the peer
    /// had shut down (a peek then read 0 bytes); the recv was cancelled to end the round.
    pub missed_eof: usize,
}

/// liburing#1549: a peer sends 123 bytes and shuts down its write side right away; the reader
/// expects the data, then a 0-byte (EOF) CQE. Runs `rounds` times with a multishot recv over
/// the buffer ring, or with single-shot recvs (re-armed after each data CQE, as the engine
/// does), on AF_UNIX socketpairs like the Docker socket's.
pub fn check_eof_race(rounds: usize, multishot: bool) -> io::Result<EofRaceReport> {
    let mut out = EofRaceReport {
        multishot,
        rounds,
        ..Default::default()
    };
    let mut p = CheckRing::new(8, 4096)?;
    // The single-shot recv's buffer; lent to the kernel while a recv is armed.
    let mut buf = vec![0u8; 4096].into_boxed_slice();
    let mut armed = false;
    for _ in 0..rounds {
        let (r, w) = UnixStream::pair()?;
        let arm = |p: &mut CheckRing, buf: &mut [u8]| -> io::Result<()> {
            if multishot {
                p.arm(&r, 0)
            } else {
                let entry = opcode::Recv::new(Fd(r.as_raw_fd()), buf.as_mut_ptr(), 4096)
                    .build()
                    .user_data(0);
                // SAFETY: the recv writes into `buf`, a boxed slice that is not touched or
                // freed until this recv's completion is reaped below (or, should a round
                // fail, is leaked by the error path).
                unsafe { push(&mut p.ring, &entry, &mut p.enters) }
            }
        };
        arm(&mut p, &mut buf)?;
        armed = true;
        let peer = std::thread::spawn(move || -> io::Result<UnixStream> {
            let mut w = w;
            w.write_all(&[b'x'; 123])?;
            w.shutdown(std::net::Shutdown::Write)?;
            Ok(w)
        });
        let mut got = 0;
        let mut eof = false;
        let mut cancelled = false;
        let mut last = Instant::now();
        while armed {
            let cqes = p.step(Duration::from_millis(20))?;
            for &(ud, res, flags) in &cqes {
                if ud == CANCEL_UD {
                    continue;
                }
                p.give_back(cqueue::buffer_select(flags));
                let ended = !multishot || !cqueue::more(flags);
                if res > 0 {
                    got += res as usize;
                }
                if res == 0 {
                    eof = true;
                }
                if ended {
                    armed = false;
                    if res > 0 && !cancelled {
                        arm(&mut p, &mut buf)?;
                        armed = true;
                    }
                }
            }
            if !cqes.is_empty() {
                last = Instant::now();
            } else if !cancelled && got == 123 && last.elapsed() > Duration::from_millis(200) {
                if peek(&r) == Some(0) {
                    out.missed_eof += 1;
                }
                p.cancel(&r)?;
                cancelled = true;
            } else if last.elapsed() > Duration::from_secs(2) {
                std::mem::forget(std::mem::take(&mut buf));
                return Err(io::Error::other("recv neither completed nor cancelled"));
            }
        }
        if !eof && !cancelled {
            return Err(io::Error::other("recv ended without EOF"));
        }
        let _w = peer
            .join()
            .map_err(|_| io::Error::other("peer panicked"))??;
    }
    // A late cancel CQE may still be queued: reap whatever is there.
    p.step(Duration::from_millis(10))?;
    p.clean = !armed;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Accounting

struct Usage {
    user_us: u64,
    sys_us: u64,
    nvcsw: u64,
}

fn thread_usage() -> io::Result<Usage> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct we own and keeps no pointer to it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getrusage succeeded, so it wrote the whole struct (it was zeroed anyway).
    let ru = unsafe { ru.assume_init() };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Ok(Usage {
        user_us: us(ru.ru_utime),
        sys_us: us(ru.ru_stime),
        nvcsw: ru.ru_nvcsw as u64,
    })
}

/// A `kB` field of /proc/self/status.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
