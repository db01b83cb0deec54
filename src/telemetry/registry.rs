//! Counters the metrics need that the reader and the dispatcher update. They live in
//! [`crate::api::Shared`]; the metrics read them at scrape time.
//!
//! - [`ContainerRegistry`]: which containers are read (`containers_monitored`,
//!   `total_containers_monitored`) and lines per container (`logs_processed_total`).
//!   The capture thread calls `monitored` when a container's stream opens, `unmonitored`
//!   when its container stops, `forget` when it is removed, and adds to the line counter
//!   `monitored` returns per queued batch.
//! - [`SinkTimings`]: `sink_send_duration_seconds`; the dispatcher calls `observe` around
//!   every `write_batch`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::prom::{Histogram, SINK_SEND_BUCKETS};
/// Docker's short container id: what positions, metrics and entries call a container.
pub const SHORT_ID_LEN: usize = 12;

/// One container as the metrics show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerRecord {
    /// 12-character id (the Go label value).
    pub container_id: String,
    pub container_name: String,
    pub image: String,
    /// Its log is being read now.
    pub monitored: bool,
    /// Lines queued for delivery since this process started.
    pub lines: u64,
}

#[derive(Debug, Default)]
pub struct ContainerRegistry {
    inner: Mutex<BTreeMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    record: ContainerRecord,
    /// The live count: the capture thread adds to it without the lock or a lookup.
    lines: Arc<AtomicU64>,
}

impl Entry {
    fn new(id: &str) -> Self {
        Entry {
            record: ContainerRecord {
                container_id: short(id),
                container_name: String::new(),
                image: String::new(),
                monitored: true,
                lines: 0,
            },
            lines: Arc::default(),
        }
    }
}

fn short(id: &str) -> String {
    id.chars().take(SHORT_ID_LEN).collect()
}

impl ContainerRegistry {
    /// The container's log is read from now on. `name` without the leading `/`. Returns its
    /// line counter (lines queued for delivery), which the caller adds to without the lock.
    pub fn monitored(&self, id: &str, name: &str, image: &str) -> Arc<AtomicU64> {
        let mut inner = self.inner.lock().unwrap();
        let e = inner
            .entry(id.to_string())
            .or_insert_with(|| Entry::new(id));
        let r = &mut e.record;
        let name = name.trim_start_matches('/');
        if r.container_name != name {
            r.container_name = name.to_string();
        }
        if r.image != image {
            r.image = image.to_string();
        }
        r.monitored = true;
        e.lines.clone()
    }

    /// The container stopped: its series stays (Go kept it at 0), its line count too.
    pub fn unmonitored(&self, id: &str) {
        if let Some(e) = self.inner.lock().unwrap().get_mut(id) {
            e.record.monitored = false;
        }
    }

    /// The container is gone: its series are dropped.
    pub fn forget(&self, id: &str) {
        self.inner.lock().unwrap().remove(id);
    }

    pub fn snapshot(&self) -> Vec<ContainerRecord> {
        let inner = self.inner.lock().unwrap();
        inner
            .values()
            .map(|e| ContainerRecord {
                lines: e.lines.load(Relaxed),
                ..e.record.clone()
            })
            .collect()
    }

    /// True once anything was recorded: until the capture thread calls this registry, the
    /// metrics fall back to the totals they have.
    pub fn is_used(&self) -> bool {
        !self.inner.lock().unwrap().is_empty()
    }
}

/// Time spent in each sink's `write_batch`.
#[derive(Debug, Default)]
pub struct SinkTimings {
    inner: Mutex<BTreeMap<&'static str, Arc<Histogram>>>,
}

impl SinkTimings {
    pub fn observe(&self, sink: &'static str, took: Duration) {
        self.histogram(sink).observe(took);
    }

    /// The sink's histogram, created empty on first use.
    pub fn histogram(&self, sink: &'static str) -> Arc<Histogram> {
        self.inner
            .lock()
            .unwrap()
            .entry(sink)
            .or_insert_with(|| Arc::new(Histogram::new(SINK_SEND_BUCKETS)))
            .clone()
    }

    pub fn sinks(&self) -> Vec<&'static str> {
        self.inner.lock().unwrap().keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_lifecycle() {
        let r = ContainerRegistry::default();
        assert!(!r.is_used());
        let lines = r.monitored("0123456789abcdef", "/web", "nginx:1");
        lines.fetch_add(5, Relaxed);
        r.unmonitored("0123456789abcdef");
        let s = r.snapshot();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].container_id, "0123456789ab");
        assert_eq!(s[0].container_name, "web");
        assert_eq!((s[0].monitored, s[0].lines), (false, 5));
        r.forget("0123456789abcdef");
        assert!(!r.is_used());
    }
}
