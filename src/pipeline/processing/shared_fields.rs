//! Field lists shared by the entries that end a pipeline with the same fields.
//!
//! Most lines of a pipeline end with the same items: the file's constants
//! (`service: log-capturer`), the interned level word, the message itself
//! (`msg: "{{message}}"`, which each entry reads from its own message). Such a list is kept
//! once, for the life of the process, and every entry with it points to it: no allocation on
//! the capture thread for the dispatcher's thread to free, which was most of what processing
//! cost a bulk line (BENCHMARKS.md, Processing, fifth round).
//!
//! A list can be shared when every key is one of the file's (interned at load) and every
//! value is a constant of the file, the message, or a removal. Lists with a value of their
//! own (a capture group, a parsed time, a `json_parse` key) stay the entry's own vector.
//!
//! Lists are told apart by identity (the addresses and lengths of their interned strings),
//! which is equality for strings kept for the life of the process. A lookup is a hash of the
//! list and one comparison in a fixed table of `OnceLock`s (no lock on the line's path);
//! collisions and first sightings take a mutex. At most [`MAX_LISTS`] lists are kept per
//! processor: past that, entries get their own vectors again (correct, slower), so a
//! pipelines file with many distinct outcomes cannot grow memory without bound.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use super::steps::{Slots, WorkFields};
use crate::pipeline::entry::{Field, Fields, Value};

/// Lists kept at most, per processor.
pub const MAX_LISTS: usize = 4096;

/// Slots of the lock-free table (a power of two).
const SLOTS: usize = 256;

/// One item by identity: key address and length, then the value's kind and address/length.
type Ident = (usize, usize, u8, usize, usize);

pub struct SharedFields {
    slots: Box<[OnceLock<&'static [Field]>]>,
    all: Mutex<HashMap<Vec<Ident>, &'static [Field]>>,
}

impl std::fmt::Debug for SharedFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.all.lock().map(|a| a.len()).unwrap_or(0);
        f.debug_struct("SharedFields").field("lists", &n).finish()
    }
}

impl Default for SharedFields {
    fn default() -> SharedFields {
        SharedFields {
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
            all: Mutex::new(HashMap::new()),
        }
    }
}

fn value_ident(value: &Option<Value>) -> Option<(u8, usize, usize)> {
    match value {
        None => Some((0, 0, 0)),
        Some(Value::Message) => Some((1, 0, 0)),
        Some(Value::Shared(s)) => Some((2, s.as_ptr() as usize, s.len())),
        Some(Value::Owned(_) | Value::Range(..)) => None,
    }
}

fn ident((key, value): &Field) -> Option<Ident> {
    let Cow::Borrowed(k) = key else {
        return None;
    };
    let (kind, addr, len) = value_ident(value)?;
    Some((k.as_ptr() as usize, k.len(), kind, addr, len))
}

