//! One open file read from an offset: positioned reads (`pread`), lines split by the
//! containers' splitter (`decode::lines`, in raw mode: `\n` ends a line, one `\r` before it is
//! dropped, a line over `MAX_LINE_LEN` comes out in `truncated` pieces).
//!
//! The fd is kept open while the file is tailed, so a file renamed or deleted under it is
//! still read to its end. [`Tailer::committed`] is the byte just past the last `\n` read:
//! the resume point of the lines handed out so far (a pending unterminated line is read
//! again from there).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use bytes::Bytes;

use crate::decode::lines::LineAssembler;
use crate::decode::LogLine;
use crate::decode::Span;

use super::identity::Identity;

pub struct Tailer {
    file: File,
    pub identity: Identity,
    /// Next byte to read.
    pub offset: u64,
    /// Just past the last `\n` read.
    pub committed: u64,
    assembler: LineAssembler,
}

/// What a [`Tailer::read`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub bytes: u64,
    /// The file's end was reached (nothing more to read now).
    pub at_end: bool,
}

impl Tailer {
    /// Tails `file` from `offset` (a line boundary: 0, or a committed offset).
    pub fn new(file: File, identity: Identity, offset: u64) -> Tailer {
        Tailer {
            file,
            identity,
            offset,
            committed: offset,
            assembler: LineAssembler::new(true, false),
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads from the offset until the end of the file or `budget` bytes, `chunk` bytes at a
    /// time, appending the complete lines to `out`.
    pub fn read(
        &mut self,
        chunk: usize,
        budget: u64,
        out: &mut Vec<LogLine>,
    ) -> std::io::Result<Read> {
        let mut done = Read::default();
        // What the file holds past the offset now: an idle file costs one fstat, and a short
        // append a buffer of its size, not a whole chunk to zero.
        let size = self.file.metadata()?.len();
        let budget = budget.min(size.saturating_sub(self.offset));
        if budget == 0 {
            done.at_end = true;
            return Ok(done);
        }
        while done.bytes < budget {
            let want = chunk.min((budget - done.bytes) as usize).max(1);
            let mut buf = vec![0u8; want];
            let n = loop {
                match self.file.read_at(&mut buf, self.offset) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            if n == 0 {
                done.at_end = true;
                break;
            }
            buf.truncate(n);
            if let Some(nl) = memchr::memrchr(b'\n', &buf) {
                self.committed = self.offset + nl as u64 + 1;
            }
            let span = Span::new(Bytes::from(buf), self.offset);
            // Raw mode without timestamps has no error path: only prefixes can be malformed.
            let _ = self.assembler.push_raw(span, out);
            self.offset += n as u64;
            done.bytes += n as u64;
            if n < want {
                done.at_end = true;
                break;
            }
        }
        // Everything present at the fstat was read: at the end for this pass.
        done.at_end |= done.bytes >= budget && self.offset >= size;
        Ok(done)
    }

    /// The file was truncated or rewritten in place: read it again from 0, dropping a
    /// pending unterminated line (its bytes are gone).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.identity = Identity::of(&self.file)?;
        self.offset = 0;
        self.committed = 0;
        self.assembler = LineAssembler::new(true, false);
        Ok(())
    }

    /// Hands out an unterminated last line: the file is done with (rotated away, deleted).
    pub fn finish(&mut self, out: &mut Vec<LogLine>) {
        let _ = self.assembler.finish(out);
        self.committed = self.offset;
    }

    /// Size and modification time (ns) of the open file.
    pub fn stat(&self) -> std::io::Result<(u64, i64)> {
        let m = self.file.metadata()?;
        Ok((m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
    }
}
