//! Routing-table benchmarks: sku lookup at 10M skus (target p50 < 100 ns,
//! < 64 bytes per sku), route resolution, key extraction, and build time.
//! `cargo bench -p shardmap --bench table`; memory per sku is printed.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardmap::key::{extract, KeySource, PathPattern, RegionSource};
use shardmap::{Catalog, Config, RoutingTable};

const CATS: [&str; 7] = [
    "SEASONAL",
    "LIGHTING",
    "KITCHEN_DINING",
    "BAGS_STORAGE",
    "PAPER_PARTY_KIDS",
    "JEWELLERY_FASHION",
    "HOME_DECOR_OTHER",
];

fn sku(i: u64) -> String {
    format!("{:05}{}", i % 100_000, i / 100_000)
}

fn catalog(n: u64) -> Catalog {
    let skus: Vec<String> = (0..n).map(sku).collect();
    let mut c = Catalog::default();
    let ids: Vec<u16> = CATS.iter().map(|k| c.intern(k).unwrap()).collect();
    c.skus = Some(shardmap::SkuMap::build(n as usize, || {
        skus.iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), ids[i % 7]))
    }));
    c
}

fn config() -> Config {
    let mut t = String::from("[listen]\nhttp=[\"127.0.0.1:1\"]\n[[nodes]]\nname=\"a\"\naddress=\"127.0.0.1:1\"\n[[nodes]]\nname=\"b\"\naddress=\"127.0.0.1:2\"\n[[routes]]\nname=\"r\"\npath=\"/inventory/{sku}\"\n");
    for r in ["UK", "INTL"] {
        for c in CATS {
            t += &format!("[[shards]]\nid=\"{r}/{c}\"\ncategories=[\"{c}\"]\nregions=[\"{r}\"]\n");
        }
    }
    Config::from_toml(&t, Path::new("bench.toml")).unwrap()
}

fn lookup(c: &mut Criterion) {
    let n: u64 = std::env::var("SHARDCAST_BENCH_SKUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let t0 = Instant::now();
    let cat = Arc::new(catalog(n));
    let build = t0.elapsed();
    let bytes = cat.skus.as_ref().unwrap().heap_bytes();
    eprintln!(
        "catalog: {n} skus built in {build:?}; sku map {bytes} bytes = {:.1} bytes/sku",
        bytes as f64 / n as f64
    );
    let cfg = config();
    let t0 = Instant::now();
    let table = RoutingTable::build(&cfg, cat.clone(), 1);
    eprintln!(
        "table build over the catalog (catalog reused): {:?}",
        t0.elapsed()
    );
    // A million distinct probes: their slots do not fit in cache, so this
    // measures the cache-missing lookup a large catalog really costs.
    const P: usize = 1 << 20;
    let probes: Vec<String> = (0..P as u64)
        .map(|i| sku(i.wrapping_mul(2_654_435_761) % n))
        .collect();
    let mut g = c.benchmark_group("table");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function(format!("sku_lookup_{n}"), |b| {
        b.iter(|| {
            i = (i + 1) & (P - 1);
            black_box(cat.get(black_box(&probes[i])))
        })
    });
    g.bench_function(format!("route_{n}"), |b| {
        b.iter(|| {
            i = (i + 1) & (P - 1);
            black_box(table.route(black_box(&probes[i]), Some("UK")))
        })
    });
    g.bench_function("route_unknown_sku", |b| {
        b.iter(|| black_box(table.route(black_box("NOPE-XYZ"), Some("UK"))))
    });
    g.finish();
}

fn keys(c: &mut Criterion) {
    let p = PathPattern::parse("/inventory/{sku}").unwrap();
    let mut g = c.benchmark_group("key");
    g.throughput(Throughput::Elements(1));
    let rq = RegionSource::Query("region".into());
    g.bench_function("extract_path_and_query_region", |b| {
        b.iter(|| {
            let (s, r) = p.matches(black_box("/inventory/85123A")).unwrap();
            black_box(
                extract(
                    &KeySource::Path,
                    &rq,
                    s,
                    r,
                    Some(black_box("region=UK")),
                    |_| None,
                )
                .unwrap(),
            );
        })
    });
    let rs = RegionSource::Header("x-region".into());
    g.bench_function("extract_header_region", |b| {
        b.iter(|| {
            let (s, r) = p.matches(black_box("/inventory/85123A")).unwrap();
            black_box(extract(&KeySource::Path, &rs, s, r, None, |_| Some(&b"UK"[..])).unwrap());
        })
    });
    g.finish();
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1_000_000));
    let skus: Vec<String> = (0..1_000_000u64).map(sku).collect();
    g.bench_function("sku_map_1M", |b| {
        b.iter_batched(
            || (),
            |_| {
                black_box(shardmap::SkuMap::build(skus.len(), || {
                    skus.iter()
                        .enumerate()
                        .map(|(i, s)| (s.as_str(), (i % 7) as u16))
                }))
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, lookup, keys, build);
criterion_main!(benches);
