//! External signal feeds (schemas in `forecaster/train/SIGNALS.md`): the
//! event calendar, the `web_traffic` and `sentiment` covariates, and the
//! sales history that seeds the demand series.
//!
//! A feed is a CSV file or the same CSV from an HTTP endpoint. A background
//! task reloads the feeds every `refresh_s` and stores a new [`Signals`]
//! snapshot whole; the inference thread reads the latest. A missing, late
//! or malformed feed never stops a forecast: the model sees it as unknown
//! (its `*_known` channel at 0) and the state is reported in the API and in
//! `/metrics`.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::time::{now_unix_ms, parse_local};

/// Largest feed body read (files and HTTP).
pub const MAX_FEED_BYTES: usize = 256 << 20;

/// Where a feed comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedSource {
    File(PathBuf),
    Http(String),
}

impl std::fmt::Display for FeedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedSource::File(p) => write!(f, "{}", p.display()),
            FeedSource::Http(u) => f.write_str(u),
        }
    }
}

// Feed health and status are part of the forecaster's read API, so they
// are the shared contract types.
pub use shardmap::contract::forecast::{FeedState, FeedStatus};

/// Why a feed did not load.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Malformed(String),
}

impl FeedError {
    fn state(&self) -> FeedState {
        match self {
            FeedError::Missing(_) => FeedState::Missing,
            FeedError::Malformed(_) => FeedState::Malformed,
        }
    }
}

// --- event calendar ---------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Scope {
    All,
    Prefix(String),
    Exact(String),
}

impl Scope {
    fn matches(&self, id: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Prefix(p) => id.starts_with(p.as_str()),
            Scope::Exact(e) => id == e,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct EventEntry {
    start_day: i64,
    end_day: i64, // exclusive
    scope: Scope,
    channel: usize,
    intensity: f64,
}

/// A parsed event calendar.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Events {
    entries: Vec<EventEntry>,
    /// Last day covered by any entry (store-local day index).
    pub last_day: i64,
}

fn csv_reader(text: &[u8]) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text)
}

fn column(headers: &csv::StringRecord, name: &str) -> Result<usize, FeedError> {
    headers
        .iter()
        .position(|h| h == name)
        .ok_or_else(|| FeedError::Malformed(format!("no column {name:?}")))
}

impl Events {
    /// Parse `ds_start,ds_end,scope,kind,intensity`.
    pub fn parse(text: &[u8]) -> Result<Events, FeedError> {
        let mut r = csv_reader(text);
        let h = r
            .headers()
            .map_err(|e| FeedError::Malformed(e.to_string()))?
            .clone();
        let (i0, i1, is, ik, ii) = (
            column(&h, "ds_start")?,
            column(&h, "ds_end")?,
            column(&h, "scope")?,
            column(&h, "kind")?,
            column(&h, "intensity")?,
        );
        let mut out = Events {
            entries: Vec::new(),
            last_day: i64::MIN,
        };
        for (n, rec) in r.records().enumerate() {
            let line = n + 2;
            let rec = rec.map_err(|e| FeedError::Malformed(format!("line {line}: {e}")))?;
            let day = |i: usize| -> Result<i64, FeedError> {
                parse_local(rec.get(i).unwrap_or(""))
                    .map(|s| s.div_euclid(86_400))
                    .ok_or_else(|| FeedError::Malformed(format!("line {line}: bad date")))
            };
            let (start, end) = (day(i0)?, day(i1)?);
            if end < start {
                return Err(FeedError::Malformed(format!(
                    "line {line}: ds_end before ds_start"
                )));
            }
            let intensity: f64 = rec
                .get(ii)
                .unwrap_or("")
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite())
                .ok_or_else(|| FeedError::Malformed(format!("line {line}: bad intensity")))?;
            let scope = match rec.get(is).unwrap_or("") {
                "*" => Scope::All,
                s if s.ends_with('*') => Scope::Prefix(s[..s.len() - 1].to_string()),
                s => Scope::Exact(s.to_string()),
            };
            let channel = match rec.get(ik).unwrap_or("") {
                "holiday" => 0,
                "closed" => 1,
                _ => 2,
            };
            out.last_day = out.last_day.max(end);
            out.entries.push(EventEntry {
                start_day: start,
                end_day: end + 1,
                scope,
                channel,
                intensity,
            });
        }
        Ok(out)
    }

    /// Entries overlapping days `[from, to]`, for repeated lookups.
    pub fn window(&self, from: i64, to: i64) -> EventWindow<'_> {
        EventWindow {
            entries: self
                .entries
                .iter()
                .filter(|e| e.start_day <= to && e.end_day > from)
                .collect(),
        }
    }
}

