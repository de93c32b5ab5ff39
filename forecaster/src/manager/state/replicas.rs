//! The replicas of every shard, with a log of which shards' replicas were
//! touched when, so the table's delta for the proxies costs what changed
//! and not a walk over ten thousand shards.
//!
//! Every way to change the map goes through here and stamps the shard with
//! the next sequence number (one log entry per shard, like sync's hosted
//! book). A delta since a sequence number compares only the shards stamped
//! after it with the table they are compared to: a shard changed and
//! changed back shows no difference. A copy (a view's snapshot) keeps the
//! map, not the log: a delta from a copy walks the whole map.

use std::collections::{BTreeMap, HashMap};

use shardmap::control::ReplicaAssignment;
use shardmap::{AssignmentVersion, TableUpdate};

pub type Map = BTreeMap<String, Vec<ReplicaAssignment>>;

#[derive(Debug, Default)]
pub struct Replicas {
    map: Map,
    /// The last sequence number handed out.
    seq: u64,
    /// Shard → the sequence number of its last touch.
    last: HashMap<String, u64>,
    /// Sequence number → the shard touched then (one entry per shard).
    log: BTreeMap<u64, String>,
    /// Touches at or below it are not in the log (a copy's start).
    floor: u64,
}

impl Clone for Replicas {
    fn clone(&self) -> Replicas {
        Replicas {
            map: self.map.clone(),
            seq: self.seq,
            last: HashMap::new(),
            log: BTreeMap::new(),
            floor: self.seq,
        }
    }
}

impl std::ops::Deref for Replicas {
    type Target = Map;
    fn deref(&self) -> &Map {
        &self.map
    }
}

impl<'a> IntoIterator for &'a Replicas {
    type Item = (&'a String, &'a Vec<ReplicaAssignment>);
    type IntoIter = std::collections::btree_map::Iter<'a, String, Vec<ReplicaAssignment>>;
    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl Replicas {
    fn touch(&mut self, id: &str) {
        self.seq += 1;
        match self.last.get_mut(id) {
            Some(at) => {
                self.log.remove(at);
                *at = self.seq;
            }
            None => {
                self.last.insert(id.to_string(), self.seq);
            }
        }
        self.log.insert(self.seq, id.to_string());
    }

    /// The sequence number of the last touch: a delta since it is empty.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A shard's replicas, to change (stamped whether or not they change).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Vec<ReplicaAssignment>> {
        if !self.map.contains_key(id) {
            return None;
        }
        self.touch(id);
        self.map.get_mut(id)
    }

    /// A shard's replicas, made empty first if it has none.
    pub fn or_default(&mut self, id: &str) -> &mut Vec<ReplicaAssignment> {
        self.touch(id);
        self.map.entry(id.to_string()).or_default()
    }

    /// Set a shard's replicas unless it has some.
    pub fn or_insert_with(&mut self, id: &str, f: impl FnOnce() -> Vec<ReplicaAssignment>) {
        if !self.map.contains_key(id) {
            self.touch(id);
            self.map.insert(id.to_string(), f());
        }
    }

