//! A fresh folder for one test and a capturer config without Docker in it, for the test files
//! that run the binary on its own (`startup.rs`, `faults.rs`; include it with
//! `#[path = "support/scratch.rs"] mod scratch;`).
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::thread;

/// A fresh folder for one test, removed when it ends (kept and named when it fails).
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `$TMPDIR/logcap-{kind}-{pid}-{n}-{test}`.
    pub fn new(kind: &str, test: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "logcap-{kind}-{}-{}-{test}",
            std::process::id(),
            N.fetch_add(1, SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn positions(&self) -> PathBuf {
        self.0.join("positions")
    }

    /// A config with no Docker, no ports, and a local_file sink in this folder: `app` lines go
    /// in the `app:` section (log_level info unless they set it), `extra` YAML is appended at
    /// the top level (sections given there must not repeat these).
    pub fn config(&self, app: &str, extra: &str) -> PathBuf {
        let dir = self.0.display();
        let level = if app.contains("log_level:") {
            ""
        } else {
            "  log_level: info\n"
        };
        let yaml = format!(
            "app:\n{level}{app}\
             server:\n  enabled: false\n\
             metrics:\n  enabled: false\n\
             container_monitor:\n  enabled: false\n\
             positions:\n  directory: {dir}/positions\n\
             {extra}"
        );
        let yaml = if extra.contains("sinks:") {
            yaml
        } else {
            format!(
                "{yaml}sinks:\n  loki:\n    enabled: false\n  local_file:\n    enabled: true\n    \
                 directory: {dir}/out\n"
            )
        };
        let path = self.0.join("config.yaml");
        fs::write(&path, yaml).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}
