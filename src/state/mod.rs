//! The capturer's state on disk, under `positions.directory`: the resume points
//! ([`positions`]: Go's `container_positions.json`, and `file_positions.json` whose records
//! are [`file_positions`]), what identifies a monitored file across restarts and rotations
//! ([`file_identity`]: device, inode and a fingerprint of its first bytes), and the lock that
//! keeps a second instance off the same directory ([`lock`]).

pub mod file_identity;
pub mod file_positions;
pub mod lock;
pub mod positions;
