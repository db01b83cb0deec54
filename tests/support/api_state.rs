//! The state the HTTP API serves, built as the daemon builds it, for tests that start the API
//! without a daemon (`api::start_with`): positions loaded from a folder, the queue's gauge, and
//! the epoll engine as the one running.

use std::path::Path;
use std::sync::{Arc, Mutex};

use log_capturer::api::Shared;
use log_capturer::io::{EngineKind, IoStats, Selection};
use log_capturer::pipeline::QueueGauge;
use log_capturer::state::positions::PositionStore;

/// `reason` is what `/stats` says of the engine choice.
pub fn shared(dir: &Path, gauge: &Arc<QueueGauge>, reason: &str) -> Shared {
    Shared::new(
        Arc::new(Mutex::new(PositionStore::load(dir).unwrap())),
        gauge.clone(),
    )
    .with_io(
        Arc::new(IoStats::default()),
        Selection {
            kind: EngineKind::Epoll,
            reason: reason.into(),
        },
    )
}
