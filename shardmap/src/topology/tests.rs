use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::*;
use crate::config::Config;

const TOPO: &str = r#"
replication_factor = 2
[[nodes]]
name = "a"
address = "127.0.0.1:1"
zone = "z1"
[[nodes]]
name = "b"
address = "127.0.0.1:2"
zone = "z2"
[[shards]]
id = "UK/X"
categories = ["X"]
regions = ["UK"]
replicas = ["b", "a"]
threshold = 3.0
[[shard_rules]]
categories = ["Y", "Z"]
regions = ["UK", "INTL"]
volatility = "high"
"#;

fn fields(e: &ConfigErrors) -> Vec<&str> {
    e.errors.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn listed_shards_and_rules_make_one_topology() {
    let t = Topology::from_toml(TOPO, Path::new("topology.toml")).unwrap();
    let ids: Vec<&str> = t.shards.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["UK/X", "UK/Y", "INTL/Y", "UK/Z", "INTL/Z"]);
    assert_eq!(t.shards[0].replicas, ["b", "a"]);
    assert_eq!(t.shards[0].threshold, Some(3.0));
    for s in &t.shards[1..] {
        assert_eq!(s.volatility, Volatility::High);
        assert_eq!(s.replicas.len(), 2, "{} auto-assigned", s.id);
        assert_eq!(s.categories.len(), 1);
        assert_eq!(s.regions.len(), 1);
    }
    assert_eq!(t.source.as_deref(), Some(Path::new("topology.toml")));
    assert_eq!(t.node_index("b"), Some(1));
}

#[test]
fn every_error_names_the_file_and_the_field() {
    let bad = r#"
replication_factor = 3
[[nodes]]
name = "a"
address = "nohost"
[[nodes]]
name = "a"
address = "127.0.0.1:2"
capacity = 0
[[shards]]
id = "UK/X"
categories = ["X"]
regions = ["UK"]
replicas = ["zz", "zz"]
[[shard_rules]]
id = "{category}"
categories = ["X", "Y"]
regions = ["UK", "INTL"]
[[shard_rules]]
id = "{region}/{tier}/{category}"
categories = ["Q"]
regions = ["UK"]
[[shard_rules]]
id = "R/{category}"
categories = ["X"]
regions = ["UK"]
"#;
    let e = Topology::from_toml(bad, Path::new("conf/topology.toml")).unwrap_err();
    let f = fields(&e);
    for want in [
        "nodes[0].address",
        "nodes[1].name",
        "nodes[1].capacity",
        "replication_factor",
        "shards[0].replicas[0]",
        "shards[0].replicas[1]",
        "shard_rules[0].id",
        "shard_rules[1].id",
        "shard_rules[2].categories[0]",
    ] {
        assert!(f.contains(&want), "missing {want} in {f:?}");
    }
    let text = e.to_string();
    assert!(text.starts_with("conf/topology.toml: "), "{text}");
    assert!(
        text.contains("conf/topology.toml: shard_rules[2].categories[0]: cell (X, UK) already belongs to shard `UK/X`"),
        "{text}"
    );
}

#[test]
fn unknown_fields_and_unreadable_files_are_errors() {
    let e =
        Topology::from_toml(&format!("{TOPO}\nreplicaton = 2\n"), Path::new("t.toml")).unwrap_err();
    assert!(e.errors[0].message.contains("unknown field"), "{e}");
    assert!(e.errors[0].field.starts_with("line "), "{e}");
    let e = Topology::load(Path::new("/nonexistent/topology.toml")).unwrap_err();
    assert_eq!(e.file, "/nonexistent/topology.toml");
    assert_eq!(e.errors[0].field, "<file>");
    let e = Topology::from_toml("", Path::new("t.toml")).unwrap_err();
    assert_eq!(fields(&e), ["nodes", "shards"]);
}

const PROXY: &str = r#"
topology = "topology.toml"
[listen]
http = ["127.0.0.1:0"]
[[routes]]
name = "inv"
path = "/inventory/{sku}"
"#;

