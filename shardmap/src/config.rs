//! Configuration: serde wire structs (what the TOML file says) and the
//! validated model (what the rest of shardcast is built from).
//!
//! Three layers, as in STYLE.md rule 5: [`ConfigFile`] mirrors the file and
//! rejects unknown fields; [`Config::from_toml`] checks it whole, collecting
//! every problem with its field path into [`ConfigErrors`]; the proxy then
//! builds runtime objects (the routing table, listeners) from [`Config`].
//! Nothing here reads files except through the `load_*` helpers, which take
//! the directory relative paths are resolved against.
//!
//! Nodes, shards and the replication factor are the topology
//! ([`crate::topology`]): read from the file `topology` names (the one
//! sync and the shard manager read too), or inline in older configs; the
//! same validator either way, its results in [`Config::nodes`],
//! [`Config::shards`] and [`Config::replication_factor`].
//!
//! The wire structs are in `wire` (but for `[control]`'s [`ControlFile`],
//! kept here with the metadata store's validation), the model in `model`;
//! this module validates one into the other. Every item is re-exported
//! here, so `shardmap::config::…` paths do not depend on the split.

mod model;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::key::{KeySource, PathPattern, RegionSource};
pub(crate) use crate::topology::default_replication_factor;
use crate::topology::Prev;
pub use crate::topology::{
    auto_assign, NodeFile, NodeSpec, ShardFile, ShardRuleFile, ShardSpec, Topology, TopologyFile,
    Volatility,
};

pub use model::{
    CatalogSource, Config, Dashboard, Health, Https, Listen, MissingKey, Route, Telemetry,
    TelemetrySink, Timeouts,
};
pub use wire::{
    CatalogFile, ConfigFile, DashboardFile, HealthFile, HttpsFile, LimitsFile, ListenFile,
    MissingKeyFile, RetryFile, RouteFile, TelemetryFile, TimeoutsFile,
};

/// One problem found in a config, named by its field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the offending field, e.g. `shards[2].regions[0]`.
    pub field: String,
    pub message: String,
}

/// Every problem found in one config file; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file the errors are about (or `<inline>`).
    pub file: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} error(s)", self.file, self.errors.len())?;
        for e in &self.errors {
            write!(f, "\n  {}: {}: {}", self.file, e.field, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// A config file's text, or the error that it cannot be read.
    pub fn read(path: &Path) -> Result<String, ConfigErrors> {
        std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.display().to_string(),
            errors: vec![FieldError {
                field: "<file>".into(),
                message: format!("cannot read: {e}"),
            }],
        })
    }

    /// The errors as `field: message` lines, for JSON admin responses.
    pub fn lines(&self) -> Vec<String> {
        self.errors
            .iter()
            .map(|e| format!("{}: {}: {}", self.file, e.field, e.message))
            .collect()
    }
}

#[derive(Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Where the shard manager publishes table updates (the metadata store).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlFile {
    /// `redis://host:port/db` or `redis+cluster://host:port,host:port…`:
    /// follow the table published there (every proxy converges on the same
    /// version). Absent: config and `PUT /admin/table` only.
    #[serde(default)]
    pub metadata: Option<String>,
    /// Key prefix: the table lives at `<prefix>:table`, change
    /// notifications on channel `<prefix>:table:changed`. On a cluster the
    /// prefix is put in a hash tag (`{shardcast}`) unless it holds one.
    #[serde(default = "d_prefix")]
    pub prefix: String,
    /// Re-read the table this often even without a notification (a proxy
    /// that missed a message catches up).
    #[serde(default = "d_poll")]
    pub poll_ms: u64,
}

fn d_prefix() -> String {
    "shardcast".into()
}
fn d_poll() -> u64 {
    1000
}

impl Default for ControlFile {
    fn default() -> Self {
        Self {
            metadata: None,
            prefix: d_prefix(),
            poll_ms: d_poll(),
        }
    }
}

