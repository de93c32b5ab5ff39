//! Seeding the provider from the project's Online Retail II files, and
//! replaying realistic changes.
//!
//! The loader reads `data/online_retail/catalog.csv.gz` (real products,
//! categories and the countries that bought them). Each product gets a row
//! per region it sold in (`UK` = United Kingdom and Channel Islands, as in
//! `data/derive.py`; `INTL` otherwise) with a price from its median price
//! and a stock from its sales volume. A scale factor `s > 1` adds `s - 1`
//! deterministic variants per product (`SKU-V0001`, …) with jittered price
//! and stock, so `s = 150` gives about a million rows.
//!
//! The change generator replays `lines.csv.gz` (real invoice lines, in time
//! order): each line sells `quantity` units of its sku in its country's
//! region; low stock is restocked, prices drift now and then, and a few
//! rows are delisted and relisted — the mix a live provider produces.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

use crate::provider::{Change, LoadRow, ProviderAdmin, ProviderError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// One product of the catalog file.
#[derive(Debug, Clone)]
pub struct Product {
    pub sku: String,
    pub category: String,
    pub description: String,
    pub median_price: f64,
    pub lines: u64,
    pub regions: Vec<&'static str>,
}

/// Region of a country, as the data's shard series define it.
pub fn region_of(country: &str) -> &'static str {
    match country {
        "United Kingdom" | "Channel Islands" => "UK",
        _ => "INTL",
    }
}

fn open_maybe_gz(path: &Path) -> Result<Box<dyn BufRead>, LoadError> {
    let f = std::fs::File::open(path).map_err(|e| LoadError::File {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    if path.extension().is_some_and(|e| e == "gz") {
        Ok(Box::new(BufReader::new(flate2::read::GzDecoder::new(f))))
    } else {
        Ok(Box::new(BufReader::new(f)))
    }
}

/// Read the catalog CSV (`sku,category,description,median_price,lines,countries`).
/// Bad rows are counted and skipped, with a warning.
pub fn read_catalog(path: &Path) -> Result<Vec<Product>, LoadError> {
    let mut rdr = csv::Reader::from_reader(open_maybe_gz(path)?);
    let ferr = |msg: String| LoadError::File {
        path: path.display().to_string(),
        msg,
    };
    let headers = rdr.headers().map_err(|e| ferr(e.to_string()))?.clone();
    let col = |n: &str| {
        headers
            .iter()
            .position(|h| h == n)
            .ok_or_else(|| ferr(format!("no `{n}` column")))
    };
    let (si, ci, di, pi, li, ki) = (
        col("sku")?,
        col("category")?,
        col("description")?,
        col("median_price")?,
        col("lines")?,
        col("countries")?,
    );
    let mut out = vec![];
    let mut bad = 0u64;
    for rec in rdr.records() {
        let Ok(rec) = rec else {
            bad += 1;
            continue;
        };
        let (Some(sku), Some(cat)) = (rec.get(si), rec.get(ci)) else {
            bad += 1;
            continue;
        };
        if sku.is_empty() || cat.is_empty() || sku.len() > 100 {
            bad += 1;
            continue;
        }
        let mut regions: Vec<&'static str> = rec
            .get(ki)
            .unwrap_or("")
            .split(';')
            .filter(|c| !c.is_empty())
            .map(region_of)
            .collect();
        regions.sort_unstable();
        regions.dedup();
        if regions.is_empty() {
            regions.push("UK");
        }
        out.push(Product {
            sku: sku.to_string(),
            category: cat.to_string(),
            description: rec.get(di).unwrap_or("").to_string(),
            median_price: rec.get(pi).and_then(|p| p.parse().ok()).unwrap_or(1.0),
            lines: rec.get(li).and_then(|p| p.parse().ok()).unwrap_or(1),
            regions,
        });
    }
    if bad > 0 {
        tracing::warn!(path = %path.display(), bad, "catalog rows skipped");
    }
    Ok(out)
}

/// The sku of variant `v` of a product (`v = 0` is the product itself).
pub fn variant_sku(sku: &str, v: u32) -> String {
    if v == 0 {
        sku.to_string()
    } else {
        format!("{sku}-V{v:04}")
    }
}

fn h(s: &str, salt: &str) -> u64 {
    xxh3_64(format!("{s}\u{1f}{salt}").as_bytes())
}

/// Base price in cents of a sku in a region (INTL prices carry 15 %).
pub fn base_price_cents(p: &Product, sku: &str, region: &str) -> i64 {
    let jitter = if sku == p.sku {
        1.0
    } else {
        0.9 + (h(sku, "price") % 2001) as f64 / 10_000.0
    };
    let region_factor = if region == "UK" { 1.0 } else { 1.15 };
    ((p.median_price * 100.0 * jitter * region_factor).round() as i64).max(1)
}

/// The rows of variant `v` of a product.
pub fn product_rows(p: &Product, v: u32) -> impl Iterator<Item = LoadRow> + '_ {
    let sku = variant_sku(&p.sku, v);
    let attributes = serde_json::json!({
        "description": p.description,
        "variant": v,
        "base_sku": p.sku,
        "sales_lines": p.lines,
    })
    .to_string();
    p.regions.iter().map(move |r| {
        let stock =
            (p.lines as i64 * 3 / if *r == "UK" { 1 } else { 8 }) + (h(&sku, r) % 200) as i64;
        LoadRow {
            sku: sku.clone(),
            category: p.category.clone(),
            attributes: attributes.clone(),
            region: r.to_string(),
            stock,
            price_cents: base_price_cents(p, &sku, r),
        }
    })
}

/// Load the catalog at `scale` into the provider, `chunk` rows per
/// transaction. Returns rows written.
pub async fn load(
    provider: &dyn ProviderAdmin,
    catalog: &Path,
    scale: u32,
    chunk: usize,
) -> Result<u64, LoadError> {
    let products = read_catalog(catalog)?;
    let start = Instant::now();
    let mut buf = Vec::with_capacity(chunk);
    let mut n = 0u64;
    for v in 0..scale.max(1) {
        for p in &products {
            for r in product_rows(p, v) {
                buf.push(r);
                if buf.len() >= chunk {
                    provider.bulk_load(&buf).await?;
                    n += buf.len() as u64;
                    buf.clear();
                }
            }
        }
        if v % 10 == 9 {
            tracing::info!(variant = v + 1, of = scale, rows = n, "loading");
        }
    }
    if !buf.is_empty() {
        provider.bulk_load(&buf).await?;
        n += buf.len() as u64;
    }
    tracing::info!(
        rows = n,
        products = products.len() as u64 * scale as u64,
        secs = start.elapsed().as_secs_f64(),
        "provider loaded"
    );
    Ok(n)
}

/// Settings of a change replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The scale the provider was loaded at (lines are spread over variants).
    pub scale: u32,
    /// Changes per second; 0 = as fast as the provider takes them.
    pub rate: f64,
    /// Stop after this many invoice lines; 0 = the whole file.
    pub limit: u64,
    /// Changes per transaction.
    pub txn: usize,
}

