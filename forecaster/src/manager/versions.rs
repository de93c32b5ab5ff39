//! The manager's side of assignment versions (DESIGN.md, "Versions"): the
//! manager owns the [`AssignmentVersion`] of the tables it publishes — its
//! epoch, then a counter it advances — and a refusal from a target (a 409
//! from a proxy, a newer table in the metadata store) is never taken for
//! delivery. What a refusal means is decided here, without I/O.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use shardmap::AssignmentVersion;

/// The epoch of a manager without a metadata store (no lease to hold: it
/// is the one manager): above the epoch 0 of hand-written updates (a
/// bare-integer version) and of tables written before epochs existed. With
/// a store, each term takes its epoch from `<prefix>:epoch`
/// ([`super::lease`]), which starts at 1 too.
pub const EPOCH: u64 = 1;

/// What a target's refusal of the manager's assignment at `ours` means,
/// given the version the target holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The target holds exactly the manager's version: delivered.
    Current,
    /// The target holds a newer version of the manager's epoch (a manager
    /// restarted with a lower counter, or another writer): re-send the same
    /// assignment numbered this, past the target's.
    Outrank(AssignmentVersion),
    /// The target holds a version no version of the manager's epoch can
    /// outrank (a higher epoch: another manager leads). Not delivered;
    /// nothing to re-number.
    Fenced,
    /// The target holds an older version yet refused: it moved between the
    /// write and its answer. Not delivered; sent again next round.
    Retry,
}

/// Decide what to do about a refusal of `ours` by a target at `theirs`.
pub fn on_refusal(ours: AssignmentVersion, theirs: AssignmentVersion) -> Refusal {
    if theirs == ours {
        return Refusal::Current;
    }
    if theirs < ours {
        return Refusal::Retry;
    }
    match ours.past(theirs) {
        Some(v) => Refusal::Outrank(v),
        None => Refusal::Fenced,
    }
}

/// Refusals of the manager's table, by target (`/metrics` and `/manager`).
#[derive(Debug, Default)]
pub struct Refusals {
    pub proxy: AtomicU64,
    pub metadata: AtomicU64,
}

impl Refusals {
    pub fn snapshot(&self) -> (u64, u64) {
        (self.proxy.load(Relaxed), self.metadata.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(epoch: u64, counter: u64) -> AssignmentVersion {
        AssignmentVersion::new(epoch, counter)
    }

    #[test]
    fn a_refusal_is_delivery_only_at_the_same_version() {
        let ours = v(EPOCH, 100);
        assert_eq!(on_refusal(ours, ours), Refusal::Current);
        // A target ahead of the manager in its epoch: one past the target's.
        assert_eq!(
            on_refusal(ours, v(EPOCH, 101)),
            Refusal::Outrank(v(EPOCH, 102))
        );
        assert_eq!(
            on_refusal(ours, v(EPOCH, 5_000)),
            Refusal::Outrank(v(EPOCH, 5_001))
        );
        // A higher epoch cannot be outranked by counting.
        assert_eq!(on_refusal(ours, v(EPOCH + 1, 0)), Refusal::Fenced);
        assert_eq!(on_refusal(ours, v(EPOCH, u64::MAX)), Refusal::Fenced);
        // Older than ours and still refused: a race; try again later.
        assert_eq!(on_refusal(ours, v(EPOCH, 99)), Refusal::Retry);
        assert_eq!(on_refusal(ours, v(0, 1 << 60)), Refusal::Retry);
    }
}
