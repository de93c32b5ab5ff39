//! The order life cycle: submitted → queued/running → done (an add's
//! replica turns serving; a move's old replica starts leaving), or failed
//! (timed out, cancelled by sync, lost: an add's warming replica is
//! withdrawn), or cancelled (its replica's node went down).

use shardmap::contract::manager::{OrderView, TrackedState};
use shardmap::contract::{Order, OrderState};
use shardmap::control::ReplicaAssignment;
use shardmap::table::ReplicaState;

use super::{Decision, Effect, State, ORDERS_KEPT};
use crate::planner::Reason;

/// A pre-fetch order to send to sync.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderRequest {
    pub shard: String,
    pub node: String,
    pub priority: f64,
    /// Real time, Unix ms.
    pub deadline_unix_ms: i64,
    pub reason: Reason,
    /// A move: this node's replica drains once the new one serves.
    pub replaces: Option<String>,
    /// An add puts a warming replica in the table; a refresh re-fills the
    /// cache of one already there.
    pub adds_replica: bool,
    /// The plan's decision for an add (its detail gets the order id).
    pub decision: Option<Decision>,
}

/// Sync's answer about one order.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderReport {
    /// The order as sync holds it (its state decides what happens).
    Found(Box<Order>),
    /// Sync does not know the order (it lost it).
    Missing(String),
    /// No usable answer (none, or one that is not an order: a version
    /// sync and the manager do not share); ask again next round.
    Unreachable(String),
}

/// How a finished order ended, as far as the manager learnt it.
struct Finished {
    rows: u64,
    bytes: u64,
    /// When sync finished it (real time, Unix ms), if it said.
    at: Option<i64>,
    deadline_met: Option<bool>,
    /// The detail to log instead of the counts (they are not known).
    note: Option<&'static str>,
}

/// The detail of an order sync no longer lists whose shard its node holds
/// warm.
pub const FORGOTTEN_BUT_WARM: &str =
    "done: sync no longer lists the order (it keeps a bounded history of finished ones), and its node holds the shard warm";

impl State {
    pub(super) fn push_order(&mut self, o: OrderView) {
        if self.orders.len() >= ORDERS_KEPT {
            if let Some(i) = self.orders.iter().position(|o| !o.state.is_open()) {
                self.orders.remove(i);
            }
        }
        self.orders.push_back(o);
    }

    pub(super) fn submitted(&mut self, o: OrderRequest, id: u64, now: i64, fx: &mut Vec<Effect>) {
        let view = OrderView {
            id,
            shard: o.shard.clone(),
            node: o.node.clone(),
            state: TrackedState::Queued,
            priority: o.priority,
            deadline_unix_ms: Some(o.deadline_unix_ms),
            submitted_unix_ms: now,
            finished_unix_ms: None,
            rows: 0,
            bytes: 0,
            reason: o.reason,
            replaces: o.replaces.clone(),
            adds_replica: o.adds_replica,
            deadline_met: None,
        };
        self.prefetch.ordered(&o, id);
        if o.adds_replica {
            let reps = self.replicas.or_default(&o.shard);
            if !reps.iter().any(|r| r.node == o.node) {
                reps.push(ReplicaAssignment {
                    node: o.node.clone(),
                    state: ReplicaState::Warming,
                });
            }
            self.push_order(view);
            if let Some(mut d) = o.decision {
                d.detail = format!("{} (order {id})", d.detail);
                fx.push(Effect::Record(d));
            }
            self.dirty = true;
        } else {
            self.push_order(view);
            fx.push(Effect::Record(Decision {
                at_unix_ms: now,
                action: "refresh",
                shard: o.shard,
                node: o.node,
                reason: o.reason,
                detail: format!("replica not in its node's cache (order {id})"),
                dry_run: false,
            }));
        }
    }

    pub(super) fn refused(&mut self, o: OrderRequest, e: String, fx: &mut Vec<Effect>) {
        self.outcomes.refused += 1;
        if let Some(mut d) = o.decision.filter(|_| o.adds_replica) {
            d.action = "add_failed";
            d.detail = format!("pre-fetch order refused: {e}");
            fx.push(Effect::Record(d));
        }
    }