/// Replay invoice lines as provider changes. Returns changes applied.
pub async fn replay(
    provider: &dyn ProviderAdmin,
    catalog: &Path,
    lines: &Path,
    opts: &ReplayOptions,
) -> Result<u64, LoadError> {
    let products = read_catalog(catalog)?;
    let by_sku: std::collections::HashMap<&str, &Product> =
        products.iter().map(|p| (p.sku.as_str(), p)).collect();
    let mut rdr = csv::Reader::from_reader(open_maybe_gz(lines)?);
    let mut batch = Vec::with_capacity(opts.txn);
    let mut applied = 0u64;
    let start = Instant::now();
    let scale = opts.scale.max(1);
    for (i, rec) in rdr.records().enumerate() {
        if opts.limit > 0 && i as u64 >= opts.limit {
            break;
        }
        let Ok(rec) = rec else { continue };
        let (Some(sku), Some(country), Some(qty)) = (rec.get(1), rec.get(2), rec.get(3)) else {
            continue;
        };
        let Some(p) = by_sku.get(sku) else { continue };
        let qty: i64 = qty.parse().unwrap_or(1);
        let region = region_of(country);
        let v = (xxh3_64(&(i as u64).to_le_bytes()) % scale as u64) as u32;
        let vsku = variant_sku(sku, v);
        let roll = xxh3_64(&(i as u64 ^ 0x5eed).to_le_bytes()) % 10_000;
        let change = match roll {
            // delist, then relist a while later (as a fresh upsert)
            0..=4 => Change::Delete {
                sku: vsku,
                region: region.to_string(),
            },
            5..=14 => Change::Upsert {
                sku: vsku.clone(),
                region: region.to_string(),
                category: p.category.clone(),
                stock: 100 + (roll as i64),
                price_cents: base_price_cents(p, &vsku, region),
                attributes: serde_json::json!({"description": p.description, "variant": v, "base_sku": p.sku, "sales_lines": p.lines}).to_string(),
            },
            // restock
            15..=514 => Change::Stock {
                sku: vsku,
                region: region.to_string(),
                stock: 200 + (roll as i64 % 800),
            },
            // price drift ±5 %
            515..=714 => {
                let base = base_price_cents(p, &vsku, region) as f64;
                let f = 0.95 + (roll % 101) as f64 / 1000.0;
                Change::Price {
                    sku: vsku,
                    region: region.to_string(),
                    price_cents: ((base * f).round() as i64).max(1),
                }
            }
            // a sale
            _ => Change::StockDelta {
                sku: vsku,
                region: region.to_string(),
                delta: -qty.max(1),
            },
        };
        batch.push(change);
        if batch.len() >= opts.txn.max(1) {
            provider.apply(&batch).await?;
            applied += batch.len() as u64;
            batch.clear();
            if opts.rate > 0.0 {
                let due = Duration::from_secs_f64(applied as f64 / opts.rate);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
    if !batch.is_empty() {
        provider.apply(&batch).await?;
        applied += batch.len() as u64;
    }
    tracing::info!(
        changes = applied,
        secs = start.elapsed().as_secs_f64(),
        "replay done"
    );
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_deterministic_and_cover_regions() {
        let p = Product {
            sku: "85123A".into(),
            category: "LIGHTING".into(),
            description: "WHITE HANGING HEART T-LIGHT HOLDER".into(),
            median_price: 2.95,
            lines: 5000,
            regions: vec!["INTL", "UK"],
        };
        let a: Vec<_> = product_rows(&p, 3).collect();
        let b: Vec<_> = product_rows(&p, 3).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].sku, "85123A-V0003");
        assert_eq!(product_rows(&p, 0).next().map(|r| r.price_cents), Some(339));
        // INTL: 2.95 * 1.15
    }

    #[test]
    fn uk_region_matches_the_data_derivation() {
        assert_eq!(region_of("United Kingdom"), "UK");
        assert_eq!(region_of("Channel Islands"), "UK");
        assert_eq!(region_of("EIRE"), "INTL");
    }
}
