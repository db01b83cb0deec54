//! The hand-over from the reader thread to the dispatcher: batches of entries, each with the
//! positions the containers reach once the batch is delivered.
//!
//! The queue counts entries and their bytes ([`entry_bytes`]) from the moment they are queued
//! until the dispatcher has delivered them to every sink, so a sink that is down keeps the
//! counts high and the reader stops arming receives (see `capture`): the queue is where
//! backpressure is measured, not where lines are dropped. It is full at `queue_size` entries or
//! `max_queue_bytes` bytes, whichever comes first ([`QueueGauge::should_pause`]): with 1 MiB
//! lines an entry count alone would let memory grow to `queue_size` MiB.

pub mod entry;
pub mod processing;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::pipeline::entry::LogEntry;
use crate::state::positions::Resume;

/// Where a container stands once every entry of the batch (and of the batches before it) is
/// delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub container_id: Arc<str>,
    pub container_name: Arc<str>,
    pub resume: Resume,
    pub newest_ns: i64,
    /// Entries and message bytes of this container in the batch.
    pub lines: u64,
    pub bytes: u64,
}

pub use crate::state::file_positions::FileCheckpoint;

#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<LogEntry>,
    pub checkpoints: Vec<Checkpoint>,
    /// Monitored files' positions, committed with the containers'.
    pub file_checkpoints: Vec<FileCheckpoint>,
    /// Containers removed (destroyed) whose every line is in this batch or an earlier one:
    /// once it is delivered, their positions are only kept for the grace period
    /// (`positions.max_position_age`).
    pub removed: Vec<Arc<str>>,
}

/// Default `dispatcher.max_queue_bytes`: 64 MiB.
pub const DEFAULT_MAX_QUEUE_BYTES: usize = 64 << 20;

/// What an entry is counted as against `max_queue_bytes`: its message and a fixed share for
/// the entry itself (labels are shared per container).
pub fn entry_bytes(e: &LogEntry) -> usize {
    e.message.len() + std::mem::size_of::<LogEntry>()
}

fn entries_bytes(entries: &[LogEntry]) -> usize {
    entries.iter().map(entry_bytes).sum()
}

/// Entries (and their bytes) queued or being delivered, against the configured capacity.
#[derive(Debug)]
pub struct QueueGauge {
    queued: AtomicUsize,
    bytes: AtomicUsize,
    capacity: usize,
    max_bytes: usize,
}

impl QueueGauge {
    pub fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes queued ([`entry_bytes`] of every entry queued or being delivered).
    pub fn queued_bytes(&self) -> usize {
        self.bytes.load(Relaxed)
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Whether the reader should be paused, given whether it is now: it pauses when either
    /// bound is reached and resumes when both are back under half, so that it does not flap
    /// at the edge.
    pub fn should_pause(&self, paused: bool) -> bool {
        let (n, b) = (self.queued(), self.queued_bytes());
        if paused {
            n > self.capacity / 2 || b > self.max_bytes / 2
        } else {
            n >= self.capacity || b >= self.max_bytes
        }
    }

    /// 0.0 (empty) to 1.0 (full) and beyond, by whichever bound is nearer: the reader can
    /// overshoot by what its receives in flight held when it paused.
    pub fn utilization(&self) -> f64 {
        let by_count = self.queued() as f64 / self.capacity.max(1) as f64;
        let by_bytes = self.queued_bytes() as f64 / self.max_bytes.max(1) as f64;
        by_count.max(by_bytes)
    }
}

#[derive(Clone)]
pub struct QueueSender {
    tx: mpsc::Sender<Batch>,
    gauge: Arc<QueueGauge>,
}

pub struct QueueReceiver {
    rx: mpsc::Receiver<Batch>,
    gauge: Arc<QueueGauge>,
}

/// A queue for `capacity` entries and [`DEFAULT_MAX_QUEUE_BYTES`].
pub fn queue(capacity: usize) -> (QueueSender, QueueReceiver) {
    queue_bounded(capacity, DEFAULT_MAX_QUEUE_BYTES)
}

/// A queue for `capacity` entries or `max_bytes` bytes, whichever is reached first.
pub fn queue_bounded(capacity: usize, max_bytes: usize) -> (QueueSender, QueueReceiver) {
    let (tx, rx) = mpsc::channel();
    let gauge = Arc::new(QueueGauge {
        queued: AtomicUsize::new(0),
        bytes: AtomicUsize::new(0),
        capacity: capacity.max(1),
        max_bytes: max_bytes.max(1),
    });
    (
        QueueSender {
            tx,
            gauge: gauge.clone(),
        },
        QueueReceiver { rx, gauge },
    )
}

impl QueueSender {
    /// Queues a batch. Fails only when the dispatcher is gone, returning the batch.
    pub fn send(&self, batch: Batch) -> Result<(), Batch> {
        let n = batch.entries.len();
        let bytes = entries_bytes(&batch.entries);
        self.gauge.queued.fetch_add(n, Relaxed);
        self.gauge.bytes.fetch_add(bytes, Relaxed);
        self.tx.send(batch).map_err(|e| {
            self.gauge.queued.fetch_sub(n, Relaxed);
            self.gauge.bytes.fetch_sub(bytes, Relaxed);
            e.0
        })
    }

