//! The one Prometheus text writer of shardcast's `/metrics` endpoints (the
//! proxy, sync, the forecaster): `# HELP` and `# TYPE` once per family,
//! label values escaped, numbers as Prometheus reads them (`+Inf`, `NaN`),
//! histograms as cumulative `_bucket{le}` lines with `_sum` and `_count`.
//! Every name starts with `shardcast_` (the processes pass their own
//! prefix: `shardcast`, `shardcast_sync`, `shardcast_forecaster`).
//!
//! The writer only formats; the counters live where they are bumped.

use std::fmt::{self, Write as _};

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(v as u64)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(u64::from(v))
    }
}

impl From<u8> for Value {
    fn from(v: u8) -> Self {
        Value::Int(u64::from(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(u64::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

/// Writes Prometheus text into a `String`.
pub struct Writer<'a> {
    out: &'a mut String,
}

/// A label value with `\`, `"` and newlines escaped.
fn escaped(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut String) -> Writer<'a> {
        Writer { out }
    }

    /// `# HELP` and `# TYPE` of a family; its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
        self
    }

    /// One sample: `name{k="v",…} value`.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Into<Value>,
    ) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escaped(self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", value.into());
        self
    }

    /// A family of one unlabelled counter.
    pub fn counter(&mut self, name: &str, help: &str, value: impl Into<Value>) -> &mut Self {
        self.family(name, Kind::Counter, help)
            .sample(name, &[], value)
    }

    /// A family of one unlabelled gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Into<Value>) -> &mut Self {
        self.family(name, Kind::Gauge, help)
            .sample(name, &[], value)
    }

    /// A family with one label: a sample per `(label value, value)`.
    pub fn by_label<V: Into<Value>>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (impl AsRef<str>, V)>,
    ) -> &mut Self {
        self.family(name, kind, help);
        for (l, v) in values {
            self.sample(name, &[(label, l.as_ref())], v);
        }
        self
    }

    /// The samples of one histogram (its family written before):
    /// `buckets` are `(upper bound in the metric's unit, count in that
    /// bucket alone)`, in increasing order, the last one `+Inf`'s.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        buckets: impl IntoIterator<Item = (f64, u64)>,
        sum: f64,
        count: u64,
    ) -> &mut Self {
        let bucket = format!("{name}_bucket");
        let mut cum = 0u64;
        for (le, n) in buckets {
            cum += n;
            let le = Value::Float(le).to_string();
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cum);
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_histograms_in_prometheus_text() {
        let mut s = String::new();
        let mut w = Writer::new(&mut s);
        w.counter("shardcast_x_total", "Xs.", 3u64)
            .gauge("shardcast_ratio", "A ratio.", 0.5)
            .by_label(
                "shardcast_by_total",
                Kind::Counter,
                "By reason.",
                "reason",
                [("a", 1u64), ("q\"uote\\", 2)],
            )
            .family("shardcast_lat_seconds", Kind::Histogram, "Latency.")
            .histogram(
                "shardcast_lat_seconds",
                &[("shard", "UK/X")],
                [(0.001, 2), (0.01, 1), (f64::INFINITY, 1)],
                0.25,
                4,
            );
        let want = "\
# HELP shardcast_x_total Xs.\n# TYPE shardcast_x_total counter\nshardcast_x_total 3\n\
# HELP shardcast_ratio A ratio.\n# TYPE shardcast_ratio gauge\nshardcast_ratio 0.5\n\
# HELP shardcast_by_total By reason.\n# TYPE shardcast_by_total counter\n\
shardcast_by_total{reason=\"a\"} 1\nshardcast_by_total{reason=\"q\\\"uote\\\\\"} 2\n\
# HELP shardcast_lat_seconds Latency.\n# TYPE shardcast_lat_seconds histogram\n\
shardcast_lat_seconds_bucket{shard=\"UK/X\",le=\"0.001\"} 2\n\
shardcast_lat_seconds_bucket{shard=\"UK/X\",le=\"0.01\"} 3\n\
shardcast_lat_seconds_bucket{shard=\"UK/X\",le=\"+Inf\"} 4\n\
shardcast_lat_seconds_sum{shard=\"UK/X\"} 0.25\nshardcast_lat_seconds_count{shard=\"UK/X\"} 4\n";
        assert_eq!(s, want);
        assert_eq!(Value::Float(f64::NAN).to_string(), "NaN");
    }
}
