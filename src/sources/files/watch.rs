//! Finding files and waking up when they change.
//!
//! [`scan`] walks a watched directory and returns the files its patterns select. It decides
//! from directory entries alone (name, and the entry's type as `readdir` reports it): an
//! excluded file is never opened, not even to be looked at. Symlinks are skipped unless
//! `follow_symlinks` is set, so nothing outside a watched directory is reached through one.
//!
//! [`Waker`] is an inotify instance watching the directories (a directory watch reports
//! the changes of the files in it: writes, creations, renames, deletions). Where inotify is
//! unavailable (or a watch cannot be added), the files thread polls every `read_interval`.

use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

use super::config::WatchedDir;
use super::glob;

/// Whether `name` (base name) or `rel` (path relative to the watched directory) matches one
/// of `patterns`.
fn any_match(patterns: &[String], name: &str, rel: &str) -> bool {
    patterns
        .iter()
        .any(|p| glob::matches(p, name) || (p.contains('/') && glob::matches(p, rel)))
}

fn excluded_dir(dir: &WatchedDir, path: &Path, rel: &str, name: &str) -> bool {
    dir.exclude_directories.iter().any(|x| {
        let x = x.trim_end_matches('/');
        Path::new(x) == path || x == rel || x == name || glob::matches(x, name)
    })
}

/// The files of `dir` its patterns select (and, when recursive, of its subdirectories), at
/// most `limit` of them; the directories visited are pushed to `dirs` (for inotify).
pub fn scan(
    dir: &WatchedDir,
    follow_symlinks: bool,
    include_hidden: bool,
    limit: usize,
    files: &mut Vec<PathBuf>,
    dirs: &mut Vec<PathBuf>,
) {
    let mut stack = vec![dir.path.clone()];
    while let Some(at) = stack.pop() {
        let entries = match std::fs::read_dir(&at) {
            Ok(e) => e,
            Err(e) => {
                if at == dir.path {
                    tracing::debug!("watched directory {}: {e}", at.display());
                }
                continue;
            }
        };
        dirs.push(at.clone());
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') && !include_hidden {
                continue;
            }
            let path = entry.path();
            let rel = path
                .strip_prefix(&dir.path)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_else(|_| name.to_string());
            let Ok(mut kind) = entry.file_type() else {
                continue;
            };
            if kind.is_symlink() {
                if !follow_symlinks {
                    continue;
                }
                match std::fs::metadata(&path) {
                    Ok(m) => kind = m.file_type(),
                    Err(_) => continue,
                }
            }
            if kind.is_dir() {
                if dir.recursive && !excluded_dir(dir, &path, &rel, name) {
                    stack.push(path);
                }
                continue;
            }
            if !kind.is_file() || any_match(&dir.exclude_patterns, name, &rel) {
                continue;
            }
            let included = match &dir.patterns {
                None => true,
                Some(p) => any_match(p, name, &rel),
            };
            if included {
                if files.len() >= limit {
                    return;
                }
                files.push(path);
            }
        }
    }
}

/// An inotify instance over the watched directories.
pub struct Waker {
    fd: OwnedFd,
    watched: std::collections::HashSet<PathBuf>,
    buf: Vec<MaybeUninit<u8>>,
}

/// What woke the files thread.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Woken {
    /// Something was written, created, renamed or deleted.
    pub changed: bool,
    /// A file or directory appeared: scan the directories again.
    pub created: bool,
}

impl Waker {
    /// `None` where inotify is unavailable (the caller polls).
    pub fn new() -> Option<Waker> {
        match inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK) {
            Ok(fd) => Some(Waker {
                fd,
                watched: Default::default(),
                buf: vec![MaybeUninit::uninit(); 64 * 1024],
            }),
            Err(e) => {
                tracing::warn!("inotify unavailable ({e}): files are polled");
                None
            }
        }
    }

    /// Watches `dir` (once); false when the watch could not be added (the caller polls).
    pub fn watch(&mut self, dir: &Path) -> bool {
        if self.watched.contains(dir) {
            return true;
        }
        let flags = WatchFlags::MODIFY
            | WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::ATTRIB
            | WatchFlags::ONLYDIR;
        match inotify::add_watch(&self.fd, dir, flags) {
            Ok(_) => {
                self.watched.insert(dir.to_path_buf());
                true
            }
            Err(e) => {
                tracing::debug!("no inotify watch on {}: {e}", dir.display());
                false
            }
        }
    }

    /// Waits up to `timeout` for an event; drains every event queued.
    pub fn wait(&mut self, timeout: Duration) -> Woken {
        let mut woken = Woken::default();
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let mut fds = [rustix::event::PollFd::new(
            &self.fd,
            rustix::event::PollFlags::IN,
        )];
        if !matches!(rustix::event::poll(&mut fds, Some(&ts)), Ok(n) if n > 0) {
            return woken;
        }
        let mut reader = inotify::Reader::new(&self.fd, &mut self.buf);
        // Until EAGAIN: drained (the fd is non-blocking).
        while let Ok(ev) = reader.next() {
            let f = ev.events();
            woken.changed = true;
            // A new file or directory (or the directory itself gone: a new one of that name
            // needs a new watch), or events lost: scan again.
            if f.intersects(
                ReadFlags::CREATE
                    | ReadFlags::MOVED_TO
                    | ReadFlags::QUEUE_OVERFLOW
                    | ReadFlags::IGNORED,
            ) {
                woken.created = true;
            }
        }
        woken
    }

    /// Forgets the directories watched, so that the next scan adds them again (a watched
    /// directory removed and created again).
    pub fn reset_if_ignored(&mut self, woken: Woken) {
        if woken.created {
            self.watched.retain(|d| d.is_dir());
        }
    }
}
