//! `SSW_*` environment overrides, applied after the file and the defaults. An empty variable is
//! treated as unset (as Go did); an unparsable one is an error naming the variable (Go ignored it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::parse::{parse_bool, EXPECT_DURATION};
use super::*;

/// Every variable this program reads (besides `SSW_CONFIG_FILE`, `SSW_DEFAULT_CONFIGS` and
/// `DOCKER_HOST`), in the order they are applied.
pub const ENV_OVERRIDES: &[&str] = &[
    "SSW_APP_NAME",
    "SSW_APP_VERSION",
    "SSW_APP_ENVIRONMENT",
    "SSW_LOG_LEVEL",
    "SSW_LOG_FORMAT",
    "SSW_IO_ENGINE",
    "SSW_SERVER_ENABLED",
    "SSW_SERVER_HOST",
    "SSW_SERVER_PORT",
    "SSW_SERVER_AUTH_TOKEN",
    "SSW_METRICS_ENABLED",
    "SSW_METRICS_HOST",
    "SSW_METRICS_PORT",
    "SSW_METRICS_PATH",
    "SSW_DISPATCHER_QUEUE_SIZE",
    "SSW_DISPATCHER_MAX_QUEUE_BYTES",
    "SSW_DISPATCHER_BATCH_SIZE",
    "SSW_DISPATCHER_BATCH_TIMEOUT",
    "SSW_LOKI_ENABLED",
    "SSW_LOKI_URL",
    "SSW_LOKI_BATCH_SIZE",
    "SSW_LOKI_BATCH_TIMEOUT",
    "SSW_LOKI_TIMEOUT",
    "SSW_LOKI_TENANT_ID",
    "SSW_LOKI_USER",
    "SSW_LOKI_PASSWORD",
    "SSW_LOKI_TOKEN",
    "SSW_LOKI_HEADERS",
    "SSW_LOKI_LABELS",
    "SSW_LOCAL_FILE_ENABLED",
    "SSW_LOCAL_FILE_DIRECTORY",
    "SSW_LOCAL_FILE_FORMAT",
    "SSW_STDOUT_ENABLED",
    "SSW_BLACKHOLE_ENABLED",
    "SSW_CONTAINER_MONITOR_ENABLED",
    "SSW_DOCKER_SOCKET",
    "SSW_STREAM_ROTATION_INTERVAL",
    "SSW_STREAM_IDLE_TIMEOUT",
    "SSW_FILE_MONITOR_ENABLED",
    "SSW_FILE_PIPELINE",
    "SSW_POSITIONS_DIRECTORY",
    "SSW_PIPELINES_FILE",
];

/// Go variables that are recognised but have no effect here (reported when set).
const IGNORED_GO_ENV: &[(&str, &str)] = &[
    ("SSW_DISPATCHER_WORKER_COUNT", "there is no worker pool"),
    (
        "SSW_LOKI_COMPRESSION",
        "bodies of 1 KiB and more are always gzipped",
    ),
    (
        "SSW_METRICS_NAMESPACE",
        "metric names carry no prefix, as in Go's output",
    ),
    (
        "SSW_FILE_CONFIG",
        "use file_monitor_service.pipeline_file (SSW_FILE_PIPELINE)",
    ),
    ("SSW_SECURITY_ENABLED", "API security is not implemented"),
    (
        "SSW_SERVICE_DISCOVERY_ENABLED",
        "service discovery is not implemented",
    ),
];

struct Env<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
    applied: Vec<String>,
}

