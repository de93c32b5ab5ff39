//! What a pre-fetched copy is worth against what it costs to hold.
//!
//! A copy of a shard on one more node pays when demand crosses the shard's
//! threshold: every request it then serves from memory is a provider read
//! (a wide-area round trip) the storefront does not wait for. Its price is
//! the memory it holds meanwhile. Per hour:
//!
//! - value = P(demand crosses the threshold) × the requests of an hour at
//!   the threshold × the cost of a miss (ms of storefront wait);
//! - cost = the copy's size (MB) × the price of memory (storefront ms an
//!   MB-hour of cache must save to be worth holding).
//!
//! The planner keeps (or adds) the copy while value ≥ cost. P comes from
//! the probabilistic forecast's quantiles ([`p_exceed`]); a shard with
//! more traffic at its threshold is worth a copy at a lower probability,
//! a big shard needs a higher one.

use serde::Serialize;

/// The prices the planner weighs a copy with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Economics {
    /// What one request served by the provider instead of the cache costs
    /// the storefront, ms (the provider's read latency).
    pub miss_cost_ms: f64,
    /// Storefront ms one MB of cache must save per hour to be worth
    /// holding. 0 turns the weighing off (the quantile rule decides).
    pub memory_cost_ms_per_mb_hour: f64,
    /// Clock ms between two manager rounds: a copy ordered now serves from
    /// the first round after it landed, so the next hour's crossing needs
    /// a copy now only when an order placed a round later would be late
    /// ([`Economics::priced`]).
    pub round_ms: f64,
}

impl Economics {
    pub fn enabled(&self) -> bool {
        self.memory_cost_ms_per_mb_hour > 0.0 && self.miss_cost_ms > 0.0
    }

    /// Expected storefront ms a copy saves per hour.
    pub fn value_ms_per_hour(&self, p_exceed: f64, threshold_rps: f64) -> f64 {
        clamp01(p_exceed) * threshold_rps.max(0.0) * 3600.0 * self.miss_cost_ms.max(0.0)
    }

    /// What holding a copy of `bytes` costs per hour, in the same ms.
    pub fn cost_ms_per_hour(&self, bytes: u64) -> f64 {
        bytes as f64 / 1e6 * self.memory_cost_ms_per_mb_hour.max(0.0)
    }

    /// The probability of crossing above which a copy pays (may exceed 1:
    /// then no forecast justifies it).
    pub fn break_even(&self, threshold_rps: f64, bytes: u64) -> f64 {
        let per_p = self.value_ms_per_hour(1.0, threshold_rps);
        if per_p > 0.0 {
            self.cost_ms_per_hour(bytes) / per_p
        } else {
            f64::INFINITY
        }
    }

    /// Clock ms from ordering a copy until it serves, at the latest, if
    /// the order waits for the next round: that round, the transfer, and
    /// the round after it that turns the landed copy serving.
    pub fn lead_ms(&self, transfer_ms: i64) -> i64 {
        let round = if self.round_ms.is_finite() {
            self.round_ms.max(0.0)
        } else {
            0.0
        };
        (2.0 * round) as i64 + transfer_ms.max(0)
    }

    /// The probability a copy is priced at this round: the hour in
    /// progress's, or the next hour's when that is higher and waiting
    /// would be late — the next hour starts within [`Economics::lead_ms`]
    /// (`until_next_ms` away) — or the copy is already held (dropping it
    /// now only to fetch it again for the next hour is churn; and a
    /// forecast computed before the hour turned still calls the hour in
    /// progress "next"). `None` when the forecast gives neither.
    pub fn priced(
        &self,
        this: Option<f64>,
        next: Option<f64>,
        held: bool,
        until_next_ms: i64,
        transfer_ms: i64,
    ) -> Option<f64> {
        let next = next.filter(|_| held || until_next_ms <= self.lead_ms(transfer_ms));
        match (this, next) {
            (Some(a), Some(b)) => Some(clamp01(a).max(clamp01(b))),
            (a, b) => a.or(b).map(clamp01),
        }
    }

    /// Whether a copy is worth its memory at this probability of crossing.
    pub fn worth_a_copy(&self, p_exceed: f64, threshold_rps: f64, bytes: u64) -> bool {
        let p = clamp01(p_exceed);
        p > 0.0 && p >= self.break_even(threshold_rps, bytes)
    }
}

