//! Keyword patterns, `(?i)\b(trace|debug|info|...)\b`, matched by a scan of the line's words.
//!
//! Every `log_level_extract` of the Go team's file has this shape, and it runs on every line.
//! The `regex` crate cannot use a prefilter for it: `(?i)` turns each word into all its case
//! variants, so a search walks the whole line in the DFA and then finds the capture group
//! with the backtracker (~0.3-0.55 µs on a 120-byte line, BENCHMARKS.md). Here the same
//! match is found by splitting the line into ASCII words and looking each up (~tens of ns).
//!
//! Why it is the same match. With Go's ASCII `\b` on both sides (see [`super::go_regex`]) and
//! words made only of `[0-9A-Za-z_]`, the regex matches at a position exactly when a whole
//! word starts there and equals one of the alternatives, so the leftmost match is the first
//! such word, and at most one alternative can equal it. `(?i)` in Unicode folds `k` with
//! the Kelvin sign and `s` with `ſ`, and Go's `\b` treats non-ASCII letters as non-word:
//! so a non-ASCII byte up to the byte after a match could change the answer, and there
//! [`Keywords::find`] answers [`Found::Ask`] and the caller asks the regex. Property test:
//! `tests::same_as_the_regex`.

/// A keyword pattern, parsed from its text.
#[derive(Debug)]
pub struct Keywords {
    /// The alternatives, lower-cased when the pattern is case-insensitive.
    words: Vec<&'static str>,
    /// The alternatives lower-cased: the level the step writes for each.
    lower: Vec<&'static str>,
    case_insensitive: bool,
    /// Bytes a word may start with (both cases when case-insensitive), a bit each: words are
    /// ASCII.
    first: u128,
    min_len: usize,
    max_len: usize,
}

/// What [`Keywords::find`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// The match's byte range and the index of its alternative.
    Word(usize, usize, usize),
    None,
    /// The line has a non-ASCII byte where it could change the answer: run the regex.
    Ask,
}

const fn word_bytes() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_';
        b += 1;
    }
    t
}

static WORD: [bool; 256] = word_bytes();

/// Words longer than this are looked up by the regex only (no stack buffer that large).
const MAX_WORD: usize = 32;

impl Keywords {
    /// The keyword set of `pattern` when it is exactly `\b(w1|w2|...)\b` (a capturing or
    /// non-capturing group, optionally preceded by `(?i)`), each word made of `[0-9A-Za-z_]`;
    /// `None` for any other pattern. `intern` keeps a string for the program's lifetime.
    pub fn parse(pattern: &str, intern: impl Fn(&str) -> &'static str) -> Option<Keywords> {
        let (case_insensitive, rest) = match pattern.strip_prefix("(?i)") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let inner = rest.strip_prefix(r"\b")?.strip_suffix(r"\b")?;
        let inner = inner.strip_prefix('(')?.strip_suffix(')')?;
        let inner = inner.strip_prefix("?:").unwrap_or(inner);
        let mut words = Vec::new();
        let mut lower = Vec::new();
        for w in inner.split('|') {
            if w.is_empty() || w.len() > MAX_WORD || !w.bytes().all(|b| WORD[b as usize]) {
                return None;
            }
            let l = w.to_ascii_lowercase();
            words.push(intern(if case_insensitive { &l } else { w }));
            lower.push(intern(&l));
        }
        let mut first = 0u128;
        for w in &words {
            let b = w.as_bytes()[0];
            first |= 1 << b;
            if case_insensitive {
                first |= 1 << b.to_ascii_uppercase();
            }
        }
        Some(Keywords {
            min_len: words.iter().map(|w| w.len()).min()?,
            max_len: words.iter().map(|w| w.len()).max()?,
            words,
            lower,
            case_insensitive,
            first,
        })
    }

