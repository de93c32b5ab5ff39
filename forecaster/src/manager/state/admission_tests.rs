//! Admission in the state machine: orders open at sync are bounded, what
//! is held back goes out as room frees, and an order is given up on for
//! what it did at sync, not for waiting in its queue.

use shardmap::contract::{Order, OrderState};
use shardmap::table::ReplicaState::Warming;

use super::admission::Admission;
use super::tests::{actions, add, computed, ordered, replica, state, submits, TIMEOUT_MS};
use super::*;

/// Order `id` (shard `s<id>` on node c) as sync holds it.
fn at_sync(id: u64, state: OrderState, started: Option<u64>) -> OrderReport {
    OrderReport::Found(Box::new(Order {
        id,
        shard: format!("s{id}"),
        node: "c".into(),
        priority: 1.0,
        deadline_unix_ms: None,
        state,
        submitted_unix_ms: 0,
        started_unix_ms: started,
        finished_unix_ms: None,
        cursor: 0,
        rows: 0,
        bytes: 0,
        last_error: None,
        reason: None,
        report: None,
        epoch: 1,
    }))
}

fn report(st: &mut State, id: u64, r: OrderReport, now: i64) -> Vec<Effect> {
    st.apply(Event::OrderReported { id, report: r, now })
}

#[test]
fn orders_open_at_sync_are_capped_and_the_rest_go_out_as_room_frees() {
    let mut st = state(8, 10);
    st.admission = Admission::new(3);
    st.apply(Event::SyncObserved(Ok(Default::default())));
    assert_eq!(st.order_room(0), 3);
    // The planner is given the room (the round lowers its churn budget to
    // it); whatever it is given, the state orders no more than the room.
    let fx = computed(
        &mut st,
        (0..5).map(|i| add(&format!("s{i}"), "c", None)).collect(),
        0,
    );
    let out = submits(&fx);
    assert_eq!(
        out.iter().map(|o| o.shard.as_str()).collect::<Vec<_>>(),
        ["s0", "s1", "s2"],
        "the plan's first three, in its order"
    );
    assert_eq!(
        actions(&fx).iter().filter(|a| **a == "add_failed").count(),
        2
    );
    for (i, o) in out.into_iter().enumerate() {
        st.apply(Event::OrderSubmitted {
            order: o,
            id: i as u64,
            now: 0,
        });
    }
    assert_eq!(st.in_flight(), 3);
    assert_eq!(st.order_room(0), 0);
    // No room: no refreshes either, though every replica is unhosted.
    assert!(submits(&st.apply(Event::PlanCarriedOut { now: 0 })).is_empty());
    let v = st.admission_view(0);
    assert_eq!((v.limit, v.cap, v.in_flight), (3, 3, 3));
    // One finishes: room for one.
    report(&mut st, 0, at_sync(0, OrderState::Done, Some(1)), 10);
    assert_eq!(st.order_room(10), 1);
    let fx = computed(&mut st, vec![add("s4", "c", None)], 10);
    assert_eq!(submits(&fx).len(), 1);
}

#[test]
fn the_limit_follows_what_sync_finishes_below_the_cap() {
    let mut st = state(1, 1);
    st.admission = Admission::new(1000);
    let timeout = st.settings.order_timeout;
    // 2 orders a second for the rate window: 2/s × half the timeout (5 s)
    // is 10 — the floor (64) then, as sync keeps its slots busy.
    for i in 0..60 {
        st.admission.finished(i, i as i64 * 500);
    }
    assert_eq!(st.admission.limit(timeout, 30_000), admission::LIMIT_FLOOR);
}

/// The wave's tail: an order waiting in sync's queue while sync works
/// through the orders ahead of it is not failed, however long it waits.
#[test]
fn a_queued_order_is_not_timed_out_while_sync_moves_the_queue() {
    let mut st = state(4, 4);
    for id in 1..=3 {
        ordered(&mut st, &format!("s{id}"), "c", None, id, 0);
    }
    // Sync finishes one order a third of a timeout, order 3 still queued.
    let step = TIMEOUT_MS / 3;
    report(
        &mut st,
        1,
        at_sync(1, OrderState::Running, Some(step as u64)),
        step,
    );
    report(
        &mut st,
        1,
        at_sync(1, OrderState::Done, Some(step as u64)),
        2 * step,
    );
    report(
        &mut st,
        2,
        at_sync(2, OrderState::Running, Some(2 * step as u64)),
        2 * step,
    );
    report(
        &mut st,
        2,
        at_sync(2, OrderState::Done, Some(2 * step as u64)),
        3 * step,
    );
    let late = 3 * step + TIMEOUT_MS / 2;
    assert!(late > TIMEOUT_MS, "past the timeout since submission");
    let fx = report(&mut st, 3, at_sync(3, OrderState::Queued, None), late);
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(replica(&st, "s3", "c"), Some(Warming));
    assert_eq!(st.outcomes.failed, 0);

    // Then sync moves nothing for the timeout: a stalled queue fails it.
    let stalled = 3 * step + TIMEOUT_MS + 1;
    let fx = report(&mut st, 3, at_sync(3, OrderState::Queued, None), stalled);
    assert_eq!(actions(&fx), ["order_failed"]);
    assert!(fx.contains(&Effect::Cancel { id: 3 }));
    assert_eq!(replica(&st, "s3", "c"), None);
}

/// A running order is judged from when sync started it: one that does not
/// finish within the timeout fails and is cancelled, however busy sync is
/// with other orders meanwhile.
#[test]
fn a_running_order_not_done_within_the_timeout_of_its_start_fails() {
    let mut st = state(4, 4);
    for id in 1..=2 {
        ordered(&mut st, &format!("s{id}"), "c", None, id, 0);
    }
    let start = 5_000;
    report(
        &mut st,
        1,
        at_sync(1, OrderState::Running, Some(start as u64)),
        start + 100,
    );
    // Sync keeps finishing others (order 2, and its queue moves) ...
    report(
        &mut st,
        2,
        at_sync(2, OrderState::Done, Some(10)),
        start + TIMEOUT_MS - 10,
    );
    // ... order 1 is still running at its start + the timeout: stuck.
    let fx = report(
        &mut st,
        1,
        at_sync(1, OrderState::Running, Some(start as u64)),
        start + TIMEOUT_MS - 1,
    );
    assert!(fx.is_empty(), "{fx:?}");
    let fx = report(
        &mut st,
        1,
        at_sync(1, OrderState::Running, Some(start as u64)),
        start + TIMEOUT_MS + 1,
    );
    assert_eq!(actions(&fx), ["order_failed"]);
    assert!(fx.contains(&Effect::Cancel { id: 1 }));
    assert_eq!(replica(&st, "s1", "c"), None);
    assert_eq!(st.in_flight(), 0);
}

/// Sync unreachable (paused, down): nothing moves, so a queued order fails
/// once the timeout passed since it was submitted or sync last moved.
#[test]
fn an_order_at_an_unreachable_sync_fails_after_the_timeout() {
    let mut st = state(2, 4);
    ordered(&mut st, "s1", "c", None, 1, 0);
    let down = || OrderReport::Unreachable("connection refused".into());
    assert!(report(&mut st, 1, down(), TIMEOUT_MS).is_empty());
    let fx = report(&mut st, 1, down(), TIMEOUT_MS + 1);
    assert_eq!(actions(&fx), ["order_failed"]);
    assert!(fx.contains(&Effect::Cancel { id: 1 }));
}
