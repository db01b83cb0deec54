//! The Prometheus text exposition format (version 0.0.4), written by hand: every value is
//! computed at scrape time from the shared atomics, so no registry is kept in between.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// `Content-Type` of a scrape answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Go client's default buckets (`prometheus.DefBuckets`), used by `response_time_seconds`.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The buckets of the Go version's `sink_send_duration_seconds`.
pub const SINK_SEND_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A scrape answer being written.
#[derive(Default)]
pub struct Text {
    out: String,
}

impl Text {
    pub fn new() -> Self {
        Text::default()
    }

    /// Starts a metric family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Self {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label_value(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&format_value(value));
        self.out.push('\n');
        self
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: Kind, value: f64) -> &mut Self {
        self.family(name, help, kind).sample(name, &[], value)
    }

    /// The `_bucket`, `_sum` and `_count` lines of one histogram series. `cumulative` holds one
    /// count per bound.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        cumulative: &[u64],
        count: u64,
        sum: f64,
    ) -> &mut Self {
        let bucket = format!("{name}_bucket");
        for (bound, n) in bounds.iter().zip(cumulative) {
            let le = format_value(*bound);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, *n as f64);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, count as f64);
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count as f64)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)` is what the Go client prints; Rust's shortest
/// round-trip `Display` gives the same digits, with `+Inf`/`-Inf`/`NaN` spelled out.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A histogram with fixed bounds, updated with atomics. Durations are kept in nanoseconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One slot per bound plus one for everything above the largest (not cumulative).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Writes this histogram's series.
    pub fn write(&self, text: &mut Text, name: &str, labels: &[(&str, &str)]) {
        let mut total = 0;
        let cumulative: Vec<u64> = self.buckets[..self.bounds.len()]
            .iter()
            .map(|b| {
                total += b.load(Relaxed);
                total
            })
            .collect();
        let over = self.buckets[self.bounds.len()].load(Relaxed);
        let count = self.count().max(total + over);
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        text.histogram(name, labels, self.bounds, &cumulative, count, sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        let mut t = Text::new();
        t.sample("m", &[("a", "x\"y\\z\nw")], 1.0);
        assert_eq!(t.finish(), "m{a=\"x\\\"y\\\\z\\nw\"} 1\n");
    }

    #[test]
    fn values_print_like_go() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
    }

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut t = Text::new();
        h.write(&mut t, "x", &[("k", "v")]);
        let s = t.finish();
        assert!(s.contains("x_bucket{k=\"v\",le=\"0.1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{k=\"v\",le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{k=\"v\",le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count{k=\"v\"} 3\n"), "{s}");
        assert!(s.contains("x_sum{k=\"v\"} 5.55\n"), "{s}");
    }
}
