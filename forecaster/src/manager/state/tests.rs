//! The state machine alone: the order life cycle step by step.

use std::time::Duration;

use shardmap::table::ReplicaState::{self, Draining, Serving, Warming};
use shardmap::AssignmentVersion;

use shardmap::contract::{Order, OrderState, Report};

use super::*;
use crate::planner::Action;

pub(super) const NODES: [&str; 4] = ["a", "b", "c", "d"];
const DRAIN_MS: i64 = 1_000;
pub(crate) const TIMEOUT_MS: i64 = 10_000;

fn settings(churn_budget: usize) -> Settings {
    Settings {
        fail_after: 2,
        drain: Duration::from_millis(DRAIN_MS as u64),
        order_timeout: Duration::from_millis(TIMEOUT_MS as u64),
        orders_in_flight_max: 0,
        host_baseline: true,
        scale_in_ratio: 0.5,
        churn_budget,
        plans_demand: true,
        proxies: vec!["http://p1".into(), "http://p2".into()],
        clock: Clock::real(),
    }
}

/// Four nodes; shard `s<i>` on nodes a and b.
pub(crate) fn state(shards: usize, churn_budget: usize) -> State {
    let mut st = State::new(settings(churn_budget), AssignmentVersion::new(1, 1), false);
    st.apply(Event::Topology {
        nodes: NODES.iter().map(|n| n.to_string()).collect(),
        shards: (0..shards)
            .map(|i| (format!("s{i}"), vec!["a".into(), "b".into()]))
            .collect(),
    });
    st
}

pub(super) fn add(shard: &str, node: &str, replaces: Option<&str>) -> Action {
    Action::Add {
        shard: shard.into(),
        node: node.into(),
        reason: Reason::Forecast,
        priority: 1.0,
        deadline_ms: 5_000,
        replaces: replaces.map(Into::into),
        over_capacity: false,
        detail: "test".into(),
    }
}

pub(super) fn plan_of(actions: Vec<Action>) -> Plan {
    Plan {
        actions,
        ..Plan::default()
    }
}

pub(super) fn computed(st: &mut State, actions: Vec<Action>, now: i64) -> Vec<Effect> {
    st.apply(Event::PlanComputed {
        plan: plan_of(actions),
        shards: vec![],
        now,
        tnow: now,
    })
}

pub(super) fn submits(fx: &[Effect]) -> Vec<OrderRequest> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Submit(o) => Some(o.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn actions(fx: &[Effect]) -> Vec<&'static str> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Record(d) => Some(d.action),
            _ => None,
        })
        .collect()
}

pub(super) fn replica(st: &State, shard: &str, node: &str) -> Option<ReplicaState> {
    st.replicas[shard]
        .iter()
        .find(|r| r.node == node)
        .map(|r| r.state)
}

/// Submit an add of `shard` on `node` at `now` and let sync take it as `id`.
pub(crate) fn ordered(
    st: &mut State,
    shard: &str,
    node: &str,
    replaces: Option<&str>,
    id: u64,
    now: i64,
) {
    let fx = computed(st, vec![add(shard, node, replaces)], now);
    let [order] = &submits(&fx)[..] else {
        panic!("one order: {fx:?}")
    };
    let fx = st.apply(Event::OrderSubmitted {
        order: order.clone(),
        id,
        now,
    });
    assert_eq!(actions(&fx), ["add"]);
}

/// Sync's answer: the order in `state` with `rows` and `bytes` so far.
pub(crate) fn at_sync(state: OrderState, rows: u64, bytes: u64) -> OrderReport {
    let report = (state == OrderState::Done).then(|| Report {
        order: 1,
        shard: "s0".into(),
        node: "c".into(),
        cursor: 1,
        rows,
        bytes,
        duration_ms: 1,
        deadline_met: Some(true),
        finished_unix_ms: 1,
    });
    OrderReport::Found(Box::new(Order {
        id: 1,
        shard: "s0".into(),
        node: "c".into(),
        priority: 1.0,
        deadline_unix_ms: None,
        state,
        submitted_unix_ms: 0,
        started_unix_ms: None,
        finished_unix_ms: None,
        cursor: 1,
        rows,
        bytes,
        last_error: None,
        reason: None,
        report,
        epoch: 1,
    }))
}

pub(super) fn done() -> OrderReport {
    at_sync(OrderState::Done, 10, 1_000)
}

