//! Pipelines whose outcome depends on a line only through its level word.
//!
//! The Go team's `default` pipeline (every container no `source_mapping` names) finds the
//! level word, then adds `msg: "{{message}}"` and two constants. What it writes differs
//! between lines only by which level word it found: the rest is the file's constants, the
//! message itself, and whether the source's labels already have a key. So the first line of
//! each (labels, level word) goes through the steps, and its fields, a shared list (see
//! [`super::shared_fields`]), are remembered; later lines are a word scan and a table
//! look-up. Measured on the bulk workload: BENCHMARKS.md, Processing, fifth round.
//!
//! A pipeline has a plan when every step is, with no `condition`:
//! - `field_add` of constants or exactly `{{message}}`,
//! - `field_remove`,
//! - `log_level_extract` with a keyword pattern (see [`super::keywords`]),
//!
//! and the names its steps write or remove are at most 64 (a label bit each). None of these steps can
//! fail or change the message. A line goes through the steps as any other when it is not
//! UTF-8 (the steps write it back with U+FFFD), when its entry came with fields (the
//! ingest), when the word scan must ask the regex, or when the table is full.

use std::sync::OnceLock;

use super::keywords::Found;
use super::steps::{Op, Step};
use crate::pipeline::entry::Field;

/// Table cells a plan has; a key probes [`PROBES`] of them from its hash.
const CELLS: usize = 256;
const PROBES: usize = 4;

/// (labels bits, level words found, the fields) of one outcome.
type Cell = OnceLock<(u64, u64, &'static [Field])>;

pub struct Plan {
    /// The steps that find a level word, in order.
    level_steps: Vec<usize>,
    cells: Box<[Cell]>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("level_steps", &self.level_steps)
            .finish()
    }
}

/// What [`Plan::look_up`] answers.
pub enum Lookup {
    /// The line's fields (empty: none).
    Known(&'static [Field]),
    /// Not seen yet: run the steps, then [`Plan::remember`] the outcome under this key.
    Unknown(u64),
    /// This line goes through the steps.
    Walk,
}

impl Plan {
    /// The plan of a pipeline of `steps`, if it can have one; `labelled_ok`: every name its
    /// steps write or remove has a label bit.
    pub fn of(steps: &[Step], labelled_ok: bool) -> Option<Plan> {
        if !labelled_ok {
            return None;
        }
        let mut level_steps = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            if step.condition.is_some() {
                return None;
            }
            match &step.op {
                Op::FieldAdd { fields } if fields.iter().all(|f| f.template.is_line_free()) => {}
                Op::FieldRemove { .. } => {}
                Op::LogLevelExtract {
                    keywords: Some(k), ..
                } if k.len() < 255 => level_steps.push(i),
                _ => return None,
            }
        }
        // Eight words of a byte each fit the key.
        if level_steps.len() > 8 {
            return None;
        }
        Some(Plan {
            level_steps,
            cells: (0..CELLS).map(|_| OnceLock::new()).collect(),
        })
    }

    /// The fields of a UTF-8 line `message` of a source with label bits `labelled`.
    pub fn look_up(&self, steps: &[Step], message: &[u8], labelled: u64) -> Lookup {
        let mut found = 0u64;
        for (n, &i) in self.level_steps.iter().enumerate() {
            let Op::LogLevelExtract {
                keywords: Some(k), ..
            } = &steps[i].op
            else {
                unreachable!("a plan's level steps have keywords");
            };
            let word = match k.find(message) {
                Found::Word(_, _, index) => index as u64 + 1,
                Found::None => 0,
                Found::Ask => return Lookup::Walk,
            };
            found |= word << (8 * n);
        }
        for cell in self.probe(labelled, found) {
            match cell.get() {
                Some(&(l, f, fields)) if (l, f) == (labelled, found) => {
                    return Lookup::Known(fields)
                }
                Some(_) => {}
                None => return Lookup::Unknown(found),
            }
        }
        Lookup::Walk
    }

    /// Keeps the fields of the key [`Plan::look_up`] gave (when the table has room).
    pub fn remember(&self, labelled: u64, found: u64, fields: &'static [Field]) {
        for cell in self.probe(labelled, found) {
            match cell.get() {
                Some(&(l, f, _)) if (l, f) == (labelled, found) => return,
                Some(_) => {}
                None => {
                    if cell.set((labelled, found, fields)).is_ok() {
                        return;
                    }
                    // Another thread took the cell: it may have kept the same key.
                    if let Some(&(l, f, _)) = cell.get() {
                        if (l, f) == (labelled, found) {
                            return;
                        }
                    }
                }
            }
        }
    }

    fn probe(&self, labelled: u64, found: u64) -> impl Iterator<Item = &Cell> {
        let h = (labelled.rotate_left(17) ^ found).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let start = (h >> 56) as usize;
        (0..PROBES).map(move |p| &self.cells[(start + p) % CELLS])
    }
}
