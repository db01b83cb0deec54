//! Walks the YAML tree key by key, applying the `default_configs` rules (see the module docs).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::*;

/// Top-level Go sections this program does not implement: when one says `enabled: true`, that is
/// reported as a difference (otherwise the section is just an unknown key).
const NOT_IMPLEMENTED_SECTIONS: &[(&str, &str)] = &[
    (
        "hot_reload",
        "hot reload is not implemented; restart to apply a new config",
    ),
    ("anomaly_detection", "anomaly detection is not implemented"),
    (
        "security",
        "API authentication/authorization is not implemented",
    ),
    ("tracing", "distributed tracing is not implemented"),
    ("slo", "SLO evaluation is not implemented"),
    (
        "multi_tenant",
        "multi-tenancy is not implemented; use sinks.loki.tenant_id",
    ),
    ("service_discovery", "service discovery is not implemented"),
    (
        "disk_buffer",
        "no disk buffer: a slow sink pauses reading instead",
    ),
    (
        "cleanup",
        "disk cleanup is not implemented: the capturer never deletes files",
    ),
    (
        "disk_cleanup",
        "disk cleanup is not implemented: the capturer never deletes files",
    ),
    (
        "resource_monitoring",
        "resource monitoring alerts are not implemented; see /health and /metrics",
    ),
    (
        "goroutine_tracking",
        "served by /goroutines/stats from live task counts; these settings are not used",
    ),
    (
        "timestamp_validation",
        "timestamps come from Docker and are not clamped or rejected",
    ),
    (
        "observability",
        "profiling and alerting settings are not used",
    ),
];

const NOT_IMPLEMENTED_SINKS: &[&str] = &["elasticsearch", "splunk", "kafka"];

pub(super) struct Ctx<'a> {
    file: &'a Path,
    defaults: Cell<bool>,
    seen: RefCell<BTreeSet<String>>,
    /// Every key path this program looks for, present or not: what a misspelt key is
    /// compared with.
    asked: RefCell<BTreeSet<String>>,
    sections: RefCell<BTreeSet<String>>,
    notes: RefCell<Vec<KeyNote>>,
}

#[derive(Clone)]
pub(super) struct Node<'v> {
    path: String,
    map: Option<&'v Mapping>,
}

impl<'v> Node<'v> {
    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing (null)".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

fn key_string(k: &Value) -> Option<String> {
    match k {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Tagged(t) => scalar_string(&t.value),
        _ => None,
    }
}

/// Go's `strconv.ParseBool` plus the YAML 1.1 words yaml.v2 accepted.
pub(super) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" | "yes" | "Yes" | "YES" | "y" | "Y" | "on"
        | "On" | "ON" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "no" | "No" | "NO" | "n" | "N" | "off"
        | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

pub(super) const EXPECT_DURATION: &str =
    "a duration like \"30s\", \"5m\", \"1h30m\" or \"250ms\" (or a number of seconds)";

impl<'a> Ctx<'a> {
    fn new(file: &'a Path) -> Self {
        Self {
            file,
            defaults: Cell::new(true),
            seen: RefCell::new(BTreeSet::new()),
            asked: RefCell::new(BTreeSet::new()),
            sections: RefCell::new(BTreeSet::new()),
            notes: RefCell::new(Vec::new()),
        }
    }

    fn defaults(&self) -> bool {
        self.defaults.get()
    }

    fn err(&self, key: String, expected: &str, got: &Value) -> ConfigError {
        ConfigError::Key {
            path: self.file.to_path_buf(),
            key,
            expected: expected.to_string(),
            got: describe(got),
        }
    }

    fn note(&self, key: String, note: impl Into<String>) {
        self.notes.borrow_mut().push(KeyNote {
            key,
            note: note.into(),
        });
    }
}

// The accessors are free functions generic over the tree lifetime so that returned references
// outlive the context borrow.
fn raw<'v>(ctx: &Ctx<'_>, node: &Node<'v>, key: &str) -> (String, Option<&'v Value>) {
    let path = node.key_path(key);
    ctx.asked.borrow_mut().insert(path.clone());
    let value = node.map.and_then(|m| m.get(key));
    if value.is_some() {
        ctx.seen.borrow_mut().insert(path.clone());
    }
    (path, value.filter(|v| !v.is_null()))
}

fn section<'v>(ctx: &Ctx<'_>, node: &Node<'v>, key: &str) -> Result<Node<'v>, ConfigError> {
    let (path, value) = raw(ctx, node, key);
    let map = match value {
        None => None,
        Some(Value::Mapping(m)) => Some(m),
        Some(other) => return Err(ctx.err(path, "a mapping of settings", other)),
    };
    if map.is_some() {
        ctx.sections.borrow_mut().insert(path.clone());
    }
    Ok(Node { path, map })
}

fn string<'v>(ctx: &Ctx<'_>, node: &Node<'v>, key: &str) -> Result<Option<String>, ConfigError> {
    let (path, value) = raw(ctx, node, key);
    value
        .map(|v| scalar_string(v).ok_or_else(|| ctx.err(path, "a string", v)))
        .transpose()
}

