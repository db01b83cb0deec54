//! `sinks.stdout`: the JSON lines of the file sink ([`super::format::json_line`]) on stdout, for
//! piping and demos. The writer is injectable for tests.

use std::io::Write;

use super::format::json_line;
use super::{Sink, SinkError};
use crate::pipeline::entry::LogEntry;

/// Writes one JSON line per entry; each batch is written whole and then flushed.
pub struct StdoutSink<W: Write + Send = std::io::Stdout> {
    out: W,
    buf: Vec<u8>,
}

impl StdoutSink<std::io::Stdout> {
    /// A sink writing to the process's stdout.
    pub fn new() -> Self {
        StdoutSink::with_writer(std::io::stdout())
    }
}

impl Default for StdoutSink<std::io::Stdout> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W: Write + Send> StdoutSink<W> {
    /// A sink writing to `out` (a `Vec<u8>`, a pipe, ...).
    pub fn with_writer(out: W) -> Self {
        StdoutSink {
            out,
            buf: Vec::new(),
        }
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write + Send> Sink for StdoutSink<W> {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn write_batch(&mut self, entries: &[LogEntry]) -> Result<(), SinkError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for e in entries {
            json_line(&mut self.buf, e);
        }
        let res = self
            .out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush());
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        res.map_err(|source| SinkError::Write {
            sink: "stdout",
            source,
        })
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|source| SinkError::Write {
            sink: "stdout",
            source,
        })
    }
}
