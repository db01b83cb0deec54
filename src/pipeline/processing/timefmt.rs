//! Go time layouts (`2006-01-02T15:04:05.000000Z`) translated once into a small parser.
//!
//! Only the tokens the Go team's pipelines use are supported: `2006` `01` `02` `15` `04` `05`,
//! fractions `.000…` / `.999…` (any number of digits is accepted when parsing, as the authors
//! of `.000Z` layouts fed them longer fractions), zones `-07:00` `-0700` `Z07:00` `Z0700`;
//! every other character is literal (`T`, a lone `Z`, spaces). A Go token this parser does
//! not know (`Jan`, `Mon`, `MST`, `PM`, `_2`, `06`, a lone `1`) is refused when the layout is
//! compiled, so a layout never silently parses the wrong field. As in Go, a fraction right
//! after the seconds is accepted even when the layout has none.

use chrono::{Local, NaiveDate, TimeZone};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    /// `.000`/`.999` (and `,` variants): digits after a separator.
    Fraction {
        optional: bool,
    },
    /// `-07:00` / `-0700`; `z`: `Z` stands for +00:00 (`Z07:00`).
    Zone {
        colon: bool,
        z: bool,
    },
    Literal(u8),
}

/// Where a zone-less time is placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Zone {
    Utc,
    Local,
    /// Seconds east of UTC.
    Fixed(i32),
}

impl Zone {
    /// `UTC` (or empty), `Local`, or a fixed offset `+03:00` / `-0500`.
    pub fn parse(s: &str) -> Option<Zone> {
        match s.trim() {
            "" | "UTC" | "utc" | "Z" | "GMT" => Some(Zone::Utc),
            "Local" | "local" => Some(Zone::Local),
            other => parse_offset(other.as_bytes())
                .and_then(|(secs, used)| (used == other.len()).then_some(Zone::Fixed(secs))),
        }
    }
}

fn parse_offset(s: &[u8]) -> Option<(i32, usize)> {
    let sign = match s.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let h = two(s, 1)?;
    let (m, used) = if s.get(3) == Some(&b':') {
        (two(s, 4)?, 6)
    } else {
        (two(s, 3)?, 5)
    };
    (h < 24 && m < 60).then_some((sign * (h as i32 * 3600 + m as i32 * 60), used))
}

fn two(s: &[u8], at: usize) -> Option<u32> {
    let a = s.get(at)?.checked_sub(b'0').filter(|d| *d < 10)?;
    let b = s.get(at + 1)?.checked_sub(b'0').filter(|d| *d < 10)?;
    Some(u32::from(a) * 10 + u32::from(b))
}

#[derive(Clone, Debug)]
pub struct Layout {
    toks: Vec<Tok>,
}

/// Go tokens refused at compile time, longest first so that `January` is not read as `Jan`.
const UNSUPPORTED: &[&str] = &[
    "January", "Monday", "Jan", "Mon", "MST", "PM", "pm", "__2", "_2", "002", "06", "03", "1", "2",
    "3", "4", "5",
];