fn boolean<'v>(ctx: &Ctx<'_>, node: &Node<'v>, key: &str) -> Result<Option<bool>, ConfigError> {
    let (path, value) = raw(ctx, node, key);
    value
        .map(|v| match v {
            Value::Bool(b) => Ok(*b),
            Value::String(s) => {
                parse_bool(s).ok_or_else(|| ctx.err(path.clone(), "true or false", v))
            }
            _ => Err(ctx.err(path.clone(), "true or false", v)),
        })
        .transpose()
}

fn uint<'v>(ctx: &Ctx<'_>, node: &Node<'v>, key: &str) -> Result<Option<u64>, ConfigError> {
    let (path, value) = raw(ctx, node, key);
    const EXPECTED: &str = "a non-negative integer";
    value
        .map(|v| match v {
            Value::Number(n) => n.as_u64().ok_or_else(|| ctx.err(path.clone(), EXPECTED, v)),
            Value::String(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| ctx.err(path.clone(), EXPECTED, v)),
            _ => Err(ctx.err(path.clone(), EXPECTED, v)),
        })
        .transpose()
}

fn usize_<'v>(ctx: &Ctx<'_>, node: &Node<'v>, key: &str) -> Result<Option<usize>, ConfigError> {
    let path = node.key_path(key);
    match uint(ctx, node, key)? {
        None => Ok(None),
        Some(n) => usize::try_from(n).map(Some).map_err(|_| {
            ctx.err(
                path,
                "an integer that fits this machine",
                &Value::Number(n.into()),
            )
        }),
    }
}

fn port<'v>(ctx: &Ctx<'_>, node: &Node<'v>, key: &str) -> Result<Option<u16>, ConfigError> {
    let path = node.key_path(key);
    match uint(ctx, node, key)? {
        None => Ok(None),
        Some(n) => u16::try_from(n)
            .map(Some)
            .map_err(|_| ctx.err(path, "a port number 0-65535", &Value::Number(n.into()))),
    }
}

fn duration<'v>(
    ctx: &Ctx<'_>,
    node: &Node<'v>,
    key: &str,
) -> Result<Option<Duration>, ConfigError> {
    let (path, value) = raw(ctx, node, key);
    value
        .map(|v| {
            let parsed = match v {
                Value::String(s) => parse_duration(s),
                Value::Number(n) => match (n.as_u64(), n.as_f64()) {
                    (Some(secs), _) => Some(Duration::from_secs(secs)),
                    (None, Some(f)) if f >= 0.0 => Duration::try_from_secs_f64(f).ok(),
                    _ => None,
                },
                _ => None,
            };
            parsed.ok_or_else(|| ctx.err(path.clone(), EXPECT_DURATION, v))
        })
        .transpose()
}

fn list<'v>(ctx: &Ctx<'_>, node: &Node<'v>, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let (path, value) = raw(ctx, node, key);
    const EXPECTED: &str = "a list of strings";
    value
        .map(|v| match v {
            Value::Sequence(items) => items
                .iter()
                .filter(|i| !i.is_null())
                .map(|i| scalar_string(i).ok_or_else(|| ctx.err(path.clone(), EXPECTED, i)))
                .collect(),
            Value::String(s) => Ok(vec![s.clone()]),
            _ => Err(ctx.err(path.clone(), EXPECTED, v)),
        })
        .transpose()
}

/// A string map. A list of strings is accepted too (the commented examples of
/// enterprise-config.yaml use that shape for labels): each item becomes a key with value "".
fn string_map<'v>(
    ctx: &Ctx<'_>,
    node: &Node<'v>,
    key: &str,
) -> Result<Option<BTreeMap<String, String>>, ConfigError> {
    let (path, value) = raw(ctx, node, key);
    const EXPECTED: &str = "a mapping of strings to strings";
    let Some(v) = value else { return Ok(None) };
    let mut out = BTreeMap::new();
    match v {
        Value::Mapping(m) => {
            for (k, val) in m {
                let k = key_string(k).ok_or_else(|| ctx.err(path.clone(), EXPECTED, k))?;
                let val = if val.is_null() {
                    String::new()
                } else {
                    scalar_string(val)
                        .ok_or_else(|| ctx.err(format!("{path}.{k}"), "a string", val))?
                };
                out.insert(k, val);
            }
        }
        Value::Sequence(items) => {
            for item in items {
                let k = scalar_string(item).ok_or_else(|| ctx.err(path.clone(), EXPECTED, item))?;
                out.insert(k, String::new());
            }
            ctx.note(
                path,
                "given as a list: each item is read as a key with value \"\" (Go rejected the list \
                 and fell back to built-in defaults)",
            );
        }
        _ => return Err(ctx.err(path, EXPECTED, v)),
    }
    Ok(Some(out))
}

