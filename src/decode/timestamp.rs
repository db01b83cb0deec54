//! The RFC 3339 timestamps dockerd writes in front of each message with `timestamps=1`.
//!
//! dockerd formats them with Go's `RFC3339NanoFixed` layout: `2026-11-27T22:23:12.750760435Z`,
//! always 9 fractional digits and always UTC, followed by one space. The parser is hand written
//! because it runs once per log message: fixed positions, no allocation, no locale, no table
//! lookups. It also accepts 0 to 9 fractional digits and a `+HH:MM` / `-HH:MM` offset so that a
//! daemon (or a proxy) formatting differently still decodes.
//!
//! The way back, [`push_rfc3339_nano_go`] (Go's `time.RFC3339Nano`, what the Go version wrote
//! and what sinks and `timestamp_parse`'s `target_field` write), and [`civil`], live here too:
//! every layer above reads and writes times through this module.
//!
//! Time is kept as `i64` nanoseconds since the Unix epoch (UTC), the unit Loki and Docker's
//! `since` both speak. That covers 1677-09-21 to 2262-04-11; anything outside is an error.

use std::fmt::Write as _;

/// Longest timestamp accepted: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn+HH:MM`.
pub const TIMESTAMP_MAX_LEN: usize = 35;

/// Longest timestamp prefix accepted: a timestamp of [`TIMESTAMP_MAX_LEN`] plus its space.
pub const PREFIX_MAX_LEN: usize = TIMESTAMP_MAX_LEN + 1;

/// Shortest timestamp accepted: `YYYY-MM-DDTHH:MM:SSZ`.
pub const TIMESTAMP_MIN_LEN: usize = 20;

const NANOS_PER_SEC: i64 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// Why a timestamp did not parse, and at which byte of the timestamp text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} (byte {pos} of the timestamp)")]
pub struct TimestampError {
    pos: usize,
    what: &'static str,
}

impl TimestampError {
    fn new(pos: usize, what: &'static str) -> Self {
        TimestampError { pos, what }
    }

    /// Byte position, within the timestamp text, where parsing failed.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// What was wrong, without position.
    pub fn what(&self) -> &'static str {
        self.what
    }
}

/// Parses an RFC 3339 timestamp (the whole of `s`) into nanoseconds since the Unix epoch.
pub fn parse_rfc3339_nanos(s: &[u8]) -> Result<i64, TimestampError> {
    let minute = parse_minute(s)?;
    parse_tail(s, minute)
}

/// A timestamp parser that remembers the last minute it decoded.
///
/// Consecutive messages of a stream almost always share `YYYY-MM-DDTHH:MM`, and validating
/// and converting that date is most of the work; with the minute cached, a timestamp costs a
/// 16-byte compare, two digits, and the fraction.
#[derive(Debug, Clone, Default)]
pub struct TimestampParser {
    key: [u8; 16],
    /// Seconds since the epoch of `key`'s minute, before any UTC offset is applied.
    minute_secs: i64,
    valid: bool,
}

impl TimestampParser {
    /// A parser with nothing cached.
    pub fn new() -> Self {
        Self::default()
    }

    /// Same as [`parse_rfc3339_nanos`].
    pub fn parse(&mut self, s: &[u8]) -> Result<i64, TimestampError> {
        if self.valid && s.len() >= TIMESTAMP_MIN_LEN && s[..16] == self.key {
            return parse_tail(s, self.minute_secs);
        }
        let minute = parse_minute(s)?;
        let ns = parse_tail(s, minute)?;
        self.key.copy_from_slice(&s[..16]);
        self.minute_secs = minute;
        self.valid = true;
        Ok(ns)
    }
}

