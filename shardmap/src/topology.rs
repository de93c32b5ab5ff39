//! The topology: which nodes exist (name, address, capacity, zone), which
//! shards exist (id, cells, volatility, threshold, optional starting
//! replicas) and how many replicas each shard keeps. One file
//! (`conf/topology.toml`) that every process reads — the proxy, sync and
//! its nodes, and the shard manager — with one wire type
//! ([`TopologyFile`]) and one validator ([`Topology::from_toml`]), so they
//! cannot disagree on ids, cells or node names.
//!
//! What is *assigned* (which replicas serve a shard now) is not here: that
//! is the manager's table in the metadata store. The topology says what
//! exists; the table says where it lives.
//!
//! Shards are listed one by one (`[[shards]]`) or declared by rule
//! (`[[shard_rules]]`: one shard per category × region cell), so a
//! storefront with thousands of shards writes a few rules, not thousands of
//! tables. The proxy config may still carry `[[nodes]]`, `[[shards]]` and
//! `replication_factor` inline (older setups); they go through the same
//! validator (`TopologyFile::check`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{check_host_port, name_char, parse_toml, ConfigErrors, Errors, FieldError};

/// The topology file as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    /// Replicas per shard when a shard does not list its own. Default 2.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: usize,
    #[serde(default)]
    pub nodes: Vec<NodeFile>,
    #[serde(default)]
    pub shards: Vec<ShardFile>,
    /// Shards declared by rule, expanded after the listed `shards`.
    #[serde(default)]
    pub shard_rules: Vec<ShardRuleFile>,
}

impl Default for TopologyFile {
    fn default() -> Self {
        TopologyFile {
            replication_factor: default_replication_factor(),
            nodes: vec![],
            shards: vec![],
            shard_rules: vec![],
        }
    }
}

pub(crate) fn default_replication_factor() -> usize {
    2
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub name: String,
    /// `host:port` of the node's HTTP server.
    pub address: String,
    /// Relative capacity (requests per second it is sized for); weights
    /// replica choice and bounds placement.
    #[serde(default = "default_capacity")]
    pub capacity: f64,
    #[serde(default)]
    pub zone: Option<String>,
}