/// The calendar entries of one forecast window.
pub struct EventWindow<'a> {
    entries: Vec<&'a EventEntry>,
}

impl EventWindow<'_> {
    /// Channels (holiday, closed, event) of `series` on store-local `day`:
    /// the largest intensity of the entries covering it.
    pub fn channels(&self, series: &str, day: i64) -> [f64; 3] {
        let mut out = [0.0f64; 3];
        for e in &self.entries {
            if e.start_day <= day && day < e.end_day && e.scope.matches(series) {
                out[e.channel] = out[e.channel].max(e.intensity);
            }
        }
        out
    }

    /// Whether any entry in the window applies to `series`.
    pub fn any_for(&self, series: &str) -> bool {
        self.entries.iter().any(|e| e.scope.matches(series))
    }
}

// --- covariates -------------------------------------------------------------

/// A covariate feed: values by civil (local wall-clock) second of the
/// period start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Covariate {
    all: HashMap<i64, f64>,
    per: HashMap<String, HashMap<i64, f64>>,
    /// Latest timestamp present (civil seconds).
    pub latest: i64,
    pub rows: usize,
}

impl Covariate {
    /// Parse `[series_id,] ds, value`.
    pub fn parse(text: &[u8]) -> Result<Covariate, FeedError> {
        let mut r = csv_reader(text);
        let h = r
            .headers()
            .map_err(|e| FeedError::Malformed(e.to_string()))?
            .clone();
        let ids = h.iter().position(|x| x == "series_id");
        let (its, iv) = (column(&h, "ds")?, column(&h, "value")?);
        let mut out = Covariate {
            latest: i64::MIN,
            ..Covariate::default()
        };
        for (n, rec) in r.records().enumerate() {
            let line = n + 2;
            let rec = rec.map_err(|e| FeedError::Malformed(format!("line {line}: {e}")))?;
            let ts = parse_local(rec.get(its).unwrap_or(""))
                .ok_or_else(|| FeedError::Malformed(format!("line {line}: bad ds")))?;
            let raw = rec.get(iv).unwrap_or("");
            if raw.is_empty() {
                continue; // empty = unknown
            }
            let v: f64 = raw
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite())
                .ok_or_else(|| FeedError::Malformed(format!("line {line}: bad value")))?;
            let sid = ids.and_then(|i| rec.get(i)).unwrap_or("");
            if sid.is_empty() || sid == "*" {
                out.all.insert(ts, v);
            } else {
                out.per.entry(sid.to_string()).or_default().insert(ts, v);
            }
            out.latest = out.latest.max(ts);
            out.rows += 1;
        }
        Ok(out)
    }

    /// Value for `series` in the period starting at civil second `ts`.
    pub fn value(&self, series: &str, ts: i64) -> Option<f64> {
        self.per
            .get(series)
            .and_then(|m| m.get(&ts))
            .or_else(|| self.all.get(&ts))
            .copied()
    }
}

// --- snapshot ---------------------------------------------------------------

/// One loaded feed with its status.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub data: Option<Arc<T>>,
    pub status: FeedStatus,
}

/// Names of the covariates, in the contracts' order.
pub const COVARIATES: [&str; 2] = ["web_traffic", "sentiment"];

/// Every external signal, as of the last reload. Built whole, then stored.
#[derive(Debug, Clone)]
pub struct Signals {
    /// Bumped on every change of data (a cache key for the inference).
    pub version: u64,
    pub events: Loaded<Events>,
    pub covariates: Vec<(String, Loaded<Covariate>)>,
    /// Sales-history seeding, reported beside the live feeds.
    pub history: FeedStatus,
}

fn disabled(name: &str) -> FeedStatus {
    FeedStatus {
        name: name.to_string(),
        state: FeedState::Disabled,
        source: String::new(),
        detail: "not configured".into(),
        rows: 0,
        loaded_at_unix_ms: None,
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            version: 0,
            events: Loaded {
                data: None,
                status: disabled("events"),
            },
            covariates: COVARIATES
                .iter()
                .map(|c| {
                    (
                        c.to_string(),
                        Loaded {
                            data: None,
                            status: disabled(c),
                        },
                    )
                })
                .collect(),
            history: disabled("sales_history"),
        }
    }
}

