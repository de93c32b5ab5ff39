//! Loading a storefront-sized configuration, and reloading it after one
//! shard changed: 10,001 shards (seven `[[shard_rules]]` of sub-categories
//! × 25 regions, as benches/scale/gen.py writes, plus one listed shard), 24
//! nodes in three zones. `cargo bench -p shardmap --bench config`.
//!
//! - `topology/parse`: the TOML of the topology file alone;
//! - `topology/auto_assign`: replica assignment of the 10k shards alone;
//! - `topology/cold`: parse, expand the rules, check, assign;
//! - `config/cold`: the proxy config and its topology file, as `-t` and a
//!   reload without reuse do;
//! - `config/reload, one shard changed`: the same files after one listed
//!   shard's threshold changed, reusing the running config.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use shardmap::topology::{auto_assign, TopologyFile};
use shardmap::{Config, Topology};

const RULES: [(&str, usize, &str); 7] = [
    ("BAGS_STORAGE", 60, "low"),
    ("HOME_DECOR_OTHER", 82, "low"),
    ("JEWELLERY_FASHION", 17, "high"),
    ("KITCHEN_DINING", 120, "low"),
    ("LIGHTING", 30, "medium"),
    ("PAPER_PARTY_KIDS", 63, "medium"),
    ("SEASONAL", 28, "high"),
];

fn topology(threshold: f64) -> String {
    let mut t = String::from("replication_factor = 2\n");
    for n in 0..24 {
        t += &format!(
            "[[nodes]]\nname = \"node-{n:02}\"\naddress = \"127.0.0.1:{}\"\nzone = \"z{}\"\n",
            21000 + n,
            n % 3 + 1
        );
    }
    t += &format!(
        "[[shards]]\nid = \"TUNED/T000\"\ncategories = [\"TUNED.000\"]\nregions = [\"UK\"]\n\
         threshold = {threshold:?}\n"
    );
    let regions: Vec<String> = ["UK".to_string(), "INTL".to_string()]
        .into_iter()
        .chain((2..25).map(|r| format!("R{r:02}")))
        .map(|r| format!("\"{r}\""))
        .collect();
    for (cat, subs, vol) in RULES {
        let cats: Vec<String> = (0..subs).map(|s| format!("\"{cat}.{s:03}\"")).collect();
        t += &format!(
            "[[shard_rules]]\ncategories = [{}]\nregions = [{}]\nvolatility = \"{vol}\"\n",
            cats.join(", "),
            regions.join(", ")
        );
    }
    t
}

const PROXY: &str = "topology = \"topology.toml\"\n[listen]\nhttp = [\"127.0.0.1:28080\"]\n\
    admin = \"127.0.0.1:29901\"\n[[routes]]\nname = \"storefront\"\npath = \"/inventory/{sku}\"\n\
    region_header = \"x-region\"\ndefault_region = \"UK\"\n";

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let topo_path = dir.path().join("topology.toml");
    let proxy = dir.path().join("proxy.toml");
    std::fs::write(&proxy, PROXY).unwrap();
    let text = topology(5.0);

    let mut g = c.benchmark_group("topology");
    g.sample_size(20);
    g.bench_function("parse", |b| {
        b.iter(|| black_box(toml::from_str::<TopologyFile>(black_box(&text)).unwrap()))
    });
    let t = Topology::from_toml(&text, &topo_path).unwrap();
    assert_eq!(t.shards.len(), 10_001);
    let mut bare = t.shards.clone();
    for s in &mut bare {
        s.replicas.clear();
    }
    g.bench_function("auto_assign", |b| {
        b.iter_batched_ref(
            || bare.clone(),
            |s| auto_assign(s, &t.nodes, 2),
            criterion::BatchSize::LargeInput,
        )
    });
    g.bench_function("cold", |b| {
        b.iter(|| black_box(Topology::from_toml(black_box(&text), &topo_path).unwrap()))
    });
    g.finish();

    std::fs::write(&topo_path, &text).unwrap();
    let running = Config::load(&proxy).unwrap();
    let mut g = c.benchmark_group("config");
    g.sample_size(20);
    g.bench_function("cold", |b| {
        b.iter(|| black_box(Config::load(&proxy).unwrap()))
    });
    // The file watcher's view: the file changed on disk since `running`.
    std::fs::write(&topo_path, topology(6.0)).unwrap();
    let src = std::fs::read_to_string(&proxy).unwrap();
    let warm = Config::from_toml_reusing(&src, &proxy, Some(&running)).unwrap();
    assert_eq!(warm.shards, Config::load(&proxy).unwrap().shards);
    assert_eq!(warm.shards[0].threshold, Some(6.0));
    g.bench_function("reload, one shard changed", |b| {
        b.iter(|| {
            let s = std::fs::read_to_string(&proxy).unwrap();
            black_box(Config::from_toml_reusing(&s, &proxy, Some(&running)).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
