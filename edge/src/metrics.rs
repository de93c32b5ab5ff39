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
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
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

/// One parsed sample: name, labels in the order written, value as written.
pub type Sample = (String, Vec<(String, String)>, String);

/// A strict reader of Prometheus text, for tests of every `/metrics`: each
/// family has `# HELP` then `# TYPE` exactly once, before its samples, and
/// its samples follow without another family in between; a sample's name is
/// its family's (or `_bucket`/`_sum`/`_count` of a histogram or summary, a
/// histogram's `_bucket` with `le`); label names are identifiers, values
/// quoted with only `\\`, `\"`, `\n` escapes; no series twice; every value a
/// number (`+Inf`, `-Inf`, `NaN` included). Returns the samples in order.
pub fn parse_strict(text: &str) -> Result<Vec<Sample>, String> {
    use std::collections::HashSet;
    let ident = |s: &str, colon: bool| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    };
    let mut families: HashSet<String> = HashSet::new();
    let mut series: HashSet<String> = HashSet::new();
    // The family being written: name, kind (None between HELP and TYPE).
    let mut cur: Option<(String, Option<String>)> = None;
    let mut out = Vec::new();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("text does not end with a newline".into());
    }
    for (i, line) in text.lines().enumerate() {
        let err = |m: &str| Err(format!("line {}: {m}: {line:?}", i + 1));
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if !ident(name, true) || help.is_empty() {
                return err("bad HELP");
            }
            if let Some((_, None)) = &cur {
                return err("HELP before the previous family's TYPE");
            }
            if !families.insert(name.to_string()) {
                return err("family declared twice");
            }
            cur = Some((name.to_string(), None));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let Some((name, kind)) = rest.split_once(' ') else {
                return err("bad TYPE");
            };
            match &cur {
                Some((n, None)) if n == name => {}
                _ => return err("TYPE not right after its family's HELP"),
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return err("unknown type");
            }
            cur = Some((name.to_string(), Some(kind.to_string())));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return err("comment or blank line outside HELP/TYPE");
        }
        let Some((fam, Some(kind))) = &cur else {
            return err("sample outside a declared family");
        };
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let suffix = name.strip_prefix(fam.as_str());
        let ok_name = match (kind.as_str(), suffix) {
            (_, Some("")) => kind != "histogram",
            ("histogram", Some("_bucket" | "_sum" | "_count")) => true,
            ("summary", Some("_sum" | "_count")) => true,
            _ => false,
        };
        if !ok_name {
            return err("sample name not of its family");
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let Some((k, r)) = rest.split_once("=\"") else {
                    return err("bad label");
                };
                if !ident(k, false) || labels.iter().any(|(n, _): &(String, String)| n == k) {
                    return err("bad or repeated label name");
                }
                let mut v = String::new();
                let mut chars = r.char_indices();
                let end = loop {
                    match chars.next() {
                        None => return err("unterminated label value"),
                        Some((j, '"')) => break j,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => v.push('\\'),
                            Some((_, '"')) => v.push('"'),
                            Some((_, 'n')) => v.push('\n'),
                            _ => return err("bad escape"),
                        },
                        Some((_, c)) => v.push(c),
                    }
                };
                labels.push((k.to_string(), v));
                rest = &r[end + 1..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                } else if !rest.starts_with('}') {
                    return err("labels not separated by commas");
                }
            }
        }
        let Some(value) = rest.strip_prefix(' ') else {
            return err("no space before the value");
        };
        let numeric = matches!(value, "+Inf" | "-Inf" | "NaN")
            || (value.parse::<f64>().is_ok() && !value.contains(char::is_alphabetic));
        if !numeric {
            return err("value not a number");
        }
        if name.ends_with("_bucket")
            && kind == "histogram"
            && !labels.iter().any(|(k, _)| k == "le")
        {
            return err("bucket without le");
        }
        if !series.insert(line[..line.len() - value.len()].to_string()) {
            return err("series written twice");
        }
        out.push((name.to_string(), labels, value.to_string()));
    }
    if let Some((_, None)) = cur {
        return Err("last family has no TYPE".into());
    }
    Ok(out)
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
        assert_eq!(parse_strict(&s).unwrap().len(), 9);
        assert_eq!(Value::Float(f64::NAN).to_string(), "NaN");
    }

    #[test]
    fn the_strict_reader_refuses_what_prometheus_would() {
        let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
        assert!(parse_strict(ok).is_ok());
        for bad in [
            "a_total 1\n",
            "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n# HELP a_total A.\n# TYPE a_total counter\n",
            "# HELP a_total A.\n# TYPE a_total counter\nb_total 1\n",
            "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1} 1\n",
            "# HELP a_total A.\n# TYPE a_total counter\na_total 1\na_total 2\n",
            "# HELP a_total A.\n# TYPE a_total counter\na_total one\n",
            "# HELP h A.\n# TYPE h histogram\nh_bucket 1\n",
            "# TYPE a_total counter\na_total 1\n",
        ] {
            assert!(parse_strict(bad).is_err(), "{bad}");
        }
    }
}
