//! The shard manager's metrics, every name here, rendered on the
//! forecaster's `/metrics` (Prometheus text). Labels are bounded: actions
//! are a fixed set of names, reasons, outcomes and targets are enums.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `shardcast_manager_rounds_total` | counter | rounds run: planning, following finished orders, or standing by |
//! | `shardcast_manager_round_seconds` | summary | wall time of a planning round (observe, plan, act, publish): p50, p99 over the last 1024, sum, count |
//! | `shardcast_manager_orders_round_seconds` | summary | wall time of a round woken by finished pre-fetch orders between planning rounds: it follows the open orders, applies them (a warm replica turns serving) and publishes, without the planner |
//! | `shardcast_manager_round_phase_seconds{phase}` | histogram | a round's time in each of its phases (`phases.rs`: topology, observe, plan, submit, evict, publish, store follow one another; probe, hosted and orders run side by side within observe); a phase a round skipped counts 0 |
//! | `shardcast_manager_publish_seconds` | summary | a changed table's publish until the store and every listed proxy have it: p50, p99 over the last 1024, sum, count |
//! | `shardcast_manager_decisions_total{action,reason}` | counter | decisions logged |
//! | `shardcast_manager_orders_total{outcome}` | counter | pre-fetch orders by how they ended: done, failed, cancelled, refused |
//! | `shardcast_manager_orders_open` | gauge | orders sync still holds |
//! | `shardcast_manager_orders_limit` | gauge | orders that may be open at sync at once (`state/admission.rs`): the configured cap, or less while sync's measured rate could not finish that many within half the order timeout |
//! | `shardcast_manager_orders_cap` | gauge | the configured cap, `manager.orders_in_flight_max` |
//! | `shardcast_manager_nodes_held_down` | gauge | nodes down whose replicas the last plan held, not dropped: fewer than half the nodes were healthy (Envoy's panic threshold) |
//! | `shardcast_manager_orders_held_back` | gauge | orders wanted but not sent in the last round for want of room (additions the plan deferred, refreshes not ordered) |
//! | `shardcast_manager_sync_finish_rate` | gauge | this manager's orders sync finished per second over the last 30 s |
//! | `shardcast_manager_prefetches_total{reason}` | counter | pre-fetch orders sync took (adds and refreshes), by the reason that drove them |
//! | `shardcast_manager_demand_prefetches_total{warm}` | counter | demand-driven pre-fetched replicas by when they were warm: `before_rise`, `after_rise`, `no_rise` (`state/prefetch.rs`) |
//! | `shardcast_manager_rises_total{met}` | counter | shard episodes whose observed demand crossed the threshold, by whether a pre-fetched replica was warm before: `warm`, `cold` |
//! | `shardcast_manager_publish_failures_total{target}` | counter | table publishes not delivered: metadata, proxy |
//! | `shardcast_manager_proxies_behind` | gauge | listed proxies without the current version |
//! | `shardcast_manager_leader` | gauge | 1 while this manager leads and may write |
//! | `shardcast_manager_epoch` | gauge | the epoch of its current or last term |

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use shardcast_edge::metrics::{Kind, Writer};

use super::phases::{Phase, PhaseHistograms};
use super::state::Decision;
use super::Manager;
use crate::planner::Reason;

const ROUNDS_KEPT: usize = 1024;

/// Where a publish was not delivered (the `target` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Metadata,
    Proxy,
}

