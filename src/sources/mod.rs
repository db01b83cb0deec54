//! Where lines come from. Each source turns what it reads into entries
//! ([`crate::pipeline::entry`]) and hands them, in batches with their resume points, to the one
//! queue ([`crate::pipeline`]):
//! - [`docker`]: the Docker Engine API client, container discovery (events, attach at
//!   create), the log streams read through [`crate::io`] and decoded by [`crate::decode`], and
//!   their resume and replay bookkeeping;
//! - [`files`]: log files on the host, tailed across rotation;
//! - the HTTP ingest, `POST /api/v1/logs`, lives with the rest of the HTTP API in
//!   [`crate::api`].

pub mod docker;
pub mod files;
