//! log_capturer: reads Docker container log streams through io_uring (or epoll where io_uring
//! is unavailable), decodes them without copying, and hands out lines; monitored log files
//! ([`files`]) feed the same queue.
//!
//! Data flows one way: socket ([`io`]) -> HTTP body ([`decode::http`]) -> frames
//! ([`decode::frame`]) -> lines ([`decode::lines`]) -> entries -> sinks.
//!
//! Unsafe code is confined to [`io::uring`]; the rest of the crate forbids it.
#![deny(unsafe_code)]

pub mod api;
pub mod capture;
pub mod clock_step;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod discovery;
pub mod dispatch;
pub mod docker;
pub mod entry;
pub mod failure;
pub mod files;
pub mod io;
pub mod pipeline;
pub mod positions;
pub mod processing;
pub mod reader;
pub mod replay;
pub mod resume;
pub mod safety_net;
pub mod sink;
pub mod state_lock;
pub mod window;
