//! How far behind the provider a node's answer may be, and when each hosted
//! copy is read to stay within that.
//!
//! One setting, `[freshness] max_staleness_s` (sync) and `max_staleness_s`
//! (a separate node), bounds both ways a node answers from its cache:
//!
//! - a slow-path fill of a shard the node does not host is kept for the
//!   bound, then read from the provider again;
//! - a hosted copy's delta is read so that a provider change is in the
//!   cache within the bound — and, with a bound above zero, no more often
//!   than about once per bound: every change of a row in between is one row
//!   of one delta read (the delta is "rows changed since the cursor", so a
//!   row changed ten times is read once, as it is now).
//!
//! [`CopyClock`] is the per-copy rule. With change notifications (the
//! PostgreSQL provider's NOTIFY), a copy is read as soon as a change is
//! known unless it was read within the last bound, in which case at the
//! bound — the leading edge is fresh when changes are rare, the trailing
//! edge coalesces them when they are many. Without notifications (SQLite)
//! a change may have come right after the last read, so every copy is read
//! once per bound. Either way the bound is measured from the start of the
//! read that made the copy current, minus the time the last read took, so
//! the next read *lands* within it. A bound of zero reads on every
//! notification and every poll, as fresh as the provider allows, and keeps
//! no slow-path fills.

use std::time::Duration;

use serde::Deserialize;

/// The shipped bound: what the reference node's fill TTL has always been.
pub const DEFAULT_MAX_STALENESS_S: f64 = 30.0;
/// Upper end of the bound (a day).
pub const MAX_STALENESS_LIMIT_S: f64 = 86_400.0;

/// `[freshness]` in the sync config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshnessFile {
    /// Seconds a node's answer may lag the provider (fractions allowed).
    #[serde(default = "d_max_staleness")]
    pub max_staleness_s: f64,
}

pub fn d_max_staleness() -> f64 {
    DEFAULT_MAX_STALENESS_S
}

impl Default for FreshnessFile {
    fn default() -> Self {
        FreshnessFile {
            max_staleness_s: d_max_staleness(),
        }
    }
}

/// The bound as a duration, or an error naming `field`.
pub fn bound(errs: &mut Vec<String>, field: &str, secs: f64) -> Duration {
    if !(0.0..=MAX_STALENESS_LIMIT_S).contains(&secs) {
        errs.push(format!(
            "{field}: {secs} must be between 0 and {MAX_STALENESS_LIMIT_S} seconds"
        ));
        return Duration::from_secs_f64(DEFAULT_MAX_STALENESS_S);
    }
    Duration::from_secs_f64(secs)
}

/// The slow-path fill lifetime: the bound. `fill_ttl_s` is the older name
/// of the node's half of it; accepted when it says the same as the bound,
/// an error naming both otherwise (two settings that disagree would let
/// fills and hosted copies lag by different amounts).
pub fn fill_ttl(
    errs: &mut Vec<String>,
    bound: Duration,
    bound_field: &str,
    legacy: Option<u64>,
    legacy_field: &str,
) -> Duration {
    if let Some(ttl) = legacy {
        if Duration::from_secs(ttl) != bound {
            errs.push(format!(
                "{legacy_field}: {ttl} differs from {bound_field} ({} s); fills and hosted copies share one bound now: remove {legacy_field} and set {bound_field}",
                bound.as_secs_f64()
            ));
        } else {
            tracing::warn!(
                field = legacy_field,
                "deprecated: the fill lifetime is {bound_field} now; remove {legacy_field}"
            );
        }
    }
    bound
}

/// When one hosted copy's delta is read next (all times Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyClock {
    /// The copy holds the provider as of this time (the start of the read
    /// that made it current).
    pub current_as_of: u64,
    /// How long that read took (the next one is started this much early).
    pub took: u64,
    /// The first change known since `current_as_of` (with notifications);
    /// without them every moment is possibly changed.
    pub changed_since: Option<u64>,
    /// `last_sync_unix_ms` of the copy as this clock last set it: a newer
    /// one means an order copied it meanwhile.
    pub synced: u64,
}

impl CopyClock {
    /// A copy made current by an order that finished at `synced`; a
    /// change notified before this clock existed would be lost, so it
    /// counts as changed (read once at the bound).
    pub fn copied(synced: u64) -> CopyClock {
        CopyClock {
            current_as_of: synced,
            took: 0,
            changed_since: Some(synced),
            synced,
        }
    }

    /// A read that started at `started` and finished at `finished`.
    pub fn read(&mut self, started: u64, finished: u64) {
        *self = CopyClock {
            current_as_of: started,
            took: finished.saturating_sub(started),
            changed_since: None,
            synced: finished,
        };
    }

    /// The provider notified a change at `at`.
    pub fn changed(&mut self, at: u64) {
        if self.changed_since.is_none() {
            self.changed_since = Some(at.max(self.current_as_of));
        }
    }

