//! The process's failure state, and the deadlines that keep a failed or stopping process from
//! hanging.
//!
//! - A panic on any thread (the panic hook, [`install_panic_hook`]) or an io engine that fails
//!   ([`Failures::fail`]) marks the process failed: `/health` answers 503 at once, naming the
//!   component in `checks.components`. [`FAILURE_HEALTH_GRACE`] later the watchdog sets the
//!   daemon's stop flag, so the usual shutdown delivers and commits what it can, and `main`
//!   exits [`EXIT_SOFTWARE`] instead of 0: supervisors restart it. The grace is there so a
//!   health checker polling the API sees why before the process goes.
//! - Once stop is set (a signal, or a failure), the shutdown has [`Watchdog`]'s deadline; past
//!   it the watchdog logs the components still running ([`Failures::running`]) and exits
//!   [`EXIT_SOFTWARE`] without waiting for them.
//! - `LOGCAP_TEST_PANIC=COMPONENT` (read once, at the first [`test_panic_point`]) makes that
//!   component's thread panic `LOGCAP_TEST_PANIC_AFTER_MS` (default 1000) after the process
//!   started: the tests' way to panic a real thread (`capture`, `dispatcher`, `discovery`,
//!   `files`). `LOGCAP_TEST_HANG=capture` makes the
//!   capture thread hang once stop is set, to show the shutdown deadline;
//!   `LOGCAP_TEST_PANIC=engine` makes the capture thread's io engine poll fail instead (after
//!   the same delay), as a broken ring would. Unset (always, outside tests) they do nothing.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The exit code of a process that failed (a panic, an io engine failure, a shutdown past its
/// deadline): `EX_SOFTWARE` of sysexits.h.
pub const EXIT_SOFTWARE: u8 = 70;
/// How long `/health` answers 503 naming the failure before the shutdown starts.
pub const FAILURE_HEALTH_GRACE: Duration = Duration::from_secs(1);
/// How often the watchdog looks at the stop flag and the failures.
const WATCH_TICK: Duration = Duration::from_millis(50);

/// One component that failed, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub component: String,
    pub reason: String,
}

/// Failures so far and the components still running; one per process ([`global`]).
#[derive(Default)]
pub struct Failures {
    failed: Mutex<Vec<Failure>>,
    first_at: OnceLock<Instant>,
    running: Mutex<Vec<&'static str>>,
}

static GLOBAL: OnceLock<Failures> = OnceLock::new();

/// The process's failure state: what the panic hook, the threads and `/health` share.
pub fn global() -> &'static Failures {
    GLOBAL.get_or_init(Failures::default)
}

impl Failures {
    /// Marks the process failed because of `component`. Logged once per call.
    pub fn fail(&self, component: &str, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::error!(
            "{component} failed: {reason}; /health says so, then the process shuts down and \
             exits {EXIT_SOFTWARE}"
        );
        let _ = self.first_at.set(Instant::now());
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Failure {
                component: component.to_string(),
                reason,
            });
    }

    pub fn is_failed(&self) -> bool {
        self.first_at.get().is_some()
    }

    /// When the first failure came.
    pub fn failed_at(&self) -> Option<Instant> {
        self.first_at.get().copied()
    }

    pub fn failures(&self) -> Vec<Failure> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Registers `component` as running until the guard is dropped (however its thread ends).
    pub fn running(&'static self, component: &'static str) -> Running {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(component);
        Running {
            failures: self,
            component,
        }
    }

    /// The components registered and not finished, in start order.
    pub fn still_running(&self) -> Vec<&'static str> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// See [`Failures::running`].
pub struct Running {
    failures: &'static Failures,
    component: &'static str,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self
            .failures
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(i) = running.iter().position(|&c| c == self.component) {
            running.remove(i);
        }
    }
}

/// The component a thread belongs to, from its name: the dispatcher runs on `main`; the API
/// servers' connection threads count as their server.
pub fn component_of(thread: Option<&str>) -> String {
    match thread {
        Some("main") => "dispatcher".into(),
        Some(name) => name
            .strip_suffix("-conn")
            .or_else(|| name.strip_suffix("-http"))
            .unwrap_or(name)
            .to_string(),
        None => "unnamed thread".into(),
    }
}

/// Makes a panic on any thread a failure of the process (after the default hook has printed
/// it).
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let component = component_of(thread::current().name());
        global().fail(&component, format!("panicked{place}: {message}"));
    }));
}

