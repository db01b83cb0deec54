//! Processing pipelines (`processing:` and the Go team's `pipelines.yaml`): each entry goes
//! through the steps of its source's pipeline once, after its source built it and before it
//! is queued.
//!
//! - [`load`]: the pipelines file, compiled once at start (regexes, time layouts, templates);
//!   errors name the file, pipeline, step and key.
//! - [`go_regex`]: its regexes read with Go's meaning (ASCII `\d \w \s \b`).
//! - [`keywords`]: `(?i)\b(info|error|...)\b`, the level patterns, matched by a word scan
//!   that finds what the regex would.
//! - [`mapping`]: `source_mapping`, which pipeline a source goes through, chosen once per
//!   source ([`Processor::select`]).
//! - [`steps`]: `regex_extract`, `field_add`, `field_remove`, `timestamp_parse`,
//!   `log_level_extract`, `json_parse` on a working copy of the entry ([`Processor::apply`]).
//! - [`multiline`]: the `multiline` step (first step only), joining lines per source and
//!   stream; the source holds a [`Grouper`] and releases groups with their position.
//!
//! Fields are written into the entry's [`Fields`](crate::pipeline::entry::Fields), beside its
//! source's shared labels, and sinks read the two as one set of labels, as Go did: the file
//! sink writes them under `labels`, the Loki sink makes them stream labels after its drop
//! list and sanitizing.
//! A line is never dropped here. When a step fails (`timestamp_parse` on text that is no
//! time, `json_parse` on text that is not a JSON object), the line is counted and goes out as
//! it came (`skip_failed_logs: true`) or with that step skipped (`false`).
//!
//! Any source calls the same two functions: `select` when it learns of a source, `apply` on
//! each entry (or each joined group) it finishes.

pub mod go_regex;
pub mod keywords;
pub mod load;
pub mod mapping;
pub mod multiline;
pub mod steps;
pub mod template;
pub mod timefmt;

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;

pub use load::{LoadError, Pipeline};
pub use mapping::Source;
pub use multiline::{Grouper, MultilineSpec, Released};

use crate::config::ProcessingConfig;
use crate::pipeline::entry::LogEntry;

/// A pipeline chosen for a source.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PipelineId(usize);

/// Counters, shared with metrics and tests.
#[derive(Debug, Default)]
pub struct ProcessingStats {
    /// Entries that went through a pipeline (a joined group counts once).
    pub entries: AtomicU64,
    /// Entries on which a step failed.
    pub failed: AtomicU64,
    /// Lines joined into another line's entry by `multiline`.
    pub joined: AtomicU64,
}

pub struct Processor {
    pipelines: Vec<Pipeline>,
    rules: Vec<mapping::Rule>,
    default: Option<usize>,
    skip_failed: bool,
    stats: Arc<ProcessingStats>,
    /// Per pipeline and step: a failure was logged already (one warning per step).
    warned: Vec<Vec<AtomicBool>>,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.pipelines.iter().map(|p| p.name.as_str()).collect();
        f.debug_struct("Processor")
            .field("pipelines", &names)
            .finish()
    }
}

impl Processor {
    /// The processor `config` asks for: `None` when processing is off.
    pub fn from_config(config: &ProcessingConfig) -> Result<Option<Processor>, LoadError> {
        if !config.enabled {
            return Ok(None);
        }
        let loaded = load::load_file(&config.pipelines_file)?;
        for w in &loaded.warnings {
            tracing::warn!("{}: {w}", config.pipelines_file.display());
        }
        Ok(Some(Processor::new(loaded, config.skip_failed_logs)))
    }

    /// From the text of a pipelines file (`origin` names it in errors).
    pub fn from_str(text: &str, origin: &Path, skip_failed: bool) -> Result<Processor, LoadError> {
        Ok(Processor::new(load::load_str(text, origin)?, skip_failed))
    }

    fn new(loaded: load::Loaded, skip_failed: bool) -> Processor {
        let default = loaded.pipelines.iter().position(|p| p.name == "default");
        let warned = loaded
            .pipelines
            .iter()
            .map(|p| p.steps.iter().map(|_| AtomicBool::new(false)).collect())
            .collect();
        Processor {
            pipelines: loaded.pipelines,
            rules: loaded.rules,
            default,
            skip_failed,
            stats: Arc::default(),
            warned,
        }
    }

    pub fn stats(&self) -> &Arc<ProcessingStats> {
        &self.stats
    }

    pub fn pipelines(&self) -> &[Pipeline] {
        &self.pipelines
    }

    /// The pipeline of a source (see [`mapping`]); `None`: its entries are not processed.
    pub fn select(&self, source: &Source<'_>) -> Option<PipelineId> {
        mapping::select(&self.rules, source)
            .or(self.default)
            .map(PipelineId)
    }

