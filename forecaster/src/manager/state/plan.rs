//! A plan carried into the state: drops and drains at once, additions as
//! orders to submit (a warming replica enters the table when sync takes the
//! order), then refreshes of replicas the caches lack and evictions of
//! shards that cooled.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use shardmap::table::ReplicaState;

use super::walk::{seek, Walk};
use super::{Decision, Effect, OrderRequest, State, TrackedState};
use crate::planner::{Action, Plan, Reason};

/// Refresh orders open at sync at once, at most. Sync copies a few shards
/// at a time within its bandwidth budget, so more would only queue there,
/// and every open order is followed each round: at 10k shards the forecast
/// can find ten thousand replicas unhosted in one round, and ordering them
/// all made a round seconds long. The most loaded go first; the rest are
/// ordered in later rounds as these finish (their replicas keep serving,
/// filling on miss, meanwhile).
pub const REFRESHES_OPEN_MAX: usize = shardmap::contract::MAX_BATCH;

/// Cold evictions ordered in one round, at most. A new forecast set can
/// cool hundreds of shards at once, and each eviction is its own call to
/// sync, a few at a time: at 10k shards, a round that sent 256 waited
/// 128–145 ms on them (the scale run's slow-round log), more than the rest
/// of the round. A cooled shard's copy costs only its node's memory (its
/// replica fills on miss either way), so the rest are evicted in the next
/// planning rounds, a second apart, the nodes still reporting them held:
/// five or six rounds for what one new set cools at 10k shards (~650
/// copies in the manager_round bench).
pub const COLD_EVICTIONS_MAX: usize = 128;

impl State {
    /// `(shard, node)` of every open order.
    fn open_pairs(&self) -> HashSet<(&str, &str)> {
        self.orders
            .iter()
            .filter(|o| o.state.is_open())
            .map(|o| (o.shard.as_str(), o.node.as_str()))
            .collect()
    }

    /// The plan's actions; `now` is real time, `tnow` the plan's clock time.
    pub(super) fn carry_out(&mut self, plan: &Plan, now: i64, tnow: i64, fx: &mut Vec<Effect>) {
        if self.operator.dry_run {
            self.round_dry = true;
            let key: Vec<_> = plan
                .actions
                .iter()
                .map(|a| {
                    (
                        a.kind(),
                        a.shard().to_string(),
                        a.node().to_string(),
                        a.reason(),
                    )
                })
                .collect();
            if self.last_dry_actions != key {
                for a in &plan.actions {
                    fx.push(Effect::Record(decision(a, now, tnow, true)));
                }
                self.last_dry_actions = key;
            }
            return;
        }
        self.round_dry = false;
        self.last_dry_actions.clear();
        // Additions of this plan not yet in the table (their orders are out).
        let mut adding: BTreeSet<(String, String)> = BTreeSet::new();
        // The planner was given no more additions than this; the state
        // holds to it whatever it is given.
        let room = self.order_room(now);
        for a in &plan.actions {
            match a {
                Action::Drop { shard, node, .. } => {
                    if let Some(reps) = self.replicas.get_mut(shard) {
                        reps.retain(|r| r.node != *node);
                    }
                    self.draining_since.remove(&(shard.clone(), node.clone()));
                    if let Some(l) = self.leaving.get_mut(shard) {
                        l.remove(node);
                    }
                    let open = self.open_order(shard, node).map(|o| o.id);
                    if let Some(id) = open {
                        if let Some(o) = self.orders.iter_mut().find(|o| o.id == id) {
                            o.state = TrackedState::Cancelled;
                        }
                        self.outcomes.cancelled += 1;
                        self.prefetch.gone(id);
                        self.admission.gone(id);
                    }
                    fx.push(Effect::Record(decision(a, now, tnow, false)));
                    self.dirty = true;
                    if let Some(id) = open {
                        fx.push(Effect::Cancel { id });
                    }
                }
                Action::Drain { shard, node, .. } => {
                    let mut did = false;
                    if let Some(reps) = self.replicas.get_mut(shard) {
                        for r in reps.iter_mut().filter(|r| r.node == *node) {
                            if r.state != ReplicaState::Draining {
                                r.state = ReplicaState::Draining;
                                did = true;
                            }
                        }
                    }
                    if did {
                        self.draining_since
                            .insert((shard.clone(), node.clone()), (now, a.reason()));
                        if let Some(l) = self.leaving.get_mut(shard) {
                            l.remove(node);
                        }
                        fx.push(Effect::Record(decision(a, now, tnow, false)));
                        self.dirty = true;
                    }
                }
                Action::Add {
                    shard,
                    node,
                    reason,
                    priority,
                    deadline_ms,
                    replaces,
                    ..
                } => {
                    let d = decision(a, now, tnow, false);
                    // The planner never asks for these; the state keeps its
                    // invariants whatever it is asked.
                    let refusal = if self
                        .replicas
                        .get(shard)
                        .is_some_and(|r| r.iter().any(|r| r.node == *node))
                        || adding.contains(&(shard.clone(), node.clone()))
                    {
                        Some(format!("the shard already has a replica on {node}"))
                    } else if let Some(o) = self.open_order(shard, node) {
                        Some(format!("order {} for this shard and node is open", o.id))
                    } else if adding.len() >= self.settings.churn_budget {
                        Some("over the churn budget of this round".to_string())
                    } else if adding.len() >= room {
                        Some(format!(
                            "{} orders open at sync, the admission limit",
                            self.in_flight()
                        ))
                    } else {
                        None
                    };
                    if let Some(why) = refusal {
                        fx.push(Effect::Record(Decision {
                            action: "add_failed",
                            detail: format!("not ordered: {why}"),
                            ..d
                        }));
                        continue;
                    }
                    adding.insert((shard.clone(), node.clone()));
                    fx.push(Effect::Submit(OrderRequest {
                        shard: shard.clone(),
                        node: node.clone(),
                        priority: *priority,
                        deadline_unix_ms: self.settings.clock.to_real(*deadline_ms),
                        reason: *reason,
                        replaces: replaces.clone(),
                        adds_replica: true,
                        decision: Some(d),
                    }));
                }
            }
        }
    }

