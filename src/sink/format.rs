//! Output formats shared by the sinks, byte-compatible with what `log_capturer_go` wrote.
//!
//! - [`json_line`]: the JSON line of the file and stdout sinks. The Go version built a
//!   `map[string]interface{}` and ran it through `encoding/json`, so keys come out sorted, the
//!   times are `time.RFC3339Nano` (trailing zeros of the fraction trimmed, the fraction dropped
//!   when zero), strings are escaped the `encoding/json` way (`<`, `>`, `&` as `\u003c` ...,
//!   U+2028/U+2029 escaped, every invalid UTF-8 byte as the six characters `\ufffd`). This module
//!   reproduces all of that without serde, straight from the entry's bytes.
//! - [`text_line`]: the `output_format: text` line (`[DOCKER:id] | message`, ...).
//! - [`GoLayout`]: a converter for Go time layouts (`2006-01-02 15:04:05.000`, `RFC3339`, ...).
//!
//! All times are rendered in UTC (the Go process rendered local time, which in its container is
//! UTC as well).

use std::fmt::Write as _;

use crate::decode::timestamp::push_fraction;
use crate::decode::timestamp::{civil, push_rfc3339_nano_go};
use crate::pipeline::entry::LogEntry;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string exactly as Go's `encoding/json` (with its default HTML escaping)
/// writes it. Invalid UTF-8 is replaced per byte by `\ufffd`.
pub fn write_json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for chunk in s.utf8_chunks() {
        let valid = chunk.valid().as_bytes();
        let mut start = 0;
        let mut i = 0;
        while i < valid.len() {
            let b = valid[i];
            if b < 0x80 {
                let esc: Option<&[u8]> = match b {
                    b'"' => Some(b"\\\""),
                    b'\\' => Some(b"\\\\"),
                    b'\n' => Some(b"\\n"),
                    b'\r' => Some(b"\\r"),
                    b'\t' => Some(b"\\t"),
                    0x08 => Some(b"\\b"),
                    0x0c => Some(b"\\f"),
                    _ => None,
                };
                if let Some(e) = esc {
                    out.extend_from_slice(&valid[start..i]);
                    out.extend_from_slice(e);
                    start = i + 1;
                } else if b < 0x20 || b == b'<' || b == b'>' || b == b'&' {
                    out.extend_from_slice(&valid[start..i]);
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[(b >> 4) as usize]);
                    out.push(HEX[(b & 0xf) as usize]);
                    start = i + 1;
                }
                i += 1;
            } else if b == 0xe2
                && i + 2 < valid.len()
                && valid[i + 1] == 0x80
                && (valid[i + 2] == 0xa8 || valid[i + 2] == 0xa9)
            {
                // U+2028 LINE SEPARATOR / U+2029 PARAGRAPH SEPARATOR
                out.extend_from_slice(&valid[start..i]);
                out.extend_from_slice(if valid[i + 2] == 0xa8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                });
                i += 3;
                start = i;
            } else {
                i += 1;
            }
        }
        out.extend_from_slice(&valid[start..]);
        for _ in chunk.invalid() {
            out.extend_from_slice(b"\\ufffd");
        }
    }
    out.push(b'"');
}

