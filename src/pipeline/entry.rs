//! A log entry: one line with where and when it came from, as the sinks receive it.
//!
//! Container-level labels are shared (`Arc`) by every entry of a container: a line costs its
//! message and two timestamps, not a map. What a processing pipeline adds, overrides or
//! removes goes in the entry's own [`Fields`] beside them; sinks read the two through
//! [`LogEntry::label`] and [`LogEntry::labels_iter`], never `labels` alone.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::decode::StreamKind;

/// Labels in key order, as the Go version writes them (JSON keys sorted).
pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// When the line was logged: dockerd's timestamp, nanoseconds since the epoch (the Go
    /// version put its capture time here; see COMPATIBILITY.md).
    pub timestamp_ns: i64,
    /// When the capturer read it.
    pub processed_at_ns: i64,
    /// The line, without its newline.
    pub message: Bytes,
    /// stdout or stderr (TTY containers: stdout).
    pub stream: StreamKind,
    /// `docker` for containers, `file` for monitored files, `api` for POST /api/v1/logs.
    pub source_type: &'static str,
    /// The 12-character container id for containers.
    pub source_id: Arc<str>,
    /// `container_id`, `container_name`, `image`, `compose_service` (when present), ...;
    /// `stream` is added by the sinks from [`LogEntry::stream`].
    pub labels: Arc<Labels>,
    /// What a pipeline wrote over `labels` (empty when no step wrote).
    pub fields: Fields,
}

/// What a pipeline set or removed, beside the source's shared labels (which it leaves
/// untouched): sorted by key, one item a key, `None` for a label `field_remove` took away.
/// Keys are interned (`&'static`) when the pipelines file is loaded, so a field costs its
/// value only (an `Arc` would have its count written by the capture and the dispatcher
/// threads at every line: measured at 6 % of the bulk profile).
///
/// An entry no step wrote to has no items and no allocation. Most entries of a pipeline end
/// with the same items (constants of the file, the interned level word, the message itself):
/// those share one interned list ([`Fields::interned`]), so a line's fields cost no
/// allocation either (one made on the capture thread and freed on the dispatcher's was
/// ~270 ns a line with glibc: BENCHMARKS.md, Processing, fourth round).
#[derive(Clone, Debug, Default)]
pub struct Fields(Repr);

/// Equal when the items are, shared or not.
impl PartialEq for Fields {
    fn eq(&self, other: &Fields) -> bool {
        self.items() == other.items()
    }
}

impl Eq for Fields {}

#[derive(Clone, Debug)]
enum Repr {
    Owned(Vec<Field>),
    Interned(&'static [Field]),
}

impl Default for Repr {
    fn default() -> Repr {
        Repr::Owned(Vec::new())
    }
}

/// A field: its key and value, `None` when removed.
pub type Field = (Key, Option<Value>);

/// A field name: the pipelines file's, or one `json_parse` found in a line.
pub type Key = Cow<'static, str>;

/// A field's value: most pipeline fields are a constant of the pipelines file or the whole
/// message (`msg: "{{message}}"`), which then cost no copy per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Owned(String),
    /// A constant of the pipelines file, shared by every line.
    Shared(&'static str),
    /// The entry's message: the pipeline writes its text back as UTF-8, and turns this into
    /// `Owned` before a step changes the message.
    Message,
    /// A part of the entry's message (a capture group), by byte range, under the same rule as
    /// `Message`: no copy, so no allocation made on the capture thread and freed on the
    /// dispatcher's.
    Range(u32, u32),
}

impl Value {
    /// The text, `message` being the entry's (UTF-8) message.
    pub fn as_str<'a>(&'a self, message: &'a str) -> &'a str {
        match self {
            Value::Owned(s) => s,
            Value::Shared(s) => s,
            Value::Message => message,
            Value::Range(start, end) => message.get(*start as usize..*end as usize).unwrap_or(""),
        }
    }
}

/// `a.cmp(b)`, deciding on the first byte where it can: field names mostly differ there, and
/// the call into `memcmp` for a few bytes was the largest item of the processed line's
/// profile.
fn key_order(a: &str, b: &str) -> Ordering {
    match (a.as_bytes().first(), b.as_bytes().first()) {
        (Some(x), Some(y)) if x != y => x.cmp(y),
        _ => a.cmp(b),
    }
}

/// The message as [`Value::Message`] reads it (the pipeline left it UTF-8).
fn message_text(message: &[u8]) -> &str {
    std::str::from_utf8(message).unwrap_or_default()
}

/// Where `key` is in `items` (sorted), or where it would go.
fn find(items: &[Field], key: &str) -> Result<usize, usize> {
    items.binary_search_by(|(k, _)| key_order(k, key))
}

/// The operations on a sorted list of fields, for the entry's vector and the names a pipeline
/// does not give (on the stack while it runs) alike.
pub trait FieldList: std::ops::DerefMut<Target = [Field]> {
    fn insert_at(&mut self, index: usize, field: Field);

    /// `Some(None)`: removed; `None`: the fields say nothing of `key`.
    fn get(&self, key: &str) -> Option<Option<&Value>> {
        find(self, key).ok().map(|i| self[i].1.as_ref())
    }

    fn set(&mut self, key: impl Into<Key>, value: String) {
        self.put(key, Some(Value::Owned(value)));
    }

    fn set_value(&mut self, key: impl Into<Key>, value: Value) {
        self.put(key, Some(value));
    }

    /// Records that `key` is removed (hides a source label of that name).
    fn mark_removed(&mut self, key: impl Into<Key>) {
        self.put(key, None);
    }

