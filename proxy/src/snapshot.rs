//! The snapshot the request path reads: the routing table plus everything
//! resolved from it (node runtimes, prebuilt upstream peers, shard stats),
//! built whole off the request path and swapped in with one store.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use pingora_core::upstreams::peer::HttpPeer;
use shardmap::config::MissingKey;
use shardmap::table::NodeIdx;
use shardmap::{Catalog, Config, RoutingTable};

use crate::node::{NodeRegistry, NodeRuntime};
use crate::telemetry::{ShardStats, StatsRegistry};

/// What identifies a loaded catalog, so a reload that does not touch the
/// catalog reuses it instead of re-reading millions of rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogKey {
    pub csv: Option<(PathBuf, Option<SystemTime>, u64)>,
    pub columns: (String, String),
    pub inline: Vec<(String, String)>,
}

impl CatalogKey {
    pub fn of(config: &Config) -> CatalogKey {
        let c = &config.catalog;
        CatalogKey {
            csv: c.csv.as_ref().map(|p| {
                let md = std::fs::metadata(p).ok();
                (
                    p.clone(),
                    md.as_ref().and_then(|m| m.modified().ok()),
                    md.map_or(0, |m| m.len()),
                )
            }),
            columns: (c.sku_column.clone(), c.category_column.clone()),
            inline: c
                .inline
                .iter()
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect(),
        }
    }
}

/// What a snapshot was built from. Two equal sources build the same
/// snapshot, so a reload whose source is unchanged does nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The config file's bytes.
    pub text: Arc<Vec<u8>>,
    pub catalog: CatalogKey,
    /// Hash of the certificate and key files, to notice a renewed
    /// certificate even when the config text is unchanged.
    pub tls: u64,
    /// The topology file's bytes (when the config names one), so a node or
    /// shard added there reloads like an edit of the config itself.
    pub topology: Option<Arc<Vec<u8>>>,
}

/// Load the catalog a config names (CSV, gzip if it ends in `.gz`, plus
/// inline entries). Blocking: call off the async workers.
pub fn load_catalog(config: &Config) -> Result<Catalog, String> {
    let c = &config.catalog;
    let inline: Vec<(String, String)> = c
        .inline
        .iter()
        .map(|(a, b)| (a.clone(), b.clone()))
        .collect();
    let Some(path) = &c.csv else {
        let pairs: Vec<(&str, &str)> = inline
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        return Catalog::from_pairs(&pairs).map_err(|e| e.to_string());
    };
    let raw = std::fs::read(path).map_err(|e| format!("catalog.csv: {}: {e}", path.display()))?;
    let data = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("catalog.csv: {}: not valid gzip: {e}", path.display()))?;
        out
    } else {
        raw
    };
    Catalog::from_csv(&data, &c.sku_column, &c.category_column, &inline)
        .map_err(|e| format!("catalog.csv: {}: {e}", path.display()))
}

pub struct Snapshot {
    pub config: Arc<Config>,
    pub source: Source,
    pub table: RoutingTable,
    /// By table node index.
    pub nodes: Vec<Arc<NodeRuntime>>,
    pub capacity: Vec<f64>,
    pub peers: Arc<[HttpPeer]>,
    /// By table shard index; shared by every snapshot with the same shards.
    pub stats: Arc<[Arc<ShardStats>]>,
    /// Per route: the default pool's node indices (empty = reject).
    pub default_pools: Vec<Vec<NodeIdx>>,
}

