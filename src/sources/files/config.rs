//! What to watch: the pipeline file (`file_pipeline.yml`), or `files_config` when there is
//! none, resolved into a [`Plan`].
//!
//! The pipeline file is Go's: `files:` (path, labels, enabled), `directories:` (path,
//! patterns, exclude_patterns, exclude_directories, recursive, default_labels, enabled) and
//! `monitoring:` (directory_scan_interval in seconds, max_files, read_buffer_size,
//! poll_interval in milliseconds, follow_symlinks, include_hidden, max_file_size,
//! rotation_action). Unknown keys are ignored, as Go's YAML reader does. An empty
//! `patterns:` list in a directory finds nothing (Go's rule); an empty
//! `files_config.include_patterns` takes every file not excluded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::FileMonitorConfig;
use crate::pipeline::entry::Labels;

/// A file named in `files:`.
#[derive(Clone, Debug, PartialEq)]
pub struct ListedFile {
    pub path: PathBuf,
    pub labels: Labels,
}

/// A directory whose files matching `patterns` are tailed.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchedDir {
    pub path: PathBuf,
    /// Include patterns; `None`: every file (files_config without include_patterns).
    pub patterns: Option<Vec<String>>,
    pub exclude_patterns: Vec<String>,
    /// Subdirectories to skip: an absolute path, a path relative to `path`, or a name.
    pub exclude_directories: Vec<String>,
    pub recursive: bool,
    pub labels: Labels,
}