#[test]
fn an_add_warms_then_serves_and_its_old_replica_starts_leaving() {
    let mut st = state(1, 4);
    let v0 = st.version;
    ordered(&mut st, "s0", "c", Some("a"), 7, 100);
    assert_eq!(replica(&st, "s0", "c"), Some(Warming));
    assert_eq!(st.open_order("s0", "c").map(|o| o.id), Some(7));
    // The new replica is in the table: a new version goes out.
    assert_eq!(
        st.apply(Event::RoundFinished { now: 100 }),
        [Effect::Publish { changed: true }]
    );
    assert_eq!(st.version, v0.next());
    // Still running: nothing changes.
    let fx = st.apply(Event::OrderReported {
        id: 7,
        report: at_sync(OrderState::Running, 3, 30),
        now: 200,
    });
    assert!(fx.is_empty());
    assert_eq!(st.orders[0].state, TrackedState::Running);
    assert_eq!(
        st.apply(Event::RoundFinished { now: 200 }),
        [Effect::Publish { changed: false }]
    );
    // Done: it serves, and a's replica leaves once the planner drains it.
    let fx = st.apply(Event::OrderReported {
        id: 7,
        report: done(),
        now: 300,
    });
    assert_eq!(actions(&fx), ["serve"]);
    assert_eq!(replica(&st, "s0", "c"), Some(Serving));
    assert!(st.leaving["s0"].contains("a"));
    assert_eq!(st.outcomes.done, 1);
    assert_eq!(st.bytes_per_row, Some(100.0));
    assert!(st.open_order("s0", "c").is_none());
}

#[test]
fn an_order_that_times_out_is_cancelled_and_its_replica_withdrawn() {
    let mut st = state(1, 4);
    ordered(&mut st, "s0", "c", None, 7, 100);
    let fx = st.apply(Event::OrderReported {
        id: 7,
        report: at_sync(OrderState::Queued, 0, 0),
        now: 100 + TIMEOUT_MS + 1,
    });
    assert_eq!(actions(&fx), ["order_failed"]);
    assert!(fx.contains(&Effect::Cancel { id: 7 }));
    assert_eq!(replica(&st, "s0", "c"), None);
    assert_eq!(st.orders[0].state, TrackedState::Failed);
    assert_eq!(st.outcomes.failed, 1);
}

/// Sync keeps a bounded history of finished orders: one it dropped before
/// the manager asked is done when sync's nodes hold its shard warm on its
/// node (the add's replica serves, nothing is withdrawn or re-ordered), and
/// failed otherwise.
#[test]
fn an_order_sync_forgot_is_done_when_its_node_holds_the_shard_warm() {
    let hosted_on_c = |warm: bool| -> Hosted {
        let view = HostedView {
            cursor: 9,
            rows: 40,
            warm,
        };
        [("c".to_string(), [("s0".to_string(), view)].into())].into()
    };
    let mut st = state(1, 4);
    ordered(&mut st, "s0", "c", None, 7, 100);
    st.apply(Event::SyncObserved(Ok(hosted_on_c(true))));
    let fx = st.apply(Event::OrderReported {
        id: 7,
        report: OrderReport::Missing("sync has no order 7".into()),
        now: 200,
    });
    assert_eq!(actions(&fx), ["serve"]);
    assert_eq!(replica(&st, "s0", "c"), Some(Serving));
    assert_eq!(st.orders[0].state, TrackedState::Done);
    assert_eq!((st.outcomes.done, st.outcomes.failed), (1, 0));
    let Some(Effect::Record(d)) = fx.first() else {
        panic!("{fx:?}")
    };
    assert!(
        d.detail.ends_with(orders::FORGOTTEN_BUT_WARM),
        "{}",
        d.detail
    );
    // Unknown counts leave the shard-size estimate alone.
    assert_eq!(st.bytes_per_row, None);

    // Still warming there, or sync's list unread this round: failed.
    for observed in [Ok(hosted_on_c(false)), Err("connection refused".into())] {
        let mut st = state(1, 4);
        ordered(&mut st, "s0", "c", None, 7, 100);
        st.apply(Event::SyncObserved(Ok(hosted_on_c(true))));
        st.apply(Event::SyncObserved(observed.clone()));
        let fx = st.apply(Event::OrderReported {
            id: 7,
            report: OrderReport::Missing("sync has no order 7".into()),
            now: 200,
        });
        assert_eq!(actions(&fx), ["order_failed"], "{observed:?}");
        assert_eq!(replica(&st, "s0", "c"), None);
    }
}

