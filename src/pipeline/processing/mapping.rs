//! `source_mapping`: which pipeline an entry's source goes through, decided once per source
//! (container, file), not per line.
//!
//! Rules are tried in the file's order, each pipeline's patterns in order; the first match
//! wins (Go iterated a map, so its choice changed from run to run). A pattern is `key:value`,
//! matched exactly against `source_type`, `file_path` (the source's path) or a label
//! (`container_name:mysql`), or a bare name, matched exactly against the container's name or
//! its compose service (Go's `strings.Contains(pattern, name)` also took `mysql` for a
//! container named `sql`). A source no rule maps goes through the pipeline named `default`,
//! when there is one.

use crate::pipeline::entry::Labels;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    KeyValue(String, String),
    Name(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Pattern {
        match s.split_once(':') {
            Some((k, v)) if !k.is_empty() => Pattern::KeyValue(k.trim().into(), v.trim().into()),
            _ => Pattern::Name(s.trim().into()),
        }
    }

    fn matches(&self, source: &Source<'_>) -> bool {
        match self {
            Pattern::KeyValue(k, v) => match k.as_str() {
                "source_type" => source.source_type == v,
                "file_path" | "source_path" => source.path == Some(v.as_str()),
                label => source.labels.get(label) == Some(v),
            },
            Pattern::Name(n) => {
                source.labels.get("container_name") == Some(n)
                    || source.labels.get("compose_service") == Some(n)
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Rule {
    /// Index into the pipelines.
    pub pipeline: usize,
    pub patterns: Vec<Pattern>,
}

/// What a source is known by.
pub struct Source<'a> {
    pub source_type: &'a str,
    pub labels: &'a Labels,
    /// A monitored file's path.
    pub path: Option<&'a str>,
}

pub fn select(rules: &[Rule], source: &Source<'_>) -> Option<usize> {
    rules
        .iter()
        .find(|r| r.patterns.iter().any(|p| p.matches(source)))
        .map(|r| r.pipeline)
}
