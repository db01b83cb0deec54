//! A slice of the response stream that remembers where it sits in it.
//!
//! Every layer reports errors as an absolute byte offset in the HTTP response (head included),
//! so that one number points into a capture of the socket. Chunked encoding interleaves framing
//! with body bytes, so body offsets cannot be turned back into stream offsets after the fact:
//! each slice carries its own.

use bytes::Bytes;

/// Bytes of the response stream and the stream offset of their first byte.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Span {
    /// The bytes; a zero-copy slice of a receive buffer.
    pub bytes: Bytes,
    /// Offset of `bytes[0]` in the response stream.
    pub offset: u64,
}

impl Span {
    /// A span of `bytes` starting at stream offset `offset`.
    pub fn new(bytes: Bytes, offset: u64) -> Self {
        Span { bytes, offset }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when no bytes are left.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Stream offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.bytes.len() as u64
    }

    /// Splits off and returns the first `n` bytes (zero-copy); `self` keeps the rest.
    ///
    /// # Panics
    /// If `n > self.len()`, like [`Bytes::split_to`].
    pub fn split_to(&mut self, n: usize) -> Span {
        // Taking everything needs no new handle (and no refcount traffic).
        let bytes = if n == self.bytes.len() {
            std::mem::take(&mut self.bytes)
        } else {
            self.bytes.split_to(n)
        };
        let head = Span::new(bytes, self.offset);
        self.offset += n as u64;
        head
    }

    /// Drops the first `n` bytes.
    ///
    /// # Panics
    /// If `n > self.len()`.
    pub fn advance(&mut self, n: usize) {
        bytes::Buf::advance(&mut self.bytes, n);
        self.offset += n as u64;
    }
}
