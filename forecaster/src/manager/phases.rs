//! Where a round's time goes: the round is cut into [`Phase`]s, each timed
//! apart ([`Laps`]), and every round adds its phases' times to one
//! histogram per phase (`shardcast_manager_round_phase_seconds{phase}`,
//! rendered by [`super::metrics`]). A phase a round skips counts 0 s.
//!
//! The observations wait on the network side by side: `observe` is the
//! wall time of that step, and `probe`, `hosted` and `orders` are each
//! call's own time within it (they overlap, so they add up to more).
//! `input`, `planner`, `carry`, `refresh` and `cold` are parts of `plan`
//! (what is left of it: the drains that are due, the end of the round,
//! the decisions logged); `table` is part of `publish`. The other phases
//! follow one another: with `observe` they add up to the round.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use shardcast_edge::metrics::Writer;

/// A part of a leading round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Re-reading the topology file when it changed.
    Topology,
    /// The wall time of the observations below (run side by side) and
    /// of applying them to the state.
    Observe,
    /// Node health (the metadata store's reports, or the proxies' views);
    /// within `observe`.
    Probe,
    /// What sync's nodes hold (`GET /nodes`); within `observe`.
    Hosted,
    /// The epoch announcement and following the open orders
    /// (`GET /orders?ids=`); within `observe`.
    Orders,
    /// Drains that are due, the plan's input, the planner, and carrying
    /// the plan into the state (no I/O).
    Plan,
    /// The planner's input (each shard's prediction, carried over when its
    /// forecast, threshold and hour are unchanged); within `plan`.
    Input,
    /// The planner itself; within `plan`.
    Planner,
    /// Carrying the plan into the state: the pre-fetch episodes, the
    /// demand and thresholds kept, the plan's actions; within `plan`.
    Carry,
    /// Finding the replicas to refresh (table replicas their node's cache
    /// lacks); within `plan`.
    Refresh,
    /// Finding the shards that cooled, to evict; within `plan`.
    Cold,
    /// Pre-fetch orders to sync (`POST /orders/batch`) and their answers.
    Submit,
    /// Cancels and evictions at sync.
    Evict,
    /// The table to the proxies (`PUT /admin/table`): building the update,
    /// the delta, the pushes.
    Publish,
    /// Building the delta and, when a target needs it, the full table;
    /// within `publish` (and `store`).
    Table,
    /// The metadata store's reads and writes (table, records).
    Store,
}

impl Phase {
    pub const ALL: [Phase; 16] = [
        Phase::Topology,
        Phase::Observe,
        Phase::Probe,
        Phase::Hosted,
        Phase::Orders,
        Phase::Plan,
        Phase::Input,
        Phase::Planner,
        Phase::Carry,
        Phase::Refresh,
        Phase::Cold,
        Phase::Submit,
        Phase::Evict,
        Phase::Publish,
        Phase::Table,
        Phase::Store,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Topology => "topology",
            Phase::Observe => "observe",
            Phase::Probe => "probe",
            Phase::Hosted => "hosted",
            Phase::Orders => "orders",
            Phase::Plan => "plan",
            Phase::Input => "input",
            Phase::Planner => "planner",
            Phase::Carry => "carry",
            Phase::Refresh => "refresh",
            Phase::Cold => "cold",
            Phase::Submit => "submit",
            Phase::Evict => "evict",
            Phase::Publish => "publish",
            Phase::Table => "table",
            Phase::Store => "store",
        }
    }
}

/// One round's stopwatch: the time since the last switch goes to the
/// phase that was running.
pub struct Laps {
    spent: [Duration; Phase::ALL.len()],
    current: Phase,
    mark: Instant,
}

impl Laps {
    pub fn start(first: Phase) -> Laps {
        Laps {
            spent: Default::default(),
            current: first,
            mark: Instant::now(),
        }
    }

    /// Close the running phase and start `next`; the phase that ran.
    pub fn enter(&mut self, next: Phase) -> Phase {
        let now = Instant::now();
        self.spent[self.current as usize] += now - self.mark;
        self.mark = now;
        std::mem::replace(&mut self.current, next)
    }

