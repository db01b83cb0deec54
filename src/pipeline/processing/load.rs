//! The pipelines file (Go's `pipelines.yaml`): `pipelines[]` of named steps and a
//! `source_mapping`. Every regex and time layout is compiled here, once; an error names the
//! file, the pipeline, the step and the key. Keys this program does not read are returned as
//! warnings (Go ignored them silently).

use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde_yaml::{Mapping, Value};

use super::go_regex;
use super::keywords::Keywords;
use super::mapping::{Pattern, Rule};
use super::multiline::MultilineSpec;
use super::steps::{AddField, Name, Op, Step};
use super::template::Template;
use super::timefmt::{Layout, Zone};

#[derive(Debug, thiserror::Error)]
#[error("{}: {at}: {message}", file.display())]
pub struct LoadError {
    pub file: PathBuf,
    /// `pipelines[1] "mysql" step "extract_mysql_level" config.pattern`, `source_mapping.x`.
    pub at: String,
    pub message: String,
}

#[derive(Debug)]
pub struct Pipeline {
    pub name: String,
    pub description: String,
    /// Only as the first step: lines are joined before the other steps see them.
    pub multiline: Option<MultilineSpec>,
    pub steps: Vec<Step>,
    /// Every field name its steps write or remove, sorted: a line's fields are kept in a
    /// slot per name while the steps run ([`super::steps::Slots`]).
    pub keys: Vec<&'static str>,
}

#[derive(Debug)]
pub struct Loaded {
    pub pipelines: Vec<Pipeline>,
    pub rules: Vec<Rule>,
    pub warnings: Vec<String>,
}

struct Ctx<'a> {
    file: &'a Path,
    warnings: Vec<String>,
}

impl Ctx<'_> {
    fn err(&self, at: impl Into<String>, message: impl Into<String>) -> LoadError {
        LoadError {
            file: self.file.to_path_buf(),
            at: at.into(),
            message: message.into(),
        }
    }
}

pub fn load_file(path: &Path) -> Result<Loaded, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError {
        file: path.to_path_buf(),
        at: "(file)".into(),
        message: format!("cannot read the pipelines file (processing.pipelines_file): {e}"),
    })?;
    load_str(&text, path)
}

pub fn load_str(text: &str, origin: &Path) -> Result<Loaded, LoadError> {
    let mut ctx = Ctx {
        file: origin,
        warnings: Vec::new(),
    };
    let root: Value =
        serde_yaml::from_str(text).map_err(|e| ctx.err("(document)", e.to_string()))?;
    let empty = Mapping::new();
    let top = match &root {
        Value::Null => &empty,
        Value::Mapping(m) => m,
        _ => {
            return Err(ctx.err(
                "(document)",
                "expected a mapping with pipelines: and source_mapping:",
            ))
        }
    };
    for k in top.keys() {
        let k = k.as_str().unwrap_or("?");
        if k != "pipelines" && k != "source_mapping" {
            ctx.warnings.push(format!("{k}: unknown key, ignored"));
        }
    }
    let mut pipelines = Vec::new();
    match top.get("pipelines") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) => {
            for (i, item) in items.iter().enumerate() {
                let p = pipeline(&mut ctx, i, item)?;
                if pipelines.iter().any(|q: &Pipeline| q.name == p.name) {
                    return Err(ctx.err(
                        format!("pipelines[{i}].name"),
                        format!("{:?} is defined twice", p.name),
                    ));
                }
                pipelines.push(p);
            }
        }
        Some(_) => return Err(ctx.err("pipelines", "expected a list of pipelines")),
    }
    let mut rules = Vec::new();
    match top.get("source_mapping") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let name = k.as_str().unwrap_or_default().to_string();
                let at = format!("source_mapping.{name}");
                let Some(index) = pipelines.iter().position(|p| p.name == name) else {
                    return Err(ctx.err(at, "no pipeline of this name in pipelines:"));
                };
                let patterns = match v {
                    Value::Null => Vec::new(),
                    Value::Sequence(items) => items
                        .iter()
                        .map(|i| {
                            i.as_str()
                                .map(Pattern::parse)
                                .ok_or_else(|| ctx.err(at.clone(), "expected a list of strings"))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(ctx.err(at, "expected a list of patterns")),
                };
                rules.push(Rule {
                    pipeline: index,
                    patterns,
                });
            }
        }
        Some(_) => {
            return Err(ctx.err(
                "source_mapping",
                "expected a mapping of pipeline names to patterns",
            ))
        }
    }
    Ok(Loaded {
        pipelines,
        rules,
        warnings: ctx.warnings,
    })
}

