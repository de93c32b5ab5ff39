//! The reference service-provider node: the HTTP upstream the proxy routes
//! product requests to.
//!
//! `GET /inventory/{sku}?region=R` answers from the node's cache (`x-cache:
//! hit`); on a miss it reads the provider (the slow path), fills the cache
//! and answers (`x-cache: miss`). The sku's shard comes from the catalog
//! (loaded from the provider in the background at start; skus learnt on
//! the slow path are added). `GET /health` (and `/live`, `/ready`) for the
//! proxy's health checks, `GET /metrics` for Prometheus.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use parking_lot::RwLock;
use shardmap::catalog::{CategoryId, SkuMap};
use tokio_util::sync::CancellationToken;

use shardcast_edge::supervise::Tasks;
use shardcast_edge::ConnLimiter;

use crate::cache::ShardCache;
use crate::http::{self, ListenerConfig, Resp};
use crate::metrics::Metrics;
use crate::model::{encode_value, field, ShardDef, MAX_SKU_LEN};
use crate::provider::Provider;

/// Node settings (from `conf/node.toml` or the sync config).
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub name: String,
    /// Region when a request names none (query `region`, header `x-region`).
    pub default_region: Option<String>,
    /// Lifetime of slow-path fills for shards this node does not host.
    pub fill_ttl: Duration,
    pub max_value_bytes: usize,
    /// The listener's connection deadlines and bounds.
    pub listener: ListenerConfig,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            name: "node".into(),
            default_region: Some("UK".into()),
            fill_ttl: Duration::from_secs(30),
            max_value_bytes: 64 * 1024,
            listener: ListenerConfig::node(),
        }
    }
}

/// One catalog for the nodes of a process that serve the same shards:
/// the first node to load it builds the lookup, the others take the same
/// copy (24 in-process nodes at 1M skus would otherwise hold 24 copies).
/// A node whose shards differ from those it was built for builds its own.
#[derive(Default)]
pub struct SharedCatalog {
    built: tokio::sync::Mutex<Option<(Vec<ShardDef>, Arc<Lookup>)>>,
}

impl SharedCatalog {
    pub fn new() -> Arc<SharedCatalog> {
        Arc::new(SharedCatalog::default())
    }
}

/// The catalog as the node uses it: sku → category id → per-region shard.
#[derive(Default)]
struct Lookup {
    skus: Option<SkuMap>,
    /// Category id → `(region, shard index)`.
    cells: Vec<Vec<(String, usize)>>,
}

pub struct Node {
    provider: Arc<dyn Provider>,
    cache: Arc<dyn ShardCache>,
    shards: Vec<ShardDef>,
    categories: Vec<String>,
    lookup: ArcSwap<Lookup>,
    /// Skus learnt on the slow path (not in the catalog snapshot), bounded.
    learned: RwLock<HashMap<String, usize>>,
    settings: NodeSettings,
    metrics: Arc<Metrics>,
    ready: std::sync::atomic::AtomicBool,
    /// Open connections of the node's listener, for `/metrics`.
    conns: Arc<ConnLimiter>,
    /// The catalog loader, supervised once [`run`] starts it.
    tasks: Arc<Tasks>,
    catalog: Arc<SharedCatalog>,
}

const LEARNED_MAX: usize = 200_000;

static HIT: HeaderValue = HeaderValue::from_static("hit");
static MISS: HeaderValue = HeaderValue::from_static("miss");

impl Node {
    pub fn new(
        provider: Arc<dyn Provider>,
        cache: Arc<dyn ShardCache>,
        shards: Vec<ShardDef>,
        settings: NodeSettings,
        metrics: Arc<Metrics>,
    ) -> Arc<Node> {
        Node::sharing(
            provider,
            cache,
            shards,
            settings,
            metrics,
            SharedCatalog::new(),
        )
    }

    /// A node that takes its catalog from `catalog` when another node of
    /// the same shards has loaded it (the nodes of one sync process).
    pub fn sharing(
        provider: Arc<dyn Provider>,
        cache: Arc<dyn ShardCache>,
        shards: Vec<ShardDef>,
        settings: NodeSettings,
        metrics: Arc<Metrics>,
        catalog: Arc<SharedCatalog>,
    ) -> Arc<Node> {
        let mut categories: Vec<String> = shards
            .iter()
            .flat_map(|s| s.cells.iter().map(|(c, _)| c.clone()))
            .collect();
        categories.sort();
        categories.dedup();
        let settings_limits = settings.listener.limits;
        Arc::new(Node {
            provider,
            cache,
            shards,
            categories,
            lookup: ArcSwap::from_pointee(Lookup::default()),
            learned: RwLock::new(HashMap::new()),
            settings,
            metrics,
            ready: std::sync::atomic::AtomicBool::new(false),
            conns: ConnLimiter::new("node", settings_limits),
            tasks: Tasks::new(),
            catalog,
        })
    }

