//! Typed configuration, compatible with the `config.yaml` files of `log_capturer_go`.
//!
//! # Where the file comes from
//! `--config PATH`, else the environment variable `SSW_CONFIG_FILE`, else
//! `/app/configs/config.yaml` ([`resolve_config_path`]). A file that cannot be read or is not
//! valid YAML is an error (the Go version printed a warning and ran on defaults).
//!
//! # How it is read
//! The YAML is parsed into a tree and walked key by key, so every error names the file, the key
//! path (`sinks.loki.batch_timeout`) and what was expected. Keys this program does not read are
//! collected in [`LoadReport::unknown_keys`] (log them once at debug level); those within a typo
//! or two of a key read at the same level, and absent from the file, are also in
//! [`LoadReport::misspellings`] with that key (a warning each). Go keys that are read but behave
//! differently here are in [`LoadReport::differences`] (info level). [`LoadReport::log`] does
//! all three. A Kafka, Elasticsearch or Splunk sink with `enabled: true` is an error: those
//! sinks are not implemented, and its lines would silently go nowhere.
//!
//! # `app.default_configs` (env `SSW_DEFAULT_CONFIGS`, which wins over the file)
//! * `true` or absent: every key the Go version gives a default gets it when the file leaves it
//!   absent, `null`, `""` or `0` (Go cannot tell these apart, so neither do we for Go keys).
//!   The `enabled` flags of `metrics`, `container_monitor`, `sinks.loki`, `sinks.local_file` and
//!   `positions` default to true (Go forced them to true even when the file said false; here an
//!   explicit `false` is respected and reported as a difference).
//! * `false`: Go keys take only what the file says; a missing key is zero, empty or disabled, as
//!   Go's zero values. A missing section is therefore a disabled component.
//! * Regardless of the flag: (a) the fallbacks the Go *runtime* applied inside its sinks
//!   (`push_endpoint` `/loki/api/v1/push`, loki `timeout` 30s and `batch_timeout` 10s,
//!   `output_format` json, text `timestamp_format`, default `filename_pattern`, queue sizes),
//!   (b) keys that only this program has (`app.io_engine`,
//!   `container_monitor.stream_rotation_interval`, `stream_idle_timeout`, `since_overlap`,
//!   `new_containers_from`, `dispatcher.max_queue_bytes`, `sinks.stdout`, `sinks.blackhole`),
//!   which a Go file cannot mention,
//!   and (c) values for which zero is unusable (`app.log_level` info, `app.log_format` json,
//!   `dispatcher.batch_timeout` 5s, `positions.flush_interval` 30s).
//!
//! Then the `SSW_*` environment overrides are applied ([`ENV_OVERRIDES`]), then `DOCKER_HOST`
//! replaces `container_monitor.socket_path` when that is left at its default, then the result is
//! validated (the checks Go's validator made, so a config Go refused is refused here too), and
//! a Docker endpoint that is not a unix socket is refused naming where it came from
//! (`DOCKER_HOST`, `SSW_DOCKER_SOCKET` or the key) when the container monitor is enabled.

mod duration;
mod env;
mod parse;
mod redact;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use duration::{format_duration, parse_duration};
pub use env::ENV_OVERRIDES;

/// The config file used when neither `--config` nor `SSW_CONFIG_FILE` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/app/configs/config.yaml";
/// Default Docker endpoint; when `socket_path` is left at this value, `DOCKER_HOST` wins.
pub const DEFAULT_DOCKER_SOCKET: &str = "unix:///var/run/docker.sock";
/// Default local file name pattern (the Go sink's built-in name).
pub const DEFAULT_FILENAME_PATTERN: &str = "{date}_{source_type}_{name}.log";
/// Default Loki push path appended to `sinks.loki.url`.
pub const DEFAULT_LOKI_PUSH_ENDPOINT: &str = "/loki/api/v1/push";