    /// Replicas in the table that their node's cache does not hold: order a
    /// copy, keeping them serving meanwhile (the node fills on miss). With
    /// `host_baseline` every replica is kept hosted (a fresh start, a lost
    /// cache); without, only the replicas of shards that are hot now.
    pub(super) fn refresh_unhosted(&mut self, now: i64, fx: &mut Vec<Effect>) {
        if self.round_dry || self.sync_error.is_some() {
            return;
        }
        let Some(plan) = &self.last_plan else { return };
        let open_refreshes = self
            .orders
            .iter()
            .filter(|o| o.state.is_open() && !o.adds_replica)
            .count();
        let room = REFRESHES_OPEN_MAX
            .saturating_sub(open_refreshes)
            .min(self.order_room(now));
        if room == 0 {
            // As many open as allowed (the usual case while thousands of
            // shards are hot): nothing to order, so nothing to look for
            // (the count held back stays the last one made).
            return;
        }
        let open = self.open_pairs();
        // Candidates by reference first: only the `room` most urgent become
        // orders (a round can find thousands of hot replicas unhosted).
        let mut refreshes: Vec<(f64, &str, &str, Reason, i64)> = vec![];
        // The planner's shards come in id order: the maps are walked, not
        // searched per shard.
        let in_order = plan.shards.windows(2).all(|w| w[0].id < w[1].id);
        let mut demand = Walk::ordered(&self.demand, in_order);
        let mut replicas = Walk::ordered(&self.replicas, in_order);
        // Each node's cache, walked in the same order.
        let mut caches: BTreeMap<&str, Walk<_>> = self
            .hosted
            .iter()
            .map(|(n, m)| (n.as_str(), Walk::ordered(m, in_order)))
            .collect();
        for p in &plan.shards {
            let hot = p
                .reason
                .filter(|r| matches!(r, Reason::Forecast | Reason::Load))
                .map(|r| (r, p.load_rps));
            let (reason, priority, deadline) = match (self.settings.host_baseline, hot) {
                (_, Some((r, load))) => {
                    let rise = demand
                        .get(&p.id)
                        .map_or(now, |d| self.settings.clock.to_real(d.rise_at_ms));
                    (r, load.max(0.01) * 10.0, rise.max(now + 1000))
                }
                (true, None) => (Reason::Initial, 0.01, now + 60_000),
                (false, None) => continue,
            };
            for r in replicas.get(&p.id).into_iter().flatten() {
                let healthy = self.nodes.get(&r.node).is_some_and(|n| n.healthy);
                let hosted = caches
                    .get_mut(r.node.as_str())
                    .is_some_and(|w| w.get(&p.id).is_some());
                if r.state == ReplicaState::Serving
                    && healthy
                    && !hosted
                    && !open.contains(&(p.id.as_str(), r.node.as_str()))
                {
                    refreshes.push((priority, &p.id, &r.node, reason, deadline));
                }
            }
        }
        // Stable: equal priorities keep the plan's order.
        refreshes.sort_by(|a, b| b.0.total_cmp(&a.0));
        self.admission.refreshes_held = refreshes.len().saturating_sub(room);
        fx.extend(refreshes.into_iter().take(room).map(
            |(priority, shard, node, reason, deadline)| {
                Effect::Submit(OrderRequest {
                    shard: shard.to_string(),
                    node: node.to_string(),
                    priority,
                    deadline_unix_ms: deadline,
                    reason,
                    replaces: None,
                    adds_replica: false,
                    decision: None,
                })
            },
        ));
    }

