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
//!   `log_level_extract`, `json_parse` on a working copy of the entry ([`Processor::apply`]):
//!   the fields the pipeline names in a slot each, resolved at load, on the stack.
//! - [`shared_fields`]: the lists of fields many entries end with (constants, the level word,
//!   the message itself), kept once and shared, so such a line allocates nothing.
//! - [`plan`]: for a pipeline whose outcome depends on a line only through its level word
//!   (the Go file's `default`), the outcome remembered per word: a word scan a line.
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
pub mod plan;
pub mod shared_fields;
pub mod steps;
pub mod template;
pub mod timefmt;

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use bytes::Bytes;

pub use load::{LoadError, Pipeline};
pub use mapping::Source;
pub use multiline::{Grouper, MultilineSpec, Released};
use plan::{Lookup, Plan};

use crate::config::ProcessingConfig;
use crate::pipeline::entry::{Fields, Labels, LogEntry};
use shared_fields::SharedFields;
use steps::{Slots, WorkFields};

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
    /// Per pipeline: its [`Plan`] when it has one.
    plans: Vec<Option<Plan>>,
    /// Tells this processor's label bits from another's in the thread's cache.
    uid: u64,
    shared: SharedFields,
}

thread_local! {
    /// The last labels map this thread asked about: (processor, pipeline, the map, its
    /// bits). A source's entries share one map (`Arc`), so this answers nearly every line
    /// without a look-up. The `Weak` keeps the address from being reused by another map
    /// while it is here.
    static LABELLED: LabelledCache = const {
        LabelledCache {
            key: Cell::new((u64::MAX, 0, 0)),
            bits: Cell::new(0),
        }
    };
    /// The map `LABELLED` holds the address of (apart: a value with a destructor makes every
    /// access to its thread-local check that the destructor is registered).
    static LABELLED_MAP: RefCell<Weak<Labels>> = const { RefCell::new(Weak::new()) };
}

/// See `LABELLED`: read with three loads and compares a line.
struct LabelledCache {
    /// (processor, pipeline, the map's address).
    key: Cell<(u64, usize, usize)>,
    bits: Cell<u64>,
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
        static UIDS: AtomicU64 = AtomicU64::new(0);
        // A plan keys its outcomes by the label bits, which need every name to have one.
        let plans = loaded
            .pipelines
            .iter()
            .map(|p| Plan::of(&p.steps, p.keys.len() <= 64))
            .collect();
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
            plans,
            uid: UIDS.fetch_add(1, Relaxed),
            shared: SharedFields::default(),
        }
    }

    /// Which of pipeline `id`'s field names ([`Pipeline::keys`], the first 64) `labels`
    /// has, a bit per slot.
    fn labelled(&self, id: PipelineId, labels: &Arc<Labels>) -> u64 {
        LABELLED.with(|cache| {
            let key = (self.uid, id.0, Arc::as_ptr(labels) as usize);
            if cache.key.get() == key {
                return cache.bits.get();
            }
            let bits = self.pipelines[id.0]
                .keys
                .iter()
                .take(64)
                .enumerate()
                .filter(|(_, k)| labels.contains_key(**k))
                .fold(0u64, |b, (i, _)| b | 1 << i);
            // The `Weak` first: while it is held no other map can have this address.
            LABELLED_MAP.with(|map| *map.borrow_mut() = Arc::downgrade(labels));
            cache.key.set(key);
            cache.bits.set(bits);
            bits
        })
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
        self.stats.entries.fetch_add(1, Relaxed);
        let Some(plan) = &self.plans[id.0] else {
            return self.walk(id, entry, source_path);
        };
        if !entry.fields.is_empty() || !is_utf8(&entry.message) {
            return self.walk(id, entry, source_path);
        }
        let labelled = self.labelled(id, &entry.labels);
        match plan.look_up(&self.pipelines[id.0].steps, &entry.message, labelled) {
            Lookup::Known([]) => {}
            Lookup::Known(fields) => entry.fields = Fields::interned(fields),
            Lookup::Walk => self.walk(id, entry, source_path),
            Lookup::Unknown(found) => {
                self.walk(id, entry, source_path);
                if let Some(fields) = entry.fields.shared_items() {
                    plan.remember(labelled, found, fields);
                } else if entry.fields.is_empty() {
                    plan.remember(labelled, found, &[]);
                }
            }
        }
    }

    /// Runs the pipeline's steps on one entry (what [`Processor::apply`] does when its
    /// [`Plan`] does not know the answer).
    fn walk(&self, id: PipelineId, entry: &mut LogEntry, source_path: &str) {
        let pipeline = &self.pipelines[id.0];
        // The steps work on a copy on the stack; the entry's fields (set by the ingest only)
        // are untouched until the pipeline is done, which is what a failed step leaves
        // behind with `skip_failed_logs`.
        let mut slots: Slots = smallvec::smallvec![None; pipeline.keys.len()];
        let mut extra = WorkFields::new();
        for (key, value) in entry.fields.items() {
            match pipeline.keys.binary_search(&&**key) {
                Ok(i) => slots[i] = Some(value.clone()),
                Err(_) => extra.push((key.clone(), value.clone())),
            }
        }
        // The message and labels are borrowed, not cloned or taken: they are
        // reference-counted, and a count written at every line showed in the profile.
        let mut work = steps::Work {
            message: text(&entry.message),
            labels: &entry.labels,
            labelled: self.labelled(id, &entry.labels),
            keys: &pipeline.keys,
            slots: &mut slots,
            extra: &mut extra,
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
                    return;
                }
            }
        }
        let timestamp_ns = work.timestamp_ns;
        if let Cow::Owned(m) = work.message {
            entry.message = Bytes::from(m);
        }
        entry.timestamp_ns = timestamp_ns;
        entry.fields = self
            .shared
            .fields_of(&pipeline.keys, &mut slots, &mut extra);
    }
}

