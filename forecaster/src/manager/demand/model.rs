//! The planner's input, built each round from the state and the demand
//! policy, carried over from the last round where nothing changed.
//!
//! Every shard has a slot, in shard-id order (its index is the shard's
//! place in that order, the same order the planner visits shards in): the
//! forecast its prediction was made from, its forecast skill, the rows of
//! its last hosted copy, and its entry in the planner input of the last
//! round. A round walks the state's maps (all keyed by shard id) side by
//! side with the slots instead of searching them per shard, predicts again
//! only the shards whose forecast, threshold or store hour changed (the
//! engine shares an unchanged shard's forecast between sets, so a changed
//! one is a different allocation), and rebuilds a shard's replicas, pins
//! and leaving nodes in the input only when the state's differ from what
//! the input holds. The rest of the input is plain numbers, set every
//! round. The result is the input a fresh build would give (see the tests).

use std::collections::HashMap;
use std::sync::Arc;

use shardmap::config::ShardSpec;

use super::{At, DemandPolicy, Prediction, NOTHING};
use crate::config::ManagerConfig;
use crate::engine::{ForecastSet, ShardForecast};
use crate::planner::{self, Demand, NodeInput, PlanInput, ReplicaInput, ShardInput};
use crate::store::Store;
use crate::time::Clock;

use super::super::state::walk::{seek, Walk};
use super::super::state::{ShardDemand, State};
use super::super::topology::Topology;

const DEFAULT_SHARD_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Copy)]
struct Skill {
    score: f64,
    /// The hour (store-local index) and median forecast awaiting its actual.
    pending: Option<(i64, f64)>,
}

impl Skill {
    /// Score the pending median against the hour's actual once it closed;
    /// then await this hour's.
    fn update(&mut self, shard: &str, store_hour: i64, p50: Option<f64>, store: &Store) -> f64 {
        if let Some((hour, f)) = self.pending {
            if hour < store_hour {
                let mut a = [0.0];
                store.hourly_window(shard, hour, &mut a);
                let denom = a[0].abs() + f.abs();
                let s1 = if denom > 0.0 {
                    1.0 - (a[0] - f).abs() / denom
                } else {
                    1.0
                };
                self.score = 0.8 * self.score + 0.2 * s1;
                self.pending = None;
            }
        }
        if self.pending.is_none() {
            if let Some(p) = p50 {
                self.pending = Some((store_hour, p));
            }
        }
        self.score
    }
}

/// What is known of one shard between rounds.
struct Slot {
    id: Arc<str>,
    /// Its place in the topology's shard list.
    spec: usize,
    /// The prediction, and what it was made from: the forecast (held, so
    /// its allocation cannot be reused by another), the threshold's bits
    /// and the store hour.
    made_from: Option<(Option<Arc<ShardForecast>>, u64, i64)>,
    prediction: Prediction,
    skill: Skill,
    /// Rows of the shard's last hosted copy: its size once evicted.
    rows: Option<u64>,
}

impl Slot {
    fn new(id: &str, spec: usize) -> Slot {
        Slot {
            id: id.into(),
            spec,
            made_from: None,
            prediction: NOTHING,
            skill: Skill {
                score: 0.5,
                pending: None,
            },
            rows: None,
        }
    }
}

/// The policy, and per shard the forecast skill it has earned and what the
/// last round's planner input was built from.
pub struct DemandModel {
    pub policy: Box<dyn DemandPolicy>,
    /// In shard-id order, one per distinct id of the topology.
    slots: Vec<Slot>,
    /// The topology's shard count the slots were laid out for.
    laid_out_for: usize,
    /// The last planner input's shards, one per slot (empty while the
    /// input is out with the planner, or after a new layout).
    shards: Vec<ShardInput>,
    /// Shards predicted again in the last round (the others carried over).
    pub predicted: usize,
}

impl DemandModel {
    pub fn new(policy: Box<dyn DemandPolicy>) -> DemandModel {
        DemandModel {
            policy,
            slots: vec![],
            laid_out_for: 0,
            shards: vec![],
            predicted: 0,
        }
    }

    /// The input back from the planner: next round updates it in place.
    pub fn keep(&mut self, input: PlanInput) {
        if input.shards.len() == self.slots.len() {
            self.shards = input.shards;
        }
    }

