//! A walk through a map keyed by shard id, asked for shards in increasing
//! id order: each question advances past the smaller keys, so a pass over
//! every shard costs about one comparison per entry, not a tree search per
//! shard (ten thousand of them each round).

use std::cmp::Ordering;
use std::collections::{btree_map, BTreeMap};
use std::iter::Peekable;

pub struct Walk<'a, V> {
    map: &'a BTreeMap<String, V>,
    /// `None`: the ids do not come in order; each is searched for.
    it: Option<Peekable<btree_map::Iter<'a, String, V>>>,
}

impl<'a, V> Walk<'a, V> {
    /// For ids asked in strictly increasing order.
    pub fn new(m: &'a BTreeMap<String, V>) -> Walk<'a, V> {
        Walk::ordered(m, true)
    }

    /// A walk when `in_order` (the ids come in strictly increasing order),
    /// else a search per id.
    pub fn ordered(m: &'a BTreeMap<String, V>, in_order: bool) -> Walk<'a, V> {
        Walk {
            map: m,
            it: in_order.then(|| m.iter().peekable()),
        }
    }

    /// The value at `id`. In a walk, ids must be asked in increasing
    /// order (a smaller id asked later is not found).
    pub fn get(&mut self, id: &str) -> Option<&'a V> {
        let Some(it) = self.it.as_mut() else {
            return self.map.get(id);
        };
        while let Some((k, _)) = it.peek() {
            match k.as_str().cmp(id) {
                Ordering::Less => {
                    it.next();
                }
                // Not consumed: the same id asked again finds it again.
                Ordering::Equal => return it.peek().map(|&(_, v)| v),
                Ordering::Greater => return None,
            }
        }
        None
    }
}

/// Where `id` is (`Ok`) or would go (`Err`) in `shards` (in id order),
/// searched from `from` on (every shard before it is known to sort before
/// `id`): strides doubling from `from`, then a binary search within the
/// last stride — a few comparisons when the next hit is near.
pub fn seek<T>(
    shards: &[T],
    from: usize,
    id: &str,
    key: impl Fn(&T) -> &str,
) -> Result<usize, usize> {
    let n = shards.len();
    let (mut lo, mut stride) = (from.min(n), 1);
    // Invariant: every shard before `lo` sorts before `id`.
    loop {
        let probe = lo + stride - 1;
        if probe >= n || key(&shards[probe]) >= id {
            let hi = probe.min(n);
            let end = (hi + 1).min(n);
            return shards[lo..end]
                .binary_search_by(|p| key(p).cmp(id))
                .map(|i| lo + i)
                .map_err(|i| lo + i);
        }
        lo = probe + 1;
        stride *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_what_a_lookup_finds_in_increasing_order() {
        let m: BTreeMap<String, u32> = [("b", 1), ("d", 2), ("e", 3), ("x", 4)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let asked = ["a", "b", "c", "d", "e", "f", "x", "y"];
        let mut w = Walk::new(&m);
        for id in asked {
            assert_eq!(w.get(id), m.get(id), "{id}");
            assert_eq!(w.get(id), m.get(id), "{id} asked again");
        }
        let mut search = Walk::ordered(&m, false);
        for id in asked.iter().rev() {
            assert_eq!(search.get(id), m.get(*id), "{id}");
        }
    }

    proptest! {
        /// A node's shards sought one after another, each from past the
        /// last found, land where a binary search of the whole plan does.
        #[test]
        fn seeking_from_the_last_hit_finds_what_a_search_finds(
            plan in proptest::collection::btree_set("[a-e]{1,3}", 0..60),
            asked in proptest::collection::btree_set("[a-e]{1,3}", 0..30),
        ) {
            let plan: Vec<String> = plan.into_iter().collect();
            let mut from = 0;
            for id in &asked {
                let want = plan.binary_search_by(|p| p.as_str().cmp(id));
                let got = seek(&plan, from, id, |p| p.as_str());
                prop_assert_eq!(got, want, "{} from {}", id, from);
                from = match got { Ok(i) => i + 1, Err(i) => i };
            }
        }
    }
}
