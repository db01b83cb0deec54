//! Configuration loader: the Go reference configs, defaults, env overrides, errors, the sample.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log_capturer::config::*;

/// The Go team's own files, when this checkout sits next to them (the project's workspace);
/// elsewhere the golden tests run on the fixtures only.
fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/log_capturer_go")
}

/// The project's own Go-format files (`tests/fixtures/`): the same keys and shapes as the Go
/// team's `config.yaml`, `enterprise-config.yaml` and `file_pipeline.yml`.
fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file)
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/config.yaml")
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

fn load_str(
    yaml: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, LoadReport), ConfigError> {
    Config::from_yaml_str(yaml, Path::new("test.yaml"), env)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Golden tests: Go-format files load unchanged. Each check runs on the fixture, and on the Go
// team's file when it is there (`go_reference_files_pass_the_golden_checks`).

#[test]
fn fixture_config_yaml_loads_with_go_settings() {
    check_go_config_yaml(&fixture("go_config.yaml"));
}

#[test]
fn fixture_enterprise_config_loads_with_go_defaults_for_missing_sinks() {
    check_go_enterprise_config(&fixture("go_enterprise_config.yaml"));
}

#[test]
fn fixture_configs_load_through_config_file_env_and_cli() {
    check_config_file_env_and_cli(
        &fixture("go_config.yaml"),
        &fixture("go_enterprise_config.yaml"),
    );
}

#[test]
fn fixture_file_pipeline_is_not_a_config_but_loads_leniently() {
    check_go_file_pipeline(&fixture("go_file_pipeline.yml"));
}

/// The Go team's files: the same checks, plus every key of theirs present in our fixture, so
/// the fixtures keep exercising what the real files use. Says on stderr whether they ran
/// (written past libtest's capture, so `cargo test` shows it).
#[test]
fn go_reference_files_pass_the_golden_checks() {
    use std::io::Write;
    let dir = reference_dir();
    if !dir.is_dir() {
        let _ = writeln!(
            std::io::stderr(),
            "config golden tests: Go reference files not found at {}: ran on tests/fixtures only",
            dir.display()
        );
        return;
    }
    let pairs = [
        ("config.yaml", "go_config.yaml"),
        ("enterprise-config.yaml", "go_enterprise_config.yaml"),
        ("file_pipeline.yml", "go_file_pipeline.yml"),
    ];
    for (theirs, ours) in pairs {
        let missing: Vec<String> = key_shapes(&dir.join(theirs))
            .difference(&key_shapes(&fixture(ours)))
            .cloned()
            .collect();
        assert!(
            missing.is_empty(),
            "tests/fixtures/{ours} lacks keys of {theirs}: {missing:?}"
        );
    }
    check_go_config_yaml(&dir.join("config.yaml"));
    check_go_enterprise_config(&dir.join("enterprise-config.yaml"));
    check_config_file_env_and_cli(
        &dir.join("config.yaml"),
        &dir.join("enterprise-config.yaml"),
    );
    check_go_file_pipeline(&dir.join("file_pipeline.yml"));
    let _ = writeln!(
        std::io::stderr(),
        "config golden tests: also ran on the Go reference files in {}",
        dir.display()
    );
}

/// Every key path of a YAML file with the shape of its value (`a.b[].c:map`), list items
/// merged: what a fixture must have to stand in for the file.
fn key_shapes(path: &Path) -> std::collections::BTreeSet<String> {
    fn walk(prefix: &str, v: &serde_yaml::Value, out: &mut std::collections::BTreeSet<String>) {
        use serde_yaml::Value;
        match v {
            Value::Mapping(m) => {
                for (k, x) in m {
                    let k = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
                    let p = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, x, out);
                }
                out.insert(format!("{prefix}:map"));
            }
            Value::Sequence(items) => {
                for x in items {
                    walk(&format!("{prefix}[]"), x, out);
                }
                out.insert(format!("{prefix}:list"));
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tree: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = std::collections::BTreeSet::new();
    walk("", &tree, &mut out);
    out
}

/// `file_pipeline.yml` is file monitoring's own list: the files monitor reads it (every
/// enabled file listed); given as the config by mistake it loads (Go's reader is lenient
/// too) with all of it unused.
fn check_go_file_pipeline(path: &Path) {
    let plan = log_capturer::sources::files::config::plan(&FileMonitorConfig {
        pipeline_file: Some(path.to_path_buf()),
        ..FileMonitorConfig::default()
    })
    .expect("the files monitor reads file_pipeline.yml");
    assert!(!plan.files.is_empty());
    assert_eq!(plan.max_files, 1000);
    let (_, r) = Config::load_from(path, &no_env).expect("file_pipeline loads");
    for key in ["version", "files", "monitoring"] {
        assert!(
            r.unknown_keys.iter().any(|k| k == key),
            "{key} not in {:?}",
            r.unknown_keys
        );
    }
    assert!(r.misspellings.is_empty(), "{:?}", r.misspellings);
}

fn check_go_config_yaml(path: &Path) {
    let (c, r) = Config::load_from(path, &no_env).expect("config.yaml loads");
    assert!(r.misspellings.is_empty(), "{:?}", r.misspellings);
    assert!(
        !r.defaults_applied,
        "config.yaml says default_configs: false"
    );
    assert!(!c.app.default_configs);
    // processing: read (the pipelines file itself is loaded at start, tests/processing.rs).
    assert!(c.processing.enabled && c.processing.skip_failed_logs && c.processing.enrich_logs);
    assert!(c.processing.pipelines_file.is_absolute());

    assert_eq!(c.app.name, "ssw-logs-capture");
    assert_eq!(c.app.version, "v0.0.2");
    assert_eq!(c.app.environment, "production");
    assert_eq!(c.app.log_level, LogLevel::Debug);
    assert_eq!(c.app.log_format, LogFormat::Json);
    assert_eq!(c.app.io_engine, IoEngine::Auto);

    assert!(c.server.enabled);
    assert_eq!((c.server.host.as_str(), c.server.port), ("0.0.0.0", 8401));
    assert!(c.metrics.enabled);
    assert_eq!(c.metrics.port, 8001);
    assert_eq!(c.metrics.path, "/metrics");

    let cm = &c.container_monitor;
    assert!(cm.enabled);
    assert_eq!(cm.socket_path, "unix:///var/run/docker.sock");
    assert_eq!(
        cm.unix_socket_path(),
        Some(PathBuf::from("/var/run/docker.sock"))
    );
    assert_eq!(cm.health_check_delay, secs(30));
    assert_eq!(cm.reconnect_interval, secs(30));
    assert_eq!(cm.max_concurrent, 25);
    assert!(cm.include_names.is_empty());
    assert_eq!(cm.exclude_names, vec!["log_capturer_go".to_string()]);
    assert!(cm.include_labels.is_empty() && cm.exclude_labels.is_empty());
    assert!(cm.include_stdout && cm.include_stderr);
    assert_eq!(cm.stream_rotation_interval, secs(30));
    assert_eq!(cm.stream_idle_timeout, secs(300));
    assert_eq!(cm.new_containers_from, NewContainersFrom::Created);
    assert!(!cm.matches("/log_capturer_go", &BTreeMap::new()));
    assert!(cm.matches("/web", &BTreeMap::new()));

    let fm = &c.file_monitor;
    assert!(fm.enabled);
    let pipeline = fm.pipeline_file.as_deref().unwrap_or(Path::new(""));
    assert!(
        pipeline.ends_with("file_pipeline.yml") || pipeline.ends_with("pipeline_file-10"),
        "{pipeline:?}"
    );
    assert_eq!(fm.poll_interval, secs(30));
    assert_eq!(fm.read_interval, Duration::from_millis(100));
    assert_eq!(fm.read_buffer_size, 65536);
    assert!(fm.recursive && !fm.follow_symlinks);
    assert_eq!(fm.watch_directories.len(), 1);
    assert!(fm.include_patterns.is_empty());
    assert_eq!(fm.exclude_patterns.len(), 5);
    assert_eq!(fm.exclude_directories.len(), 2);

    assert_eq!(c.dispatcher.queue_size, 50_000);
    assert_eq!(c.dispatcher.batch_size, 500);
    assert_eq!(c.dispatcher.batch_timeout, secs(10));

    let loki = &c.sinks.loki;
    assert!(loki.enabled);
    assert_eq!(loki.url, "http://loki:3100");
    assert_eq!(loki.push_endpoint, "/loki/api/v1/push");
    assert_eq!(loki.push_url(), "http://loki:3100/loki/api/v1/push");
    assert_eq!(loki.tenant_id, "");
    assert_eq!(loki.timeout, secs(240));
    assert_eq!(loki.batch_size, 20_000);
    assert_eq!(loki.batch_timeout, secs(40));
    assert_eq!(loki.queue_size, 25_000);
    assert!(loki.headers.is_empty() && loki.default_labels.is_empty());
    assert_eq!(loki.auth.kind, AuthType::None);
    assert_eq!(loki.auth.username, "");

    let lf = &c.sinks.local_file;
    assert!(lf.enabled);
    assert_eq!(lf.directory, PathBuf::from("/tmp/logs/output"));
    assert_eq!(lf.filename_pattern, "logs-{date}-{hour}.log");
    assert_eq!(lf.filename_pattern_files, None);
    assert_eq!(lf.filename_pattern_containers, None);
    assert_eq!(lf.output_format, OutputFormat::Text);
    assert!(!lf.text_format.include_timestamp);
    assert_eq!(lf.text_format.timestamp_format, "2006-01-02 15:04:05.000");
    assert!(!lf.text_format.include_labels);
    assert_eq!(lf.text_format.field_separator, " | ");
    assert!(lf.text_format.raw_message_only);
    assert_eq!(lf.queue_size, 25_000);

    assert!(!c.sinks.stdout.enabled && !c.sinks.blackhole.enabled);

    assert!(c.positions.enabled);
    assert_eq!(c.positions.directory, PathBuf::from("/app/data/positions"));
    assert_eq!(c.positions.flush_interval, secs(10));
    assert_eq!(c.positions.cleanup_interval, secs(60));
    assert_eq!(c.positions.max_position_age, secs(12 * 3600));

    // Unused keys are reported, not fatal; Go keys read differently are noted.
    // Go's server limits are read (issue 12).
    assert_eq!(c.server.read_timeout, secs(30));
    assert_eq!(c.server.write_timeout, secs(30));
    assert_eq!(c.server.idle_timeout, secs(60));
    assert_eq!(c.server.max_header_bytes, 1 << 20);
    for key in [
        "sinks.kafka",
        "sinks.loki.tls",
        "positions.max_memory_buffer",
    ] {
        assert!(
            r.unknown_keys.iter().any(|k| k == key),
            "{key} not in {:?}",
            r.unknown_keys
        );
    }
    for key in [
        "processing.worker_count",
        "sinks.local_file.rotation",
        "dispatcher.dlq_config",
        "container_monitor.tail_lines",
    ] {
        assert!(
            r.differences.iter().any(|d| d.key == key),
            "{key} not in {:?}",
            r.differences
        );
    }
    // Keys that are read never show up as unknown.
    for key in [
        "files_config",
        "file_monitor_service.read_interval",
        "sinks.loki.url",
        "container_monitor.exclude_names",
        "positions.directory",
        "app.default_configs",
    ] {
        assert!(!r.unknown_keys.iter().any(|k| k == key));
    }
}

fn check_go_enterprise_config(path: &Path) {
    let (c, r) = Config::load_from(path, &no_env).expect("enterprise-config.yaml loads");
    assert!(r.misspellings.is_empty(), "{:?}", r.misspellings);
    // No app.default_configs: defaults apply.
    assert!(r.defaults_applied && c.app.default_configs);
    assert_eq!(c.app.name, "ssw-logs-capture-enterprise");
    assert_eq!(c.app.version, "v2.0.0");
    assert_eq!(c.app.log_level, LogLevel::Info);
    assert_eq!(c.app.log_format, LogFormat::Json);

    assert!(c.server.enabled);
    assert_eq!((c.server.host.as_str(), c.server.port), ("0.0.0.0", 8401));
    assert!(c.metrics.enabled);
    assert_eq!((c.metrics.host.as_str(), c.metrics.port), ("0.0.0.0", 8001));

    let cm = &c.container_monitor;
    assert!(cm.enabled);
    assert_eq!(cm.socket_path, DEFAULT_DOCKER_SOCKET);
    assert_eq!(cm.max_concurrent, 50);
    assert_eq!(cm.health_check_delay, secs(30));
    assert_eq!(cm.reconnect_interval, secs(30));
    // The filters are commented out in the file.
    assert!(cm.include_names.is_empty() && cm.exclude_names.is_empty());
    assert!(cm.include_labels.is_empty() && cm.exclude_labels.is_empty());
    assert!(cm.include_stdout && cm.include_stderr);

    assert_eq!(c.dispatcher.queue_size, 50_000);
    assert_eq!(c.dispatcher.batch_size, 500);
    assert_eq!(c.dispatcher.batch_timeout, secs(5));

    // `sinks:` is commented out: Go's defaults enable loki and local_file.
    let loki = &c.sinks.loki;
    assert!(loki.enabled);
    assert_eq!(loki.url, "http://loki:3100");
    assert_eq!(loki.push_endpoint, "/loki/api/v1/push");
    assert_eq!(loki.batch_size, 1000);
    assert_eq!(loki.timeout, secs(30));
    assert_eq!(loki.batch_timeout, secs(10));
    let lf = &c.sinks.local_file;
    assert!(lf.enabled);
    assert_eq!(lf.directory, PathBuf::from("/app/logs/output"));
    assert_eq!(lf.filename_pattern, DEFAULT_FILENAME_PATTERN);
    assert_eq!(lf.output_format, OutputFormat::Json);

    assert!(c.positions.enabled);
    assert_eq!(c.positions.directory, PathBuf::from("/app/data/positions"));
    assert_eq!(c.positions.flush_interval, secs(30));

    for key in ["server.tls_enabled", "security", "tracing", "hot_reload"] {
        assert!(
            r.differences.iter().any(|d| d.key == key),
            "{key} not in {:?}",
            r.differences
        );
    }
    for key in ["dispatcher.rate_limit_config", "app.debug_mode"] {
        assert!(
            r.unknown_keys.iter().any(|k| k == key),
            "{key} not in {:?}",
            r.unknown_keys
        );
    }
}

fn check_config_file_env_and_cli(path: &Path, ent: &Path) {
    let env = env_of(&[("SSW_CONFIG_FILE", path.to_str().unwrap())]);
    let (c, r) = Config::load_with_env(None, &env).unwrap();
    assert_eq!(r.path, path);
    assert_eq!(r.path_source, Some(PathSource::EnvConfigFile));
    assert_eq!(c.dispatcher.queue_size, 50_000);

    let (c, r) = Config::load_with_env(Some(ent), &env).unwrap();
    assert_eq!(
        r.path_source,
        Some(PathSource::Cli),
        "--config wins over SSW_CONFIG_FILE"
    );
    assert_eq!(c.app.name, "ssw-logs-capture-enterprise");
}

#[test]
fn config_path_resolution_order() {
    let cli = Path::new("/x/cli.yaml");
    let env = env_of(&[("SSW_CONFIG_FILE", "/x/env.yaml")]);
    assert_eq!(
        resolve_config_path(Some(cli), &env),
        (cli.to_path_buf(), PathSource::Cli)
    );
    assert_eq!(
        resolve_config_path(None, &env),
        (PathBuf::from("/x/env.yaml"), PathSource::EnvConfigFile)
    );
    assert_eq!(
        resolve_config_path(None, &env_of(&[("SSW_CONFIG_FILE", "")])),
        (PathBuf::from(DEFAULT_CONFIG_PATH), PathSource::Default)
    );
    assert_eq!(DEFAULT_CONFIG_PATH, "/app/configs/config.yaml");
}

// ---------------------------------------------------------------------------------------------
// The sample shipped with the project.

/// Every key the loader reads; the sample must show each one.
const KEYS_READ: &[&str] = &[
    "app.name",
    "app.version",
    "app.environment",
    "app.log_level",
    "app.log_format",
    "app.default_configs",
    "app.io_engine",
    "server.enabled",
    "server.host",
    "server.port",
    "metrics.enabled",
    "metrics.host",
    "metrics.port",
    "metrics.path",
    "container_monitor.enabled",
    "container_monitor.socket_path",
    "container_monitor.health_check_delay",
    "container_monitor.reconnect_interval",
    "container_monitor.max_concurrent",
    "container_monitor.include_names",
    "container_monitor.exclude_names",
    "container_monitor.include_labels",
    "container_monitor.exclude_labels",
    "container_monitor.include_stdout",
    "container_monitor.include_stderr",
    "container_monitor.stream_rotation_interval",
    "container_monitor.stream_idle_timeout",
    "container_monitor.since_overlap",
    "container_monitor.new_containers_from",
    "file_monitor_service.enabled",
    "file_monitor_service.pipeline_file",
    "file_monitor_service.poll_interval",
    "file_monitor_service.read_interval",
    "file_monitor_service.read_buffer_size",
    "file_monitor_service.recursive",
    "file_monitor_service.follow_symlinks",
    "file_monitor_service.inotify",
    "files_config.watch_directories",
    "files_config.include_patterns",
    "files_config.exclude_patterns",
    "files_config.exclude_directories",
    "dispatcher.queue_size",
    "dispatcher.batch_size",
    "dispatcher.batch_timeout",
    "sinks.local_file.enabled",
    "sinks.local_file.directory",
    "sinks.local_file.filename_pattern",
    "sinks.local_file.filename_pattern_files",
    "sinks.local_file.filename_pattern_containers",
    "sinks.local_file.output_format",
    "sinks.local_file.text_format.include_timestamp",
    "sinks.local_file.text_format.timestamp_format",
    "sinks.local_file.text_format.include_labels",
    "sinks.local_file.text_format.field_separator",
    "sinks.local_file.text_format.raw_message_only",
    "sinks.local_file.queue_size",
    "sinks.loki.enabled",
    "sinks.loki.url",
    "sinks.loki.push_endpoint",
    "sinks.loki.tenant_id",
    "sinks.loki.timeout",
    "sinks.loki.batch_size",
    "sinks.loki.batch_timeout",
    "sinks.loki.queue_size",
    "sinks.loki.headers",
    "sinks.loki.default_labels",
    "sinks.loki.auth.type",
    "sinks.loki.auth.username",
    "sinks.loki.auth.password",
    "sinks.loki.auth.token",
    "sinks.stdout.enabled",
    "sinks.blackhole.enabled",
    "positions.enabled",
    "positions.directory",
    "positions.flush_interval",
    "positions.cleanup_interval",
    "positions.max_position_age",
];

#[test]
fn sample_config_loads_and_shows_every_key() {
    let (c, r) = Config::load_from(&sample(), &no_env).expect("configs/config.yaml loads");
    assert!(r.unknown_keys.is_empty(), "{:?}", r.unknown_keys);
    assert!(c.sinks.local_file.enabled && !c.sinks.loki.enabled);

    let text = std::fs::read_to_string(sample()).unwrap();
    let tree: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    for key in KEYS_READ {
        let mut node = &tree;
        for part in key.split('.') {
            node = node
                .get(part)
                .unwrap_or_else(|| panic!("configs/config.yaml does not show {key}"));
        }
    }
    // Apart from the Loki switch, the sample states the defaults.
    let mut expected = Config::defaults();
    expected.sinks.loki.enabled = false;
    assert_eq!(c, expected);
}

// ---------------------------------------------------------------------------------------------
// default_configs

#[test]
fn empty_file_gets_every_default() {
    let (c, r) = load_str("", &no_env).unwrap();
    assert!(r.defaults_applied);
    assert_eq!(c, Config::defaults());
    assert_eq!(c.app.name, "ssw-logs-capture");
    assert_eq!(c.app.version, "v0.0.2");
    assert!(c.server.enabled && c.server.port == 8401 && c.server.host == "0.0.0.0");
    assert!(c.metrics.enabled && c.metrics.port == 8001);
    assert!(c.container_monitor.enabled);
    assert_eq!(c.container_monitor.socket_path, DEFAULT_DOCKER_SOCKET);
    assert_eq!(c.container_monitor.max_concurrent, 50);
    assert_eq!(c.dispatcher.queue_size, 10_000);
    assert_eq!(c.dispatcher.batch_size, 100);
    assert_eq!(c.dispatcher.batch_timeout, secs(5));
    assert!(c.sinks.loki.enabled && c.sinks.local_file.enabled);
    assert_eq!(c.sinks.loki.batch_size, 1000);
    assert!(c.positions.enabled);
    assert_eq!(c.positions.directory, PathBuf::from("/app/data/positions"));
    assert_eq!(c.positions.flush_interval, secs(30));
    assert!(!c.file_monitor.enabled);
    // A comment-only file is the same as an empty one.
    assert_eq!(load_str("# nothing\n", &no_env).unwrap().0, c);
}

const MINIMAL_OFF: &str = "
app:
  default_configs: false
dispatcher:
  queue_size: 10
  batch_size: 5
sinks:
  stdout:
    enabled: true
";

#[test]
fn default_configs_false_uses_only_the_file() {
    let (c, r) = load_str(MINIMAL_OFF, &no_env).unwrap();
    assert!(!r.defaults_applied && !c.app.default_configs);
    assert_eq!(c.app.name, "");
    assert_eq!(c.app.version, "");
    assert!(!c.server.enabled);
    assert_eq!(c.server.port, 0);
    assert!(!c.metrics.enabled);
    assert!(!c.container_monitor.enabled);
    assert_eq!(c.container_monitor.socket_path, "");
    assert_eq!(c.container_monitor.max_concurrent, 0);
    assert!(!c.sinks.loki.enabled && !c.sinks.local_file.enabled);
    assert_eq!(c.sinks.loki.url, "");
    assert_eq!(c.sinks.loki.batch_size, 0);
    assert!(!c.positions.enabled);
    assert_eq!(c.positions.directory, PathBuf::new());
    assert_eq!((c.dispatcher.queue_size, c.dispatcher.batch_size), (10, 5));
    assert!(c.sinks.stdout.enabled);
    // Ours and the Go runtime fallbacks stay.
    assert_eq!(c.app.io_engine, IoEngine::Auto);
    assert_eq!(c.app.log_level, LogLevel::Info);
    assert_eq!(c.container_monitor.stream_rotation_interval, secs(30));
    assert_eq!(c.dispatcher.batch_timeout, secs(5));
    assert_eq!(c.sinks.loki.push_endpoint, DEFAULT_LOKI_PUSH_ENDPOINT);
    assert_eq!(c.sinks.loki.timeout, secs(30));
    assert_eq!(c.sinks.loki.batch_timeout, secs(10));
    assert_eq!(c.sinks.local_file.output_format, OutputFormat::Json);
    assert_eq!(c.positions.flush_interval, secs(30));
}

#[test]
fn default_configs_false_without_dispatcher_is_refused_as_in_go() {
    let err = load_str("app:\n  default_configs: false\n", &no_env).unwrap_err();
    assert_eq!(err.key(), Some("dispatcher.queue_size"), "{err}");
    assert!(err.to_string().contains("test.yaml"), "{err}");
}

#[test]
fn ssw_default_configs_wins_over_the_file() {
    let on = env_of(&[("SSW_DEFAULT_CONFIGS", "true")]);
    let (c, r) = load_str("app:\n  default_configs: false\n", &on).unwrap();
    assert!(r.defaults_applied);
    assert!(c.container_monitor.enabled && c.sinks.loki.enabled);

    let off = env_of(&[("SSW_DEFAULT_CONFIGS", "false")]);
    let yaml = MINIMAL_OFF.replace("default_configs: false", "default_configs: true");
    let (c, r) = load_str(&yaml, &off).unwrap();
    assert!(!r.defaults_applied);
    assert!(!c.container_monitor.enabled);

    let bad = env_of(&[("SSW_DEFAULT_CONFIGS", "maybe")]);
    let err = load_str("", &bad).unwrap_err();
    assert_eq!(err.key(), Some("SSW_DEFAULT_CONFIGS"));
    assert!(err.to_string().contains("SSW_DEFAULT_CONFIGS"), "{err}");
}

#[test]
fn defaults_replace_go_zero_values_but_not_our_zero_off() {
    let yaml = "
server:
  port: 0
  host: \"\"
sinks:
  loki:
    url: \"\"
    batch_size: 0
container_monitor:
  stream_rotation_interval: 0
  stream_idle_timeout: \"0s\"
";
    let (c, _) = load_str(yaml, &no_env).unwrap();
    assert_eq!(c.server.port, 8401);
    assert_eq!(c.server.host, "0.0.0.0");
    assert_eq!(c.sinks.loki.url, "http://loki:3100");
    assert_eq!(c.sinks.loki.batch_size, 1000);
    assert_eq!(c.container_monitor.stream_rotation_interval, Duration::ZERO);
    assert_eq!(c.container_monitor.stream_idle_timeout, Duration::ZERO);
}

#[test]
fn explicit_false_is_respected_with_defaults_and_reported() {
    let yaml = "sinks:\n  loki:\n    enabled: false\n";
    let (c, r) = load_str(yaml, &no_env).unwrap();
    assert!(!c.sinks.loki.enabled);
    assert!(c.sinks.local_file.enabled);
    assert!(
        r.differences.iter().any(|d| d.key == "sinks.loki.enabled"),
        "{:?}",
        r.differences
    );
}

// ---------------------------------------------------------------------------------------------
// Environment overrides

type Check = fn(&Config) -> bool;

/// (variable, value, check on the resulting config)
const ENV_CASES: &[(&str, &str, Check)] = &[
    ("SSW_APP_NAME", "cap-1", |c| c.app.name == "cap-1"),
    ("SSW_APP_VERSION", "v9", |c| c.app.version == "v9"),
    ("SSW_APP_ENVIRONMENT", "staging", |c| {
        c.app.environment == "staging"
    }),
    ("SSW_LOG_LEVEL", "warn", |c| {
        c.app.log_level == LogLevel::Warn
    }),
    ("SSW_LOG_FORMAT", "text", |c| {
        c.app.log_format == LogFormat::Text
    }),
    ("SSW_IO_ENGINE", "epoll", |c| {
        c.app.io_engine == IoEngine::Epoll
    }),
    ("SSW_SERVER_ENABLED", "false", |c| !c.server.enabled),
    ("SSW_SERVER_HOST", "127.0.0.1", |c| {
        c.server.host == "127.0.0.1"
    }),
    ("SSW_SERVER_PORT", "9401", |c| c.server.port == 9401),
    ("SSW_SERVER_AUTH_TOKEN", "t0ken", |c| {
        c.server.auth_token == "t0ken"
    }),
    ("SSW_METRICS_ENABLED", "false", |c| !c.metrics.enabled),
    ("SSW_METRICS_HOST", "127.0.0.1", |c| {
        c.metrics.host == "127.0.0.1"
    }),
    ("SSW_METRICS_PORT", "9001", |c| c.metrics.port == 9001),
    ("SSW_METRICS_PATH", "/m", |c| c.metrics.path == "/m"),
    ("SSW_DISPATCHER_QUEUE_SIZE", "123", |c| {
        c.dispatcher.queue_size == 123
    }),
    ("SSW_DISPATCHER_MAX_QUEUE_BYTES", "1048576", |c| {
        c.dispatcher.max_queue_bytes == 1 << 20
    }),
    ("SSW_DISPATCHER_BATCH_SIZE", "7", |c| {
        c.dispatcher.batch_size == 7
    }),
    ("SSW_DISPATCHER_BATCH_TIMEOUT", "250ms", |c| {
        c.dispatcher.batch_timeout == Duration::from_millis(250)
    }),
    ("SSW_LOKI_ENABLED", "false", |c| !c.sinks.loki.enabled),
    ("SSW_LOKI_URL", "https://loki.example", |c| {
        c.sinks.loki.url == "https://loki.example"
    }),
    ("SSW_LOKI_BATCH_SIZE", "50", |c| {
        c.sinks.loki.batch_size == 50
    }),
    ("SSW_LOKI_BATCH_TIMEOUT", "1.5s", |c| {
        c.sinks.loki.batch_timeout == Duration::from_millis(1500)
    }),
    ("SSW_LOKI_TIMEOUT", "1m", |c| {
        c.sinks.loki.timeout == secs(60)
    }),
    ("SSW_LOKI_TENANT_ID", "acme", |c| {
        c.sinks.loki.tenant_id == "acme"
    }),
    ("SSW_LOKI_USER", "bob", |c| {
        c.sinks.loki.auth.kind == AuthType::Basic && c.sinks.loki.auth.username == "bob"
    }),
    ("SSW_LOKI_PASSWORD", "pw", |c| {
        c.sinks.loki.auth.password == "pw"
    }),
    ("SSW_LOKI_TOKEN", "tok", |c| {
        c.sinks.loki.auth.kind == AuthType::Bearer && c.sinks.loki.auth.token == "tok"
    }),
    ("SSW_LOKI_HEADERS", "X-A=1, X-B=two=2,X-C", |c| {
        c.sinks.loki.headers == map(&[("X-A", "1"), ("X-B", "two=2"), ("X-C", "")])
    }),
    ("SSW_LOKI_LABELS", "env=prod,team=core", |c| {
        c.sinks.loki.default_labels == map(&[("env", "prod"), ("team", "core")])
    }),
    ("SSW_LOCAL_FILE_ENABLED", "false", |c| {
        !c.sinks.local_file.enabled
    }),
    ("SSW_LOCAL_FILE_DIRECTORY", "/data/out", |c| {
        c.sinks.local_file.directory == Path::new("/data/out")
    }),
    ("SSW_LOCAL_FILE_FORMAT", "json", |c| {
        c.sinks.local_file.output_format == OutputFormat::Json
    }),
    ("SSW_STDOUT_ENABLED", "true", |c| c.sinks.stdout.enabled),
    ("SSW_BLACKHOLE_ENABLED", "1", |c| c.sinks.blackhole.enabled),
    ("SSW_CONTAINER_MONITOR_ENABLED", "false", |c| {
        !c.container_monitor.enabled
    }),
    ("SSW_DOCKER_SOCKET", "unix:///run/d.sock", |c| {
        c.container_monitor.socket_path == "unix:///run/d.sock"
    }),
    ("SSW_STREAM_ROTATION_INTERVAL", "0", |c| {
        c.container_monitor.stream_rotation_interval == Duration::ZERO
    }),
    ("SSW_STREAM_IDLE_TIMEOUT", "90", |c| {
        c.container_monitor.stream_idle_timeout == secs(90)
    }),
    ("SSW_FILE_MONITOR_ENABLED", "false", |c| {
        !c.file_monitor.enabled
    }),
    ("SSW_FILE_PIPELINE", "/etc/fp.yml", |c| {
        c.file_monitor.pipeline_file.as_deref() == Some(Path::new("/etc/fp.yml"))
    }),
    ("SSW_POSITIONS_DIRECTORY", "/var/lib/pos", |c| {
        c.positions.directory == Path::new("/var/lib/pos")
    }),
    ("SSW_PIPELINES_FILE", "/etc/p.yaml", |c| {
        c.processing.pipelines_file == Path::new("/etc/p.yaml")
    }),
];

#[test]
fn every_env_override_applies_over_the_file() {
    let base = Config::load_from(&fixture("go_config.yaml"), &no_env)
        .unwrap()
        .0;
    for (var, value, check) in ENV_CASES {
        let env = env_of(&[(var, value)]);
        let (c, r) = Config::load_from(&fixture("go_config.yaml"), &env)
            .unwrap_or_else(|e| panic!("{var}={value}: {e}"));
        assert!(check(&c), "{var}={value} not applied");
        assert!(
            !check(&base),
            "{var}: the fixture already satisfies the check"
        );
        assert_eq!(r.env_applied, vec![var.to_string()], "{var}");
    }
}

#[test]
fn env_table_covers_every_documented_override() {
    for var in ENV_OVERRIDES {
        assert!(
            ENV_CASES.iter().any(|(v, _, _)| v == var),
            "{var} has no test case"
        );
    }
}

#[test]
fn empty_env_values_are_unset() {
    let env = env_of(&[("SSW_SERVER_PORT", ""), ("SSW_LOKI_URL", "  ")]);
    let (c, r) = Config::load_from(&fixture("go_config.yaml"), &env).unwrap();
    assert_eq!(c.server.port, 8401);
    assert_eq!(c.sinks.loki.url, "http://loki:3100");
    assert!(r.env_applied.is_empty());
}

#[test]
fn bad_env_values_are_errors_naming_the_variable() {
    let cases = [
        ("SSW_SERVER_PORT", "abc"),
        ("SSW_SERVER_PORT", "70000"),
        ("SSW_SERVER_ENABLED", "sometimes"),
        ("SSW_METRICS_PORT", "-1"),
        ("SSW_DISPATCHER_QUEUE_SIZE", "lots"),
        ("SSW_DISPATCHER_BATCH_TIMEOUT", "abc"),
        ("SSW_LOKI_BATCH_TIMEOUT", "10 seconds"),
        ("SSW_LOKI_TIMEOUT", "-5s"),
        ("SSW_LOKI_ENABLED", "yes please"),
        ("SSW_LOKI_HEADERS", "=novalue"),
        ("SSW_LOG_LEVEL", "loud"),
        ("SSW_LOG_FORMAT", "xml"),
        ("SSW_IO_ENGINE", "kqueue"),
        ("SSW_LOCAL_FILE_FORMAT", "csvx"),
        ("SSW_STREAM_ROTATION_INTERVAL", "often"),
    ];
    for (var, value) in cases {
        let env = env_of(&[(var, value)]);
        let err = Config::load_from(&fixture("go_config.yaml"), &env).unwrap_err();
        assert!(
            matches!(err, ConfigError::Env { .. }),
            "{var}={value}: {err}"
        );
        assert_eq!(err.key(), Some(var));
        let text = err.to_string();
        assert!(text.contains(var) && text.contains(value), "{text}");
    }
}

#[test]
fn docker_host_replaces_only_the_default_socket() {
    let env = env_of(&[("DOCKER_HOST", "unix:///tmp/dind.sock")]);
    let (c, r) = load_str("", &env).unwrap();
    assert_eq!(c.container_monitor.socket_path, "unix:///tmp/dind.sock");
    assert!(r.docker_host_used);

    let yaml = "container_monitor:\n  socket_path: unix:///var/run/docker.sock\n";
    assert_eq!(
        load_str(yaml, &env)
            .unwrap()
            .0
            .container_monitor
            .socket_path,
        "unix:///tmp/dind.sock"
    );

    let yaml = "container_monitor:\n  socket_path: /srv/docker.sock\n";
    let (c, r) = load_str(yaml, &env).unwrap();
    assert_eq!(c.container_monitor.socket_path, "/srv/docker.sock");
    assert!(!r.docker_host_used);

    let env = env_of(&[
        ("DOCKER_HOST", "unix:///tmp/dind.sock"),
        ("SSW_DOCKER_SOCKET", "unix:///x.sock"),
    ]);
    assert_eq!(
        load_str("", &env).unwrap().0.container_monitor.socket_path,
        "unix:///x.sock"
    );
}

#[test]
fn ignored_go_env_vars_are_reported() {
    let env = env_of(&[("SSW_DISPATCHER_WORKER_COUNT", "8")]);
    let (_, r) = load_str("", &env).unwrap();
    assert!(r
        .differences
        .iter()
        .any(|d| d.key == "SSW_DISPATCHER_WORKER_COUNT"));
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn unreadable_file_is_an_error_naming_it() {
    let path = Path::new("/nonexistent/dir/config.yaml");
    let err = Config::load_from(path, &no_env).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().contains("/nonexistent/dir/config.yaml"),
        "{err}"
    );
}

#[test]
fn invalid_yaml_is_an_error_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("cfg-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.yaml");
    std::fs::write(&path, "app:\n  name: [unclosed\nserver: {\n").unwrap();
    let err = Config::load_from(&path, &no_env).unwrap_err();
    std::fs::remove_dir_all(&dir).ok();
    assert!(matches!(err, ConfigError::Yaml { .. }), "{err}");
    assert!(err.to_string().contains("broken.yaml"), "{err}");
    assert!(
        err.to_string().contains("line"),
        "position of the error: {err}"
    );

    let err = load_str("- just\n- a list\n", &no_env).unwrap_err();
    assert!(err.to_string().contains("mapping"), "{err}");
}

#[test]
fn bad_duration_names_file_key_and_expectation() {
    let err = load_str("sinks:\n  loki:\n    batch_timeout: abc\n", &no_env).unwrap_err();
    assert_eq!(err.key(), Some("sinks.loki.batch_timeout"));
    let text = err.to_string();
    assert!(text.contains("test.yaml"), "{text}");
    assert!(text.contains("sinks.loki.batch_timeout"), "{text}");
    assert!(text.contains("expected a duration like \"30s\""), "{text}");
    assert!(text.contains("got \"abc\""), "{text}");
}

#[test]
fn wrong_types_name_the_key() {
    let cases = [
        ("server:\n  port: eighty\n", "server.port"),
        ("server:\n  port: 70000\n", "server.port"),
        ("server:\n  enabled: perhaps\n", "server.enabled"),
        ("sinks: 5\n", "sinks"),
        (
            "container_monitor:\n  include_labels: 3\n",
            "container_monitor.include_labels",
        ),
        (
            "container_monitor:\n  exclude_names: {a: 1}\n",
            "container_monitor.exclude_names",
        ),
        ("dispatcher:\n  queue_size: -1\n", "dispatcher.queue_size"),
        (
            "positions:\n  flush_interval: [1]\n",
            "positions.flush_interval",
        ),
        ("app:\n  io_engine: kqueue\n", "app.io_engine"),
        ("app:\n  log_level: loud\n", "app.log_level"),
        (
            "sinks:\n  loki:\n    auth:\n      type: oauth\n",
            "sinks.loki.auth.type",
        ),
        (
            "sinks:\n  local_file:\n    output_format: xml\n",
            "sinks.local_file.output_format",
        ),
        (
            "sinks:\n  loki:\n    headers:\n      X-A: [1]\n",
            "sinks.loki.headers.X-A",
        ),
    ];
    for (yaml, key) in cases {
        let err = load_str(yaml, &no_env).unwrap_err();
        assert_eq!(err.key(), Some(key), "{yaml}: {err}");
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn validation_errors_name_the_key() {
    let cases = [
        ("sinks:\n  loki:\n    url: ftp://x\n", "sinks.loki.url"),
        ("metrics:\n  port: 8401\n", "metrics.port"),
        (
            "container_monitor:\n  include_stdout: false\n  include_stderr: false\n",
            "container_monitor.include_stdout",
        ),
        (
            "sinks:\n  loki: {enabled: false}\n  local_file: {enabled: false}\n",
            "sinks",
        ),
    ];
    for (yaml, key) in cases {
        let err = load_str(yaml, &no_env).unwrap_err();
        assert_eq!(err.key(), Some(key), "{yaml}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Leniency

#[test]
fn unknown_keys_are_reported_not_fatal() {
    let yaml = "
app:
  name: x
  bogus: 1
brand_new_section:
  a: {b: 1}
sinks:
  loki:
    mystery: true
";
    let (c, r) = load_str(yaml, &no_env).unwrap();
    assert_eq!(c.app.name, "x");
    assert_eq!(
        r.unknown_keys,
        vec!["app.bogus", "brand_new_section", "sinks.loki.mystery"]
    );
}

#[test]
fn go_lenient_scalars_are_accepted() {
    let yaml = "
server:
  enabled: \"true\"
  port: \"9000\"
container_monitor:
  health_check_delay: 45
  reconnect_interval: 1.5
  include_names: web
  include_labels:
    - com.docker.compose.service
sinks:
  loki:
    labels: {a: \"1\", b: \"2\"}
    default_labels: {b: \"3\"}
    auth:
      type: BASIC
base: &base
  x: 1
";
    let (c, r) = load_str(yaml, &no_env).unwrap();
    assert!(c.server.enabled);
    assert_eq!(c.server.port, 9000);
    assert_eq!(c.container_monitor.health_check_delay, secs(45));
    assert_eq!(
        c.container_monitor.reconnect_interval,
        Duration::from_millis(1500)
    );
    assert_eq!(c.container_monitor.include_names, vec!["web".to_string()]);
    assert_eq!(
        c.container_monitor.include_labels,
        map(&[("com.docker.compose.service", "")])
    );
    assert_eq!(c.sinks.loki.default_labels, map(&[("a", "1"), ("b", "3")]));
    assert_eq!(c.sinks.loki.auth.kind, AuthType::Basic);
    assert!(r
        .differences
        .iter()
        .any(|d| d.key == "container_monitor.include_labels"));
}

// ---------------------------------------------------------------------------------------------
// /config

#[test]
fn redacted_json_hides_secrets_and_formats_durations() {
    let env = env_of(&[
        ("SSW_LOKI_USER", "bob"),
        ("SSW_LOKI_PASSWORD", "s3cr3t-pw"),
        (
            "SSW_LOKI_HEADERS",
            "Authorization=Bearer t0k3n,User-Agent=cap",
        ),
        ("SSW_LOKI_URL", "https://bob:urlpass@loki.example"),
    ]);
    let (c, _) = Config::load_from(&fixture("go_config.yaml"), &env).unwrap();
    let json = c.redacted_json();
    let text = json.to_string();
    for secret in ["s3cr3t-pw", "t0k3n", "urlpass"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let loki = &json["sinks"]["loki"];
    assert_eq!(loki["auth"]["password"], "***");
    assert_eq!(loki["auth"]["username"], "bob");
    assert_eq!(loki["auth"]["type"], "basic");
    assert_eq!(loki["headers"]["Authorization"], "***");
    assert_eq!(loki["headers"]["User-Agent"], "cap");
    assert_eq!(loki["url"], "https://bob:***@loki.example");
    assert_eq!(loki["batch_timeout"], "40s");
    assert_eq!(json["container_monitor"]["stream_idle_timeout"], "5m0s");
    assert_eq!(json["server"]["port"], 8401);
    assert_eq!(json["app"]["io_engine"], "auto");
    // The config itself keeps the real values for the sinks.
    assert_eq!(c.sinks.loki.auth.password, "s3cr3t-pw");
}

// ---------------------------------------------------------------------------------------------
// Start-up messages an operator can act on (issue 10, section 4).

#[test]
fn misspelt_keys_are_reported_with_the_closest_known_key() {
    let yaml = "container_monitr:\n  enabled: true\ndispatcher:\n  queue_sise: 10\n  \
                batch_size: 5\nsinks:\n  stdout:\n    enabeld: true\n  \
                lokki:\n    url: http://x\n";
    let (_, r) = load_str(yaml, &no_env).unwrap();
    let got: Vec<(&str, &str)> = r
        .misspellings
        .iter()
        .map(|m| (m.key.as_str(), m.closest.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("container_monitr", "container_monitor"),
            ("dispatcher.queue_sise", "dispatcher.queue_size"),
            ("sinks.stdout.enabeld", "sinks.stdout.enabled"),
            ("sinks.lokki", "sinks.loki"),
        ]
    );
    // Still only a warning: the keys are unknown, the file loads.
    assert!(r.unknown_keys.iter().any(|k| k == "dispatcher.queue_sise"));
}

#[test]
fn keys_far_from_any_known_key_or_already_present_are_not_called_typos() {
    // `dispatcher.queue_size` is present, so `queue_sizes` is something else; `hot_reloads` is
    // near a Go section of its own (not implemented here); `server.read_timeout` is a real Go key.
    let yaml = "dispatcher:\n  queue_size: 10\n  queue_sizes: 3\nhot_reloads:\n  enabled: false\n\
                server:\n  read_timeout: 30s\n";
    let (_, r) = load_str(yaml, &no_env).unwrap();
    assert!(r.misspellings.is_empty(), "{:?}", r.misspellings);
}

#[test]
fn an_enabled_sink_that_is_not_implemented_stops_the_load() {
    for sink in ["kafka", "elasticsearch", "splunk"] {
        let yaml = format!("sinks:\n  {sink}:\n    enabled: true\n    url: http://x\n");
        let err = load_str(&yaml, &no_env).unwrap_err();
        let key = format!("sinks.{sink}.enabled");
        assert_eq!(err.key(), Some(key.as_str()), "{err}");
        let text = err.to_string();
        assert!(
            text.contains(&key) && text.contains("not implemented"),
            "{text}"
        );
        // Disabled, it is only an unknown key, as before.
        let yaml = format!("sinks:\n  {sink}:\n    enabled: false\n");
        let (_, r) = load_str(&yaml, &no_env).unwrap();
        assert!(r.unknown_keys.contains(&format!("sinks.{sink}")));
    }
}

#[test]
fn a_docker_endpoint_that_is_not_a_unix_socket_is_refused_naming_its_source() {
    let env = env_of(&[("DOCKER_HOST", "tcp://10.0.0.1:2375")]);
    let err = load_str("", &env).unwrap_err();
    assert_eq!(err.key(), Some("DOCKER_HOST"), "{err}");
    assert!(err.to_string().contains("tcp://10.0.0.1:2375"), "{err}");

    let env = env_of(&[("SSW_DOCKER_SOCKET", "ssh://host")]);
    assert_eq!(
        load_str("", &env).unwrap_err().key(),
        Some("SSW_DOCKER_SOCKET")
    );

    let yaml = "container_monitor:\n  socket_path: tcp://10.0.0.1:2375\n";
    let err = load_str(yaml, &no_env).unwrap_err();
    assert_eq!(err.key(), Some("container_monitor.socket_path"), "{err}");

    // No container monitor, no Docker endpoint needed.
    let env = env_of(&[
        ("DOCKER_HOST", "tcp://10.0.0.1:2375"),
        ("SSW_CONTAINER_MONITOR_ENABLED", "false"),
    ]);
    let (c, _) = load_str("", &env).unwrap();
    assert!(!c.container_monitor.enabled);
}

#[test]
fn since_overlap_defaults_to_one_second_and_is_configurable() {
    let (c, _) = load_str("", &no_env).unwrap();
    assert_eq!(c.container_monitor.since_overlap, secs(1));
    let (c, r) = load_str("container_monitor:\n  since_overlap: \"3s\"\n", &no_env).unwrap();
    assert_eq!(c.container_monitor.since_overlap, secs(3));
    assert!(r.unknown_keys.is_empty(), "{:?}", r.unknown_keys);
    let err = load_str("container_monitor:\n  since_overlap: soon\n", &no_env).unwrap_err();
    assert_eq!(err.key(), Some("container_monitor.since_overlap"), "{err}");
}