/// Appends the JSON line (with its `\n`) of one entry, as the Go file sink wrote it:
///
/// `{"labels":{...},"message":"...","processed_at":"...","source_id":"...","source_type":"docker","timestamp":"..."}`
///
/// `labels` are the entry's labels and pipeline fields ([`LogEntry::labels_iter`]) plus
/// `stream` (from [`LogEntry::stream`], which wins over a label of that name), sorted by key;
/// the Go version left `labels` out when empty, which cannot happen here since `stream` is
/// always present.
pub fn json_line(out: &mut Vec<u8>, e: &LogEntry) {
    let mut ts = String::with_capacity(32);
    out.extend_from_slice(b"{\"labels\":{");
    let stream = e.stream.as_str();
    let mut first = true;
    let mut stream_done = false;
    let mut emit = |out: &mut Vec<u8>, k: &str, v: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        write_json_str(out, k.as_bytes());
        out.push(b':');
        write_json_str(out, v.as_bytes());
    };
    for (k, v) in e.labels_iter() {
        if !stream_done && k >= "stream" {
            emit(out, "stream", stream);
            stream_done = true;
            if k == "stream" {
                continue;
            }
        }
        emit(out, k, v);
    }
    if !stream_done {
        emit(out, "stream", stream);
    }
    out.extend_from_slice(b"},\"message\":");
    write_json_str(out, &e.message);
    out.extend_from_slice(b",\"processed_at\":\"");
    push_rfc3339_nano_go(&mut ts, e.processed_at_ns);
    out.extend_from_slice(ts.as_bytes());
    out.extend_from_slice(b"\",\"source_id\":");
    write_json_str(out, e.source_id.as_bytes());
    out.extend_from_slice(b",\"source_type\":");
    write_json_str(out, e.source_type.as_bytes());
    out.extend_from_slice(b",\"timestamp\":\"");
    ts.clear();
    push_rfc3339_nano_go(&mut ts, e.timestamp_ns);
    out.extend_from_slice(ts.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// `sinks.local_file.text_format`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextFormatOptions {
    /// Put the entry's timestamp (formatted with `timestamp_format`) first.
    pub include_timestamp: bool,
    /// A Go layout; default `2006-01-02T15:04:05.000Z` (the Go default).
    pub timestamp_format: String,
    /// Add `{k=v,...}` with the labels `container`, `container_name`, `level`, `service` (the
    /// ones the Go version picked), sorted by key.
    pub include_labels: bool,
    /// Between the parts; default (and when empty) ` | `.
    pub field_separator: String,
    /// Write the message alone. The key is in the Go sample config but the Go sink never read it
    /// (it wrote the full line); default false, which is the Go output.
    pub raw_message_only: bool,
}

impl Default for TextFormatOptions {
    fn default() -> Self {
        TextFormatOptions {
            include_timestamp: false,
            timestamp_format: "2006-01-02T15:04:05.000Z".to_string(),
            include_labels: false,
            field_separator: " | ".to_string(),
            raw_message_only: false,
        }
    }
}

/// A compiled text format: the options with the layout parsed once.
#[derive(Clone, Debug)]
pub struct TextFormatter {
    opts: TextFormatOptions,
    layout: GoLayout,
}

const TEXT_LABELS: [&str; 4] = ["container", "container_name", "level", "service"];

impl TextFormatter {
    pub fn new(opts: TextFormatOptions) -> Self {
        let layout_src = if opts.timestamp_format.is_empty() {
            "2006-01-02T15:04:05.000Z"
        } else {
            opts.timestamp_format.as_str()
        };
        let layout = GoLayout::parse(layout_src);
        TextFormatter { opts, layout }
    }

    /// Appends the text line (with its `\n`) of one entry: the parts timestamp (optional),
    /// `[SOURCE_TYPE:source_id]`, `{labels}` (optional, when any of the chosen ones exist) and the
    /// message, joined by the separator. The message is written as it came (bytes untouched).
    pub fn line(&self, out: &mut Vec<u8>, e: &LogEntry) {
        if self.opts.raw_message_only {
            out.extend_from_slice(&e.message);
            out.push(b'\n');
            return;
        }
        let sep = if self.opts.field_separator.is_empty() {
            " | "
        } else {
            self.opts.field_separator.as_str()
        };
        let mut s = String::with_capacity(64);
        if self.opts.include_timestamp {
            self.layout.format_into(&mut s, e.timestamp_ns);
            s.push_str(sep);
        }
        s.push('[');
        s.push_str(&e.source_type.to_uppercase());
        s.push(':');
        s.push_str(&e.source_id);
        s.push(']');
        s.push_str(sep);
        if self.opts.include_labels {
            let mut any = false;
            for k in TEXT_LABELS {
                if let Some(v) = e.label(k) {
                    s.push(if any { ',' } else { '{' });
                    any = true;
                    s.push_str(k);
                    s.push('=');
                    s.push_str(v);
                }
            }
            if any {
                s.push('}');
                s.push_str(sep);
            }
        }
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(&e.message);
        out.push(b'\n');
    }
}

