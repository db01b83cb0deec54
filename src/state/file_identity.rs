//! Which file a path points at: (device, inode) plus a fingerprint of its first bytes.
//!
//! The inode alone is not enough: a file deleted by rotation frees its inode, and the next
//! file created (often the new log under the same name) can get it back. Reading that file
//! from the old offset would skip its first lines. As Vector does, the first bytes are
//! hashed too: the same (device, inode) with other first bytes is another file.
//!
//! The fingerprint covers the first [`FINGERPRINT_LEN`] bytes, or fewer while the file is
//! shorter; its length is kept with it, so a file that grew still matches the prefix it had
//! (the bytes it was taken from), and a file now shorter than that prefix was truncated.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use serde::{Deserialize, Serialize};

/// Bytes hashed at most (Vector's default checksum length).
pub const FINGERPRINT_LEN: usize = 256;

/// A file's identity, as recorded in `file_positions.json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub device: u64,
    pub inode: u64,
    /// FNV-1a 64 of the first `fingerprint_len` bytes.
    pub fingerprint: u64,
    pub fingerprint_len: u32,
}

/// What the path's file is, compared with what was read before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Same {
    /// Same inode, same first bytes: go on from the offset.
    Yes,
    /// Same inode, but the first bytes changed or the file is shorter than the fingerprint:
    /// rewritten in place (copytruncate, or an inode reused): read it from 0.
    Rewritten,
    /// Another inode: another file.
    No,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Hash of the first `len` bytes of `file`; `None` when it has fewer.
fn prefix_hash(file: &File, len: usize) -> std::io::Result<Option<u64>> {
    let mut buf = [0u8; FINGERPRINT_LEN];
    let buf = &mut buf[..len.min(FINGERPRINT_LEN)];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64)? {
            0 => return Ok(None),
            n => got += n,
        }
    }
    Ok(Some(fnv1a(buf)))
}

impl Identity {
    /// The identity of an open file, fingerprinting up to [`FINGERPRINT_LEN`] bytes of it.
    pub fn of(file: &File) -> std::io::Result<Identity> {
        let meta = file.metadata()?;
        let len = (meta.len() as usize).min(FINGERPRINT_LEN);
        let fingerprint = prefix_hash(file, len)?.unwrap_or_else(|| fnv1a(&[]));
        Ok(Identity {
            device: meta.dev(),
            inode: meta.ino(),
            fingerprint,
            fingerprint_len: len as u32,
        })
    }

    /// A longer fingerprint of the same file, once it has grown (so that two files starting
    /// with the same short header are told apart as soon as they differ).
    pub fn refresh(&mut self, file: &File, size: u64) -> std::io::Result<()> {
        if (self.fingerprint_len as usize) < FINGERPRINT_LEN && size > self.fingerprint_len as u64 {
            let len = (size as usize).min(FINGERPRINT_LEN);
            if let Some(h) = prefix_hash(file, len)? {
                self.fingerprint = h;
                self.fingerprint_len = len as u32;
            }
        }
        Ok(())
    }

    /// Whether `file` (with this device and inode as `meta`) is the file this identity was
    /// taken from.
    pub fn compare(&self, file: &File, device: u64, inode: u64) -> std::io::Result<Same> {
        if device != self.device || inode != self.inode {
            return Ok(Same::No);
        }
        Ok(match prefix_hash(file, self.fingerprint_len as usize)? {
            Some(h) if h == self.fingerprint => Same::Yes,
            _ => Same::Rewritten,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_rewritten_file_on_the_same_inode_is_not_the_same() {
        let dir = std::env::temp_dir().join(format!("logcap-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.log");
        std::fs::write(&path, b"line 1\n").unwrap();
        let f = File::open(&path).unwrap();
        let mut id = Identity::of(&f).unwrap();
        assert_eq!(id.fingerprint_len, 7);
        let (dev, ino) = (id.device, id.inode);
        // Grown: same file, and a longer fingerprint once refreshed.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"line 2\n")
            .unwrap();
        assert_eq!(id.compare(&f, dev, ino).unwrap(), Same::Yes);
        id.refresh(&f, 14).unwrap();
        assert_eq!(id.fingerprint_len, 14);
        // Truncated and rewritten in place (copytruncate, then new lines): same inode, not
        // the same file.
        std::fs::write(&path, b"other 1\nother 2\n").unwrap();
        assert_eq!(id.compare(&f, dev, ino).unwrap(), Same::Rewritten);
        // Shorter than the fingerprint: truncated.
        std::fs::write(&path, b"li").unwrap();
        assert_eq!(id.compare(&f, dev, ino).unwrap(), Same::Rewritten);
        assert_eq!(id.compare(&f, dev, ino + 1).unwrap(), Same::No);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