    /// Forget what the input was built from (not the skill or sizes): the
    /// next round builds it afresh.
    #[cfg(test)]
    pub fn forget(&mut self) {
        for s in &mut self.slots {
            s.made_from = None;
        }
        self.shards.clear();
    }

    /// Slots for the topology's shards, in id order; a shard known before
    /// keeps its skill and size. A no-op while the topology is the same.
    fn lay_out(&mut self, specs: &[ShardSpec]) {
        let same = self.laid_out_for == specs.len()
            && self
                .slots
                .iter()
                .all(|s| specs.get(s.spec).is_some_and(|x| *x.id == *s.id));
        if same {
            return;
        }
        let mut old: HashMap<Arc<str>, Slot> =
            self.slots.drain(..).map(|s| (s.id.clone(), s)).collect();
        let mut order: Vec<usize> = (0..specs.len()).collect();
        order.sort_by(|&a, &b| specs[a].id.cmp(&specs[b].id));
        // A repeated id: the first listed, as the planner keeps it.
        order.dedup_by(|a, b| specs[*a].id == specs[*b].id);
        self.slots = order
            .into_iter()
            .map(|i| match old.remove(specs[i].id.as_str()) {
                Some(s) => Slot { spec: i, ..s },
                None => Slot::new(&specs[i].id, i),
            })
            .collect();
        self.laid_out_for = specs.len();
        self.shards.clear();
    }
}

/// What the planner input is built from, besides the state.
pub struct Inputs<'a> {
    pub cfg: &'a ManagerConfig,
    pub topo: &'a Topology,
    pub store: &'a Store,
    pub forecasts: &'a ForecastSet,
    pub clock: Clock,
    /// Clock time, Unix ms.
    pub now: i64,
}

fn same_replicas(have: &[ReplicaInput], st: &[shardmap::control::ReplicaAssignment]) -> bool {
    have.len() == st.len()
        && have
            .iter()
            .zip(st)
            .all(|(a, b)| a.node == b.node && a.state == b.state)
}