/// Appends the text line of one entry with default-constructed formatter state (convenience for
/// one-off use; sinks keep a [`TextFormatter`]).
pub fn text_line(out: &mut Vec<u8>, e: &LogEntry, opts: &TextFormatOptions) {
    TextFormatter::new(opts.clone()).line(out, e)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Lit(String),
    LongYear,
    Year,
    LongMonth,
    Month,
    NumMonth,
    ZeroMonth,
    LongWeekDay,
    WeekDay,
    Day,
    UnderDay,
    ZeroDay,
    UnderYearDay,
    ZeroYearDay,
    Hour,
    Hour12,
    ZeroHour12,
    Minute,
    ZeroMinute,
    Second,
    ZeroSecond,
    PM,
    Pm,
    /// `MST`
    Tz,
    /// `-0700`, `-07:00`, `-07`, `-070000`, `-07:00:00`; `z` = Z variants (UTC prints `Z`).
    Offset {
        z: bool,
        colon: bool,
        hours_only: bool,
        secs: bool,
    },
    /// `.000` (fixed) or `.999` (trimmed), with `.` or `,`.
    Frac {
        digits: usize,
        trim: bool,
        sep: char,
    },
}

/// A Go time layout (reference time `Mon Jan 2 15:04:05 MST 2006`), compiled into tokens.
/// Supports the layout elements of Go's `time` package (years, months, days, weekdays, day of
/// year, 24/12 hours, minutes, seconds, AM/PM, fractions `.000`/`.999`/`,000`, zones `MST`,
/// `Z07:00`, `-0700`, ...), plus the names `RFC3339`, `RFC3339Nano`, `DateTime`, `DateOnly`,
/// `TimeOnly`, `Kitchen`, `RFC1123`, `ANSIC`, `Stamp*` for the layout constants. Times are
/// rendered in UTC (`MST` prints `UTC`, `Z07:00` prints `Z`, `-07:00` prints `+00:00`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoLayout {
    toks: Vec<Tok>,
}

