use super::*;
use crate::control::{ReplicaAssignment, TableUpdate};
use std::path::Path;

pub(crate) fn config() -> Config {
    Config::from_toml(
        r#"
replication_factor = 2
[listen]
http = ["127.0.0.1:0"]
[[nodes]]
name = "a"
address = "127.0.0.1:1"
[[nodes]]
name = "b"
address = "127.0.0.1:2"
[[nodes]]
name = "c"
address = "127.0.0.1:3"
[[shards]]
id = "UK/X"
categories = ["X"]
regions = ["UK"]
[[shards]]
id = "INTL/X"
categories = ["X"]
regions = ["INTL"]
[[shards]]
id = "ALL/Y"
categories = ["Y"]
regions = ["UK", "INTL"]
[[routes]]
name = "inv"
path = "/inventory/{sku}"
"#,
        Path::new("t.toml"),
    )
    .unwrap()
}

fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::from_pairs(&[("x1", "X"), ("y1", "Y"), ("z1", "Z")]).unwrap())
}

#[test]
fn routes_by_cell_category_and_hash() {
    let t = RoutingTable::build(&config(), catalog(), 1);
    let id = |(s, h): (ShardIdx, RouteHow)| (t.shard(s).id.clone(), h);
    assert_eq!(
        id(t.route("x1", Some("UK"))),
        ("UK/X".into(), RouteHow::Cell)
    );
    assert_eq!(
        id(t.route("x1", Some("INTL"))),
        ("INTL/X".into(), RouteHow::Cell)
    );
    assert_eq!(
        id(t.route("y1", Some("INTL"))),
        ("ALL/Y".into(), RouteHow::Cell)
    );
    assert_eq!(
        id(t.route("x1", None)),
        ("UK/X".into(), RouteHow::CategoryFallback)
    );
    // Z has no shard: hashed over the region's shards, deterministically
    let (s1, h) = t.route("z1", Some("UK"));
    assert_eq!(h, RouteHow::Hash);
    assert!(["UK/X", "ALL/Y"].contains(&t.shard(s1).id.as_str()));
    assert_eq!(t.route("z1", Some("UK")).0, s1);
    assert_eq!(t.route("unknown", Some("MARS")).1, RouteHow::Hash);
}

fn v(epoch: u64, counter: u64) -> AssignmentVersion {
    AssignmentVersion::new(epoch, counter)
}

#[test]
fn updates_are_versioned_and_checked() {
    let c = config();
    let t = RoutingTable::build(&c, catalog(), 1);
    assert_eq!(t.assignment_version, AssignmentVersion::NONE);
    let mut u = TableUpdate {
        version: AssignmentVersion::NONE,
        ..Default::default()
    };
    assert_eq!(
        t.apply(&u).unwrap_err(),
        TableError::Stale {
            got: AssignmentVersion::NONE,
            current: AssignmentVersion::NONE
        }
    );
    u.version = v(1, 6);
    u.shards.insert(
        "UK/X".into(),
        vec![
            ReplicaAssignment {
                node: "c".into(),
                state: ReplicaState::Serving,
            },
            ReplicaAssignment {
                node: "a".into(),
                state: ReplicaState::Draining,
            },
        ],
    );
    let t2 = t.apply(&u).unwrap();
    assert_eq!(t2.assignment_version, v(1, 6));
    assert_eq!(t2.config_generation, 1, "an update is not a reload");
    let s = t2.shard(t2.shard_by_id("UK/X").unwrap());
    assert_eq!(s.serving, vec![2]);
    assert_eq!(s.draining, vec![0]);
    // untouched shards keep their replicas
    let y = t.shard_by_id("ALL/Y").unwrap();
    assert_eq!(t2.shard(y).replicas, t.shard(y).replicas);
    u.version = v(1, 7);
    u.shards.insert(
        "UK/X".into(),
        vec![ReplicaAssignment {
            node: "q".into(),
            state: ReplicaState::Serving,
        }],
    );
    assert!(matches!(t2.apply(&u), Err(TableError::UnknownNode { .. })));
    // rebase keeps the manager's assignment across a reload
    let t3 = t2.rebase(&c, catalog());
    assert_eq!(t3.shard(t3.shard_by_id("UK/X").unwrap()).serving, vec![2]);
}