#[test]
fn an_order_cancelled_or_lost_by_sync_fails_without_a_cancel() {
    for report in [
        at_sync(OrderState::Cancelled, 0, 0),
        OrderReport::Missing("404".into()),
    ] {
        let mut st = state(1, 4);
        ordered(&mut st, "s0", "c", None, 7, 100);
        let fx = st.apply(Event::OrderReported {
            id: 7,
            report: report.clone(),
            now: 200,
        });
        assert_eq!(actions(&fx), ["order_failed"], "{report:?}");
        assert!(!fx.iter().any(|e| matches!(e, Effect::Cancel { .. })));
        assert_eq!(replica(&st, "s0", "c"), None);
    }
    // Sync not answering is no failure, until the order times out.
    let mut st = state(1, 4);
    ordered(&mut st, "s0", "c", None, 7, 100);
    let down = || OrderReport::Unreachable("connection refused".into());
    let fx = st.apply(Event::OrderReported {
        id: 7,
        report: down(),
        now: 200,
    });
    assert!(fx.is_empty());
    assert_eq!(replica(&st, "s0", "c"), Some(Warming));
    let fx = st.apply(Event::OrderReported {
        id: 7,
        report: down(),
        now: 100 + TIMEOUT_MS + 1,
    });
    assert!(fx.contains(&Effect::Cancel { id: 7 }));
    assert_eq!(replica(&st, "s0", "c"), None);
}

#[test]
fn a_refused_add_is_logged_and_changes_nothing() {
    let mut st = state(1, 4);
    let fx = computed(&mut st, vec![add("s0", "c", None)], 100);
    let order = submits(&fx).remove(0);
    let fx = st.apply(Event::OrderRefused {
        order,
        error: "503".into(),
        now: 100,
    });
    assert_eq!(actions(&fx), ["add_failed"]);
    assert_eq!(replica(&st, "s0", "c"), None);
    assert_eq!(st.outcomes.refused, 1);
    assert_eq!(
        st.apply(Event::RoundFinished { now: 100 }),
        [Effect::Publish { changed: false }]
    );
}

#[test]
fn a_drop_cancels_the_open_order_and_a_drain_ends_after_its_time() {
    let mut st = state(1, 4);
    ordered(&mut st, "s0", "c", None, 7, 100);
    let drop = Action::Drop {
        shard: "s0".into(),
        node: "c".into(),
        reason: Reason::Failure,
        detail: "down".into(),
    };
    let drain = Action::Drain {
        shard: "s0".into(),
        node: "a".into(),
        reason: Reason::Load,
        detail: "calm".into(),
    };
    let fx = computed(&mut st, vec![drop, drain], 200);
    assert_eq!(actions(&fx), ["drop", "drain"]);
    assert!(fx.contains(&Effect::Cancel { id: 7 }));
    assert_eq!(st.orders[0].state, TrackedState::Cancelled);
    assert_eq!(replica(&st, "s0", "c"), None);
    assert_eq!(replica(&st, "s0", "a"), Some(Draining));
    // Not yet due.
    assert!(st
        .apply(Event::DrainsDue {
            now: 200 + DRAIN_MS - 1
        })
        .is_empty());
    let fx = st.apply(Event::DrainsDue {
        now: 200 + DRAIN_MS,
    });
    assert_eq!(actions(&fx), ["evict"]);
    assert!(fx.contains(&Effect::Evict {
        shard: "s0".into(),
        node: "a".into(),
        cold: None
    }));
    assert_eq!(replica(&st, "s0", "a"), None);
}

#[test]
fn adds_that_would_break_an_invariant_are_not_ordered() {
    let mut st = state(2, 2);
    ordered(&mut st, "s0", "c", None, 7, 100);
    let fx = computed(
        &mut st,
        vec![
            add("s0", "a", None), // a replica there already
            add("s0", "c", None), // warming there, its order open
            add("s1", "c", None),
            add("s1", "c", None), // twice in one plan
            add("s1", "d", None),
            add("s0", "d", None), // over the budget of 2
        ],
        200,
    );
    let out: Vec<_> = submits(&fx)
        .into_iter()
        .map(|o| (o.shard, o.node))
        .collect();
    assert_eq!(
        out,
        [
            ("s1".to_string(), "c".to_string()),
            ("s1".into(), "d".into())
        ]
    );
    assert_eq!(
        actions(&fx).iter().filter(|a| **a == "add_failed").count(),
        4
    );
}

