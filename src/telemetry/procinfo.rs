//! What the process uses, read from `/proc/self` (Linux only) and `getrlimit`.
//!
//! The Go version reported goroutines and Go heap figures; this program has no tasks other
//! than OS threads and no garbage collector, so "goroutines" are the live threads
//! (`/proc/self/task`) and memory is what the kernel accounts (`/proc/self/status`).

use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

/// Live threads of this process.
pub fn threads() -> usize {
    fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Open file descriptors of this process (the one `read_dir` itself holds is not counted).
pub fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0)
}

/// The soft `RLIMIT_NOFILE` limit; `None` when unlimited.
pub fn max_fds() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Memory figures from `/proc/self/status`, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: resident at its peak.
    pub rss_peak: u64,
    /// `VmSize`: virtual size.
    pub virtual_size: u64,
    /// `VmData`: data + heap + anonymous mappings.
    pub data: u64,
}

pub fn memory() -> Memory {
    let text = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|k| k * 1024)
            .unwrap_or(0)
    };
    Memory {
        rss: kb("VmRSS:"),
        rss_peak: kb("VmHWM:"),
        virtual_size: kb("VmSize:"),
        data: kb("VmData:"),
    }
}

/// CPU time and start time from `/proc/self/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Times {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Process start, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

pub fn times() -> Times {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may contain spaces and parentheses: fields are counted from
    // the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime 15, starttime 22.
    let field = |n: usize| -> f64 {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let ticks = if ticks > 0.0 { ticks } else { 100.0 };
    Times {
        cpu_seconds: (field(14) + field(15)) / ticks,
        start_time_seconds: boot_time() + field(22) / ticks,
    }
}

/// `btime` of `/proc/stat`: when the machine booted, seconds since the Unix epoch.
fn boot_time() -> f64 {
    fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(threads() >= 1);
        assert!(open_fds() >= 3);
        let m = memory();
        assert!(m.rss > 0 && m.virtual_size >= m.rss, "{m:?}");
        let t = times();
        let now = unix_now();
        assert!(
            t.start_time_seconds > 1.0e9 && t.start_time_seconds <= now + 1.0,
            "{t:?}"
        );
    }
}
