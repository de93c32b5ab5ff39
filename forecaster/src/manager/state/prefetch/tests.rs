//! The pre-fetch accounting through `State::apply`: episodes open, rise
//! and close with the plans; a demand pre-fetch counts once, by when sync
//! finished it against the rise.

use shardmap::contract::manager::PrefetchView;
use shardmap::contract::OrderState;

use super::super::tests::{at_sync, state};
use super::super::{Effect, Event, OrderReport, ShardDemand, State};
use crate::planner::{Action, Demand, Plan, Reason, ShardPlan};

const THRESHOLD: f64 = 1.0;

/// One round's plan for shard `s0`: hot for `hot` (the plan's reason),
/// `observed` req/s against a threshold of 1, and `actions`.
fn plan(
    st: &mut State,
    now: i64,
    hot: Option<Reason>,
    observed: f64,
    actions: Vec<Action>,
) -> Vec<Effect> {
    let shard = ShardPlan {
        id: "s0".into(),
        target: if hot.is_some() { 3 } else { 2 },
        load_rps: observed,
        predicted_rps: 0.0,
        observed_rps: observed,
        threshold: THRESHOLD,
        reason: hot,
        calm: false,
    };
    st.apply(Event::PlanComputed {
        plan: Plan {
            actions,
            shards: vec![shard],
            ..Plan::default()
        },
        shards: vec![ShardDemand {
            id: "s0".into(),
            threshold: THRESHOLD,
            demand: Demand {
                observed_rps: observed,
                ..Demand::default()
            },
        }],
        now,
        tnow: now,
    })
}

fn add(node: &str, reason: Reason) -> Action {
    Action::Add {
        shard: "s0".into(),
        node: node.into(),
        reason,
        priority: 1.0,
        deadline_ms: 0,
        replaces: None,
        over_capacity: false,
        detail: "test".into(),
    }
}

/// A hot plan that adds a replica on `node` for `reason`, taken by sync as `id`.
fn prefetch(st: &mut State, now: i64, node: &str, reason: Reason, observed: f64, id: u64) {
    let fx = plan(st, now, Some(reason), observed, vec![add(node, reason)]);
    let order = fx
        .into_iter()
        .find_map(|e| match e {
            Effect::Submit(o) => Some(o),
            _ => None,
        })
        .expect("an order");
    st.apply(Event::OrderSubmitted { order, id, now });
}

/// Sync reports order `id` done, finished at `finished`, in the round at `now`.
fn finished(st: &mut State, id: u64, finished: i64, now: i64) {
    let OrderReport::Found(mut o) = at_sync(OrderState::Done, 10, 1_000) else {
        unreachable!()
    };
    o.id = id;
    o.finished_unix_ms = Some(finished as u64);
    st.apply(Event::OrderReported {
        id,
        report: OrderReport::Found(o),
        now,
    });
}

fn counts(st: &State) -> (u64, u64, u64, u64, u64) {
    let p = &st.prefetch.view;
    (
        p.warm_before_rise,
        p.warm_after_rise,
        p.no_rise,
        p.rises,
        p.rises_met_warm,
    )
}

#[test]
fn a_forecast_prefetch_warm_before_the_rise_counts_when_the_rise_comes() {
    let mut st = state(1, 4);
    prefetch(&mut st, 100, "c", Reason::Forecast, 0.0, 7);
    finished(&mut st, 7, 150, 200);
    // Warm, but the rise has not come: nothing is counted yet.
    assert_eq!(counts(&st), (0, 0, 0, 0, 0));
    plan(&mut st, 200, Some(Reason::Forecast), 0.4, vec![]);
    assert_eq!(counts(&st), (0, 0, 0, 0, 0));
    // Observed demand crosses the threshold: the rise, met warm.
    plan(&mut st, 300, Some(Reason::Load), 2.0, vec![]);
    assert_eq!(counts(&st), (1, 0, 0, 1, 1));
    assert_eq!(st.prefetch.episode("s0").and_then(|e| e.risen()), Some(300));
    // Still above: the same rise.
    plan(&mut st, 400, Some(Reason::Load), 3.0, vec![]);
    assert_eq!(counts(&st), (1, 0, 0, 1, 1));
    assert_eq!(
        st.prefetch.view.by_reason,
        [(Reason::Forecast, 1)].into_iter().collect()
    );
}

#[test]
fn finished_before_the_rise_but_reported_after_it_is_still_before() {
    let mut st = state(1, 4);
    prefetch(&mut st, 100, "c", Reason::Forecast, 0.0, 7);
    plan(&mut st, 300, Some(Reason::Load), 2.0, vec![]);
    assert_eq!(counts(&st), (0, 0, 0, 1, 0), "a cold rise, so far");
    // Sync finished at 250, before the rise at 300; heard of at 400.
    finished(&mut st, 7, 250, 400);
    assert_eq!(counts(&st), (1, 0, 0, 1, 1));
}