fn default_capacity() -> f64 {
    1000.0
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Volatility {
    Low,
    #[default]
    Medium,
    High,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShardFile {
    pub id: String,
    /// The shard holds the cells `categories × regions`.
    pub categories: Vec<String>,
    pub regions: Vec<String>,
    #[serde(default)]
    pub volatility: Volatility,
    /// Initial replicas (node names); assigned automatically when absent.
    #[serde(default)]
    pub replicas: Option<Vec<String>>,
    /// Predicted requests/s above which the shard is pre-fetched to more nodes.
    #[serde(default)]
    pub threshold: Option<f64>,
}

/// One shard per (category, region) cell of `categories × regions`, named
/// by `id` with `{category}` and `{region}` replaced. Replicas are always
/// assigned automatically.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShardRuleFile {
    /// Id template. Default `{region}/{category}`.
    #[serde(default = "default_rule_id")]
    pub id: String,
    pub categories: Vec<String>,
    pub regions: Vec<String>,
    #[serde(default)]
    pub volatility: Volatility,
    #[serde(default)]
    pub threshold: Option<f64>,
}

fn default_rule_id() -> String {
    "{region}/{category}".into()
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    pub address: String,
    pub capacity: f64,
    pub zone: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShardSpec {
    pub id: String,
    pub categories: Vec<String>,
    pub regions: Vec<String>,
    pub volatility: Volatility,
    /// Replica node names, after automatic assignment.
    pub replicas: Vec<String>,
    pub threshold: Option<f64>,
}

/// A validated topology: node names unique, shard ids unique, every cell in
/// one shard, every shard with `replication_factor` distinct replicas (or
/// its own list) of known nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// The file it came from; `None` when inline in a proxy config.
    pub source: Option<PathBuf>,
    pub nodes: Vec<NodeSpec>,
    pub shards: Vec<ShardSpec>,
    pub replication_factor: usize,
}

impl Topology {
    /// Read, parse and validate a topology file. Errors name the file and
    /// each field (`nodes[2].address`, `shard_rules[0].id`).
    pub fn load(path: &Path) -> Result<Topology, ConfigErrors> {
        let text = ConfigErrors::read(path)?;
        Self::from_toml(&text, path)
    }

    /// Parse and validate topology text as if read from `path`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Topology, ConfigErrors> {
        Self::from_toml_reusing(text, path, None).map(|(t, _)| t)
    }

    /// [`Topology::from_toml`], reusing what `prev` (a valid topology and
    /// the file it came from) already expanded and checked; also returns
    /// the parsed file, for the next load to reuse. The result is the one
    /// a load without `prev` gives, errors included.
    pub(crate) fn from_toml_reusing(
        text: &str,
        path: &Path,
        prev: Option<Prev<'_>>,
    ) -> Result<(Topology, TopologyFile), ConfigErrors> {
        let wire: TopologyFile = parse_toml(text, path)?;
        let mut errs = Errors::default();
        let t = wire.check_reusing(&mut errs, prev);
        if !errs.0.is_empty() {
            return Err(ConfigErrors {
                file: path.display().to_string(),
                errors: errs.0,
            });
        }
        Ok((
            Topology {
                source: Some(path.to_path_buf()),
                ..t
            },
            wire,
        ))
    }

    /// No nodes, no shards: what a config whose topology file failed
    /// carries while its errors are collected.
    pub(crate) fn empty() -> Topology {
        Topology {
            source: None,
            nodes: vec![],
            shards: vec![],
            replication_factor: default_replication_factor(),
        }
    }

    /// Index of a node by name.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}

/// A shard to check, with the field names its errors use.
struct Candidate<'a> {
    field: String,
    categories_field: Vec<String>,
    regions_field: Vec<String>,
    id: String,
    categories: Vec<String>,
    regions: Vec<String>,
    volatility: Volatility,
    replicas: Option<&'a [String]>,
    threshold: Option<f64>,
}

impl TopologyFile {
    /// Check the whole topology, collecting every error.
    pub fn validate(&self) -> Result<Topology, Vec<FieldError>> {
        let mut errs = Errors::default();
        let t = self.check(&mut errs);
        if errs.0.is_empty() {
            Ok(t)
        } else {
            Err(errs.0)
        }
    }

    /// Check into `errs` (the proxy config's inline topology shares its
    /// error list); the result is meaningful only when nothing was added.
    pub(crate) fn check(&self, errs: &mut Errors) -> Topology {
        self.check_reusing(errs, None)
    }

    /// [`TopologyFile::check`], reusing `prev` when this file differs from
    /// the one `prev` came from only where no rule spanning shards can
    /// notice (see [`Prev`]); otherwise the full check.
    pub(crate) fn check_reusing(&self, errs: &mut Errors, prev: Option<Prev<'_>>) -> Topology {
        if let Some(shards) = prev.and_then(|p| self.patch(p)) {
            return Topology {
                source: None,
                nodes: prev.map(|p| p.nodes.to_vec()).unwrap_or_default(),
                shards,
                replication_factor: self.replication_factor,
            };
        }
        let before = errs.0.len();
        let mut node_names = HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let f = format!("nodes[{i}]");
            if n.name.is_empty() || n.name.len() > 64 || !n.name.chars().all(name_char) {
                errs.push(
                    format!("{f}.name"),
                    format!("`{}`: use 1-64 characters from [A-Za-z0-9._-]", n.name),
                );
            }
            if !node_names.insert(n.name.as_str()) {
                errs.push(
                    format!("{f}.name"),
                    format!("node `{}` is defined twice", n.name),
                );
            }
            if let Err(m) = check_host_port(&n.address) {
                errs.push(format!("{f}.address"), m);
            }
            if !(n.capacity.is_finite() && n.capacity > 0.0) {
                errs.push(format!("{f}.capacity"), "must be a positive number");
            }
        }
        if self.nodes.is_empty() {
            errs.push("nodes", "at least one node is required");
        }
        if self.replication_factor == 0 {
            errs.push("replication_factor", "must be at least 1");
        } else if !self.nodes.is_empty() && self.replication_factor > self.nodes.len() {
            errs.push(
                "replication_factor",
                format!(
                    "{} replicas need {} distinct nodes; only {} defined",
                    self.replication_factor,
                    self.replication_factor,
                    self.nodes.len()
                ),
            );
        }