    /// Update one tracked order from sync's answer; an order overdue
    /// ([`super::admission::Admission::overdue`]) is cancelled at sync.
    pub(super) fn reported(
        &mut self,
        id: u64,
        report: OrderReport,
        now: i64,
        fx: &mut Vec<Effect>,
    ) {
        let Some(i) = self.orders.iter().position(|o| o.id == id) else {
            return;
        };
        let timeout = self.settings.order_timeout;
        match report {
            OrderReport::Found(o) => match o.state {
                OrderState::Done => {
                    self.admission.finished(id, now);
                    let end = Finished {
                        rows: o.rows,
                        bytes: o.bytes,
                        at: o.finished_unix_ms.map(|t| t as i64),
                        deadline_met: o.report.and_then(|r| r.deadline_met),
                        note: None,
                    };
                    self.done(i, end, now, fx)
                }
                OrderState::Cancelled => {
                    self.admission.finished(id, now);
                    self.fail(i, now, "cancelled by sync", fx)
                }
                state @ (OrderState::Queued | OrderState::Running) => {
                    if state == OrderState::Running {
                        let at = o.started_unix_ms.map_or(now, |t| t as i64);
                        self.admission.started(id, at, now);
                    }
                    let tracked = &mut self.orders[i];
                    tracked.state = state.into();
                    tracked.rows = o.rows;
                    tracked.bytes = o.bytes;
                    if let Some(why) = self.admission.overdue(&self.orders[i], timeout, now) {
                        self.fail(i, now, &why, fx);
                        fx.push(Effect::Cancel { id });
                    }
                }
            },
            OrderReport::Missing(_) if self.warm_at_sync(i) => {
                // Sync keeps a bounded history of finished orders and can
                // drop one before this round asks for it; the copy it made
                // is what matters, and sync's list of what its nodes hold
                // (read this round) has it warm.
                self.admission.finished(id, now);
                let end = Finished {
                    rows: 0,
                    bytes: 0,
                    at: None,
                    deadline_met: None,
                    note: Some(FORGOTTEN_BUT_WARM),
                };
                self.done(i, end, now, fx)
            }
            OrderReport::Missing(e) => {
                let overdue = self.admission.overdue(&self.orders[i], timeout, now);
                self.fail(i, now, &e, fx);
                if overdue.is_some() {
                    fx.push(Effect::Cancel { id });
                }
            }
            OrderReport::Unreachable(e) => {
                if let Some(why) = self.admission.overdue(&self.orders[i], timeout, now) {
                    self.fail(i, now, &format!("{why}; sync: {e}"), fx);
                    fx.push(Effect::Cancel { id });
                }
            }
        }
    }

    /// Whether sync's nodes, as read this round, hold tracked order `i`'s
    /// shard warm on its node.
    fn warm_at_sync(&self, i: usize) -> bool {
        let o = &self.orders[i];
        self.sync_error.is_none()
            && self
                .hosted
                .get(&o.node)
                .and_then(|m| m.get(&o.shard))
                .is_some_and(|h| h.warm)
    }

    fn done(&mut self, i: usize, end: Finished, now: i64, fx: &mut Vec<Effect>) {
        let Finished {
            rows,
            bytes,
            at: finished,
            deadline_met,
            note,
        } = end;
        self.outcomes.done += 1;
        let o = &mut self.orders[i];
        o.state = TrackedState::Done;
        o.rows = rows;
        o.bytes = bytes;
        o.finished_unix_ms = finished.or(Some(now));
        o.deadline_met = deadline_met;
        let o = o.clone();
        if o.rows > 0 {
            let bpr = o.bytes as f64 / o.rows as f64;
            self.bytes_per_row = Some(match self.bytes_per_row {
                Some(b) => 0.8 * b + 0.2 * bpr,
                None => bpr,
            });
        }
        let mut detail = format!(
            "order {} done: {} rows, {} bytes in {} ms",
            o.id,
            o.rows,
            o.bytes,
            o.finished_unix_ms.unwrap_or(now) - o.submitted_unix_ms
        );
        if let Some(n) = note {
            detail = format!("order {}: {n}", o.id);
        }
        if let Some(m) = o.deadline_met {
            detail.push_str(if m {
                ", deadline met"
            } else {
                ", deadline missed"
            });
        }
        let action = if o.adds_replica {
            let mut promoted = false;
            if let Some(reps) = self.replicas.get_mut(&o.shard) {
                for r in reps.iter_mut().filter(|r| r.node == o.node) {
                    if r.state == ReplicaState::Warming {
                        r.state = ReplicaState::Serving;
                        promoted = true;
                    }
                }
            }
            if !promoted {
                return;
            }
            self.dirty = true;
            if let Some(old) = &o.replaces {
                self.leaving
                    .entry(o.shard.clone())
                    .or_default()
                    .insert(old.clone());
            }
            "serve"
        } else {
            "refreshed"
        };
        self.prefetch.done(o.id, o.finished_unix_ms.unwrap_or(now));
        fx.push(Effect::Record(Decision {
            at_unix_ms: now,
            action,
            shard: o.shard,
            node: o.node,
            reason: o.reason,
            detail,
            dry_run: false,
        }));
    }

    /// The order failed: an add's warming replica is withdrawn.
    fn fail(&mut self, i: usize, now: i64, why: &str, fx: &mut Vec<Effect>) {
        self.outcomes.failed += 1;
        let o = &mut self.orders[i];
        o.state = TrackedState::Failed;
        o.finished_unix_ms = Some(now);
        let o = o.clone();
        self.prefetch.gone(o.id);
        self.admission.gone(o.id);
        if o.adds_replica {
            if let Some(reps) = self.replicas.get_mut(&o.shard) {
                let before = reps.len();
                reps.retain(|r| !(r.node == o.node && r.state == ReplicaState::Warming));
                self.dirty |= reps.len() != before;
            }
        }
        fx.push(Effect::Record(Decision {
            at_unix_ms: now,
            action: "order_failed",
            shard: o.shard,
            node: o.node,
            reason: o.reason,
            detail: format!("order {}: {why}; warming replica withdrawn", o.id),
            dry_run: false,
        }));
    }
}
