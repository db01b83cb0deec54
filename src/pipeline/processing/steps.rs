//! The step types of a pipeline and what each does to one entry's working copy.
//!
//! A step either changes the copy or fails with a reason; a step whose input is absent (a
//! regex that does not match, a field no earlier step set) does nothing and is no failure:
//! the Go file's `fallback_*` steps rely on that.

use std::borrow::Cow;

use regex::Regex;

use super::keywords::{Found, Keywords};
use super::template::{Scope, Template};
use super::timefmt::{Layout, Zone};
use crate::pipeline::entry::{Field, FieldList, Key, Labels, Value};

/// Fields of names the pipelines file does not give (`json_parse` keys, the ingest's own),
/// sorted by key, while a pipeline runs.
pub type WorkFields = smallvec::SmallVec<[Field; 4]>;

/// A field the pipeline's own steps name: `None` when no step wrote it, `Some(None)` when
/// one removed it.
pub type Slot = Option<Option<Value>>;

/// A line's fields of the names in its pipeline's [`Pipeline::keys`](super::Pipeline), slot
/// `i` for key `i`: steps write them without a search, and the finished line's fields are
/// read off in key order.
pub type Slots = smallvec::SmallVec<[Slot; 8]>;

/// A field name of the pipelines file and its slot in the pipeline's key table (given once
/// the pipeline's steps are all read).
#[derive(Clone, Copy, Debug)]
pub struct Name {
    pub key: &'static str,
    pub slot: usize,
}

impl Name {
    pub fn new(key: &'static str) -> Name {
        Name { key, slot: 0 }
    }
}

/// The fields written so far, as steps and templates read them.
pub struct FieldView<'a> {
    pub keys: &'a [&'static str],
    pub slots: &'a Slots,
    pub extra: &'a WorkFields,
}

impl<'a> FieldView<'a> {
    /// `Some(None)`: removed; `None`: the fields say nothing of `key`.
    pub fn get(&self, key: &str) -> Option<Option<&'a Value>> {
        match self.keys.binary_search(&key) {
            Ok(i) => self.slots[i].as_ref().map(Option::as_ref),
            Err(_) => self.extra.get(key),
        }
    }
}

/// One entry while its pipeline runs, written back only when the pipeline is done. The
/// source's shared labels are only read; steps write to `slots` and `extra`, which win over
/// them (a line costs its written values, never a copy of the map).
pub struct Work<'a> {
    pub message: Cow<'a, str>,
    pub labels: &'a Labels,
    /// Which of the names in `keys` (the first 64, a bit per slot) `labels` has.
    pub labelled: u64,
    pub keys: &'a [&'static str],
    pub slots: &'a mut Slots,
    pub extra: &'a mut WorkFields,
    pub timestamp_ns: i64,
    pub source_path: &'a str,
}

impl Work<'_> {
    fn view(&self) -> FieldView<'_> {
        FieldView {
            keys: self.keys,
            slots: self.slots,
            extra: self.extra,
        }
    }

    /// A label as the entry will have it: fields first, then the source's labels.
    pub fn get(&self, key: &str) -> Option<&str> {
        match self.view().get(key) {
            Some(v) => v.map(|v| v.as_str(&self.message)),
            None => self.labels.get(key).map(String::as_str),
        }
    }

    /// Sets (or with `None` removes) a field by name: its slot, or beside them.
    fn put(&mut self, key: Key, value: Option<Value>) {
        match self.keys.binary_search(&&*key) {
            Ok(i) => self.slots[i] = Some(value),
            Err(_) => self.extra.put(key, value),
        }
    }

    /// Copies the message into the fields that are it or a part of it, before it changes.
    fn detach_message(&mut self) {
        let message = &self.message;
        let values = self.slots.iter_mut().filter_map(|s| s.as_mut()?.as_mut());
        for value in values.chain(self.extra.iter_mut().filter_map(|(_, v)| v.as_mut())) {
            if let Value::Message | Value::Range(..) = value {
                *value = Value::Owned(value.as_str(message).to_string());
            }
        }
    }
}

#[derive(Debug)]
pub enum Op {
    /// Capture groups into `fields` (in order; a group that did not take part sets nothing).
    /// Without fields: every match is removed from the message (ANSI colour codes).
    RegexExtract {
        re: Regex,
        fields: Vec<Name>,
    },
    /// Sets each field the entry does not have yet (see COMPATIBILITY.md).
    FieldAdd {
        fields: Vec<AddField>,
    },
    FieldRemove {
        fields: Vec<Name>,
    },
    TimestampParse {
        /// `None`: the start of the message.
        field: Option<String>,
        layout: Layout,
        zone: Zone,
        use_as_log_timestamp: bool,
        /// Gets the parsed time as RFC 3339 with nanoseconds.
        target_field: Option<Name>,
    },
    /// The first capture group (else the whole match), lower-cased, into `field`.
    LogLevelExtract {
        re: Regex,
        /// The same match found by a word scan, when the pattern is a keyword list.
        keywords: Option<Keywords>,
        field: Name,
    },
    /// The JSON object in `field` (`None`: the message) flattened into fields: nested keys
    /// joined with `.`, strings as they are, other values as JSON text.
    JsonParse {
        field: Option<String>,
    },
}

/// A field of a `field_add` step.
#[derive(Debug)]
pub struct AddField {
    pub name: Name,
    pub template: Template,
}

