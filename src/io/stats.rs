//! Counters an engine keeps up to date at every op submitted and reaped, readable from any
//! thread. They are what shows a leak: ops in flight must track live streams, never drift.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// The kinds of operation an engine has in flight.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Connect,
    Send,
    Recv,
    Cancel,
}

impl OpKind {
    pub const ALL: [OpKind; 4] = [OpKind::Connect, OpKind::Send, OpKind::Recv, OpKind::Cancel];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Connect => "connect",
            OpKind::Send => "send",
            OpKind::Recv => "recv",
            OpKind::Cancel => "cancel",
        }
    }
}

/// Live counters. Gauges are `i64` so that a bookkeeping bug shows as a negative value instead
/// of wrapping around.
#[derive(Debug, Default)]
pub struct IoStats {
    in_flight: [AtomicI64; 4],
    streams_live: AtomicI64,
    streams_opened: AtomicU64,
    streams_closed: AtomicU64,
    cancellations: AtomicU64,
    cancel_reaped_nanos_sum: AtomicU64,
    cancel_reaped_nanos_max: AtomicU64,
    cancel_reaped_count: AtomicU64,
    /// Cancel-to-reaped latencies per bucket of [`CANCEL_BUCKETS_NANOS`] (not cumulative; the
    /// last slot counts those above the largest bound).
    cancel_reaped_buckets: [AtomicU64; CANCEL_BUCKETS_NANOS.len() + 1],
    bytes_received: AtomicU64,
    /// Completions that waited on the kernel's CQ overflow list (io_uring only).
    cq_overflows: AtomicU64,
}

/// Upper bounds (inclusive, nanoseconds) of the cancel-to-reaped latency histogram:
/// 10 µs to 10 s.
pub const CANCEL_BUCKETS_NANOS: [u64; 12] = [
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    10_000_000_000,
];

/// The cancel-to-reaped histogram, Prometheus style.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CancelHistogram {
    /// Cumulative counts, one per bound of [`CANCEL_BUCKETS_NANOS`].
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_nanos: u64,
}

/// A consistent-enough copy of [`IoStats`] for printing and assertions.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub connect_in_flight: i64,
    pub send_in_flight: i64,
    pub recv_in_flight: i64,
    pub cancel_in_flight: i64,
    pub streams_live: i64,
    pub streams_opened: u64,
    pub streams_closed: u64,
    /// Streams closed while an op was in flight, so that a cancel had to be submitted.
    pub cancellations: u64,
    /// Cancel submitted to last completion reaped: count, sum and max, in nanoseconds.
    pub cancel_reaped_count: u64,
    pub cancel_reaped_nanos_sum: u64,
    pub cancel_reaped_nanos_max: u64,
    pub bytes_received: u64,
}

impl StatsSnapshot {
    pub fn ops_in_flight(&self) -> i64 {
        self.connect_in_flight + self.send_in_flight + self.recv_in_flight + self.cancel_in_flight
    }
}

fn slot(kind: OpKind) -> usize {
    kind as usize
}

impl IoStats {
    pub(crate) fn op_submitted(&self, kind: OpKind) {
        self.in_flight[slot(kind)].fetch_add(1, Relaxed);
    }

    pub(crate) fn op_reaped(&self, kind: OpKind) {
        self.in_flight[slot(kind)].fetch_sub(1, Relaxed);
    }

    pub(crate) fn stream_opened(&self) {
        self.streams_live.fetch_add(1, Relaxed);
        self.streams_opened.fetch_add(1, Relaxed);
    }

    pub(crate) fn stream_closed(&self) {
        self.streams_live.fetch_sub(1, Relaxed);
        self.streams_closed.fetch_add(1, Relaxed);
    }

    pub(crate) fn cancelled(&self) {
        self.cancellations.fetch_add(1, Relaxed);
    }

    pub(crate) fn cancel_reaped(&self, nanos: u64) {
        self.cancel_reaped_count.fetch_add(1, Relaxed);
        self.cancel_reaped_nanos_sum.fetch_add(nanos, Relaxed);
        self.cancel_reaped_nanos_max.fetch_max(nanos, Relaxed);
        let bucket = CANCEL_BUCKETS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(CANCEL_BUCKETS_NANOS.len());
        self.cancel_reaped_buckets[bucket].fetch_add(1, Relaxed);
    }

    pub(crate) fn received(&self, bytes: usize) {
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
    }

    pub(crate) fn cq_overflowed(&self, completions: u64) {
        self.cq_overflows.fetch_add(completions, Relaxed);
    }

    /// Completions that had to wait on the kernel's CQ overflow list, over the engine's life.
    pub fn cq_overflows(&self) -> u64 {
        self.cq_overflows.load(Relaxed)
    }

    pub fn in_flight(&self, kind: OpKind) -> i64 {
        self.in_flight[slot(kind)].load(Relaxed)
    }

    /// The cancel-to-reaped latency histogram (count and sum read after the buckets, so a
    /// concurrent update can only make `count` exceed the last bucket, never fall below it).
    pub fn cancel_histogram(&self) -> CancelHistogram {
        let mut total = 0;
        let cumulative = CANCEL_BUCKETS_NANOS
            .iter()
            .enumerate()
            .map(|(i, _)| {
                total += self.cancel_reaped_buckets[i].load(Relaxed);
                total
            })
            .collect();
        let over = self.cancel_reaped_buckets[CANCEL_BUCKETS_NANOS.len()].load(Relaxed);
        CancelHistogram {
            cumulative,
            count: self.cancel_reaped_count.load(Relaxed).max(total + over),
            sum_nanos: self.cancel_reaped_nanos_sum.load(Relaxed),
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connect_in_flight: self.in_flight(OpKind::Connect),
            send_in_flight: self.in_flight(OpKind::Send),
            recv_in_flight: self.in_flight(OpKind::Recv),
            cancel_in_flight: self.in_flight(OpKind::Cancel),
            streams_live: self.streams_live.load(Relaxed),
            streams_opened: self.streams_opened.load(Relaxed),
            streams_closed: self.streams_closed.load(Relaxed),
            cancellations: self.cancellations.load(Relaxed),
            cancel_reaped_count: self.cancel_reaped_count.load(Relaxed),
            cancel_reaped_nanos_sum: self.cancel_reaped_nanos_sum.load(Relaxed),
            cancel_reaped_nanos_max: self.cancel_reaped_nanos_max.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
        }
    }
}