impl Config {
    /// Read, parse and validate a config file; relative paths in it are
    /// resolved against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = ConfigErrors::read(path)?;
        Self::from_toml(&text, path)
    }

    /// Parse and validate config text as if read from `path`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        Self::from_toml_reusing(text, path, None)
    }

    /// [`Config::from_toml`], reusing what `prev` (the running config)
    /// already expanded and checked of the topology where its inputs did
    /// not change: a reload that edits one shard's settings does not
    /// expand and re-check every shard. The result, errors included, is
    /// the one [`Config::from_toml`] gives.
    pub fn from_toml_reusing(
        text: &str,
        path: &Path,
        prev: Option<&Config>,
    ) -> Result<Config, ConfigErrors> {
        let file_name = path.display().to_string();
        let wire: ConfigFile = parse_toml(text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        wire.validate_reusing(base, prev)
            .map_err(|errors| ConfigErrors {
                file: file_name.clone(),
                errors,
            })
            .map(|mut c| {
                c.source = path.to_path_buf();
                c
            })
    }

    /// Index of a node by name.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}

/// Parse TOML into a wire struct; a syntax error or unknown field is one
/// error naming its line.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigErrors> {
    toml::from_str(text).map_err(|e| {
        let field = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].lines().count().max(1);
                format!("line {line}")
            })
            .unwrap_or_else(|| "<toml>".into());
        ConfigErrors {
            file: path.display().to_string(),
            errors: vec![FieldError {
                field,
                message: e.message().to_string(),
            }],
        }
    })
}