fn str_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn pipeline(ctx: &mut Ctx<'_>, i: usize, item: &Value) -> Result<Pipeline, LoadError> {
    let at = format!("pipelines[{i}]");
    let Value::Mapping(m) = item else {
        return Err(ctx.err(at, "expected a mapping with name: and steps:"));
    };
    let name = m
        .get("name")
        .and_then(str_of)
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ctx.err(format!("{at}.name"), "missing"))?;
    let at = format!("{at} {name:?}");
    let description = m.get("description").and_then(str_of).unwrap_or_default();
    let mut steps = Vec::new();
    let mut multiline = None;
    match m.get("steps") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) => {
            for (j, s) in items.iter().enumerate() {
                match step(ctx, &at, j, s)? {
                    Parsed::Step(s) => steps.push(s),
                    Parsed::Multiline(spec, step_at) => {
                        if j != 0 {
                            return Err(ctx.err(
                                step_at,
                                "multiline must be the first step: the other steps see the joined lines",
                            ));
                        }
                        multiline = Some(spec);
                    }
                }
            }
        }
        Some(_) => return Err(ctx.err(format!("{at}.steps"), "expected a list of steps")),
    }
    let keys = give_slots(&mut steps);
    Ok(Pipeline {
        name,
        description,
        multiline,
        steps,
        keys,
    })
}

/// The pipeline's field names, sorted and once each, and each step's names given their slot.
fn give_slots(steps: &mut [Step]) -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = steps
        .iter_mut()
        .flat_map(|s| s.op.names_mut())
        .map(|n| n.key)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for name in steps.iter_mut().flat_map(|s| s.op.names_mut()) {
        name.slot = keys.binary_search(&name.key).expect("collected above");
    }
    keys
}

enum Parsed {
    Step(Step),
    Multiline(MultilineSpec, String),
}