#[test]
fn a_node_is_down_after_fail_after_failures_and_up_after_one_success() {
    let mut st = state(1, 4);
    let probe = |st: &mut State, ok: bool| {
        st.apply(Event::NodeProbed {
            node: "a".into(),
            result: if ok { Ok(()) } else { Err("refused".into()) },
            now: 1,
        })
    };
    assert!(probe(&mut st, false).is_empty());
    assert!(st.nodes["a"].healthy);
    assert_eq!(actions(&probe(&mut st, false)), ["node_down"]);
    assert!(!st.nodes["a"].healthy);
    assert_eq!(actions(&probe(&mut st, true)), ["node_up"]);
}

#[test]
fn operator_commands_are_checked_then_persisted() {
    let mut st = state(1, 4);
    let cmd = |st: &mut State, command| st.apply(Event::Operator { command, now: 1 });
    let fx = cmd(
        &mut st,
        Command::Pin {
            shard: "nope".into(),
            nodes: Some(vec!["a".into()]),
        },
    );
    assert_eq!(
        fx,
        [Effect::Refused(CommandError::UnknownShard("nope".into()))]
    );
    let fx = cmd(
        &mut st,
        Command::Pin {
            shard: "s0".into(),
            nodes: Some(vec!["a".into(), "a".into()]),
        },
    );
    assert_eq!(fx, [Effect::Refused(CommandError::NodeTwice("a".into()))]);
    let fx = cmd(
        &mut st,
        Command::Threshold {
            shard: "s0".into(),
            rps: Some(-1.0),
        },
    );
    assert!(matches!(&fx[..], [Effect::Refused(_)]));
    assert_eq!(st.operator, OperatorView::default());
    let fx = cmd(
        &mut st,
        Command::DrainNode {
            node: "b".into(),
            on: true,
        },
    );
    assert_eq!(actions(&fx), ["drain_node"]);
    assert_eq!(fx.last(), Some(&Effect::PersistOperator));
    assert!(st.operator.drained.contains("b"));
}

#[test]
fn a_dry_run_orders_nothing_and_logs_an_unchanged_plan_once() {
    let mut st = state(1, 4);
    st.apply(Event::Operator {
        command: Command::DryRun(true),
        now: 1,
    });
    for round in 0..3 {
        let fx = computed(&mut st, vec![add("s0", "c", None)], 100 + round);
        assert!(submits(&fx).is_empty());
        let logged = fx
            .iter()
            .filter(|e| matches!(e, Effect::Record(d) if d.dry_run))
            .count();
        assert_eq!(logged, usize::from(round == 0));
        assert!(st.apply(Event::PlanCarriedOut { now: 100 }).is_empty());
    }
    assert_eq!(replica(&st, "s0", "c"), None);
}

#[test]
fn a_refusal_moves_the_version_past_the_target_and_every_proxy_is_behind() {
    let mut st = state(1, 4);
    st.apply(Event::Delivered {
        proxy: "http://p1".into(),
    });
    st.apply(Event::Outranked {
        version: AssignmentVersion::new(1, 50),
        target: "http://p2".into(),
        theirs: AssignmentVersion::new(1, 49),
    });
    assert_eq!(st.version, AssignmentVersion::new(1, 50));
    assert_eq!(st.proxies_behind.len(), 2);
    // An older "past" never moves the version back.
    st.apply(Event::Outranked {
        version: AssignmentVersion::new(1, 3),
        target: "metadata".into(),
        theirs: AssignmentVersion::new(1, 2),
    });
    assert_eq!(st.version, AssignmentVersion::new(1, 50));
}

