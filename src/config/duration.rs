//! Go-style durations: `time.ParseDuration` syntax ("30s", "1h30m", "250ms", "1.5s") plus plain
//! numbers meaning seconds (YAML integers and floats, and digit-only strings).

use std::time::Duration;

const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3600 * 1_000_000_000),
];

/// Parses a Go duration string. A string of only digits (with an optional fraction) is read as
/// seconds, which Go's `time.ParseDuration` would reject; negative durations are rejected.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let s = text.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = s.parse().ok()?;
        return Duration::try_from_secs_f64(secs).ok();
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let (unit_ns, after) = UNITS
            .iter()
            .filter(|(u, _)| after.starts_with(u))
            .max_by_key(|(u, _)| u.len())
            .map(|(u, ns)| (*ns, &after[u.len()..]))?;
        let int_val: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        total = total.checked_add(int_val.checked_mul(unit_ns)?)?;
        if !frac_part.is_empty() {
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac_val: u128 = digits.parse().ok()?;
            let scale = 10u128.pow(digits.len() as u32);
            total = total.checked_add(frac_val * unit_ns / scale)?;
        }
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Formats a duration the way Go's `time.Duration.String` does ("30s", "1h30m0s", "250ms").
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", frac(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", frac(nanos, 1_000_000));
    }
    let total_secs = d.as_secs();
    let h = total_secs / 3600;
    let m = (total_secs % 3600) / 60;
    let s_nanos = u128::from(total_secs % 60) * 1_000_000_000 + u128::from(d.subsec_nanos());
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{}s", frac(s_nanos, 1_000_000_000)));
    out
}

fn frac(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let rem = value % unit;
    if rem == 0 {
        return whole.to_string();
    }
    let width = (unit.ilog10()) as usize;
    let digits = format!("{rem:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_forms() {
        let cases: &[(&str, u64)] = &[
            ("30s", 30_000_000_000),
            ("5m", 300_000_000_000),
            ("1h30m", 5_400_000_000_000),
            ("250ms", 250_000_000),
            ("1.5s", 1_500_000_000),
            ("0", 0),
            ("0s", 0),
            ("10", 10_000_000_000),
            ("2.5", 2_500_000_000),
            ("100us", 100_000),
            ("100µs", 100_000),
            ("7ns", 7),
            ("1h0m0s", 3_600_000_000_000),
            (".5s", 500_000_000),
            ("+3s", 3_000_000_000),
            (" 240s ", 240_000_000_000),
        ];
        for (text, nanos) in cases {
            assert_eq!(
                parse_duration(text),
                Some(Duration::from_nanos(*nanos)),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in ["", "abc", "10x", "s", "-5s", "1.2.3s", "5 s", "1h-3m", "."] {
            assert_eq!(parse_duration(text), None, "{text:?}");
        }
    }

    #[test]
    fn formats_like_go() {
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (30_000_000_000, "30s"),
            (5_400_000_000_000, "1h30m0s"),
            (300_000_000_000, "5m0s"),
            (250_000_000, "250ms"),
            (1_500_000_000, "1.5s"),
            (1_500, "1.5µs"),
            (12, "12ns"),
        ];
        for (nanos, text) in cases {
            assert_eq!(format_duration(Duration::from_nanos(*nanos)), *text);
            assert_eq!(
                parse_duration(text),
                Some(Duration::from_nanos(*nanos)),
                "{text}"
            );
        }
    }
}
