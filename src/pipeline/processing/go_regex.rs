//! The pipelines file's regexes, read as Go's `regexp` reads them.
//!
//! The Go team wrote their patterns for Go's RE2 syntax, and the `regex` crate accepts the
//! same syntax with one difference that changes what matches: Go's Perl classes and word
//! boundaries are ASCII, the crate's are Unicode. Under Go `\w` does not match `é`, `\s`
//! does not match a no-break space (nor `\v`), `\d` does not match `٣`, and `\b` sits
//! between `é` and `info`. [`translate`] rewrites those escapes into the ASCII classes Go
//! means, so a pattern matches here what it matched in Go:
//!
//! | Go | here |
//! |---|---|
//! | `\d` `\D` | `[0-9]` `[^0-9]` |
//! | `\w` `\W` | `[0-9A-Za-z_]` `[^0-9A-Za-z_]` |
//! | `\s` `\S` | `[\t\n\f\r ]` `[^\t\n\f\r ]` |
//! | `\b` `\B` | `(?-u:\b)` `(?-u:\B)` |
//!
//! Inside a bracket class the class forms nest (`[\d.%]` becomes `[[0-9].%]`, which the
//! crate reads as a union). Everything else (flags, `(?i)`'s Unicode case folding, `\pL`,
//! `\x1b`, `.`) already means the same in both. ASCII classes are also what lets the crate's
//! DFAs and prefilters work without Unicode tables.

use regex::Regex;

/// Compiles a pattern of the pipelines file with Go's meaning.
pub fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&translate(pattern))
}

/// The pattern with Go's ASCII Perl classes and word boundaries spelled out (see the module
/// docs); escapes the table does not name are copied as they are.
pub fn translate(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars().peekable();
    // Inside `[...]`: where a class may close, and whether a `]` here is a literal (first in
    // the class, as Go reads `[]a]` and `[^]a]`).
    let mut in_class = false;
    let mut class_start = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(e) = chars.next() else {
                    out.push('\\'); // a trailing backslash: let the crate report it
                    break;
                };
                class_start = false;
                match (e, in_class) {
                    ('d', _) => out.push_str("[0-9]"),
                    ('D', _) => out.push_str("[^0-9]"),
                    ('w', _) => out.push_str("[0-9A-Za-z_]"),
                    ('W', _) => out.push_str("[^0-9A-Za-z_]"),
                    ('s', _) => out.push_str(r"[\t\n\x0C\r ]"),
                    ('S', _) => out.push_str(r"[^\t\n\x0C\r ]"),
                    ('b', false) => out.push_str(r"(?-u:\b)"),
                    ('B', false) => out.push_str(r"(?-u:\B)"),
                    (e, _) => {
                        out.push('\\');
                        out.push(e);
                    }
                }
            }
            '[' if !in_class => {
                out.push('[');
                in_class = true;
                class_start = true;
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
            }
            // A POSIX class inside a bracket class: `[[:alpha:]]`.
            '[' if chars.peek() == Some(&':') => {
                out.push('[');
                class_start = false;
                for p in chars.by_ref() {
                    out.push(p);
                    if p == ']' {
                        break;
                    }
                }
            }
            ']' if in_class && !class_start => {
                out.push(']');
                in_class = false;
            }
            c => {
                class_start = false;
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(pattern: &str) -> Regex {
        compile(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"))
    }

    #[test]
    fn perl_classes_are_ascii_as_in_go() {
        assert!(!go(r"^\w+$").is_match("café"));
        assert!(Regex::new(r"^\w+$").unwrap().is_match("café")); // the crate's own reading
        assert!(go(r"^\W$").is_match("é"));
        assert!(!go(r"^\d$").is_match("٣"));
        assert!(go(r"^\D$").is_match("٣"));
        assert!(!go(r"^\s$").is_match("\u{a0}"));
        assert!(!go(r"^\s$").is_match("\u{b}"));
        assert!(go(r"^\s+$").is_match(" \t\n\r\u{c}"));
        assert!(go(r"^\S$").is_match("\u{a0}"));
        assert!(!go(r"^\S$").is_match(" "));
    }

    #[test]
    fn word_boundaries_are_ascii_as_in_go() {
        let level = go(r"(?i)\b(info|error)\b");
        assert_eq!(level.find("éinfo").map(|m| m.as_str()), Some("info"));
        assert!(Regex::new(r"(?i)\b(info|error)\b")
            .unwrap()
            .find("éinfo")
            .is_none());
        assert_eq!(level.find("level=INFO x").map(|m| m.as_str()), Some("INFO"));
        assert!(level.find("information").is_none());
        assert!(go(r"a\Bb").is_match("ab"));
        assert!(!go(r"a\Bb").is_match("a b"));
    }

    #[test]
    fn classes_nest_inside_brackets() {
        assert_eq!(translate(r"[\d.%]+"), r"[[0-9].%]+");
        assert!(go(r"^[\d.%]+$").is_match("12.5%"));
        assert!(!go(r"^[\d.%]+$").is_match("1٣"));
        assert!(go(r"^[^\s]+$").is_match("a\u{a0}b"));
        assert!(!go(r"^[^\s]+$").is_match("a b"));
        // `]` first in a class is a literal; a POSIX class inside a class closes nothing.
        assert!(go(r"^[]\d]+$").is_match("]1]"));
        assert!(go(r"^[^]\d]$").is_match("x"));
        assert!(go(r"^[[:alpha:]\d]+$").is_match("a1"));
        assert!(!go(r"^[[:alpha:]\d]+$").is_match("a1 "));
    }

    #[test]
    fn other_escapes_are_copied() {
        assert_eq!(translate(r"\x1b\[[0-9;]*m"), r"\x1b\[[0-9;]*m");
        assert!(go(r"\x1b\[[0-9;]*m").is_match("\u{1b}[0;31m"));
        assert_eq!(translate(r"\\d"), r"\\d");
        assert!(go(r"^\\d$").is_match("\\d"));
        assert!(go(r"^\pL+$").is_match("café"));
        assert_eq!(translate(r"a\.b"), r"a\.b");
    }

    #[test]
    fn the_go_teams_patterns_compile_and_match_their_lines() {
        let mysql = go(
            r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d+Z)\s+\d+\s+\[(?:Note|Warning|Error)\]\s+(.+)",
        );
        let caps = mysql
            .captures("2026-11-30T06:00:00.123456Z 12 [Note] InnoDB: ready")
            .unwrap();
        assert_eq!(&caps[1], "2026-11-30T06:00:00.123456Z");
        assert_eq!(&caps[2], "InnoDB: ready");
        let fs = go(r"^(\d{4}-\d{2}-\d{2}\s+\d{2}:\d{2}:\d{2}\.\d+)\s+[\d.%]+\s+\[(\w+)\]\s+(.+)");
        let caps = fs
            .captures("2026-11-30 06:00:00.123456 97.53% [NOTICE] switch_core.c:2510 up")
            .unwrap();
        assert_eq!(&caps[2], "NOTICE");
    }
}