    pub fn name(&self, id: PipelineId) -> &str {
        &self.pipelines[id.0].name
    }

    /// The pipeline's `multiline` step: the source then groups lines in a [`Grouper`] and
    /// calls [`Processor::apply`] on each released entry.
    pub fn multiline(&self, id: PipelineId) -> Option<&MultilineSpec> {
        self.pipelines[id.0].multiline.as_ref()
    }

    /// The entries a [`Grouper`] released (each a whole group), through pipeline `id` into
    /// `out`; the lines joined into them are counted. Every source with groups calls this.
    pub fn apply_released(
        &self,
        id: Option<PipelineId>,
        entries: Vec<LogEntry>,
        lines: u64,
        source_path: &str,
        out: &mut Vec<LogEntry>,
    ) {
        self.stats
            .joined
            .fetch_add(lines - entries.len() as u64, Relaxed);
        for mut entry in entries {
            if let Some(id) = id {
                self.apply(id, &mut entry, source_path);
            }
            out.push(entry);
        }
    }

    /// Runs the pipeline's steps on one entry. `source_path`: a monitored file's path (for
    /// `{{source_path}}`), "" for containers.
    pub fn apply(&self, id: PipelineId, entry: &mut LogEntry, source_path: &str) {
        let pipeline = &self.pipelines[id.0];
        self.stats.entries.fetch_add(1, Relaxed);
        // Taken, not cloned: the entry's message and labels are reference-counted, and a
        // count written at every line showed in the profile.
        let bytes = std::mem::take(&mut entry.message);
        // What a failed step leaves behind is undone (`skip_failed_logs`): a copy of the
        // fields the source set, which is nothing (no copy) for every source but the ingest.
        let original = (!entry.fields.is_empty()).then(|| entry.fields.clone());
        let mut work = steps::Work {
            message: text(&bytes),
            labels: &entry.labels,
            fields: &mut entry.fields,
            timestamp_ns: entry.timestamp_ns,
            source_path,
        };
        let mut failed = false;
        for (i, step) in pipeline.steps.iter().enumerate() {
            if let Err(reason) = step.apply(&mut work) {
                if !failed {
                    failed = true;
                    self.stats.failed.fetch_add(1, Relaxed);
                }
                if !self.warned[id.0][i].swap(true, Relaxed) {
                    tracing::warn!(
                        "pipeline {:?} step {:?} failed (reported once per step; counted in \
                         processing_failures_total): {reason}",
                        pipeline.name,
                        step.name
                    );
                }
                if self.skip_failed {
                    drop(work);
                    entry.fields = original.unwrap_or_default();
                    entry.message = bytes;
                    return;
                }
            }
        }
        entry.timestamp_ns = work.timestamp_ns;
        entry.message = match work.message {
            Cow::Owned(m) => Bytes::from(m),
            Cow::Borrowed(_) => bytes,
        };
    }
}

/// The message as text: borrowed when it is UTF-8 (`from_utf8` validates several times
/// faster than `from_utf8_lossy` walks it), else with U+FFFD for the bad bytes.
pub(crate) fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::StreamKind;
    use crate::pipeline::entry::Labels;

    fn entry(msg: &str, labels: &[(&str, &str)]) -> LogEntry {
        LogEntry {
            fields: Default::default(),
            timestamp_ns: 1,
            processed_at_ns: 2,
            message: Bytes::copy_from_slice(msg.as_bytes()),
            stream: StreamKind::Stdout,
            source_type: "docker",
            source_id: Arc::from("abc"),
            labels: Arc::new(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Labels>(),
            ),
        }
    }

    const FILE: &str = r#"
pipelines:
  - name: p
    steps:
      - name: ts
        type: timestamp_parse
        config: { field: t, format: "2006-01-02" }
      - name: add
        type: field_add
        config: { fields: { a: "x" } }