impl Layout {
    pub fn compile(layout: &str) -> Result<Layout, String> {
        let b = layout.as_bytes();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let rest = &layout[i..];
            let known: &[(&str, Tok)] = &[
                ("2006", Tok::Year),
                ("01", Tok::Month),
                ("02", Tok::Day),
                ("15", Tok::Hour),
                ("04", Tok::Minute),
                ("05", Tok::Second),
                (
                    "Z07:00",
                    Tok::Zone {
                        colon: true,
                        z: true,
                    },
                ),
                (
                    "Z0700",
                    Tok::Zone {
                        colon: false,
                        z: true,
                    },
                ),
                (
                    "-07:00",
                    Tok::Zone {
                        colon: true,
                        z: false,
                    },
                ),
                (
                    "-0700",
                    Tok::Zone {
                        colon: false,
                        z: false,
                    },
                ),
            ];
            if let Some((text, tok)) = known.iter().find(|(t, _)| rest.starts_with(t)) {
                toks.push(tok.clone());
                i += text.len();
                continue;
            }
            if (b[i] == b'.' || b[i] == b',')
                && matches!(b.get(i + 1), Some(b'0') | Some(b'9'))
                && toks.last() == Some(&Tok::Second)
            {
                let digit = b[i + 1];
                let n = b[i + 1..].iter().take_while(|&&c| c == digit).count();
                toks.push(Tok::Fraction {
                    optional: digit == b'9',
                });
                i += 1 + n;
                continue;
            }
            if let Some(t) = UNSUPPORTED.iter().find(|t| rest.starts_with(*t)) {
                return Err(format!(
                    "layout {layout:?}: the Go token {t:?} at byte {i} is not supported (supported: \
                     2006 01 02 15 04 05 .000 .999 -07:00 -0700 Z07:00 Z0700)"
                ));
            }
            toks.push(Tok::Literal(b[i]));
            i += 1;
        }
        if !toks.contains(&Tok::Year) || !toks.contains(&Tok::Month) || !toks.contains(&Tok::Day) {
            return Err(format!(
                "layout {layout:?} has no full date (2006, 01 and 02 are required)"
            ));
        }
        Ok(Layout { toks })
    }

    /// Parses the start of `s`: the time in nanoseconds since the epoch and the bytes used.
    pub fn parse_prefix(&self, s: &str, zone: &Zone) -> Result<(i64, usize), String> {
        let b = s.as_bytes();
        let (mut y, mut mo, mut d, mut h, mut mi, mut sec, mut nanos) = (0i32, 0, 0, 0, 0, 0, 0);
        let mut offset: Option<i32> = None;
        let mut i = 0;
        let num = |i: usize, n: usize, what: &str| -> Result<u32, String> {
            let digits = b.get(i..i + n).filter(|d| d.iter().all(u8::is_ascii_digit));
            digits
                .map(|d| d.iter().fold(0u32, |a, c| a * 10 + u32::from(c - b'0')))
                .ok_or_else(|| format!("{what} expected at byte {i} of {s:?}"))
        };
        let mut k = 0;
        while k < self.toks.len() {
            match &self.toks[k] {
                Tok::Year => {
                    y = num(i, 4, "a 4-digit year")? as i32;
                    i += 4;
                }
                Tok::Month => {
                    mo = num(i, 2, "a 2-digit month")?;
                    i += 2;
                }
                Tok::Day => {
                    d = num(i, 2, "a 2-digit day")?;
                    i += 2;
                }
                Tok::Hour => {
                    h = num(i, 2, "a 2-digit hour")?;
                    i += 2;
                }
                Tok::Minute => {
                    mi = num(i, 2, "2-digit minutes")?;
                    i += 2;
                }
                Tok::Second => {
                    sec = num(i, 2, "2-digit seconds")?;
                    i += 2;
                    // Go accepts a fraction after the seconds the layout does not mention.
                    if !matches!(self.toks.get(k + 1), Some(Tok::Fraction { .. })) {
                        if let Some((n, used)) = fraction(&b[i..]) {
                            nanos = n;
                            i += used;
                        }
                    }
                }
                Tok::Fraction { optional } => match fraction(&b[i..]) {
                    Some((n, used)) => {
                        nanos = n;
                        i += used;
                    }
                    None if *optional => {}
                    None => {
                        return Err(format!(
                            "a fraction of a second expected at byte {i} of {s:?}"
                        ))
                    }
                },
                Tok::Zone { colon: _, z } => {
                    if *z && b.get(i) == Some(&b'Z') {
                        offset = Some(0);
                        i += 1;
                    } else {
                        let (secs, used) = parse_offset(&b[i..]).ok_or_else(|| {
                            format!("a zone offset expected at byte {i} of {s:?}")
                        })?;
                        offset = Some(secs);
                        i += used;
                    }
                }
                Tok::Literal(c) => {
                    if b.get(i) != Some(c) {
                        return Err(format!(
                            "{:?} expected at byte {i} of {s:?}",
                            char::from(*c)
                        ));
                    }
                    i += 1;
                }
            }
            k += 1;
        }
        let date = NaiveDate::from_ymd_opt(y, mo, d)
            .ok_or_else(|| format!("no such date {y:04}-{mo:02}-{d:02} in {s:?}"))?;
        let time = date
            .and_hms_nano_opt(h, mi, sec, nanos)
            .ok_or_else(|| format!("no such time {h:02}:{mi:02}:{sec:02} in {s:?}"))?;
        let utc_secs = match (offset, zone) {
            (Some(off), _) | (None, &Zone::Fixed(off)) => {
                time.and_utc().timestamp() - i64::from(off)
            }
            (None, Zone::Utc) => time.and_utc().timestamp(),
            (None, Zone::Local) => Local
                .from_local_datetime(&time)
                .earliest()
                .ok_or_else(|| format!("{s:?} does not exist in the local time zone"))?
                .timestamp(),
        };
        Ok((utc_secs * 1_000_000_000 + i64::from(nanos), i))
    }
}

