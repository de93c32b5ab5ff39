//! A load that reuses the previous one gives what a cold load of the same
//! file gives: the same topology, or the same errors.

use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::config::Config;

fn base() -> TopologyFile {
    toml::from_str(
        r#"
replication_factor = 2
[[nodes]]
name = "a"
address = "127.0.0.1:1"
zone = "z1"
[[nodes]]
name = "b"
address = "127.0.0.1:2"
zone = "z2"
[[nodes]]
name = "c"
address = "127.0.0.1:3"
[[shards]]
id = "UK/X"
categories = ["X"]
regions = ["UK"]
replicas = ["b", "a"]
threshold = 3.0
[[shards]]
id = "W"
categories = ["W"]
regions = ["UK", "INTL"]
[[shard_rules]]
categories = ["Y", "Z"]
regions = ["UK", "INTL"]
volatility = "high"
[[shard_rules]]
id = "{region}-{category}"
categories = ["P", "Q", "R"]
regions = ["UK"]
threshold = 2.0
"#,
    )
    .unwrap()
}

const THRESHOLDS: [Option<f64>; 6] = [
    None,
    Some(1.5),
    Some(-1.0),
    Some(0.0),
    Some(7.0),
    Some(f64::NAN),
];
const VOLATILITY: [Volatility; 3] = [Volatility::Low, Volatility::Medium, Volatility::High];
const NAMES: [&str; 5] = ["a", "b", "c", "d", "Y"];

/// One edit of the kinds an operator makes, chosen by `kind`, aimed by `i`
/// and `j`; some leave the file invalid.
fn edit(t: &mut TopologyFile, kind: u8, i: usize, j: usize) {
    let ns = t.shards.len().max(1);
    let nr = t.shard_rules.len().max(1);
    match kind {
        0 => {
            if let Some(s) = t.shards.get_mut(i % ns) {
                s.threshold = THRESHOLDS[j % THRESHOLDS.len()];
            }
        }
        1 => {
            if let Some(s) = t.shards.get_mut(i % ns) {
                s.volatility = VOLATILITY[j % 3];
            }
        }
        2 => {
            if let Some(r) = t.shard_rules.get_mut(i % nr) {
                r.threshold = THRESHOLDS[j % THRESHOLDS.len()];
            }
        }
        3 => {
            if let Some(r) = t.shard_rules.get_mut(i % nr) {
                r.volatility = VOLATILITY[j % 3];
            }
        }
        4 => {
            if let Some(s) = t.shards.get_mut(i % ns) {
                s.categories.push(NAMES[j % NAMES.len()].to_uppercase());
            }
        }
        5 => {
            if let Some(s) = t.shards.get_mut(i % ns) {
                s.replicas = match j % 4 {
                    0 => None,
                    1 => Some(vec!["c".into()]),
                    2 => Some(vec!["a".into(), "a".into()]),
                    _ => Some(vec![NAMES[i % NAMES.len()].into()]),
                };
            }
        }
        6 => t.replication_factor = j % 5,
        7 => match j % 3 {
            0 if !t.nodes.is_empty() => {
                t.nodes.remove(i % t.nodes.len());
            }
            1 => t.nodes.push(NodeFile {
                name: NAMES[i % NAMES.len()].into(),
                address: format!("127.0.0.1:{}", 10 + i),
                capacity: 500.0,
                zone: Some("z3".into()),
            }),
            _ => {
                let nn = t.nodes.len().max(1);
                if let Some(n) = t.nodes.get_mut(i % nn) {
                    n.capacity = [2000.0, 0.0, 1000.0][i % 3];
                }
            }
        },
        8 => t.shards.push(ShardFile {
            id: ["UK/X", "NEW", "N/2"][i % 3].into(),
            categories: vec![["N", "Y", "M"][j % 3].into()],
            regions: vec!["UK".into()],
            volatility: Volatility::Medium,
            replicas: None,
            threshold: THRESHOLDS[j % THRESHOLDS.len()],
        }),
        9 => {
            if let Some(r) = t.shard_rules.get_mut(i % nr) {
                r.regions.push(["US", "UK", ""][j % 3].into());
            }
        }
        10 => {
            if let Some(s) = t.shards.get_mut(i % ns) {
                s.id = ["W", "UK/Y", "OTHER"][j % 3].into();
            }
        }
        _ => {
            if !t.shards.is_empty() {
                t.shards.remove(i % ns);
            }
        }
    }
}

