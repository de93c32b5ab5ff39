//! The proxy's side of a table publish at storefront scale: a full table
//! and updates that change 1 / 10 / 100 shards, applied through
//! `reload::apply_update` (table, snapshot, swap), on the configuration
//! `benches/scale/gen.py` writes (10,000 shards by rule, 24 nodes, 1M skus
//! by default). Also prints the bytes each update takes on the wire and
//! how long building the first snapshot (what `shardcast-proxy -t` does)
//! took.
//!
//! `cargo bench -p shardcast-proxy --bench table_update`; set
//! `SHARDCAST_SCALE_DIR` to a directory gen.py wrote to reuse it (else one
//! is generated in a temporary directory: needs `python3`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use shardcast_proxy::reload::apply_update;
use shardcast_proxy::state::Shared;
use shardmap::control::ReplicaAssignment;
use shardmap::table::ReplicaState;
use shardmap::{AssignmentVersion, TableUpdate};

fn scale_dir(tmp: &Path) -> PathBuf {
    if let Ok(d) = std::env::var("SHARDCAST_SCALE_DIR") {
        return PathBuf::from(d);
    }
    let gen = Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/scale/gen.py");
    let st = std::process::Command::new("python3")
        .arg(gen)
        .arg("--out")
        .arg(tmp)
        .status()
        .expect("python3 runs benches/scale/gen.py");
    assert!(st.success(), "gen.py failed");
    tmp.to_path_buf()
}

/// The assignment the table holds now, by shard id.
fn assignment(shared: &Shared) -> BTreeMap<String, Vec<ReplicaAssignment>> {
    let snap = shared.current();
    let t = &snap.table;
    t.shards
        .iter()
        .map(|s| {
            let reps = s
                .replicas
                .iter()
                .map(|r| ReplicaAssignment {
                    node: t.nodes[r.node as usize].name.clone(),
                    state: r.state,
                })
                .collect();
            (s.id.to_string(), reps)
        })
        .collect()
}

/// `base` with the first replica of `k` shards (spread over the table)
/// moved to the next node not already a replica.
fn moved(
    base: &BTreeMap<String, Vec<ReplicaAssignment>>,
    nodes: &[String],
    k: usize,
) -> BTreeMap<String, Vec<ReplicaAssignment>> {
    let mut out = base.clone();
    let step = (base.len() / k.max(1)).max(1);
    for (id, reps) in out.iter_mut().step_by(step).take(k) {
        let cur = nodes.iter().position(|n| *n == reps[0].node).unwrap_or(0);
        let next = (1..nodes.len())
            .map(|d| &nodes[(cur + d) % nodes.len()])
            .find(|n| !reps.iter().any(|r| &r.node == *n))
            .expect("a free node");
        reps[0] = ReplicaAssignment {
            node: next.clone(),
            state: ReplicaState::Serving,
        };
        let _ = id;
    }
    out
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = scale_dir(tmp.path());
    let t0 = Instant::now();
    let shared = shardcast_proxy::run::shared_for_tests(&dir.join("proxy.toml")).unwrap();
    let first = t0.elapsed();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (nshards, nskus, nodes) = {
        let s = shared.current();
        let names: Vec<String> = s.table.nodes.iter().map(|n| n.name.clone()).collect();
        (s.table.shards.len(), s.table.catalog.len(), names)
    };
    eprintln!(
        "{nshards} shards, {} nodes, {nskus} skus: config + catalog + first snapshot in {first:?}",
        nodes.len()
    );
    let a = assignment(&shared);
    let mut counter = 1u64;
    let mut version = || {
        counter += 1;
        AssignmentVersion::new(1, counter)
    };
    // Put the full assignment in place once (version 1:2).
    let full = TableUpdate {
        version: version(),
        shards: a.clone(),
        ..Default::default()
    };
    eprintln!(
        "wire: full table {} bytes",
        serde_json::to_vec(&full).unwrap().len()
    );
    rt.block_on(apply_update(&shared, full)).unwrap();

    let mut g = c.benchmark_group(format!("table_update_{nshards}"));
    g.sample_size(20);
    // The full table with one shard moved, then moved back: what every
    // publish sent before deltas.
    let b1 = moved(&a, &nodes, 1);
    let mut flip = false;
    g.bench_function("full_table", |bn| {
        bn.iter(|| {
            flip = !flip;
            let u = TableUpdate {
                version: version(),
                shards: if flip { b1.clone() } else { a.clone() },
                ..Default::default()
            };
            rt.block_on(apply_update(&shared, u)).unwrap()
        })
    });
    // Ends on `a` or `b1`; put `a` back so every case starts from it.
    rt.block_on(apply_update(
        &shared,
        TableUpdate {
            version: version(),
            shards: a.clone(),
            ..Default::default()
        },
    ))
    .unwrap();
    for k in [1usize, 10, 100] {
        let b = moved(&a, &nodes, k);
        let changed = |to: &BTreeMap<String, Vec<ReplicaAssignment>>| -> BTreeMap<_, _> {
            to.iter()
                .filter(|(id, r)| a.get(*id) != Some(*r) || b.get(*id) != Some(*r))
                .map(|(id, r)| (id.clone(), r.clone()))
                .collect()
        };
        let (to_b, to_a) = (changed(&b), changed(&a));
        assert_eq!(to_b.len(), k);
        eprintln!(
            "wire: {k} changed shard(s) {} bytes",
            serde_json::to_vec(&partial(AssignmentVersion::new(1, 1 << 40), &to_b))
                .unwrap()
                .len()
        );
        let mut flip = false;
        g.bench_function(format!("changed_{k}"), |bn| {
            bn.iter(|| {
                flip = !flip;
                let u = partial(version(), if flip { &to_b } else { &to_a });
                rt.block_on(apply_update(&shared, u)).unwrap()
            })
        });
        if flip {
            rt.block_on(apply_update(&shared, partial(version(), &to_a)))
                .unwrap();
        }
    }
    g.finish();
    drop(Arc::clone(&shared));
}

/// An update naming only `shards`: the others keep their replicas.
fn partial(
    version: AssignmentVersion,
    shards: &BTreeMap<String, Vec<ReplicaAssignment>>,
) -> TableUpdate {
    TableUpdate {
        version,
        shards: shards.clone(),
        ..Default::default()
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
