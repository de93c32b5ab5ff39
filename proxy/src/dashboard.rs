//! The operator dashboard on the admin listener: `GET /dashboard` is one
//! self-contained HTML page embedded in the binary (inline CSS, JS and SVG;
//! nothing fetched from elsewhere), which polls `GET /dashboard/data` every
//! second and redraws.
//!
//! The data joins the proxy's own view — the routing table with node health
//! and in-flight counts, the table version history, per-shard traffic over
//! the last seconds ([`ShardStats::recent`]) — with the forecaster's when
//! `[dashboard] forecaster` is set: quantile forecasts, actual demand
//! (`/series`) and the shard manager's replicas, pre-fetch orders and
//! decisions, and what its pre-fetches bought (`/manager`: pre-fetches by
//! the reason that drove them, replicas warm before their shard's rise). The forecaster is read only from here, on the
//! admin listener, with a timeout of at most 300 ms and a one-second cache
//! shared by every viewer; when it is down the data says so and the page
//! shows "forecaster unreachable". The request path never waits on it.
//!
//! [`ShardStats::recent`]: crate::telemetry::ShardStats::recent

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shardmap::config::Dashboard;
use shardmap::contract::forecast::{ForecastsView, SeriesRing, SeriesSetView};
use shardmap::contract::manager::{self as mgr, ManagerView};
use shardmap::contract::ErrorBody;
use shardmap::{AssignmentVersion, TableView};
use tokio::sync::watch;

use crate::http_client::Client;
use crate::node::now_ms;
use crate::state::{Shared, VersionEvent};
use crate::telemetry::{hit_rate, latency_histogram, Recent};

/// The page, served as is.
pub const HTML: &str = include_str!("dashboard.html");

/// How long one read of the forecaster is reused (the page polls every
/// second; several viewers share one read).
const CACHE_FOR: Duration = Duration::from_millis(900);
/// Largest forecaster response read.
const MAX_BODY: usize = 8 << 20;
/// Most orders and decisions passed on (the newest).
const MAX_ROWS: usize = 200;
/// Hours of actual demand asked for per shard.
const SERIES_HOURS: usize = 48;

/// Dashboard state kept in [`Shared`]: the last read of the forecaster.
#[derive(Default)]
pub struct DashState {
    last: tokio::sync::Mutex<Option<Arc<Fetched>>>,
    client: OnceLock<Client>,
}

/// One read of the forecaster's three endpoints, in the forecaster's own
/// types (`shardmap::contract`): an answer that does not parse is that
/// part's error, never a half-read view.
struct Fetched {
    at: Instant,
    url: String,
    status: ForecasterStatus,
    forecasts: Option<ForecastsView>,
    manager: Option<ManagerView>,
    series: Option<SeriesSetView>,
}

/// How one forecaster endpoint answered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Part {
    /// It answered 200 with its JSON view.
    pub available: bool,
    pub error: Option<String>,
}

/// What the dashboard knows about the forecaster.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ForecasterStatus {
    /// `[dashboard] forecaster` is set.
    pub configured: bool,
    pub url: Option<String>,
    /// At least one endpoint answered over HTTP.
    pub reachable: bool,
    /// Why it is unreachable.
    pub error: Option<String>,
    pub fetched_unix_ms: u64,
    pub forecasts: Part,
    pub series: Part,
    pub manager: Part,
    /// From `/forecasts`: when the forecasts were made, and the last
    /// complete (store-local) hour they start after.
    pub generated_at: Option<String>,
    pub origin_hour: Option<String>,
}

/// Traffic counters of one shard, or of all of them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Traffic {
    /// Since the proxy started.
    pub requests: u64,
    pub errors: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub hit_rate: Option<f64>,
    /// Seconds the `recent_*` and rate fields cover (0 until known).
    pub window_s: f64,
    pub requests_per_s: Option<f64>,
    pub errors_per_s: Option<f64>,
    pub recent_hit_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Traffic {
    fn of(totals: [u64; 4], recent: &Recent, latency: &hdrhistogram::Histogram<u64>) -> Traffic {
        let q = |q: f64| (!latency.is_empty()).then(|| latency.value_at_quantile(q) as f64 / 1e3);
        Traffic {
            requests: totals[0],
            errors: totals[1],
            cache_hits: totals[2],
            cache_misses: totals[3],
            hit_rate: hit_rate(totals[2], totals[3]),
            window_s: recent.window_s,
            requests_per_s: recent.requests_per_s(),
            errors_per_s: (recent.window_s > 0.0).then(|| recent.errors as f64 / recent.window_s),
            recent_hit_rate: recent.hit_rate(),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
        }
    }
}

