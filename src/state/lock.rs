//! One capturer per positions directory: an exclusive `flock` on
//! `positions.directory/log_capturer.lock`, held for the life of the process.
//!
//! Two instances on the same directory would each ship every line (twice in all) and race on
//! the same `container_positions.json.tmp`. The lock is taken before anything is read or
//! started; a second instance finds it held and stops (exit 2), naming the holder's pid, which
//! the holder writes into the lock file once it has the lock.
//!
//! `flock` locks belong to the open file, so the kernel releases the lock when the holder exits
//! however it exits (SIGKILL included): a stale lock file left behind locks nothing, and the
//! next start takes it over. The lock file is never removed: removing it while another process
//! waits to open it would let two processes lock two different files of the same name.
//! `flock` is local to one host: a positions directory on NFS shared by two hosts is not
//! guarded (Linux maps it to a POSIX lock there, which NFS servers may or may not honour).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Name of the lock file inside `positions.directory`.
pub const LOCK_FILE: &str = "log_capturer.lock";

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    /// Another process holds the lock.
    #[error(
        "positions directory {} is in use by another log_capturer ({holder}; lock file {}): \
         two capturers on one directory would ship every line twice. Stop that one, or give \
         this one its own positions.directory",
        dir.display(),
        path.display()
    )]
    Held {
        /// The positions directory.
        dir: PathBuf,
        /// The lock file.
        path: PathBuf,
        /// `pid N`, or what is known when the holder has not written its pid (yet).
        holder: String,
    },
    /// The directory or the lock file could not be created or locked.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock on `dir` (created if missing) without waiting, and writes our pid into
    /// the lock file.
    pub fn acquire(dir: &Path) -> Result<StateLock, StateLockError> {
        let io_err = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| StateLockError::Io { op, path, source }
        };
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let path = dir.join(LOCK_FILE);
        // Not truncated on open: the holder's pid must stay readable to the one refused.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open lock file", &path))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "pid not written yet".to_string(),
                };
                return Err(StateLockError::Held {
                    dir: dir.to_path_buf(),
                    path,
                    holder,
                });
            }
            Err(e) => return Err(io_err("lock", &path)(e.into())),
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(format!("{pid}\n").as_bytes()))
            .map_err(io_err("write pid into", &path))?;
        Ok(StateLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("logcap-lock-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn second_lock_is_refused_naming_the_holder_then_taken_after_release() {
        let dir = temp_dir("second");
        let first = StateLock::acquire(&dir).expect("first lock");
        let pid = std::process::id();
        assert_eq!(
            fs::read_to_string(first.path()).unwrap(),
            format!("{pid}\n")
        );
        let err = StateLock::acquire(&dir).expect_err("second lock must be refused");
        let msg = err.to_string();
        assert!(matches!(err, StateLockError::Held { .. }), "{msg}");
        assert!(msg.contains(&format!("pid {pid}")), "{msg}");
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        drop(first);
        let again = StateLock::acquire(&dir).expect("lock after release");
        drop(again);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stale_lock_file_is_taken_over() {
        let dir = temp_dir("stale");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(LOCK_FILE), "999999999\n").unwrap();
        let lock = StateLock::acquire(&dir).expect("a lock file nobody holds locks nothing");
        assert_eq!(
            fs::read_to_string(lock.path()).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }
}