#[test]
fn versions_order_by_epoch_then_counter() {
    assert!(v(0, 0) < v(0, 1));
    assert!(
        v(0, u64::MAX) < v(1, 0),
        "a higher epoch outranks any counter"
    );
    assert!(v(1, 5) < v(1, 6));
    assert!(v(2, 1) > v(1, 1_000_000));
    assert_eq!(AssignmentVersion::NONE, v(0, 0));
    assert_eq!(AssignmentVersion::NONE, AssignmentVersion::default());
    assert_eq!(v(1, 5).next(), v(1, 6));
    // What a manager sends to outrank a table: its own version when
    // already newer, else one past the table's counter in its epoch.
    assert_eq!(v(1, 9).past(v(1, 5)), Some(v(1, 9)));
    assert_eq!(v(1, 9).past(v(0, 50)), Some(v(1, 9)));
    assert_eq!(v(1, 9).past(v(1, 9)), Some(v(1, 10)));
    assert_eq!(v(1, 9).past(v(1, 40)), Some(v(1, 41)));
    assert_eq!(v(1, 9).past(v(2, 0)), None, "a lower epoch cannot outrank");
    assert_eq!(v(1, 9).past(v(1, u64::MAX)), None);
    assert_eq!(v(1, 42).to_string(), "1:42");
}