/// The planner's input at `inputs.now` (shards in id order), and each
/// shard's demand as seen. Hand the input back with [`DemandModel::keep`]
/// once planned.
pub fn plan_input(
    inputs: &Inputs,
    st: &State,
    model: &mut DemandModel,
) -> (PlanInput, Vec<ShardDemand>) {
    let Inputs {
        cfg,
        topo,
        store,
        forecasts,
        clock,
        now,
    } = *inputs;
    let median_cap = {
        let mut c: Vec<f64> = topo.nodes.iter().map(|n| n.capacity).collect();
        c.sort_by(f64::total_cmp);
        c.get(c.len() / 2).copied().unwrap_or(1000.0)
    };
    let default_threshold = cfg.default_threshold_rps.unwrap_or(median_cap * 0.5);
    let store_hour = store.local_hour(now);
    let next_hour = store.zone().hour_start_ms(store_hour + 1);
    // At least one telemetry frame's span, on this clock (a frame every
    // second spans an hour of trace time at 3600x).
    let frame_s = (topo.telemetry_interval.as_secs_f64() * clock.speed()).ceil() as usize;
    let observe_window_s = cfg.observe_window_s.max(frame_s);

    model.lay_out(&topo.shards);
    let mut shards = std::mem::take(&mut model.shards);
    if shards.len() != model.slots.len() {
        shards = model
            .slots
            .iter()
            .map(|s| ShardInput {
                id: s.id.to_string(),
                threshold: 0.0,
                replicas: vec![],
                demand: Demand::default(),
                bytes: 0,
                pinned: None,
                leaving: vec![],
            })
            .collect();
    }
    let mut seen = Vec::with_capacity(model.slots.len());
    let mut thresholds = Walk::new(&st.operator.thresholds);
    let mut pins = Walk::new(&st.operator.pins);
    let mut replicas = Walk::new(&st.replicas);
    let mut leaving = Walk::new(&st.leaving);
    let mut forecast_of = Walk::new(&forecasts.shards);
    // The most rows any node holds of each slot's shard: each node's copies
    // (in id order) sought among the slots (in id order too), rather than
    // every node's cache asked about every shard.
    let mut most_rows = vec![0u64; model.slots.len()];
    for m in st.hosted.values() {
        let mut from = 0;
        for (shard, h) in m {
            match seek(&model.slots, from, shard, |s| &s.id) {
                Ok(i) => {
                    most_rows[i] = most_rows[i].max(h.rows);
                    from = i + 1;
                }
                Err(i) => from = i,
            }
        }
    }
    let policy = &*model.policy;
    let mut predicted = 0;
    for ((slot, si), &rows) in model
        .slots
        .iter_mut()
        .zip(shards.iter_mut())
        .zip(&most_rows)
    {
        let id = &*slot.id;
        let spec = &topo.shards[slot.spec];
        let threshold = thresholds
            .get(id)
            .copied()
            .or(spec.threshold)
            .unwrap_or(default_threshold);
        let forecast = forecast_of.get(id);
        let current = match &slot.made_from {
            Some((f, t, h)) => {
                *t == threshold.to_bits()
                    && *h == store_hour
                    && match (f, forecast) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }
            }
            None => false,
        };
        let p = if current {
            Prediction {
                rise_at_ms: slot.prediction.rise_at_ms.map(|_| now),
                ..slot.prediction
            }
        } else {
            predicted += 1;
            let p = policy.predict(&At {
                shard: id,
                now,
                store_hour,
                threshold,
                forecast: forecast.map(|f| &**f),
            });
            slot.prediction = p;
            slot.made_from = Some((forecast.cloned(), threshold.to_bits(), store_hour));
            p
        };
        let skill = slot.skill.update(id, store_hour, p.p50_hour, store);
        let rows = Some(rows).filter(|&r| r > 0);
        if rows.is_some() {
            slot.rows = rows;
        }
        let rows = rows.or(slot.rows);
        let bytes = match (rows, st.bytes_per_row) {
            (Some(r), Some(b)) if r > 0 => (r as f64 * b) as u64,
            _ => DEFAULT_SHARD_BYTES,
        };
        let demand = Demand {
            predicted_rps: p.predicted_rps,
            rise_at_ms: p.rise_at_ms.unwrap_or(next_hour),
            observed_rps: store.recent_rate(id, now, observe_window_s),
            skill,
            p_exceed: p.p_exceed,
            p_exceed_next: p.p_exceed_next,
            next_hour_ms: next_hour,
        };
        si.threshold = threshold;
        let reps = replicas.get(id).map_or(&[][..], Vec::as_slice);
        if !same_replicas(&si.replicas, reps) {
            si.replicas = reps
                .iter()
                .map(|r| ReplicaInput {
                    node: r.node.clone(),
                    state: r.state,
                })
                .collect();
        }
        si.demand = policy.planned(&demand);
        si.bytes = bytes;
        let pinned = pins.get(id);
        if si.pinned.as_ref() != pinned {
            si.pinned = pinned.cloned();
        }
        let away = leaving.get(id);
        if !si.leaving.iter().eq(away.into_iter().flatten()) {
            si.leaving = away
                .map(|l| l.iter().cloned().collect())
                .unwrap_or_default();
        }
        seen.push(ShardDemand {
            id: slot.id.clone(),
            threshold,
            demand,
        });
    }
    model.predicted = predicted;
    let nodes = topo
        .nodes
        .iter()
        .map(|n| NodeInput {
            name: n.name.clone(),
            capacity: n.capacity,
            zone: n.zone.clone(),
            healthy: st.nodes.get(&n.name).is_none_or(|s| s.healthy),
            drained: st.operator.drained.contains(&n.name),
        })
        .collect();
    let input = PlanInput {
        now_ms: now,
        replication_factor: topo.replication_factor,
        churn_budget: cfg.churn_budget,
        max_utilization: cfg.max_utilization,
        scale_in_ratio: cfg.scale_in_ratio,
        // bytes per clock second (deadlines are in clock time)
        bandwidth_bytes_per_s: cfg.bandwidth_bytes_per_s / clock.speed(),
        economics: planner::Economics {
            miss_cost_ms: cfg.miss_cost_ms,
            memory_cost_ms_per_mb_hour: cfg.memory_cost_ms_per_mb_hour,
            round_ms: cfg.interval.as_secs_f64() * 1e3 * clock.speed(),
        },
        nodes,
        shards,
    };
    (input, seen)
}