    /// The lookup over the provider's `(sku, category)` pairs for this
    /// node's shards.
    fn build_lookup(&self, pairs: &[(String, String)]) -> Lookup {
        let idx: HashMap<&str, CategoryId> = self
            .categories
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i as CategoryId))
            .collect();
        // Skus of categories no shard covers are left out: they are served
        // by the slow path without caching.
        let entries: Vec<(&str, CategoryId)> = pairs
            .iter()
            .filter_map(|(s, c)| Some((s.as_str(), *idx.get(c.as_str())?)))
            .collect();
        let skus = SkuMap::build(entries.len(), || entries.iter().copied());
        let mut cells = vec![Vec::new(); self.categories.len()];
        for (si, s) in self.shards.iter().enumerate() {
            for (c, r) in &s.cells {
                if let Some(&ci) = idx.get(c.as_str()) {
                    let v: &mut Vec<(String, usize)> = &mut cells[ci as usize];
                    if !v.iter().any(|(rr, _)| rr == r) {
                        v.push((r.clone(), si));
                    }
                }
            }
        }
        Lookup {
            skus: Some(skus),
            cells,
        }
    }

    fn catalog_loaded(&self, lookup: Arc<Lookup>, shared: bool) {
        let skus = lookup.skus.as_ref().map_or(0, SkuMap::len);
        self.lookup.store(lookup);
        self.ready.store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(node = %self.settings.name, skus, shared, "catalog loaded");
    }

    /// Load the catalog from the provider, retrying until it answers.
    pub async fn load_catalog(self: &Arc<Node>, shutdown: &CancellationToken) {
        let mut delay = Duration::from_millis(100);
        loop {
            // Held while loading: the other nodes wait for this copy
            // rather than read the provider too.
            let mut built = tokio::select! {
                b = self.catalog.built.lock() => b,
                _ = shutdown.cancelled() => return,
            };
            if let Some((_, l)) = built.as_ref().filter(|(s, _)| *s == self.shards) {
                let l = l.clone();
                drop(built);
                self.catalog_loaded(l, true);
                return;
            }
            match self.provider.catalog().await {
                Ok(pairs) => {
                    let l = Arc::new(self.build_lookup(&pairs));
                    if built.is_none() {
                        *built = Some((self.shards.clone(), l.clone()));
                    }
                    drop(built);
                    self.catalog_loaded(l, false);
                    return;
                }
                Err(e) => {
                    drop(built);
                    tracing::warn!(node = %self.settings.name, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "cannot load the catalog from the provider; serving by the slow path meanwhile");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn shard_for(&self, sku: &str, region: &str) -> Option<usize> {
        let l = self.lookup.load();
        if let Some(cat) = l.skus.as_ref().and_then(|m| m.get(sku)) {
            return l
                .cells
                .get(cat as usize)?
                .iter()
                .find(|(r, _)| r == region)
                .map(|&(_, s)| s);
        }
        self.learned.read().get(&field(sku, region)).copied()
    }

    fn shard_of_cell(&self, category: &str, region: &str) -> Option<usize> {
        self.shards
            .iter()
            .position(|s| s.cells.iter().any(|(c, r)| c == category && r == region))
    }

    /// Answer one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Resp {
        let path = req.uri().path();
        if let Some(rest) = path.strip_prefix("/inventory/") {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return http::error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
            }
            let region = http::query_param(req.uri().query(), "region")
                .or_else(|| {
                    req.headers()
                        .get("x-region")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                })
                .or_else(|| self.settings.default_region.clone());
            let sku = http::percent_decode_path(rest);
            return self.inventory(sku, region).await;
        }
        match path {
            "/health" | "/live" => http::json(
                StatusCode::OK,
                &serde_json::json!({"status": "ok", "node": self.settings.name}),
            ),
            "/ready" => {
                if !self.ready.load(std::sync::atomic::Ordering::Acquire) {
                    http::error(StatusCode::SERVICE_UNAVAILABLE, "catalog not loaded yet")
                } else if !self.tasks.all_running() {
                    http::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "a background loop is not running (see /metrics)",
                    )
                } else {
                    http::json(StatusCode::OK, &serde_json::json!({"ready": true}))
                }
            }
            "/metrics" => {
                let mut out = String::with_capacity(8192);
                self.metrics.render_node(&mut out);
                crate::metrics::render_listener(&mut out, "shardcast_node", &self.conns);
                self.tasks.render_metrics("shardcast_node", &mut out);
                http::text(out)
            }
            _ => http::error(
                StatusCode::NOT_FOUND,
                "no such route; try GET /inventory/{sku}?region=R",
            ),
        }
    }

    async fn inventory(&self, sku: Option<String>, region: Option<String>) -> Resp {
        let start = Instant::now();
        let m = &self.metrics;
        let Some(sku) = sku.filter(|s| !s.is_empty() && s.len() <= MAX_SKU_LEN && !s.contains('/'))
        else {
            Metrics::inc(&m.node_bad_requests);
            return http::error(
                StatusCode::BAD_REQUEST,
                "sku missing, not UTF-8 or longer than 128 bytes",
            );
        };
        let Some(region) = region.filter(|r| !r.is_empty() && r.len() <= 32 && !r.contains(':'))
        else {
            Metrics::inc(&m.node_bad_requests);
            return http::error(
                StatusCode::BAD_REQUEST,
                "region missing or invalid: pass ?region=R",
            );
        };
        let f = field(&sku, &region);
        let shard = self.shard_for(&sku, &region);
        // A cache that just failed to answer is not asked to fill either:
        // during an outage or a failover a request pays one cache deadline.
        let mut cache_down = false;
        if let Some(si) = shard {
            match self.cache.get(&self.shards[si].id, &f).await {
                Ok(Some(v)) => {
                    Metrics::inc(&m.node_hits);
                    let mut r = http::json_bytes(StatusCode::OK, v);
                    r.headers_mut().insert("x-cache", HIT.clone());
                    m.node_latency_hit.observe(start.elapsed());
                    return r;
                }
                Ok(None) => {}
                Err(e) => {
                    Metrics::inc(&m.cache_errors);
                    cache_down = true;
                    tracing::debug!(error = %e, "cache read failed; using the provider");
                }
            }
        }
        // Slow path.
        let resp = match self.provider.get(&sku, &region).await {
            Ok(Some(row)) => match &row.item {
                Some(item) => match encode_value(&row, item, self.settings.max_value_bytes) {
                    Ok(v) => {
                        Metrics::inc(&m.node_misses);
                        let si = shard.or_else(|| self.shard_of_cell(&row.category, &region));
                        if let Some(si) = si {
                            if shard.is_none() {
                                let mut l = self.learned.write();
                                if l.len() < LEARNED_MAX {
                                    l.insert(f.clone(), si);
                                }
                            }
                            let filled = if cache_down {
                                None
                            } else {
                                Some(
                                    self.cache
                                        .fill(
                                            &self.shards[si].id,
                                            &f,
                                            v.clone(),
                                            row.version,
                                            self.settings.fill_ttl,
                                        )
                                        .await,
                                )
                            };
                            match filled {
                                None => {}
                                Some(Ok(())) => Metrics::inc(&m.node_fills),
                                Some(Err(e)) => {
                                    Metrics::inc(&m.cache_errors);
                                    tracing::debug!(error = %e, "cache fill failed");
                                }
                            }
                        }
                        http::json_bytes(StatusCode::OK, v)
                    }
                    Err(why) => {
                        m.row_rejected(why);
                        Metrics::inc(&m.node_errors);
                        tracing::warn!(sku = %sku, region = %region, reason = why.label(), "provider row cannot be served");
                        http::error(
                            StatusCode::BAD_GATEWAY,
                            &format!("provider row is {}", why.label()),
                        )
                    }
                },
                None => {
                    Metrics::inc(&m.node_not_found);
                    not_found(&sku, &region)
                }
            },
            Ok(None) => {
                Metrics::inc(&m.node_not_found);
                not_found(&sku, &region)
            }
            Err(e) => {
                Metrics::inc(&m.provider_errors);
                Metrics::inc(&m.node_errors);
                tracing::warn!(error = %e, "provider read failed on the slow path");
                http::error(StatusCode::SERVICE_UNAVAILABLE, "provider unavailable")
            }
        };
        let mut r = resp;
        r.headers_mut().insert("x-cache", MISS.clone());
        m.node_latency_miss.observe(start.elapsed());
        r
    }
}