    /// Add `d`, measured elsewhere, to `phase`, and take it from the
    /// running phase (which was running while `d` passed).
    pub fn moved(&mut self, phase: Phase, d: Duration) {
        self.enter(self.current);
        let cur = &mut self.spent[self.current as usize];
        *cur = cur.saturating_sub(d);
        self.spent[phase as usize] += d;
    }

    /// Add `d` to `phase`, which ran beside the running one (its own time,
    /// not taken from the running phase's).
    pub fn side(&mut self, phase: Phase, d: Duration) {
        self.spent[phase as usize] += d;
    }

    /// The time spent in each phase, the running one closed.
    pub fn finish(mut self) -> [Duration; Phase::ALL.len()] {
        self.enter(self.current);
        self.spent
    }
}

/// Upper bounds, seconds: fine below 100 ms, where the round's target is.
/// A round longer than this is logged with its phases (the round's target).
pub const SLOW_ROUND: Duration = Duration::from_millis(100);

/// Log a slow round with its phase split: the histograms say how often a
/// round is slow, this says which (a new forecast set to predict from, a
/// wave of orders, a wait on sync). `predicted`: shards predicted again.
pub fn slow(
    took: Duration,
    spent: &[Duration; Phase::ALL.len()],
    predicted: usize,
    in_flight: usize,
) {
    let phases: Vec<String> = Phase::ALL
        .iter()
        .zip(spent)
        .filter(|(_, d)| d.as_micros() >= 500)
        .map(|(p, d)| format!("{}={:.1}", p.as_str(), d.as_secs_f64() * 1e3))
        .collect();
    tracing::info!(
        ms = format!("{:.1}", took.as_secs_f64() * 1e3),
        phases = phases.join(" "),
        predicted,
        in_flight,
        "slow round"
    );
}

const BUCKETS_S: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
    1.0, 5.0,
];

/// A fixed-bucket histogram of one phase's time per round.
#[derive(Default)]
struct Histogram {
    counts: [AtomicU64; BUCKETS_S.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS_S.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }
}

/// Every phase's histogram.
#[derive(Default)]
pub struct PhaseHistograms {
    by_phase: [Histogram; Phase::ALL.len()],
}

impl PhaseHistograms {
    pub fn observe(&self, spent: &[Duration; Phase::ALL.len()]) {
        for (h, d) in self.by_phase.iter().zip(spent) {
            h.observe(*d);
        }
    }

    /// The samples of `name` (its family written before), one series per
    /// phase.
    pub fn render(&self, w: &mut Writer<'_>, name: &str) {
        for p in Phase::ALL {
            let h = &self.by_phase[p as usize];
            let counts: Vec<u64> = h.counts.iter().map(|c| c.load(Relaxed)).collect();
            let count = counts.iter().sum();
            let bounds = BUCKETS_S.iter().copied().chain([f64::INFINITY]);
            w.histogram(
                name,
                &[("phase", p.as_str())],
                bounds.zip(counts),
                h.sum_us.load(Relaxed) as f64 / 1e6,
                count,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_give_each_phase_its_own_time_and_add_up() {
        let t0 = Instant::now();
        let mut l = Laps::start(Phase::Probe);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(l.enter(Phase::Plan), Phase::Probe);
        std::thread::sleep(Duration::from_millis(10));
        // 3 ms of the plan's time was really a submit, timed by its caller.
        l.moved(Phase::Submit, Duration::from_millis(3));
        l.enter(Phase::Publish);
        let spent = l.finish();
        let total = t0.elapsed();
        let at = |p: Phase| spent[p as usize];
        assert!(at(Phase::Probe) >= Duration::from_millis(5), "{spent:?}");
        assert!(at(Phase::Plan) >= Duration::from_millis(7), "{spent:?}");
        assert_eq!(at(Phase::Submit), Duration::from_millis(3));
        assert_eq!(at(Phase::Hosted), Duration::ZERO);
        let sum: Duration = spent.iter().sum();
        assert!(sum <= total, "{sum:?} > {total:?}");
    }
}