/// Checks the length and `YYYY-MM-DDTHH:MM` (bytes 0..16); returns that minute as seconds
/// since the epoch, ignoring any UTC offset.
fn parse_minute(s: &[u8]) -> Result<i64, TimestampError> {
    if s.len() < TIMESTAMP_MIN_LEN {
        // Point at the first byte that cannot start a timestamp, if any: "hello" is wrong at
        // byte 0, not at its end.
        const SHAPE: &[u8; 19] = b"0000-00-00T00:00:00";
        let pos = s
            .iter()
            .zip(SHAPE)
            .position(|(&b, &want)| {
                if want == b'0' {
                    !b.is_ascii_digit()
                } else {
                    b != want
                }
            })
            .unwrap_or(s.len());
        return Err(TimestampError::new(pos, "not a complete timestamp"));
    }
    let year = digits(s, 0, 4)?;
    sep(s, 4, b'-', "expected '-' after the year")?;
    let month = digits(s, 5, 2)?;
    sep(s, 7, b'-', "expected '-' after the month")?;
    let day = digits(s, 8, 2)?;
    if s[10] != b'T' && s[10] != b't' {
        return Err(TimestampError::new(
            10,
            "expected 'T' between date and time",
        ));
    }
    let hour = digits(s, 11, 2)?;
    sep(s, 13, b':', "expected ':' after the hour")?;
    let minute = digits(s, 14, 2)?;
    if !(1..=12).contains(&month) {
        return Err(TimestampError::new(5, "month out of range"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(TimestampError::new(8, "day out of range"));
    }
    if hour > 23 {
        return Err(TimestampError::new(11, "hour out of range"));
    }
    if minute > 59 {
        return Err(TimestampError::new(14, "minute out of range"));
    }
    Ok(days_from_civil(year, month, day) * SECS_PER_DAY + hour * 3600 + minute * 60)
}

/// Parses `:SS[.fraction](Z|±HH:MM)` from byte 16 on, given the minute's seconds.
fn parse_tail(s: &[u8], minute_secs: i64) -> Result<i64, TimestampError> {
    sep(s, 16, b':', "expected ':' after the minute")?;
    let second = digits(s, 17, 2)?;
    // Go (and so dockerd) never produces a leap second and its parser rejects one: so do we.
    if second > 59 {
        return Err(TimestampError::new(17, "second out of range"));
    }

    let mut pos = 19;
    let mut nanos: i64 = 0;
    if s.get(pos) == Some(&b'.') {
        pos += 1;
        let nine = s.get(pos..pos + 9).and_then(|d| {
            let eight = eight_digits(d[..8].try_into().ok()?)?;
            d[8].is_ascii_digit()
                .then(|| eight as i64 * 10 + i64::from(d[8] - b'0'))
        });
        match nine {
            // dockerd's 9 digits, converted 8 at a time.
            Some(n) if !s.get(pos + 9).is_some_and(u8::is_ascii_digit) => {
                nanos = n;
                pos += 9;
            }
            _ => {
                let start = pos;
                while pos < s.len() && s[pos].is_ascii_digit() {
                    if pos - start == 9 {
                        return Err(TimestampError::new(pos, "more than 9 fractional digits"));
                    }
                    nanos = nanos * 10 + i64::from(s[pos] - b'0');
                    pos += 1;
                }
                let n = pos - start;
                if n == 0 {
                    return Err(TimestampError::new(pos, "expected a digit after '.'"));
                }
                nanos *= 10_i64.pow((9 - n) as u32);
            }
        }
    }

    let offset_secs: i64 = match s.get(pos) {
        Some(b'Z') | Some(b'z') => {
            pos += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            if s.len() < pos + 6 {
                return Err(TimestampError::new(s.len(), "truncated UTC offset"));
            }
            let oh = digits(s, pos + 1, 2)?;
            sep(s, pos + 3, b':', "expected ':' in the UTC offset")?;
            let om = digits(s, pos + 4, 2)?;
            if oh > 23 || om > 59 {
                return Err(TimestampError::new(pos + 1, "UTC offset out of range"));
            }
            let off = oh * 3600 + om * 60;
            pos += 6;
            if sign == b'-' {
                -off
            } else {
                off
            }
        }
        Some(_) => {
            return Err(TimestampError::new(pos, "expected 'Z' or a UTC offset"));
        }
        None => return Err(TimestampError::new(pos, "missing 'Z' or UTC offset")),
    };
    if pos != s.len() {
        return Err(TimestampError::new(
            pos,
            "unexpected bytes after the timestamp",
        ));
    }

    let secs = minute_secs + second - offset_secs;
    match secs
        .checked_mul(NANOS_PER_SEC)
        .and_then(|n| n.checked_add(nanos))
    {
        Some(ns) => Ok(ns),
        // Near i64::MIN, secs * 1e9 alone overflows while the sum does not: retry wide.
        None => {
            let total = i128::from(secs) * i128::from(NANOS_PER_SEC) + i128::from(nanos);
            i64::try_from(total)
                .map_err(|_| TimestampError::new(0, "timestamp outside the i64 nanosecond range"))
        }
    }
}

/// Eight ASCII digits to their value, or `None` if any byte is not a digit (SWAR, after
/// simdjson's `parse_eight_digits_unrolled`).
#[inline]
fn eight_digits(b: [u8; 8]) -> Option<u64> {
    let v = u64::from_le_bytes(b);
    // A byte outside '0'..='9' sets its high bit in one of the two terms.
    if (v.wrapping_add(0x4646_4646_4646_4646) | v.wrapping_sub(0x3030_3030_3030_3030))
        & 0x8080_8080_8080_8080
        != 0
    {
        return None;
    }
    let v = v - 0x3030_3030_3030_3030;
    let v = (v * 10 + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    let v = (v * 100 + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    Some((v * 10_000 + (v >> 32)) & 0xFFFF_FFFF)
}

/// Parses a timestamp prefix at the start of `line`: a timestamp followed by one space.
///
/// Returns the time and the prefix length including the space. The space must appear within
/// [`PREFIX_MAX_LEN`] bytes.
pub fn parse_prefix(line: &[u8]) -> Result<(i64, usize), TimestampError> {
    let window = &line[..line.len().min(PREFIX_MAX_LEN)];
    match memchr::memchr(b' ', window) {
        Some(sp) => Ok((parse_rfc3339_nanos(&line[..sp])?, sp + 1)),
        None if line.len() >= PREFIX_MAX_LEN => Err(TimestampError::new(
            PREFIX_MAX_LEN,
            "no space after the timestamp",
        )),
        None => Err(TimestampError::new(
            line.len(),
            "timestamp prefix cut short",
        )),
    }
}

/// Formats nanoseconds since the epoch the way dockerd does: 9 fractional digits, `Z`.
pub fn format_rfc3339_nanos(ns: i64) -> String {
    let secs = ns.div_euclid(NANOS_PER_SEC);
    let nanos = ns.rem_euclid(NANOS_PER_SEC);
    let days = secs.div_euclid(SECS_PER_DAY);
    let sod = secs.rem_euclid(SECS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let mut s = String::with_capacity(30);
    let _ = write!(
        s,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    s
}

/// Formats nanoseconds since the epoch as `SEC.NANOS` (9-digit nanos) for Docker's `since`.
///
/// Before the epoch the seconds are floored, so the nanos stay positive: dockerd reads the two
/// parts as `time.Unix(sec, nsec)`, which adds them, so `-1.500000000` means -0.5 s.
pub fn format_since(ns: i64) -> String {
    format!(
        "{}.{:09}",
        ns.div_euclid(NANOS_PER_SEC),
        ns.rem_euclid(NANOS_PER_SEC)
    )
}

#[inline]
fn digits(s: &[u8], at: usize, n: usize) -> Result<i64, TimestampError> {
    let mut v: i64 = 0;
    for (i, &b) in s[at..at + n].iter().enumerate() {
        if !b.is_ascii_digit() {
            return Err(TimestampError::new(at + i, "expected a digit"));
        }
        v = v * 10 + i64::from(b - b'0');
    }
    Ok(v)
}

#[inline]
fn sep(s: &[u8], at: usize, want: u8, what: &'static str) -> Result<(), TimestampError> {
    if s[at] == want {
        Ok(())
    } else {
        Err(TimestampError::new(at, what))
    }
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A UTC instant broken into calendar fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub nanos: u32,
    /// 0 = Sunday .. 6 = Saturday
    pub weekday: u32,
    /// 1..=366
    pub yday: u32,
}

/// Splits nanoseconds since the Unix epoch into UTC calendar fields.
pub fn civil(ns: i64) -> Civil {
    let secs = ns.div_euclid(NANOS_PER_SEC);
    let nanos = ns.rem_euclid(NANOS_PER_SEC) as u32;
    let days = secs.div_euclid(SECS_PER_DAY);
    let sod = secs.rem_euclid(SECS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let jan1 = days_from_civil(year, 1, 1);
    Civil {
        year,
        month: month as u32,
        day: day as u32,
        hour: (sod / 3600) as u32,
        minute: (sod / 60 % 60) as u32,
        second: (sod % 60) as u32,
        nanos,
        weekday: (days + 4).rem_euclid(7) as u32,
        yday: (days - jan1 + 1) as u32,
    }
}

/// Go's `time.RFC3339Nano` rendering of a UTC instant: `2026-11-27T22:23:12.75076Z`
/// (fraction without trailing zeros, no fraction at all on a whole second). This is what the Go
/// version wrote in `timestamp` and `processed_at`.
pub fn format_rfc3339_nano_go(ns: i64) -> String {
    let mut s = String::with_capacity(30);
    push_rfc3339_nano_go(&mut s, ns);
    s
}

pub fn push_rfc3339_nano_go(s: &mut String, ns: i64) {
    let c = civil(ns);
    let _ = write!(
        s,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    );
    push_fraction(s, c.nanos, 9, true, '.');
    s.push('Z');
}

/// `digits` fractional digits of `nanos`; `trim` drops trailing zeros (and the separator when
/// nothing is left), as Go's `.999` layouts do.
pub(crate) fn push_fraction(s: &mut String, nanos: u32, digits: usize, trim: bool, sep: char) {
    let mut buf = [0u8; 9];
    let mut n = nanos;
    for i in (0..9).rev() {
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let mut len = digits.min(9);
    if trim {
        while len > 0 && buf[len - 1] == b'0' {
            len -= 1;
        }
        if len == 0 {
            return;
        }
    }
    s.push(sep);
    for &b in &buf[..len] {
        s.push(b as char);
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_known_dates() {
        let c = civil(0);
        assert_eq!(
            (c.year, c.month, c.day, c.weekday, c.yday),
            (1970, 1, 1, 4, 1)
        );
        // 2024-02-29T13:14:15.5Z, a Thursday, day 60
        let ns = (days_from_civil(2024, 2, 29) * 86_400 + 13 * 3600 + 14 * 60 + 15) * NANOS_PER_SEC
            + 500_000_000;
        let c = civil(ns);
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute, c.second, c.nanos, c.weekday, c.yday),
            (2024, 2, 29, 13, 14, 15, 500_000_000, 4, 60)
        );
        for d in -800_000..800_000i64 {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn rfc3339_nano_trims_like_go() {
        assert_eq!(format_rfc3339_nano_go(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339_nano_go(1), "1970-01-01T00:00:00.000000001Z");
        assert_eq!(
            format_rfc3339_nano_go(500_000_000),
            "1970-01-01T00:00:00.5Z"
        );
        assert_eq!(format_rfc3339_nano_go(-1), "1969-12-31T23:59:59.999999999Z");
    }

    fn p(s: &str) -> Result<i64, TimestampError> {
        parse_rfc3339_nanos(s.as_bytes())
    }

    #[test]
    fn parses_dockerd_format() {
        assert_eq!(p("1970-01-01T00:00:00.000000000Z"), Ok(0));
        assert_eq!(p("1970-01-01T00:00:01.000000001Z"), Ok(1_000_000_001));
        // date -u -d 2026-11-27T22:23:12Z +%s
        assert_eq!(
            p("2026-11-27T22:23:12.750760435Z"),
            Ok(1_795_818_192_750_760_435)
        );
        assert_eq!(p("1969-12-31T23:59:59.999999999Z"), Ok(-1));
    }

    #[test]
    fn accepts_short_fractions_offsets_and_lowercase() {
        assert_eq!(p("1970-01-01T00:00:01Z"), Ok(1_000_000_000));
        assert_eq!(p("1970-01-01T00:00:01.5Z"), Ok(1_500_000_000));
        assert_eq!(p("1970-01-01T00:00:01.123456z"), Ok(1_123_456_000));
        assert_eq!(p("1970-01-01t01:00:00+01:00"), Ok(0));
        assert_eq!(p("1969-12-31T22:30:00.000000000-01:30"), Ok(0));
        assert_eq!(
            p("2026-11-28T00:23:12.750760435+02:00"),
            p("2026-11-27T22:23:12.750760435Z")
        );
    }

    #[test]
    fn leap_years() {
        assert!(p("2024-02-29T00:00:00Z").is_ok());
        assert!(p("2000-02-29T00:00:00Z").is_ok());
        assert_eq!(p("2100-02-29T00:00:00Z").unwrap_err().pos(), 8);
        assert_eq!(p("2023-02-29T00:00:00Z").unwrap_err().pos(), 8);
    }

    #[test]
    fn rejects_bad_inputs_with_position() {
        let cases: &[(&str, usize)] = &[
            ("", 0),
            ("2026-11-27T22:23:12", 19),
            ("hello", 0),
            ("2026-11-27X", 10),
            ("2026-11-27T22:23:12.", 20),
            ("2026-11-27T22:23:12.Z", 20),
            ("2026-11-27T22:23:12.1234567890Z", 29),
            ("2026/11-27T22:23:12Z", 4),
            ("2026-11-27 22:23:12Z", 10),
            ("2026-1x-27T22:23:12Z", 6),
            ("2026-13-27T22:23:12Z", 5),
            ("2026-00-27T22:23:12Z", 5),
            ("2026-11-31T22:23:12Z", 8),
            ("2026-11-00T22:23:12Z", 8),
            ("2026-11-27T24:23:12Z", 11),
            ("2026-11-27T22:60:12Z", 14),
            ("2026-11-27T22:23:60Z", 17),
            ("2026-11-27T22:23:12.5X", 21),
            ("2026-11-27T22:23:12.5Z ", 22),
            ("2026-11-27T22:23:12+01", 22),
            ("2026-11-27T22:23:12+01-00", 22),
            ("2026-11-27T22:23:12+24:00", 20),
            ("９026-11-27T22:23:12Z", 0),
            ("9999-12-31T23:59:59Z", 0),
            ("1600-01-01T00:00:00Z", 0),
        ];
        for &(s, pos) in cases {
            let err = p(s).expect_err(s);
            assert_eq!(err.pos(), pos, "{s:?}: {err}");
        }
    }

    #[test]
    fn i64_range_edges() {
        assert_eq!(
            p("2262-04-11T23:47:16.854775807Z"),
            Ok(i64::MAX),
            "last representable instant"
        );
        assert!(p("2262-04-11T23:47:16.854775808Z").is_err());
        assert_eq!(p("1677-09-21T00:12:43.145224192Z"), Ok(i64::MIN));
        assert!(p("1677-09-21T00:12:43.145224191Z").is_err());
    }

    #[test]
    fn eight_digits_swar() {
        assert_eq!(eight_digits(*b"12345678"), Some(12_345_678));
        assert_eq!(eight_digits(*b"00000000"), Some(0));
        assert_eq!(eight_digits(*b"99999999"), Some(99_999_999));
        for bad in [*b"1234567/", *b":2345678", *b"1234 678", *b"1234\xff678"] {
            assert_eq!(eight_digits(bad), None, "{bad:?}");
        }
        for i in 0..=255u8 {
            let mut b = *b"55555555";
            b[3] = i;
            assert_eq!(eight_digits(b).is_some(), i.is_ascii_digit(), "byte {i}");
        }
    }

    #[test]
    fn cached_parser_agrees_with_the_plain_one() {
        let mut parser = TimestampParser::new();
        let inputs = [
            "2026-11-27T22:23:12.750760435Z",
            "2026-11-27T22:23:13.000000001Z",
            "2026-11-27T22:23:13Z",
            "2026-11-27T22:23:13.5+01:00",
            "2026-11-27T22:23:60Z",
            "2026-11-27T22:23:1x.000000001Z",
            "2026-11-27T22:24:00.123456789Z",
            "2026-11-28T22:24:00.123456789Z",
            "2026-11-27T22:23:12.7507604351Z",
            "2026-11-27T22:23",
            "2026-11-27T22:23:12.750760435Z",
        ];
        for s in inputs {
            assert_eq!(parser.parse(s.as_bytes()), p(s), "{s}");
        }
    }

    #[test]
    fn prefix() {
        let line = b"2026-11-27T22:23:12.750760435Z hello";
        assert_eq!(parse_prefix(line), Ok((1_795_818_192_750_760_435, 31)));
        assert_eq!(parse_prefix(b"2026-11-27T22:23:12Z ").unwrap().1, 21);
        assert_eq!(parse_prefix(b"2026-11-27T22:23").unwrap_err().pos(), 16);
        let long = [b'1'; 50];
        assert_eq!(parse_prefix(&long).unwrap_err().pos(), PREFIX_MAX_LEN);
        assert!(parse_prefix(b"hello world").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(format_rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            format_rfc3339_nanos(1_795_818_192_750_760_435),
            "2026-11-27T22:23:12.750760435Z"
        );
        assert_eq!(format_rfc3339_nanos(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(
            format_since(1_795_818_192_750_760_435),
            "1795818192.750760435"
        );
        assert_eq!(format_since(5), "0.000000005");
        assert_eq!(format_since(-500_000_000), "-1.500000000");
    }

    #[test]
    fn round_trips() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut samples = vec![0, 1, -1, i64::MAX, i64::MIN, 951_782_400_000_000_000];
        for _ in 0..20_000 {
            // xorshift64: deterministic spread over the whole i64 range.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x as i64);
        }
        let mut parser = TimestampParser::new();
        for ns in samples {
            let s = format_rfc3339_nanos(ns);
            assert_eq!(s.len(), 30, "{s}");
            assert_eq!(p(&s), Ok(ns), "{s}");
            assert_eq!(parser.parse(s.as_bytes()), Ok(ns), "{s}");
            let since = format_since(ns);
            let (sec, frac) = since.split_once('.').unwrap();
            let back = sec.parse::<i128>().unwrap() * 1_000_000_000 + frac.parse::<i128>().unwrap();
            assert_eq!(back, i128::from(ns));
        }
    }

    #[test]
    fn civil_round_trip_every_day() {
        for days in -200_000..200_000 {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