/// One horizon of one shard's forecast, as the page draws it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Band {
    pub p10: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub fallback: bool,
    /// `model` or `seasonal_naive`.
    pub source: &'static str,
}

/// A shard's forecast on the dashboard: a [`Band`] per horizon (`1h`,
/// `1d`, `1w`, `1mo`) beside the hours of history it was made from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForecastBands {
    #[serde(flatten)]
    pub horizons: BTreeMap<String, Band>,
    pub history_hours: usize,
}

/// A shard's actual demand from the forecaster's `/series`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Actual {
    pub hourly: SeriesRing,
    pub minutes: SeriesRing,
}

/// One shard on the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct ShardData {
    pub id: String,
    #[serde(flatten)]
    pub traffic: Traffic,
    /// Absent without forecasts.
    pub forecast: Option<ForecastBands>,
    pub actual: Option<Actual>,
    /// The shard manager's entry for the shard.
    pub manager: Option<mgr::ShardView>,
}

/// Everything but the requests the proxy refused itself.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Requests received, including those answered by the proxy itself.
    pub received: u64,
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// The parts of the manager's view shown beside the table.
#[derive(Debug, Clone, Serialize)]
pub struct ManagerSummary {
    pub assignment_version: AssignmentVersion,
    pub dry_run: bool,
    pub nodes: BTreeMap<String, mgr::NodeView>,
    /// Pre-fetches by driving reason; replicas warm before their shard's rise.
    pub prefetch: mgr::PrefetchView,
}

/// `GET /dashboard/data`.
#[derive(Debug, Clone, Serialize)]
pub struct Data {
    pub generated_unix_ms: u64,
    pub instance: String,
    pub table: TableView,
    /// Oldest first.
    pub history: Vec<VersionEvent>,
    pub totals: Totals,
    /// In table order.
    pub shards: Vec<ShardData>,
    pub forecaster: ForecasterStatus,
    /// When the manager answered.
    pub manager: Option<ManagerSummary>,
    /// The manager's newest pre-fetch orders and decisions, in its order.
    pub orders: Vec<mgr::OrderView>,
    pub decisions: Vec<mgr::Decision>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Close a dashboard tick on every shard about once a second, so rates and
/// p99 cover the last seconds whatever the telemetry interval. Ends when
/// `shutdown` turns true.
pub async fn sample_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = now_ms();
        for s in shared.current().stats.iter() {
            s.tick(now);
        }
    }
}

/// Interpret one endpoint's answer: (answered over HTTP, part, view).
fn part<T: DeserializeOwned>(r: Result<(u16, Bytes), String>) -> (bool, Part, Option<T>) {
    let fail = |e: String| Part {
        available: false,
        error: Some(e),
    };
    match r {
        Err(e) => (false, fail(e), None),
        Ok((200, body)) => match serde_json::from_slice::<T>(&body) {
            Ok(v) => (
                true,
                Part {
                    available: true,
                    error: None,
                },
                Some(v),
            ),
            Err(e) => (true, fail(format!("not the expected answer: {e}")), None),
        },
        Ok((status, body)) => {
            let why = ErrorBody::message_of(&body)
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            (true, fail(format!("HTTP {status}{why}")), None)
        }
    }
}

async fn fetch(client: &Client, base: &str, timeout: Duration) -> Fetched {
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move { client.get_body(&url, timeout, MAX_BODY).await }
    };
    let (f, s, m) = tokio::join!(
        get("/forecasts".into()),
        get(format!("/series?hours={SERIES_HOURS}")),
        get("/manager".into()),
    );
    let (fa, fp, forecasts) = part::<ForecastsView>(f);
    let (sa, sp, series) = part::<SeriesSetView>(s);
    let (ma, mp, manager) = part::<ManagerView>(m);
    let reachable = fa || sa || ma;
    Fetched {
        at: Instant::now(),
        url: base.to_string(),
        status: ForecasterStatus {
            configured: true,
            url: Some(base.to_string()),
            reachable,
            error: (!reachable).then(|| fp.error.clone().unwrap_or_default()),
            fetched_unix_ms: unix_ms(),
            generated_at: forecasts.as_ref().map(|f| f.generated_at.clone()),
            origin_hour: forecasts.as_ref().map(|f| f.origin_hour.clone()),
            forecasts: fp,
            series: sp,
            manager: mp,
        },
        forecasts,
        manager,
        series,
    }
}