/// The whole configuration, with every default already applied. Durations are
/// [`Duration`]s; `Duration::ZERO` means "off" where a key documents that.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub app: AppConfig,
    pub server: ServerConfig,
    pub metrics: MetricsConfig,
    pub container_monitor: ContainerMonitorConfig,
    pub file_monitor: FileMonitorConfig,
    pub dispatcher: DispatcherConfig,
    pub sinks: SinksConfig,
    pub positions: PositionsConfig,
    pub processing: ProcessingConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppConfig {
    pub name: String,
    pub version: String,
    pub environment: String,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// The effective value of `app.default_configs` / `SSW_DEFAULT_CONFIGS`.
    pub default_configs: bool,
    /// Ours: `auto` probes io_uring and falls back to epoll.
    pub io_engine: IoEngine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// Go accepts trace|debug|info|warn|error|fatal|panic; fatal and panic map to error.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "trace" => Self::Trace,
            "debug" => Self::Debug,
            "info" => Self::Info,
            "warn" | "warning" => Self::Warn,
            "error" | "fatal" | "panic" => Self::Error,
            _ => return None,
        })
    }

    pub fn to_level_filter(self) -> tracing::level_filters::LevelFilter {
        match self {
            Self::Trace => tracing::level_filters::LevelFilter::TRACE,
            Self::Debug => tracing::level_filters::LevelFilter::DEBUG,
            Self::Info => tracing::level_filters::LevelFilter::INFO,
            Self::Warn => tracing::level_filters::LevelFilter::WARN,
            Self::Error => tracing::level_filters::LevelFilter::ERROR,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Some(Self::Json),
            "text" => Some(Self::Text),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoEngine {
    Auto,
    Uring,
    Epoll,
}

impl IoEngine {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Self::Auto),
            "uring" | "io_uring" | "io-uring" | "iouring" => Some(Self::Uring),
            "epoll" => Some(Self::Epoll),
            _ => None,
        }
    }

    /// `auto`, `uring` or `epoll` (parses as `io::select::EngineChoice` too).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Uring => "uring",
            Self::Epoll => "epoll",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServerConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// Ours: when not empty, `POST /api/v1/logs` and `GET /config` need
    /// `Authorization: Bearer <token>` (`SSW_SERVER_AUTH_TOKEN`).
    pub auth_token: String,
    /// Go's: the whole request (head and body) must arrive within this (default 30s).
    #[serde(serialize_with = "ser_duration")]
    pub read_timeout: Duration,
    /// Go's: the answer must be written within this (default 30s).
    #[serde(serialize_with = "ser_duration")]
    pub write_timeout: Duration,
    /// Go's: a kept-alive connection may wait this long for its next request (default 60s).
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// Go's: largest request head (default 1 MiB); a larger one is answered 431.
    pub max_header_bytes: usize,
    /// Ours: connections served at once (default 512); beyond, 503 and close.
    pub max_connections: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Ours (Go bound all interfaces and ignored a `host` key): default `0.0.0.0`.
    pub host: String,
    pub port: u16,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContainerMonitorConfig {
    pub enabled: bool,
    /// Effective Docker endpoint (`unix:///path`, or a bare absolute path), after
    /// `SSW_DOCKER_SOCKET` and `DOCKER_HOST` were considered.
    pub socket_path: String,
    #[serde(serialize_with = "ser_duration")]
    pub health_check_delay: Duration,
    /// Go: heartbeat/fallback interval. Here: the interval of the reconcile-by-listing pass and
    /// the upper bound of the events-stream reconnect backoff.
    #[serde(serialize_with = "ser_duration")]
    pub reconnect_interval: Duration,
    /// Maximum number of containers read at once; 0 = unlimited.
    pub max_concurrent: u32,
    pub include_names: Vec<String>,
    pub exclude_names: Vec<String>,
    pub include_labels: BTreeMap<String, String>,
    pub exclude_labels: BTreeMap<String, String>,
    pub include_stdout: bool,
    pub include_stderr: bool,
    /// Ours: a stream silent this long is probed (`tail=1`) and reopened if the probe shows a
    /// line it has not delivered (default 30s); a delivering stream is never rotated; zero =
    /// never.
    #[serde(serialize_with = "ser_duration")]
    pub stream_rotation_interval: Duration,
    /// Ours: reopen a stream silent this long while its container runs, probe or not (default
    /// 5m); zero = never.
    #[serde(serialize_with = "ser_duration")]
    pub stream_idle_timeout: Duration,
    /// Ours: how far before the newest line read a reopened stream starts (default 1s): the
    /// skew between stdout and stderr it absorbs, and the wall-clock step back it survives
    /// (see `crate::sources::docker::resume`, `crate::sources::docker::clock_step`).
    #[serde(serialize_with = "ser_duration")]
    pub since_overlap: Duration,
    /// Ours: where a container never seen before starts.
    pub new_containers_from: NewContainersFrom,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NewContainersFrom {
    /// From its first line (its creation time): the Go behaviour.
    Created,
    /// From the moment it is discovered.
    Now,
}

impl ContainerMonitorConfig {
    /// The Go filter rules: `name` may carry Docker's leading `/`. `include_names` (if any): the
    /// name contains at least one of them; `exclude_names`: contains none; `include_labels`: every
    /// key present, with an equal value unless the configured value is ""; `exclude_labels`: no
    /// key present whose configured value is "" or equal to the container's.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        let name = name.strip_prefix('/').unwrap_or(name);
        if !self.include_names.is_empty()
            && !self.include_names.iter().any(|n| name.contains(n.as_str()))
        {
            return false;
        }
        if self.exclude_names.iter().any(|n| name.contains(n.as_str())) {
            return false;
        }
        for (key, want) in &self.include_labels {
            match labels.get(key) {
                None => return false,
                Some(have) if !want.is_empty() && have != want => return false,
                Some(_) => {}
            }
        }
        for (key, want) in &self.exclude_labels {
            if let Some(have) = labels.get(key) {
                if want.is_empty() || have == want {
                    return false;
                }
            }
        }
        true
    }

    /// The filesystem path of the Docker socket, for `unix://PATH` or a bare absolute path;
    /// `None` for any other scheme (tcp://, ssh://, ...), which this program does not speak.
    pub fn unix_socket_path(&self) -> Option<PathBuf> {
        let s = self.socket_path.trim();
        if let Some(p) = s.strip_prefix("unix://") {
            return (!p.is_empty()).then(|| PathBuf::from(p));
        }
        s.starts_with('/').then(|| PathBuf::from(s))
    }
}

