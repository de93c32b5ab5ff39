//! The state machine's invariants over random runs, the real planner
//! deciding: replicas on distinct nodes, no duplicate orders, the churn
//! budget, make-before-break.

use std::collections::BTreeSet;

use proptest::prelude::*;
use shardmap::table::ReplicaState::Serving;

use shardmap::contract::OrderState;

use super::tests::{at_sync, done, state, NODES};
use super::*;
use crate::planner::{self, Action, NodeInput, PlanInput, ReplicaInput, ShardInput};

/// One step of a run.
#[derive(Debug, Clone)]
enum Step {
    /// A round: plan with this demand per shard, sync takes the orders
    /// unless `refuse`.
    Round {
        demand: Vec<f64>,
        refuse: bool,
    },
    /// Sync reports on the `k`-th open order.
    Report {
        k: usize,
        how: u8,
    },
    Probe {
        node: usize,
        ok: bool,
    },
    Drain {
        node: usize,
        on: bool,
    },
    Pin {
        shard: usize,
        nodes: Vec<usize>,
    },
    Unpin {
        shard: usize,
    },
    Wait {
        ms: i64,
    },
}

fn arb_step(shards: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (prop::collection::vec(0.0f64..300.0, shards), prop::bool::weighted(0.2))
            .prop_map(|(demand, refuse)| Step::Round { demand, refuse }),
        4 => (0usize..8, 0u8..5).prop_map(|(k, how)| Step::Report { k, how }),
        2 => (0..NODES.len(), any::<bool>()).prop_map(|(node, ok)| Step::Probe { node, ok }),
        1 => (0..NODES.len(), any::<bool>()).prop_map(|(node, on)| Step::Drain { node, on }),
        1 => (0..shards, prop::collection::btree_set(0..NODES.len(), 1..3))
            .prop_map(|(shard, n)| Step::Pin { shard, nodes: n.into_iter().collect() }),
        1 => (0..shards).prop_map(|shard| Step::Unpin { shard }),
        2 => (0i64..3_000).prop_map(|ms| Step::Wait { ms }),
    ]
}

/// The planner's input from the state (as `demand::plan_input` builds it).
fn input(st: &State, demand: &[f64], now: i64, churn_budget: usize) -> PlanInput {
    PlanInput {
        economics: crate::planner::Economics::default(),
        now_ms: now,
        replication_factor: 2,
        churn_budget,
        max_utilization: 0.9,
        scale_in_ratio: 0.5,
        bandwidth_bytes_per_s: 1e6,
        nodes: NODES
            .iter()
            .map(|n| NodeInput {
                name: n.to_string(),
                capacity: 100.0,
                zone: None,
                healthy: st.nodes.get(*n).is_none_or(|s| s.healthy),
                drained: st.operator.drained.contains(*n),
            })
            .collect(),
        shards: st
            .replicas
            .iter()
            .enumerate()
            .map(|(i, (id, reps))| ShardInput {
                id: id.clone(),
                threshold: 50.0,
                replicas: reps
                    .iter()
                    .map(|r| ReplicaInput {
                        node: r.node.clone(),
                        state: r.state,
                    })
                    .collect(),
                demand: Demand {
                    predicted_rps: demand.get(i).copied().unwrap_or(0.0),
                    rise_at_ms: now + 60_000,
                    observed_rps: demand.get(i).copied().unwrap_or(0.0) / 2.0,
                    skill: 0.5,
                    p_exceed: None,
                    p_exceed_next: None,
                    next_hour_ms: 0,
                },
                bytes: 1 << 20,
                pinned: st.operator.pins.get(id).cloned(),
                leaving: st
                    .leaving
                    .get(id)
                    .map(|l| l.iter().cloned().collect())
                    .unwrap_or_default(),
            })
            .collect(),
    }
}

/// A run: the state, the clock, sync's order ids.
struct Run {
    st: State,
    now: i64,
    next_id: u64,
    budget: usize,
}

