//! The Docker Engine API: request builders, a small blocking client for the control calls
//! (list, inspect, events) that are not on the hot path, API version negotiation, and the
//! engine's status as the client saw it (reachable, version, failed calls).

pub mod capture;
mod client;
pub mod discovery;
pub mod reader;
mod request;
mod status;
mod version;

pub mod clock_step;
pub mod replay;
pub mod resume;
pub mod safety_net;
pub mod window;

pub use client::{Client, ClientError, ContainerInfo, ContainerSummary, ErrorKind};
pub use request::{
    attach_request, get_request, logs_request, post_request, socket_path, LogsQuery,
};
pub use status::{DockerStatus, Reachability};
pub use version::{negotiate, pinned_from_env, ApiVersion, EngineVersions};