impl DashState {
    /// The forecaster's state, read at most once per [`CACHE_FOR`] (one
    /// read at a time; concurrent viewers wait for it and share it).
    async fn forecaster(&self, cfg: &Dashboard) -> Option<Arc<Fetched>> {
        let base = cfg.forecaster.as_deref()?;
        let mut last = self.last.lock().await;
        if let Some(f) = last.as_ref() {
            if f.url == base && f.at.elapsed() < CACHE_FOR {
                return Some(f.clone());
            }
        }
        let client = self.client.get_or_init(Client::default);
        let f = Arc::new(fetch(client, base, cfg.forecaster_timeout).await);
        *last = Some(f.clone());
        Some(f)
    }
}

/// p10/p50/p90 of every horizon of one shard in a `/forecasts` answer.
fn forecast_of(forecasts: &ForecastsView, id: &str) -> Option<ForecastBands> {
    let shard = forecasts.shards.get(id)?;
    let horizons = shard
        .horizons
        .iter()
        .map(|(name, h)| {
            // The page draws the p10–p90 band and the median.
            let q = |want: f64| h.quantile(want).map(f64::from);
            (
                name.clone(),
                Band {
                    p10: q(0.1),
                    p50: q(0.5),
                    p90: q(0.9),
                    fallback: h.fallback,
                    source: h.source.kind(),
                },
            )
        })
        .collect();
    Some(ForecastBands {
        horizons,
        history_hours: shard.history_hours,
    })
}

/// The last [`MAX_ROWS`] entries.
fn newest<T: Clone>(v: &[T]) -> Vec<T> {
    v[v.len().saturating_sub(MAX_ROWS)..].to_vec()
}

/// Build the dashboard data. Waits for the forecaster at most its
/// configured timeout (when its last read is older than a second).
pub async fn data(shared: &Shared) -> Data {
    let cfg = shared.current().config.dashboard.clone();
    let fetched = shared.dashboard.forecaster(&cfg).await;
    let f = fetched.as_deref();

    let snap = shared.current();
    let table = crate::admin::snapshot_view(&snap);
    let mut all_latency = latency_histogram();
    let mut all_recent = Recent::default();
    let mut all_totals = [0u64; 4];
    let mut shards = Vec::with_capacity(snap.stats.len());
    for (entry, stats) in snap.table.shards.iter().zip(snap.stats.iter()) {
        let mut latency = latency_histogram();
        let recent = stats.recent(Some(&mut latency));
        let _ = all_latency.add(&latency);
        all_recent.add(&recent);
        let totals = stats.totals();
        for (a, b) in all_totals.iter_mut().zip(totals) {
            *a += b;
        }
        let id = &entry.id;
        shards.push(ShardData {
            id: id.clone(),
            traffic: Traffic::of(totals, &recent, &latency),
            forecast: f
                .and_then(|f| f.forecasts.as_ref())
                .and_then(|v| forecast_of(v, id)),
            actual: f
                .and_then(|f| f.series.as_ref())
                .and_then(|v| v.shards.get(id))
                .map(|s| Actual {
                    hourly: s.hourly.clone(),
                    minutes: s.minutes.clone(),
                }),
            manager: f
                .and_then(|f| f.manager.as_ref())
                .and_then(|v| v.shards.get(id))
                .cloned(),
        });
    }
    let manager = f.and_then(|f| f.manager.as_ref());
    Data {
        generated_unix_ms: unix_ms(),
        instance: shared.instance.clone(),
        table,
        history: shared.history.lock().iter().cloned().collect(),
        totals: Totals {
            received: shared
                .counters
                .requests
                .load(std::sync::atomic::Ordering::Relaxed),
            traffic: Traffic::of(all_totals, &all_recent, &all_latency),
        },
        shards,
        forecaster: f.map(|f| f.status.clone()).unwrap_or_default(),
        manager: manager.map(|m| ManagerSummary {
            assignment_version: m.assignment_version,
            dry_run: m.dry_run,
            nodes: m.nodes.clone(),
            prefetch: m.prefetch.clone(),
        }),
        orders: manager.map(|m| newest(&m.orders)).unwrap_or_default(),
        decisions: manager.map(|m| newest(&m.decisions)).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests;