/// Everything the files thread needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub files: Vec<ListedFile>,
    pub directories: Vec<WatchedDir>,
    /// How often directories are scanned again (inotify also triggers a scan).
    pub scan_interval: Duration,
    /// How often files are looked at without inotify (and at most this long after an
    /// inotify wake-up that found nothing).
    pub read_interval: Duration,
    pub read_buffer_size: usize,
    pub follow_symlinks: bool,
    /// False: poll every `read_interval` instead of waking on inotify events.
    pub inotify: bool,
    pub include_hidden: bool,
    /// Files found in directories beyond this many are not tailed (a warning says so).
    pub max_files: usize,
    /// Where the plan came from, for the log.
    pub origin: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PipelineFile {
    files: Option<Vec<FileEntry>>,
    directories: Option<Vec<DirEntry>>,
    monitoring: Monitoring,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct FileEntry {
    path: String,
    labels: BTreeMap<String, String>,
    enabled: bool,
}

impl Default for FileEntry {
    fn default() -> Self {
        FileEntry {
            path: String::new(),
            labels: BTreeMap::new(),
            enabled: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct DirEntry {
    path: String,
    patterns: Vec<String>,
    exclude_patterns: Vec<String>,
    exclude_directories: Vec<String>,
    recursive: bool,
    default_labels: BTreeMap<String, String>,
    enabled: bool,
}

impl Default for DirEntry {
    fn default() -> Self {
        DirEntry {
            path: String::new(),
            patterns: Vec::new(),
            exclude_patterns: Vec::new(),
            exclude_directories: Vec::new(),
            recursive: false,
            default_labels: BTreeMap::new(),
            enabled: true,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Monitoring {
    directory_scan_interval: Option<u64>,
    max_files: Option<usize>,
    read_buffer_size: Option<usize>,
    poll_interval: Option<u64>,
    follow_symlinks: Option<bool>,
    include_hidden: Option<bool>,
    /// Read and reported; not applied (see COMPATIBILITY.md).
    #[allow(dead_code)]
    max_file_size: Option<u64>,
    #[allow(dead_code)]
    rotation_action: Option<String>,
}

/// Default `monitoring.max_files`.
pub const DEFAULT_MAX_FILES: usize = 1000;

/// The plan for `config`: from its pipeline file when that exists, else from `files_config`.
/// A pipeline file that exists but cannot be read or parsed is an error naming it.
pub fn plan(config: &FileMonitorConfig) -> Result<Plan, String> {
    let mut plan = Plan {
        files: Vec::new(),
        directories: Vec::new(),
        scan_interval: config.poll_interval,
        read_interval: config.read_interval,
        read_buffer_size: config.read_buffer_size,
        follow_symlinks: config.follow_symlinks,
        inotify: config.inotify,
        include_hidden: false,
        max_files: DEFAULT_MAX_FILES,
        origin: "files_config".into(),
    };
    if let Some(path) = &config.pipeline_file {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                apply_pipeline(&mut plan, path, &text)?;
                return Ok(plan);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(
                    "file_monitor_service.pipeline_file {} does not exist: watching what \
                     files_config says",
                    path.display()
                );
            }
            Err(e) => return Err(format!("file pipeline {}: {e}", path.display())),
        }
    }
    for dir in &config.watch_directories {
        plan.directories.push(WatchedDir {
            path: dir.clone(),
            patterns: (!config.include_patterns.is_empty())
                .then(|| config.include_patterns.clone()),
            exclude_patterns: config.exclude_patterns.clone(),
            exclude_directories: config
                .exclude_directories
                .iter()
                .map(|d| d.display().to_string())
                .collect(),
            recursive: config.recursive,
            labels: Labels::new(),
        });
    }
    Ok(plan)
}

fn apply_pipeline(plan: &mut Plan, path: &Path, text: &str) -> Result<(), String> {
    let file: PipelineFile = match serde_yaml::from_str::<Option<PipelineFile>>(text) {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => return Err(format!("file pipeline {}: {e}", path.display())),
    };
    plan.origin = path.display().to_string();
    for (i, f) in file.files.unwrap_or_default().into_iter().enumerate() {
        if !f.enabled {
            continue;
        }
        if f.path.trim().is_empty() {
            return Err(format!(
                "file pipeline {}: files[{i}].path is empty",
                path.display()
            ));
        }
        plan.files.push(ListedFile {
            path: PathBuf::from(f.path),
            labels: f.labels,
        });
    }
    for (i, d) in file.directories.unwrap_or_default().into_iter().enumerate() {
        if !d.enabled {
            continue;
        }
        if d.path.trim().is_empty() {
            return Err(format!(
                "file pipeline {}: directories[{i}].path is empty",
                path.display()
            ));
        }
        plan.directories.push(WatchedDir {
            path: PathBuf::from(d.path),
            patterns: Some(d.patterns),
            exclude_patterns: d.exclude_patterns,
            exclude_directories: d.exclude_directories,
            recursive: d.recursive,
            labels: d.default_labels,
        });
    }
    let m = file.monitoring;
    if let Some(s) = m.directory_scan_interval.filter(|&s| s > 0) {
        plan.scan_interval = Duration::from_secs(s);
    }
    if let Some(ms) = m.poll_interval.filter(|&ms| ms > 0) {
        plan.read_interval = Duration::from_millis(ms);
    }
    if let Some(n) = m.read_buffer_size.filter(|&n| n > 0) {
        plan.read_buffer_size = n.clamp(4096, 16 << 20);
    }
    if let Some(n) = m.max_files.filter(|&n| n > 0) {
        plan.max_files = n;
    }
    if let Some(b) = m.follow_symlinks {
        plan.follow_symlinks = b;
    }
    if let Some(b) = m.include_hidden {
        plan.include_hidden = b;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_go_fixture_pipeline_file() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/go_file_pipeline.yml");
        let config = FileMonitorConfig {
            pipeline_file: Some(path),
            ..FileMonitorConfig::default()
        };
        let plan = plan(&config).unwrap();
        // 8 files, 2 disabled.
        assert_eq!(plan.files.len(), 6);
        assert_eq!(plan.files[0].path, Path::new("/fixture/path-2"));
        assert_eq!(plan.files[0].labels["file_name"], "fixture-5");
        assert!(plan.directories.is_empty());
        assert_eq!(plan.scan_interval, Duration::from_secs(30));
        assert_eq!(plan.read_interval, Duration::from_millis(1000));
        assert_eq!(plan.max_files, 1000);
        assert_eq!(plan.read_buffer_size, 65536);
    }

    #[test]
    fn files_config_when_the_pipeline_file_is_missing() {
        let config = FileMonitorConfig {
            pipeline_file: Some("/nonexistent/file_pipeline.yml".into()),
            watch_directories: vec!["/var/log".into()],
            exclude_patterns: vec!["*.gz".into()],
            ..FileMonitorConfig::default()
        };
        let plan = plan(&config).unwrap();
        assert_eq!(plan.directories.len(), 1);
        assert_eq!(plan.directories[0].patterns, None);
        assert!(plan.directories[0].recursive);
    }
}