fn step(ctx: &mut Ctx<'_>, pipeline_at: &str, j: usize, v: &Value) -> Result<Parsed, LoadError> {
    let Value::Mapping(m) = v else {
        return Err(ctx.err(
            format!("{pipeline_at} steps[{j}]"),
            "expected a mapping with name:, type: and config:",
        ));
    };
    let name = m
        .get("name")
        .and_then(str_of)
        .unwrap_or_else(|| format!("#{j}"));
    let at = format!("{pipeline_at} step {name:?}");
    let kind = m
        .get("type")
        .and_then(str_of)
        .ok_or_else(|| ctx.err(format!("{at} type"), "missing"))?;
    let empty = Mapping::new();
    let config = match m.get("config") {
        None | Some(Value::Null) => &empty,
        Some(Value::Mapping(c)) => c,
        Some(_) => return Err(ctx.err(format!("{at} config"), "expected a mapping")),
    };
    for k in m.keys() {
        let k = k.as_str().unwrap_or("?");
        if !["name", "type", "config", "condition"].contains(&k) {
            ctx.warnings.push(format!("{at} {k}: unknown key, ignored"));
        }
    }
    let condition = m
        .get("condition")
        .and_then(str_of)
        .filter(|c| !c.is_empty())
        .map(|c| regex(ctx, &format!("{at} condition"), &c))
        .transpose()?;
    let mut c = Conf {
        at: &at,
        map: config,
        read: Vec::new(),
    };
    let op = match kind.as_str() {
        "regex_extract" => Op::RegexExtract {
            re: c
                .regex(ctx, "pattern")?
                .ok_or_else(|| ctx.err(format!("{at} config.pattern"), "missing"))?,
            fields: interned(c.list(ctx, "fields")?),
        },
        "field_add" => Op::FieldAdd {
            fields: c
                .map(ctx, "fields")?
                .into_iter()
                .map(|(k, v)| AddField {
                    name: Name::new(intern(&k)),
                    template: Template::parse(&v),
                })
                .collect(),
        },
        "field_remove" => Op::FieldRemove {
            fields: interned(c.list(ctx, "fields")?),
        },
        "timestamp_parse" => {
            let format = c.string(ctx, "format")?.ok_or_else(|| {
                ctx.err(
                    format!("{at} config.format"),
                    "missing (a Go layout such as 2006-01-02T15:04:05Z07:00)",
                )
            })?;
            let layout =
                Layout::compile(&format).map_err(|e| ctx.err(format!("{at} config.format"), e))?;
            let tz = c.string(ctx, "timezone")?.unwrap_or_default();
            let zone = Zone::parse(&tz).ok_or_else(|| {
                ctx.err(
                    format!("{at} config.timezone"),
                    format!("{tz:?} is not supported: UTC, Local or a fixed offset such as +03:00"),
                )
            })?;
            Op::TimestampParse {
                field: c
                    .string(ctx, "field")?
                    .filter(|f| f != "message" && !f.is_empty()),
                layout,
                zone,
                use_as_log_timestamp: c.boolean(ctx, "use_as_log_timestamp")?.unwrap_or(false),
                target_field: c
                    .string(ctx, "target_field")?
                    .filter(|f| !f.is_empty())
                    .map(|f| Name::new(intern(&f))),
            }
        }
        "log_level_extract" => {
            let pattern = c.string(ctx, "pattern")?.unwrap_or_else(|| {
                r"(?i)\b(trace|debug|info|warn|warning|error|fatal|crit|critical)\b".into()
            });
            Op::LogLevelExtract {
                re: regex(ctx, &c.key("pattern"), &pattern)?,
                keywords: Keywords::parse(&pattern, intern),
                field: Name::new(intern(
                    &c.string(ctx, "field")?.unwrap_or_else(|| "level".into()),
                )),
            }
        }
        "json_parse" => Op::JsonParse {
            field: c
                .string(ctx, "field")?
                .filter(|f| f != "message" && !f.is_empty()),
        },
        "multiline" => {
            let firstline = c.regex(ctx, "firstline")?.ok_or_else(|| {
                ctx.err(
                    format!("{at} config.firstline"),
                    "missing (a regex matching the first line of a group)",
                )
            })?;
            let max_lines = c
                .uint(ctx, "max_lines")?
                .unwrap_or(MultilineSpec::DEFAULT_MAX_LINES as u64);
            if max_lines == 0 {
                return Err(ctx.err(format!("{at} config.max_lines"), "must be at least 1"));
            }
            let max_wait = c
                .duration(ctx, "max_wait")?
                .unwrap_or(MultilineSpec::DEFAULT_MAX_WAIT);
            c.warn_unread(ctx);
            return Ok(Parsed::Multiline(
                MultilineSpec {
                    firstline,
                    max_lines: usize::try_from(max_lines).unwrap_or(usize::MAX),
                    max_wait,
                },
                at,
            ));
        }
        other => {
            return Err(ctx.err(
                format!("{at} type"),
                format!(
                    "unknown step type {other:?} (known: regex_extract, field_add, field_remove, \
                     timestamp_parse, log_level_extract, json_parse, multiline)"
                ),
            ))
        }
    };
    c.warn_unread(ctx);
    Ok(Parsed::Step(Step {
        name,
        op,
        condition,
    }))
}

fn regex(ctx: &Ctx<'_>, at: &str, pattern: &str) -> Result<Regex, LoadError> {
    go_regex::compile(pattern).map_err(|e| ctx.err(at, format!("bad regex {pattern:?}: {e}")))
}

/// A step's `config`, remembering which keys were read.
struct Conf<'a> {
    at: &'a str,
    map: &'a Mapping,
    read: Vec<&'static str>,
}