/// Whether `bytes` is UTF-8: most lines are ASCII, which eight bytes at a time tells sooner
/// than `from_utf8` does.
fn is_utf8(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(16);
    let mut high = 0u64;
    for c in &mut chunks {
        let (a, b) = c.split_at(8);
        high |= u64::from_le_bytes(a.try_into().expect("8 bytes"))
            | u64::from_le_bytes(b.try_into().expect("8 bytes"));
    }
    for &b in chunks.remainder() {
        high |= u64::from(b);
    }
    high & 0x8080_8080_8080_8080 == 0 || std::str::from_utf8(bytes).is_ok()
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

    /// A pipeline that can have a plan: two level steps, adds of constants and of the
    /// message over labels the source may have, a removal.
    const PLANNED: &str = r#"
pipelines:
  - name: p
    steps:
      - name: lvl
        type: log_level_extract
        config: { pattern: '(?i)\b(trace|debug|info|warn|warning|error|fatal|crit|critical)\b' }
      - name: msg
        type: field_add
        config: { fields: { msg: "{{message}}", container_name: "none" } }
      - name: std
        type: field_add
        config: { fields: { service: "log-capturer", level: "unknown" } }
      - name: drop
        type: field_remove
        config: { fields: [image] }
      - name: method
        type: log_level_extract
        config: { pattern: '\b(GET|POST)\b', field: method }
"#;

    fn planned_line() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just(&b"info"[..]),
            Just(&b"WARN"[..]),
            Just(&b"Error"[..]),
            Just(&b"GET"[..]),
            Just(&b"post"[..]),
            Just(&b"x"[..]),
            Just(&b" "[..]),
            Just(&b"="[..]),
            Just("\u{e9}".as_bytes()),
            Just("\u{212a}".as_bytes()),
            Just(&b"\xff"[..]),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
    }

    proptest::proptest! {
        /// What a plan answers is what the steps write, on every line: each level word, none,
        /// a non-ASCII letter by the word (the regex decides), a line that is not UTF-8, an
        /// entry that came with fields, labels that have an added or a removed key.
        #[test]
        fn a_plan_writes_what_the_steps_write(
            lines in proptest::collection::vec(planned_line(), 1..24),
            labels in 0..4usize,
            fielded in proptest::bool::ANY,
        ) {
            let p = Processor::from_str(PLANNED, Path::new("t.yaml"), true).unwrap();
            proptest::prop_assert!(p.plans[0].is_some());
            let labels: &[(&str, &str)] = match labels {
                0 => &[],
                1 => &[("container_name", "web")],
                2 => &[("image", "busybox"), ("level", "x")],
                _ => &[("service", "s"), ("msg", "m")],
            };
            for bytes in lines {
                let mut planned = entry("", labels);
                planned.message = Bytes::from(bytes);
                if fielded {
                    planned.fields.set("ingest", "1".to_string());
                }
                let mut walked = planned.clone();
                p.apply(PipelineId(0), &mut planned, "");
                p.walk(PipelineId(0), &mut walked, "");
                proptest::prop_assert_eq!(&planned.message, &walked.message);
                proptest::prop_assert_eq!(planned.fields.items(), walked.fields.items());
                proptest::prop_assert_eq!(planned.label_map(), walked.label_map());
            }
        }
    }

    /// The label bits are cached per thread by the map's address: a map freed and another
    /// made in its place (a container gone, the next one seen) must not be taken for it.
    #[test]
    fn a_new_labels_map_where_an_old_one_was_is_looked_up_again() {
        let p = Processor::from_str(PLANNED, Path::new("t.yaml"), true).unwrap();
        for i in 0..64 {
            // Alternately with and without the `container_name` the pipeline adds.
            let labels: &[(&str, &str)] = if i % 2 == 0 {
                &[("container_name", "web")]
            } else {
                &[("image", "x")]
            };
            let mut e = entry("info", labels);
            p.apply(PipelineId(0), &mut e, "");
            let want = if i % 2 == 0 { "web" } else { "none" };
            assert_eq!(e.label("container_name"), Some(want), "map {i}");
            assert_eq!(e.label("image"), None, "removed");
        }
    }

    /// Lines with the same outcome share one list of fields (no allocation a line); which
    /// pipelines of the Go file have a plan.
    #[test]
    fn planned_lines_share_their_fields_and_only_planless_steps_walk() {
        let p = Processor::from_str(PLANNED, Path::new("t.yaml"), true).unwrap();
        let lines = ["GET info one", "GET INFO two", "x Info POST"];
        let fields: Vec<Fields> = lines
            .iter()
            .map(|l| {
                let mut e = entry(l, &[]);
                p.apply(PipelineId(0), &mut e, "");
                assert_eq!(e.label("level"), Some("info"), "{l}");
                assert_eq!(e.label("msg"), Some(*l));
                e.fields
            })
            .collect();
        let shared = |f: &Fields| f.shared_items().expect("shared").as_ptr();
        assert_eq!(shared(&fields[0]), shared(&fields[1]));
        assert_ne!(shared(&fields[0]), shared(&fields[2]), "method is POST");
        assert_eq!(p.stats().entries.load(Relaxed), 3);

        let go = include_str!("../../../tests/fixtures/go_pipelines.yaml");
        let p = Processor::from_str(go, Path::new("go_pipelines.yaml"), true).unwrap();
        let planned: Vec<&str> = p
            .pipelines
            .iter()
            .zip(&p.plans)
            .filter(|(_, plan)| plan.is_some())
            .map(|(pl, _)| pl.name.as_str())
            .collect();
        assert_eq!(planned, ["default"]);
        for (step, why) in [
            (
                "{ type: field_add, condition: 'x', config: { fields: { a: b } } }",
                "condition",
            ),
            (
                "{ type: field_add, config: { fields: { a: '{{source_path}}' } } }",
                "path",
            ),
            (
                "{ type: field_add, config: { fields: { a: '{{image}}' } } }",
                "label",
            ),
            (
                "{ type: log_level_extract, config: { pattern: 'level=(\\w+)' } }",
                "regex",
            ),
            (
                "{ type: regex_extract, config: { pattern: '\\d' } }",
                "regex_extract",
            ),
            ("{ type: json_parse, config: {} }", "json"),
        ] {
            let file = format!("pipelines:\n  - name: p\n    steps:\n      - {step}\n");
            let p = Processor::from_str(&file, Path::new("t.yaml"), true).unwrap();
            assert!(p.plans[0].is_none(), "{why}");
        }
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
