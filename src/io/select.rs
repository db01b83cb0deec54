//! Choosing the engine at start: io_uring where it works, epoll where it does not or where
//! the operator asks for it, and a sentence saying which one runs and why.

use std::fmt;
use std::io;
use std::str::FromStr;

use super::epoll::EpollEngine;
use super::uring::{self, UringEngine};
use super::Engine;

/// What the operator asked for (`--io-engine`, `app.io_engine`, `SSW_IO_ENGINE`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum EngineChoice {
    /// io_uring when the probe passes, else epoll.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll, even where io_uring works.
    Epoll,
}

impl FromStr for EngineChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(EngineChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(EngineChoice::Uring),
            "epoll" => Ok(EngineChoice::Epoll),
            other => Err(format!(
                "unknown io engine {other:?}: expected auto, uring or epoll"
            )),
        }
    }
}

/// The engine that runs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Uring,
    Epoll,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Uring => "io_uring",
            EngineKind::Epoll => "epoll",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome of the selection, for the start-up log line.
#[derive(Clone, Debug)]
pub struct Selection {
    pub kind: EngineKind,
    pub reason: String,
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "io engine: {} ({})", self.kind, self.reason)
    }
}

/// Decides which engine runs; pure, so the rules are testable without a kernel that refuses.
pub fn decide(
    choice: EngineChoice,
    probe: &Result<uring::UringSupport, String>,
) -> Result<Selection, String> {
    match (choice, probe) {
        (EngineChoice::Epoll, _) => Ok(Selection {
            kind: EngineKind::Epoll,
            reason: "asked for by configuration".into(),
        }),
        (_, Ok(support)) => Ok(Selection {
            kind: EngineKind::Uring,
            reason: format!(
                "probe passed; cancel by {}, {}, {}",
                if support.cancel_by_fd {
                    "fd"
                } else {
                    "user_data"
                },
                if support.defer_taskrun {
                    "deferred task run"
                } else {
                    "plain ring"
                },
                if support.min_timeout {
                    "waits coalesce completions"
                } else {
                    "no min-wait: a wakeup per completion"
                },
            ),
        }),
        (EngineChoice::Uring, Err(why)) => {
            Err(format!("io_uring asked for but unavailable: {why}"))
        }
        (EngineChoice::Auto, Err(why)) => Ok(Selection {
            kind: EngineKind::Epoll,
            reason: format!("io_uring unavailable: {why}"),
        }),
    }
}

/// Probes, decides and builds the engine. Call on the thread that will poll it.
pub fn select_engine(choice: EngineChoice) -> io::Result<(Box<dyn Engine>, Selection)> {
    let probe = if choice == EngineChoice::Epoll {
        Err("not probed".to_string())
    } else {
        uring::probe()
    };
    let mut selection = decide(choice, &probe).map_err(io::Error::other)?;
    if let (EngineKind::Uring, Ok(support)) = (selection.kind, probe) {
        match UringEngine::new(support) {
            Ok(engine) => return Ok((Box::new(engine), selection)),
            Err(e) => selection = after_ring_failure(choice, e)?,
        }
    }
    Ok((Box::new(EpollEngine::new()?), selection))
}

/// The probe's small ring worked but the engine's larger one did not (RLIMIT_MEMLOCK on
/// kernels before 5.12 charges rings to it; a memory cgroup near its limit): `auto` still
/// has epoll, `uring` was a promise that cannot be kept.
fn after_ring_failure(choice: EngineChoice, error: io::Error) -> io::Result<Selection> {
    match choice {
        EngineChoice::Auto => Ok(Selection {
            kind: EngineKind::Epoll,
            reason: format!("io_uring probe passed, but its ring could not be set up: {error}"),
        }),
        _ => Err(io::Error::new(
            error.kind(),
            format!("io_uring asked for, but its ring could not be set up: {error}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_to_epoll_and_says_why() {
        let refused =
            Err("io_uring_setup failed: Operation not permitted (os error 1)".to_string());
        let sel = decide(EngineChoice::Auto, &refused).unwrap();
        assert_eq!(sel.kind, EngineKind::Epoll);
        assert!(sel.to_string().contains("Operation not permitted"), "{sel}");
        let err = decide(EngineChoice::Uring, &refused).unwrap_err();
        assert!(err.contains("unavailable"), "{err}");
    }

    #[test]
    fn a_ring_that_fails_after_the_probe_falls_back_under_auto_only() {
        let enomem = || io::Error::from_raw_os_error(libc::ENOMEM);
        let sel = after_ring_failure(EngineChoice::Auto, enomem()).unwrap();
        assert_eq!(sel.kind, EngineKind::Epoll);
        assert!(sel.to_string().contains("could not be set up"), "{sel}");
        let err = after_ring_failure(EngineChoice::Uring, enomem()).unwrap_err();
        assert_eq!(err.raw_os_error(), None);
        assert!(err.to_string().contains("Cannot allocate memory"), "{err}");
    }

    #[test]
    fn choice_parses_config_spellings() {
        assert_eq!("AUTO".parse::<EngineChoice>(), Ok(EngineChoice::Auto));
        assert_eq!("io_uring".parse::<EngineChoice>(), Ok(EngineChoice::Uring));
        assert_eq!("epoll".parse::<EngineChoice>(), Ok(EngineChoice::Epoll));
        assert!("kqueue"
            .parse::<EngineChoice>()
            .unwrap_err()
            .contains("kqueue"));
    }
}
