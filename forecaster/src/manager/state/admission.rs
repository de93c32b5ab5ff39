//! Admission of pre-fetch orders: how many may be open at sync at once,
//! and when an open one has stopped getting anywhere.
//!
//! Sync copies a few shards at a time (its `concurrency`), highest priority
//! first. Everything the manager orders beyond what sync can finish soon
//! only waits in sync's queue, where newer, more urgent orders overtake it:
//! in a start-up wave the tail of the queue waited past the order timeout
//! and was failed and cancelled on a healthy system. So the manager holds
//! back what sync cannot take: at most [`Admission::limit`] orders open —
//! the configured cap, or what sync finished over the last
//! [`RATE_WINDOW_MS`] extrapolated to half the order timeout when that is
//! less (never below [`LIMIT_FLOOR`]). What is held back stays wanted: the
//! planner ranks its additions and is given only the room left (the rest
//! are its `deferred`), refreshes go most loaded first, and both are
//! ordered in later rounds as room frees.
//!
//! The timeout is judged on what the order did, not on how long it
//! waited: a running order fails when not done within the timeout of sync
//! starting it; a queued one only when sync has neither started nor
//! finished any of this manager's orders for the timeout (a paused or
//! wedged sync, or one unreachable). A dead node's order still fails: it
//! starts and does not finish, or the node's replicas leave the plan.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

pub use shardmap::contract::manager::AdmissionView;
use shardmap::contract::manager::{OrderView, TrackedState};

/// Orders finished over this window make sync's measured rate.
pub const RATE_WINDOW_MS: i64 = 30_000;

/// The measured limit never goes below this: enough to keep sync's few
/// slots busy while the rate is learnt again after a quiet spell.
pub const LIMIT_FLOOR: usize = 64;

/// Admission bookkeeping (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// The configured cap on open orders.
    pub cap: usize,
    /// When sync started each open order (real time, Unix ms).
    started: HashMap<u64, i64>,
    /// When sync last started or finished one of this manager's orders.
    moved_unix_ms: Option<i64>,
    /// Orders finished, by second (Unix s), over the rate window.
    finished: VecDeque<(i64, u32)>,
    /// Held back this round: refreshes not ordered for want of room.
    pub refreshes_held: usize,
}

impl Admission {
    /// At most `cap` orders open; 0: no admission at all (no limit).
    pub fn new(cap: usize) -> Admission {
        Admission {
            cap: if cap == 0 { usize::MAX } else { cap },
            ..Admission::default()
        }
    }

    /// Orders sync finished per second over the window ending `now`;
    /// `None` when it finished none in it (nothing measured yet, or a
    /// quiet spell).
    pub fn rate(&self, now: i64) -> Option<f64> {
        let since = (now - RATE_WINDOW_MS).div_euclid(1000);
        let n: u32 = self
            .finished
            .iter()
            .filter(|(s, _)| *s > since)
            .map(|(_, n)| n)
            .sum();
        (n > 0).then(|| n as f64 / (RATE_WINDOW_MS as f64 / 1e3))
    }

    /// Orders that may be open at sync at `now`.
    pub fn limit(&self, timeout: Duration, now: i64) -> usize {
        match self.rate(now) {
            _ if self.cap == usize::MAX => usize::MAX,
            None => self.cap,
            Some(r) => {
                let sustained = (r * timeout.as_secs_f64() / 2.0).ceil() as usize;
                sustained.clamp(LIMIT_FLOOR.min(self.cap), self.cap)
            }
        }
    }

    /// Sync started order `id` at `at` (its own clock, or when first seen
    /// running).
    pub(super) fn started(&mut self, id: u64, at: i64, now: i64) {
        if self.started.insert(id, at.min(now)).is_none() {
            self.moved(now);
        }
    }

    /// Sync finished order `id` (done or cancelled by sync) at `now`.
    pub(super) fn finished(&mut self, id: u64, now: i64) {
        self.started.remove(&id);
        self.moved(now);
        let sec = now.div_euclid(1000);
        match self.finished.back_mut() {
            Some((s, n)) if *s == sec => *n += 1,
            _ => self.finished.push_back((sec, 1)),
        }
        let since = (now - RATE_WINDOW_MS).div_euclid(1000);
        while self.finished.front().is_some_and(|(s, _)| *s <= since) {
            self.finished.pop_front();
        }
    }

    /// The order is no longer followed (failed, cancelled by the manager).
    pub(super) fn gone(&mut self, id: u64) {
        self.started.remove(&id);
    }

    fn moved(&mut self, now: i64) {
        self.moved_unix_ms = Some(self.moved_unix_ms.map_or(now, |m| m.max(now)));
    }

    /// Why open order `o` is to be given up at `now`, if it is: running
    /// past the timeout since sync started it, or queued while sync has
    /// moved none of this manager's orders for the timeout.
    pub fn overdue(&self, o: &OrderView, timeout: Duration, now: i64) -> Option<String> {
        let t = timeout.as_millis() as i64;
        match (o.state, self.started.get(&o.id)) {
            (TrackedState::Running, Some(&since)) if now - since > t => {
                Some(format!("not done within {timeout:?} of sync starting it"))
            }
            (TrackedState::Running, _) => None,
            _ => {
                let since = self
                    .moved_unix_ms
                    .map_or(o.submitted_unix_ms, |m| m.max(o.submitted_unix_ms));
                (now - since > t).then(|| {
                    format!("queued at sync, which moved none of the orders for {timeout:?}")
                })
            }
        }
    }

    /// Forget what no longer concerns an open order.
    pub(super) fn keep_open(&mut self, open: impl Fn(u64) -> bool) {
        self.started.retain(|id, _| open(*id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_the_cap_until_a_rate_is_measured_then_half_the_timeout_of_it() {
        let timeout = Duration::from_secs(120);
        let mut a = Admission::new(1000);
        assert_eq!(a.limit(timeout, 0), 1000);
        assert_eq!(a.rate(0), None);
        // 3 orders a second for 30 s: 3/s × 60 s = 180 open at most.
        for i in 0..90 {
            a.finished(i, i as i64 * 333);
        }
        let now = 30_000;
        let r = a.rate(now).unwrap();
        assert!((r - 3.0).abs() < 0.2, "{r}");
        let l = a.limit(timeout, now);
        assert!((170..=190).contains(&l), "{l}");
        // A fast sync: the cap binds.
        for i in 0..30_000 {
            a.finished(1000 + i, now + i as i64);
        }
        assert_eq!(a.limit(timeout, now + 30_000), 1000);
        // A trickle: the floor.
        let mut a = Admission::new(1000);
        a.finished(1, 0);
        assert_eq!(a.limit(timeout, 1000), LIMIT_FLOOR);
        // Nothing finished in the window: the cap again.
        assert_eq!(a.limit(timeout, 1000 + RATE_WINDOW_MS), 1000);
    }
}