impl GoLayout {
    pub fn parse(layout: &str) -> GoLayout {
        let named = match layout {
            "RFC3339" => Some("2006-01-02T15:04:05Z07:00"),
            "RFC3339Nano" => Some("2006-01-02T15:04:05.999999999Z07:00"),
            "DateTime" => Some("2006-01-02 15:04:05"),
            "DateOnly" => Some("2006-01-02"),
            "TimeOnly" => Some("15:04:05"),
            "Kitchen" => Some("3:04PM"),
            "RFC1123" => Some("Mon, 02 Jan 2006 15:04:05 MST"),
            "RFC1123Z" => Some("Mon, 02 Jan 2006 15:04:05 -0700"),
            "RFC822" => Some("02 Jan 06 15:04 MST"),
            "RFC822Z" => Some("02 Jan 06 15:04 -0700"),
            "ANSIC" => Some("Mon Jan _2 15:04:05 2006"),
            "UnixDate" => Some("Mon Jan _2 15:04:05 MST 2006"),
            "Stamp" => Some("Jan _2 15:04:05"),
            "StampMilli" => Some("Jan _2 15:04:05.000"),
            "StampMicro" => Some("Jan _2 15:04:05.000000"),
            "StampNano" => Some("Jan _2 15:04:05.000000000"),
            _ => None,
        };
        let l = named.unwrap_or(layout).as_bytes();
        let mut toks = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        while i < l.len() {
            let rest = &l[i..];
            let (tok, n): (Option<Tok>, usize) = match l[i] {
                b'J' if rest.starts_with(b"January") => (Some(Tok::LongMonth), 7),
                b'J' if rest.starts_with(b"Jan") => (Some(Tok::Month), 3),
                b'M' if rest.starts_with(b"Monday") => (Some(Tok::LongWeekDay), 6),
                b'M' if rest.starts_with(b"Mon") => (Some(Tok::WeekDay), 3),
                b'M' if rest.starts_with(b"MST") => (Some(Tok::Tz), 3),
                b'0' if rest.starts_with(b"002") => (Some(Tok::ZeroYearDay), 3),
                b'0' if rest.len() >= 2 && (b'1'..=b'6').contains(&rest[1]) => (
                    Some(match rest[1] {
                        b'1' => Tok::ZeroMonth,
                        b'2' => Tok::ZeroDay,
                        b'3' => Tok::ZeroHour12,
                        b'4' => Tok::ZeroMinute,
                        b'5' => Tok::ZeroSecond,
                        _ => Tok::Year,
                    }),
                    2,
                ),
                b'1' if rest.starts_with(b"15") => (Some(Tok::Hour), 2),
                b'1' => (Some(Tok::NumMonth), 1),
                b'2' if rest.starts_with(b"2006") => (Some(Tok::LongYear), 4),
                b'2' => (Some(Tok::Day), 1),
                b'_' if rest.starts_with(b"_2006") => {
                    lit.push('_');
                    (Some(Tok::LongYear), 5)
                }
                b'_' if rest.starts_with(b"__2") => (Some(Tok::UnderYearDay), 3),
                b'_' if rest.starts_with(b"_2") => (Some(Tok::UnderDay), 2),
                b'3' => (Some(Tok::Hour12), 1),
                b'4' => (Some(Tok::Minute), 1),
                b'5' => (Some(Tok::Second), 1),
                b'P' if rest.starts_with(b"PM") => (Some(Tok::PM), 2),
                b'p' if rest.starts_with(b"pm") => (Some(Tok::Pm), 2),
                b'-' | b'Z' => {
                    let z = l[i] == b'Z';
                    let body = &rest[1..];
                    let forms: [(&[u8], bool, bool, bool); 5] = [
                        (b"070000", false, false, true),
                        (b"07:00:00", true, false, true),
                        (b"0700", false, false, false),
                        (b"07:00", true, false, false),
                        (b"07", false, true, false),
                    ];
                    match forms.iter().find(|f| body.starts_with(f.0)) {
                        Some(&(f, colon, hours_only, secs)) => (
                            Some(Tok::Offset {
                                z,
                                colon,
                                hours_only,
                                secs,
                            }),
                            1 + f.len(),
                        ),
                        None => (None, 1),
                    }
                }
                b'.' | b',' if rest.len() >= 2 && (rest[1] == b'0' || rest[1] == b'9') => {
                    let ch = rest[1];
                    let mut j = 1;
                    while j < rest.len() && rest[j] == ch {
                        j += 1;
                    }
                    if j < rest.len() && rest[j].is_ascii_digit() {
                        (None, 1)
                    } else {
                        (
                            Some(Tok::Frac {
                                digits: j - 1,
                                trim: ch == b'9',
                                sep: l[i] as char,
                            }),
                            j,
                        )
                    }
                }
                _ => (None, 1),
            };
            match tok {
                Some(t) => {
                    if !lit.is_empty() {
                        toks.push(Tok::Lit(std::mem::take(&mut lit)));
                    }
                    toks.push(t);
                    i += n;
                }
                None => {
                    // Literal text: copy one whole UTF-8 character.
                    let ch_len = std::str::from_utf8(&l[i..])
                        .ok()
                        .and_then(|s| s.chars().next())
                        .map_or(1, char::len_utf8);
                    lit.push_str(&String::from_utf8_lossy(&l[i..i + ch_len]));
                    i += ch_len;
                }
            }
        }
        if !lit.is_empty() {
            toks.push(Tok::Lit(lit));
        }
        GoLayout { toks }
    }

    /// Formats `ns` (nanoseconds since the epoch) in UTC.
    pub fn format(&self, ns: i64) -> String {
        let mut s = String::with_capacity(32);
        self.format_into(&mut s, ns);
        s
    }

