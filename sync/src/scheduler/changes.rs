//! The hosted copies with their change history: every copy that appears,
//! goes, or whose state, cursor or rows move gets the next sequence number,
//! so `GET /nodes?since=<version>` answers with only what changed. The
//! version is `<epoch>.<seq>`; the epoch is drawn once per run of sync, so
//! a reader that held a version of an earlier run gets everything again.
//!
//! Each (node, shard) pair sits in the log once, at its last change; a
//! pair that went stays as a tombstone until there are more tombstones
//! than copies, when the oldest are forgotten and a `since` older than
//! them gets the full answer.

use std::collections::{BTreeMap, HashMap};

use shardmap::contract::{HostedShard, NodeChange, NodesChange};

type Key = (String, String);

/// Tombstones kept beyond one per hosted copy before the oldest go.
const SPARE_TOMBSTONES: usize = 4096;

pub(crate) struct HostedBook {
    copies: BTreeMap<Key, HostedShard>,
    /// A pair's sequence number at its last change.
    last: HashMap<Key, u64>,
    /// Sequence number → the pair that changed then (one entry per pair).
    log: BTreeMap<u64, Key>,
    seq: u64,
    /// Changes at or below it were forgotten (tombstones pruned).
    floor: u64,
    epoch: u64,
}

impl Default for HostedBook {
    fn default() -> Self {
        // Unix nanoseconds at start, mixed with randomness: two runs of
        // sync never share an epoch, and the epoch is never 0 (which a
        // reader sends for "nothing held yet").
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        HostedBook::with_epoch((nanos ^ (rand::random::<u64>() >> 16)).max(1))
    }
}

impl<'a> IntoIterator for &'a HostedBook {
    type Item = (&'a Key, &'a HostedShard);
    type IntoIter = std::collections::btree_map::Iter<'a, Key, HostedShard>;
    fn into_iter(self) -> Self::IntoIter {
        self.copies.iter()
    }
}

/// What a `since` asked of [`HostedBook::since`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Nothing held yet (`since=0`).
    Nothing,
    /// The version of an earlier answer.
    Version { epoch: u64, seq: u64 },
}

impl std::str::FromStr for Since {
    type Err = String;
    fn from_str(v: &str) -> Result<Since, String> {
        if v == "0" {
            return Ok(Since::Nothing);
        }
        let bad = || {
            format!(
                "since: `{v}` is not a version of `GET /nodes?since=` (`<epoch>.<seq>` from an answer, or 0)"
            )
        };
        let (e, s) = v.split_once('.').ok_or_else(bad)?;
        Ok(Since::Version {
            epoch: e.parse().map_err(|_| bad())?,
            seq: s.parse().map_err(|_| bad())?,
        })
    }
}

impl HostedBook {
    pub(crate) fn with_epoch(epoch: u64) -> HostedBook {
        HostedBook {
            copies: BTreeMap::new(),
            last: HashMap::new(),
            log: BTreeMap::new(),
            seq: 0,
            floor: 0,
            epoch,
        }
    }

    fn changed(&mut self, key: &Key) {
        self.seq += 1;
        if let Some(old) = self.last.insert(key.clone(), self.seq) {
            self.log.remove(&old);
        }
        self.log.insert(self.seq, key.clone());
    }