fn bad(var: &str, expected: &str, got: &str) -> ConfigError {
    ConfigError::Env {
        var: var.to_string(),
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

impl Env<'_> {
    fn raw(&mut self, var: &str) -> Option<String> {
        let v = (self.get)(var).filter(|v| !v.trim().is_empty())?;
        self.applied.push(var.to_string());
        Some(v)
    }

    fn string(&mut self, var: &str, slot: &mut String) {
        if let Some(v) = self.raw(var) {
            *slot = v;
        }
    }

    fn path(&mut self, var: &str, slot: &mut PathBuf) {
        if let Some(v) = self.raw(var) {
            *slot = PathBuf::from(v);
        }
    }

    fn parsed<T>(
        &mut self,
        var: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
        slot: &mut T,
    ) -> Result<(), ConfigError> {
        if let Some(v) = self.raw(var) {
            *slot = parse(&v).ok_or_else(|| bad(var, expected, &v))?;
        }
        Ok(())
    }

    fn boolean(&mut self, var: &str, slot: &mut bool) -> Result<(), ConfigError> {
        self.parsed(var, "true or false", parse_bool, slot)
    }

    fn usize(&mut self, var: &str, slot: &mut usize) -> Result<(), ConfigError> {
        self.parsed(
            var,
            "a non-negative integer",
            |s| s.trim().parse().ok(),
            slot,
        )
    }

    fn port(&mut self, var: &str, slot: &mut u16) -> Result<(), ConfigError> {
        self.parsed(
            var,
            "a port number 0-65535",
            |s| s.trim().parse().ok(),
            slot,
        )
    }

    fn duration(&mut self, var: &str, slot: &mut Duration) -> Result<(), ConfigError> {
        self.parsed(var, EXPECT_DURATION, parse_duration, slot)
    }

    /// `k=v,k2=v2` merged into `slot`; an item without `=` is a key with value "" (as Go).
    fn pairs(&mut self, var: &str, slot: &mut BTreeMap<String, String>) -> Result<(), ConfigError> {
        if let Some(v) = self.raw(var) {
            for item in v.split(',').filter(|i| !i.trim().is_empty()) {
                let (k, val) = item.split_once('=').unwrap_or((item, ""));
                let k = k.trim();
                if k.is_empty() {
                    return Err(bad(var, "comma-separated key=value pairs", &v));
                }
                slot.insert(k.to_string(), val.trim().to_string());
            }
        }
        Ok(())
    }
}

pub(super) fn apply(
    c: &mut Config,
    get: &dyn Fn(&str) -> Option<String>,
    report: &mut LoadReport,
) -> Result<(), ConfigError> {
    let mut e = Env {
        get,
        applied: Vec::new(),
    };
    e.string("SSW_APP_NAME", &mut c.app.name);
    e.string("SSW_APP_VERSION", &mut c.app.version);
    e.string("SSW_APP_ENVIRONMENT", &mut c.app.environment);
    e.parsed(
        "SSW_LOG_LEVEL",
        "one of trace, debug, info, warn, error, fatal, panic",
        LogLevel::parse,
        &mut c.app.log_level,
    )?;
    e.parsed(
        "SSW_LOG_FORMAT",
        "json or text",
        LogFormat::parse,
        &mut c.app.log_format,
    )?;
    e.parsed(
        "SSW_IO_ENGINE",
        "auto, uring or epoll",
        IoEngine::parse,
        &mut c.app.io_engine,
    )?;

    e.boolean("SSW_SERVER_ENABLED", &mut c.server.enabled)?;
    e.string("SSW_SERVER_HOST", &mut c.server.host);
    e.port("SSW_SERVER_PORT", &mut c.server.port)?;
    e.string("SSW_SERVER_AUTH_TOKEN", &mut c.server.auth_token);
    e.boolean("SSW_METRICS_ENABLED", &mut c.metrics.enabled)?;
    e.string("SSW_METRICS_HOST", &mut c.metrics.host);
    e.port("SSW_METRICS_PORT", &mut c.metrics.port)?;
    e.string("SSW_METRICS_PATH", &mut c.metrics.path);

    e.usize("SSW_DISPATCHER_QUEUE_SIZE", &mut c.dispatcher.queue_size)?;
    e.usize(
        "SSW_DISPATCHER_MAX_QUEUE_BYTES",
        &mut c.dispatcher.max_queue_bytes,
    )?;
    e.usize("SSW_DISPATCHER_BATCH_SIZE", &mut c.dispatcher.batch_size)?;
    e.duration(
        "SSW_DISPATCHER_BATCH_TIMEOUT",
        &mut c.dispatcher.batch_timeout,
    )?;

    let loki = &mut c.sinks.loki;
    e.boolean("SSW_LOKI_ENABLED", &mut loki.enabled)?;
    e.string("SSW_LOKI_URL", &mut loki.url);
    e.usize("SSW_LOKI_BATCH_SIZE", &mut loki.batch_size)?;
    e.duration("SSW_LOKI_BATCH_TIMEOUT", &mut loki.batch_timeout)?;
    e.duration("SSW_LOKI_TIMEOUT", &mut loki.timeout)?;
    e.string("SSW_LOKI_TENANT_ID", &mut loki.tenant_id);
    if let Some(user) = e.raw("SSW_LOKI_USER") {
        loki.auth.kind = AuthType::Basic;
        loki.auth.username = user;
    }
    e.string("SSW_LOKI_PASSWORD", &mut loki.auth.password);
    if let Some(token) = e.raw("SSW_LOKI_TOKEN") {
        loki.auth.kind = AuthType::Bearer;
        loki.auth.token = token;
    }
    e.pairs("SSW_LOKI_HEADERS", &mut loki.headers)?;
    e.pairs("SSW_LOKI_LABELS", &mut loki.default_labels)?;

    let lf = &mut c.sinks.local_file;
    e.boolean("SSW_LOCAL_FILE_ENABLED", &mut lf.enabled)?;
    e.path("SSW_LOCAL_FILE_DIRECTORY", &mut lf.directory);
    e.parsed(
        "SSW_LOCAL_FILE_FORMAT",
        "json or text",
        |s| match s.trim().to_ascii_lowercase().as_str() {
            "json" => Some(OutputFormat::Json),
            "text" => Some(OutputFormat::Text),
            _ => None,
        },
        &mut lf.output_format,
    )?;
    e.boolean("SSW_STDOUT_ENABLED", &mut c.sinks.stdout.enabled)?;
    e.boolean("SSW_BLACKHOLE_ENABLED", &mut c.sinks.blackhole.enabled)?;

    let cm = &mut c.container_monitor;
    e.boolean("SSW_CONTAINER_MONITOR_ENABLED", &mut cm.enabled)?;
    e.string("SSW_DOCKER_SOCKET", &mut cm.socket_path);
    e.duration(
        "SSW_STREAM_ROTATION_INTERVAL",
        &mut cm.stream_rotation_interval,
    )?;
    e.duration("SSW_STREAM_IDLE_TIMEOUT", &mut cm.stream_idle_timeout)?;
    e.boolean("SSW_FILE_MONITOR_ENABLED", &mut c.file_monitor.enabled)?;
    let mut pipeline = c.file_monitor.pipeline_file.clone().unwrap_or_default();
    e.path("SSW_FILE_PIPELINE", &mut pipeline);
    if !pipeline.as_os_str().is_empty() {
        c.file_monitor.pipeline_file = Some(pipeline);
    }
    e.path("SSW_POSITIONS_DIRECTORY", &mut c.positions.directory);
    e.path("SSW_PIPELINES_FILE", &mut c.processing.pipelines_file);

    for (var, why) in IGNORED_GO_ENV {
        if (get)(var).is_some_and(|v| !v.trim().is_empty()) {
            report.note(var, format!("set but not used: {why}"));
        }
    }
    if e.applied.iter().any(|v| v == "SSW_LOKI_PASSWORD")
        && !e.applied.iter().any(|v| v == "SSW_LOKI_USER")
    {
        report.note(
            "SSW_LOKI_PASSWORD",
            "applied on its own (Go read it only together with SSW_LOKI_USER)",
        );
    }
    report.env_applied = e.applied;
    Ok(())
}