"#;

    #[test]
    fn a_failed_step_leaves_the_line_as_it_came_or_is_skipped() {
        for (skip, want_a) in [(true, None), (false, Some("x"))] {
            let p = Processor::from_str(FILE, Path::new("t.yaml"), skip).unwrap();
            let id = p.select(&Source {
                source_type: "docker",
                labels: &Labels::new(),
                path: None,
            });
            assert_eq!(id, None, "no mapping and no default pipeline");
            let mut e = entry("m", &[("t", "not a date")]);
            p.apply(PipelineId(0), &mut e, "");
            assert_eq!(e.label("a"), want_a);
            assert_eq!(e.label("t"), Some("not a date"));
            assert_eq!(p.stats().failed.load(Relaxed), 1);
        }
    }

    /// Steps never copy or change the source's label map: what they write goes in the
    /// entry's fields, and a line no step writes to has none.
    #[test]
    fn labels_are_never_copied() {
        let file = r#"
pipelines:
  - name: p
    steps:
      - name: lvl
        type: log_level_extract
        config: { pattern: 'level=(\w+)', field: level }
      - name: gone
        type: field_remove
        config: { fields: [absent] }
"#;
        let p = Processor::from_str(file, Path::new("t.yaml"), true).unwrap();
        let mut e = entry("no level here", &[("container_name", "web")]);
        let shared = e.labels.clone();
        p.apply(PipelineId(0), &mut e, "");
        assert!(Arc::ptr_eq(&e.labels, &shared), "copied though unchanged");
        assert!(e.fields.is_empty());
        let mut e = entry("level=WARN", &[("container_name", "web")]);
        let shared = e.labels.clone();
        p.apply(PipelineId(0), &mut e, "");
        assert_eq!(e.label("level"), Some("warn"));
        assert!(
            Arc::ptr_eq(&e.labels, &shared),
            "copied though a field was written"
        );
        assert_eq!(shared.get("level"), None);
    }

    /// A `{{message}}` field shares the message, yet keeps the text it was set from when a
    /// later step changes the message; invalid UTF-8 reads as the message written back.
    #[test]
    fn a_message_field_keeps_the_text_it_was_set_from() {
        let file = r#"
pipelines:
  - name: p
    steps:
      - name: keep
        type: field_add
        config: { fields: { msg: "{{message}}", loud: "{{ message }}!", c: "const" } }
      - name: strip
        type: regex_extract
        config: { pattern: '\x1b\[[0-9;]*m' }
"#;
        let p = Processor::from_str(file, Path::new("t.yaml"), true).unwrap();
        let mut e = entry("\u{1b}[31mred\u{1b}[0m", &[]);
        p.apply(PipelineId(0), &mut e, "");
        assert_eq!(&e.message[..], b"red");
        assert_eq!(e.label("msg"), Some("\u{1b}[31mred\u{1b}[0m"));
        assert_eq!(e.label("loud"), Some("\u{1b}[31mred\u{1b}[0m!"));
        assert_eq!(e.label("c"), Some("const"));
        let mut e = entry("plain", &[]);
        e.message = Bytes::from_static(b"a\xffb");
        p.apply(PipelineId(0), &mut e, "");
        assert_eq!(&e.message[..], "a\u{fffd}b".as_bytes());
        let view: Vec<(&str, &str)> = e.labels_iter().collect();
        assert_eq!(
            view,
            [
                ("c", "const"),
                ("loud", "a\u{fffd}b!"),
                ("msg", "a\u{fffd}b")
            ]
        );
    }

    /// Capture groups are kept as ranges of the message: they must read the same after a
    /// later step strips part of the message, and on a message that was not UTF-8.
    #[test]
    fn captured_fields_keep_their_text_when_the_message_changes() {
        let file = r#"
pipelines:
  - name: p
    steps:
      - name: parts
        type: regex_extract
        config: { pattern: '^(\S+) \[(\w+)\] (.+)$', fields: [who, level, rest] }
      - name: strip
        type: regex_extract
        config: { pattern: '\x1b\[[0-9;]*m' }
      - name: after
        type: regex_extract
        config: { pattern: '^(\S+)', fields: [first] }
"#;
        let p = Processor::from_str(file, Path::new("t.yaml"), true).unwrap();
        let mut e = entry("db1 [WARN] \u{1b}[31mdisk\u{1b}[0m at 91%", &[]);
        p.apply(PipelineId(0), &mut e, "");
        assert_eq!(&e.message[..], "db1 [WARN] disk at 91%".as_bytes());
        let view: Vec<(&str, &str)> = e.labels_iter().collect();
        assert_eq!(
            view,
            [
                ("first", "db1"),
                ("level", "WARN"),
                ("rest", "\u{1b}[31mdisk\u{1b}[0m at 91%"),
                ("who", "db1")
            ]
        );
        let mut e = entry("", &[]);
        e.message = Bytes::from_static(b"h\xff [E] x");
        p.apply(PipelineId(0), &mut e, "");
        assert_eq!(e.label("who"), Some("h\u{fffd}"));
        assert_eq!(e.label("rest"), Some("x"));
    }

    #[test]
    fn load_errors_name_pipeline_step_and_key() {
        let bad = FILE.replace("2006-01-02", "Jan 2006");
        let e = Processor::from_str(&bad, Path::new("t.yaml"), true)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("t.yaml: pipelines[0] \"p\" step \"ts\" config.format:"),
            "{e}"
        );
        let bad = FILE.replace("timestamp_parse", "geoip");
        let e = Processor::from_str(&bad, Path::new("t.yaml"), true)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("step \"ts\" type") && e.contains("\"geoip\""),
            "{e}"
        );
        let bad = format!("{FILE}source_mapping:\n  nope: [x]\n");
        let e = Processor::from_str(&bad, Path::new("t.yaml"), true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("source_mapping.nope"), "{e}");
    }
}