    pub(crate) fn contains_key(&self, key: &Key) -> bool {
        self.copies.contains_key(key)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &Key> {
        self.copies.keys()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &HostedShard)> {
        self.copies.iter()
    }

    /// The copies of `node`, in shard order.
    pub(crate) fn of_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a HostedShard> {
        self.copies
            .range((node.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == node)
            .map(|(_, h)| h)
    }

    /// Add `h` for `key` unless a copy is there already.
    pub(crate) fn insert_new(&mut self, key: Key, h: impl FnOnce() -> HostedShard) {
        if !self.copies.contains_key(&key) {
            self.copies.insert(key.clone(), h());
            self.changed(&key);
        }
    }

    pub(crate) fn remove(&mut self, key: &Key) -> Option<HostedShard> {
        let h = self.copies.remove(key)?;
        self.changed(key);
        self.prune();
        Some(h)
    }

    /// Change the copy of `key`, if there is one; a change to its state,
    /// cursor or rows is recorded (its last sync time alone is not).
    pub(crate) fn update(&mut self, key: &Key, f: impl FnOnce(&mut HostedShard)) {
        let Some(h) = self.copies.get_mut(key) else {
            return;
        };
        let before = (h.state, h.cursor, h.rows);
        f(h);
        if (h.state, h.cursor, h.rows) != before {
            self.changed(key);
        }
    }

    /// Forget the oldest tombstones once they outnumber the copies by
    /// [`SPARE_TOMBSTONES`]: down to half that spare.
    fn prune(&mut self) {
        let tombstones = self.log.len() - self.copies.len();
        if tombstones <= self.copies.len() + SPARE_TOMBSTONES {
            return;
        }
        let mut drop = tombstones - (self.copies.len() + SPARE_TOMBSTONES / 2);
        let old: Vec<(u64, Key)> = self
            .log
            .iter()
            .filter(|(_, k)| !self.copies.contains_key(*k))
            .take(drop)
            .map(|(s, k)| (*s, k.clone()))
            .collect();
        for (s, k) in old {
            self.log.remove(&s);
            self.last.remove(&k);
            self.floor = self.floor.max(s);
            drop -= 1;
        }
        debug_assert_eq!(drop, 0);
    }

    pub(crate) fn version(&self) -> String {
        format!("{}.{}", self.epoch, self.seq)
    }

    /// What changed since `since`, for `nodes` (every configured node): a
    /// full answer unless `since` is a version of this run that the log
    /// still covers.
    pub(crate) fn since<'a>(
        &self,
        since: Since,
        nodes: impl Iterator<Item = &'a String>,
    ) -> NodesChange {
        let from = match since {
            Since::Version { epoch, seq }
                if epoch == self.epoch && seq >= self.floor && seq <= self.seq =>
            {
                Some(seq)
            }
            _ => None,
        };
        let mut out = NodesChange {
            version: self.version(),
            full: from.is_none(),
            nodes: BTreeMap::new(),
        };
        match from {
            None => {
                for n in nodes {
                    out.nodes.insert(n.clone(), NodeChange::default());
                }
                for ((n, _), h) in &self.copies {
                    out.nodes
                        .entry(n.clone())
                        .or_default()
                        .hosted
                        .push(h.clone());
                }
            }
            Some(seq) => {
                for (_, key) in self.log.range(seq + 1..) {
                    let c = out.nodes.entry(key.0.clone()).or_default();
                    match self.copies.get(key) {
                        Some(h) => c.hosted.push(h.clone()),
                        None => c.gone.push(key.1.clone()),
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmap::contract::HostedState;

    fn copy(shard: &str, cursor: u64) -> HostedShard {
        HostedShard {
            shard: shard.into(),
            state: HostedState::Warming,
            cursor,
            rows: 0,
            last_sync_unix_ms: 0,
        }
    }

    fn key(n: &str, s: &str) -> Key {
        (n.into(), s.into())
    }

    type View = BTreeMap<String, BTreeMap<String, HostedShard>>;

    fn whole(b: &HostedBook, nodes: &[String]) -> View {
        let mut v = View::new();
        b.since(Since::Nothing, nodes.iter())
            .apply_to(&mut v, Clone::clone);
        v
    }

    /// A reader that applies every answer holds what a full read gives,
    /// whatever happened in between; one of another epoch gets it whole.
    #[test]
    fn a_reader_applying_changes_holds_the_whole() {
        let nodes: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let mut b = HostedBook::with_epoch(7);
        let mut held = View::new();
        let mut version = "0".to_string();
        let mut x: u64 = 3;
        let mut rng = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % n) as usize
        };
        for step in 0..4000 {
            let n = &nodes[rng(nodes.len() as u64)];
            let k = key(n, &format!("s{}", rng(40)));
            match rng(4) {
                0 => b.insert_new(k.clone(), || copy(&k.1, 0)),
                1 => {
                    b.remove(&k);
                }
                2 => b.update(&k, |h| h.cursor += 1),
                _ => b.update(&k, |h| h.last_sync_unix_ms = step as u64),
            }
            if rng(5) == 0 {
                let c = b.since(version.parse().unwrap(), nodes.iter());
                assert!(!c.full || version == "0", "step {step}: full at {version}");
                version = c.version.clone();
                c.apply_to(&mut held, Clone::clone);
                let mut want = whole(&b, &nodes);
                // The last sync time alone is not a change.
                for m in want.values_mut().chain(held.values_mut()) {
                    m.values_mut().for_each(|h| h.last_sync_unix_ms = 0);
                }
                assert_eq!(held, want, "step {step}");
            }
        }
        let other = HostedBook::with_epoch(8);
        assert!(other.since(version.parse().unwrap(), nodes.iter()).full);
    }

    #[test]
    fn only_what_changed_is_answered() {
        let nodes: Vec<String> = vec!["a".into(), "b".into()];
        let mut b = HostedBook::with_epoch(1);
        b.insert_new(key("a", "x"), || copy("x", 0));
        b.insert_new(key("b", "y"), || copy("y", 0));
        let v = b.version();
        b.update(&key("a", "x"), |h| h.last_sync_unix_ms = 5);
        let c = b.since(v.parse().unwrap(), nodes.iter());
        assert!(!c.full && c.nodes.is_empty(), "{c:?}");
        b.update(&key("a", "x"), |h| h.state = HostedState::Warm);
        b.remove(&key("b", "y"));
        let c = b.since(v.parse().unwrap(), nodes.iter());
        assert_eq!(c.nodes["a"].hosted.len(), 1);
        assert_eq!(c.nodes["a"].hosted[0].last_sync_unix_ms, 5);
        assert_eq!(c.nodes["b"].gone, vec!["y".to_string()]);
        // A full answer names every node, hosting or not.
        let f = b.since(Since::Nothing, nodes.iter());
        assert!(f.full && f.nodes["b"].hosted.is_empty() && f.nodes.len() == 2);
    }

    #[test]
    fn a_version_older_than_the_forgotten_tombstones_reads_whole() {
        let nodes: Vec<String> = vec!["a".into()];
        let mut b = HostedBook::with_epoch(1);
        let v = b.version();
        for i in 0..(SPARE_TOMBSTONES * 2) {
            let k = key("a", &format!("s{i}"));
            b.insert_new(k.clone(), || copy(&k.1, 0));
            b.remove(&k);
        }
        assert!(b.log.len() <= SPARE_TOMBSTONES + 1, "{}", b.log.len());
        assert!(b.since(v.parse().unwrap(), nodes.iter()).full);
        let recent = b.version();
        b.insert_new(key("a", "z"), || copy("z", 0));
        let c = b.since(recent.parse().unwrap(), nodes.iter());
        assert!(!c.full && c.nodes["a"].hosted.len() == 1);
    }

    #[test]
    fn a_bad_since_says_what_a_version_is() {
        assert_eq!("0".parse::<Since>(), Ok(Since::Nothing));
        assert_eq!(
            "12.5".parse::<Since>(),
            Ok(Since::Version { epoch: 12, seq: 5 })
        );
        let e = "yesterday".parse::<Since>().unwrap_err();
        assert!(e.contains("<epoch>.<seq>"), "{e}");
    }
}