fn text(t: &TopologyFile) -> String {
    toml::to_string(t).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn reusing_the_last_load_gives_a_cold_load(
        edits in prop::collection::vec((0u8..12, 0usize..8, 0usize..8), 1..16)
    ) {
        let path = Path::new("topology.toml");
        let mut file = base();
        let (mut prev_t, mut prev_f) =
            Topology::from_toml_reusing(&text(&file), path, None).unwrap();
        for (kind, i, j) in edits {
            edit(&mut file, kind, i, j);
            let src = text(&file);
            let cold = Topology::from_toml(&src, path);
            let prev = Prev { file: &prev_f, nodes: &prev_t.nodes, shards: &prev_t.shards };
            let warm = Topology::from_toml_reusing(&src, path, Some(prev));
            match (cold, warm) {
                (Ok(c), Ok((w, wf))) => {
                    prop_assert_eq!(&c, &w);
                    prev_t = w;
                    prev_f = wf;
                }
                (Err(c), Err(w)) => prop_assert_eq!(c, w),
                (c, w) => prop_assert!(false, "cold {:?} but reusing {:?}", c, w.map(|x| x.0)),
            }
        }
    }
}

/// The reuse is taken when only per-shard settings change: the shards
/// come from the previous load, patched, not from a new expansion.
#[test]
fn a_threshold_edit_patches_the_previous_shards() {
    let old = base();
    let (t, _) = Topology::from_toml_reusing(&text(&old), Path::new("t"), None).unwrap();
    let mut new = old.clone();
    new.shards[1].threshold = Some(9.0);
    new.shard_rules[0].volatility = Volatility::Low;
    let prev = Prev {
        file: &old,
        nodes: &t.nodes,
        shards: &t.shards,
    };
    let patched = new
        .patch(prev)
        .expect("settings-only edit reuses the last load");
    assert_eq!(patched[1].threshold, Some(9.0));
    let rule0: Vec<_> = patched[2..6].iter().map(|s| s.volatility).collect();
    assert_eq!(rule0, [Volatility::Low; 4]);
    assert_eq!(patched[6].volatility, Volatility::Medium);
    // A threshold the check refuses, or a new cell, takes the full check.
    let mut bad = old.clone();
    bad.shards[1].threshold = Some(-1.0);
    assert!(bad.patch(prev).is_none());
    let mut moved = old.clone();
    moved.shards[1].regions.push("US".into());
    assert!(moved.patch(prev).is_none());
}

/// Through the proxy config: a running config reused for a topology file
/// edited in place gives the config a cold load gives; a broken edit is
/// refused with the cold load's errors.
#[test]
fn config_reload_reuses_the_running_topology() {
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("topology.toml");
    let p = dir.path().join("proxy.toml");
    std::fs::write(&topo, text(&base())).unwrap();
    std::fs::write(
        &p,
        "topology = \"topology.toml\"\n[listen]\nhttp = [\"127.0.0.1:8080\"]\n\
         [[routes]]\nname = \"inv\"\npath = \"/inventory/{sku}\"\n",
    )
    .unwrap();
    let running = Config::load(&p).unwrap();
    let src = std::fs::read_to_string(&p).unwrap();
    let mut f = base();
    f.shards[0].threshold = Some(11.0);
    std::fs::write(&topo, text(&f)).unwrap();
    let warm = Config::from_toml_reusing(&src, &p, Some(&running)).unwrap();
    let cold = Config::load(&p).unwrap();
    assert_eq!(warm.shards, cold.shards);
    assert_eq!(warm.nodes, cold.nodes);
    assert_eq!(warm.shards[0].threshold, Some(11.0));
    assert_ne!(warm.shards, running.shards);

    f.shards[0].threshold = Some(-2.0);
    std::fs::write(&topo, text(&f)).unwrap();
    let warm = Config::from_toml_reusing(&src, &p, Some(&running)).unwrap_err();
    let cold = Config::load(&p).unwrap_err();
    assert_eq!(warm, cold);
    assert!(warm.to_string().contains("shards[0].threshold"), "{warm}");
}
