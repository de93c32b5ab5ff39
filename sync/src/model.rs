//! The typed rows and batches that travel from a provider to a node cache.
//!
//! A provider hands out [`Row`]s (one per `(sku, region)`, with the provider
//! version that last touched it, or a tombstone); [`encode_batch`] turns a
//! [`Batch`] of them into a [`CacheBatch`] — field names and ready-to-serve
//! JSON values — which a [`crate::cache::ShardCache`] applies atomically
//! together with the batch's cursor. Values are encoded once, here, so a
//! node answers a hit by copying bytes.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shardmap::config::ShardFile;

use crate::metrics::Metrics;

/// The longest sku accepted anywhere in sync (same bound as the proxy).
pub const MAX_SKU_LEN: usize = 128;

/// One inventory row of the provider: a product's stock and price in a region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub sku: String,
    pub region: String,
    pub category: String,
    /// Provider version of the last insert, update or delete of this row.
    pub version: u64,
    /// `None` when the row was deleted (a tombstone).
    pub item: Option<Item>,
}

/// The live content of a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub stock: i64,
    pub price_cents: i64,
    /// Product attributes as raw JSON text (an object), as the provider holds it.
    pub attributes: String,
}

/// A delta slice: rows with `from < version <= to`, in version order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The cursor the batch starts after.
    pub from: u64,
    /// The cursor once the batch is applied (the last row's version, or
    /// `from` when the batch is empty).
    pub to: u64,
    pub rows: Vec<Row>,
    /// True when the provider has more rows after `to` (read again).
    pub more: bool,
    /// Rows the provider could not decode (counted and logged, skipped).
    pub malformed: u64,
}

/// What a cache applies in one atomic step.
#[derive(Debug, Clone, Default)]
pub struct CacheBatch {
    pub from: u64,
    pub to: u64,
    /// `(field, value)`; field is [`field`]`(sku, region)`.
    pub upserts: Vec<(String, Bytes)>,
    /// Fields to remove (tombstones and rejected rows).
    pub deletes: Vec<String>,
    /// Bytes of fields and values, what the bandwidth budget is charged.
    pub bytes: usize,
}

/// The field of an item inside its shard: `REGION:SKU`. Regions never hold
/// `:`, so the first colon splits it unambiguously.
pub fn field(sku: &str, region: &str) -> String {
    let mut f = String::with_capacity(region.len() + 1 + sku.len());
    f.push_str(region);
    f.push(':');
    f.push_str(sku);
    f
}

/// Why a row was not cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The encoded value is larger than the configured bound.
    Oversized,
    /// The attributes are not a JSON object, or a key field is unusable.
    Malformed,
}

impl Reject {
    pub fn label(self) -> &'static str {
        match self {
            Reject::Oversized => "oversized",
            Reject::Malformed => "malformed",
        }
    }
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's string escaping, without building a Value.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The JSON a node serves for a live row. Checked: attributes must be a
/// JSON object and the whole value at most `max_bytes`.
pub fn encode_value(row: &Row, item: &Item, max_bytes: usize) -> Result<Bytes, Reject> {
    if row.sku.is_empty() || row.sku.len() > MAX_SKU_LEN || row.region.contains(':') {
        return Err(Reject::Malformed);
    }
    let attrs = item.attributes.trim();
    if !(attrs.starts_with('{') && attrs.ends_with('}'))
        || serde_json::from_str::<serde::de::IgnoredAny>(attrs).is_err()
    {
        return Err(Reject::Malformed);
    }
    let mut out = Vec::with_capacity(96 + row.sku.len() + row.category.len() + attrs.len());
    out.extend_from_slice(b"{\"sku\":");
    push_json_str(&mut out, &row.sku);
    out.extend_from_slice(b",\"region\":");
    push_json_str(&mut out, &row.region);
    out.extend_from_slice(b",\"category\":");
    push_json_str(&mut out, &row.category);
    out.extend_from_slice(
        format!(
            ",\"stock\":{},\"price_cents\":{}",
            item.stock, item.price_cents
        )
        .as_bytes(),
    );
    out.extend_from_slice(b",\"attributes\":");
    out.extend_from_slice(attrs.as_bytes());
    out.extend_from_slice(format!(",\"version\":{}}}", row.version).as_bytes());
    if out.len() > max_bytes {
        return Err(Reject::Oversized);
    }
    Ok(Bytes::from(out))
}