fn parse_enum<'v, T>(
    ctx: &Ctx<'_>,
    node: &Node<'v>,
    key: &str,
    expected: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, ConfigError> {
    let (path, value) = raw(ctx, node, key);
    match value {
        None => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(v) => scalar_string(v)
            .and_then(|s| parse(&s))
            .map(Some)
            .ok_or_else(|| ctx.err(path, expected, v)),
    }
}

/// Marks a Go key as read on purpose although it has no effect here, with the reason.
fn ignored<'v>(ctx: &Ctx<'_>, node: &Node<'v>, key: &str, note: &str) {
    let (path, value) = raw(ctx, node, key);
    if value.is_some() {
        ctx.note(path, note);
    }
}

/// A Go section this program does not implement: reported as a difference when it says
/// `enabled: true`, otherwise left to the unknown-key list.
fn unimplemented_feature<'v>(ctx: &Ctx<'_>, node: &Node<'v>, key: &str, note: &str) {
    if let Some(Value::Mapping(m)) = node.map.and_then(|m| m.get(key)) {
        let enabled = match m.get("enabled") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => parse_bool(s) == Some(true),
            _ => false,
        };
        if enabled {
            ignored(ctx, node, key, note);
        }
    }
}

impl Ctx<'_> {
    /// A Go key with a Go default: absent/null/zero takes the default when defaults are on.
    fn go<T: PartialEq + Default>(&self, v: Option<T>, default: T) -> T {
        match v {
            Some(x) if !(self.defaults() && x == T::default()) => x,
            _ if self.defaults() => default,
            _ => T::default(),
        }
    }

    /// An `enabled` flag Go forced to true when defaults were on.
    fn go_flag(&self, path: String, v: Option<bool>) -> bool {
        if self.defaults() && v == Some(false) {
            self.note(
                path,
                "explicit false is respected (Go forced it to true when default_configs is on)",
            );
        }
        v.unwrap_or(self.defaults())
    }

    /// A fallback the Go runtime applied regardless of default_configs: absent/zero -> default.
    fn always<T: PartialEq + Default>(&self, v: Option<T>, default: T) -> T {
        match v {
            Some(x) if x != T::default() => x,
            _ => default,
        }
    }
}

