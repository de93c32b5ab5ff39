use super::*;
use proptest::prelude::*;

fn node(name: &str, zone: &str) -> NodeInput {
    NodeInput {
        name: name.into(),
        capacity: 100.0,
        zone: Some(zone.into()),
        healthy: true,
        drained: false,
    }
}

fn shard(id: &str, nodes: &[(&str, ReplicaState)]) -> ShardInput {
    ShardInput {
        id: id.into(),
        threshold: 10.0,
        replicas: nodes
            .iter()
            .map(|(n, s)| ReplicaInput {
                node: (*n).into(),
                state: *s,
            })
            .collect(),
        demand: Demand {
            skill: 0.8,
            rise_at_ms: 10_000_000,
            ..Demand::default()
        },
        bytes: 1_000_000,
        pinned: None,
        leaving: vec![],
    }
}

fn input(nodes: Vec<NodeInput>, shards: Vec<ShardInput>) -> PlanInput {
    PlanInput {
        economics: Economics::default(),
        now_ms: 1_000_000,
        replication_factor: 2,
        churn_budget: 4,
        max_utilization: 1.0,
        scale_in_ratio: 0.5,
        bandwidth_bytes_per_s: 1e6,
        nodes,
        shards,
    }
}

use ReplicaState::{Draining, Serving, Warming};

fn three() -> Vec<NodeInput> {
    vec![node("a", "z1"), node("b", "z2"), node("c", "z3")]
}

#[test]
fn steady_state_plans_nothing() {
    let p = plan(&input(
        three(),
        vec![shard("s", &[("a", Serving), ("b", Serving)])],
    ));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.shards[0].target, 2);
}

#[test]
fn predicted_demand_over_threshold_prefetches_to_a_new_node_before_the_rise() {
    let mut s = shard("s", &[("a", Serving), ("b", Serving)]);
    s.demand.predicted_rps = 30.0;
    let p = plan(&input(three(), vec![s]));
    let [Action::Add {
        node,
        reason,
        deadline_ms,
        priority,
        ..
    }] = p.actions.as_slice()
    else {
        panic!("{:?}", p.actions)
    };
    assert_eq!(node, "c");
    assert_eq!(*reason, Reason::Forecast);
    // 1 MB at 1 MB/s + 0.5 s margin before the rise
    assert_eq!(*deadline_ms, 10_000_000 - 1_500);
    assert!(*priority > 0.0);
}

#[test]
fn a_high_forecast_alone_never_scales_in_and_a_low_one_waits_for_observed_demand() {
    let mut s = shard("s", &[("a", Serving), ("b", Serving), ("c", Serving)]);
    s.demand.predicted_rps = 0.0;
    s.demand.observed_rps = 20.0; // still busy
    let p = plan(&input(three(), vec![s.clone()]));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    s.demand.observed_rps = 1.0; // fell below threshold × ratio
    let p = plan(&input(three(), vec![s]));
    assert_eq!(p.actions.len(), 1);
    assert!(matches!(
        &p.actions[0],
        Action::Drain {
            reason: Reason::Load,
            ..
        }
    ));
}

#[test]
fn node_loss_drops_and_re_replicates() {
    let mut nodes = three();
    nodes[1].healthy = false;
    let p = plan(&input(
        nodes,
        vec![shard("s", &[("a", Serving), ("b", Serving)])],
    ));
    let kinds: Vec<_> = p
        .actions
        .iter()
        .map(|a| (a.kind(), a.node().to_string(), a.reason()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("drop", "b".into(), Reason::Failure),
            ("add", "c".into(), Reason::Failure)
        ]
    );
}

#[test]
fn most_nodes_down_holds_their_replicas_and_still_re_replicates() {
    let mut nodes = vec![
        node("a", "z1"),
        node("b", "z2"),
        node("c", "z3"),
        node("d", "z1"),
    ];
    for n in &mut nodes[..3] {
        n.healthy = false;
    }
    let p = plan(&input(
        nodes.clone(),
        vec![shard("s", &[("a", Serving), ("b", Serving)])],
    ));
    let kinds: Vec<_> = p
        .actions
        .iter()
        .map(|a| (a.kind(), a.node().to_string()))
        .collect();
    // Nothing dropped: three of four down reads as a broken health signal.
    assert_eq!(kinds, vec![("add", "d".to_string())]);
    assert_eq!(p.held_down, 3);
    // Half the nodes healthy is not a panic: the dead node's replica goes.
    nodes[0].healthy = true;
    nodes[1].healthy = true;
    let p = plan(&input(
        nodes,
        vec![shard("s", &[("a", Serving), ("c", Serving)])],
    ));
    assert!(
        p.actions
            .iter()
            .any(|a| a.kind() == "drop" && a.node() == "c"),
        "{:?}",
        p.actions
    );
    assert_eq!(p.held_down, 0);
}