impl Conf<'_> {
    fn get(&mut self, key: &'static str) -> Option<&Value> {
        self.read.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn key(&self, key: &str) -> String {
        format!("{} config.{key}", self.at)
    }

    fn string(&mut self, ctx: &Ctx<'_>, key: &'static str) -> Result<Option<String>, LoadError> {
        let at = self.key(key);
        self.get(key)
            .map(|v| str_of(v).ok_or_else(|| ctx.err(at, "expected a string")))
            .transpose()
    }

    fn regex(&mut self, ctx: &Ctx<'_>, key: &'static str) -> Result<Option<Regex>, LoadError> {
        let at = self.key(key);
        self.string(ctx, key)?
            .map(|p| regex(ctx, &at, &p))
            .transpose()
    }

    fn boolean(&mut self, ctx: &Ctx<'_>, key: &'static str) -> Result<Option<bool>, LoadError> {
        let at = self.key(key);
        self.get(key)
            .map(|v| match v {
                Value::Bool(b) => Ok(*b),
                Value::String(s) => {
                    parse_bool(s).ok_or_else(|| ctx.err(at.clone(), "expected true or false"))
                }
                _ => Err(ctx.err(at.clone(), "expected true or false")),
            })
            .transpose()
    }

    fn uint(&mut self, ctx: &Ctx<'_>, key: &'static str) -> Result<Option<u64>, LoadError> {
        let at = self.key(key);
        self.get(key)
            .map(|v| match v {
                Value::Number(n) => n
                    .as_u64()
                    .ok_or_else(|| ctx.err(at.clone(), "expected a non-negative integer")),
                Value::String(s) => s
                    .trim()
                    .parse()
                    .map_err(|_| ctx.err(at.clone(), "expected a non-negative integer")),
                _ => Err(ctx.err(at.clone(), "expected a non-negative integer")),
            })
            .transpose()
    }

    fn duration(
        &mut self,
        ctx: &Ctx<'_>,
        key: &'static str,
    ) -> Result<Option<Duration>, LoadError> {
        let at = self.key(key);
        self.get(key)
            .map(|v| {
                let parsed = match v {
                    Value::String(s) => crate::config::parse_duration(s),
                    Value::Number(n) => {
                        n.as_f64().and_then(|f| Duration::try_from_secs_f64(f).ok())
                    }
                    _ => None,
                };
                parsed.ok_or_else(|| {
                    ctx.err(
                        at.clone(),
                        "expected a duration such as \"500ms\" or \"3s\"",
                    )
                })
            })
            .transpose()
    }

    fn list(&mut self, ctx: &Ctx<'_>, key: &'static str) -> Result<Option<Vec<String>>, LoadError> {
        let at = self.key(key);
        self.get(key)
            .map(|v| match v {
                Value::Sequence(items) => items
                    .iter()
                    .map(|i| {
                        str_of(i).ok_or_else(|| ctx.err(at.clone(), "expected a list of strings"))
                    })
                    .collect(),
                Value::String(s) => Ok(vec![s.clone()]),
                _ => Err(ctx.err(at.clone(), "expected a list of strings")),
            })
            .transpose()
    }

    fn map(
        &mut self,
        ctx: &Ctx<'_>,
        key: &'static str,
    ) -> Result<Vec<(String, String)>, LoadError> {
        let at = self.key(key);
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Mapping(m)) => m
                .iter()
                .map(|(k, v)| {
                    let k = str_of(k).ok_or_else(|| ctx.err(at.clone(), "expected string keys"))?;
                    let v = if v.is_null() {
                        String::new()
                    } else {
                        str_of(v)
                            .ok_or_else(|| ctx.err(format!("{at}.{k}"), "expected a string"))?
                    };
                    Ok((k, v))
                })
                .collect(),
            Some(_) => Err(ctx.err(at, "expected a mapping of field names to values")),
        }
    }

    fn warn_unread(&self, ctx: &mut Ctx<'_>) {
        for k in self.map.keys() {
            let k = k.as_str().unwrap_or("?");
            if !self.read.contains(&k) {
                ctx.warnings
                    .push(format!("{}: unknown key, ignored", self.key(k)));
            }
        }
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Field names as the entries' fields key them: allocated once here, shared by every line.
fn interned(names: Option<Vec<String>>) -> Vec<Name> {
    names
        .unwrap_or_default()
        .into_iter()
        .map(|n| Name::new(intern(&n)))
        .collect()
}

/// A field name or constant of the pipelines file, kept for the life of the process (the file
/// is loaded once): entries then refer to it without a count for two threads to update.
pub(crate) fn intern(s: &str) -> &'static str {
    Box::leak(s.into())
}