    pub fn format_into(&self, s: &mut String, ns: i64) {
        const MONTHS: [&str; 12] = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ];
        const DAYS: [&str; 7] = [
            "Sunday",
            "Monday",
            "Tuesday",
            "Wednesday",
            "Thursday",
            "Friday",
            "Saturday",
        ];
        let c = civil(ns);
        let h12 = match c.hour % 12 {
            0 => 12,
            h => h,
        };
        for t in &self.toks {
            let _ = match t {
                Tok::Lit(l) => {
                    s.push_str(l);
                    Ok(())
                }
                Tok::LongYear => write!(s, "{:04}", c.year),
                Tok::Year => write!(s, "{:02}", c.year.rem_euclid(100)),
                Tok::LongMonth => {
                    s.push_str(MONTHS[c.month as usize - 1]);
                    Ok(())
                }
                Tok::Month => {
                    s.push_str(&MONTHS[c.month as usize - 1][..3]);
                    Ok(())
                }
                Tok::NumMonth => write!(s, "{}", c.month),
                Tok::ZeroMonth => write!(s, "{:02}", c.month),
                Tok::LongWeekDay => {
                    s.push_str(DAYS[c.weekday as usize]);
                    Ok(())
                }
                Tok::WeekDay => {
                    s.push_str(&DAYS[c.weekday as usize][..3]);
                    Ok(())
                }
                Tok::Day => write!(s, "{}", c.day),
                Tok::UnderDay => write!(s, "{:>2}", c.day),
                Tok::ZeroDay => write!(s, "{:02}", c.day),
                Tok::UnderYearDay => write!(s, "{:>3}", c.yday),
                Tok::ZeroYearDay => write!(s, "{:03}", c.yday),
                Tok::Hour => write!(s, "{:02}", c.hour),
                Tok::Hour12 => write!(s, "{}", h12),
                Tok::ZeroHour12 => write!(s, "{:02}", h12),
                Tok::Minute => write!(s, "{}", c.minute),
                Tok::ZeroMinute => write!(s, "{:02}", c.minute),
                Tok::Second => write!(s, "{}", c.second),
                Tok::ZeroSecond => write!(s, "{:02}", c.second),
                Tok::PM => {
                    s.push_str(if c.hour >= 12 { "PM" } else { "AM" });
                    Ok(())
                }
                Tok::Pm => {
                    s.push_str(if c.hour >= 12 { "pm" } else { "am" });
                    Ok(())
                }
                Tok::Tz => {
                    s.push_str("UTC");
                    Ok(())
                }
                Tok::Offset {
                    z,
                    colon,
                    hours_only,
                    secs,
                } => {
                    if *z {
                        s.push('Z');
                    } else if *hours_only {
                        s.push_str("+00");
                    } else if *colon {
                        s.push_str(if *secs { "+00:00:00" } else { "+00:00" });
                    } else {
                        s.push_str(if *secs { "+000000" } else { "+0000" });
                    }
                    Ok(())
                }
                Tok::Frac { digits, trim, sep } => {
                    push_fraction(s, c.nanos, *digits, *trim, *sep);
                    Ok(())
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escaping_like_go() {
        let mut out = Vec::new();
        write_json_str(
            &mut out,
            b"a\"b\\c\n\r\t\x08\x0c\x01\x1f<>&\x7f\xe2\x80\xa8\xe2\x80\xa9\xff\xe2\x82z\xc3\xa9",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\\u003c\\u003e\\u0026\x7f\\u2028\\u2029\\ufffd\\ufffd\\ufffdz\u{e9}\""
        );
    }

    #[test]
    fn go_layouts() {
        // 2006-01-02T15:04:05.123456789Z shifted: use 2026-11-27T22:23:12.750760435Z
        let ns = crate::decode::timestamp::parse_rfc3339_nanos(b"2026-11-27T22:23:12.750760435Z")
            .unwrap();
        let f = |l: &str| GoLayout::parse(l).format(ns);
        assert_eq!(f("2006-01-02 15:04:05"), "2026-11-27 22:23:12");
        assert_eq!(f("2006-01-02 15:04:05.000"), "2026-11-27 22:23:12.750");
        assert_eq!(
            f("2006-01-02T15:04:05.000000Z07:00"),
            "2026-11-27T22:23:12.750760Z"
        );
        assert_eq!(
            f("2006-01-02T15:04:05.000000000-07:00"),
            "2026-11-27T22:23:12.750760435+00:00"
        );
        assert_eq!(f("RFC3339"), "2026-11-27T22:23:12Z");
        assert_eq!(f("RFC3339Nano"), "2026-11-27T22:23:12.750760435Z");
        assert_eq!(
            f("Mon Jan _2 15:04:05 MST 2006"),
            "Fri Nov 27 22:23:12 UTC 2026"
        );
        assert_eq!(
            f("Monday, January 2, 06 3:04:05 PM"),
            "Friday, November 27, 26 10:23:12 PM"
        );
        assert_eq!(f("2006-01-02T15:04:05.000Z"), "2026-11-27T22:23:12.750Z");
        assert_eq!(f("20060102-150405"), "20261127-222312");
        assert_eq!(f("002 .999 ,00"), "331 .75 ,75");
    }
}