impl Signals {
    /// A covariate feed by name, when usable.
    pub fn covariate(&self, name: &str) -> Option<&Arc<Covariate>> {
        self.covariates
            .iter()
            .find(|(n, _)| n == name)
            .filter(|(_, l)| l.status.state.usable())
            .and_then(|(_, l)| l.data.as_ref())
    }

    /// Every feed's status.
    pub fn statuses(&self) -> Vec<FeedStatus> {
        let mut v = vec![self.history.clone(), self.events.status.clone()];
        v.extend(self.covariates.iter().map(|(_, l)| l.status.clone()));
        v
    }
}

// --- loading ----------------------------------------------------------------

/// Read a feed body (gzip when the file name ends in `.gz`).
pub async fn fetch(source: &FeedSource, timeout: Duration) -> Result<Vec<u8>, FeedError> {
    match source {
        FeedSource::File(p) => {
            let p = p.clone();
            tokio::task::spawn_blocking(move || read_file(&p))
                .await
                .map_err(|e| FeedError::Missing(e.to_string()))?
        }
        FeedSource::Http(url) => tokio::time::timeout(timeout, fetch_http(url))
            .await
            .map_err(|_| FeedError::Missing(format!("GET {url}: timed out after {timeout:?}")))?,
    }
}

/// Read a file feed, bounded, gunzipping `*.gz`.
pub fn read_file(p: &std::path::Path) -> Result<Vec<u8>, FeedError> {
    let f =
        std::fs::File::open(p).map_err(|e| FeedError::Missing(format!("{}: {e}", p.display())))?;
    let mut out = Vec::new();
    let limit = MAX_FEED_BYTES as u64 + 1;
    let res = if p.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(f)
            .take(limit)
            .read_to_end(&mut out)
    } else {
        f.take(limit).read_to_end(&mut out)
    };
    res.map_err(|e| FeedError::Malformed(format!("{}: {e}", p.display())))?;
    if out.len() > MAX_FEED_BYTES {
        return Err(FeedError::Malformed(format!(
            "{}: larger than {MAX_FEED_BYTES} bytes",
            p.display()
        )));
    }
    Ok(out)
}