impl Op {
    /// The field names the step writes or removes, for the pipeline to give them slots.
    pub fn names_mut(&mut self) -> Vec<&mut Name> {
        match self {
            Op::RegexExtract { fields, .. } | Op::FieldRemove { fields } => {
                fields.iter_mut().collect()
            }
            Op::FieldAdd { fields } => fields.iter_mut().map(|f| &mut f.name).collect(),
            Op::TimestampParse { target_field, .. } => target_field.iter_mut().collect(),
            Op::LogLevelExtract { field, .. } => vec![field],
            Op::JsonParse { .. } => Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct Step {
    pub name: String,
    pub op: Op,
    /// Runs only on messages this matches.
    pub condition: Option<Regex>,
}

impl Step {
    pub fn apply(&self, w: &mut Work<'_>) -> Result<(), String> {
        if let Some(cond) = &self.condition {
            if !cond.is_match(&w.message) {
                return Ok(());
            }
        }
        match &self.op {
            Op::RegexExtract { re, fields } if fields.is_empty() => {
                if let Cow::Owned(s) = re.replace_all(&w.message, "") {
                    w.detach_message();
                    w.message = Cow::Owned(s);
                }
            }
            Op::RegexExtract { re, fields } => {
                if let Some(caps) = re.captures(&w.message) {
                    for (name, group) in fields.iter().zip(caps.iter().skip(1)) {
                        if let Some(g) = group {
                            let value = part_of_message(&w.message, g.start(), g.end());
                            w.slots[name.slot] = Some(Some(value));
                        }
                    }
                }
            }
            Op::FieldAdd { fields } => {
                for f in fields {
                    // Set unless a step set it, or the source's labels have it and no step
                    // removed it.
                    let set = match &w.slots[f.name.slot] {
                        Some(Some(_)) => false,
                        Some(None) => true,
                        // Past the 64th name there is no bit: the labels are asked.
                        None if f.name.slot < 64 => w.labelled >> f.name.slot & 1 == 0,
                        None => !w.labels.contains_key(f.name.key),
                    };
                    debug_assert!(
                        w.slots[f.name.slot].is_some() || set != w.labels.contains_key(f.name.key),
                        "{}",
                        f.name.key
                    );
                    if set {
                        let value = f.template.value(&Scope {
                            message: &w.message,
                            source_path: w.source_path,
                            labels: w.labels,
                            fields: &w.view(),
                        });
                        w.slots[f.name.slot] = Some(Some(value));
                    }
                }
            }
            Op::FieldRemove { fields } => {
                for name in fields {
                    if w.get(name.key).is_some() {
                        w.slots[name.slot] = Some(None);
                    }
                }
            }
            Op::TimestampParse {
                field,
                layout,
                zone,
                use_as_log_timestamp,
                target_field,
            } => {
                let ns = match field {
                    None => layout.parse_prefix(&w.message, zone)?.0,
                    Some(f) => {
                        let Some(v) = w.get(f) else {
                            return Ok(());
                        };
                        let (ns, used) = layout.parse_prefix(v, zone)?;
                        if used != v.len() {
                            return Err(format!("{f} {v:?}: text after the time at byte {used}"));
                        }
                        ns
                    }
                };
                if *use_as_log_timestamp {
                    w.timestamp_ns = ns;
                }
                if let Some(t) = target_field {
                    // Go's RFC3339Nano, as the file sink writes `timestamp`.
                    let mut text = String::with_capacity(36);
                    crate::decode::timestamp::push_rfc3339_nano_go(&mut text, ns);
                    w.slots[t.slot] = Some(Some(Value::Owned(text)));
                }
            }
            Op::LogLevelExtract {
                re,
                keywords,
                field,
            } => {
                if let Some(k) = keywords {
                    match k.find(w.message.as_bytes()) {
                        Found::Word(_, _, index) => {
                            w.slots[field.slot] = Some(Some(Value::Shared(k.lower(index))));
                            return Ok(());
                        }
                        Found::None => return Ok(()),
                        Found::Ask => {}
                    }
                }
                if let Some(caps) = re.captures(&w.message) {
                    let m = caps.get(1).or_else(|| caps.get(0)).expect("group 0");
                    w.slots[field.slot] = Some(Some(Value::Owned(m.as_str().to_lowercase())));
                }
            }
            Op::JsonParse { field } => {
                let text: &str = match field {
                    None => &w.message,
                    Some(f) => match w.get(f) {
                        Some(v) => v,
                        None => return Ok(()),
                    },
                };
                let value: serde_json::Value =
                    serde_json::from_str(text.trim()).map_err(|e| format!("not JSON ({e})"))?;
                let serde_json::Value::Object(map) = value else {
                    return Err("JSON but not an object".into());
                };
                let mut out = Vec::new();
                flatten("", map, &mut out);
                for (k, v) in out {
                    w.put(Key::Owned(k), Some(Value::Owned(v)));
                }
            }
        }
        Ok(())
    }
}

/// A capture group of the message as a field: its range (no copy), or a copy past the 4 GiB
/// a `u32` offset reaches (lines are cut at 1 MiB, so only in theory).
fn part_of_message(message: &str, start: usize, end: usize) -> Value {
    match (u32::try_from(start), u32::try_from(end)) {
        (Ok(s), Ok(e)) => Value::Range(s, e),
        _ => Value::Owned(message[start..end].to_string()),
    }
}

fn flatten(
    prefix: &str,
    map: serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<(String, String)>,
) {
    for (k, v) in map {
        let key = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            serde_json::Value::Object(inner) => flatten(&key, inner, out),
            serde_json::Value::String(s) => out.push((key, s)),
            serde_json::Value::Null => out.push((key, String::new())),
            other => out.push((key, other.to_string())),
        }
    }
}