fn clamp01(x: f64) -> f64 {
    if x.is_finite() {
        x.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// P(X > `x`) from a forecast's quantiles (`levels` increasing in (0, 1),
/// `values` the quantiles at them): linear between the quantiles, `1 −
/// level` at a quantile, `1 − l₀` or more below the lowest (rising to 1 at
/// zero demand), and an exponential tail through the two highest above the top. Crossed
/// quantiles are sorted first. Empty or mismatched input gives 0.
pub fn p_exceed(levels: &[f32], values: &[f32], x: f64) -> f64 {
    if levels.is_empty() || levels.len() != values.len() || !x.is_finite() {
        return 0.0;
    }
    let mut v: Vec<f64> = values
        .iter()
        .map(|&v| {
            if v.is_finite() {
                f64::from(v).max(0.0)
            } else {
                0.0
            }
        })
        .collect();
    v.sort_by(f64::total_cmp);
    let l: Vec<f64> = levels
        .iter()
        .map(|&l| f64::from(l).clamp(0.0, 1.0))
        .collect();
    let n = v.len();
    if x < 0.0 {
        return 1.0;
    }
    if x < v[0] {
        // From P = 1 at zero demand down to 1 − l₀ at the lowest quantile.
        let f = if v[0] > 0.0 { x / v[0] } else { 1.0 };
        return 1.0 - f * l[0];
    }
    if x >= v[n - 1] {
        // An exponential tail through the two highest quantiles: the
        // forecast says nothing above its top quantile, and a heavy tail
        // (1/x) there would keep a shard's value at a threshold far above
        // every forecast about constant, as value ∝ threshold × P.
        let tail = 1.0 - l[n - 1];
        if x == v[n - 1] {
            return tail;
        }
        if n < 2 || v[n - 1] <= v[n - 2] || l[n - 1] <= l[n - 2] || tail <= 0.0 {
            return 0.0;
        }
        let rate = ((1.0 - l[n - 2]) / tail).ln() / (v[n - 1] - v[n - 2]);
        return tail * (-rate * (x - v[n - 1])).exp();
    }
    // v[i] <= x < v[i + 1]
    let i = v.partition_point(|&q| q <= x) - 1;
    let (a, b) = (v[i], v[i + 1]);
    let f = if b > a { (x - a) / (b - a) } else { 1.0 };
    1.0 - (l[i] + f * (l[i + 1] - l[i]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const L: [f32; 9] = [0.01, 0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975, 0.99];

    #[test]
    fn exceedance_reads_the_quantiles() {
        let v: Vec<f32> = (1..=9).map(|i| i as f32 * 10.0).collect();
        assert!((p_exceed(&L, &v, 50.0) - 0.5).abs() < 1e-6);
        assert!((p_exceed(&L, &v, 70.0) - 0.1).abs() < 1e-6);
        // halfway between the 0.5 and 0.75 quantiles
        assert!((p_exceed(&L, &v, 55.0) - 0.375).abs() < 1e-6);
        assert!((p_exceed(&L, &v, 0.0) - 1.0).abs() < 1e-9);
        // above the top: the 1% tail falling exponentially at the rate of
        // the two highest quantiles (2.5% at 80, 1% at 90)
        let rate = (0.025f64 / 0.01).ln() / 10.0;
        assert!((p_exceed(&L, &v, 100.0) - 0.01 * (-rate * 10.0).exp()).abs() < 1e-6);
        assert!(p_exceed(&L, &v, 180.0) < 1e-5);
        // a threshold far above every forecast is worth nothing: value
        // (∝ threshold × P) falls as the threshold rises
        let e = Economics {
            miss_cost_ms: 30.0,
            memory_cost_ms_per_mb_hour: 150.0,
            round_ms: 0.0,
        };
        let at = |x: f64| e.value_ms_per_hour(p_exceed(&L, &v, x), x);
        assert!(at(1_000.0) < at(200.0) && at(200.0) < at(100.0));
        assert!(!e.worth_a_copy(p_exceed(&L, &v, 5_000.0), 5_000.0, 10_000));
        assert_eq!(p_exceed(&[], &[], 1.0), 0.0);
        assert_eq!(p_exceed(&L, &v[..3], 1.0), 0.0);
        // an all-zero forecast: nothing crosses a positive threshold
        assert_eq!(p_exceed(&L, &[0.0; 9], 0.5), 0.0);
    }

    #[test]
    fn a_busier_shard_is_worth_a_copy_at_a_lower_probability() {
        let e = Economics {
            miss_cost_ms: 30.0,
            memory_cost_ms_per_mb_hour: 1000.0,
            round_ms: 0.0,
        };
        // 150 kB: 150 ms of storefront wait per hour to pay; 40 requests/h
        // at the threshold: 1,200 ms per unit of probability.
        let bytes = 150_000;
        let quiet = e.break_even(40.0 / 3600.0, bytes);
        assert!((quiet - 0.125).abs() < 1e-9, "{quiet}");
        let busy = e.break_even(400.0 / 3600.0, bytes);
        assert!(busy < quiet / 9.0);
        assert!(e.worth_a_copy(0.2, 40.0 / 3600.0, bytes));
        assert!(!e.worth_a_copy(0.1, 40.0 / 3600.0, bytes));
        assert!(e.worth_a_copy(0.02, 400.0 / 3600.0, bytes));
        // a shard twice the size needs twice the probability
        assert!((e.break_even(40.0 / 3600.0, 2 * bytes) - 2.0 * quiet).abs() < 1e-9);
        // certainty of no crossing is never worth anything
        assert!(!e.worth_a_copy(0.0, 1e9, 1));
        assert!(!Economics {
            memory_cost_ms_per_mb_hour: 0.0,
            ..e
        }
        .enabled());
    }

    #[test]
    fn the_next_hour_prices_a_copy_only_when_waiting_a_round_would_be_late() {
        // Rounds 20 clock minutes apart, a 1-minute transfer: an order at
        // the next round serves 41 minutes from now at the latest.
        let min = 60_000;
        let e = Economics {
            miss_cost_ms: 30.0,
            memory_cost_ms_per_mb_hour: 150.0,
            round_ms: 20.0 * min as f64,
        };
        assert_eq!(e.lead_ms(min), 41 * min);
        let (quiet, spike) = (Some(0.001), Some(0.9));
        // 50 minutes before the spike hour: the next round is in time.
        assert_eq!(e.priced(quiet, spike, false, 50 * min, min), quiet);
        // 41 minutes before: the next round would be late; price it now.
        assert_eq!(e.priced(quiet, spike, false, 41 * min, min), spike);
        // A copy held keeps the next hour's price: no drop and re-fetch.
        assert_eq!(e.priced(quiet, spike, true, 50 * min, min), spike);
        // The hour in progress always counts.
        assert_eq!(e.priced(spike, quiet, false, 50 * min, min), spike);
        assert_eq!(e.priced(None, spike, false, 50 * min, min), None);
        assert_eq!(e.priced(None, spike, false, 10 * min, min), spike);
        assert_eq!(e.priced(None, None, true, 0, min), None);
        // A slower transfer needs the copy earlier.
        assert_eq!(e.priced(quiet, spike, false, 50 * min, 10 * min), spike);
    }

    proptest! {
        #[test]
        fn exceedance_is_a_probability_falling_with_demand(
            mut v in proptest::collection::vec(0.0f32..1000.0, 9),
            x in 0.0f64..2000.0, dx in 0.0f64..500.0,
        ) {
            v.sort_by(f32::total_cmp);
            let (a, b) = (p_exceed(&L, &v, x), p_exceed(&L, &v, x + dx));
            prop_assert!((0.0..=1.0).contains(&a), "{a}");
            prop_assert!(b <= a + 1e-9, "P(X > {x}) = {a} < P(X > {}) = {b}", x + dx);
        }

        #[test]
        fn crossed_quantiles_read_as_sorted(v in proptest::collection::vec(0.0f32..1000.0, 9), x in 0.0f64..1000.0) {
            let mut s = v.clone();
            s.sort_by(f32::total_cmp);
            prop_assert!((p_exceed(&L, &v, x) - p_exceed(&L, &s, x)).abs() < 1e-12);
        }

        #[test]
        fn worth_grows_with_probability_and_traffic(
            p in 0.0f64..1.0, dp in 0.0f64..0.5, thr in 0.0001f64..10.0, k in 1.0f64..10.0,
            bytes in 1u64..10_000_000, price in 1.0f64..10_000.0,
        ) {
            let e = Economics { miss_cost_ms: 30.0, memory_cost_ms_per_mb_hour: price, round_ms: 0.0 };
            if e.worth_a_copy(p, thr, bytes) {
                prop_assert!(e.worth_a_copy((p + dp).min(1.0), thr, bytes));
                prop_assert!(e.worth_a_copy(p, thr * k, bytes));
            }
            if !e.worth_a_copy(p, thr, bytes) {
                prop_assert!(!e.worth_a_copy(p, thr, bytes * 2));
            }
        }
    }
}
