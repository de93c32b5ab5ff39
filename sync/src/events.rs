//! Order events: the scheduler's word that an order finished (done or
//! cancelled), numbered so a receiver can be idempotent
//! ([`shardmap::contract::OrderEvent`]), and handed to whoever listens —
//! the push to the shard managers ([`crate::push`]) — without waiting.
//!
//! Every change to an order goes through the scheduler's one hand-over to
//! the state file, so that is where the feed looks: it compares each
//! order's state with the last it saw and announces the orders that have
//! just finished. The feed lives under the scheduler's state lock, so
//! sequence numbers follow the order in which the states changed.

use std::collections::BTreeMap;

use shardmap::contract::{Order, OrderEvent, OrderState};
use tokio::sync::broadcast;

/// Events kept for a listener that is behind; one further behind misses
/// the oldest (counted by the listener), and the managers' polling covers
/// them.
pub const BACKLOG: usize = 1024;

/// Turns order changes into numbered [`OrderEvent`]s.
#[derive(Debug)]
pub struct Feed {
    source: String,
    seq: u64,
    /// Each order's state at the last look, in id order (the book's), so a
    /// look is one merge of two sorted lists: no hashing, no allocation
    /// once the lists have their size.
    seen: Vec<(u64, OrderState)>,
    /// The next look's list, kept to reuse its allocation.
    spare: Vec<(u64, OrderState)>,
    tx: broadcast::Sender<OrderEvent>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new(source_id())
    }
}

/// A name for this run of sync: the process id and its start time.
fn source_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("sync-{}-{nanos:x}", std::process::id())
}

impl Feed {
    pub fn new(source: String) -> Feed {
        let (tx, _) = broadcast::channel(BACKLOG);
        Feed {
            source,
            seq: 0,
            seen: Vec::new(),
            spare: Vec::new(),
            tx,
        }
    }

    /// This run's name, the `source` of its events.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<OrderEvent> {
        self.tx.subscribe()
    }

    /// Take `orders` as already known (reloaded from the state file at
    /// start): only later changes are announced.
    pub fn known<'a>(&mut self, orders: impl IntoIterator<Item = &'a Order>) {
        self.seen
            .extend(orders.into_iter().map(|o| (o.id, o.state)));
        self.seen.sort_unstable_by_key(|&(id, _)| id);
        self.seen.dedup_by_key(|&mut (id, _)| id);
    }

    /// Look at every current order; announce those that finished since the
    /// last look. Forgets orders that are gone. Never blocks; allocates
    /// only when the book outgrew every earlier look.
    pub fn observe(&mut self, orders: &BTreeMap<u64, Order>, now_unix_ms: u64) {
        let mut next = std::mem::take(&mut self.spare);
        next.clear();
        let mut seen = self.seen.iter().peekable();
        for o in orders.values() {
            // Orders seen before and gone since are skipped (forgotten).
            while seen.next_if(|&&(id, _)| id < o.id).is_some() {}
            let before = seen.next_if(|&&(id, _)| id == o.id).map(|&(_, s)| s);
            next.push((o.id, o.state));
            if o.state.is_finished() && before != Some(o.state) {
                self.seq += 1;
                // No listener (no manager configured) is not an error.
                let _ = self.tx.send(OrderEvent {
                    source: self.source.clone(),
                    seq: self.seq,
                    order: o.id,
                    shard: o.shard.clone(),
                    node: o.node.clone(),
                    state: o.state,
                    epoch: o.epoch,
                    at_unix_ms: o.finished_unix_ms.unwrap_or(now_unix_ms),
                    reason: o.reason.clone(),
                });
            }
        }
        self.spare = std::mem::replace(&mut self.seen, next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: u64, state: OrderState) -> Order {
        Order {
            id,
            shard: "UK/SEASONAL".into(),
            node: "node-a".into(),
            priority: 1.0,
            deadline_unix_ms: None,
            state,
            submitted_unix_ms: 1,
            started_unix_ms: None,
            finished_unix_ms: None,
            cursor: 0,
            rows: 0,
            bytes: 0,
            last_error: None,
            reason: None,
            report: None,
            epoch: 4,
        }
    }

    #[test]
    fn each_finish_is_announced_once_in_sequence() {
        let mut f = Feed::new("s".into());
        f.known([&order(1, OrderState::Done)]);
        let mut rx = f.subscribe();
        let mut orders: BTreeMap<u64, Order> = [
            order(1, OrderState::Done),
            order(2, OrderState::Queued),
            order(3, OrderState::Running),
        ]
        .into_iter()
        .map(|o| (o.id, o))
        .collect();
        f.observe(&orders, 10);
        assert!(rx.try_recv().is_err(), "nothing finished yet");
        orders.get_mut(&2).unwrap().state = OrderState::Running;
        orders.get_mut(&3).unwrap().state = OrderState::Done;
        f.observe(&orders, 11);
        f.observe(&orders, 12);
        let o2 = orders.get_mut(&2).unwrap();
        o2.state = OrderState::Cancelled;
        o2.reason = Some("evicted".into());
        // An order pruned from the book is forgotten.
        orders.remove(&1);
        f.observe(&orders, 13);
        assert_eq!(f.seen.len(), 2);
        let a = rx.try_recv().unwrap();
        let b = rx.try_recv().unwrap();
        assert!(rx.try_recv().is_err());
        assert_eq!(
            (a.order, a.seq, a.state, a.epoch),
            (3, 1, OrderState::Done, 4)
        );
        assert_eq!((b.order, b.seq, b.state), (2, 2, OrderState::Cancelled));
        assert_eq!(b.reason.as_deref(), Some("evicted"));
        assert_eq!(b.at_unix_ms, 13);
        assert!(a.validate().is_ok() && b.validate().is_ok());
    }
}