#[test]
fn drain_is_make_before_break() {
    let mut nodes = three();
    nodes[0].drained = true;
    // round 1: the replacement is added, nothing drained yet
    let p = plan(&input(
        nodes.clone(),
        vec![shard("s", &[("a", Serving), ("b", Serving)])],
    ));
    assert_eq!(p.actions.len(), 1, "{:?}", p.actions);
    assert!(
        matches!(&p.actions[0], Action::Add { node, replaces: Some(old), .. } if node == "c" && old == "a")
    );
    // round 2: replacement still warming → still nothing drained
    let p = plan(&input(
        nodes.clone(),
        vec![shard(
            "s",
            &[("a", Serving), ("b", Serving), ("c", Warming)],
        )],
    ));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    // round 3: it serves → the old replica drains
    let p = plan(&input(
        nodes,
        vec![shard(
            "s",
            &[("a", Serving), ("b", Serving), ("c", Serving)],
        )],
    ));
    assert_eq!(p.actions.len(), 1);
    assert!(matches!(&p.actions[0], Action::Drain { node, .. } if node == "a"));
}

#[test]
fn pins_move_a_shard_to_exactly_the_pinned_nodes() {
    let mut s = shard("s", &[("a", Serving), ("b", Serving)]);
    s.pinned = Some(vec!["c".into()]);
    let p = plan(&input(three(), vec![s.clone()]));
    assert!(
        matches!(&p.actions[..], [Action::Add { node, reason: Reason::Operator, .. }] if node == "c")
    );
    s.replicas.push(ReplicaInput {
        node: "c".into(),
        state: Serving,
    });
    let p = plan(&input(three(), vec![s]));
    let drained: BTreeSet<&str> = p.actions.iter().map(Action::node).collect();
    assert_eq!(drained, ["a", "b"].into());
}

#[test]
fn an_overloaded_node_hands_a_replica_over() {
    let nodes = vec![node("a", "z1"), node("b", "z1"), node("c", "z1")];
    let mut s1 = shard("s1", &[("a", Serving)]);
    s1.demand.observed_rps = 90.0;
    s1.threshold = 1000.0;
    let mut s2 = shard("s2", &[("a", Serving)]);
    s2.demand.observed_rps = 80.0;
    s2.threshold = 1000.0;
    let mut i = input(nodes, vec![s1, s2]);
    i.replication_factor = 1;
    let p = plan(&i);
    assert!(
        p.actions.iter().any(|a| matches!(a, Action::Add { reason: Reason::Balance, replaces: Some(o), .. } if o == "a")),
        "{:?}",
        p.actions
    );
}

#[test]
fn draining_replicas_are_never_drained_twice_nor_counted() {
    let p = plan(&input(
        three(),
        vec![shard(
            "s",
            &[("a", Serving), ("b", Serving), ("c", Draining)],
        )],
    ));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn the_next_hours_crossing_adds_a_copy_only_once_waiting_a_round_would_be_late() {
    const MIN: i64 = 60_000;
    let priced = |replicas: &[(&str, ReplicaState)], until_next: i64| {
        let mut s = shard("s", replicas);
        s.demand.p_exceed = Some(0.0);
        s.demand.p_exceed_next = Some(0.5);
        let mut i = input(three(), vec![s]);
        i.economics = Economics {
            miss_cost_ms: 30.0,
            memory_cost_ms_per_mb_hour: 150.0,
            round_ms: (20 * MIN) as f64,
        };
        i.shards[0].demand.next_hour_ms = i.now_ms + until_next;
        plan(&i)
    };
    // Rounds 20 minutes apart: with 50 minutes to go the next round is in
    // time, with 30 it is not.
    let p = priced(&[("a", Serving), ("b", Serving)], 50 * MIN);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.shards[0].reason, None, "not hot yet");
    let p = priced(&[("a", Serving), ("b", Serving)], 30 * MIN);
    assert!(
        matches!(&p.actions[..], [Action::Add { node, reason: Reason::Forecast, .. }] if node == "c"),
        "{:?}",
        p.actions
    );
    // A copy already held stays for the next hour's crossing, however far
    // off: no drain now and re-fetch a round later.
    let p = priced(&[("a", Serving), ("b", Serving), ("c", Serving)], 50 * MIN);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.shards[0].reason, Some(Reason::Forecast), "still hot");
}