impl Run {
    /// Apply an event and every event its effects lead to (sync takes
    /// orders unless `refuse`); the effects seen, in order.
    fn feed(&mut self, e: Event, refuse: bool) -> Vec<Effect> {
        let mut seen = Vec::new();
        let mut queue: VecDeque<Effect> = self.st.apply(e).into();
        while let Some(fx) = queue.pop_front() {
            seen.push(fx.clone());
            let next = match fx {
                Effect::Submit(order) if refuse => Event::OrderRefused {
                    order,
                    error: "503".into(),
                    now: self.now,
                },
                Effect::Submit(order) => {
                    self.next_id += 1;
                    Event::OrderSubmitted {
                        order,
                        id: self.next_id,
                        now: self.now,
                    }
                }
                _ => continue,
            };
            for f in self.st.apply(next).into_iter().rev() {
                queue.push_front(f);
            }
        }
        seen
    }

    fn step(&mut self, step: &Step) -> Vec<Effect> {
        let now = self.now;
        match step {
            Step::Round { demand, refuse } => {
                let mut seen = self.feed(Event::DrainsDue { now }, false);
                let input = input(&self.st, demand, now, self.budget);
                let plan = planner::plan(&input);
                // The demand as the plan saw it (episodes open and rise).
                let shards = input
                    .shards
                    .iter()
                    .map(|s| ShardDemand {
                        id: s.id.as_str().into(),
                        threshold: s.threshold,
                        demand: s.demand.clone(),
                    })
                    .collect();
                let plan_fx = self.feed(
                    Event::PlanComputed {
                        plan,
                        shards,
                        now,
                        tnow: now,
                    },
                    *refuse,
                );
                let adds = plan_fx
                    .iter()
                    .filter(|e| matches!(e, Effect::Submit(o) if o.adds_replica))
                    .count();
                assert!(adds <= self.budget, "{adds} adds, budget {}", self.budget);
                seen.extend(plan_fx);
                seen.extend(self.feed(Event::PlanCarriedOut { now }, *refuse));
                seen.extend(self.feed(Event::RefreshesOrdered { now }, *refuse));
                seen.extend(self.feed(Event::RoundFinished { now }, false));
                seen
            }
            Step::Report { k, how } => {
                let open: Vec<u64> = self
                    .st
                    .orders
                    .iter()
                    .filter(|o| o.state.is_open())
                    .map(|o| o.id)
                    .collect();
                let Some(&id) = open.get(k % open.len().max(1)) else {
                    return vec![];
                };
                let report = match how {
                    0 | 1 => done(),
                    2 => at_sync(OrderState::Cancelled, 0, 0),
                    3 => OrderReport::Missing("404".into()),
                    _ => at_sync(OrderState::Running, 1, 1),
                };
                self.feed(Event::OrderReported { id, report, now }, false)
            }
            Step::Probe { node, ok } => self.feed(
                Event::NodeProbed {
                    node: NODES[*node].into(),
                    result: if *ok { Ok(()) } else { Err("down".into()) },
                    now,
                },
                false,
            ),
            Step::Drain { node, on } => self.feed(
                Event::Operator {
                    command: Command::DrainNode {
                        node: NODES[*node].into(),
                        on: *on,
                    },
                    now,
                },
                false,
            ),
            Step::Pin { shard, nodes } => self.feed(
                Event::Operator {
                    command: Command::Pin {
                        shard: format!("s{shard}"),
                        nodes: Some(nodes.iter().map(|n| NODES[*n].to_string()).collect()),
                    },
                    now,
                },
                false,
            ),
            Step::Unpin { shard } => self.feed(
                Event::Operator {
                    command: Command::Pin {
                        shard: format!("s{shard}"),
                        nodes: None,
                    },
                    now,
                },
                false,
            ),
            Step::Wait { ms } => {
                self.now += ms;
                vec![]
            }
        }
    }
}

/// Serving replicas on healthy nodes, per shard.
fn serving(st: &State) -> BTreeMap<String, usize> {
    st.replicas
        .iter()
        .map(|(id, reps)| {
            let n = reps
                .iter()
                .filter(|r| r.state == Serving && st.nodes.get(&r.node).is_some_and(|n| n.healthy))
                .count();
            (id.clone(), n)
        })
        .collect()
}