    /// When the copy is to be read next: `None` while nothing is known to
    /// have changed (with notifications) and the safety poll is not due.
    ///
    /// `notified`: the provider sends change notifications. `poll`: with
    /// notifications, a copy is still read this often (at least once per
    /// bound), in case one was lost.
    pub fn due_at(&self, bound: Duration, notified: bool, poll: Duration) -> Option<u64> {
        let (bound, poll) = (bound.as_millis() as u64, poll.as_millis() as u64);
        // Start early by what the last read took (at most half the bound,
        // so a slow provider cannot turn the bound into back-to-back reads).
        let lead = self.took.min(bound / 2);
        let at_bound = self.current_as_of + bound - lead;
        if !notified {
            // A zero bound: every poll.
            return Some(if bound == 0 {
                self.current_as_of + poll
            } else {
                at_bound
            });
        }
        let safety = self.current_as_of + bound.max(poll) - lead;
        Some(match self.changed_since {
            // Leading edge when the copy has been quiet, else at the bound.
            Some(c) => c.max(at_bound).min(safety),
            None => safety,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_millis(30_000);
    const POLL: Duration = Duration::from_millis(5_000);

    #[test]
    fn without_notifications_a_copy_is_read_once_per_bound_landing_within_it() {
        let mut c = CopyClock::copied(1_000);
        assert_eq!(c.due_at(S, false, POLL), Some(31_000));
        c.read(31_000, 31_400);
        assert_eq!(c.due_at(S, false, POLL), Some(61_000 - 400));
        // A provider slower than half the bound still reads once per half.
        c.read(61_000, 80_000);
        assert_eq!(c.due_at(S, false, POLL), Some(61_000 + 15_000));
    }

    #[test]
    fn with_notifications_changes_are_read_at_once_after_quiet_and_coalesced_within_the_bound() {
        // The safety poll above the bound: a copy with no known change is
        // read once per poll.
        let poll = Duration::from_secs(60);
        let mut c = CopyClock::copied(0);
        // A new copy is read once at the bound (a change may predate its clock).
        assert_eq!(c.due_at(S, true, poll), Some(30_000));
        c.read(0, 0);
        assert_eq!(c.due_at(S, true, poll), Some(60_000));
        // ... and at least once per bound when the poll is shorter.
        assert_eq!(c.due_at(S, true, POLL), Some(30_000));
        // A change after a quiet spell: read at once.
        c.changed(45_000);
        assert_eq!(c.due_at(S, true, poll), Some(45_000));
        // A change right after a read waits for the bound; later changes
        // do not move it.
        c.read(100_000, 100_200);
        c.changed(101_000);
        c.changed(120_000);
        assert_eq!(c.due_at(S, true, poll), Some(130_000 - 200));
        assert_eq!(c.changed_since, Some(101_000));
        // Every change is in the cache within the bound of its commit.
        for change in [100_001, 101_000, 129_000, 150_000] {
            let mut c = CopyClock::copied(0);
            c.read(100_000, 100_200);
            c.changed(change);
            let read = c.due_at(S, true, poll).unwrap();
            assert!(read + 200 <= change + 30_000, "{change}: read at {read}");
            assert!(
                read >= 100_000 + 30_000 - 200,
                "{change}: at most one read per bound"
            );
        }
    }

    #[test]
    fn a_zero_bound_reads_on_every_notification_and_every_poll() {
        let mut c = CopyClock::copied(0);
        c.read(10_000, 10_030);
        assert_eq!(c.due_at(Duration::ZERO, false, POLL), Some(15_000));
        assert_eq!(c.due_at(Duration::ZERO, true, POLL), Some(15_000));
        c.changed(10_050);
        assert_eq!(c.due_at(Duration::ZERO, true, POLL), Some(10_050));
    }

    #[test]
    fn the_bound_is_checked_and_the_older_fill_ttl_must_agree() {
        let mut errs = vec![];
        assert_eq!(
            bound(&mut errs, "freshness.max_staleness_s", 0.25),
            Duration::from_millis(250)
        );
        assert!(errs.is_empty());
        bound(&mut errs, "freshness.max_staleness_s", -1.0);
        bound(&mut errs, "freshness.max_staleness_s", f64::NAN);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("freshness.max_staleness_s: -1"));
        let mut errs = vec![];
        let ttl = fill_ttl(&mut errs, S, "b", Some(30), "node.fill_ttl_s");
        assert_eq!((ttl, errs.len()), (S, 0));
        fill_ttl(
            &mut errs,
            S,
            "freshness.max_staleness_s",
            Some(60),
            "node.fill_ttl_s",
        );
        assert!(
            errs[0].contains("node.fill_ttl_s: 60 differs from freshness.max_staleness_s"),
            "{errs:?}"
        );
    }
}
