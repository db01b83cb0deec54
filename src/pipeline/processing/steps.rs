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
use crate::pipeline::entry::{Fields, Labels, Value};

/// One entry while its pipeline runs, written back only when the pipeline is done. The
/// source's shared labels are only read; steps write to `fields`, which win over them
/// (a line costs its written values, never a copy of the map).
pub struct Work<'a> {
    pub message: Cow<'a, str>,
    pub labels: &'a Labels,
    pub fields: &'a mut Fields,
    pub timestamp_ns: i64,
    pub source_path: &'a str,
}

impl Work<'_> {
    /// A label as the entry will have it: fields first, then the source's labels.
    pub fn get(&self, key: &str) -> Option<&str> {
        match self.fields.get(key) {
            Some(v) => v.map(|v| v.as_str(&self.message)),
            None => self.labels.get(key).map(String::as_str),
        }
    }
}

#[derive(Debug)]
pub enum Op {
    /// Capture groups into `fields` (in order; a group that did not take part sets nothing).
    /// Without fields: every match is removed from the message (ANSI colour codes).
    RegexExtract {
        re: Regex,
        fields: Vec<&'static str>,
    },
    /// Sets each field the entry does not have yet (see COMPATIBILITY.md).
    FieldAdd {
        fields: Vec<(&'static str, Template)>,
    },
    FieldRemove {
        fields: Vec<&'static str>,
    },
    TimestampParse {
        /// `None`: the start of the message.
        field: Option<String>,
        layout: Layout,
        zone: Zone,
        use_as_log_timestamp: bool,
        /// Gets the parsed time as RFC 3339 with nanoseconds.
        target_field: Option<&'static str>,
    },
    /// The first capture group (else the whole match), lower-cased, into `field`.
    LogLevelExtract {
        re: Regex,
        /// The same match found by a word scan, when the pattern is a keyword list.
        keywords: Option<Keywords>,
        field: &'static str,
    },
    /// The JSON object in `field` (`None`: the message) flattened into fields: nested keys
    /// joined with `.`, strings as they are, other values as JSON text.
    JsonParse {
        field: Option<String>,
    },
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
                    w.fields.detach_message(&w.message);
                    w.message = Cow::Owned(s);
                }
            }
            Op::RegexExtract { re, fields } => {
                if let Some(caps) = re.captures(&w.message) {
                    for (name, group) in fields.iter().zip(caps.iter().skip(1)) {
                        if let Some(g) = group {
                            let value = part_of_message(&w.message, g.start(), g.end());
                            w.fields.set_value(*name, value);
                        }
                    }
                }
            }
            Op::FieldAdd { fields } => {
                for (name, template) in fields {
                    let (message, source_path, labels) = (&w.message, w.source_path, w.labels);
                    w.fields.add_if_absent(name, labels, |fields| {
                        template.value(&Scope {
                            message,
                            source_path,
                            labels,
                            fields,
                        })
                    });
                }
            }
            Op::FieldRemove { fields } => {
                for name in fields {
                    if w.get(name).is_some() {
                        w.fields.remove(*name);
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
                    w.fields.set(*t, text);
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
                            w.fields.set_value(*field, Value::Shared(k.lower(index)));
                            return Ok(());
                        }
                        Found::None => return Ok(()),
                        Found::Ask => {}
                    }
                }
                if let Some(caps) = re.captures(&w.message) {
                    let m = caps.get(1).or_else(|| caps.get(0)).expect("group 0");
                    w.fields.set(*field, m.as_str().to_lowercase());
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
                    w.fields.set(k, v);
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
