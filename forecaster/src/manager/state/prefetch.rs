//! What the pre-fetches bought: how many each reason drove, and whether
//! the demand-driven ones were warm before the demand arrived.
//!
//! A shard's **episode** opens at the first plan that finds it *hot* (the
//! plan wants an extra replica for predicted or observed demand: its
//! reason is `forecast` or `load`) or its *observed* demand over its
//! threshold, and closes at the first plan that finds it neither hot nor
//! observed above `threshold × scale_in_ratio` (the planner's scale-in
//! level). Its **rise** is the first plan of the episode whose observed
//! demand — the rate over the manager's observe window, as the plan saw it
//! — is over the threshold: the moment the manager first sees the demand.
//!
//! A **demand pre-fetch** is a pre-fetch order (an add or a refresh) with
//! reason `forecast` or `load` that sync took while the shard's episode was
//! open. When sync reports it done, its replica is serving from a warm
//! cache, and it is counted once:
//!
//! - **warm before the rise** when sync finished it before the episode's
//!   rise (a rise that comes later counts it then);
//! - **warm after the rise** when it finished at or after the rise;
//! - **no rise** when its episode closed without one.
//!
//! Orders that fail or are cancelled are not counted. A rise is **met
//! warm** when at least one of its shard's demand pre-fetches was warm
//! before it. Times are real (sync's finish time, the round's `now`).
//! A `load` pre-fetch is ordered once the demand is observed, so it is
//! never warm before the rise: the count is the forecast's.

use std::collections::BTreeMap;

use shardmap::contract::manager::PrefetchView;

use super::{OrderRequest, ShardDemand};
use crate::planner::{Plan, Reason};

/// One shard's open episode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Episode {
    /// Numbers the shard's episodes, so an order outliving its episode is
    /// told apart from one of the next.
    seq: u64,
    /// When the rise was seen (real ms), once it was.
    rise_at: Option<i64>,
    /// Demand pre-fetches done while no rise was seen yet.
    warm: u64,
    /// The rise was met by a warm pre-fetched replica.
    met_warm: bool,
}

/// Episodes, the open demand pre-fetches, and the counts.
#[derive(Debug, Clone, Default)]
pub struct Prefetches {
    pub view: PrefetchView,
    /// Open episodes by shard.
    episodes: BTreeMap<String, Episode>,
    /// The last episode number given, by shard.
    seqs: BTreeMap<String, u64>,
    /// Open demand pre-fetches: order id → (shard, episode).
    open: BTreeMap<u64, (String, u64)>,
}

/// What one plan does to a shard's episode.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    None,
    /// A new episode, its rise seen at once when `above`.
    Open {
        above: bool,
    },
    Close,
    /// The open episode's rise.
    Rise,
}

fn demand_driven(r: Reason) -> bool {
    matches!(r, Reason::Forecast | Reason::Load)
}

impl Prefetches {
    /// Sync took `order` as `id`.
    pub fn ordered(&mut self, order: &OrderRequest, id: u64) {
        *self.view.by_reason.entry(order.reason).or_default() += 1;
        if !demand_driven(order.reason) {
            return;
        }
        if let Some(ep) = self.episodes.get(&order.shard) {
            self.open.insert(id, (order.shard.clone(), ep.seq));
        }
    }

    /// Order `id` finished at real time `finished`: its replica is warm.
    pub fn done(&mut self, id: u64, finished: i64) {
        let Some((shard, seq)) = self.open.remove(&id) else {
            return;
        };
        let v = &mut self.view;
        match self.episodes.get_mut(&shard).filter(|e| e.seq == seq) {
            None => v.no_rise += 1,
            Some(ep) => match ep.rise_at {
                None => ep.warm += 1,
                Some(rise) if finished < rise => {
                    v.warm_before_rise += 1;
                    if !ep.met_warm {
                        ep.met_warm = true;
                        v.rises_met_warm += 1;
                    }
                }
                Some(_) => v.warm_after_rise += 1,
            },
        }
    }