#[test]
fn a_prefetch_that_lands_after_the_rise_is_late() {
    let mut st = state(1, 4);
    prefetch(&mut st, 100, "c", Reason::Forecast, 0.0, 7);
    plan(&mut st, 300, Some(Reason::Load), 2.0, vec![]);
    finished(&mut st, 7, 300, 400);
    assert_eq!(counts(&st), (0, 1, 0, 1, 0));
}

#[test]
fn a_load_prefetch_is_ordered_at_the_rise_and_so_never_before_it() {
    let mut st = state(1, 4);
    prefetch(&mut st, 100, "c", Reason::Load, 2.0, 7);
    assert_eq!(counts(&st), (0, 0, 0, 1, 0));
    finished(&mut st, 7, 150, 200);
    assert_eq!(counts(&st), (0, 1, 0, 1, 0));
    assert_eq!(st.prefetch.view.driven_by(Reason::Load), 1);
    assert_eq!(st.prefetch.view.driven_by(Reason::Forecast), 0);
}

#[test]
fn an_episode_that_ends_without_a_rise_counts_its_prefetches_as_no_rise() {
    let mut st = state(1, 4);
    prefetch(&mut st, 100, "c", Reason::Forecast, 0.0, 7);
    finished(&mut st, 7, 150, 200);
    // Not hot any more, but observed above threshold × scale_in_ratio
    // (0.5): the episode stays open.
    plan(&mut st, 200, None, 0.7, vec![]);
    assert!(st.prefetch.episode("s0").is_some());
    assert_eq!(counts(&st), (0, 0, 0, 0, 0));
    // Calm: it closes without a rise.
    plan(&mut st, 300, None, 0.2, vec![]);
    assert!(st.prefetch.episode("s0").is_none());
    assert_eq!(counts(&st), (0, 0, 1, 0, 0));
}

#[test]
fn an_order_that_outlives_its_episode_counts_for_no_later_one() {
    let mut st = state(1, 4);
    prefetch(&mut st, 100, "c", Reason::Forecast, 0.0, 7);
    plan(&mut st, 200, None, 0.0, vec![]);
    // The next episode rises; the old order finishes before that rise.
    plan(&mut st, 300, Some(Reason::Forecast), 0.0, vec![]);
    finished(&mut st, 7, 350, 360);
    plan(&mut st, 400, Some(Reason::Load), 2.0, vec![]);
    assert_eq!(counts(&st), (0, 0, 1, 1, 0));
}

#[test]
fn failed_orders_warm_nothing_and_other_reasons_count_only_by_reason() {
    let mut st = state(1, 4);
    prefetch(&mut st, 100, "c", Reason::Forecast, 0.0, 7);
    st.apply(Event::OrderReported {
        id: 7,
        report: at_sync(OrderState::Cancelled, 0, 0),
        now: 150,
    });
    plan(&mut st, 300, Some(Reason::Load), 2.0, vec![]);
    assert_eq!(counts(&st), (0, 0, 0, 1, 0));
    // A replica restored after a failure: a pre-fetch, not for a rise.
    prefetch(&mut st, 400, "d", Reason::Failure, 2.0, 8);
    finished(&mut st, 8, 350, 450);
    assert_eq!(counts(&st), (0, 0, 0, 1, 0));
    assert_eq!(
        st.prefetch.view,
        PrefetchView {
            by_reason: [(Reason::Forecast, 1), (Reason::Failure, 1)]
                .into_iter()
                .collect(),
            rises: 1,
            ..PrefetchView::default()
        }
    );
}

#[test]
fn each_shard_has_its_own_episode() {
    let mut st = state(2, 4);
    prefetch(&mut st, 100, "c", Reason::Forecast, 0.0, 7);
    finished(&mut st, 7, 150, 200);
    // s1 rises with no pre-fetch; s0 has not risen.
    st.apply(Event::PlanComputed {
        plan: Plan::default(),
        shards: vec![ShardDemand {
            id: "s1".into(),
            threshold: THRESHOLD,
            demand: Demand {
                observed_rps: 5.0,
                ..Demand::default()
            },
        }],
        now: 300,
        tnow: 300,
    });
    assert_eq!(counts(&st), (0, 0, 0, 1, 0));
    assert!(st
        .prefetch
        .episode("s0")
        .is_some_and(|e| e.risen().is_none()));
}
