//! The Docker Engine API: request builders, and a small blocking client for the control calls
//! (list, inspect) that are not on the hot path.

mod client;
mod request;

pub use client::{Client, ContainerInfo, ContainerSummary};
pub use request::{
    attach_request, get_request, logs_request, post_request, socket_path, LogsQuery, API_VERSION,
};
