//! `sinks.blackhole`: counts entries and message bytes, keeps nothing (for benchmarks).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Sink, SinkError};
use crate::pipeline::entry::LogEntry;

/// Counters readable from any thread while the sink runs on its own.
#[derive(Debug, Default)]
pub struct BlackholeCounters {
    entries: AtomicU64,
    bytes: AtomicU64,
    batches: AtomicU64,
}

impl BlackholeCounters {
    /// Entries taken.
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// Message bytes taken (without newlines or metadata).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Non-empty batches taken.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct BlackholeSink {
    counters: Arc<BlackholeCounters>,
}

impl BlackholeSink {
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle on the counters.
    pub fn counters(&self) -> Arc<BlackholeCounters> {
        Arc::clone(&self.counters)
    }
}

impl Sink for BlackholeSink {
    fn name(&self) -> &'static str {
        "blackhole"
    }

    fn write_batch(&mut self, entries: &[LogEntry]) -> Result<(), SinkError> {
        if entries.is_empty() {
            return Ok(());
        }
        let bytes: u64 = entries.iter().map(|e| e.message.len() as u64).sum();
        let c = &self.counters;
        c.entries.fetch_add(entries.len() as u64, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
