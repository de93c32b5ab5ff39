//! The planner: one pure function from what the shard manager knows (the
//! current assignment, node health and capacity, forecasts, observed load,
//! operator settings) to what it should do this round.
//!
//! It decides a replica count per shard — never below the replication
//! factor, one more when predicted demand crosses the shard's threshold
//! (the pre-fetch trigger), more when a high quantile exceeds what one node
//! can serve — and an assignment that balances predicted load across nodes
//! within capacity, keeps replicas on distinct nodes (distinct zones first),
//! and adds at most `churn_budget` replicas per round. Each addition is a
//! pre-fetch order with a priority (expected benefit × forecast skill ÷
//! bytes) and a deadline (predicted rise − estimated transfer time).
//!
//! Removal is make-before-break: a replica leaves (is drained) only once
//! enough serving replicas remain elsewhere. Scale-in happens only after
//! *observed* demand falls (below threshold × `scale_in_ratio`, or below
//! the threshold when a probabilistic forecast prices no copy); a low
//! forecast alone never removes a replica. The same input always gives the same plan: shards and
//! nodes are visited in name order and every tie is broken by name.

mod input;
pub mod value;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

pub use input::{Demand, NodeInput, PlanInput, ReplicaInput, ShardInput};
use shardmap::table::ReplicaState;
pub use value::Economics;

/// Why the manager did something (the control plane's shared vocabulary).
pub use shardmap::contract::manager::Reason;

/// How much an order for this reason outranks a forecast-driven one.
fn urgency(r: Reason) -> f64 {
    match r {
        Reason::Failure => 100.0,
        Reason::Operator => 10.0,
        _ => 1.0,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Pre-fetch the shard onto `node` (a warming replica), then route to it.
    /// When `replaces` is set, that node's replica drains once this one serves.
    Add {
        shard: String,
        node: String,
        reason: Reason,
        priority: f64,
        deadline_ms: i64,
        replaces: Option<String>,
        /// No usable node had room: placed on the least loaded one.
        over_capacity: bool,
        detail: String,
    },
    /// Stop routing to the replica (it stays warm until evicted).
    Drain {
        shard: String,
        node: String,
        reason: Reason,
        detail: String,
    },
    /// The replica's node is down: out of the table now.
    Drop {
        shard: String,
        node: String,
        reason: Reason,
        detail: String,
    },
}

impl Action {
    pub fn shard(&self) -> &str {
        match self {
            Action::Add { shard, .. }
            | Action::Drain { shard, .. }
            | Action::Drop { shard, .. } => shard,
        }
    }
    pub fn node(&self) -> &str {
        match self {
            Action::Add { node, .. } | Action::Drain { node, .. } | Action::Drop { node, .. } => {
                node
            }
        }
    }
    pub fn reason(&self) -> Reason {
        match self {
            Action::Add { reason, .. }
            | Action::Drain { reason, .. }
            | Action::Drop { reason, .. } => *reason,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Add { .. } => "add",
            Action::Drain { .. } => "drain",
            Action::Drop { .. } => "drop",
        }
    }
}

/// The planner's view of one shard after this round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardPlan {
    pub id: String,
    /// Replicas wanted.
    pub target: usize,
    /// The load the target is sized for, requests/s.
    pub load_rps: f64,
    pub predicted_rps: f64,
    pub observed_rps: f64,
    pub threshold: f64,
    pub reason: Option<Reason>,
    /// Observed demand is low enough for the shard's extra copies to go
    /// (the scale-in rule): node caches may evict it once it is not hot.
    pub calm: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub shards: Vec<ShardPlan>,
    /// Predicted load per node once the plan is carried out, requests/s.
    pub node_load: BTreeMap<String, f64>,
    /// Additions wanted but left for a later round (churn budget).
    pub deferred: usize,
    /// Nodes down whose replicas were held in the table rather than
    /// dropped: fewer than [`PANIC_HEALTHY_SHARE`] of the nodes were
    /// healthy (0 otherwise).
    pub held_down: usize,
}

/// Below this share of healthy nodes (among those not drained) the health
/// signal, not the nodes, is taken to be wrong — a partition between the
/// proxies and the nodes, a stalled checker — as Envoy's healthy panic
/// threshold does (50 % by default): replicas on down nodes stay in the
/// table instead of being dropped (and re-fetched in full once the nodes
/// answer again), while the shards they leave short still get replicas
/// on the healthy nodes. A node that is really gone is dropped once most
/// nodes answer again.
pub const PANIC_HEALTHY_SHARE: f64 = 0.5;