/// Watches the stop flag and the failures on a thread of its own: sets `stop`
/// [`FAILURE_HEALTH_GRACE`] after a failure, and exits the process with [`EXIT_SOFTWARE`]
/// when the shutdown has not finished `deadline` after `stop` was set.
pub struct Watchdog;

impl Watchdog {
    pub fn spawn(stop: Arc<AtomicBool>, deadline: Duration) -> std::io::Result<()> {
        thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watch(global(), &stop, deadline))
            .map(|_| ())
    }
}

fn watch(failures: &Failures, stop: &AtomicBool, deadline: Duration) {
    let mut stopped_at: Option<Instant> = None;
    loop {
        thread::sleep(WATCH_TICK);
        if let Some(&at) = failures.first_at.get() {
            if at.elapsed() >= FAILURE_HEALTH_GRACE && !stop.load(Relaxed) {
                tracing::info!("failed: shutting down");
                stop.store(true, Relaxed);
            }
        }
        if stop.load(Relaxed) {
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if at.elapsed() >= deadline {
                let left = failures.still_running();
                tracing::error!(
                    "shutdown not finished {deadline:?} after the stop: still running: {}; \
                     exiting {EXIT_SOFTWARE} (the lines not committed are read again at the \
                     next start)",
                    if left.is_empty() {
                        "(none registered)".to_string()
                    } else {
                        left.join(", ")
                    }
                );
                std::process::exit(i32::from(EXIT_SOFTWARE));
            }
        }
    }
}

/// The test hook: panics when `LOGCAP_TEST_PANIC` names `component` and its delay has passed.
pub fn test_panic_point(component: &str) {
    if test_hook_due(component) {
        panic!("LOGCAP_TEST_PANIC={component}");
    }
}

/// The test hook of a failing io engine (`LOGCAP_TEST_PANIC=engine`): an error in place of
/// the poll's result once its delay has passed.
pub fn test_engine_error() -> std::io::Result<()> {
    if test_hook_due("engine") {
        return Err(std::io::Error::other("LOGCAP_TEST_PANIC=engine"));
    }
    Ok(())
}

fn test_hook_due(component: &str) -> bool {
    static HOOK: OnceLock<Option<(String, Instant)>> = OnceLock::new();
    let hook = HOOK.get_or_init(|| {
        let name = std::env::var("LOGCAP_TEST_PANIC").ok()?;
        let after = std::env::var("LOGCAP_TEST_PANIC_AFTER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        Some((name, process_start() + Duration::from_millis(after)))
    });
    hook.as_ref()
        .is_some_and(|(name, at)| name == component && Instant::now() >= *at)
}

/// As [`test_panic_point`], for a thread that would otherwise block: waits for the delay
/// (while `stop` is not set) when the hook names `component`.
pub fn test_panic_wait(component: &str, stop: &AtomicBool) {
    if std::env::var("LOGCAP_TEST_PANIC").ok().as_deref() != Some(component) {
        return;
    }
    while !stop.load(Relaxed) {
        test_panic_point(component);
        thread::sleep(WATCH_TICK);
    }
}

/// The test hook of a shutdown that never finishes: blocks for good when `LOGCAP_TEST_HANG`
/// names `component`.
pub fn test_hang_point(component: &str) {
    if std::env::var("LOGCAP_TEST_HANG").ok().as_deref() == Some(component) {
        tracing::warn!("LOGCAP_TEST_HANG={component}: hanging");
        loop {
            thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// When the process started, as near as can be told: the first call of this (from `main`).
pub fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_name_their_component() {
        assert_eq!(component_of(Some("main")), "dispatcher");
        assert_eq!(component_of(Some("api-conn")), "api");
        assert_eq!(component_of(Some("metrics-http")), "metrics");
        assert_eq!(component_of(Some("capture")), "capture");
        assert_eq!(component_of(None), "unnamed thread");
    }

    #[test]
    fn running_components_are_listed_until_their_guard_drops() {
        let failures: &'static Failures = Box::leak(Box::default());
        let a = failures.running("capture");
        let b = failures.running("discovery");
        assert_eq!(failures.still_running(), ["capture", "discovery"]);
        drop(a);
        assert_eq!(failures.still_running(), ["discovery"]);
        drop(b);
        assert!(failures.still_running().is_empty());
        assert!(!failures.is_failed());
        failures.fail("capture", "io engine failed: EBADF");
        assert!(failures.is_failed());
        assert_eq!(failures.failures()[0].component, "capture");
    }
}