        let candidates = self.candidates(errs);
        let mut shard_ids = HashSet::new();
        let mut cell_owner: HashMap<(&str, &str), &str> = HashMap::new();
        let mut shards = Vec::with_capacity(candidates.len());
        for s in &candidates {
            let f = &s.field;
            if s.id.is_empty()
                || s.id.len() > 128
                || !s.id.chars().all(|c| name_char(c) || c == '/')
            {
                errs.push(
                    format!("{f}.id"),
                    format!("`{}`: use 1-128 characters from [A-Za-z0-9._/-]", s.id),
                );
            }
            if !shard_ids.insert(s.id.as_str()) {
                errs.push(
                    format!("{f}.id"),
                    format!("shard `{}` is defined twice", s.id),
                );
            }
            if s.categories.is_empty() {
                errs.push(
                    format!("{f}.categories"),
                    "at least one category is required",
                );
            }
            if s.regions.is_empty() {
                errs.push(format!("{f}.regions"), "at least one region is required");
            }
            for (ci, c) in s.categories.iter().enumerate() {
                if c.is_empty() {
                    errs.push(s.categories_field[ci].clone(), "empty category");
                }
                for (ri, r) in s.regions.iter().enumerate() {
                    if r.is_empty() {
                        if ci == 0 {
                            errs.push(s.regions_field[ri].clone(), "empty region");
                        }
                        continue;
                    }
                    if let Some(prev) = cell_owner.insert((c, r), &s.id) {
                        if prev != s.id {
                            errs.push(
                                s.categories_field[ci].clone(),
                                format!("cell ({c}, {r}) already belongs to shard `{prev}`"),
                            );
                        }
                    }
                }
            }
            if let Some(t) = s.threshold {
                if !(t.is_finite() && t > 0.0) {
                    errs.push(format!("{f}.threshold"), "must be a positive number");
                }
            }
            let replicas = match s.replicas {
                Some(r) => {
                    let mut seen = HashSet::new();
                    for (ri, name) in r.iter().enumerate() {
                        if !node_names.contains(name.as_str()) {
                            errs.push(
                                format!("{f}.replicas[{ri}]"),
                                format!("unknown node `{name}`"),
                            );
                        }
                        if !seen.insert(name) {
                            errs.push(
                                format!("{f}.replicas[{ri}]"),
                                format!("node `{name}` listed twice: replicas must be distinct"),
                            );
                        }
                    }
                    if r.is_empty() {
                        errs.push(
                            format!("{f}.replicas"),
                            "an explicit replica list cannot be empty",
                        );
                    }
                    r.to_vec()
                }
                None => vec![],
            };
            shards.push(ShardSpec {
                id: s.id.clone(),
                categories: s.categories.clone(),
                regions: s.regions.clone(),
                volatility: s.volatility,
                replicas,
                threshold: s.threshold,
            });
        }
        if shards.is_empty() {
            errs.push("shards", "at least one shard is required");
        }