#[test]
fn the_proxy_reads_the_topology_file_it_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("topology.toml"), TOPO).unwrap();
    let p = dir.path().join("proxy.toml");
    std::fs::write(&p, PROXY).unwrap();
    let c = Config::load(&p).unwrap();
    let t = Topology::load(&dir.path().join("topology.toml")).unwrap();
    assert_eq!(c.nodes, t.nodes);
    assert_eq!(c.shards, t.shards);
    assert_eq!(c.replication_factor, 2);
    assert_eq!(
        c.topology.as_deref(),
        Some(dir.path().join("topology.toml").as_path())
    );

    // Errors in the topology name the topology file and its field.
    std::fs::write(
        dir.path().join("topology.toml"),
        TOPO.replace("127.0.0.1:2", "nowhere"),
    )
    .unwrap();
    let e = Config::load(&p).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("topology.toml: nodes[1].address"), "{text}");
    assert_eq!(fields(&e), ["topology"]);

    // Both a topology file and inline nodes: which one counts is unclear.
    std::fs::write(dir.path().join("topology.toml"), TOPO).unwrap();
    let both =
        format!("replication_factor = 1\n{PROXY}[[nodes]]\nname = \"c\"\naddress = \"h:1\"\n");
    let e = Config::from_toml(&both, &p).unwrap_err();
    assert_eq!(fields(&e), ["topology"], "{e}");

    // A route's default pool must name a topology node.
    let pool = format!("{PROXY}on_missing_key = \"default_pool\"\ndefault_pool = [\"a\", \"q\"]\n");
    let e = Config::from_toml(&pool, &p).unwrap_err();
    assert_eq!(fields(&e), ["routes[0].default_pool[1]"], "{e}");
}

#[test]
fn rules_scale_to_ten_thousand_shards() {
    let cats: Vec<String> = (0..1000).map(|i| format!("\"C{i}\"")).collect();
    let regions: Vec<String> = (0..10).map(|i| format!("\"R{i}\"")).collect();
    let mut text = String::from("replication_factor = 2\n");
    for n in 0..24 {
        text.push_str(&format!(
            "[[nodes]]\nname = \"n{n}\"\naddress = \"10.0.0.{n}:80\"\nzone = \"z{}\"\n",
            n % 3
        ));
    }
    text.push_str(&format!(
        "[[shard_rules]]\ncategories = [{}]\nregions = [{}]\n",
        cats.join(", "),
        regions.join(", ")
    ));
    let started = std::time::Instant::now();
    let t = Topology::from_toml(&text, Path::new("big.toml")).unwrap();
    assert_eq!(t.shards.len(), 10_000);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for s in &t.shards {
        for r in &s.replicas {
            *per_node.entry(r).or_default() += 1;
        }
    }
    let (lo, hi) = (
        per_node.values().min().unwrap(),
        per_node.values().max().unwrap(),
    );
    assert!(hi - lo <= 1, "{lo}..{hi}");
}

#[test]
fn auto_assign_spreads_zones_and_balances() {
    let nodes: Vec<NodeSpec> = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, n)| NodeSpec {
            name: n.to_string(),
            address: "h:1".into(),
            capacity: 1.0,
            zone: Some(if i < 2 { "z1" } else { "z2" }.into()),
        })
        .collect();
    let mut shards: Vec<ShardSpec> = (0..8)
        .map(|i| ShardSpec {
            id: format!("s{i}"),
            categories: vec![format!("c{i}")],
            regions: vec!["r".into()],
            volatility: Volatility::Medium,
            replicas: vec![],
            threshold: None,
        })
        .collect();
    auto_assign(&mut shards, &nodes, 2);
    let mut per_node = HashMap::new();
    for s in &shards {
        let z: HashSet<_> = s
            .replicas
            .iter()
            .map(|r| nodes.iter().find(|n| &n.name == r).unwrap().zone.clone())
            .collect();
        assert_eq!(z.len(), 2, "replicas of {} share a zone", s.id);
        for r in &s.replicas {
            *per_node.entry(r.clone()).or_insert(0) += 1;
        }
    }
    assert!(per_node.values().all(|&c| c == 4), "{per_node:?}");
}