/// Ten thousand unhosted replicas are not ten thousand orders at once: at
/// most [`plan::REFRESHES_OPEN_MAX`] refreshes are open, the most loaded
/// first, and the next are ordered as those finish.
#[test]
fn refreshes_open_at_once_are_bounded_and_the_most_loaded_go_first() {
    let n = 700; // two replicas each: 1,400 unhosted
    let mut st = state(n, 2);
    st.apply(Event::SyncObserved(Ok(Default::default())));
    let shards: Vec<crate::planner::ShardPlan> = (0..n)
        .map(|i| crate::planner::ShardPlan {
            id: format!("s{i}"),
            target: 2,
            // the last ten are hot: their refreshes rank first
            load_rps: if i >= n - 10 { 5.0 } else { 0.0 },
            predicted_rps: 0.0,
            observed_rps: 0.0,
            threshold: 1.0,
            reason: (i >= n - 10).then_some(Reason::Forecast),
            calm: false,
        })
        .collect();
    st.apply(Event::PlanComputed {
        plan: Plan {
            shards,
            ..Plan::default()
        },
        shards: vec![],
        now: 0,
        tnow: 0,
    });
    let first = submits(&st.apply(Event::PlanCarriedOut { now: 0 }));
    assert_eq!(first.len(), plan::REFRESHES_OPEN_MAX);
    assert!(first[..20]
        .iter()
        .all(|o| o.shard.as_str() >= "s690" && o.reason == Reason::Forecast));
    assert!(first.iter().all(|o| !o.adds_replica));
    for (i, o) in first.iter().enumerate() {
        st.apply(Event::OrderSubmitted {
            order: o.clone(),
            id: i as u64 + 1,
            now: 0,
        });
    }
    // All open: nothing more this round.
    assert!(submits(&st.apply(Event::PlanCarriedOut { now: 1 })).is_empty());
    // One finishes: one more goes out, never one already open.
    st.apply(Event::OrderReported {
        id: 1,
        report: at_sync(OrderState::Done, 1, 1),
        now: 2,
    });
    let next = submits(&st.apply(Event::PlanCarriedOut { now: 3 }));
    assert_eq!(next.len(), 1, "{next:?}");
    assert!(!first
        .iter()
        .skip(1)
        .any(|o| o.shard == next[0].shard && o.node == next[0].node));
}

#[test]
fn cold_evictions_are_bounded_per_round_in_the_plans_order_and_the_rest_follow() {
    let n = 300; // two replicas each, every one hosted and cold: 600
                 // The plan's shards in id order (walked), and in another (searched).
    for sorted in [true, false] {
        let mut st = state(n, 2);
        st.settings.host_baseline = false;
        let held = |st: &State| -> Hosted {
            ["a", "b"]
                .into_iter()
                .map(|node| {
                    let shards = (0..n)
                        .map(|i| format!("s{i}"))
                        .filter(|s| st.hosted.get(node).is_none_or(|m| m.contains_key(s)))
                        .map(|s| {
                            (
                                s,
                                HostedView {
                                    cursor: 1,
                                    rows: 1,
                                    warm: true,
                                },
                            )
                        })
                        .collect();
                    (node.to_string(), shards)
                })
                .collect()
        };
        st.apply(Event::SyncObserved(Ok(held(&st))));
        let mut shards: Vec<crate::planner::ShardPlan> = (0..n)
            .map(|i| crate::planner::ShardPlan {
                id: format!("s{i}"),
                target: 2,
                load_rps: 0.0,
                predicted_rps: 0.0,
                observed_rps: 0.0,
                threshold: 1.0,
                reason: None,
                calm: true,
            })
            .collect();
        if sorted {
            shards.sort_by(|a, b| a.id.cmp(&b.id));
        }
        let order: Vec<String> = shards.iter().map(|p| p.id.clone()).collect();
        st.apply(Event::PlanComputed {
            plan: Plan {
                shards,
                ..Plan::default()
            },
            shards: vec![],
            now: 0,
            tnow: 0,
        });
        let mut evicted: Vec<(String, String)> = vec![];
        for round in 1.. {
            let fx = st.apply(Event::RefreshesOrdered { now: round });
            let batch: Vec<(String, String)> = fx
                .iter()
                .filter_map(|e| match e {
                    Effect::Evict {
                        shard,
                        node,
                        cold: Some(_),
                    } => Some((shard.clone(), node.clone())),
                    _ => None,
                })
                .collect();
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= plan::COLD_EVICTIONS_MAX, "{}", batch.len());
            if round == 1 {
                assert_eq!(batch.len(), plan::COLD_EVICTIONS_MAX);
            }
            // In the plan's order, then the nodes'.
            let rank = |(s, n): &(String, String)| (order.iter().position(|o| o == s), n.clone());
            assert!(
                batch.windows(2).all(|w| rank(&w[0]) < rank(&w[1])),
                "{batch:?}"
            );
            for (shard, node) in &batch {
                st.apply(Event::Evicted {
                    shard: shard.clone(),
                    node: node.clone(),
                    detail: "cold".into(),
                    now: round,
                });
            }
            evicted.extend(batch);
            // The nodes report what they still hold.
            st.apply(Event::SyncObserved(Ok(held(&st))));
        }
        evicted.sort();
        let all = evicted.len();
        evicted.dedup();
        assert_eq!(
            (all, evicted.len()),
            (2 * n, 2 * n),
            "each replica evicted once"
        );
    }
}
