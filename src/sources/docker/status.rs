//! What the capturer knows of its Docker engine, shared by every thread that talks to it:
//! reachable or not (and why not), the negotiated API version, and failed calls by endpoint.
//! The client writes it; the reader takes the version from it for each log stream it opens;
//! `/health`, `/debug/goroutines` and `/metrics` read it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;

use super::version::{ApiVersion, EngineVersions};

// 0: not known yet.
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Reachability: `Unknown` until the first call ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reachability {
    Unknown,
    Up,
    /// The last call failed to reach the engine, or the engine refused every version.
    Down(String),
}

#[derive(Debug, Default)]
pub struct DockerStatus {
    state: AtomicU8,
    reason: Mutex<String>,
    /// [`ApiVersion::to_bits`]; 0 before the first negotiation.
    version: AtomicU32,
    pinned: Option<ApiVersion>,
    /// Set by a failed call: the next call negotiates first, since the engine may have been
    /// restarted (upgraded) in between.
    renegotiate: AtomicBool,
    engine: Mutex<Option<EngineVersions>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl DockerStatus {
    /// `pinned`: `DOCKER_API_VERSION`, spoken without negotiation.
    pub fn new(pinned: Option<ApiVersion>) -> Self {
        DockerStatus {
            version: AtomicU32::new(pinned.map_or(0, ApiVersion::to_bits)),
            pinned,
            ..DockerStatus::default()
        }
    }

    /// The version spoken now: pinned or negotiated, `None` before the first negotiation.
    pub fn api_version(&self) -> Option<ApiVersion> {
        ApiVersion::from_bits(self.version.load(Relaxed))
    }

    /// The version for a request built now ([`ApiVersion::FALLBACK`] before any
    /// negotiation).
    pub fn request_version(&self) -> ApiVersion {
        self.api_version().unwrap_or(ApiVersion::FALLBACK)
    }

    pub fn pinned(&self) -> Option<ApiVersion> {
        self.pinned
    }

    /// What the engine said of its versions at the last negotiation.
    pub fn engine_versions(&self) -> Option<EngineVersions> {
        *self.engine.lock().unwrap()
    }

    pub fn reachability(&self) -> Reachability {
        match self.state.load(Relaxed) {
            UP => Reachability::Up,
            DOWN => Reachability::Down(self.reason.lock().unwrap().clone()),
            _ => Reachability::Unknown,
        }
    }

    /// Failed calls by endpoint (`docker_api_errors_total{endpoint}`).
    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.errors.lock().unwrap().clone()
    }

    pub(crate) fn needs_negotiation(&self) -> bool {
        self.pinned.is_none() && (self.api_version().is_none() || self.renegotiate.load(Relaxed))
    }

    /// Records a negotiation; returns the version spoken before it.
    pub(crate) fn negotiated(
        &self,
        engine: EngineVersions,
        version: ApiVersion,
    ) -> Option<ApiVersion> {
        *self.engine.lock().unwrap() = Some(engine);
        self.renegotiate.store(false, Relaxed);
        ApiVersion::from_bits(self.version.swap(version.to_bits(), Relaxed))
    }

    pub(crate) fn mark_up(&self) {
        self.state.store(UP, Relaxed);
    }

    /// The engine could not be reached (or refused us): down, and negotiate at the next call.
    pub(crate) fn mark_down(&self, endpoint: &'static str, reason: String) {
        *self.reason.lock().unwrap() = reason;
        self.state.store(DOWN, Relaxed);
        self.renegotiate.store(true, Relaxed);
        self.count_error(endpoint);
    }

    /// The engine answered, with an error.
    pub(crate) fn count_error(&self, endpoint: &'static str) {
        *self.errors.lock().unwrap().entry(endpoint).or_default() += 1;
    }

    /// Negotiate at the next call (the engine refused the version spoken).
    pub(crate) fn invalidate(&self) {
        self.renegotiate.store(true, Relaxed);
    }
}
