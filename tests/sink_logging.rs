//! How a failing sink is logged (RELIABILITY.md, the Loki 401/403/404 row): when it starts
//! failing and when it recovers, not once per attempt. Alone in its test binary because it
//! installs the global `tracing` subscriber (a scoped one misses events whose callsites other
//! test threads registered first).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use log_capturer::decode::StreamKind;
use log_capturer::dispatch::{DispatchOptions, DispatchStats, Dispatcher};
use log_capturer::pipeline::entry::LogEntry;
use log_capturer::pipeline::{queue, Batch, Checkpoint};
use log_capturer::sink::{Sink, SinkError};
use log_capturer::state::positions::{PositionStore, Resume};
use log_capturer::telemetry::SinkTimings;

const ID: &str = "aaaaaaaaaaaa0000000000000000000000000000000000000000000000000000";

/// Fails its first `failures` writes.
struct FailsFirst {
    failures: usize,
    calls: usize,
}

impl Sink for FailsFirst {
    fn name(&self) -> &'static str {
        "stdout"
    }
    fn write_batch(&mut self, _: &[LogEntry]) -> Result<(), SinkError> {
        self.calls += 1;
        if self.calls <= self.failures {
            return Err(SinkError::Write {
                sink: "stdout",
                source: std::io::Error::from_raw_os_error(libc::EPIPE),
            });
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A sink failing 3 times in a row is logged once when it starts failing and once when it
/// recovers, not once per attempt (before: a warning per attempt, per batch).
#[test]
fn failing_sink_is_logged_when_it_starts_and_when_it_recovers() {
    let dir =
        std::env::temp_dir().join(format!("log_capturer_sink_logging_{}", std::process::id()));
    let (tx, rx) = queue(1000);
    let positions = Arc::new(Mutex::new(PositionStore::load(&dir).unwrap()));
    let stats = Arc::new(DispatchStats::default());
    let dispatcher = Dispatcher::new(
        rx,
        vec![Box::new(FailsFirst {
            failures: 3,
            calls: 0,
        })],
        positions,
        DispatchOptions {
            batch_size: 1000,
            batch_timeout: Duration::from_millis(1),
            commit_interval: Duration::from_millis(10),
            shutdown_timeout: Duration::from_secs(30),
            cleanup_interval: Duration::from_secs(60),
            max_position_age: Duration::from_secs(12 * 3600),
        },
        stats.clone(),
        Arc::new(SinkTimings::default()),
        Arc::new(AtomicBool::new(false)),
    );
    let entries: Vec<LogEntry> = (0..2)
        .map(|i| LogEntry {
            fields: Default::default(),
            timestamp_ns: i,
            processed_at_ns: i,
            message: Bytes::from(format!("m-{i}")),
            stream: StreamKind::Stdout,
            source_type: "docker",
            source_id: Arc::from(&ID[..12]),
            labels: Arc::default(),
        })
        .collect();
    let checkpoint = Checkpoint {
        container_id: Arc::from(ID),
        container_name: Arc::from("web"),
        resume: Resume {
            since_ns: 100,
            skip: 0,
        },
        newest_ns: 100,
        lines: 2,
        bytes: 6,
    };
    tx.send(Batch {
        entries,
        checkpoints: vec![checkpoint],
        removed: vec![],
        file_checkpoints: vec![],
    })
    .unwrap();
    drop(tx);
    let log = LogBuffer::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    dispatcher.run();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(stats.retries.load(SeqCst), 3);
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let warnings = text.lines().filter(|l| l.contains("WARN")).count();
    assert_eq!(warnings, 1, "{text}");
    assert!(
        text.contains("recovered (2 failures since the last report)"),
        "{text}"
    );
}