#[test]
fn versions_read_as_objects_or_bare_counters() {
    let read = |j: &str| serde_json::from_str::<AssignmentVersion>(j);
    assert_eq!(read(r#"{"epoch": 1, "counter": 42}"#).unwrap(), v(1, 42));
    assert_eq!(read("42").unwrap(), v(0, 42), "a bare counter is epoch 0");
    assert!(read(r#"{"epoch": 1}"#).is_err());
    assert!(read(r#"{"epoch": 1, "counter": 2, "x": 3}"#).is_err());
    assert!(read("-1").is_err() && read("\"1:2\"").is_err());
    assert_eq!(
        serde_json::to_value(v(1, 42)).unwrap(),
        serde_json::json!({"epoch": 1, "counter": 42})
    );
    let u: TableUpdate = serde_json::from_str(r#"{"version": 7}"#).unwrap();
    assert_eq!(u.version, v(0, 7));
    let u: TableUpdate =
        serde_json::from_str(r#"{"version": {"epoch": 1, "counter": 7}, "shards": {}}"#).unwrap();
    assert_eq!(u.version, v(1, 7));
    let back: TableUpdate = serde_json::from_slice(&serde_json::to_vec(&u).unwrap()).unwrap();
    assert_eq!(back, u);
}

/// The dropped update: an assignment at V, then a reload, then the
/// manager's next assignment (numbered V+1) must still apply.
#[test]
fn a_reload_keeps_the_assignment_and_its_version() {
    let c = config();
    let t = RoutingTable::build(&c, catalog(), 1);
    let assign = |version, node: &str| TableUpdate {
        version,
        shards: [(
            "UK/X".to_string(),
            vec![ReplicaAssignment {
                node: node.into(),
                state: ReplicaState::Serving,
            }],
        )]
        .into(),
        ..Default::default()
    };
    let t = t.apply(&assign(v(1, 5), "c")).unwrap();
    let reloaded = t.rebase(&c, catalog());
    assert_eq!(reloaded.assignment_version, v(1, 5));
    assert_eq!(reloaded.config_generation, 2);
    let ukx = |t: &RoutingTable| t.shard(t.shard_by_id("UK/X").unwrap()).serving.clone();
    assert_eq!(ukx(&reloaded), vec![2], "the manager's replicas survive");
    // The manager's next assignment applies on the reloaded table...
    let next = reloaded.apply(&assign(v(1, 6), "b")).unwrap();
    assert_eq!(next.assignment_version, v(1, 6));
    assert_eq!(next.config_generation, 2);
    assert_eq!(ukx(&next), vec![1]);
    // ...and one that is not newer than the assignment is still refused.
    assert_eq!(
        reloaded.apply(&assign(v(1, 5), "b")).unwrap_err(),
        TableError::Stale {
            got: v(1, 5),
            current: v(1, 5)
        }
    );
}

/// A reload that drops a node and changes one shard's configured
/// replicas: the assignment version stays, and the manager's replicas
/// stay wherever they still apply.
#[test]
fn a_reload_keeps_what_still_applies_of_the_assignment() {
    let text = |nodes: &[&str], intl: &str| {
        let mut t = String::from(
            "replication_factor = 1\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
                 [[routes]]\nname = \"inv\"\npath = \"/inventory/{sku}\"\n",
        );
        for (i, n) in nodes.iter().enumerate() {
            t += &format!(
                "[[nodes]]\nname = \"{n}\"\naddress = \"127.0.0.1:{}\"\n",
                i + 1
            );
        }
        t += "[[shards]]\nid = \"UK/X\"\ncategories = [\"X\"]\nregions = [\"UK\"]\nreplicas = [\"a\"]\n";
        t += &format!("[[shards]]\nid = \"INTL/X\"\ncategories = [\"X\"]\nregions = [\"INTL\"]\nreplicas = [\"{intl}\"]\n");
        t += "[[shards]]\nid = \"ALL/Y\"\ncategories = [\"Y\"]\nregions = [\"UK\"]\nreplicas = [\"c\"]\n";
        Config::from_toml(&t, Path::new("t.toml")).unwrap()
    };
    let c1 = text(&["a", "b", "c"], "a");
    let serving = |node: &str| ReplicaAssignment {
        node: node.into(),
        state: ReplicaState::Serving,
    };
    let t = RoutingTable::build(&c1, catalog(), 1)
        .apply(&TableUpdate {
            version: v(1, 7),
            shards: [
                ("UK/X".to_string(), vec![serving("b"), serving("c")]),
                ("INTL/X".to_string(), vec![serving("b")]),
                ("ALL/Y".to_string(), vec![serving("c"), serving("a")]),
            ]
            .into(),
            ..Default::default()
        })
        .unwrap();
    let r = t.rebase(&text(&["a", "c"], "c"), catalog());
    assert_eq!(r.assignment_version, v(1, 7));
    assert_eq!(r.config_generation, 2);
    let names = |id: &str| -> Vec<String> {
        let s = r.shard(r.shard_by_id(id).unwrap());
        s.serving
            .iter()
            .map(|&n| r.nodes[n as usize].name.clone())
            .collect()
    };
    assert_eq!(names("UK/X"), ["c"], "node b left the config");
    assert_eq!(names("INTL/X"), ["c"], "the config changed INTL/X");
    assert_eq!(names("ALL/Y"), ["c", "a"], "untouched by the reload");
}

#[test]
fn jump_hash_is_consistent() {
    let moved = (0..10_000u64)
        .filter(|&k| {
            jump_hash(sku_hash(&k.to_string()), 10) != jump_hash(sku_hash(&k.to_string()), 11)
        })
        .count();
    assert!(
        moved < 1_300,
        "{moved} of 10000 moved going 10 → 11 buckets"
    );
    for k in 0..1000u64 {
        assert!(jump_hash(k, 7) < 7);
    }
    assert_eq!(jump_hash(1, 1), 0);
}

mod deltas {
    use super::super::*;
    use crate::control::{ReplicaAssignment, TableUpdate};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    const NODES: [&str; 4] = ["a", "b", "c", "d"];
    const SHARDS: [&str; 6] = ["UK/X", "INTL/X", "UK/Y", "INTL/Y", "UK/Z", "INTL/Z"];

    fn config(threshold: &str) -> Config {
        let mut t = String::from(
            "replication_factor = 2\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
             [[routes]]\nname = \"inv\"\npath = \"/inventory/{sku}\"\n",
        );
        for (i, n) in NODES.iter().enumerate() {
            t += &format!(
                "[[nodes]]\nname = \"{n}\"\naddress = \"127.0.0.1:{}\"\n",
                i + 1
            );
        }
        for id in SHARDS {
            let (r, c) = id.split_once('/').unwrap();
            t += &format!(
                "[[shards]]\nid = \"{id}\"\ncategories = [\"{c}\"]\nregions = [\"{r}\"]\n{threshold}\n"
            );
        }
        Config::from_toml(&t, Path::new("t.toml")).unwrap()
    }

    fn catalog() -> Arc<Catalog> {
        Arc::new(Catalog::from_pairs(&[("x1", "X"), ("y1", "Y"), ("z1", "Z")]).unwrap())
    }

    /// What a table routes to: its version and every shard's replicas.
    fn assignment(t: &RoutingTable) -> (AssignmentVersion, Vec<(String, Vec<Replica>)>) {
        (
            t.assignment_version,
            t.shards
                .iter()
                .map(|s| {
                    assert_eq!(*s, Arc::new(s.with_replicas(s.replicas.clone())));
                    (s.id.clone(), s.replicas.clone())
                })
                .collect(),
        )
    }

    /// One shard's replicas: distinct nodes, at least one serving.
    fn replicas() -> impl Strategy<Value = Vec<ReplicaAssignment>> {
        (
            proptest::sample::subsequence(NODES.to_vec(), 1..=3),
            proptest::collection::vec(0u8..3, 3),
        )
            .prop_map(|(nodes, states)| {
                nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| ReplicaAssignment {
                        node: n.to_string(),
                        state: match (i, states[i]) {
                            (0, _) | (_, 0) => ReplicaState::Serving,
                            (_, 1) => ReplicaState::Warming,
                            _ => ReplicaState::Draining,
                        },
                    })
                    .collect()
            })
    }

    /// A manager's successive full tables; `all` makes every one name
    /// every shard (as the manager does while the topology is the same).
    fn tables(all: bool) -> impl Strategy<Value = Vec<BTreeMap<String, Vec<ReplicaAssignment>>>> {
        let shard = (any::<bool>(), replicas()).prop_map(move |(keep, r)| (all || keep, r));
        proptest::collection::vec(proptest::collection::vec(shard, SHARDS.len()), 1..8).prop_map(
            |steps| {
                steps
                    .into_iter()
                    .map(|s| {
                        s.into_iter()
                            .zip(SHARDS)
                            .filter(|((keep, _), _)| *keep)
                            .map(|((_, r), id)| (id.to_string(), r))
                            .collect()
                    })
                    .collect()
            },
        )
    }

    fn fulls(maps: Vec<BTreeMap<String, Vec<ReplicaAssignment>>>) -> Vec<TableUpdate> {
        maps.into_iter()
            .enumerate()
            .map(|(i, m)| TableUpdate::full(AssignmentVersion::new(1, i as u64 + 1), m))
            .collect()
    }

    proptest! {
        /// A proxy that takes the first full table and then only deltas
        /// holds what a proxy that (re)starts and takes the last full table
        /// holds; and, while every table names every shard, what a proxy
        /// that took every full table holds.
        #[test]
        fn deltas_equal_full_tables(maps in tables(false), all in tables(true)) {
            let c = config("");
            let fresh = || RoutingTable::build(&c, catalog(), 1);
            for (fulls, sequential_too) in [(fulls(maps), false), (fulls(all), true)] {
                let mut by_delta = fresh().apply(&fulls[0]).unwrap();
                let mut by_full = by_delta.clone();
                for w in fulls.windows(2) {
                    let d = w[1].delta_from(&w[0]);
                    let merged = w[0].then(&d);
                    prop_assert_eq!(merged.as_ref(), Some(&w[1]));
                    prop_assert!(d.shards.len() + d.removed.len() <= SHARDS.len());
                    by_delta = by_delta.apply(&d).unwrap();
                    by_full = by_full.apply(&w[1]).unwrap();
                    let restarted = fresh().apply(&w[1]).unwrap();
                    prop_assert_eq!(assignment(&by_delta), assignment(&restarted));
                    if sequential_too {
                        prop_assert_eq!(assignment(&by_delta), assignment(&by_full));
                    }
                }
            }
        }
    }

    #[test]
    fn a_delta_applies_only_to_its_base() {
        let c = config("");
        let serving = |n: &str| ReplicaAssignment {
            node: n.into(),
            state: ReplicaState::Serving,
        };
        let f1 = TableUpdate::full(
            AssignmentVersion::new(1, 1),
            [("UK/X".to_string(), vec![serving("a")])].into(),
        );
        let f2 = TableUpdate::full(
            AssignmentVersion::new(1, 2),
            [("UK/X".to_string(), vec![serving("b")])].into(),
        );
        let f3 = TableUpdate::full(AssignmentVersion::new(1, 3), BTreeMap::new());
        let t0 = RoutingTable::build(&c, catalog(), 1);
        let d12 = f2.delta_from(&f1);
        assert_eq!(d12.base, Some(AssignmentVersion::new(1, 1)));
        assert_eq!(d12.shards.len(), 1);
        // A proxy that missed f1 refuses the delta and says where it is.
        assert_eq!(
            t0.apply(&d12).unwrap_err(),
            TableError::BaseMismatch {
                base: AssignmentVersion::new(1, 1),
                current: AssignmentVersion::NONE
            }
        );
        // ...and takes the full table instead.
        let t2 = t0.apply(&f2).unwrap();
        let t1 = t0.apply(&f1).unwrap();
        let via = t1.apply(&d12).unwrap();
        assert_eq!(assignment(&via), assignment(&t2));
        // A removed shard goes back to its configured replicas.
        let d23 = f3.delta_from(&f2);
        assert_eq!(d23.removed, vec!["UK/X".to_string()]);
        let t3 = via.apply(&d23).unwrap();
        let ukx = t3.shard(t3.shard_by_id("UK/X").unwrap());
        assert_eq!(
            ukx.replicas,
            t0.shard(t0.shard_by_id("UK/X").unwrap()).replicas
        );
        // A delta is versioned like any update.
        assert!(matches!(via.apply(&d12), Err(TableError::Stale { .. })));
        let mut both = d23.clone();
        both.shards.insert("UK/X".into(), vec![serving("c")]);
        assert_eq!(
            via.apply(&both).unwrap_err(),
            TableError::AssignedAndRemoved("UK/X".into())
        );
    }

    /// An update that moves one shard builds one entry: every other entry
    /// and the whole layout are the previous table's.
    #[test]
    fn an_update_shares_what_it_does_not_change() {
        let c = config("");
        let t = RoutingTable::build(&c, catalog(), 1);
        let mut u = TableUpdate::full(AssignmentVersion::new(1, 1), BTreeMap::new());
        u.base = Some(AssignmentVersion::NONE);
        u.shards.insert(
            "INTL/Y".into(),
            vec![ReplicaAssignment {
                node: "d".into(),
                state: ReplicaState::Serving,
            }],
        );
        let t2 = t.apply(&u).unwrap();
        let moved = t.shard_by_id("INTL/Y").unwrap() as usize;
        for (i, (a, b)) in t.shards.iter().zip(&t2.shards).enumerate() {
            assert_eq!(Arc::ptr_eq(a, b), i != moved, "shard {}", a.id);
        }
        assert!(Arc::ptr_eq(&t.cell_shard, &t2.cell_shard));
        assert!(Arc::ptr_eq(&t.shard_index, &t2.shard_index));
        assert!(Arc::ptr_eq(&t.nodes, &t2.nodes));
        assert_eq!(t2.shard(moved as u32).serving, vec![3]);
        // Routing is the same function of the sku.
        for sku in ["x1", "y1", "z1", "nope"] {
            for r in [Some("UK"), Some("INTL"), None, Some("MARS")] {
                assert_eq!(t.route(sku, r), t2.route(sku, r));
            }
        }
    }

    /// A reload that changes one shard's settings builds that entry only;
    /// one that changes the cells rebuilds the layout and keeps the rest.
    #[test]
    fn a_reload_shares_what_it_does_not_change() {
        let c = config("");
        let t = RoutingTable::build(&c, catalog(), 1);
        // Same file: everything shared.
        let same = t.rebase(&c, t.catalog.clone());
        assert!(t
            .shards
            .iter()
            .zip(&same.shards)
            .all(|(a, b)| Arc::ptr_eq(a, b)));
        assert!(Arc::ptr_eq(&t.cell_shard, &same.cell_shard));
        // One shard's threshold (a listed shard overriding a rule cell is a
        // different config; here a rule-wide threshold changes them all).
        let mut one = c.clone();
        one.shards[2].threshold = Some(9.0);
        let r = t.rebase(&one, t.catalog.clone());
        assert_eq!(r.config_generation, 2);
        for (i, (a, b)) in t.shards.iter().zip(&r.shards).enumerate() {
            assert_eq!(Arc::ptr_eq(a, b), i != 2, "shard {}", a.id);
        }
        assert_eq!(r.shards[2].threshold, Some(9.0));
        assert!(Arc::ptr_eq(&t.cell_shard, &r.cell_shard));
        // A new catalog: the layout is rebuilt, the entries kept.
        let r = t.rebase(&c, catalog());
        assert!(!Arc::ptr_eq(&t.cell_shard, &r.cell_shard));
        assert!(t
            .shards
            .iter()
            .zip(&r.shards)
            .all(|(a, b)| Arc::ptr_eq(a, b)));
    }
}