fn parse_addr(errs: &mut Errors, field: &str, s: &str) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(e) => {
            errs.push(field, format!("`{s}` is not an ip:port address ({e})"));
            None
        }
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl ConfigFile {
    /// Check the whole file, collecting every error.
    pub fn validate(self, base: &Path) -> Result<Config, Vec<FieldError>> {
        self.validate_reusing(base, None)
    }

    /// [`ConfigFile::validate`], reusing `prev`'s topology where it still
    /// applies (see [`Config::from_toml_reusing`]).
    pub fn validate_reusing(
        self,
        base: &Path,
        prev: Option<&Config>,
    ) -> Result<Config, Vec<FieldError>> {
        let prev = prev.and_then(|c| {
            Some(Prev {
                file: c.topology_input.as_deref()?,
                nodes: &c.nodes,
                shards: &c.shards,
            })
        });
        let mut errs = Errors::default();
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        // listeners
        let http: Vec<SocketAddr> = self
            .listen
            .http
            .iter()
            .enumerate()
            .filter_map(|(i, a)| parse_addr(&mut errs, &format!("listen.http[{i}]"), a))
            .collect();
        let mut https = vec![];
        for (i, h) in self.listen.https.iter().enumerate() {
            if let Some(addr) = parse_addr(&mut errs, &format!("listen.https[{i}].addr"), &h.addr) {
                https.push(Https {
                    addr,
                    cert: resolve(&h.cert),
                    key: resolve(&h.key),
                    h2: h.h2,
                });
            }
        }
        if http.is_empty() && https.is_empty() {
            errs.push(
                "listen",
                "no `http` or `https` listener: nothing would serve traffic",
            );
        }
        let mut seen_addr = HashSet::new();
        for a in http.iter().chain(https.iter().map(|h| &h.addr)) {
            if !seen_addr.insert(*a) {
                errs.push("listen", format!("address {a} is used twice"));
            }
        }
        let admin = parse_addr(&mut errs, "listen.admin", &self.listen.admin);
        if let Some(a) = admin {
            if !a.ip().is_loopback() && self.listen.admin_token.as_deref().unwrap_or("").is_empty()
            {
                errs.push(
                    "listen.admin_token",
                    format!("admin listener {a} is not loopback: a bearer token is required"),
                );
            }
            if seen_addr.contains(&a) {
                errs.push(
                    "listen.admin",
                    format!("address {a} is also a traffic listener"),
                );
            }
        }
        if self.listen.threads == 0 || self.listen.threads > 256 {
            errs.push("listen.threads", "must be between 1 and 256");
        }

        // topology: nodes, shards, replication factor — from the file
        // `topology` names, or inline (one validator either way)
        let inline =
            !self.nodes.is_empty() || !self.shards.is_empty() || self.replication_factor.is_some();
        let (topology, topology_file, topology_input) = match &self.topology {
            Some(t) => {
                if inline {
                    errs.push(
                        "topology",
                        "nodes, shards and replication_factor come from the topology file: \
                         remove the inline [[nodes]], [[shards]] and replication_factor, or `topology`",
                    );
                }
                let p = resolve(t);
                match ConfigErrors::read(&p)
                    .and_then(|text| Topology::from_toml_reusing(&text, &p, prev))
                {
                    Ok((t, file)) => (t, Some(p), Some(Arc::new(file))),
                    Err(e) => {
                        for line in e.lines() {
                            errs.push("topology", line);
                        }
                        (Topology::empty(), Some(p), None)
                    }
                }
            }
            None => {
                let file = TopologyFile {
                    replication_factor: self
                        .replication_factor
                        .unwrap_or_else(default_replication_factor),
                    nodes: self.nodes.clone(),
                    shards: self.shards.clone(),
                    shard_rules: vec![],
                };
                let t = file.check_reusing(&mut errs, prev);
                (t, None, Some(Arc::new(file)))
            }
        };
        let node_names: HashSet<&str> = topology.nodes.iter().map(|n| n.name.as_str()).collect();

        // routes
        let mut routes = vec![];
        let mut route_names = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let f = format!("routes[{i}]");
            if !route_names.insert(r.name.as_str()) {
                errs.push(
                    format!("{f}.name"),
                    format!("route `{}` is defined twice", r.name),
                );
            }
            let pattern = match PathPattern::parse(&r.path) {
                Ok(p) => Some(p),
                Err(m) => {
                    errs.push(format!("{f}.path"), m);
                    None
                }
            };
            let sku_sources = [r.sku_query.is_some(), r.sku_header.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            let path_has_sku = pattern.as_ref().is_some_and(|p| p.has_sku());
            if sku_sources > 1 || (sku_sources == 1 && path_has_sku) {
                errs.push(
                    f.clone(),
                    "take the sku from one place only: `{sku}` in path, `sku_query` or `sku_header`",
                );
            }
            if sku_sources == 0 && !path_has_sku && pattern.is_some() {
                errs.push(
                    format!("{f}.path"),
                    "no sku source: put `{sku}` in the path or set `sku_query` / `sku_header`",
                );
            }
            let sku = if let Some(q) = &r.sku_query {
                KeySource::Query(q.clone())
            } else if let Some(h) = &r.sku_header {
                KeySource::Header(h.to_ascii_lowercase())
            } else {
                KeySource::Path
            };
            let path_has_region = pattern.as_ref().is_some_and(|p| p.has_region());
            let region_sources = [
                r.region_query.is_some(),
                r.region_header.is_some(),
                path_has_region,
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if region_sources > 1 {
                errs.push(
                    f.clone(),
                    "take the region from one place only: `{region}` in path, `region_query` or `region_header`",
                );
            }
            let region = if let Some(q) = &r.region_query {
                RegionSource::Query(q.clone())
            } else if let Some(h) = &r.region_header {
                RegionSource::Header(h.to_ascii_lowercase())
            } else if path_has_region {
                RegionSource::Path
            } else {
                RegionSource::None
            };
            let on_missing_key = match r.on_missing_key {
                MissingKeyFile::Reject => {
                    if !r.default_pool.is_empty() {
                        errs.push(
                            format!("{f}.default_pool"),
                            "set `on_missing_key = \"default_pool\"` to use a default pool",
                        );
                    }
                    MissingKey::Reject
                }
                MissingKeyFile::DefaultPool => {
                    if r.default_pool.is_empty() {
                        errs.push(format!("{f}.default_pool"), "must name at least one node");
                    }
                    for (pi, n) in r.default_pool.iter().enumerate() {
                        if !node_names.contains(n.as_str()) {
                            errs.push(
                                format!("{f}.default_pool[{pi}]"),
                                format!("unknown node `{n}`"),
                            );
                        }
                    }
                    MissingKey::DefaultPool(r.default_pool.clone())
                }
            };
            if let Some(p) = pattern {
                routes.push(Route {
                    name: r.name.clone(),
                    pattern: p,
                    sku,
                    region,
                    default_region: r.default_region.clone(),
                    on_missing_key,
                });
            }
        }
        if self.routes.is_empty() {
            errs.push("routes", "at least one route is required");
        }

        // catalog
        if self.catalog.sku_column.is_empty() {
            errs.push("catalog.sku_column", "must not be empty");
        }
        let catalog = CatalogSource {
            csv: self.catalog.csv.as_deref().map(resolve),
            sku_column: self.catalog.sku_column.clone(),
            category_column: self.catalog.category_column.clone(),
            inline: self.catalog.skus.clone(),
        };
        if let Some(p) = &catalog.csv {
            if !p.is_file() {
                errs.push("catalog.csv", format!("{} does not exist", p.display()));
            }
        }

        // timeouts, retry, health
        let t = &self.timeouts;
        for (name, v) in [
            ("connect_ms", t.connect_ms),
            ("read_ms", t.read_ms),
            ("write_ms", t.write_ms),
            ("upstream_idle_ms", t.upstream_idle_ms),
            ("client_handshake_ms", t.client_handshake_ms),
            ("client_header_ms", t.client_header_ms),
            ("client_body_ms", t.client_body_ms),
            ("client_keepalive_ms", t.client_keepalive_ms),
            ("client_h2_idle_ms", t.client_h2_idle_ms),
            ("client_write_ms", t.client_write_ms),
        ] {
            if v == 0 || v > 3_600_000 {
                errs.push(
                    format!("timeouts.{name}"),
                    "must be between 1 ms and 1 hour",
                );
            }
        }
        let l = &self.limits;
        for (name, v) in [
            ("max_connections", l.max_connections),
            ("max_connections_per_client", l.max_connections_per_client),
            ("admin_max_connections", l.admin_max_connections),
        ] {
            if v == 0 || v > 1_000_000 {
                errs.push(format!("limits.{name}"), "must be between 1 and 1000000");
            }
        }
        if l.max_connections_per_client > l.max_connections {
            errs.push(
                "limits.max_connections_per_client",
                "cannot exceed limits.max_connections",
            );
        }
        if !(0.0..=1.0).contains(&self.retry.budget_ratio) {
            errs.push("retry.budget_ratio", "must be between 0 and 1");
        }
        if self.retry.max_retries > 10 {
            errs.push("retry.max_retries", "at most 10");
        }
        if !self.health.path.starts_with('/') {
            errs.push("health.path", "must start with `/`");
        }
        if self.health.interval_ms == 0 || self.health.timeout_ms == 0 {
            errs.push("health", "interval_ms and timeout_ms must be positive");
        }
        if self.health.eject_after_failures == 0 {
            errs.push("health.eject_after_failures", "must be at least 1");
        }

        // telemetry
        let sink = match self.telemetry.sink.as_deref() {
            None | Some("") => TelemetrySink::None,
            Some(s) if s.starts_with("http://") => TelemetrySink::Http(s.to_string()),
            Some(s) if s.starts_with("file:") => TelemetrySink::File(resolve(&s[5..])),
            Some(s) => {
                errs.push(
                    "telemetry.sink",
                    format!("`{s}`: expected `http://host:port/path` or `file:PATH`"),
                );
                TelemetrySink::None
            }
        };
        if self.telemetry.interval_s == 0 || self.telemetry.interval_s > 3600 {
            errs.push("telemetry.interval_s", "must be between 1 and 3600");
        }
        if self.telemetry.top_k > 1000 {
            errs.push("telemetry.top_k", "at most 1000");
        }
        if self.telemetry.queue == 0 {
            errs.push("telemetry.queue", "must be at least 1");
        }
        if let Some(m) = &self.control.metadata {
            if let Err(e) = crate::contract::store_url::StoreUrl::parse(m) {
                errs.push("control.metadata", e);
            }
        }
        if self.control.prefix.is_empty() || self.control.prefix.contains(char::is_whitespace) {
            errs.push("control.prefix", "must be non-empty without spaces");
        }
        if self.control.poll_ms < 50 {
            errs.push("control.poll_ms", "at least 50");
        }
        let forecaster = match self.dashboard.forecaster.as_deref() {
            None | Some("") => None,
            Some(u) => match check_base_url(u) {
                Ok(base) => Some(base),
                Err(m) => {
                    errs.push("dashboard.forecaster", m);
                    None
                }
            },
        };
        if self.dashboard.forecaster_timeout_ms == 0 || self.dashboard.forecaster_timeout_ms > 300 {
            errs.push(
                "dashboard.forecaster_timeout_ms",
                "must be between 1 and 300: a dashboard refresh must not hang on the forecaster",
            );
        }
        if self.max_header_bytes < 1024 || self.max_header_bytes > 1 << 20 {
            errs.push("max_header_bytes", "must be between 1024 and 1048576");
        }

        if !errs.0.is_empty() {
            return Err(errs.0);
        }
        Ok(Config {
            source: PathBuf::new(),
            listen: Listen {
                http,
                https,
                admin: admin.unwrap_or_else(|| ([127, 0, 0, 1], 9901).into()),
                admin_token: self.listen.admin_token.filter(|t| !t.is_empty()),
                threads: self.listen.threads,
                grace_period: Duration::from_secs(self.listen.grace_period_s),
            },
            topology: topology_file,
            topology_input,
            nodes: topology.nodes,
            shards: topology.shards,
            replication_factor: topology.replication_factor,
            routes,
            catalog,
            timeouts: Timeouts {
                connect: ms(t.connect_ms),
                read: ms(t.read_ms),
                write: ms(t.write_ms),
                upstream_idle: ms(t.upstream_idle_ms),
                client_handshake: ms(t.client_handshake_ms),
                client_header: ms(t.client_header_ms),
                client_body: ms(t.client_body_ms),
                client_keepalive: ms(t.client_keepalive_ms),
                client_h2_idle: ms(t.client_h2_idle_ms),
                client_write: ms(t.client_write_ms),
            },
            limits: self.limits,
            retry: self.retry,
            health: Health {
                path: self.health.path,
                interval: ms(self.health.interval_ms),
                timeout: ms(self.health.timeout_ms),
                eject_after_failures: self.health.eject_after_failures,
                ejection: ms(self.health.ejection_ms),
            },
            telemetry: Telemetry {
                sink,
                interval: Duration::from_secs(self.telemetry.interval_s),
                top_k: self.telemetry.top_k,
                queue: self.telemetry.queue,
            },
            control: self.control,
            dashboard: Dashboard {
                forecaster,
                forecaster_timeout: ms(self.dashboard.forecaster_timeout_ms),
            },
            response_headers: self.response_headers,
            max_header_bytes: self.max_header_bytes,
        })
    }
}

pub(crate) fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'
}

pub(crate) fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}`: expected host:port"))?;
    if host.is_empty() {
        return Err(format!("`{s}`: empty host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("`{s}`: `{port}` is not a port")),
    }
}

/// A base URL `http://host:port` (an optional trailing `/` is dropped; no
/// path, query or credentials, since paths are appended to it).
fn check_base_url(u: &str) -> Result<String, String> {
    let rest = u
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{u}`: expected http://host:port"))?;
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains(['/', '?', '#', '@']) || hostport.contains(char::is_whitespace) {
        return Err(format!(
            "`{u}`: expected http://host:port with no path, query or user"
        ));
    }
    check_host_port(hostport)?;
    Ok(format!("http://{hostport}"))
}