fn check(st: &State) -> Result<(), TestCaseError> {
    for (id, reps) in &st.replicas {
        let mut seen = BTreeSet::new();
        for r in reps {
            prop_assert!(seen.insert(&r.node), "{id}: two replicas on {}", r.node);
        }
    }
    let mut open = BTreeSet::new();
    for o in st.orders.iter().filter(|o| o.state.is_open()) {
        prop_assert!(
            open.insert((&o.shard, &o.node)),
            "two open orders for {} on {}",
            o.shard,
            o.node
        );
    }
    // Each demand pre-fetch is counted once at most, a rise met warm once.
    let p = &st.prefetch.view;
    let demand = p.driven_by(Reason::Forecast) + p.driven_by(Reason::Load);
    let timed = p.warm_before_rise + p.warm_after_rise + p.no_rise;
    prop_assert!(
        timed <= demand,
        "{timed} timed of {demand} demand pre-fetches"
    );
    prop_assert!(p.rises_met_warm <= p.rises.min(p.warm_before_rise), "{p:?}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever happens, replicas stay on distinct nodes, orders are never
    /// duplicated and each plan adds at most the churn budget; and no step
    /// but a node failing takes a shard that had a serving replica on a
    /// healthy node down to none (make-before-break).
    #[test]
    fn the_state_keeps_its_invariants(
        shards in 1usize..4,
        budget in 0usize..3,
        steps in prop::collection::vec(arb_step(3), 1..60),
    ) {
        let mut run = Run { st: state(shards, budget), now: 1_000_000, next_id: 0, budget };
        for step in &steps {
            let before = serving(&run.st);
            let fx = run.step(step);
            check(&run.st)?;
            if let Step::Probe { ok: false, .. } = step {
                continue;
            }
            let after = serving(&run.st);
            for (id, n) in before {
                prop_assert!(
                    n == 0 || after.get(&id).copied().unwrap_or(0) > 0,
                    "{id} lost its last serving replica at {step:?}: {fx:?}\n{:?}",
                    run.st.replicas.get(&id)
                );
            }
        }
    }
}

fn arb_action(shards: usize) -> impl Strategy<Value = Action> {
    (0..shards, 0..NODES.len(), 0u8..4).prop_map(|(s, n, kind)| {
        let (shard, node) = (format!("s{s}"), NODES[n].to_string());
        let (reason, detail) = (Reason::Balance, String::new());
        match kind {
            0 => Action::Drain {
                shard,
                node,
                reason,
                detail,
            },
            1 => Action::Drop {
                shard,
                node,
                reason,
                detail,
            },
            _ => Action::Add {
                shard,
                node,
                reason,
                priority: 1.0,
                deadline_ms: 0,
                replaces: None,
                over_capacity: false,
                detail,
            },
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Plans the planner would never make (adds onto occupied nodes, twice,
    /// over the budget) still leave replicas on distinct nodes, one open
    /// order per shard and node, and at most the budget of adds.
    #[test]
    fn arbitrary_plans_cannot_break_the_state(
        shards in 1usize..4,
        budget in 0usize..3,
        plans in prop::collection::vec(prop::collection::vec(arb_action(3), 0..8), 1..12),
    ) {
        let mut run = Run { st: state(shards, budget), now: 1_000_000, next_id: 0, budget };
        for actions in plans {
            let plan = Plan { actions, ..Plan::default() };
            let now = run.now;
            let fx = run.feed(Event::PlanComputed { plan, shards: vec![], now, tnow: now }, false);
            let adds = fx.iter().filter(|e| matches!(e, Effect::Submit(o) if o.adds_replica)).count();
            prop_assert!(adds <= budget, "{adds} adds, budget {budget}");
            check(&run.st)?;
            run.now += 700;
            run.feed(Event::DrainsDue { now: run.now }, false);
            check(&run.st)?;
        }
    }
}