    /// The alternative `index`, lower-cased.
    pub fn lower(&self, index: usize) -> &'static str {
        self.lower[index]
    }

    /// The first word of `text` that is one of the keywords (see the module docs for when the
    /// answer is [`Found::Ask`]).
    pub fn find(&self, text: &[u8]) -> Found {
        let n = text.len();
        let mut i = 0;
        while i < n {
            // Between words.
            while i < n && !WORD[text[i] as usize] {
                if text[i] >= 0x80 {
                    return Found::Ask;
                }
                i += 1;
            }
            let start = i;
            while i < n && WORD[text[i] as usize] {
                i += 1;
            }
            let len = i - start;
            // A word's bytes are ASCII word bytes (< 128).
            if len < self.min_len || len > self.max_len || self.first & (1 << text[start]) == 0 {
                continue;
            }
            if let Some(index) = self.lookup(&text[start..i]) {
                if i < n && text[i] >= 0x80 {
                    return Found::Ask;
                }
                return Found::Word(start, i, index);
            }
        }
        Found::None
    }

    fn lookup(&self, word: &[u8]) -> Option<usize> {
        if !self.case_insensitive {
            return self.words.iter().position(|w| w.as_bytes() == word);
        }
        let mut buf = [0u8; MAX_WORD];
        let folded = &mut buf[..word.len()];
        folded.copy_from_slice(word);
        folded.make_ascii_lowercase();
        self.words.iter().position(|w| w.as_bytes() == &*folded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leak(s: &str) -> &'static str {
        Box::leak(s.to_string().into_boxed_str())
    }

    const LEVEL: &str = r"(?i)\b(trace|debug|info|warn|warning|error|fatal|crit|critical)\b";

    #[test]
    fn parses_the_go_teams_level_patterns_only() {
        let k = Keywords::parse(LEVEL, leak).unwrap();
        assert_eq!(k.words.len(), 9);
        assert!(Keywords::parse(r"\b(?:Note|Warning)\b", leak).is_some());
        assert!(Keywords::parse(r"\b(info|err.r)\b", leak).is_none());
        assert!(Keywords::parse(r"(?i)(info|error)", leak).is_none());
        assert!(Keywords::parse(r"\b(info|error)\b\s", leak).is_none());
        assert!(Keywords::parse(r"(?i)\b(info||error)\b", leak).is_none());
        assert!(Keywords::parse(r"(?i)\b(café)\b", leak).is_none());
    }

    #[test]
    fn finds_the_first_whole_word() {
        let k = Keywords::parse(LEVEL, leak).unwrap();
        assert_eq!(k.find(b"level=info seq=1"), Found::Word(6, 10, 2));
        assert_eq!(k.lower(2), "info");
        assert_eq!(k.find(b"WARNING: disk"), Found::Word(0, 7, 4));
        assert_eq!(
            k.find(b"information warnings _error error"),
            Found::Word(28, 33, 5)
        );
        assert_eq!(k.find(b"GET /index.html 200"), Found::None);
        assert_eq!(k.find("é info".as_bytes()), Found::Ask);
        assert_eq!(k.find("info é".as_bytes()), Found::Word(0, 4, 2));
        assert_eq!(k.find("infoé".as_bytes()), Found::Ask);
    }

    /// Lines made of pieces that stress the boundaries: the keywords in mixed case, their
    /// prefixes and extensions, word and non-word ASCII, and the non-ASCII letters that fold
    /// into ASCII ones (`ſ`, the Kelvin sign) or that Go's `\b` treats as non-word.
    fn line() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("info"),
            Just("INFO"),
            Just("Warn"),
            Just("warning"),
            Just("WARNINGS"),
            Just("crit"),
            Just("critical"),
            Just("error"),
            Just("err"),
            Just("risk"),
            Just("_"),
            Just("9"),
            Just(" "),
            Just("="),
            Just("\t"),
            Just("-"),
            Just("é"),
            Just("ſ"),
            Just("\u{212a}"),
            Just("x"),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn same_as_the_regex(text in line()) {
            for pattern in [
                LEVEL,
                r"(?i)\b(risk|warn|warning)\b",
                r"(?i)\b(warning|warn|x)\b",
                r"\b(?:INFO|info|Warn)\b",
            ] {
                let k = Keywords::parse(pattern, leak).unwrap();
                let re = crate::pipeline::processing::go_regex::compile(pattern).unwrap();
                let want = re.find(&text).map(|m| (m.start(), m.end()));
                match k.find(text.as_bytes()) {
                    Found::Ask => {}
                    Found::None => prop_assert_eq!(want, None, "{} on {:?}", pattern, text),
                    Found::Word(s, e, i) => {
                        prop_assert_eq!(want, Some((s, e)), "{} on {:?}", pattern, text);
                        prop_assert_eq!(k.lower(i), text[s..e].to_lowercase());
                    }
                }
            }
        }
    }
}