    pub fn gauge(&self) -> &Arc<QueueGauge> {
        &self.gauge
    }
}

pub enum Received {
    Batch(Batch),
    Timeout,
    /// The reader is done and everything it queued has been received.
    Closed,
}

impl QueueReceiver {
    pub fn recv(&self, timeout: Duration) -> Received {
        match self.rx.recv_timeout(timeout) {
            Ok(batch) => Received::Batch(batch),
            Err(mpsc::RecvTimeoutError::Timeout) => Received::Timeout,
            Err(mpsc::RecvTimeoutError::Disconnected) => Received::Closed,
        }
    }

    /// These entries left the pipeline (delivered, or given up on at shutdown).
    pub fn release(&self, entries: &[LogEntry]) {
        self.gauge.queued.fetch_sub(entries.len(), Relaxed);
        self.gauge.bytes.fetch_sub(entries_bytes(entries), Relaxed);
    }

    pub fn gauge(&self) -> &Arc<QueueGauge> {
        &self.gauge
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::StreamKind;
    use bytes::Bytes;

    fn entry(len: usize) -> LogEntry {
        LogEntry {
            fields: Default::default(),
            timestamp_ns: 0,
            processed_at_ns: 0,
            message: Bytes::from(vec![b'x'; len]),
            stream: StreamKind::Stdout,
            source_type: "docker",
            source_id: Arc::from("abc"),
            labels: Arc::default(),
        }
    }

    /// 1 MiB lines fill a 4 MiB budget at the 4th entry although 10 000 entries would fit.
    #[test]
    fn bytes_bound_pauses_before_the_entry_count() {
        let (tx, rx) = queue_bounded(10_000, 4 << 20);
        let g = tx.gauge().clone();
        let mut sent = 0;
        while !g.should_pause(false) {
            assert!(sent < 100, "no pause after {sent} MiB queued");
            tx.send(Batch {
                entries: vec![entry(1 << 20)],
                ..Batch::default()
            })
            .unwrap();
            sent += 1;
        }
        assert_eq!(sent, 4);
        assert!(g.utilization() >= 1.0);
        // Resumes once under half of both bounds.
        let mut held = Vec::new();
        while let Received::Batch(b) = rx.recv(Duration::ZERO) {
            held.push(b);
        }
        rx.release(&held.pop().unwrap().entries);
        assert!(g.should_pause(true), "3 MiB of 4 is over half");
        rx.release(&held.pop().unwrap().entries);
        assert!(
            g.should_pause(true),
            "2 MiB and 2 entries of 4 MiB is over half"
        );
        rx.release(&held.pop().unwrap().entries);
        assert!(!g.should_pause(true), "1 MiB of 4 is under half");
        assert_eq!(g.queued(), 1);
        assert_eq!(g.queued_bytes(), entry_bytes(&entry(1 << 20)));
    }

    #[test]
    fn entry_count_still_bounds_small_lines() {
        let (tx, _rx) = queue_bounded(3, 64 << 20);
        for _ in 0..3 {
            assert!(!tx.gauge().should_pause(false));
            tx.send(Batch {
                entries: vec![entry(10)],
                ..Batch::default()
            })
            .unwrap();
        }
        assert!(tx.gauge().should_pause(false));
    }
}
