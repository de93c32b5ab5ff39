//! Table build cost the way a reload pays it: parse an N-sku catalog CSV,
//! build the sku map and the routing table, swap it into an ArcSwap. Prints
//! times and peak memory (VmHWM). `cargo run --release -p shardmap
//! --example table_build -- 10000000`

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

fn vm(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let cats = [
        "SEASONAL",
        "LIGHTING",
        "KITCHEN_DINING",
        "BAGS_STORAGE",
        "PAPER_PARTY_KIDS",
        "JEWELLERY_FASHION",
        "HOME_DECOR_OTHER",
    ];
    let mut csv = String::with_capacity(n * 24);
    csv.push_str("sku,category\n");
    for i in 0..n {
        csv.push_str(&format!(
            "{:05}{},{}\n",
            i % 100_000,
            i / 100_000,
            cats[i % 7]
        ));
    }
    let base_kb = vm("VmRSS:");
    let t0 = Instant::now();
    let catalog =
        shardmap::Catalog::from_csv(csv.as_bytes(), "sku", "category", &[]).expect("catalog");
    let t_catalog = t0.elapsed();
    let mut toml = String::from("[listen]\nhttp=[\"127.0.0.1:1\"]\n[[nodes]]\nname=\"a\"\naddress=\"127.0.0.1:1\"\n[[nodes]]\nname=\"b\"\naddress=\"127.0.0.1:2\"\n[[routes]]\nname=\"r\"\npath=\"/inventory/{sku}\"\n");
    for r in ["UK", "INTL"] {
        for c in cats {
            toml +=
                &format!("[[shards]]\nid=\"{r}/{c}\"\ncategories=[\"{c}\"]\nregions=[\"{r}\"]\n");
        }
    }
    let config = shardmap::Config::from_toml(&toml, Path::new("bench.toml")).expect("config");
    let t1 = Instant::now();
    let catalog = Arc::new(catalog);
    let table = shardmap::RoutingTable::build(&config, catalog.clone(), 1);
    let t_table = t1.elapsed();
    let cell =
        arc_swap::ArcSwap::from_pointee(shardmap::RoutingTable::build(&config, catalog.clone(), 0));
    let t2 = Instant::now();
    cell.store(Arc::new(table));
    let t_swap = t2.elapsed();
    let map_bytes = catalog.skus.as_ref().map_or(0, |m| m.heap_bytes());
    println!(
        "skus={n} catalog_build_ms={:.0} table_build_us={:.0} swap_ns={} sku_map_bytes_per_sku={:.1} rss_growth_mb={:.0} peak_rss_mb={:.0} (peak includes the {:.0} MB CSV text)",
        t_catalog.as_secs_f64() * 1e3,
        t_table.as_secs_f64() * 1e6,
        t_swap.as_nanos(),
        map_bytes as f64 / n as f64,
        (vm("VmRSS:").saturating_sub(base_kb)) as f64 / 1024.0,
        vm("VmHWM:") as f64 / 1024.0,
        csv.len() as f64 / 1e6,
    );
}