        let nodes: Vec<NodeSpec> = self
            .nodes
            .iter()
            .map(|n| NodeSpec {
                name: n.name.clone(),
                address: n.address.clone(),
                capacity: n.capacity,
                zone: n.zone.clone(),
            })
            .collect();
        if errs.0.len() == before {
            auto_assign(&mut shards, &nodes, self.replication_factor);
        }
        Topology {
            source: None,
            nodes,
            shards,
            replication_factor: self.replication_factor,
        }
    }

    /// The listed shards, then every rule's cells, each with its field names.
    fn candidates(&self, errs: &mut Errors) -> Vec<Candidate<'_>> {
        let mut out = vec![];
        for (i, s) in self.shards.iter().enumerate() {
            let f = format!("shards[{i}]");
            out.push(Candidate {
                categories_field: (0..s.categories.len())
                    .map(|c| format!("{f}.categories[{c}]"))
                    .collect(),
                regions_field: (0..s.regions.len())
                    .map(|r| format!("{f}.regions[{r}]"))
                    .collect(),
                field: f,
                id: s.id.clone(),
                categories: s.categories.clone(),
                regions: s.regions.clone(),
                volatility: s.volatility,
                replicas: s.replicas.as_deref(),
                threshold: s.threshold,
            });
        }
        for (i, r) in self.shard_rules.iter().enumerate() {
            let f = format!("shard_rules[{i}]");
            let mut ok = true;
            if r.categories.is_empty() {
                errs.push(
                    format!("{f}.categories"),
                    "at least one category is required",
                );
                ok = false;
            }
            if r.regions.is_empty() {
                errs.push(format!("{f}.regions"), "at least one region is required");
                ok = false;
            }
            let rest = r.id.replace("{category}", "").replace("{region}", "");
            if rest.contains(['{', '}']) {
                errs.push(
                    format!("{f}.id"),
                    format!(
                        "`{}`: the only placeholders are {{category}} and {{region}}",
                        r.id
                    ),
                );
                ok = false;
            }
            for (n, list, ph) in [
                ("categories", &r.categories, "{category}"),
                ("regions", &r.regions, "{region}"),
            ] {
                if list.len() > 1 && !r.id.contains(ph) {
                    errs.push(
                        format!("{f}.id"),
                        format!(
                            "`{}`: {} {n} need {ph} in the id, or every shard gets the same id",
                            r.id,
                            list.len()
                        ),
                    );
                    ok = false;
                }
            }
            if !ok {
                continue;
            }
            for (ci, c) in r.categories.iter().enumerate() {
                for (ri, g) in r.regions.iter().enumerate() {
                    out.push(Candidate {
                        field: f.clone(),
                        categories_field: vec![format!("{f}.categories[{ci}]")],
                        regions_field: vec![format!("{f}.regions[{ri}]")],
                        id: r.id.replace("{category}", c).replace("{region}", g),
                        categories: vec![c.clone()],
                        regions: vec![g.clone()],
                        volatility: r.volatility,
                        replicas: None,
                        threshold: r.threshold,
                    });
                }
            }
        }
        out
    }
}

/// Give every shard without explicit replicas `rf` distinct nodes, spreading
/// zones first and balancing the number of replicas per node. Deterministic:
/// the same shards and nodes give the same assignment on every process.
pub fn auto_assign(shards: &mut [ShardSpec], nodes: &[NodeSpec], rf: usize) {
    let mut count: Vec<usize> = vec![0; nodes.len()];
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    for s in shards.iter() {
        for r in &s.replicas {
            if let Some(&i) = index.get(r.as_str()) {
                count[i] += 1;
            }
        }
    }
    for s in shards.iter_mut() {
        if !s.replicas.is_empty() {
            continue;
        }
        let mut chosen: Vec<usize> = vec![];
        for _ in 0..rf.min(nodes.len()) {
            let zones: HashSet<Option<&str>> =
                chosen.iter().map(|&i| nodes[i].zone.as_deref()).collect();
            let best = (0..nodes.len())
                .filter(|i| !chosen.contains(i))
                .min_by(|&a, &b| {
                    let za = nodes[a].zone.is_some() && zones.contains(&nodes[a].zone.as_deref());
                    let zb = nodes[b].zone.is_some() && zones.contains(&nodes[b].zone.as_deref());
                    // load relative to capacity, then name for determinism
                    let la = count[a] as f64 / nodes[a].capacity;
                    let lb = count[b] as f64 / nodes[b].capacity;
                    za.cmp(&zb)
                        .then(la.total_cmp(&lb))
                        .then(nodes[a].name.cmp(&nodes[b].name))
                });
            if let Some(i) = best {
                chosen.push(i);
                count[i] += 1;
            }
        }
        s.replicas = chosen.into_iter().map(|i| nodes[i].name.clone()).collect();
    }
}

mod reuse;
pub(crate) use reuse::Prev;

#[cfg(test)]
mod reuse_tests;
#[cfg(test)]
mod tests;