/// An upstream peer per table node, in node order. Fails when a node
/// address does not resolve.
pub fn resolve_peers(config: &Config, table: &RoutingTable) -> Result<Vec<HttpPeer>, String> {
    let t = &config.timeouts;
    let mut peers = Vec::with_capacity(table.nodes.len());
    for (i, n) in table.nodes.iter().enumerate() {
        use std::net::ToSocketAddrs;
        let addr = n
            .address
            .to_socket_addrs()
            .map_err(|e| format!("nodes[{i}].address: `{}` does not resolve: {e}", n.address))?
            .next()
            .ok_or_else(|| format!("nodes[{i}].address: `{}` resolves to nothing", n.address))?;
        let mut p = HttpPeer::new(addr, false, String::new());
        p.options.connection_timeout = Some(t.connect);
        p.options.total_connection_timeout = Some(t.connect);
        p.options.read_timeout = Some(t.read);
        p.options.write_timeout = Some(t.write);
        p.options.idle_timeout = Some(t.upstream_idle);
        p.options.tcp_keepalive = None;
        peers.push(p);
    }
    Ok(peers)
}

impl Snapshot {
    /// Resolve a table against the registries. Fails when a node address
    /// does not resolve.
    pub fn build(
        config: Arc<Config>,
        source: Source,
        table: RoutingTable,
        nodes: &NodeRegistry,
        stats: &StatsRegistry,
    ) -> Result<Snapshot, String> {
        Self::rebuild(None, config, source, table, nodes, stats)
    }

    /// [`Snapshot::build`], keeping what `prev` resolved that still holds:
    /// the peers when the nodes and timeouts are the same, the per-shard
    /// stats when the shards are (a reload that touches one shard does not
    /// look up ten thousand).
    pub fn rebuild(
        prev: Option<&Snapshot>,
        config: Arc<Config>,
        source: Source,
        table: RoutingTable,
        nodes: &NodeRegistry,
        stats: &StatsRegistry,
    ) -> Result<Snapshot, String> {
        let same_nodes = prev.filter(|p| *p.table.nodes == *table.nodes);
        let peers: Arc<[HttpPeer]> = match same_nodes {
            Some(p) if same_timeouts(&p.config, &config) => p.peers.clone(),
            _ => resolve_peers(&config, &table)?.into(),
        };
        let node_rt: Vec<Arc<NodeRuntime>> = match same_nodes {
            Some(p) => p.nodes.clone(),
            None => table.nodes.iter().map(|n| nodes.get(&n.name)).collect(),
        };
        let capacity = table.nodes.iter().map(|n| n.capacity).collect();
        let top_k = config.telemetry.top_k;
        let shard_stats = match prev {
            Some(p)
                if p.config.telemetry.top_k == top_k
                    && p.table.shards.len() == table.shards.len()
                    && p.table
                        .shards
                        .iter()
                        .zip(&table.shards)
                        .all(|(a, b)| Arc::ptr_eq(a, b) || a.id == b.id) =>
            {
                p.stats.clone()
            }
            _ => table
                .shards
                .iter()
                .map(|s| stats.get(&s.id, top_k))
                .collect(),
        };
        let default_pools = config
            .routes
            .iter()
            .map(|r| match &r.on_missing_key {
                MissingKey::Reject => vec![],
                MissingKey::DefaultPool(names) => {
                    names.iter().filter_map(|n| table.node_by_name(n)).collect()
                }
            })
            .collect();
        Ok(Snapshot {
            config,
            source,
            table,
            nodes: node_rt,
            capacity,
            peers,
            stats: shard_stats,
            default_pools,
        })
    }

    /// This snapshot with `table`, a manager's update of its own table: the
    /// same config, nodes and shards, so everything resolved is shared.
    pub fn with_table(&self, table: RoutingTable) -> Snapshot {
        Snapshot {
            config: self.config.clone(),
            source: self.source.clone(),
            table,
            nodes: self.nodes.clone(),
            capacity: self.capacity.clone(),
            peers: self.peers.clone(),
            stats: self.stats.clone(),
            default_pools: self.default_pools.clone(),
        }
    }
}

fn same_timeouts(a: &Config, b: &Config) -> bool {
    let (a, b) = (&a.timeouts, &b.timeouts);
    (a.connect, a.read, a.write, a.upstream_idle) == (b.connect, b.read, b.write, b.upstream_idle)
}