    /// Keep only the shards `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let gone: Vec<String> = self.map.keys().filter(|id| !keep(id)).cloned().collect();
        for id in gone {
            self.map.remove(&id);
            self.touch(&id);
        }
    }

    /// The delta that turns the full table `prev` (this map as of sequence
    /// number `since`) into this map at `version`: only the shards touched
    /// after `since` are compared. From before this log's start, the whole
    /// map is walked.
    pub fn delta_since(
        &self,
        version: AssignmentVersion,
        prev: &TableUpdate,
        since: u64,
    ) -> TableUpdate {
        if since < self.floor || since > self.seq {
            return super::super::publish::delta(version, prev, &self.map);
        }
        let mut shards = BTreeMap::new();
        let mut removed = vec![];
        for id in self.log.range(since + 1..).map(|(_, id)| id) {
            match (self.map.get(id), prev.shards.get(id)) {
                (Some(now), Some(before)) if now == before => {}
                (Some(now), _) => {
                    shards.insert(id.clone(), now.clone());
                }
                (None, Some(_)) => removed.push(id.clone()),
                (None, None) => {}
            }
        }
        removed.sort_unstable();
        TableUpdate {
            version,
            base: Some(prev.version),
            shards,
            removed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shardmap::table::ReplicaState;

    fn rep(node: u8, serving: bool) -> ReplicaAssignment {
        ReplicaAssignment {
            node: format!("n{node}"),
            state: if serving {
                ReplicaState::Serving
            } else {
                ReplicaState::Warming
            },
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, Vec<(u8, bool)>),
        Add(u8, (u8, bool)),
        Insert(u8, Vec<(u8, bool)>),
        Retain(Vec<u8>),
        Publish,
        Snapshot,
    }

    fn op() -> impl Strategy<Value = Op> {
        let reps = proptest::collection::vec((0u8..4, any::<bool>()), 0..3);
        prop_oneof![
            4 => (0u8..12, reps.clone()).prop_map(|(s, r)| Op::Set(s, r)),
            2 => (0u8..12, (0u8..4, any::<bool>())).prop_map(|(s, r)| Op::Add(s, r)),
            2 => (0u8..12, reps).prop_map(|(s, r)| Op::Insert(s, r)),
            1 => proptest::collection::vec(0u8..12, 0..12).prop_map(Op::Retain),
            2 => Just(Op::Publish),
            1 => Just(Op::Snapshot),
        ]
    }

    proptest! {
        /// Whatever the changes, the delta from the last published table
        /// is the one a walk over every shard gives, and brings that table
        /// to the map.
        #[test]
        fn the_logged_delta_is_the_full_walks(ops in proptest::collection::vec(op(), 1..60)) {
            let mut r = Replicas::default();
            let mut version = AssignmentVersion { epoch: 1, counter: 1 };
            let mut last = TableUpdate::full(version, r.map.clone());
            let mut since = r.seq();
            for op in ops {
                let to = |v: &[(u8, bool)]| v.iter().map(|&(n, s)| rep(n, s)).collect::<Vec<_>>();
                match op {
                    Op::Set(s, v) => {
                        if let Some(x) = r.get_mut(&format!("s{s:02}")) {
                            *x = to(&v);
                        }
                    }
                    Op::Add(s, (n, st)) => r.or_default(&format!("s{s:02}")).push(rep(n, st)),
                    Op::Insert(s, v) => r.or_insert_with(&format!("s{s:02}"), || to(&v)),
                    Op::Retain(keep) => {
                        let keep: Vec<String> = keep.iter().map(|s| format!("s{s:02}")).collect();
                        r.retain(|id| keep.iter().any(|k| k == id));
                    }
                    Op::Snapshot => {
                        // A copy's delta walks the whole map: the same answer.
                        let c = r.clone();
                        let v = AssignmentVersion { counter: version.counter + 1, ..version };
                        prop_assert_eq!(
                            c.delta_since(v, &last, since),
                            crate::manager::publish::delta(v, &last, &r.map)
                        );
                    }
                    Op::Publish => {
                        version.counter += 1;
                        let d = r.delta_since(version, &last, since);
                        prop_assert_eq!(&d, &crate::manager::publish::delta(version, &last, &r.map));
                        last = last.then(&d).expect("the delta's base is the last table");
                        prop_assert_eq!(&last.shards, &r.map);
                        since = r.seq();
                    }
                }
            }
        }
    }

    #[test]
    fn a_delta_compares_only_what_was_touched_since() {
        let mut r = Replicas::default();
        r.or_insert_with("a", || vec![rep(0, true)]);
        r.or_insert_with("b", || vec![rep(1, true)]);
        let v1 = AssignmentVersion {
            epoch: 1,
            counter: 1,
        };
        let table = TableUpdate::full(v1, r.map.clone());
        let since = r.seq();
        // Touched and left as it was: no difference.
        r.get_mut("a");
        r.get_mut("b").unwrap()[0].state = ReplicaState::Draining;
        let v2 = AssignmentVersion {
            epoch: 1,
            counter: 2,
        };
        let d = r.delta_since(v2, &table, since);
        assert_eq!(d.shards.keys().collect::<Vec<_>>(), ["b"]);
        assert!(d.removed.is_empty());
        assert_eq!(r.log.len(), 2, "one log entry per shard");
        r.retain(|id| id != "a");
        let d = r.delta_since(v2, &table, since);
        assert_eq!(d.removed, ["a"]);
        assert!(r.delta_since(v2, &table, r.seq()).shards.is_empty());
    }
}