async fn fetch_http(url: &str) -> Result<Vec<u8>, FeedError> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let uri: http::Uri = url
        .parse()
        .map_err(|e| FeedError::Missing(format!("{url}: {e}")))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let resp = client
        .get(uri)
        .await
        .map_err(|e| FeedError::Missing(format!("GET {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(FeedError::Missing(format!("GET {url}: {}", resp.status())));
    }
    let body = Limited::new(resp.into_body(), MAX_FEED_BYTES)
        .collect()
        .await
        .map_err(|e| FeedError::Malformed(format!("GET {url}: {e}")))?;
    Ok(body.to_bytes().to_vec())
}

/// Configuration of one live feed.
#[derive(Debug, Clone)]
pub struct FeedSpec {
    pub name: String,
    pub source: FeedSource,
    /// How long the last good data is kept when a reload fails.
    pub max_age: Duration,
}

fn apply<T>(
    prev: &Loaded<T>,
    spec: &FeedSpec,
    res: Result<T, FeedError>,
    rows: impl Fn(&T) -> usize,
    now: i64,
) -> (Loaded<T>, bool) {
    match res {
        Ok(t) => {
            let status = FeedStatus {
                name: spec.name.clone(),
                state: FeedState::Ok,
                source: spec.source.to_string(),
                detail: String::new(),
                rows: rows(&t),
                loaded_at_unix_ms: Some(now),
            };
            (
                Loaded {
                    data: Some(Arc::new(t)),
                    status,
                },
                true,
            )
        }
        Err(e) => {
            let kept = prev.data.is_some()
                && prev
                    .status
                    .loaded_at_unix_ms
                    .is_some_and(|t| now - t <= spec.max_age.as_millis() as i64);
            let status = FeedStatus {
                name: spec.name.clone(),
                state: if kept { FeedState::Late } else { e.state() },
                source: spec.source.to_string(),
                detail: e.to_string(),
                rows: if kept { prev.status.rows } else { 0 },
                loaded_at_unix_ms: if kept {
                    prev.status.loaded_at_unix_ms
                } else {
                    None
                },
            };
            let changed = !kept && prev.data.is_some();
            (
                Loaded {
                    data: if kept { prev.data.clone() } else { None },
                    status,
                },
                changed,
            )
        }
    }
}

/// Reload every configured feed once and return the next snapshot.
pub async fn reload(
    prev: &Signals,
    events: Option<&FeedSpec>,
    covariates: &[FeedSpec],
    timeout: Duration,
) -> Signals {
    let now = now_unix_ms();
    let mut next = prev.clone();
    let mut changed = false;
    if let Some(spec) = events {
        let res = match fetch(&spec.source, timeout).await {
            Ok(b) => Events::parse(&b),
            Err(e) => Err(e),
        };
        let (l, ch) = apply(&prev.events, spec, res, |e| e.entries.len(), now);
        changed |= ch && l.data.as_deref() != prev.events.data.as_deref();
        next.events = l;
    }
    for spec in covariates {
        let Some(slot) = next.covariates.iter_mut().find(|(n, _)| *n == spec.name) else {
            continue;
        };
        let res = match fetch(&spec.source, timeout).await {
            Ok(b) => Covariate::parse(&b),
            Err(e) => Err(e),
        };
        let (l, ch) = apply(&slot.1, spec, res, |c| c.rows, now);
        changed |= ch && l.data.as_deref() != slot.1.data.as_deref();
        slot.1 = l;
    }
    if changed {
        next.version = prev.version + 1;
    }
    next
}

/// The reload loop: every `every`, reload and store; ends on shutdown.
pub async fn run(
    signals: Arc<ArcSwap<Signals>>,
    events: Option<FeedSpec>,
    covariates: Vec<FeedSpec>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let prev = signals.load_full();
        let next = reload(
            &prev,
            events.as_ref(),
            &covariates,
            every.min(Duration::from_secs(30)),
        )
        .await;
        for s in next.statuses() {
            if !s.state.usable() && s.state != FeedState::Disabled {
                tracing::warn!(feed = %s.name, state = s.state.as_str(), detail = %s.detail, "feed unavailable; forecasting without it");
            }
        }
        signals.store(Arc::new(next));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Sales history (SIGNALS.md "Demand history"): hourly rows
/// `id, ds, value` → per shard (first civil hour — local wall-clock hours
/// since 1970-01-01 00:00 — and the values of the civil hours from it).
pub fn parse_history(
    text: &[u8],
    id_col: &str,
    time_col: &str,
    value_col: &str,
) -> Result<Vec<(String, i64, Vec<f64>)>, FeedError> {
    let mut r = csv_reader(text);
    let h = r
        .headers()
        .map_err(|e| FeedError::Malformed(e.to_string()))?
        .clone();
    let (ii, it, iv) = (
        column(&h, id_col)?,
        column(&h, time_col)?,
        column(&h, value_col)?,
    );
    let mut per: HashMap<String, Vec<(i64, f64)>> = HashMap::new();
    let mut rec = csv::StringRecord::new();
    let mut line = 1;
    while r
        .read_record(&mut rec)
        .map_err(|e| FeedError::Malformed(format!("line {line}: {e}")))?
    {
        line += 1;
        let ts = parse_local(rec.get(it).unwrap_or(""))
            .ok_or_else(|| FeedError::Malformed(format!("line {line}: bad {time_col}")))?;
        if ts.rem_euclid(3600) != 0 {
            continue; // not on the hourly grid
        }
        let v: f64 = rec
            .get(iv)
            .unwrap_or("")
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| {
                FeedError::Malformed(format!("line {line}: {value_col} must be a number >= 0"))
            })?;
        let id = rec.get(ii).unwrap_or("");
        if id.is_empty() || id.len() > 128 {
            return Err(FeedError::Malformed(format!("line {line}: bad {id_col}")));
        }
        per.entry(id.to_string()).or_default().push((ts / 3600, v));
    }
    let mut out = Vec::with_capacity(per.len());
    for (id, mut rows) in per {
        rows.sort_by_key(|r| r.0);
        let first = rows[0].0;
        let last = rows[rows.len() - 1].0;
        if last - first > 10 * 366 * 24 {
            return Err(FeedError::Malformed(format!(
                "{id}: history spans more than 10 years"
            )));
        }
        let mut v = vec![0.0; (last - first + 1) as usize];
        for (t, x) in rows {
            v[(t - first) as usize] += x;
        }
        out.push((id, first, v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
