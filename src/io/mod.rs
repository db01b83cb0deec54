//! The stream engines: connect to a unix socket, send one request, receive until EOF or until
//! told to stop, and close with every in-flight operation cancelled and reaped first.
//!
//! Two engines implement one contract ([`Engine`]):
//! - [`uring::UringEngine`]: connect, send and recv are io_uring submissions; closing a stream
//!   submits `IORING_OP_ASYNC_CANCEL` for its ops and closes the fd only after every completion,
//!   the cancelled ones included, has been reaped.
//! - [`epoll::EpollEngine`]: for hosts where io_uring is blocked (seccomp, `io_uring_disabled`).
//!   Nothing is in flight in the kernel between two `poll` calls, so closing deregisters and
//!   closes at once; the bookkeeping and counters are the same.
//!
//! The contract both keep:
//! - every [`Engine::open`] (or [`Engine::adopt`]) is answered by exactly one
//!   [`Event::Closed`], and only after [`Engine::close`] was called for that stream;
//! - after `close`, no `Data`, `Eof` or `Error` event is delivered for the stream;
//! - `Closed` means the fd is closed and no operation of the stream is left anywhere;
//! - [`IoStats`] counts ops in flight per kind, live streams, and cancellations at all times;
//! - pacing ([`Engine::set_pacing`]) only delays a receive: a stream waiting out its delay has
//!   nothing in flight, so `close` ends it at once, and what arrived meanwhile is read next.
//!
//! Engines are single-threaded: create one on the thread that polls it.

pub mod epoll;
mod select;
mod stats;
mod table;
pub mod uring;

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use select::{select_engine, EngineChoice, EngineKind, Selection};
pub use stats::{CancelHistogram, IoStats, OpKind, StatsSnapshot, CANCEL_BUCKETS_NANOS};

/// A coalescing [`Engine::poll`] returns early once this many completions are in.
pub const COALESCE_COMPLETIONS: usize = 64;

/// Receives smaller than this are followed by the pacing delay ([`Engine::set_pacing`]), on
/// a stream slow enough that the delay queues less than this in its socket.
pub const PACE_BELOW: usize = 8 * 1024;

/// A stream's receive rate, measured over windows of at least [`RateMeter::WINDOW`]: pacing
/// is for slow streams only. A busy stream's receives can be small too (each wakes on the
/// first message in), and pacing it let dockerd's writes fill the socket and block its follow
/// reader, which then skipped whole rotated files (`tests/docker_rotation.rs`).
#[derive(Debug, Default)]
pub(crate) struct RateMeter {
    since: Option<std::time::Instant>,
    bytes: u64,
    /// Bytes per second over the last whole window; `None` until one is complete.
    rate: Option<u64>,
}

impl RateMeter {
    pub(crate) const WINDOW: Duration = Duration::from_secs(1);

    pub(crate) fn record(&mut self, n: usize, now: std::time::Instant) {
        let since = *self.since.get_or_insert(now);
        self.bytes += n as u64;
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= Self::WINDOW {
            let nanos = elapsed.as_nanos().max(1);
            self.rate = Some(
                u64::try_from(u128::from(self.bytes) * 1_000_000_000 / nanos).unwrap_or(u64::MAX),
            );
            self.since = Some(now);
            self.bytes = 0;
        }
    }

    /// True when a receive of `n` bytes at `now` may be followed by `delay`: it was small, and
    /// at the last window's rate, and at the current one's so far (a burst shows within its
    /// first [`PACE_BELOW`] bytes, not a window later), the delay queues under `PACE_BELOW`.
    pub(crate) fn may_pace(&self, n: usize, delay: Duration, now: std::time::Instant) -> bool {
        let queues = |bytes: u64, over: Duration| {
            u128::from(bytes) * delay.as_nanos() >= PACE_BELOW as u128 * over.as_nanos().max(1)
        };
        let so_far = self
            .since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        n < PACE_BELOW
            && !delay.is_zero()
            && self
                .rate
                .is_some_and(|rate| !queues(rate, Duration::from_secs(1)))
            && !queues(self.bytes, so_far.max(delay))
    }
}

/// Names one stream of one engine. Ids are never reused while the engine lives: a stale id
/// (its stream already closed) is ignored by every call.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream#{}.{}", self.index, self.generation)
    }
}

/// What [`Engine::poll`] reports.
#[derive(Debug)]
pub enum Event {
    /// Bytes received, in order. A slice of the engine's receive buffer, handed over without a
    /// copy on the io_uring engine.
    Data(StreamId, Bytes),
    /// The peer ended the stream. No more data will come; the stream stays until `close`.
    Eof(StreamId),
    /// Connecting, sending or receiving failed. The stream stays until `close`.
    Error(StreamId, io::Error),
    /// `close` is complete: every op was reaped and the fd is closed. The id is dead.
    Closed(StreamId),
}

impl Event {
    /// The stream the event is about.
    pub fn stream(&self) -> StreamId {
        match self {
            Event::Data(id, _) | Event::Eof(id) | Event::Error(id, _) | Event::Closed(id) => *id,
        }
    }
}

/// Drops the events of `id` still waiting to be handed out, but not a `Closed`: what both
/// engines do in `close`, since after it only `Closed` may be reported for the stream.
fn discard_events_of(pending: &mut Vec<Event>, id: StreamId) {
    pending.retain(|e| matches!(e, Event::Closed(_)) || e.stream() != id);
}

