//! log_capturer: reads the log streams of Docker containers through io_uring (or epoll where
//! io_uring is unavailable) and log files, splits them into lines without copying, and ships
//! them to sinks exactly once.
//!
//! The modules, in the order a line passes through them:
//! - [`sources`]: where lines come from: [`sources::docker`] (discovery, streams, resume), [`sources::files`];
//!   the HTTP ingest is in [`api`]. Under the Docker source, the reusable core: [`io`], the
//!   io engines (io_uring, epoll), and [`decode`], the decoders (HTTP body -> frames -> lines);
//! - [`pipeline`]: entries ([`pipeline::entry`]), processing steps ([`pipeline::processing`]), the one bounded
//!   queue, batches and the resume points they complete;
//! - [`dispatch`]: takes batches off the queue, hands them to every sink, then commits the
//!   resume points to [`state`];
//! - [`sink`]: local file, Loki, stdout;
//! - [`state`]: positions on disk and the instance lock;
//! - [`telemetry`]: counters, histograms and records every layer writes, below all of them;
//! - [`api`]: the HTTP API and metrics server, which only read (and the HTTP ingest);
//! - [`config`] loads the Go-compatible YAML; [`daemon`] wires it all together, and
//!   [`failure`] turns a panic or a failed engine into a 503 and exit 70.
//!
//! Unsafe code is confined to [`io::uring`]; the rest of the crate forbids it.
#![deny(unsafe_code)]

pub mod api;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod dispatch;
pub mod failure;
pub mod io;
pub mod pipeline;
pub mod sink;
pub mod sources;
pub mod state;
pub mod telemetry;