pub(super) fn from_yaml(
    yaml: &str,
    origin: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    report: &mut LoadReport,
) -> Result<Config, ConfigError> {
    let mut root: Value = if yaml.trim().is_empty() {
        Value::Null
    } else {
        serde_yaml::from_str(yaml).map_err(|e| ConfigError::Yaml {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?
    };
    root.apply_merge().map_err(|e| ConfigError::Yaml {
        path: origin.to_path_buf(),
        message: e.to_string(),
    })?;
    let empty = Mapping::new();
    let top = match &root {
        Value::Null => &empty,
        Value::Mapping(m) => m,
        other => {
            return Err(ConfigError::Key {
                path: origin.to_path_buf(),
                key: "(document)".into(),
                expected: "a mapping of sections (app:, server:, ...)".into(),
                got: describe(other),
            })
        }
    };
    let ctx = Ctx::new(origin);
    let root = Node {
        path: String::new(),
        map: Some(top),
    };

    // default_configs first: the environment wins over the file, as in Go.
    let app = section(&ctx, &root, "app")?;
    let file_flag = boolean(&ctx, &app, "default_configs")?;
    let defaults = match env("SSW_DEFAULT_CONFIGS").filter(|v| !v.trim().is_empty()) {
        Some(v) => parse_bool(&v).ok_or_else(|| ConfigError::Env {
            var: "SSW_DEFAULT_CONFIGS".into(),
            expected: "true or false".into(),
            got: v.clone(),
        })?,
        None => file_flag.unwrap_or(true),
    };
    ctx.defaults.set(defaults);
    report.defaults_applied = defaults;

    let config = Config {
        app: read_app(&ctx, &app, defaults)?,
        server: read_server(&ctx, &root)?,
        metrics: read_metrics(&ctx, &root)?,
        container_monitor: read_container_monitor(&ctx, &root)?,
        file_monitor: read_file_monitor(&ctx, &root)?,
        dispatcher: read_dispatcher(&ctx, &root)?,
        sinks: read_sinks(&ctx, &root)?,
        positions: read_positions(&ctx, &root)?,
        processing: read_processing(&ctx, &root)?,
    };

    for (name, note) in NOT_IMPLEMENTED_SECTIONS {
        unimplemented_feature(&ctx, &root, name, note);
    }

    report.differences.extend(ctx.notes.take());
    report.unknown_keys = unknown_keys(&ctx, top);
    report.misspellings = misspellings(&ctx, &report.unknown_keys);
    Ok(config)
}

/// Unknown keys that are one or two typos away from a key read at the same level and absent
/// from the file (`dispatcher.queue_sise`, `container_monitr`). The Go sections this program
/// does not implement count as known, so `procesing` is not taken for something else.
fn misspellings(ctx: &Ctx<'_>, unknown: &[String]) -> Vec<Misspelling> {
    let asked = ctx.asked.borrow();
    let seen = ctx.seen.borrow();
    let known_top = NOT_IMPLEMENTED_SECTIONS.iter().map(|(name, _)| *name);
    let mut out = Vec::new();
    for key in unknown {
        let (parent, name) = match key.rsplit_once('.') {
            Some((parent, name)) => (parent, name),
            None => ("", key.as_str()),
        };
        let siblings = asked.iter().filter_map(|path| match path.rsplit_once('.') {
            Some((p, n)) if p == parent => Some(n),
            None if parent.is_empty() => Some(path.as_str()),
            _ => None,
        });
        // Within 1 edit for short names, 2 from 8 characters on: close enough to be a typo,
        // far enough apart that Go's other keys (`read_timeout` vs `reconnect_interval`) are
        // not taken for one.
        let budget = if name.len() >= 8 { 2 } else { 1 };
        let best = siblings
            .map(|s| (edit_distance(name, s), s))
            .filter(|&(d, s)| d > 0 && d <= budget && !seen.contains(&join(parent, s)))
            .min();
        if let Some((_, closest)) = best {
            let decoy = parent.is_empty() && known_top.clone().any(|k| edit_distance(name, k) < 2);
            if !decoy {
                out.push(Misspelling {
                    key: key.clone(),
                    closest: join(parent, closest),
                });
            }
        }
    }
    out
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// Edit distance over bytes (keys are ASCII), a swap of two neighbours counting as one edit
/// (optimal string alignment): `enabeld` is one typo from `enabled`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j - 1] + cost)
                .min(d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn unknown_keys(ctx: &Ctx<'_>, top: &Mapping) -> Vec<String> {
    fn walk(ctx: &Ctx<'_>, prefix: &str, map: &Mapping, out: &mut Vec<String>) {
        for (k, v) in map {
            let name = key_string(k).unwrap_or_else(|| describe(k));
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}.{name}")
            };
            if !ctx.seen.borrow().contains(&path) {
                out.push(path);
            } else if let (true, Value::Mapping(m)) = (ctx.sections.borrow().contains(&path), v) {
                walk(ctx, &path, m, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(ctx, "", top, &mut out);
    out
}

fn read_app(ctx: &Ctx<'_>, app: &Node<'_>, defaults: bool) -> Result<AppConfig, ConfigError> {
    let log_level = parse_enum(
        ctx,
        app,
        "log_level",
        "one of trace, debug, info, warn, error, fatal, panic",
        LogLevel::parse,
    )?;
    let log_format = parse_enum(ctx, app, "log_format", "json or text", LogFormat::parse)?;
    let io_engine = parse_enum(
        ctx,
        app,
        "io_engine",
        "auto, uring or epoll",
        IoEngine::parse,
    )?;
    ignored(
        ctx,
        app,
        "log_file",
        "not supported: the capturer logs to stderr (redirect it if a file is needed)",
    );
    Ok(AppConfig {
        name: ctx.go(string(ctx, app, "name")?, "ssw-logs-capture".into()),
        version: ctx.go(string(ctx, app, "version")?, "v0.0.2".into()),
        environment: ctx.go(string(ctx, app, "environment")?, "production".into()),
        log_level: log_level.unwrap_or(LogLevel::Info),
        log_format: log_format.unwrap_or(LogFormat::Json),
        default_configs: defaults,
        io_engine: io_engine.unwrap_or(IoEngine::Auto),
    })
}

fn read_server(ctx: &Ctx<'_>, root: &Node<'_>) -> Result<ServerConfig, ConfigError> {
    let s = section(ctx, root, "server")?;
    if boolean(ctx, &s, "tls_enabled")? == Some(true) {
        ctx.note(
            s.key_path("tls_enabled"),
            "TLS is not supported: the API is served over plain HTTP (terminate TLS in a proxy)",
        );
    }
    for k in ["tls_cert_file", "tls_key_file"] {
        raw(ctx, &s, k);
    }
    Ok(ServerConfig {
        enabled: boolean(ctx, &s, "enabled")?.unwrap_or(ctx.defaults()),
        host: ctx.go(string(ctx, &s, "host")?, "0.0.0.0".into()),
        port: ctx.go(port(ctx, &s, "port")?, 8401),
        auth_token: string(ctx, &s, "auth_token")?.unwrap_or_default(),
        // A zero limit is no limit in Go; here it is the default: an API without a time
        // limit is a thread held forever by a client that stops sending.
        read_timeout: ctx.always(duration(ctx, &s, "read_timeout")?, Duration::from_secs(30)),
        write_timeout: ctx.always(duration(ctx, &s, "write_timeout")?, Duration::from_secs(30)),
        idle_timeout: ctx.always(duration(ctx, &s, "idle_timeout")?, Duration::from_secs(60)),
        max_header_bytes: ctx.always(usize_(ctx, &s, "max_header_bytes")?, 1 << 20),
        max_connections: ctx.always(usize_(ctx, &s, "max_connections")?, 512),
    })
}

fn read_metrics(ctx: &Ctx<'_>, root: &Node<'_>) -> Result<MetricsConfig, ConfigError> {
    let s = section(ctx, root, "metrics")?;
    let host = string(ctx, &s, "host")?;
    if host
        .as_deref()
        .is_some_and(|h| !h.is_empty() && h != "0.0.0.0")
    {
        ctx.note(
            s.key_path("host"),
            "honored here (Go ignored it and listened on every interface)",
        );
    }
    Ok(MetricsConfig {
        enabled: ctx.go_flag(s.key_path("enabled"), boolean(ctx, &s, "enabled")?),
        host: ctx.always(host, "0.0.0.0".into()),
        port: ctx.go(port(ctx, &s, "port")?, 8001),
        path: ctx.always(string(ctx, &s, "path")?, "/metrics".into()),
    })
}

fn read_container_monitor(
    ctx: &Ctx<'_>,
    root: &Node<'_>,
) -> Result<ContainerMonitorConfig, ConfigError> {
    let s = section(ctx, root, "container_monitor")?;
    ignored(
        ctx,
        &s,
        "follow",
        "streams are always followed (use --once for a one-shot backfill)",
    );
    ignored(
        ctx,
        &s,
        "tail_lines",
        "not used: a new container is read from its first line (see new_containers_from), a known \
         one from its saved position",
    );
    let new_from = parse_enum(
        ctx,
        &s,
        "new_containers_from",
        "created or now",
        |v| match v.trim().to_ascii_lowercase().as_str() {
            "created" | "creation" | "beginning" | "first_line" => Some(NewContainersFrom::Created),
            "now" | "end" => Some(NewContainersFrom::Now),
            _ => None,
        },
    )?;
    Ok(ContainerMonitorConfig {
        enabled: ctx.go_flag(s.key_path("enabled"), boolean(ctx, &s, "enabled")?),
        socket_path: ctx.go(
            string(ctx, &s, "socket_path")?.map(|v| v.trim().to_string()),
            DEFAULT_DOCKER_SOCKET.into(),
        ),
        health_check_delay: ctx.go(
            duration(ctx, &s, "health_check_delay")?,
            Duration::from_secs(30),
        ),
        reconnect_interval: ctx.always(
            duration(ctx, &s, "reconnect_interval")?,
            Duration::from_secs(30),
        ),
        max_concurrent: ctx.go(
            uint(ctx, &s, "max_concurrent")?.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            50,
        ),
        include_names: list(ctx, &s, "include_names")?.unwrap_or_default(),
        exclude_names: list(ctx, &s, "exclude_names")?.unwrap_or_default(),
        include_labels: string_map(ctx, &s, "include_labels")?.unwrap_or_default(),
        exclude_labels: string_map(ctx, &s, "exclude_labels")?.unwrap_or_default(),
        include_stdout: ctx.go_flag(
            s.key_path("include_stdout"),
            boolean(ctx, &s, "include_stdout")?,
        ),
        include_stderr: ctx.go_flag(
            s.key_path("include_stderr"),
            boolean(ctx, &s, "include_stderr")?,
        ),
        stream_rotation_interval: duration(ctx, &s, "stream_rotation_interval")?
            .unwrap_or(Duration::from_secs(30)),
        stream_idle_timeout: duration(ctx, &s, "stream_idle_timeout")?
            .unwrap_or(Duration::from_secs(300)),
        since_overlap: duration(ctx, &s, "since_overlap")?.unwrap_or(Duration::from_secs(1)),
        new_containers_from: new_from.unwrap_or(NewContainersFrom::Created),
    })
}

fn read_file_monitor(ctx: &Ctx<'_>, root: &Node<'_>) -> Result<FileMonitorConfig, ConfigError> {
    let s = section(ctx, root, "file_monitor_service")?;
    let d = FileMonitorConfig::default();
    let go_duration = |key: &str, default: Duration| -> Result<Duration, ConfigError> {
        Ok(ctx.go(duration(ctx, &s, key)?, default))
    };
    let mut c = FileMonitorConfig {
        enabled: boolean(ctx, &s, "enabled")?.unwrap_or(false),
        pipeline_file: non_empty(string(ctx, &s, "pipeline_file")?).map(PathBuf::from),
        poll_interval: go_duration("poll_interval", d.poll_interval)?,
        read_interval: go_duration("read_interval", d.read_interval)?,
        read_buffer_size: ctx.go(usize_(ctx, &s, "read_buffer_size")?, d.read_buffer_size),
        recursive: boolean(ctx, &s, "recursive")?.unwrap_or(ctx.defaults() && d.recursive),
        follow_symlinks: boolean(ctx, &s, "follow_symlinks")?.unwrap_or(false),
        inotify: boolean(ctx, &s, "inotify")?.unwrap_or(true),
        ..d
    };
    // Zero would spin the files thread; a read buffer under one line is still correct.
    if c.read_interval.is_zero() {
        c.read_interval = Duration::from_millis(100);
    }
    if c.poll_interval.is_zero() {
        c.poll_interval = Duration::from_secs(30);
    }
    c.read_buffer_size = c.read_buffer_size.clamp(4096, 16 << 20);
    let f = section(ctx, root, "files_config")?;
    c.watch_directories = list(ctx, &f, "watch_directories")?
        .unwrap_or_default()
        .into_iter()
        .map(PathBuf::from)
        .collect();
    c.include_patterns = list(ctx, &f, "include_patterns")?.unwrap_or_default();
    c.exclude_patterns = list(ctx, &f, "exclude_patterns")?.unwrap_or_default();
    c.exclude_directories = list(ctx, &f, "exclude_directories")?
        .unwrap_or_default()
        .into_iter()
        .map(PathBuf::from)
        .collect();
    Ok(c)
}

fn read_dispatcher(ctx: &Ctx<'_>, root: &Node<'_>) -> Result<DispatcherConfig, ConfigError> {
    let s = section(ctx, root, "dispatcher")?;
    ignored(
        ctx,
        &s,
        "worker_count",
        "not used: each sink has its own task, there is no worker pool",
    );
    for k in [
        "max_retries",
        "retry_base_delay",
        "retry_multiplier",
        "retry_max_delay",
        "send_timeout",
    ] {
        ignored(
            ctx,
            &s,
            k,
            "not used: sinks retry with exponential backoff until delivered; nothing is dropped",
        );
    }
    for k in ["dlq_enabled", "dlq_config"] {
        ignored(
            ctx,
            &s,
            k,
            "no dead-letter queue: undelivered lines stay unacknowledged and reading pauses",
        );
    }
    for k in ["deduplication_enabled", "deduplication_config"] {
        ignored(
            ctx,
            &s,
            k,
            "no content deduplication: exactly-once comes from positions and timestamp dedupe on reopen",
        );
    }
    ignored(
        ctx,
        &s,
        "queue_size",
        "when full, reading pauses (Go dropped lines)",
    );
    Ok(DispatcherConfig {
        queue_size: ctx.go(usize_(ctx, &s, "queue_size")?, 10_000),
        max_queue_bytes: ctx.always(
            usize_(ctx, &s, "max_queue_bytes")?,
            crate::pipeline::DEFAULT_MAX_QUEUE_BYTES,
        ),
        batch_size: ctx.go(usize_(ctx, &s, "batch_size")?, 100),
        batch_timeout: ctx.always(duration(ctx, &s, "batch_timeout")?, Duration::from_secs(5)),
    })
}

fn read_sinks(ctx: &Ctx<'_>, root: &Node<'_>) -> Result<SinksConfig, ConfigError> {
    let s = section(ctx, root, "sinks")?;
    for name in NOT_IMPLEMENTED_SINKS {
        // Enabled, it would be a destination that silently receives nothing: refuse to start.
        // Looked at without marking it read, so a disabled one stays an unknown key.
        let enabled = match s
            .map
            .and_then(|m| m.get(*name))
            .and_then(|v| v.get("enabled"))
        {
            Some(Value::Bool(b)) => *b,
            Some(v) => scalar_string(v).and_then(|v| parse_bool(&v)) == Some(true),
            None => false,
        };
        if enabled {
            return Err(ConfigError::Invalid {
                path: ctx.file.to_path_buf(),
                key: format!("{}.enabled", s.key_path(name)),
                message: format!(
                    "the {name} sink is not implemented in log_capturer, so its lines would go \
                     nowhere; set it to false and use loki, local_file or stdout"
                ),
            });
        }
    }
    let stdout = section(ctx, &s, "stdout")?;
    let blackhole = section(ctx, &s, "blackhole")?;
    Ok(SinksConfig {
        local_file: read_local_file(ctx, &s)?,
        loki: read_loki(ctx, &s)?,
        stdout: SimpleSinkConfig {
            enabled: boolean(ctx, &stdout, "enabled")?.unwrap_or(false),
        },
        blackhole: SimpleSinkConfig {
            enabled: boolean(ctx, &blackhole, "enabled")?.unwrap_or(false),
        },
    })
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

fn read_local_file(ctx: &Ctx<'_>, sinks: &Node<'_>) -> Result<LocalFileSinkConfig, ConfigError> {
    let s = section(ctx, sinks, "local_file")?;
    let fmt_path = s.key_path("output_format");
    let output_format = parse_enum(ctx, &s, "output_format", "json or text", |v| {
        match v.trim().to_ascii_lowercase().as_str() {
            "json" => Some(OutputFormat::Json),
            "text" => Some(OutputFormat::Text),
            "csv" => {
                ctx.note(
                    fmt_path.clone(),
                    "csv is written as json (as Go did: it had no csv writer)",
                );
                Some(OutputFormat::Json)
            }
            _ => None,
        }
    })?;
    ignored(
        ctx,
        &s,
        "rotation",
        "not applied: the capturer never rotates or deletes output files (Go's rotation deleted \
         every *.log* file because its limits were never read)",
    );
    let t = section(ctx, &s, "text_format")?;
    Ok(LocalFileSinkConfig {
        enabled: ctx.go_flag(s.key_path("enabled"), boolean(ctx, &s, "enabled")?),
        directory: PathBuf::from(ctx.go(string(ctx, &s, "directory")?, "/app/logs/output".into())),
        filename_pattern: ctx.always(
            string(ctx, &s, "filename_pattern")?,
            DEFAULT_FILENAME_PATTERN.into(),
        ),
        filename_pattern_files: non_empty(string(ctx, &s, "filename_pattern_files")?),
        filename_pattern_containers: non_empty(string(ctx, &s, "filename_pattern_containers")?),
        output_format: output_format.unwrap_or(OutputFormat::Json),
        text_format: TextFormatConfig {
            include_timestamp: boolean(ctx, &t, "include_timestamp")?.unwrap_or(false),
            timestamp_format: ctx.always(
                string(ctx, &t, "timestamp_format")?,
                "2006-01-02T15:04:05.000Z".into(),
            ),
            include_labels: boolean(ctx, &t, "include_labels")?.unwrap_or(false),
            field_separator: ctx.always(string(ctx, &t, "field_separator")?, " | ".into()),
            raw_message_only: boolean(ctx, &t, "raw_message_only")?.unwrap_or(false),
        },
        queue_size: ctx.always(usize_(ctx, &s, "queue_size")?, 3000),
    })
}

fn read_loki(ctx: &Ctx<'_>, sinks: &Node<'_>) -> Result<LokiSinkConfig, ConfigError> {
    let s = section(ctx, sinks, "loki")?;
    for k in ["adaptive_batching", "backpressure_config", "dlq_config"] {
        ignored(
            ctx,
            &s,
            k,
            "not used: fixed batch_size/batch_timeout, and a slow Loki pauses reading (no DLQ)",
        );
    }
    unimplemented_feature(
        ctx,
        &s,
        "tls",
        "custom TLS settings are not supported: https uses the system's root certificates",
    );
    let mut default_labels = string_map(ctx, &s, "labels")?.unwrap_or_default();
    default_labels.extend(string_map(ctx, &s, "default_labels")?.unwrap_or_default());

    let a = section(ctx, &s, "auth")?;
    let kind = parse_enum(ctx, &a, "type", "none, basic or bearer", |v| {
        match v.trim().to_ascii_lowercase().as_str() {
            "none" => Some(AuthType::None),
            "basic" => Some(AuthType::Basic),
            "bearer" => Some(AuthType::Bearer),
            _ => None,
        }
    })?;
    Ok(LokiSinkConfig {
        enabled: ctx.go_flag(s.key_path("enabled"), boolean(ctx, &s, "enabled")?),
        url: ctx.go(string(ctx, &s, "url")?, "http://loki:3100".into()),
        push_endpoint: ctx.always(
            string(ctx, &s, "push_endpoint")?,
            DEFAULT_LOKI_PUSH_ENDPOINT.into(),
        ),
        tenant_id: string(ctx, &s, "tenant_id")?.unwrap_or_default(),
        timeout: ctx.always(duration(ctx, &s, "timeout")?, Duration::from_secs(30)),
        batch_size: ctx.go(usize_(ctx, &s, "batch_size")?, 1000),
        batch_timeout: ctx.always(duration(ctx, &s, "batch_timeout")?, Duration::from_secs(10)),
        queue_size: ctx.always(usize_(ctx, &s, "queue_size")?, 20_000),
        headers: string_map(ctx, &s, "headers")?.unwrap_or_default(),
        default_labels,
        auth: LokiAuth {
            kind: kind.unwrap_or(AuthType::None),
            username: string(ctx, &a, "username")?.unwrap_or_default(),
            password: string(ctx, &a, "password")?.unwrap_or_default(),
            token: string(ctx, &a, "token")?.unwrap_or_default(),
        },
    })
}

fn read_processing(ctx: &Ctx<'_>, root: &Node<'_>) -> Result<ProcessingConfig, ConfigError> {
    let s = section(ctx, root, "processing")?;
    for k in ["worker_count", "queue_size", "processing_timeout"] {
        ignored(
            ctx,
            &s,
            k,
            "not used: each entry is processed once on the thread that read it, before it is \
             queued",
        );
    }
    Ok(ProcessingConfig {
        enabled: boolean(ctx, &s, "enabled")?.unwrap_or(false),
        pipelines_file: string(ctx, &s, "pipelines_file")?
            .filter(|p| !p.trim().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIPELINES_FILE)),
        skip_failed_logs: boolean(ctx, &s, "skip_failed_logs")?.unwrap_or(true),
        enrich_logs: boolean(ctx, &s, "enrich_logs")?.unwrap_or(true),
    })
}

fn read_positions(ctx: &Ctx<'_>, root: &Node<'_>) -> Result<PositionsConfig, ConfigError> {
    let s = section(ctx, root, "positions")?;
    if boolean(ctx, &s, "force_flush_on_exit")? == Some(false) {
        ctx.note(
            s.key_path("force_flush_on_exit"),
            "ignored: positions are always committed at shutdown",
        );
    }
    let max_position_age = duration(ctx, &s, "max_position_age")?;
    if max_position_age.is_some() {
        ctx.note(
            s.key_path("max_position_age"),
            "prunes only the records of removed containers and of monitored files gone, once \
             their lines are delivered; the record of an existing container or file is kept \
             however old",
        );
    }
    Ok(PositionsConfig {
        enabled: ctx.go_flag(s.key_path("enabled"), boolean(ctx, &s, "enabled")?),
        directory: PathBuf::from(
            ctx.go(string(ctx, &s, "directory")?, "/app/data/positions".into()),
        ),
        flush_interval: ctx.always(
            duration(ctx, &s, "flush_interval")?,
            Duration::from_secs(30),
        ),
        cleanup_interval: ctx.go(
            duration(ctx, &s, "cleanup_interval")?,
            Duration::from_secs(60),
        ),
        max_position_age: ctx.go(max_position_age, Duration::from_secs(12 * 3600)),
    })
}

/// `DOCKER_HOST` replaces the socket path when it was left at the default (or empty).
pub(super) fn resolve_docker_host(
    config: &mut Config,
    env: &dyn Fn(&str) -> Option<String>,
    report: &mut LoadReport,
) {
    let cm = &mut config.container_monitor;
    if cm.socket_path.is_empty() || cm.socket_path == DEFAULT_DOCKER_SOCKET {
        if let Some(host) = env("DOCKER_HOST").filter(|h| !h.trim().is_empty()) {
            cm.socket_path = host.trim().to_string();
            report.docker_host_used = true;
        }
    }
}

/// The checks Go's validator made (a config Go refused is refused here), plus ours.
pub(super) fn validate(c: &Config, file: &Path) -> Result<(), ConfigError> {
    let fail = |key: &str, message: String| ConfigError::Invalid {
        path: file.to_path_buf(),
        key: key.to_string(),
        message,
    };
    if c.server.enabled {
        if c.server.port == 0 {
            return Err(fail(
                "server.port",
                "expected a port 1-65535 when the server is enabled, got 0".into(),
            ));
        }
        if c.server.host.trim().is_empty() {
            return Err(fail(
                "server.host",
                "expected a host to listen on when the server is enabled, got \"\"".into(),
            ));
        }
    }
    if c.metrics.enabled {
        if c.metrics.port == 0 {
            return Err(fail(
                "metrics.port",
                "expected a port 1-65535 when metrics are enabled, got 0".into(),
            ));
        }
        if c.server.enabled && c.server.port == c.metrics.port {
            return Err(fail(
                "metrics.port",
                format!("conflicts with server.port ({})", c.server.port),
            ));
        }
    }
    let cm = &c.container_monitor;
    if cm.enabled {
        if cm.socket_path.is_empty() {
            return Err(fail(
                "container_monitor.socket_path",
                "expected a Docker endpoint like \"unix:///var/run/docker.sock\" when container_monitor is enabled, got \"\"".into(),
            ));
        }
        if !cm.include_stdout && !cm.include_stderr {
            return Err(fail(
                "container_monitor.include_stdout",
                "include_stdout and include_stderr are both false: at least one stream must be read".into(),
            ));
        }
    }
    if c.dispatcher.queue_size == 0 {
        return Err(fail(
            "dispatcher.queue_size",
            "expected a positive integer, got 0".into(),
        ));
    }
    if c.dispatcher.batch_size == 0 {
        return Err(fail(
            "dispatcher.batch_size",
            "expected a positive integer, got 0".into(),
        ));
    }
    let loki = &c.sinks.loki;
    if loki.enabled {
        if !(loki.url.starts_with("http://") || loki.url.starts_with("https://")) {
            return Err(fail(
                "sinks.loki.url",
                format!(
                    "expected an http:// or https:// URL when the loki sink is enabled, got {:?}",
                    loki.url
                ),
            ));
        }
        if loki.batch_size == 0 {
            return Err(fail(
                "sinks.loki.batch_size",
                "expected a positive integer when the loki sink is enabled, got 0".into(),
            ));
        }
    }
    if c.sinks.local_file.enabled && c.sinks.local_file.directory.as_os_str().is_empty() {
        return Err(fail(
            "sinks.local_file.directory",
            "expected a directory when the local_file sink is enabled, got \"\"".into(),
        ));
    }
    if c.positions.enabled && c.positions.directory.as_os_str().is_empty() {
        return Err(fail(
            "positions.directory",
            "expected a directory when positions are enabled, got \"\"".into(),
        ));
    }
    if !c.sinks.any_enabled() {
        return Err(fail(
            "sinks",
            "at least one sink must be enabled (local_file, loki, stdout or blackhole)".into(),
        ));
    }
    Ok(())
}