#[test]
fn a_forecast_copy_goes_once_the_crossing_passed_and_the_forecast_prices_none() {
    let held = |observed: f64, p_this: f64| {
        let mut s = shard("s", &[("a", Serving), ("b", Serving), ("c", Serving)]);
        s.demand.observed_rps = observed;
        s.demand.p_exceed = Some(p_this);
        s.demand.p_exceed_next = Some(0.0);
        let mut i = input(three(), vec![s]);
        i.economics = Economics {
            miss_cost_ms: 30.0,
            memory_cost_ms_per_mb_hour: 150.0,
            round_ms: 1_000.0,
        };
        plan(&i)
    };
    // Threshold 10, scale-in ratio 0.5: observed 7 is back under the
    // threshold, not under half of it. The forecast prices no copy: drain.
    let p = held(7.0, 0.0);
    assert!(
        matches!(
            &p.actions[..],
            [Action::Drain {
                reason: Reason::Load,
                ..
            }]
        ),
        "{:?}",
        p.actions
    );
    assert!(p.shards[0].calm, "the node caches may evict it too");
    // Still over the threshold: held.
    let p = held(11.0, 0.0);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(!p.shards[0].calm);
    // The forecast still prices the copy: held.
    let p = held(7.0, 0.5);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    // Without a probabilistic forecast the band holds it until observed
    // demand is under threshold × ratio.
    let mut s = shard("s", &[("a", Serving), ("b", Serving), ("c", Serving)]);
    s.demand.observed_rps = 7.0;
    let p = plan(&input(three(), vec![s.clone()]));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(!p.shards[0].calm);
    s.demand.observed_rps = 4.0;
    let p = plan(&input(three(), vec![s]));
    assert_eq!(p.actions.len(), 1, "{:?}", p.actions);
    assert!(p.shards[0].calm);
}

// ---- properties ----

fn arb_input() -> impl Strategy<Value = PlanInput> {
    (2usize..7, 1usize..4, 0usize..5, 1usize..25)
        .prop_flat_map(|(n_nodes, rf, budget, n_shards)| {
            let nodes = proptest::collection::vec(
                (
                    10.0f64..500.0,
                    0u8..3,
                    proptest::bool::weighted(0.85),
                    proptest::bool::weighted(0.1),
                ),
                n_nodes,
            );
            let shards = proptest::collection::vec(
                (
                    proptest::collection::vec((0..n_nodes, 0u8..3), 0..4),
                    0.0f64..300.0,
                    0.0f64..300.0,
                    1.0f64..100.0,
                    proptest::option::weighted(0.1, proptest::collection::vec(0..n_nodes, 1..3)),
                ),
                n_shards,
            );
            (nodes, shards, Just(rf), Just(budget))
        })
        .prop_map(|(nodes, shards, rf, budget)| {
            let nodes: Vec<NodeInput> = nodes
                .into_iter()
                .enumerate()
                .map(|(i, (cap, zone, healthy, drained))| NodeInput {
                    name: format!("n{i}"),
                    capacity: cap,
                    zone: Some(format!("z{zone}")),
                    healthy,
                    drained,
                })
                .collect();
            let shards = shards
                .into_iter()
                .enumerate()
                .map(|(i, (reps, pred, obs, thr, pins))| {
                    let mut seen = BTreeSet::new();
                    let replicas = reps
                        .into_iter()
                        .filter(|(n, _)| seen.insert(*n))
                        .map(|(n, st)| ReplicaInput {
                            node: format!("n{n}"),
                            state: [Warming, Serving, Draining][st as usize],
                        })
                        .collect();
                    ShardInput {
                        id: format!("s{i:02}"),
                        threshold: thr,
                        replicas,
                        demand: Demand {
                            predicted_rps: pred,
                            observed_rps: obs,
                            rise_at_ms: 5_000_000,
                            skill: 0.5,
                            p_exceed: None,
                            p_exceed_next: None,
                            next_hour_ms: 0,
                        },
                        bytes: 100_000,
                        pinned: pins.map(|p| p.into_iter().map(|n| format!("n{n}")).collect()),
                        leaving: vec![],
                    }
                })
                .collect();
            PlanInput {
                economics: Economics::default(),
                now_ms: 1_000_000,
                replication_factor: rf,
                churn_budget: budget,
                max_utilization: 0.9,
                scale_in_ratio: 0.5,
                bandwidth_bytes_per_s: 1e6,
                nodes,
                shards,
            }
        })
}