/// FxHash's step: a multiply, where SipHash took longer than the rest of a line.
fn mix(h: u64, x: u64) -> u64 {
    (h.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
}

/// Whether `list` is what the written slots say, item by item.
fn same(list: &[Field], keys: &[&'static str], slots: &Slots) -> bool {
    let mut items = list.iter();
    for (key, slot) in keys.iter().zip(slots) {
        let Some(value) = slot else { continue };
        match items.next() {
            Some((Cow::Borrowed(k), v))
                if std::ptr::eq(*k, *key)
                    && value_ident(v).is_some()
                    && value_ident(v) == value_ident(value) => {}
            _ => return false,
        }
    }
    items.next().is_none()
}

/// The written slots and the other fields as one list in key order.
fn merge(keys: &[&'static str], slots: &mut Slots, extra: &mut WorkFields) -> Vec<Field> {
    let mut out = Vec::with_capacity(slots.len() + extra.len());
    let mut extra = extra.drain(..).peekable();
    for (key, slot) in keys.iter().zip(slots.iter_mut()) {
        let Some(value) = slot.take() else { continue };
        while let Some(e) = extra.next_if(|(k, _)| **k < **key) {
            out.push(e);
        }
        out.push((Cow::Borrowed(*key), value));
    }
    out.extend(extra);
    out
}

impl SharedFields {
    /// The fields a pipeline ended with (its `keys`' slots and the `extra` names), as the
    /// entry keeps them: a shared list when they can be one, else their own vector.
    pub fn fields_of(
        &self,
        keys: &[&'static str],
        slots: &mut Slots,
        extra: &mut WorkFields,
    ) -> Fields {
        if !extra.is_empty() {
            return Fields::owned(merge(keys, slots, extra));
        }
        let mut h = 0u64;
        let mut written = false;
        for (key, slot) in keys.iter().zip(slots.iter()) {
            let Some(value) = slot else { continue };
            let Some((kind, addr, len)) = value_ident(value) else {
                return Fields::owned(merge(keys, slots, extra));
            };
            // The hash only picks a cell: `same` then compares in full.
            let word = addr as u64 ^ (len as u64) << 48 ^ u64::from(kind);
            h = mix(mix(h, key.as_ptr() as u64), word);
            written = true;
        }
        if !written {
            return Fields::default();
        }
        let cell = &self.slots[(h >> 56) as usize % SLOTS];
        if let Some(list) = cell.get() {
            if same(list, keys, slots) {
                return Fields::interned(list);
            }
        }
        let items = merge(keys, slots, extra);
        match self.keep(&items) {
            Some(list) => {
                let _ = cell.set(list);
                Fields::interned(list)
            }
            None => Fields::owned(items),
        }
    }

    /// The list kept for `items` (found, or kept now), `None` once [`MAX_LISTS`] are kept.
    fn keep(&self, items: &[Field]) -> Option<&'static [Field]> {
        let id: Vec<Ident> = items.iter().filter_map(ident).collect();
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = all.get(&id) {
            return Some(list);
        }
        if all.len() >= MAX_LISTS {
            return None;
        }
        // Kept for the life of the process: entries in flight refer to it after the
        // processor is gone.
        let list: &'static [Field] = Vec::leak(items.to_vec());
        all.insert(id, list);
        Some(list)
    }

    /// Lists kept so far.
    pub fn lists(&self) -> usize {
        self.all.lock().map(|a| a.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [&str; 4] = ["level", "msg", "old", "seq"];

    /// The fields of a line with `level` set, `msg` the message, `old` removed, and `seq` as
    /// given.
    fn fields(s: &SharedFields, level: &'static str, seq: Option<Value>) -> Fields {
        let mut slots: Slots = smallvec::smallvec![
            Some(Some(Value::Shared(level))),
            Some(Some(Value::Message)),
            Some(None),
            seq.map(Some),
        ];
        s.fields_of(&KEYS, &mut slots, &mut WorkFields::new())
    }

    #[test]
    fn equal_outcomes_share_one_list_and_others_keep_their_own() {
        let s = SharedFields::default();
        let (info, warn) = ("info", "warn");
        let a = fields(&s, info, None);
        let b = fields(&s, info, None);
        let c = fields(&s, warn, None);
        let (Some(la), Some(lb), Some(lc)) = (a.shared_items(), b.shared_items(), c.shared_items())
        else {
            panic!("not shared: {a:?} {b:?} {c:?}");
        };
        assert!(std::ptr::eq(la, lb), "one list for the same outcome");
        assert!(!std::ptr::eq(la, lc));
        assert_eq!(a.get("level"), Some(Some(&Value::Shared("info"))));
        assert_eq!(a.get("msg"), Some(Some(&Value::Message)));
        assert_eq!(c.get("level"), Some(Some(&Value::Shared("warn"))));
        assert_eq!(a.get("old"), Some(None));
        assert_eq!(a.get("seq"), None);
        assert_eq!(s.lists(), 2);

        let d = fields(&s, info, Some(Value::Range(0, 3)));
        assert!(d.shared_items().is_none(), "a value of its own");
        assert_eq!(d.get("seq"), Some(Some(&Value::Range(0, 3))));
        assert_eq!(d.get("level"), Some(Some(&Value::Shared("info"))));
        let mut slots: Slots = smallvec::smallvec![None; 4];
        let mut extra = WorkFields::new();
        extra.push((Cow::Owned("k".into()), Some(Value::Shared(info))));
        extra.push((Cow::Owned("z".into()), None));
        slots[1] = Some(Some(Value::Message));
        let e = s.fields_of(&KEYS, &mut slots, &mut extra);
        assert!(e.shared_items().is_none(), "names of its own");
        assert_eq!(
            e.keys().collect::<Vec<_>>(),
            ["k", "msg", "z"],
            "merged in order"
        );
        let mut none: Slots = smallvec::smallvec![None; 4];
        assert!(s
            .fields_of(&KEYS, &mut none, &mut WorkFields::new())
            .is_empty());
        assert_eq!(s.lists(), 2);
    }

    /// Past `MAX_LISTS` distinct outcomes, entries keep their own vectors, with the same
    /// fields.
    #[test]
    fn lists_kept_are_bounded() {
        let s = SharedFields::default();
        let words: Vec<&'static str> = (0..MAX_LISTS + 10)
            .map(|i| &*Box::leak(format!("w{i}").into_boxed_str()))
            .collect();
        let mut shared = 0;
        for w in &words {
            let f = fields(&s, w, None);
            shared += usize::from(f.shared_items().is_some());
            assert_eq!(f.get("level"), Some(Some(&Value::Shared(w))));
        }
        assert_eq!(shared, MAX_LISTS);
        assert_eq!(s.lists(), MAX_LISTS);
        // One seen before the table filled is still shared.
        assert!(fields(&s, words[0], None).shared_items().is_some());
    }
}