/// Read the provider version back out of an encoded value (used by caches
/// to keep a slow-path fill from overwriting newer data).
pub fn value_version(v: &[u8]) -> Option<u64> {
    let key = b"\"version\":";
    let pos = v.windows(key.len()).rposition(|w| w == key)?;
    let digits = &v[pos + key.len()..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// Turn a provider batch into a cache batch. A rejected row becomes a delete
/// (so a node reads it from the provider instead of serving a stale copy),
/// and is logged and counted.
pub fn encode_batch(
    shard: &str,
    batch: &Batch,
    max_value_bytes: usize,
    metrics: &Metrics,
) -> CacheBatch {
    let mut out = CacheBatch {
        from: batch.from,
        to: batch.to,
        upserts: Vec::with_capacity(batch.rows.len()),
        deletes: Vec::new(),
        bytes: 0,
    };
    for row in &batch.rows {
        let f = field(&row.sku, &row.region);
        match &row.item {
            None => {
                out.bytes += f.len();
                out.deletes.push(f);
            }
            Some(item) => match encode_value(row, item, max_value_bytes) {
                Ok(v) => {
                    out.bytes += f.len() + v.len();
                    out.upserts.push((f, v));
                }
                Err(why) => {
                    metrics.row_rejected(why);
                    tracing::warn!(shard, sku = %row.sku, region = %row.region, version = row.version,
                        reason = why.label(), "row not cached; the node will read it from the provider");
                    out.bytes += f.len();
                    out.deletes.push(f);
                }
            },
        }
    }
    out
}

/// A shard as sync sees it: an id and its `(category, region)` cells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDef {
    pub id: String,
    pub cells: Vec<(String, String)>,
}

impl ShardDef {
    pub fn from_file(s: &ShardFile) -> ShardDef {
        let mut cells = Vec::with_capacity(s.categories.len() * s.regions.len());
        for c in &s.categories {
            for r in &s.regions {
                cells.push((c.clone(), r.clone()));
            }
        }
        cells.sort();
        cells.dedup();
        ShardDef {
            id: s.id.clone(),
            cells,
        }
    }

    /// Categories and regions as two parallel arrays (for SQL `unnest`).
    pub fn columns(&self) -> (Vec<String>, Vec<String>) {
        self.cells.iter().cloned().unzip()
    }
}

/// `(category, region)` → shard index, for the node's lookups.
#[derive(Debug, Clone, Default)]
pub struct CellIndex {
    pub shards: Vec<ShardDef>,
    by_cell: HashMap<(String, String), usize>,
}

impl CellIndex {
    pub fn new(shards: Vec<ShardDef>) -> CellIndex {
        let mut by_cell = HashMap::new();
        for (i, s) in shards.iter().enumerate() {
            for c in &s.cells {
                by_cell.entry(c.clone()).or_insert(i);
            }
        }
        CellIndex { shards, by_cell }
    }

    pub fn shard_of(&self, category: &str, region: &str) -> Option<&ShardDef> {
        self.by_cell
            .get(&(category.to_string(), region.to_string()))
            .map(|&i| &self.shards[i])
    }

    pub fn get(&self, id: &str) -> Option<&ShardDef> {
        self.shards.iter().find(|s| s.id == id)
    }
}

/// Problems with a shard list that sync cannot work with.
pub fn check_shards(shards: &[ShardDef]) -> Vec<String> {
    let mut errs = vec![];
    let mut seen = std::collections::HashSet::new();
    for (i, s) in shards.iter().enumerate() {
        if s.id.is_empty() || s.id.contains(['{', '}']) {
            errs.push(format!(
                "shards[{i}].id: `{}` must be non-empty and hold no `{{` or `}}` (it becomes a Redis hash tag)",
                s.id
            ));
        }
        if !seen.insert(s.id.clone()) {
            errs.push(format!("shards[{i}].id: `{}` is used twice", s.id));
        }
        if s.cells.is_empty() {
            errs.push(format!("shards[{i}]: no (category, region) cells"));
        }
        if s.cells.iter().any(|(_, r)| r.contains(':')) {
            errs.push(format!("shards[{i}].regions: a region may not contain `:`"));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(attrs: &str) -> (Row, Item) {
        let item = Item {
            stock: 5,
            price_cents: 125,
            attributes: attrs.into(),
        };
        (
            Row {
                sku: "85123A".into(),
                region: "UK".into(),
                category: "LIGHTING".into(),
                version: 42,
                item: Some(item.clone()),
            },
            item,
        )
    }

    #[test]
    fn value_is_json_and_carries_its_version() {
        let (r, i) = row(r#"{"description":"WHITE \"HANGING\" HEART"}"#);
        let v = encode_value(&r, &i, 4096).unwrap();
        let j: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(j["stock"], 5);
        assert_eq!(j["attributes"]["description"], "WHITE \"HANGING\" HEART");
        assert_eq!(value_version(&v), Some(42));
    }

    #[test]
    fn malformed_and_oversized_are_rejected() {
        let (r, i) = row("not json");
        assert_eq!(encode_value(&r, &i, 4096), Err(Reject::Malformed));
        let (r, i) = row("[1,2]");
        assert_eq!(encode_value(&r, &i, 4096), Err(Reject::Malformed));
        let big = format!(r#"{{"d":"{}"}}"#, "x".repeat(5000));
        let (r, i) = row(&big);
        assert_eq!(encode_value(&r, &i, 4096), Err(Reject::Oversized));
    }

    #[test]
    fn rejected_rows_become_deletes_and_are_counted() {
        let m = Metrics::default();
        let (mut r, _) = row("{oops");
        r.version = 7;
        let b = Batch {
            from: 0,
            to: 7,
            rows: vec![r],
            more: false,
            malformed: 0,
        };
        let cb = encode_batch("s", &b, 4096, &m);
        assert!(cb.upserts.is_empty());
        assert_eq!(cb.deletes, vec!["UK:85123A".to_string()]);
        assert_eq!(
            m.rows_rejected.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