    fn put(&mut self, key: impl Into<Key>, value: Option<Value>) {
        let key = key.into();
        match find(self, &key) {
            Ok(i) => self[i].1 = value,
            Err(i) => self.insert_at(i, (key, value)),
        }
    }
}

impl FieldList for Vec<Field> {
    fn insert_at(&mut self, index: usize, field: Field) {
        self.insert(index, field);
    }
}

impl<const N: usize> FieldList for smallvec::SmallVec<[Field; N]> {
    fn insert_at(&mut self, index: usize, field: Field) {
        self.insert(index, field);
    }
}

impl Fields {
    /// Fields that share a list kept for the life of the process (see
    /// `processing::shared_fields`).
    pub fn interned(items: &'static [Field]) -> Fields {
        Fields(Repr::Interned(items))
    }

    pub fn owned(items: Vec<Field>) -> Fields {
        Fields(Repr::Owned(items))
    }

    /// The items, sorted by key.
    pub fn items(&self) -> &[Field] {
        match &self.0 {
            Repr::Owned(v) => v,
            Repr::Interned(s) => s,
        }
    }

    /// The list shared with other entries, if it is one.
    pub fn shared_items(&self) -> Option<&'static [Field]> {
        match self.0 {
            Repr::Interned(s) => Some(s),
            Repr::Owned(_) => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items().is_empty()
    }

    /// `Some(None)`: removed; `None`: the fields say nothing of `key`.
    pub fn get(&self, key: &str) -> Option<Option<&Value>> {
        let items = self.items();
        find(items, key).ok().map(|i| items[i].1.as_ref())
    }

    /// The entry's own vector, copied from a shared list first.
    fn owned_mut(&mut self) -> &mut Vec<Field> {
        if let Repr::Interned(s) = self.0 {
            self.0 = Repr::Owned(s.to_vec());
        }
        match &mut self.0 {
            Repr::Owned(v) => v,
            Repr::Interned(_) => unreachable!("made owned above"),
        }
    }

    pub fn set(&mut self, key: impl Into<Key>, value: String) {
        self.owned_mut().set(key, value);
    }

    pub fn set_value(&mut self, key: impl Into<Key>, value: Value) {
        self.owned_mut().set_value(key, value);
    }

    pub fn remove(&mut self, key: impl Into<Key>) {
        self.owned_mut().mark_removed(key);
    }

    /// The keys written or removed, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.items().iter().map(|(k, _)| &**k)
    }
}

impl LogEntry {
    /// A label as the sinks see it: the pipeline's fields first, then the source's labels.
    pub fn label(&self, key: &str) -> Option<&str> {
        match self.fields.get(key) {
            Some(v) => v.map(|v| v.as_str(message_text(&self.message))),
            None => self.labels.get(key).map(String::as_str),
        }
    }

    /// Every label as the sinks see it, in key order: a merge of the two sorted sources.
    pub fn labels_iter(&self) -> Merged<'_> {
        Merged {
            labels: self.labels.iter().peekable(),
            fields: self.fields.items().iter().peekable(),
            message: &self.message,
        }
    }

    /// The merged view as a map (tests, and callers that keep it).
    pub fn label_map(&self) -> Labels {
        self.labels_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// See [`LogEntry::labels_iter`].
pub struct Merged<'a> {
    labels: std::iter::Peekable<std::collections::btree_map::Iter<'a, String, String>>,
    fields: std::iter::Peekable<std::slice::Iter<'a, Field>>,
    message: &'a Bytes,
}

impl<'a> Iterator for Merged<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        loop {
            let order = match (self.labels.peek(), self.fields.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((lk, _)), Some((fk, _))) => lk.as_str().cmp(&**fk),
            };
            if order == Ordering::Less {
                let (k, v) = self.labels.next().expect("peeked");
                return Some((k, v));
            }
            if order == Ordering::Equal {
                self.labels.next();
            }
            let (k, v) = self.fields.next().expect("peeked");
            if let Some(v) = v {
                return Some((k, v.as_str(message_text(self.message))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_merged_view_puts_fields_over_labels_in_key_order() {
        let labels: Labels = [("b", "1"), ("d", "2"), ("f", "3")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut e = LogEntry {
            timestamp_ns: 0,
            processed_at_ns: 0,
            message: Bytes::from_static(b"the line"),
            stream: StreamKind::Stdout,
            source_type: "docker",
            source_id: Arc::from("x"),
            labels: Arc::new(labels),
            fields: Fields::default(),
        };
        for (k, v) in [
            ("g", Some("5")),
            ("a", Some("0")),
            ("d", Some("4")),
            ("f", None),
        ] {
            match v {
                Some(v) => e.fields.set(k, v.to_string()),
                None => e.fields.remove(k),
            }
        }
        e.fields.set_value("c", Value::Shared("const"));
        e.fields.set_value("m", Value::Message);
        let got: Vec<(&str, &str)> = e.labels_iter().collect();
        assert_eq!(
            got,
            [
                ("a", "0"),
                ("b", "1"),
                ("c", "const"),
                ("d", "4"),
                ("g", "5"),
                ("m", "the line")
            ],
            "fields win, removals hide, keys sorted"
        );
        assert_eq!(e.label("d"), Some("4"));
        assert_eq!(e.label("f"), None);
        assert_eq!(e.label("b"), Some("1"));
        assert_eq!(
            e.labels.get("d").map(String::as_str),
            Some("2"),
            "shared map untouched"
        );
    }
}
