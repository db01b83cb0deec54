//! One open file read from an offset: positioned reads (`pread`), lines split by the
//! containers' splitter (`decode::lines`, in raw mode: `\n` ends a line, one `\r` before it is
//! dropped, a line over `MAX_LINE_LEN` comes out in `truncated` pieces).
//!
//! The fd is kept open while the file is tailed, so a file renamed or deleted under it is
//! still read to its end. [`Tailer::committed`] is the byte just past the last `\n` read:
//! the resume point of the lines handed out so far (a pending unterminated line is read
//! again from there).
//!
//! A caller that holds lines back (multiline groups) asks for a [`Mark`] per line: where it
//! starts and ends, and which tailer (`gen`, new again after a truncation) it came from, so
//! that it can resume before the first line it still holds.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;

use crate::decode::lines::LineAssembler;
use crate::decode::LogLine;
use crate::decode::Span;

use crate::state::file_identity::Identity;

/// Where one line handed out lies in its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// The [`Tailer::gen`] it was read by.
    pub gen: u64,
    /// Its first byte: a resume point that reads it again whole. For a piece of a line cut at
    /// `MAX_LINE_LEN`, the start of the whole line.
    pub start: u64,
    /// Just past its `\n`; for a cut piece, the same as `start` (not a line boundary).
    pub end: u64,
}

static GENERATIONS: AtomicU64 = AtomicU64::new(1);

