//! `field_add` values: text with `{{message}}`, `{{source_path}}`, `{{source_filename}}` or
//! `{{<label>}}` substituted per entry (Go wrote the braces literally; see COMPATIBILITY.md).
//! Split into parts once, at load.

use super::load::intern;
use super::steps::FieldView;
use crate::pipeline::entry::{Labels, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Message,
    SourcePath,
    SourceFilename,
    Label(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// The text when there is no placeholder: shared by every line's field.
    constant: Option<&'static str>,
}

/// What a template is filled from.
pub struct Scope<'a> {
    pub message: &'a str,
    pub source_path: &'a str,
    pub labels: &'a Labels,
    /// Written by earlier steps; win over `labels`.
    pub fields: &'a FieldView<'a>,
}

impl Template {
    /// `{{ name }}` (spaces allowed); an unclosed `{{` is literal text.
    pub fn parse(s: &str) -> Template {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("{{") {
            let Some(close) = rest[open + 2..].find("}}") else {
                break;
            };
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let name = rest[open + 2..open + 2 + close].trim();
            parts.push(match name {
                "message" => Part::Message,
                "source_path" => Part::SourcePath,
                "source_filename" => Part::SourceFilename,
                other => Part::Label(other.to_string()),
            });
            rest = &rest[open + 2 + close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        let constant = match parts.as_slice() {
            [] => Some(""),
            [Part::Text(t)] => Some(intern(t)),
            _ => None,
        };
        Template { parts, constant }
    }

    /// Whether the value is the same for every line (a constant, or the message itself,
    /// which each entry reads from its own).
    pub fn is_line_free(&self) -> bool {
        self.constant.is_some() || matches!(self.parts.as_slice(), [Part::Message])
    }

    /// The field value for one entry: a constant or the bare message without a copy.
    pub fn value(&self, scope: &Scope<'_>) -> Value {
        if let Some(c) = &self.constant {
            return Value::Shared(c);
        }
        if let [Part::Message] = self.parts.as_slice() {
            return Value::Message;
        }
        Value::Owned(self.render(scope))
    }

    /// The text for one entry; a label the entry lacks is empty.
    pub fn render(&self, scope: &Scope<'_>) -> String {
        if let [Part::Text(t)] = self.parts.as_slice() {
            return t.clone();
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Message => out.push_str(scope.message),
                Part::SourcePath => out.push_str(scope.source_path),
                Part::SourceFilename => out.push_str(
                    scope
                        .source_path
                        .rsplit('/')
                        .next()
                        .unwrap_or(scope.source_path),
                ),
                Part::Label(k) => {
                    let v = match scope.fields.get(k) {
                        Some(v) => v.map(|v| v.as_str(scope.message)),
                        None => scope.labels.get(k).map(String::as_str),
                    };
                    if let Some(v) = v {
                        out.push_str(v)
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_every_kind() {
        let mut labels = Labels::new();
        labels.insert("container_name".into(), "web".into());
        let scope = Scope {
            message: "hello",
            source_path: "/var/log/auth.log",
            labels: &labels,
            fields: &FieldView {
                keys: &[],
                slots: &Default::default(),
                extra: &Default::default(),
            },
        };
        let t = Template::parse("{{ container_name }}:{{message}} from {{source_filename}} ({{source_path}}){{missing}}");
        assert_eq!(
            t.render(&scope),
            "web:hello from auth.log (/var/log/auth.log)"
        );
        assert_eq!(Template::parse("info").render(&scope), "info");
        assert_eq!(Template::parse("a {{b").render(&scope), "a {{b");
    }
}