    /// Without `host_baseline`: shards that cooled down (not hot, observed
    /// demand below the scale-in level) leave the node caches; their
    /// replicas keep serving by filling on miss. The first
    /// [`COLD_EVICTIONS_MAX`] in the plan's order go this round.
    pub(super) fn evict_cold(&mut self, _now: i64, fx: &mut Vec<Effect>) {
        if self.round_dry || self.settings.host_baseline || self.sync_error.is_some() {
            return;
        }
        let Some(plan) = &self.last_plan else { return };
        let open = self.open_pairs();
        // A cooled shard matters only where a node holds it: the pass goes
        // over what the nodes hold (a few hundred shards once most are cold
        // and evicted, thousands in a cold fill), each found in the plan (in
        // id order) by a search from where the node's last shard was found
        // (a node's shards come in id order too), not over the plan's ten
        // thousand shards.
        let in_order = plan.shards.windows(2).all(|w| w[0].id < w[1].id);
        let mut held: Vec<(usize, &str)> = vec![];
        if in_order {
            for (node, m) in &self.hosted {
                let mut from = 0;
                for shard in m.keys() {
                    match seek(&plan.shards, from, shard, |p| &p.id) {
                        Ok(i) => {
                            held.push((i, node.as_str()));
                            from = i + 1;
                        }
                        Err(i) => from = i,
                    }
                }
            }
            // The plan's order, then the nodes' names (`hosted`'s order).
            held.sort_unstable();
        } else {
            let mut holders: HashMap<&str, Vec<&str>> = HashMap::new();
            for (node, m) in &self.hosted {
                for shard in m.keys() {
                    holders
                        .entry(shard.as_str())
                        .or_default()
                        .push(node.as_str());
                }
            }
            for (i, p) in plan.shards.iter().enumerate() {
                for &node in holders.get(p.id.as_str()).into_iter().flatten() {
                    held.push((i, node));
                }
            }
        }
        // The last shard judged: (its place in the plan, its eviction's
        // detail when it cooled).
        let mut judged: Option<(usize, Option<String>)> = None;
        // Judged in the plan's order: the demand and thresholds are walked.
        let mut demand = Walk::ordered(&self.demand, in_order);
        let mut thresholds = Walk::ordered(&self.thresholds, in_order);
        let mut evictions = 0;
        for (i, node) in held {
            if evictions == COLD_EVICTIONS_MAX {
                break;
            }
            if judged.as_ref().is_none_or(|(j, _)| *j != i) {
                let p = &plan.shards[i];
                let hot = matches!(p.reason, Some(Reason::Forecast | Reason::Load));
                let observed = demand.get(&p.id).map_or(0.0, |d| d.observed_rps);
                let threshold = thresholds.get(&p.id).copied().unwrap_or(p.threshold);
                // The planner's scale-in rule (its band depends on the forecast).
                let calm = p.calm
                    || observed <= threshold * self.settings.scale_in_ratio
                    || !self.settings.plans_demand;
                let cooled = (!hot && calm)
                    .then(|| format!("cold: observed {observed:.3} rps, threshold {threshold:.3}"));
                judged = Some((i, cooled));
            }
            let Some((_, Some(detail))) = &judged else {
                continue;
            };
            let p = &plan.shards[i];
            if !open.contains(&(p.id.as_str(), node)) {
                evictions += 1;
                fx.push(Effect::Evict {
                    shard: p.id.clone(),
                    node: node.to_string(),
                    cold: Some(detail.clone()),
                });
            }
        }
    }
}

/// A plan action as a decision at real time `now`; `tnow` is the plan's
/// clock time (deadlines are relative to it).
pub(super) fn decision(a: &Action, now: i64, tnow: i64, dry_run: bool) -> Decision {
    let detail = match a {
        Action::Add {
            detail,
            priority,
            deadline_ms,
            over_capacity,
            replaces,
            ..
        } => {
            let mut d = format!(
                "{detail}; priority {priority:.3}, deadline in {} ms",
                deadline_ms - tnow
            );
            if let Some(r) = replaces {
                d.push_str(&format!(", replaces {r}"));
            }
            if *over_capacity {
                d.push_str(", no node had room");
            }
            d
        }
        Action::Drain { detail, .. } | Action::Drop { detail, .. } => detail.clone(),
    };
    Decision {
        at_unix_ms: now,
        action: a.kind(),
        shard: a.shard().into(),
        node: a.node().into(),
        reason: a.reason(),
        detail,
        dry_run,
    }
}
