//! The hand-over from the reader thread to the dispatcher: batches of entries, each with the
//! positions the containers reach once the batch is delivered.
//!
//! The queue counts entries from the moment they are queued until the dispatcher has
//! delivered them to every sink, so a sink that is down keeps the count high and the reader
//! stops arming receives (see `capture`): the queue is where backpressure is measured, not
//! where lines are dropped.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use crate::entry::LogEntry;
use crate::positions::Resume;

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

#[derive(Debug, Default)]
pub struct Batch {
    pub entries: Vec<LogEntry>,
    pub checkpoints: Vec<Checkpoint>,
    /// Containers removed (destroyed) whose every line is in this batch or an earlier one:
    /// once it is delivered, their positions are only kept for the grace period
    /// (`positions.max_position_age`).
    pub removed: Vec<Arc<str>>,
}

/// Entries queued or being delivered, against the configured capacity.
#[derive(Debug)]
pub struct QueueGauge {
    queued: AtomicUsize,
    capacity: usize,
}

impl QueueGauge {
    pub fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// 0.0 (empty) to 1.0 (full) and beyond: the reader can overshoot by what its receives
    /// in flight held when it paused.
    pub fn utilization(&self) -> f64 {
        self.queued() as f64 / self.capacity.max(1) as f64
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

/// A queue for `capacity` entries.
pub fn queue(capacity: usize) -> (QueueSender, QueueReceiver) {
    let (tx, rx) = mpsc::channel();
    let gauge = Arc::new(QueueGauge {
        queued: AtomicUsize::new(0),
        capacity: capacity.max(1),
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
        self.gauge.queued.fetch_add(n, Relaxed);
        self.tx.send(batch).map_err(|e| {
            self.gauge.queued.fetch_sub(n, Relaxed);
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

    /// `n` entries left the pipeline (delivered, or given up on at shutdown).
    pub fn release(&self, n: usize) {
        self.gauge.queued.fetch_sub(n, Relaxed);
    }

    pub fn gauge(&self) -> &Arc<QueueGauge> {
        &self.gauge
    }
}