fn not_found(sku: &str, region: &str) -> Resp {
    http::json_bytes(
        StatusCode::NOT_FOUND,
        Bytes::from(
            serde_json::json!({"error": "unknown sku", "sku": sku, "region": region}).to_string(),
        ),
    )
}

/// Serve `node` on `listener` until `shutdown`, with the settings'
/// connection deadlines and bounds; loads the catalog in the background
/// (supervised: a panic is logged, counted and the load started again).
pub async fn run(listener: tokio::net::TcpListener, node: Arc<Node>, shutdown: CancellationToken) {
    let sup = crate::supervise::Supervisor::new(node.tasks.clone(), shutdown.clone());
    {
        let (node, shutdown, stopped) = (node.clone(), shutdown.clone(), sup.stopped());
        sup.spawn("catalog", move || {
            let (node, shutdown, mut stopped) = (node.clone(), shutdown.clone(), stopped.clone());
            // Loaded once; then the task stays up until shutdown, so an
            // end is never mistaken for a failure.
            async move {
                node.load_catalog(&shutdown).await;
                shardcast_edge::http1::stopped(&mut stopped).await;
            }
        });
    }
    let (conns, deadlines) = (node.conns.clone(), node.settings.listener.deadlines);
    http::serve(
        listener,
        conns,
        deadlines,
        move |req| {
            let node = node.clone();
            node.handle(req)
        },
        shutdown,
    )
    .await
}
