//! Replica choice: which node of a shard's replicas gets a request.
//!
//! A policy is a type behind [`Selector`], not a branch in the hot path.
//! The default, [`P2c`], is power-of-two-choices on in-flight requests
//! weighted by node capacity: cheap, and close to least-loaded without the
//! herding that strict least-loaded causes across many proxies.

use crate::node::NodeRuntime;
use shardmap::table::NodeIdx;
use std::sync::Arc;

/// Picks one node among candidates.
pub trait Selector: Send + Sync {
    /// `candidates` are node indices; `nodes` resolves them; `skip` holds
    /// nodes already tried by this request. Returns `None` when no usable
    /// candidate remains.
    fn pick(
        &self,
        candidates: &[NodeIdx],
        nodes: &[Arc<NodeRuntime>],
        capacity: &[f64],
        skip: &[NodeIdx],
        now: u64,
    ) -> Option<NodeIdx>;
}

/// Power of two choices on `(in_flight + 1) / capacity`.
#[derive(Debug, Default, Clone, Copy)]
pub struct P2c;

#[inline]
fn load(nodes: &[Arc<NodeRuntime>], capacity: &[f64], i: NodeIdx) -> f64 {
    (nodes[i as usize].in_flight() as f64 + 1.0) / capacity[i as usize]
}

/// Candidates gathered on the stack in one pass; a shard has a handful of
/// replicas, and a longer list takes the two-pass path below.
const GATHER: usize = 16;

impl Selector for P2c {
    #[inline]
    fn pick(
        &self,
        candidates: &[NodeIdx],
        nodes: &[Arc<NodeRuntime>],
        capacity: &[f64],
        skip: &[NodeIdx],
        now: u64,
    ) -> Option<NodeIdx> {
        let ok = |i: &NodeIdx| !skip.contains(i) && nodes[*i as usize].usable(now);
        if candidates.len() <= GATHER {
            // One pass: the usable candidates, then two of them at random.
            let mut usable = [0 as NodeIdx; GATHER];
            let mut n = 0;
            for &i in candidates {
                if ok(&i) {
                    usable[n] = i;
                    n += 1;
                }
            }
            return match n {
                0 => None,
                1 => Some(usable[0]),
                _ => {
                    let (a, b) = two_of(n);
                    Some(lighter(nodes, capacity, usable[a], usable[b]))
                }
            };
        }
        let n = candidates.iter().filter(|i| ok(i)).count();
        match n {
            0 => None,
            1 => candidates.iter().copied().find(|i| ok(i)),
            _ => {
                let (a, b) = two_of(n);
                let mut usable = candidates.iter().copied().filter(|i| ok(i));
                let (lo, hi) = (a.min(b), a.max(b));
                let mut x = usable.nth(lo)?;
                let mut y = usable.nth(hi - lo - 1)?;
                if a > b {
                    std::mem::swap(&mut x, &mut y);
                }
                Some(lighter(nodes, capacity, x, y))
            }
        }
    }
}

/// Two distinct positions out of `n` (at least 2), uniformly at random:
/// both from one 64-bit draw, each half scaled to its range by a multiply
/// and a shift (a bias of at most `n / 2^32`, nothing for a shard's
/// handful of replicas), one access to the thread's generator.
#[inline]
fn two_of(n: usize) -> (usize, usize) {
    let r = fastrand::u64(..);
    let scale = |half: u64, m: usize| ((half * m as u64) >> 32) as usize;
    let a = scale(r & 0xffff_ffff, n);
    let mut b = scale(r >> 32, n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

/// The less loaded of `x` and `y`; ties go to `x`, the first draw, which is
/// uniformly random.
#[inline]
fn lighter(nodes: &[Arc<NodeRuntime>], capacity: &[f64], x: NodeIdx, y: NodeIdx) -> NodeIdx {
    if load(nodes, capacity, x) <= load(nodes, capacity, y) {
        x
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn nodes(n: usize) -> Vec<Arc<NodeRuntime>> {
        (0..n)
            .map(|i| Arc::new(NodeRuntime::new(&format!("n{i}"))))
            .collect()
    }

    #[test]
    fn spreads_and_prefers_less_loaded() {
        let ns = nodes(3);
        let cap = vec![1.0; 3];
        let mut count = [0usize; 3];
        for _ in 0..3000 {
            let i = P2c.pick(&[0, 1, 2], &ns, &cap, &[], 1).unwrap();
            count[i as usize] += 1;
        }
        assert!(count.iter().all(|&c| c > 500), "{count:?}");
        // a loaded node loses every two-way comparison
        let _held: Vec<_> = (0..50).map(|_| ns[0].start()).collect();
        let picks0 = (0..1000)
            .filter(|_| P2c.pick(&[0, 1, 2], &ns, &cap, &[], 1) == Some(0))
            .count();
        assert_eq!(picks0, 0);
    }

    #[test]
    fn a_long_candidate_list_takes_the_same_choice_rules() {
        let ns = nodes(GATHER + 4);
        let cap = vec![1.0; ns.len()];
        let all: Vec<NodeIdx> = (0..ns.len() as NodeIdx).collect();
        let mut seen = vec![0usize; ns.len()];
        for _ in 0..4000 {
            let i = P2c.pick(&all, &ns, &cap, &[0], 1).unwrap();
            seen[i as usize] += 1;
        }
        assert_eq!(seen[0], 0, "a tried node is skipped");
        assert!(seen[1..].iter().all(|&c| c > 0), "{seen:?}");
        let _held: Vec<_> = (0..50).map(|_| ns[1].start()).collect();
        assert!((0..500).all(|_| P2c.pick(&all, &ns, &cap, &[], 1) != Some(1)));
    }

    #[test]
    fn two_of_draws_every_ordered_pair_evenly() {
        for n in 2..=5usize {
            let mut seen = vec![0usize; n * n];
            let draws = 20_000 * n * (n - 1);
            for _ in 0..draws {
                let (a, b) = two_of(n);
                assert!(a < n && b < n && a != b, "{n}: ({a}, {b})");
                seen[a * n + b] += 1;
            }
            for a in 0..n {
                for b in (0..n).filter(|&b| b != a) {
                    let c = seen[a * n + b];
                    // 20,000 expected: ±5 % is over 7 standard deviations
                    assert!((19_000..=21_000).contains(&c), "{n}: ({a}, {b}) {c} times");
                }
            }
        }
    }

    #[test]
    fn skips_tried_and_unusable() {
        let ns = nodes(2);
        let cap = vec![1.0; 2];
        assert_eq!(P2c.pick(&[0, 1], &ns, &cap, &[0], 1), Some(1));
        ns[1].record_failure(1, Duration::from_secs(60));
        assert_eq!(
            P2c.pick(&[0, 1], &ns, &cap, &[0], crate::node::now_ms()),
            None
        );
    }
}