/// `.123` or `,123` (1 to 9 digits; more are read and truncated): nanoseconds and bytes used.
fn fraction(b: &[u8]) -> Option<(u32, usize)> {
    if !matches!(b.first(), Some(b'.') | Some(b',')) {
        return None;
    }
    let digits = b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut n = 0u32;
    for (j, c) in b[1..1 + digits].iter().enumerate().take(9) {
        n += u32::from(c - b'0') * 10u32.pow(8 - j as u32);
    }
    Some((n, 1 + digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(layout: &str, s: &str, zone: Zone) -> i64 {
        Layout::compile(layout)
            .unwrap()
            .parse_prefix(s, &zone)
            .unwrap()
            .0
    }

    #[test]
    fn the_reference_layouts_parse() {
        // 2024-01-02T03:04:05Z = 1704164645
        let base = 1_704_164_645_000_000_000i64;
        assert_eq!(
            ns(
                "2006-01-02T15:04:05.000000Z",
                "2024-01-02T03:04:05.123456Z",
                Zone::Utc
            ),
            base + 123_456_000
        );
        assert_eq!(
            ns(
                "2006-01-02 15:04:05.000000",
                "2024-01-02 03:04:05.000001",
                Zone::Utc
            ),
            base + 1_000
        );
        assert_eq!(
            ns(
                "2006-01-02T15:04:05.000000000Z",
                "2024-01-02T03:04:05.000000007Z",
                Zone::Utc
            ),
            base + 7
        );
        assert_eq!(
            ns(
                "2006-01-02T15:04:05.000Z",
                "2024-01-02T03:04:05.5Z",
                Zone::Utc
            ),
            base + 500_000_000
        );
        // No fraction in the layout: Go accepts one anyway.
        assert_eq!(
            ns("2006-01-02T15:04:05Z", "2024-01-02T03:04:05.25Z", Zone::Utc),
            base + 250_000_000
        );
        assert_eq!(
            ns(
                "2006-01-02T15:04:05.000000-07:00",
                "2024-01-02T05:04:05.000000+02:00",
                Zone::Local
            ),
            base
        );
        assert_eq!(
            ns(
                "2006-01-02 15:04:05",
                "2024-01-02 06:04:05",
                Zone::Fixed(3 * 3600)
            ),
            base
        );
    }

    #[test]
    fn a_prefix_reports_the_bytes_used() {
        let l = Layout::compile("2006-01-02T15:04:05.000000Z").unwrap();
        let s = "2024-01-02T03:04:05.123456Z 0 [Note] ready";
        assert_eq!(l.parse_prefix(s, &Zone::Utc).unwrap().1, 27);
    }

    #[test]
    fn unsupported_tokens_and_bad_input_are_named() {
        let e = Layout::compile("Jan 02 2006").unwrap_err();
        assert!(e.contains("\"Jan\"") && e.contains("byte 0"), "{e}");
        let e = Layout::compile("02/01/06").unwrap_err();
        assert!(e.contains("\"06\""), "{e}");
        let l = Layout::compile("2006-01-02").unwrap();
        let e = l.parse_prefix("2024-13-01", &Zone::Utc).unwrap_err();
        assert!(e.contains("2024-13-01"), "{e}");
        let e = l.parse_prefix("2024/01/01", &Zone::Utc).unwrap_err();
        assert!(e.contains("byte 4"), "{e}");
        assert_eq!(Zone::parse("Europe/Paris"), None);
        assert_eq!(Zone::parse("+02:00"), Some(Zone::Fixed(7200)));
    }
}