/// The stream API both engines offer.
pub trait Engine {
    /// Which engine this is.
    fn kind(&self) -> EngineKind;

    /// Connects to the unix socket at `path`, sends `request` whole, then receives. Progress
    /// and data arrive as [`Event`]s from [`Engine::poll`].
    fn open(&mut self, path: &Path, request: Bytes) -> io::Result<StreamId>;

    /// Takes over a unix socket that another thread connected and sent its request on (the
    /// discovery thread attaching at `create`, which cannot wait for this thread's next poll):
    /// receives on it from here as on a stream from [`Engine::open`], same events, same
    /// `close`.
    fn adopt(&mut self, fd: OwnedFd) -> io::Result<StreamId>;

    /// Ends a stream: cancels whatever is in flight, and once all of it is reaped closes the
    /// fd and reports [`Event::Closed`]. Closing a stream twice, or a stale id, does nothing.
    fn close(&mut self, id: StreamId);

    /// Stops (true) or restarts (false) receiving on a stream: while paused no receive is
    /// armed once the one in flight completes, so a slow consumer holds back the socket, not
    /// memory.
    fn set_paused(&mut self, id: StreamId, paused: bool);

    /// Waits up to `timeout` (`None`: until something happens) for events, appends them to
    /// `events` and returns. Returns at once when events are already pending. Once the first
    /// completion is in, it may wait up to the coalescing window (see
    /// [`Engine::set_coalesce`]) for more. An error means the engine cannot go on; a
    /// refusal the kernel calls transient (io_uring_enter's EAGAIN, ENOMEM) is retried inside
    /// with a backoff, for up to a minute, first.
    fn poll(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()>;

    /// How long a [`Engine::poll`] that found something ready may wait for more before it
    /// returns, unless enough completions are in (one per op in flight, up to
    /// [`COALESCE_COMPLETIONS`]). Zero (the default) returns at the first completion. With
    /// many slow streams each wakeup otherwise carries one line: 1000 streams at 20 lines/s
    /// were 20 000 wakeups a second.
    fn set_coalesce(&mut self, window: Duration);

    /// After a receive of less than [`PACE_BELOW`] bytes on a stream marked live
    /// ([`Engine::set_live`]), arm the stream's next receive only `delay` later (zero, the
    /// default: at once). A slow stream's lines then wait in its socket and come several per
    /// receive instead of one receive (and one kernel poll arm/wake cycle) each, which is most
    /// of the CPU a line costs with many slow streams; a busy stream's receives are large and
    /// never wait. Data already queued when the delay ends is read by that receive.
    fn set_pacing(&mut self, delay: Duration);

    /// Marks a stream live (true: what it delivers is current, so pacing can only delay it)
    /// or not (false, the default for a new stream: it is never paced). The caller decides:
    /// the engine sees bytes, not how old the lines in them are. A stream behind its writer
    /// must not be paced: dockerd sends next to nothing to a reader that is not waiting in a
    /// receive while it catches up (see `crate::sources::docker::reader`).
    fn set_live(&mut self, id: StreamId, live: bool);

    /// Streams opened and not yet reported `Closed`.
    fn live_streams(&self) -> usize;

    /// The engine's counters, shareable with other threads (metrics, health).
    fn stats(&self) -> Arc<IoStats>;
}

#[cfg(test)]
mod tests {
    use super::{RateMeter, PACE_BELOW};
    use std::time::{Duration, Instant};

    const DELAY: Duration = Duration::from_millis(250);

    /// Receives of `size` bytes, `per_sec` a second for `secs` seconds; the meter and the
    /// time of its last receive.
    fn meter(size: usize, per_sec: u32, secs: u32) -> (RateMeter, Instant) {
        let mut m = RateMeter::default();
        let start = Instant::now();
        let mut at = start;
        for i in 0..=per_sec * secs {
            at = start + Duration::from_secs(1) / per_sec * i;
            m.record(size, at);
        }
        (m, at)
    }

    #[test]
    fn no_pacing_before_a_whole_window() {
        let (m, now) = meter(130, 20, 0);
        assert!(!m.may_pace(130, DELAY, now));
    }

    #[test]
    fn a_slow_stream_is_paced_after_small_receives_only() {
        let (m, now) = meter(130, 20, 2);
        assert!(m.may_pace(130, DELAY, now));
        assert!(!m.may_pace(PACE_BELOW, DELAY, now), "a large receive");
        assert!(!m.may_pace(130, Duration::ZERO, now), "pacing off");
    }

    /// 15,000 lines/s arriving a few per receive: small receives, never paced (the delay would
    /// queue 490 KB in the socket and block dockerd's writer).
    #[test]
    fn a_busy_stream_with_small_receives_is_not_paced() {
        let (m, now) = meter(130 * 3, 5_000, 2);
        assert!(!m.may_pace(130 * 3, DELAY, now));
    }

    /// A slow stream that starts a burst: not paced once the burst's first `PACE_BELOW` bytes
    /// are in, without waiting for the window to end.
    #[test]
    fn a_burst_ends_pacing_within_its_first_bytes() {
        let (mut m, mut now) = meter(130, 20, 2);
        assert!(m.may_pace(130, DELAY, now));
        for _ in 0..(PACE_BELOW / 390 + 1) {
            now += Duration::from_micros(200);
            m.record(390, now);
        }
        assert!(!m.may_pace(390, DELAY, now));
    }
}