impl Plan {
    pub fn adds(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| matches!(a, Action::Add { .. }))
            .count()
    }
}

/// Working state of one shard during planning.
struct Work<'a> {
    input: &'a ShardInput,
    /// Nodes holding a live (warming or serving) replica on a healthy node.
    live: Vec<&'a str>,
    /// Those of `live` that must go (drained node, off the pins, moving).
    movers: BTreeSet<&'a str>,
    target: usize,
    load: f64,
    reason: Option<Reason>,
    calm: bool,
}

impl Work<'_> {
    fn per_replica(&self) -> f64 {
        self.load / self.target.max(1) as f64
    }
    /// Every node the shard occupies in any state (a new replica must avoid them).
    fn occupied(&self) -> BTreeSet<&str> {
        self.input
            .replicas
            .iter()
            .map(|r| r.node.as_str())
            .collect()
    }
}

fn finite(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

/// Plan one round. Pure and deterministic.
pub fn plan(input: &PlanInput) -> Plan {
    let util = if input.max_utilization.is_finite() && input.max_utilization > 0.0 {
        input.max_utilization.min(1.0)
    } else {
        1.0
    };
    let mut nodes: Vec<&NodeInput> = input.nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes.dedup_by(|a, b| a.name == b.name);
    let node_by_name: BTreeMap<&str, &NodeInput> =
        nodes.iter().map(|n| (n.name.as_str(), *n)).collect();
    let usable: Vec<&NodeInput> = nodes.iter().copied().filter(|n| n.usable()).collect();
    // What one replica can serve: the median usable capacity.
    let replica_capacity = {
        let mut caps: Vec<f64> = usable.iter().map(|n| finite(n.capacity)).collect();
        caps.sort_by(f64::total_cmp);
        caps.get(caps.len() / 2).copied().unwrap_or(0.0) * util
    };
    let rf = input.replication_factor.max(1);

    let mut shards: Vec<&ShardInput> = input.shards.iter().collect();
    shards.sort_by(|a, b| a.id.cmp(&b.id));
    shards.dedup_by(|a, b| a.id == b.id);

    let mut out = Plan::default();
    let mut work: Vec<Work> = Vec::with_capacity(shards.len());
    let eligible = nodes.iter().filter(|n| !n.drained).count();
    let healthy_nodes = nodes.iter().filter(|n| !n.drained && n.healthy).count();
    let panic = eligible > 1 && (healthy_nodes as f64) < eligible as f64 * PANIC_HEALTHY_SHARE;
    if panic {
        out.held_down = eligible - healthy_nodes;
    }

    // 1. Targets, and replicas on dead nodes out of the table.
    for s in &shards {
        let mut live = Vec::new();
        for (i, r) in s.replicas.iter().enumerate() {
            // A node listed twice counts once (a handful of replicas: a
            // scan, no set).
            if s.replicas[..i].iter().any(|q| q.node == r.node) {
                continue;
            }
            let known = node_by_name.get(r.node.as_str());
            if panic && known.is_some_and(|n| !n.healthy) {
                // Held: in the table, not counted toward the target.
                continue;
            }
            if !known.is_some_and(|n| n.healthy) {
                out.actions.push(Action::Drop {
                    shard: s.id.clone(),
                    node: r.node.clone(),
                    reason: Reason::Failure,
                    detail: "node down or unknown".into(),
                });
                continue;
            }
            if r.state != ReplicaState::Draining {
                live.push(r.node.as_str());
            }
        }
        let predicted = finite(s.demand.predicted_rps);
        let observed = finite(s.demand.observed_rps);
        let threshold = finite(s.threshold);
        let load = predicted.max(observed);
        let by_capacity = if replica_capacity > 0.0 {
            (load / replica_capacity).ceil() as usize
        } else {
            0
        };
        let mut target = rf.max(by_capacity);
        let mut reason = (by_capacity > rf).then_some(if predicted >= observed {
            Reason::Forecast
        } else {
            Reason::Load
        });
        let movers: BTreeSet<&str> = live
            .iter()
            .copied()
            .filter(|&n| {
                let drained = node_by_name.get(n).is_some_and(|n| n.drained);
                let unpinned = s.pinned.as_ref().is_some_and(|p| !p.iter().any(|x| x == n));
                drained || unpinned || s.leaving.iter().any(|x| x == n)
            })
            .collect();
        let current = live.iter().filter(|n| !movers.contains(*n)).count();
        // The forecast asks for a copy: by its expected value against its
        // memory when the forecast is probabilistic and prices are set,
        // else when the planning quantile crosses the threshold.
        let priced = input.economics.priced(
            s.demand.p_exceed,
            s.demand.p_exceed_next,
            current > rf,
            s.demand.next_hour_ms - input.now_ms,
            transfer_ms(s.bytes, input.bandwidth_bytes_per_s),
        );
        let forecast_crosses = match priced {
            Some(p) if input.economics.enabled() => {
                input.economics.worth_a_copy(p, threshold, s.bytes)
            }
            _ => predicted > threshold,
        };
        if threshold > 0.0 && forecast_crosses && target < rf + 1 {
            target = rf + 1;
            reason = Some(Reason::Forecast);
        }
        if threshold > 0.0 && observed > threshold && target < rf + 1 {
            target = rf + 1;
            reason = Some(Reason::Load);
        }
        // Scale in only on observed demand: hold the current count until
        // what is observed (not just predicted) has fallen — below
        // threshold × scale_in_ratio, or, when a probabilistic forecast
        // prices no copy, back under the threshold: the crossing has passed
        // and the probability, not the band, keeps the copy from flapping.
        let declined = priced.is_some() && input.economics.enabled() && !forecast_crosses;
        let band = if declined {
            1.0
        } else {
            input.scale_in_ratio.max(0.0)
        };
        let calm = threshold > 0.0 && observed <= threshold * band;
        if target < current {
            let calm = observed <= threshold * band
                && (replica_capacity <= 0.0
                    || (observed / replica_capacity).ceil() as usize <= target);
            if !calm {
                target = current;
            }
        }
        if let Some(pins) = &s.pinned {
            let pinned_ok = pins
                .iter()
                .filter(|p| node_by_name.get(p.as_str()).is_some_and(|n| n.usable()))
                .count();
            target = pinned_ok.max(1);
            reason = Some(Reason::Operator);
        }
        target = target.min(usable.len()).max(1);
        work.push(Work {
            input: s,
            live,
            movers,
            target,
            load,
            reason,
            calm,
        });
    }

    // Predicted load per node from the replicas that stay.
    let mut load: BTreeMap<&str, f64> = nodes.iter().map(|n| (n.name.as_str(), 0.0)).collect();
    for w in &work {
        let per = w.per_replica();
        for &n in &w.live {
            if let Some(l) = load.get_mut(n) {
                *l += per;
            }
        }
    }

    // 2. Candidate additions, most urgent first.
    struct Want {
        shard: usize,
        reason: Reason,
        replaces: Option<String>,
        rank: (u8, f64),
    }
    let mut wants: Vec<Want> = Vec::new();
    for (i, w) in work.iter().enumerate() {
        let staying = w.live.len() - w.movers.len();
        let missing = w.target.saturating_sub(staying);
        // Movers without a replacement yet, in name order.
        let mut unreplaced: Vec<&str> = w
            .movers
            .iter()
            .copied()
            .filter(|&n| !w.input.leaving.iter().any(|x| x == n))
            .collect();
        unreplaced.reverse();
        for k in 0..missing {
            let replaces = unreplaced.pop().map(str::to_string);
            let below_rf = staying + k < rf.min(usable.len());
            let reason = if replaces.is_some() {
                Reason::Operator
            } else if below_rf {
                Reason::Failure
            } else if let Some(r) = w.reason {
                r
            } else {
                Reason::Initial
            };
            let class = match reason {
                Reason::Failure => 0,
                Reason::Operator => 1,
                Reason::Forecast | Reason::Load => 2,
                Reason::Balance | Reason::Initial => 3,
            };
            wants.push(Want {
                shard: i,
                reason,
                replaces,
                rank: (class, -(staying as f64) * 1e12 + w.load),
            });
        }
    }
    // Balance: a node over capacity hands its largest replica to the least
    // loaded node that has room (one move per overloaded node per round).
    // Each node's largest movable replica (the first in shard order among
    // equals), found in one pass over the shards when a node needs it.
    let mut largest: Option<BTreeMap<&str, (usize, f64)>> = None;
    for n in &usable {
        let cap = finite(n.capacity) * util;
        let l = load.get(n.name.as_str()).copied().unwrap_or(0.0);
        if cap <= 0.0 || l <= cap {
            continue;
        }
        let largest = largest.get_or_insert_with(|| {
            let mut m: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
            for (i, w) in work.iter().enumerate() {
                let moving = !w.movers.is_empty() || w.live.len() > w.target;
                if w.input.pinned.is_some() || moving {
                    continue;
                }
                let per = w.per_replica();
                for &node in &w.live {
                    let best = m.entry(node).or_insert((i, per));
                    if per > best.1 {
                        *best = (i, per);
                    }
                }
            }
            m
        });
        if let Some(&(i, per)) = largest.get(n.name.as_str()) {
            wants.push(Want {
                shard: i,
                reason: Reason::Balance,
                replaces: Some(n.name.clone()),
                rank: (3, per),
            });
        }
    }
    wants.sort_by(|a, b| {
        a.rank
            .0
            .cmp(&b.rank.0)
            .then(b.rank.1.total_cmp(&a.rank.1))
            .then(work[a.shard].input.id.cmp(&work[b.shard].input.id))
    });

    // 3. Place additions within the churn budget.
    let mut added: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut adds = 0usize;
    for want in wants {
        let w = &work[want.shard];
        if adds >= input.churn_budget {
            out.deferred += 1;
            continue;
        }
        let per = w.per_replica();
        let mut avoid = w.occupied();
        let extra = added.get(&want.shard).cloned().unwrap_or_default();
        avoid.extend(extra.iter().map(String::as_str));
        let zones: BTreeSet<&str> = w
            .live
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
            .filter_map(|n| node_by_name.get(n).and_then(|n| n.zone.as_deref()))
            .collect();
        let candidates: Vec<&NodeInput> = usable
            .iter()
            .copied()
            .filter(|n| !avoid.contains(n.name.as_str()))
            .filter(|n| w.input.pinned.as_ref().is_none_or(|p| p.contains(&n.name)))
            .collect();
        let fits = |n: &NodeInput| {
            let cap = finite(n.capacity) * util;
            load.get(n.name.as_str()).copied().unwrap_or(0.0) + per <= cap + 1e-9
        };
        let rel = |n: &NodeInput| {
            let cap = finite(n.capacity).max(1e-9);
            (load.get(n.name.as_str()).copied().unwrap_or(0.0) + per) / cap
        };
        // Room first, then a zone the shard is not in yet, then the lowest
        // relative load, then the name.
        let pick = candidates.iter().copied().min_by(|a, b| {
            let za = a.zone.as_deref().is_some_and(|z| zones.contains(z));
            let zb = b.zone.as_deref().is_some_and(|z| zones.contains(z));
            (!fits(a))
                .cmp(&!fits(b))
                .then(za.cmp(&zb))
                .then(rel(a).total_cmp(&rel(b)))
                .then(a.name.cmp(&b.name))
        });
        let Some(node) = pick else { continue };
        if want.reason == Reason::Balance && !fits(node) {
            // Moving would only overload another node.
            continue;
        }
        let over = !fits(node);
        *load.entry(node.name.as_str()).or_insert(0.0) += per;
        if let Some(old) = &want.replaces {
            if let Some(l) = load.get_mut(old.as_str()) {
                *l = (*l - per).max(0.0);
            }
        }
        added.entry(want.shard).or_default().push(node.name.clone());
        adds += 1;
        let bytes = w.input.bytes.max(1);
        let transfer_ms = transfer_ms(bytes, input.bandwidth_bytes_per_s);
        let deadline_ms = match want.reason {
            // Land before the rise; when it is already under way, as soon
            // as the transfer can.
            Reason::Forecast => {
                (w.input.demand.rise_at_ms - transfer_ms).max(input.now_ms + transfer_ms)
            }
            _ => input.now_ms + transfer_ms,
        };
        let skill = w.input.demand.skill.clamp(0.05, 1.0);
        let benefit = w.load.max(1e-3) * urgency(want.reason);
        let priority = benefit * skill / (bytes as f64 / 1e6).max(1e-3);
        let detail = match want.reason {
            Reason::Forecast => format!(
                "predicted {:.2} rps (threshold {:.2}, observed {:.2}) → {} replicas",
                w.input.demand.predicted_rps,
                w.input.threshold,
                w.input.demand.observed_rps,
                w.target
            ),
            Reason::Load => format!(
                "observed {:.2} rps (threshold {:.2}) → {} replicas",
                w.input.demand.observed_rps, w.input.threshold, w.target
            ),
            Reason::Failure => format!("{} live replicas, replication factor {rf}", w.live.len()),
            Reason::Operator => match &want.replaces {
                Some(old) => format!("operator: move off {old}"),
                None => "operator pin".into(),
            },
            Reason::Balance => format!(
                "{} over capacity: move {:.2} rps",
                want.replaces.as_deref().unwrap_or("?"),
                per
            ),
            Reason::Initial => String::new(),
        };
        out.actions.push(Action::Add {
            shard: w.input.id.clone(),
            node: node.name.clone(),
            reason: want.reason,
            priority: if priority.is_finite() { priority } else { 1.0 },
            deadline_ms,
            replaces: want.replaces,
            over_capacity: over,
            detail,
        });
    }

    // 4. Drains: replicas beyond the target, once enough others serve.
    for w in &work {
        let serving_on = |n: &str| {
            w.input
                .replicas
                .iter()
                .any(|r| r.node == n && r.state == ReplicaState::Serving)
        };
        let serving_staying = w
            .live
            .iter()
            .filter(|n| !w.movers.contains(*n) && serving_on(n))
            .count();
        let operator_move = |n: &str| {
            node_by_name.get(n).is_some_and(|x| x.drained)
                || w.input
                    .pinned
                    .as_ref()
                    .is_some_and(|p| !p.iter().any(|x| x == n))
        };
        // Leaving replicas go only once the staying ones serve the target
        // (make-before-break); the last serving replica never goes.
        if serving_staying >= w.target.max(1) {
            for &n in &w.movers {
                out.actions.push(Action::Drain {
                    shard: w.input.id.clone(),
                    node: n.to_string(),
                    reason: if operator_move(n) {
                        Reason::Operator
                    } else {
                        Reason::Balance
                    },
                    detail: "replacement serving; moving off".into(),
                });
            }
        }
        // Scale in: more serving replicas than the target (observed demand
        // fell, see the target rule); drop the most loaded node's copy.
        let extra = serving_staying.saturating_sub(w.target);
        if extra > 0 && w.movers.is_empty() {
            let mut cands: Vec<&str> = w.live.iter().copied().filter(|n| serving_on(n)).collect();
            cands.sort_by(|a, b| {
                let ra = rel_load(&load, &node_by_name, a);
                let rb = rel_load(&load, &node_by_name, b);
                rb.total_cmp(&ra).then(a.cmp(b))
            });
            for n in cands.into_iter().take(extra) {
                if let Some(l) = load.get_mut(n) {
                    *l = (*l - w.per_replica()).max(0.0);
                }
                out.actions.push(Action::Drain {
                    shard: w.input.id.clone(),
                    node: n.to_string(),
                    reason: Reason::Load,
                    detail: format!(
                        "observed {:.2} rps below {:.2} → {} replicas",
                        w.input.demand.observed_rps,
                        w.input.threshold * input.scale_in_ratio,
                        w.target
                    ),
                });
            }
        }
        out.shards.push(ShardPlan {
            id: w.input.id.clone(),
            target: w.target,
            load_rps: w.load,
            predicted_rps: finite(w.input.demand.predicted_rps),
            observed_rps: finite(w.input.demand.observed_rps),
            threshold: finite(w.input.threshold),
            reason: w.reason,
            calm: w.calm,
        });
    }
    out.node_load = load.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    out
}

/// Estimated clock ms to copy `bytes` at `bandwidth` bytes per clock
/// second, with a half-second margin.
fn transfer_ms(bytes: u64, bandwidth: f64) -> i64 {
    let bw = if bandwidth > 0.0 {
        bandwidth
    } else {
        f64::INFINITY
    };
    (bytes.max(1) as f64 / bw * 1e3) as i64 + 500
}

fn rel_load(load: &BTreeMap<&str, f64>, nodes: &BTreeMap<&str, &NodeInput>, n: &str) -> f64 {
    let cap = nodes.get(n).map_or(1.0, |n| finite(n.capacity).max(1e-9));
    load.get(n).copied().unwrap_or(0.0) / cap
}

#[cfg(test)]
mod tests;
