//! What every layer counts, below all of them: Prometheus text and histograms ([`prom`]), the
//! per-container and per-sink records ([`registry`]), the thread-count tracker ([`tracker`])
//! and the process readings from `/proc` ([`procinfo`]). Sources, the pipeline and the sinks
//! write here; the HTTP API ([`crate::api`]) only reads. Nothing here imports a layer above.

pub mod procinfo;
pub mod prom;
pub mod registry;
pub mod tracker;

pub use prom::Histogram;
pub use registry::{ContainerRecord, ContainerRegistry, SinkTimings};
pub use tracker::{ThreadTracker, TrackerStats};