/// `processing`: the Go pipelines file applied to every entry (see `crate::pipeline::processing`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessingConfig {
    pub enabled: bool,
    /// Loaded at start (a missing or bad file stops the start, naming it). Relative paths are
    /// taken from the working directory, as in Go.
    pub pipelines_file: PathBuf,
    /// A line whose pipeline fails goes out as it came (true) or with the failing steps
    /// skipped (false); either way it is delivered and counted.
    pub skip_failed_logs: bool,
    /// Accepted; entries always carry their container labels.
    pub enrich_logs: bool,
}

/// Go's `processing.pipelines_file` default.
pub const DEFAULT_PIPELINES_FILE: &str = "/app/configs/pipelines.yaml";

/// `file_monitor_service` and `files_config` (the files to tail: see `crate::sources::files`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileMonitorConfig {
    /// `file_monitor_service.enabled` (default false).
    pub enabled: bool,
    /// `file_monitor_service.pipeline_file`: the `file_pipeline.yml` listing files and
    /// directories; when it does not exist, `files_config` says what to watch.
    pub pipeline_file: Option<PathBuf>,
    /// How often watched directories are scanned for new files (default 30s); the pipeline
    /// file's `monitoring.directory_scan_interval` wins when set.
    pub poll_interval: Duration,
    /// How often files are looked at when inotify is unavailable (default 100ms).
    pub read_interval: Duration,
    /// Bytes per read (default 65536).
    pub read_buffer_size: usize,
    /// Whether `files_config.watch_directories` are watched with their subdirectories
    /// (default true).
    pub recursive: bool,
    /// Whether symlinks found in watched directories are followed (default false: never).
    pub follow_symlinks: bool,
    /// Ours: wake on inotify events (default true); false polls every `read_interval`, for
    /// filesystems whose changes inotify does not see (NFS written by other hosts, some FUSE).
    pub inotify: bool,
    /// `files_config.watch_directories`.
    pub watch_directories: Vec<PathBuf>,
    /// `files_config.include_patterns`; empty: every file not excluded.
    pub include_patterns: Vec<String>,
    /// `files_config.exclude_patterns`, applied before a file is opened.
    pub exclude_patterns: Vec<String>,
    /// `files_config.exclude_directories`.
    pub exclude_directories: Vec<PathBuf>,
}