/// The replicas each shard has once the plan is carried out.
fn apply(i: &PlanInput, p: &Plan) -> BTreeMap<String, Vec<ReplicaInput>> {
    let mut m: BTreeMap<String, Vec<ReplicaInput>> = i
        .shards
        .iter()
        .map(|s| (s.id.clone(), s.replicas.clone()))
        .collect();
    for a in &p.actions {
        let reps = m.get_mut(a.shard()).expect("action on a known shard");
        match a {
            Action::Add { node, .. } => reps.push(ReplicaInput {
                node: node.clone(),
                state: Warming,
            }),
            Action::Drop { node, .. } => reps.retain(|r| r.node != *node),
            Action::Drain { node, .. } => {
                for r in reps.iter_mut().filter(|r| r.node == *node) {
                    r.state = Draining;
                }
            }
        }
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn replicas_stay_on_distinct_healthy_usable_nodes(i in arb_input()) {
        let p = plan(&i);
        for (id, reps) in apply(&i, &p) {
            let mut seen = BTreeSet::new();
            for r in &reps {
                prop_assert!(seen.insert(r.node.clone()), "{id}: two replicas on {}", r.node);
            }
        }
        for a in &p.actions {
            if let Action::Add { node, .. } = a {
                let n = i.nodes.iter().find(|n| n.name == *node).unwrap();
                prop_assert!(n.healthy && !n.drained, "added to unusable {node}");
            }
        }
    }

    #[test]
    fn churn_budget_is_kept(i in arb_input()) {
        let p = plan(&i);
        prop_assert!(p.adds() <= i.churn_budget);
    }

    #[test]
    fn same_input_same_plan_whatever_the_order(i in arb_input()) {
        let p1 = plan(&i);
        let mut j = i.clone();
        j.nodes.reverse();
        j.shards.reverse();
        prop_assert_eq!(p1, plan(&j));
    }

    #[test]
    fn no_drain_leaves_a_shard_without_a_serving_replica(i in arb_input()) {
        let p = plan(&i);
        let after = apply(&i, &p);
        for s in &i.shards {
            let serving_before = s.replicas.iter().filter(|r| r.state == Serving
                && i.nodes.iter().any(|n| n.name == r.node && n.healthy)).count();
            let serving_after = after[&s.id].iter().filter(|r| r.state == Serving).count();
            let drained = p.actions.iter().any(|a| matches!(a, Action::Drain {..}) && a.shard() == s.id);
            if drained {
                prop_assert!(serving_after >= 1, "{}: drained its last serving replica", s.id);
                prop_assert!(serving_after >= serving_before.min(i.replication_factor).min(1));
            }
        }
    }

    #[test]
    fn scale_in_only_after_observed_demand_falls(i in arb_input()) {
        let p = plan(&i);
        for a in &p.actions {
            if let Action::Drain { reason: Reason::Load, shard, .. } = a {
                let s = i.shards.iter().find(|s| s.id == *shard).unwrap();
                prop_assert!(s.demand.observed_rps <= s.threshold * i.scale_in_ratio);
            }
        }
    }

    #[test]
    fn additions_go_where_there_is_room_when_there_is_room(i in arb_input()) {
        // Cold start with room to spare: every node stays within capacity.
        let mut i = i;
        for n in &mut i.nodes { n.healthy = true; n.drained = false; n.capacity = 1000.0; }
        let total_cap: f64 = i.nodes.iter().map(|n| n.capacity * 0.9).sum();
        let n_shards = i.shards.len() as f64;
        for s in &mut i.shards {
            s.replicas.clear();
            s.pinned = None;
            s.demand.predicted_rps = s.demand.predicted_rps.min(total_cap / 4.0 / n_shards / 3.0);
            s.demand.observed_rps = 0.0;
            s.threshold = 1e9;
        }
        i.churn_budget = 1000;
        let p = plan(&i);
        for a in &p.actions {
            if let Action::Add { over_capacity, .. } = a { prop_assert!(!over_capacity); }
        }
        for n in &i.nodes {
            prop_assert!(p.node_load[&n.name] <= n.capacity * 0.9 + 1e-6,
                "{} at {} of {}", n.name, p.node_load[&n.name], n.capacity);
        }
        // and the replication factor is met everywhere
        let after = apply(&i, &p);
        for reps in after.values() {
            prop_assert_eq!(reps.len(), i.replication_factor.min(i.nodes.len()));
        }
    }
}