/// Wall times kept for quantiles: the last [`ROUNDS_KEPT`], with the sum
/// and count of all.
#[derive(Default)]
struct Window {
    kept: Mutex<VecDeque<f64>>,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Window {
    fn observe(&self, d: Duration) {
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
        let mut q = self.kept.lock();
        if q.len() >= ROUNDS_KEPT {
            q.pop_front();
        }
        q.push_back(d.as_secs_f64());
    }

    /// The `q` quantile (nearest rank) of the times kept; 0 without any.
    fn quantile(&self, q: f64) -> f64 {
        let mut v: Vec<f64> = self.kept.lock().iter().copied().collect();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    fn render(&self, w: &mut Writer<'_>, name: &str, help: &str) {
        w.family(name, Kind::Summary, help);
        for q in [0.5, 0.99] {
            w.sample(name, &[("quantile", &q.to_string())], self.quantile(q));
        }
        w.sample(
            &format!("{name}_sum"),
            &[],
            self.sum_us.load(Relaxed) as f64 / 1e6,
        )
        .sample(&format!("{name}_count"), &[], self.count.load(Relaxed));
    }
}

/// Counters the manager's loop keeps (the rest is read from its state).
#[derive(Default)]
pub struct ManagerMetrics {
    rounds: Window,
    /// Rounds woken by finished orders that only applied them ([`super::Manager`]'s
    /// `orders_round`): not planning rounds, kept apart.
    order_rounds: Window,
    phases: PhaseHistograms,
    publishes: Window,
    decisions: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    publish_failures: [AtomicU64; 2],
}

impl ManagerMetrics {
    /// A round took `d`, `spent` of it in each phase.
    pub fn round(&self, d: Duration, spent: [Duration; Phase::ALL.len()]) {
        self.rounds.observe(d);
        self.phases.observe(&spent);
    }

    /// A round that only followed the orders took `d`.
    pub fn orders_round(&self, d: Duration) {
        self.order_rounds.observe(d);
    }

    /// A changed table went out: `d` from the start of its publish until
    /// the store and every listed proxy answered (a proxy answers after it
    /// applied the table).
    pub fn published(&self, d: Duration) {
        self.publishes.observe(d);
    }

    pub fn decision(&self, d: &Decision) {
        *self
            .decisions
            .lock()
            .entry((d.action, d.reason.as_str()))
            .or_default() += 1;
    }

    pub fn publish_failed(&self, t: Target) {
        self.publish_failures[t as usize].fetch_add(1, Relaxed);
    }
}

/// Append the manager's metrics to `o`.
pub fn render(o: &mut String, m: &Manager) {
    // The few numbers read under the state's lock, not a copy of the
    // whole state (ten thousand shards'), which would hold the round.
    let (rounds, out, adm, held_down, prefetch, behind) = m.with_state(|st| {
        (
            st.rounds,
            st.outcomes,
            st.admission_view(crate::time::now_unix_ms()),
            st.last_plan.as_ref().map_or(0, |p| p.held_down),
            st.prefetch.view.clone(),
            st.proxies_behind.len(),
        )
    });
    let mm = &m.metrics;
    let mut w = Writer::new(o);
    w.counter(
        "shardcast_manager_rounds_total",
        "Rounds run, leading or standing by.",
        rounds,
    );

    mm.rounds.render(
        &mut w,
        "shardcast_manager_round_seconds",
        "Wall time of a planning round (quantiles over the last 1024 rounds).",
    );
    mm.order_rounds.render(
        &mut w,
        "shardcast_manager_orders_round_seconds",
        "Wall time of a round woken by finished orders that applied them and published without planning (quantiles over the last 1024).",
    );
    let name = "shardcast_manager_round_phase_seconds";
    w.family(
        name,
        Kind::Histogram,
        "A round's time in each of its phases (0 for a phase the round skipped).",
    );
    mm.phases.render(&mut w, name);
    mm.publishes.render(
        &mut w,
        "shardcast_manager_publish_seconds",
        "Publishing a changed table until the store and every listed proxy have it (quantiles over the last 1024).",
    );

    let name = "shardcast_manager_decisions_total";
    w.family(
        name,
        Kind::Counter,
        "Decisions logged, by action and reason.",
    );
    for ((action, reason), n) in mm.decisions.lock().iter() {
        w.sample(name, &[("action", *action), ("reason", *reason)], *n);
    }

    w.by_label(
        "shardcast_manager_orders_total",
        Kind::Counter,
        "Pre-fetch orders by how they ended.",
        "outcome",
        [
            ("done", out.done),
            ("failed", out.failed),
            ("cancelled", out.cancelled),
            ("refused", out.refused),
        ],
    );
    w.gauge(
        "shardcast_manager_orders_open",
        "Pre-fetch orders sync still holds.",
        adm.in_flight,
    );
    w.gauge(
        "shardcast_manager_orders_limit",
        "Pre-fetch orders that may be open at sync at once (the cap, or less while sync's measured rate could not finish that many within half the order timeout).",
        adm.limit.min(u32::MAX as usize) as u64,
    );
    w.gauge(
        "shardcast_manager_orders_cap",
        "The configured cap on pre-fetch orders open at sync.",
        adm.cap.min(u32::MAX as usize) as u64,
    );
    w.gauge(
        "shardcast_manager_orders_held_back",
        "Pre-fetch orders wanted but not sent in the last round for want of room.",
        adm.held_back,
    );
    w.gauge(
        "shardcast_manager_nodes_held_down",
        "Nodes down whose replicas the last plan held rather than dropped: fewer than half the nodes were healthy (0 otherwise).",
        held_down as u64,
    );
    w.gauge(
        "shardcast_manager_sync_finish_rate",
        "This manager's pre-fetch orders sync finished per second over the last 30 s.",
        adm.rate_per_s.unwrap_or(0.0),
    );

    let p = &prefetch;
    w.by_label(
        "shardcast_manager_prefetches_total",
        Kind::Counter,
        "Pre-fetch orders sync took (adds and refreshes), by the reason that drove them.",
        "reason",
        Reason::ALL.map(|r| (r.as_str(), p.driven_by(r))),
    );
    w.by_label(
        "shardcast_manager_demand_prefetches_total",
        Kind::Counter,
        "Demand-driven pre-fetched replicas, by when they were warm against their shard's rise.",
        "warm",
        [
            ("before_rise", p.warm_before_rise),
            ("after_rise", p.warm_after_rise),
            ("no_rise", p.no_rise),
        ],
    );
    w.by_label(
        "shardcast_manager_rises_total",
        Kind::Counter,
        "Shard episodes whose observed demand crossed the threshold, by whether a pre-fetched replica was warm before.",
        "met",
        [
            ("warm", p.rises_met_warm),
            ("cold", p.rises - p.rises_met_warm),
        ],
    );

    w.by_label(
        "shardcast_manager_publish_failures_total",
        Kind::Counter,
        "Table publishes not delivered, by target.",
        "target",
        [("metadata", Target::Metadata), ("proxy", Target::Proxy)]
            .map(|(label, t)| (label, mm.publish_failures[t as usize].load(Relaxed))),
    );

    w.gauge(
        "shardcast_manager_proxies_behind",
        "Listed proxies without the current table version.",
        behind,
    );

    let lease = m.lease();
    let v = lease.view();
    w.gauge(
        "shardcast_manager_leader",
        "1 while this manager holds the lease and writes.",
        v.leader && lease.may_write().is_some(),
    )
    .gauge(
        "shardcast_manager_epoch",
        "The epoch (fencing token) of this manager's current or last term.",
        v.epoch,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::state::{Effect, Event};
    use crate::planner::{Action, Plan, Reason};

    /// The value of the sample `series` (name and labels as rendered).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn a_real_managers_rounds_decisions_orders_and_leadership_are_rendered() {
        let dir = tempfile::tempdir().unwrap();
        let (m, _, _) = crate::manager::tests::demo_manager(dir.path());
        let topo = m.topology();
        let shard = topo.shards[0].id.clone();
        let node = topo
            .nodes
            .iter()
            .find(|n| !topo.shards[0].replicas.contains(&n.name))
            .unwrap()
            .name
            .clone();
        // An operator command, and an add carried through to done.
        m.drain_node(&topo.nodes[0].name, true).unwrap();
        let plan = Plan {
            actions: vec![Action::Add {
                shard: shard.clone(),
                node: node.clone(),
                reason: Reason::Forecast,
                priority: 1.0,
                deadline_ms: 10_000,
                replaces: None,
                over_capacity: false,
                detail: "test".into(),
            }],
            ..Plan::default()
        };
        let fx = m.apply(Event::PlanComputed {
            plan,
            shards: vec![],
            now: 1,
            tnow: 1,
        });
        let Some(Effect::Submit(order)) = fx.into_iter().next() else {
            panic!("an order")
        };
        for e in m.apply(Event::OrderSubmitted {
            order,
            id: 9,
            now: 2,
        }) {
            if let Effect::Record(d) = e {
                m.metrics.decision(&d);
            }
        }
        m.apply(Event::OrderReported {
            id: 9,
            report: crate::manager::state::tests::at_sync(
                shardmap::contract::OrderState::Done,
                1,
                1,
            ),
            now: 3,
        });
        // A round that could not reach its proxy.
        m.apply(Event::RoundFinished { now: 4 });
        m.apply(Event::NotDelivered {
            proxy: "http://127.0.0.1:1".into(),
        });
        m.metrics.publish_failed(Target::Proxy);
        for ms in [10, 20, 30, 1000] {
            let mut spent = [Duration::ZERO; Phase::ALL.len()];
            spent[Phase::Plan as usize] = Duration::from_millis(ms / 2);
            m.metrics.round(Duration::from_millis(ms), spent);
        }
        m.metrics.published(Duration::from_millis(7));

        let mut o = String::new();
        crate::metrics::render_manager_state(&mut o, &m);
        let at = |s: &str| sample(&o, s).unwrap_or_else(|| panic!("{s} in\n{o}"));
        assert_eq!(at("shardcast_manager_rounds_total"), 1.0);
        assert_eq!(at("shardcast_manager_round_seconds_count"), 4.0);
        assert_eq!(
            at("shardcast_manager_round_seconds{quantile=\"0.5\"}"),
            0.02
        );
        assert_eq!(
            at("shardcast_manager_round_seconds{quantile=\"0.99\"}"),
            1.0
        );
        assert_eq!(
            at("shardcast_manager_round_phase_seconds_count{phase=\"plan\"}"),
            4.0
        );
        assert_eq!(
            at("shardcast_manager_round_phase_seconds_sum{phase=\"plan\"}"),
            0.53
        );
        assert_eq!(
            at("shardcast_manager_round_phase_seconds_bucket{phase=\"plan\",le=\"0.02\"}"),
            3.0
        );
        assert_eq!(
            at("shardcast_manager_round_phase_seconds_sum{phase=\"hosted\"}"),
            0.0
        );
        assert_eq!(at("shardcast_manager_publish_seconds_count"), 1.0);
        assert_eq!(
            at("shardcast_manager_publish_seconds{quantile=\"0.99\"}"),
            0.007
        );
        assert_eq!(
            at("shardcast_manager_decisions_total{action=\"drain_node\",reason=\"operator\"}"),
            1.0
        );
        assert_eq!(
            at("shardcast_manager_decisions_total{action=\"add\",reason=\"forecast\"}"),
            1.0
        );
        assert_eq!(at("shardcast_manager_orders_total{outcome=\"done\"}"), 1.0);
        assert_eq!(
            at("shardcast_manager_orders_total{outcome=\"failed\"}"),
            0.0
        );
        assert_eq!(at("shardcast_manager_orders_open"), 0.0);
        assert_eq!(
            at("shardcast_manager_prefetches_total{reason=\"forecast\"}"),
            1.0
        );
        assert_eq!(
            at("shardcast_manager_prefetches_total{reason=\"load\"}"),
            0.0
        );
        // The plan named no shard's demand: no episode, nothing to time.
        for when in ["before_rise", "after_rise", "no_rise"] {
            let s = format!("shardcast_manager_demand_prefetches_total{{warm=\"{when}\"}}");
            assert_eq!(at(&s), 0.0);
        }
        assert_eq!(at("shardcast_manager_rises_total{met=\"cold\"}"), 0.0);
        assert_eq!(
            at("shardcast_manager_publish_failures_total{target=\"proxy\"}"),
            1.0
        );
        assert_eq!(at("shardcast_manager_proxies_behind"), 1.0);
        // No metadata store: it leads alone, in epoch 1.
        assert_eq!(at("shardcast_manager_leader"), 1.0);
        assert_eq!(at("shardcast_manager_epoch"), 1.0);
        // The manager's part of the forecaster's /metrics, as the API
        // renders it: strict Prometheus text, each family once.
        let mut all = crate::metrics::Metrics::default().render(&crate::store::Store::new(
            crate::store::Retention::default(),
            crate::time::Zone::utc(),
            16,
        ));
        crate::metrics::render_manager(&mut all, m.refusals());
        crate::metrics::render_lease(&mut all, m.lease());
        crate::metrics::render_manager_state(&mut all, &m);
        crate::metrics::render_order_events(&mut all, &Default::default());
        shardcast_edge::metrics::parse_strict(&all).unwrap_or_else(|e| panic!("{e}\n{all}"));
        for l in o.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("shardcast_manager_"), "{l}");
        }
    }
}
