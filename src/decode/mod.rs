//! Decoding of a Docker log stream, layer by layer, each layer accepting input split at any
//! byte boundary and handing out slices of the receive buffers (`Bytes`) rather than copies.
//!
//! - [`http`]: HTTP/1.1 response head and chunked transfer decoding -> body slices.
//! - [`frame`]: the multiplexed 8-byte frame header demux (or a raw TTY stream) -> frame pieces.
//! - [`timestamp`]: the RFC 3339 prefix dockerd writes with `timestamps=1`.
//! - [`lines`]: memchr line splitting, timestamp stripping, 16 KiB partial reassembly.
//! - [`Span`]: a body slice with its offset in the response, so every error can name the byte.
//!
//! [`LogDecoder`] stacks them: raw socket bytes in, [`LogLine`]s out.

pub mod frame;
pub mod http;
pub mod lines;
pub mod timestamp;

mod log_decoder;
mod span;
pub use log_decoder::{
    DecodeError, DecodeOptions, LogDecoder, LogLine, StreamKind, MAX_ERROR_BODY_LEN,
};
pub use span::Span;