pub struct Tailer {
    file: File,
    /// Tells this tailer's lines from another's (a rotated file, or this file before it was
    /// truncated): unique in the process.
    pub gen: u64,
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
            gen: GENERATIONS.fetch_add(1, Relaxed),
            identity,
            offset,
            committed: offset,
            assembler: LineAssembler::new(true, false),
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads from the offset until the end of the file (`size`, when the caller has just
    /// stat'ed it, else an `fstat`), `budget` bytes, or `out` holding `max_lines` lines
    /// (checked between reads), `chunk` bytes at a time, appending the complete lines to
    /// `out` (and, with `marks`, where each lies).
    pub fn read(
        &mut self,
        chunk: usize,
        budget: u64,
        max_lines: usize,
        size: Option<u64>,
        out: &mut Vec<LogLine>,
        mut marks: Option<&mut Vec<Mark>>,
    ) -> std::io::Result<Read> {
        let mut done = Read::default();
        // What the file holds past the offset now: an idle file costs one fstat, and a short
        // append a buffer of its size, not a whole chunk to zero.
        let size = match size {
            Some(s) => s,
            None => self.file.metadata()?.len(),
        };
        let budget = budget.min(size.saturating_sub(self.offset));
        if budget == 0 {
            done.at_end = true;
            return Ok(done);
        }
        while done.bytes < budget && out.len() < max_lines {
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
            let boundary = self.committed;
            if let Some(nl) = memchr::memrchr(b'\n', &buf) {
                self.committed = self.offset + nl as u64 + 1;
            }
            let bytes = Bytes::from(buf);
            let before = out.len();
            let kept = marks.is_some().then(|| bytes.clone());
            let span = Span::new(bytes, self.offset);
            // Raw mode without timestamps has no error path: only prefixes can be malformed.
            let _ = self.assembler.push_raw(span, out);
            if let (Some(marks), Some(kept)) = (marks.as_deref_mut(), kept) {
                self.mark(&kept, boundary, &out[before..], marks);
            }
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

    /// The marks of `lines`, handed out by the chunk `buf` (read at `self.offset`); the
    /// line open before it started at `boundary`. Each complete line ends at the chunk's
    /// next `\n` (the splitter hands out one per `\n`, in order); a cut piece ends nowhere.
    fn mark(&self, buf: &[u8], mut boundary: u64, lines: &[LogLine], marks: &mut Vec<Mark>) {
        let mut newlines = memchr::memchr_iter(b'\n', buf);
        for line in lines {
            let nl = if line.truncated {
                None
            } else {
                newlines.next()
            };
            let end = nl.map_or(boundary, |nl| self.offset + nl as u64 + 1);
            marks.push(Mark {
                gen: self.gen,
                start: boundary,
                end,
            });
            boundary = end;
        }
    }

    /// The file was truncated or rewritten in place: read it again from 0, dropping a
    /// pending unterminated line (its bytes are gone). Its lines from now on are another
    /// generation's.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.identity = Identity::of(&self.file)?;
        self.gen = GENERATIONS.fetch_add(1, Relaxed);
        self.offset = 0;
        self.committed = 0;
        self.assembler = LineAssembler::new(true, false);
        Ok(())
    }

    /// Hands out an unterminated last line: the file is done with (rotated away, deleted).
    pub fn finish(&mut self, out: &mut Vec<LogLine>, marks: Option<&mut Vec<Mark>>) {
        let before = out.len();
        let _ = self.assembler.finish(out);
        if let Some(marks) = marks {
            for _ in before..out.len() {
                marks.push(Mark {
                    gen: self.gen,
                    start: self.committed,
                    end: self.offset,
                });
            }
        }
        self.committed = self.offset;
    }

    /// Size and modification time (ns) of the open file.
    pub fn stat(&self) -> std::io::Result<(u64, i64)> {
        let m = self.file.metadata()?;
        Ok((m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::lines::MAX_LINE_LEN;
    use std::io::Write;

    fn tailer(dir: &std::path::Path, content: &[u8]) -> (Tailer, std::path::PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("t.log");
        std::fs::write(&path, content).unwrap();
        let f = File::open(&path).unwrap();
        let id = Identity::of(&f).unwrap();
        (Tailer::new(f, id, 0), path)
    }

    /// A line over the bound comes out in `truncated` pieces, as for containers; `\r\n`
    /// loses its `\r`; an unterminated last line waits, and the committed offset stays at
    /// the last `\n`.
    #[test]
    fn long_lines_are_cut_crlf_stripped_partial_line_held() {
        let dir = std::env::temp_dir().join(format!("logcap-tail-{}", std::process::id()));
        let mut content = vec![b'x'; 2 * MAX_LINE_LEN + 10];
        content.extend_from_slice(b"\nwin\r\npart");
        let (mut t, path) = tailer(&dir, &content);
        let mut out = Vec::new();
        // Small chunks: lines span reads.
        let r = t
            .read(4096, u64::MAX, usize::MAX, None, &mut out, None)
            .unwrap();
        assert!(r.at_end);
        let lens: Vec<(usize, bool)> = out.iter().map(|l| (l.message.len(), l.truncated)).collect();
        assert_eq!(
            lens,
            [
                (MAX_LINE_LEN, true),
                (MAX_LINE_LEN, true),
                (10, false),
                (3, false)
            ]
        );
        assert_eq!(&out[3].message[..], b"win");
        assert_eq!(t.committed, content.len() as u64 - 4);
        assert_eq!(t.offset, content.len() as u64);
        // The rest of the line arrives.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"ial\n")
            .unwrap();
        out.clear();
        t.read(4096, u64::MAX, usize::MAX, None, &mut out, None)
            .unwrap();
        assert_eq!(&out[0].message[..], b"partial");
        assert_eq!(t.committed, content.len() as u64 + 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The budget bounds one call; the next goes on where it stopped.
    #[test]
    fn a_budget_bounds_a_read() {
        let dir = std::env::temp_dir().join(format!("logcap-tail-b-{}", std::process::id()));
        let content: Vec<u8> = (0..1000)
            .flat_map(|i| format!("{i:09}\n").into_bytes())
            .collect();
        let (mut t, _) = tailer(&dir, &content);
        let mut out = Vec::new();
        let r = t
            .read(1000, 3000, usize::MAX, None, &mut out, None)
            .unwrap();
        assert_eq!((r.bytes, r.at_end), (3000, false));
        assert_eq!(out.len(), 300);
        // 100 lines a read: stops after the read that reached 250.
        let r = t.read(1000, u64::MAX, 250, None, &mut out, None).unwrap();
        assert_eq!((r.bytes, r.at_end), (0, false));
        let r = t.read(1000, u64::MAX, 500, None, &mut out, None).unwrap();
        assert_eq!((r.bytes, r.at_end), (2000, false));
        assert_eq!(out.len(), 500);
        let r = t
            .read(1000, u64::MAX, usize::MAX, None, &mut out, None)
            .unwrap();
        assert!(r.at_end);
        assert_eq!(out.len(), 1000);
        assert_eq!(&out[999].message[..], b"000000999");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Marks name each line's bytes, across chunk boundaries, `\r\n`, empty lines, a line
    /// cut in pieces and the unterminated last line handed out at the end.
    #[test]
    fn marks_name_each_lines_bytes() {
        let dir = std::env::temp_dir().join(format!("logcap-tail-m-{}", std::process::id()));
        let content = b"one\r\n\nthree three\nfour".to_vec();
        let (mut t, _) = tailer(&dir, &content);
        let (mut out, mut marks) = (Vec::new(), Vec::new());
        t.read(3, u64::MAX, usize::MAX, None, &mut out, Some(&mut marks))
            .unwrap();
        let gen = t.gen;
        let m = |start, end| Mark { gen, start, end };
        assert_eq!(marks, [m(0, 5), m(5, 6), m(6, 18)]);
        t.finish(&mut out, Some(&mut marks));
        assert_eq!(marks[3], m(18, 22));
        let texts: Vec<&[u8]> = out.iter().map(|l| &l.message[..]).collect();
        assert_eq!(texts, [&b"one"[..], b"", b"three three", b"four"]);
        t.restart().unwrap();
        assert_ne!(
            t.gen, gen,
            "a truncated file's lines are another generation's"
        );
        std::fs::remove_dir_all(&dir).unwrap();

        // A cut line: its pieces end nowhere, the last one at its `\n`.
        let a = LineAssembler::new(true, false).with_max_line_len(4);
        let dir = std::env::temp_dir().join(format!("logcap-tail-m2-{}", std::process::id()));
        let (mut t, _) = tailer(&dir, b"ab\nlong line\nz\n");
        t.assembler = a;
        let (mut out, mut marks) = (Vec::new(), Vec::new());
        t.read(5, u64::MAX, usize::MAX, None, &mut out, Some(&mut marks))
            .unwrap();
        let gen = t.gen;
        let m = |start, end| Mark { gen, start, end };
        assert_eq!(out.len(), 5, "ab, long, lin, e, z");
        assert_eq!(marks, [m(0, 3), m(3, 3), m(3, 3), m(3, 13), m(13, 15)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