    /// Order `id` failed or was cancelled: it warms nothing.
    pub fn gone(&mut self, id: u64) {
        self.open.remove(&id);
    }

    /// A plan at real time `now`: episodes open, rise and close.
    pub fn planned(&mut self, plan: &Plan, shards: &[ShardDemand], scale_in_ratio: f64, now: i64) {
        let increasing = plan.shards.windows(2).all(|w| w[0].id < w[1].id)
            && shards.windows(2).all(|w| w[0].id < w[1].id);
        if !increasing {
            let reasons: std::collections::HashMap<&str, Option<Reason>> = plan
                .shards
                .iter()
                .map(|p| (p.id.as_str(), p.reason))
                .collect();
            for s in shards {
                let reason = reasons.get(&*s.id).copied().flatten();
                let change = Self::change(s, reason, scale_in_ratio, self.episodes.get(&*s.id));
                self.change_to(s, change, now);
            }
            return;
        }
        // The plan's shards, the demand and the episodes in id order: one
        // walk over each finds the few shards whose episode changes (ten
        // thousand shards, a few hundred of them hot), no search per shard.
        let mut plan_shards = plan.shards.iter().peekable();
        let mut episodes = super::walk::Walk::new(&self.episodes);
        let mut changes = vec![];
        for (i, s) in shards.iter().enumerate() {
            while plan_shards.next_if(|p| *p.id < *s.id).is_some() {}
            let reason = plan_shards
                .next_if(|p| *p.id == *s.id)
                .and_then(|p| p.reason);
            let change = Self::change(s, reason, scale_in_ratio, episodes.get(&s.id));
            if change != Change::None {
                changes.push((i, change));
            }
        }
        for (i, change) in changes {
            self.change_to(&shards[i], change, now);
        }
    }

    /// What a plan does to a shard's episode (`ep`: the one open).
    fn change(
        s: &ShardDemand,
        reason: Option<Reason>,
        scale_in_ratio: f64,
        ep: Option<&Episode>,
    ) -> Change {
        let hot = reason.is_some_and(demand_driven);
        let observed = s.demand.observed_rps;
        let above = s.threshold > 0.0 && observed > s.threshold;
        let calm = observed <= s.threshold * scale_in_ratio;
        match ep {
            None if hot || above => Change::Open { above },
            None => Change::None,
            Some(_) if !hot && calm => Change::Close,
            Some(ep) if above && ep.rise_at.is_none() => Change::Rise,
            Some(_) => Change::None,
        }
    }

    fn change_to(&mut self, s: &ShardDemand, change: Change, now: i64) {
        let v = &mut self.view;
        match change {
            Change::None => {}
            Change::Open { above } => {
                let seq = self.seqs.entry(s.id.to_string()).or_default();
                *seq += 1;
                let mut ep = Episode {
                    seq: *seq,
                    ..Episode::default()
                };
                if above {
                    ep.rise_at = Some(now);
                    v.rises += 1;
                }
                self.episodes.insert(s.id.to_string(), ep);
            }
            Change::Close => {
                if let Some(ep) = self.episodes.remove(&*s.id) {
                    v.no_rise += ep.warm;
                }
            }
            Change::Rise => {
                if let Some(ep) = self.episodes.get_mut(&*s.id) {
                    ep.rise_at = Some(now);
                    v.rises += 1;
                    if ep.warm > 0 {
                        v.warm_before_rise += ep.warm;
                        ep.warm = 0;
                        ep.met_warm = true;
                        v.rises_met_warm += 1;
                    }
                }
            }
        }
    }

    /// Forget open pre-fetches the state no longer tracks as open.
    pub fn keep_open(&mut self, open: impl Fn(u64) -> bool) {
        self.open.retain(|id, _| open(*id));
    }

    /// The shard's open episode, if any.
    pub fn episode(&self, shard: &str) -> Option<&Episode> {
        self.episodes.get(shard)
    }
}

impl Episode {
    /// When the rise was seen (real ms), once it was.
    pub fn risen(&self) -> Option<i64> {
        self.rise_at
    }
}

#[cfg(test)]
mod tests;