impl Default for FileMonitorConfig {
    fn default() -> Self {
        FileMonitorConfig {
            enabled: false,
            pipeline_file: None,
            poll_interval: Duration::from_secs(30),
            read_interval: Duration::from_millis(100),
            read_buffer_size: 65536,
            recursive: true,
            follow_symlinks: false,
            inotify: true,
            watch_directories: Vec::new(),
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
            exclude_directories: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DispatcherConfig {
    /// Capacity (entries) of the queue between readers and sinks; full = reading pauses.
    pub queue_size: usize,
    /// Ours: capacity in bytes of the same queue (messages plus a fixed share per entry);
    /// reading pauses at whichever of the two bounds comes first. Default 64 MiB.
    pub max_queue_bytes: usize,
    pub batch_size: usize,
    #[serde(serialize_with = "ser_duration")]
    pub batch_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SinksConfig {
    pub local_file: LocalFileSinkConfig,
    pub loki: LokiSinkConfig,
    pub stdout: SimpleSinkConfig,
    pub blackhole: SimpleSinkConfig,
}

impl SinksConfig {
    pub fn any_enabled(&self) -> bool {
        self.local_file.enabled
            || self.loki.enabled
            || self.stdout.enabled
            || self.blackhole.enabled
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimpleSinkConfig {
    pub enabled: bool,
}

pub use crate::sink::OutputFormat;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LocalFileSinkConfig {
    pub enabled: bool,
    pub directory: PathBuf,
    /// Placeholders `{date}` `{hour}` `{nomedocontainer}` `{idcontainer}`
    /// `{nomedoarquivomonitorado}` (and the default's `{source_type}` `{name}`).
    pub filename_pattern: String,
    /// Pattern for file sources, when set (falls back to `filename_pattern`).
    pub filename_pattern_files: Option<String>,
    /// Pattern for container sources, when set (falls back to `filename_pattern`).
    pub filename_pattern_containers: Option<String>,
    pub output_format: OutputFormat,
    pub text_format: TextFormatConfig,
    /// Capacity of the sink's own queue (Go default 3000).
    pub queue_size: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TextFormatConfig {
    pub include_timestamp: bool,
    /// A Go time layout (`2006-01-02 15:04:05.000`).
    pub timestamp_format: String,
    pub include_labels: bool,
    pub field_separator: String,
    /// Write only the captured message, nothing else.
    pub raw_message_only: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LokiSinkConfig {
    pub enabled: bool,
    pub url: String,
    pub push_endpoint: String,
    pub tenant_id: String,
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    pub batch_size: usize,
    #[serde(serialize_with = "ser_duration")]
    pub batch_timeout: Duration,
    /// Capacity of the sink's own queue (Go default 20000).
    pub queue_size: usize,
    pub headers: BTreeMap<String, String>,
    /// `default_labels`, with the Go key `labels` merged in (default_labels wins).
    pub default_labels: BTreeMap<String, String>,
    pub auth: LokiAuth,
}

impl LokiSinkConfig {
    /// `url` + `push_endpoint`, as Go concatenated them.
    pub fn push_url(&self) -> String {
        format!("{}{}", self.url, self.push_endpoint)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthType {
    None,
    Basic,
    Bearer,
}

#[derive(Clone, PartialEq, Serialize)]
pub struct LokiAuth {
    #[serde(rename = "type")]
    pub kind: AuthType,
    pub username: String,
    pub password: String,
    pub token: String,
}

impl fmt::Debug for LokiAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mask = |s: &str| if s.is_empty() { "" } else { "***" };
        f.debug_struct("LokiAuth")
            .field("kind", &self.kind)
            .field("username", &self.username)
            .field("password", &mask(&self.password))
            .field("token", &mask(&self.token))
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PositionsConfig {
    pub enabled: bool,
    /// Holds `container_positions.json` (and `file_positions.json`).
    pub directory: PathBuf,
    /// `positions.flush_interval`: how often acknowledged positions are committed to disk.
    #[serde(serialize_with = "ser_duration")]
    pub flush_interval: Duration,
    /// `positions.cleanup_interval`: how often positions of removed containers (and of files
    /// gone) are pruned; zero: never.
    #[serde(serialize_with = "ser_duration")]
    pub cleanup_interval: Duration,
    /// `positions.max_position_age`: how long the position of a removed container is kept
    /// once its lines are delivered.
    #[serde(serialize_with = "ser_duration")]
    pub max_position_age: Duration,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Where the config path came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathSource {
    Cli,
    EnvConfigFile,
    Default,
}

/// What the loader noticed, for the daemon to log once at start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// The file that was read.
    pub path: PathBuf,
    pub path_source: Option<PathSource>,
    /// Effective `default_configs`.
    pub defaults_applied: bool,
    /// Keys present in the file that this program does not read (dotted paths; a whole unknown
    /// section is listed once by its own name). Log at debug level.
    pub unknown_keys: Vec<String>,
    /// Go keys read differently from the Go version, or Go settings ignored on purpose, each with
    /// the reason. Log at info level.
    pub differences: Vec<KeyNote>,
    /// Names of the `SSW_*` variables that were applied.
    pub env_applied: Vec<String>,
    /// True when `DOCKER_HOST` supplied the Docker endpoint.
    pub docker_host_used: bool,
    /// Unknown keys that look like a misspelt known key: a warning each.
    pub misspellings: Vec<Misspelling>,
}

/// An unknown key (`dispatcher.queue_sise`) and the known key closest to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misspelling {
    pub key: String,
    pub closest: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyNote {
    pub key: String,
    pub note: String,
}

impl LoadReport {
    /// Logs the report: one info line for the file, unknown keys once at debug level,
    /// each difference at info level.
    pub fn log(&self) {
        tracing::info!(
            "configuration loaded from {} (default_configs={}, env overrides: {})",
            self.path.display(),
            self.defaults_applied,
            if self.env_applied.is_empty() {
                "none".to_string()
            } else {
                self.env_applied.join(", ")
            }
        );
        if !self.unknown_keys.is_empty() {
            tracing::debug!(
                "config keys not used by this program ({}): {}",
                self.unknown_keys.len(),
                self.unknown_keys.join(", ")
            );
        }
        for m in &self.misspellings {
            tracing::warn!(
                "config key {} is not known and is ignored; did you mean {}?",
                m.key,
                m.closest
            );
        }
        for d in &self.differences {
            tracing::info!(
                "config key {} differs from log_capturer_go: {}",
                d.key,
                d.note
            );
        }
    }

    pub(crate) fn note(&mut self, key: &str, note: impl Into<String>) {
        self.differences.push(KeyNote {
            key: key.to_string(),
            note: note.into(),
        });
    }
}

/// Every error names where it came from: the file and key, or the environment variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid YAML in config file {}: {message}", .path.display())]
    Yaml { path: PathBuf, message: String },
    #[error("config file {}: key `{key}`: expected {expected}, got {got}", .path.display())]
    Key {
        path: PathBuf,
        key: String,
        expected: String,
        got: String,
    },
    #[error("environment variable {var}: expected {expected}, got {got:?}")]
    Env {
        var: String,
        expected: String,
        got: String,
    },
    #[error("config file {}: key `{key}`: {message}", .path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// The key path (`sinks.loki.url`) or environment variable name the error is about.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Key { key, .. } | Self::Invalid { key, .. } => Some(key),
            Self::Env { var, .. } => Some(var),
            Self::Read { .. } | Self::Yaml { .. } => None,
        }
    }
}

/// What a Docker endpoint must look like here: Docker is reached over its unix socket only.
pub const EXPECT_DOCKER_SOCKET: &str =
    "unix:///path/to/docker.sock or an absolute path (only a unix socket is supported)";

/// A tcp://, ssh:// or relative endpoint is refused at load, naming where it came from
/// (`DOCKER_HOST`, `SSW_DOCKER_SOCKET` or the key), instead of failing at the first connect.
fn check_docker_endpoint(
    config: &Config,
    report: &LoadReport,
    origin: &Path,
) -> Result<(), ConfigError> {
    let cm = &config.container_monitor;
    if !cm.enabled || cm.unix_socket_path().is_some() {
        return Ok(());
    }
    let from_env = if report.docker_host_used {
        Some("DOCKER_HOST")
    } else if report.env_applied.iter().any(|v| v == "SSW_DOCKER_SOCKET") {
        Some("SSW_DOCKER_SOCKET")
    } else {
        None
    };
    Err(match from_env {
        Some(var) => ConfigError::Env {
            var: var.to_string(),
            expected: EXPECT_DOCKER_SOCKET.to_string(),
            got: cm.socket_path.clone(),
        },
        None => ConfigError::Key {
            path: origin.to_path_buf(),
            key: "container_monitor.socket_path".into(),
            expected: EXPECT_DOCKER_SOCKET.to_string(),
            got: format!("{:?}", cm.socket_path),
        },
    })
}

/// Reads the real process environment (for [`Config::load`]).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `--config PATH`, else `SSW_CONFIG_FILE` (when non-empty), else [`DEFAULT_CONFIG_PATH`].
pub fn resolve_config_path(
    cli_path: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> (PathBuf, PathSource) {
    if let Some(p) = cli_path {
        return (p.to_path_buf(), PathSource::Cli);
    }
    match env("SSW_CONFIG_FILE").filter(|v| !v.trim().is_empty()) {
        Some(v) => (PathBuf::from(v.trim()), PathSource::EnvConfigFile),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), PathSource::Default),
    }
}

impl Config {
    /// Loads the configuration the daemon runs with: the path from `--config`, `SSW_CONFIG_FILE`
    /// or the default, then the process environment's overrides.
    pub fn load(cli_path: Option<&Path>) -> Result<(Config, LoadReport), ConfigError> {
        Self::load_with_env(cli_path, &process_env)
    }

    /// [`Config::load`] with an injected environment (tests never touch the real one).
    pub fn load_with_env(
        cli_path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Config, LoadReport), ConfigError> {
        let (path, source) = resolve_config_path(cli_path, env);
        let (config, mut report) = Self::load_from(&path, env)?;
        report.path_source = Some(source);
        Ok((config, report))
    }

    /// Reads `path` and applies `env`'s overrides.
    pub fn load_from(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Config, LoadReport), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_str(&text, path, env)
    }

    /// Parses YAML text; `origin` is the file name used in errors and in the report.
    pub fn from_yaml_str(
        yaml: &str,
        origin: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Config, LoadReport), ConfigError> {
        let mut report = LoadReport {
            path: origin.to_path_buf(),
            ..LoadReport::default()
        };
        let mut config = parse::from_yaml(yaml, origin, env, &mut report)?;
        env::apply(&mut config, env, &mut report)?;
        parse::resolve_docker_host(&mut config, env, &mut report);
        parse::validate(&config, origin)?;
        check_docker_endpoint(&config, &report, origin)?;
        Ok((config, report))
    }

    /// The configuration an empty file gives with `default_configs` on and no environment.
    pub fn defaults() -> Config {
        let mut report = LoadReport::default();
        parse::from_yaml("", Path::new("<defaults>"), &|_| None, &mut report)
            .expect("an empty document always parses")
    }

    /// The configuration as JSON for the `/config` endpoint, with passwords, tokens, secrets,
    /// credential-bearing headers and URL passwords replaced by `"***"`.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("config serializes to JSON");
        redact::redact(&mut value);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn monitor() -> ContainerMonitorConfig {
        Config::defaults().container_monitor
    }

    #[test]
    fn no_filters_match_everything() {
        assert!(monitor().matches("/anything", &labels(&[])));
    }

    #[test]
    fn names_are_substrings_without_leading_slash() {
        let mut m = monitor();
        m.include_names = vec!["web".into(), "api".into()];
        assert!(m.matches("/my-web-1", &labels(&[])));
        assert!(m.matches("api", &labels(&[])));
        assert!(!m.matches("/db", &labels(&[])));
        // Only one leading slash is Docker's; "/" itself is not a name character to match.
        m.include_names = vec!["/db".into()];
        assert!(!m.matches("/db", &labels(&[])));
        assert!(m.matches("//db", &labels(&[])));
    }

    #[test]
    fn exclude_names_win_over_include_names() {
        let mut m = monitor();
        m.include_names = vec!["log".into()];
        m.exclude_names = vec!["log_capturer_go".into()];
        assert!(m.matches("/log_shipper", &labels(&[])));
        assert!(!m.matches("/log_capturer_go", &labels(&[])));
        assert!(!m.matches("/log_capturer_go_2", &labels(&[])));
    }

    #[test]
    fn glob_characters_are_literal_as_in_go() {
        let mut m = monitor();
        m.include_names = vec!["web-*".into()];
        assert!(!m.matches("/web-1", &labels(&[])));
        assert!(m.matches("/web-*", &labels(&[])));
    }

    #[test]
    fn empty_exclude_name_excludes_everything_as_in_go() {
        let mut m = monitor();
        m.exclude_names = vec![String::new()];
        assert!(!m.matches("/x", &labels(&[])));
    }

    #[test]
    fn include_labels_need_every_key_and_matching_values() {
        let mut m = monitor();
        m.include_labels = labels(&[("app", ""), ("env", "prod")]);
        assert!(m.matches("/c", &labels(&[("app", "x"), ("env", "prod")])));
        assert!(m.matches("/c", &labels(&[("app", ""), ("env", "prod"), ("z", "1")])));
        assert!(!m.matches("/c", &labels(&[("app", "x"), ("env", "dev")])));
        assert!(!m.matches("/c", &labels(&[("env", "prod")])));
        assert!(!m.matches("/c", &labels(&[])));
    }

    #[test]
    fn exclude_labels_match_on_presence_or_equal_value() {
        let mut m = monitor();
        m.exclude_labels = labels(&[("logs.exclude", ""), ("tier", "debug")]);
        assert!(!m.matches("/c", &labels(&[("logs.exclude", "false")])));
        assert!(!m.matches("/c", &labels(&[("tier", "debug")])));
        assert!(m.matches("/c", &labels(&[("tier", "prod")])));
        assert!(m.matches("/c", &labels(&[("other", "1")])));
    }

    #[test]
    fn all_four_filters_combine() {
        let mut m = monitor();
        m.include_names = vec!["svc".into()];
        m.exclude_names = vec!["test".into()];
        m.include_labels = labels(&[("team", "core")]);
        m.exclude_labels = labels(&[("skip", "")]);
        let ok = labels(&[("team", "core")]);
        assert!(m.matches("/svc-a", &ok));
        assert!(!m.matches("/svc-test", &ok));
        assert!(!m.matches("/other", &ok));
        assert!(!m.matches("/svc-a", &labels(&[("team", "edge")])));
        assert!(!m.matches("/svc-a", &labels(&[("team", "core"), ("skip", "1")])));
    }

    #[test]
    fn unix_socket_path_forms() {
        let mut m = monitor();
        m.socket_path = "unix:///run/docker.sock".into();
        assert_eq!(
            m.unix_socket_path(),
            Some(PathBuf::from("/run/docker.sock"))
        );
        m.socket_path = "/tmp/d.sock".into();
        assert_eq!(m.unix_socket_path(), Some(PathBuf::from("/tmp/d.sock")));
        m.socket_path = "tcp://127.0.0.1:2375".into();
        assert_eq!(m.unix_socket_path(), None);
    }

    #[test]
    fn auth_debug_hides_secrets() {
        let auth = LokiAuth {
            kind: AuthType::Basic,
            username: "u".into(),
            password: "hunter2".into(),
            token: String::new(),
        };
        let text = format!("{auth:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("***"));
    }
}
