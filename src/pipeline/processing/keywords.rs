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
    /// Each alternative of up to 8 bytes as a number ([`pack`]), `None` for longer ones: a
    /// word is looked up by comparing numbers, not by calling `memcmp` per alternative.
    packed: Vec<Option<u64>>,
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
        let packed = words
            .iter()
            .map(|w| pack(w.as_bytes(), case_insensitive))
            .collect();
        Some(Keywords {
            packed,
            min_len: words.iter().map(|w| w.len()).min()?,
            max_len: words.iter().map(|w| w.len()).max()?,
            words,
            lower,
            case_insensitive,
            first,
        })
    }

    /// How many alternatives.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The alternative `index`, lower-cased.
    pub fn lower(&self, index: usize) -> &'static str {
        self.lower[index]
    }

    /// The first word of `text` that is one of the keywords (see the module docs for when the
    /// answer is [`Found::Ask`]).
    ///
    /// Eight bytes at a time: which are word bytes is worked out for all eight at once
    /// ([`word_bits`]), and only the edges of words are visited. A loop over bytes with a
    /// branch at each word's start and end took ~35 ns on a 120-byte line, mostly
    /// mispredicted branches.
    pub fn find(&self, text: &[u8]) -> Found {
        let n = text.len();
        let mut base = 0;
        // Where the word being read started, and whether the last byte read is a word byte
        // (at bit 7, as the next chunk's bits are).
        let mut start = 0;
        let mut carry = 0u64;
        while base < n {
            let chunk = load(text, base);
            let high = chunk & HIGH;
            let mut words = word_bits(chunk);
            // The first byte that is not ASCII ends the scan: a word it ends is no answer.
            let stop = (high != 0).then(|| {
                let at = high.trailing_zeros() as usize / 8;
                words &= (1u64 << (8 * at)) - 1;
                base + at
            });
            let mut edges = words ^ ((words << 8) | carry);
            carry = (words >> 56) & 0x80;
            while edges != 0 {
                let bit = edges.trailing_zeros();
                edges &= edges - 1;
                let at = base + bit as usize / 8;
                if words >> bit & 1 == 1 {
                    start = at;
                } else if let Some(index) = self.word(text, start, at) {
                    return if Some(at) == stop {
                        Found::Ask
                    } else {
                        Found::Word(start, at, index)
                    };
                }
            }
            if stop.is_some() {
                return Found::Ask;
            }
            base += 8;
        }
        // A word that runs to the end of a line of whole chunks.
        if carry != 0 {
            if let Some(index) = self.word(text, start, n) {
                return Found::Word(start, n, index);
            }
        }
        Found::None
    }

    /// The keyword `text[start..end]` is, if any.
    #[inline]
    fn word(&self, text: &[u8], start: usize, end: usize) -> Option<usize> {
        let len = end - start;
        // A word's bytes are ASCII word bytes (< 128).
        if len < self.min_len || len > self.max_len || self.first & (1 << text[start]) == 0 {
            return None;
        }
        self.lookup(&text[start..end])
    }

    fn lookup(&self, word: &[u8]) -> Option<usize> {
        if let Some(n) = pack(word, self.case_insensitive) {
            return self.packed.iter().position(|&p| p == Some(n));
        }
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

const HIGH: u64 = 0x8080_8080_8080_8080;

/// `b` in every byte.
const fn splat(b: u8) -> u64 {
    b as u64 * 0x0101_0101_0101_0101
}

/// Bytes `base..base + 8` of `text` as a number (the first byte lowest), zeros past its end.
fn load(text: &[u8], base: usize) -> u64 {
    match text.get(base..base + 8) {
        Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
        None => {
            let mut n = 0u64;
            for (k, &b) in text[base..].iter().enumerate() {
                n |= u64::from(b) << (8 * k);
            }
            n
        }
    }
}

/// Bit 7 of each byte of `x` set when that byte is a word byte (`[0-9A-Za-z_]`), by range
/// tests done on all eight bytes at once: for bytes below 0x80, `(b | 0x80) - lo` has bit 7
/// set when `b >= lo`, and `(hi | 0x80) - b` when `b <= hi`, and neither borrows from the
/// next byte. Bytes from 0x80 up are no word bytes.
fn word_bits(x: u64) -> u64 {
    let ascii = !x & HIGH;
    let low = x & !HIGH;
    let ge = |v: u64, lo: u8| ((v | HIGH) - splat(lo)) & HIGH;
    let le = |v: u64, hi: u8| ((splat(hi) | HIGH) - v) & HIGH;
    // `| 0x20` takes A-Z to a-z (and no other byte into a-z).
    let folded = low | splat(0x20);
    let letter = ge(folded, b'a') & le(folded, b'z');
    let digit = ge(low, b'0') & le(low, b'9');
    let underscore = ge(low, b'_') & le(low, b'_');
    (letter | digit | underscore) & ascii
}

/// A word of up to 8 word bytes as a number (zero bytes past a shorter word, which no word
/// byte is, so words of other lengths differ), folded to one case when `fold`: `b | 0x20` takes `A-Z` to `a-z`, leaves digits, and takes
/// `_` to 0x7f, which no other word byte becomes, so two words fold to the same number
/// exactly when they are equal but for ASCII case.
fn pack(word: &[u8], fold: bool) -> Option<u64> {
    if word.len() > 8 {
        return None;
    }
    let mut n = 0u64;
    let mut folded = 0u64;
    for (k, &b) in word.iter().enumerate() {
        n |= u64::from(b) << (8 * k);
        folded |= 0x20 << (8 * k);
    }
    // Only the word's own bytes are folded: the padding stays 0, so lengths differ.
    Some(if fold { n | folded } else { n })
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
            Just("err_9"),
            Just("ERR_9"),
            Just("X_y"),
            Just("abcdefgh"),
            Just("ABCDEFGH"),
            Just("abcdefghi"),
            Just("AbcdefghI"),
            Just("\u{7f}"),
            Just("`"),
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
                // `_` and digits fold to themselves; 8 bytes is the longest packed word.
                r"(?i)\b(err_9|x_y|abcdefgh|abcdefghi)\b",
                r"\b(err_9|X_y|ABCDEFGH|abcdefghi)\b",
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
