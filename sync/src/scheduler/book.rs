//! The order book: orders in (one, a batch, fenced by the manager's epoch),
//! read back, cancelled; hosted and parked shards; evictions; and the
//! state file every change goes through.

use std::time::Duration;

use shardmap::contract::{NodeRecord, NodesChange};

use super::{
    now_ms, HostedShard, Order, OrderError, OrderRequest, OrderState, Scheduler, Since, State,
};
use crate::metrics::Metrics;
use crate::transfer::{no_errors, retry};

impl Scheduler {
    /// Queue an order. An order for a (shard, node) that is already queued
    /// updates that order (higher priority, earlier deadline win) and
    /// returns it.
    pub fn submit(&self, req: OrderRequest) -> Result<Order, OrderError> {
        let res = self.queue(req);
        self.counted(&res);
        if res.is_ok() {
            self.persist();
            self.inner.wake.notify_one();
        }
        res
    }

    /// Queue several orders, each as [`Scheduler::submit`] would (one
    /// refused does not refuse the others); the state is saved once for the
    /// batch, which is what makes a thousand orders one call's work
    /// rather than a thousand saves of every order.
    pub fn submit_batch(&self, reqs: Vec<OrderRequest>) -> Vec<Result<Order, OrderError>> {
        let res: Vec<_> = reqs.into_iter().map(|r| self.queue(r)).collect();
        res.iter().for_each(|r| self.counted(r));
        if res.iter().any(Result::is_ok) {
            self.persist();
            self.inner.wake.notify_one();
        }
        res
    }

    pub(super) fn counted(&self, res: &Result<Order, OrderError>) {
        let m = &self.inner.metrics;
        match res {
            Ok(_) => Metrics::inc(&m.orders_submitted),
            Err(_) => Metrics::inc(&m.orders_rejected),
        }
    }

    /// Validate and queue one order, without saving the state.
    pub(super) fn queue(&self, req: OrderRequest) -> Result<Order, OrderError> {
        if !self.inner.shards.contains_key(&req.shard) {
            return Err(OrderError::UnknownShard(req.shard));
        }
        if !self.inner.nodes.contains_key(&req.node) {
            return Err(OrderError::UnknownNode(req.node));
        }
        if !req.priority.is_finite() {
            return Err(OrderError::BadPriority(req.priority.to_string()));
        }
        let now = now_ms();
        let deadline = match (req.deadline_unix_ms, req.deadline_in_ms) {
            (Some(_), Some(_)) => return Err(OrderError::TwoDeadlines),
            (Some(d), None) => Some(d),
            (None, Some(rel)) => Some(now.saturating_add(rel)),
            (None, None) => None,
        };
        let order = {
            let mut st = self.inner.state.lock();
            if req.epoch < st.epoch {
                Metrics::inc(&self.inner.metrics.orders_fenced);
                return Err(OrderError::StaleEpoch {
                    epoch: req.epoch,
                    highest: st.epoch,
                });
            }
            if req.epoch > st.epoch {
                tracing::info!(
                    epoch = req.epoch,
                    previous = st.epoch,
                    "a new manager epoch orders"
                );
                st.epoch = req.epoch;
            }
            let existing = st.orders.values_mut().find(|o| {
                o.state == OrderState::Queued && o.shard == req.shard && o.node == req.node
            });
            if let Some(o) = existing {
                o.priority = o.priority.max(req.priority);
                o.deadline_unix_ms = match (o.deadline_unix_ms, deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                o.epoch = req.epoch;
                o.clone()
            } else {
                let id = st.next_id;
                st.next_id += 1;
                let o = Order {
                    id,
                    shard: req.shard,
                    node: req.node,
                    priority: req.priority,
                    deadline_unix_ms: deadline,
                    state: OrderState::Queued,
                    submitted_unix_ms: now,
                    started_unix_ms: None,
                    finished_unix_ms: None,
                    cursor: 0,
                    rows: 0,
                    bytes: 0,
                    last_error: None,
                    reason: None,
                    report: None,
                    epoch: req.epoch,
                };
                st.orders.insert(id, o.clone());
                o
            }
        };
        tracing::debug!(order = order.id, shard = %order.shard, node = %order.node, priority = order.priority, "order queued");
        Ok(order)
    }

    pub fn orders(&self) -> Vec<Order> {
        self.inner.state.lock().orders.values().cloned().collect()
    }

    pub fn order(&self, id: u64) -> Option<Order> {
        self.inner.state.lock().orders.get(&id).cloned()
    }

    /// The orders of `ids` sync knows, in the order asked (an unknown id
    /// is left out).
    pub fn orders_of(&self, ids: &[u64]) -> Vec<Order> {
        let st = self.inner.state.lock();
        ids.iter()
            .filter_map(|id| st.orders.get(id).cloned())
            .collect()
    }

    /// Raise the highest manager epoch seen to `epoch`, before any order of
    /// it: a new leader announces its term, so orders of the old one are
    /// refused from then on. Refused (the highest stays) when `epoch` is
    /// lower; returns the highest.
    pub fn fence(&self, epoch: u64) -> Result<u64, OrderError> {
        {
            let mut st = self.inner.state.lock();
            if epoch < st.epoch {
                Metrics::inc(&self.inner.metrics.orders_fenced);
                return Err(OrderError::StaleEpoch {
                    epoch,
                    highest: st.epoch,
                });
            }
            if epoch == st.epoch {
                return Ok(epoch);
            }
            tracing::info!(epoch, previous = st.epoch, "a new manager epoch announced");
            st.epoch = epoch;
        }
        self.persist();
        Ok(epoch)
    }

    /// The highest manager epoch seen.
    pub fn epoch(&self) -> u64 {
        self.inner.state.lock().epoch
    }

    /// Cancel a queued or running order.
    pub fn cancel(&self, id: u64) -> Result<Order, OrderError> {
        let o = {
            let mut st = self.inner.state.lock();
            let o = st.orders.get_mut(&id).ok_or(OrderError::NoOrder(id))?;
            match o.state {
                OrderState::Done | OrderState::Cancelled => return Err(OrderError::Finished(id)),
                OrderState::Queued => {
                    o.state = OrderState::Cancelled;
                    o.finished_unix_ms = Some(now_ms());
                    o.reason = Some("cancelled through the control API".into());
                }
                OrderState::Running => {
                    o.reason = Some("cancelled through the control API".into());
                }
            }
            let o = o.clone();
            if let Some(c) = st.cancels.get(&id) {
                c.cancel();
            }
            o
        };
        Metrics::inc(&self.inner.metrics.orders_failed);
        self.persist();
        Ok(o)
    }

    /// Shards whose evicted copy is parked on a node now.
    pub fn parked(&self, node: &str) -> Vec<String> {
        let now = now_ms();
        let mut st = self.inner.state.lock();
        st.parked.retain(|_, until| *until > now);
        st.parked
            .keys()
            .filter(|(n, _)| n == node)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Hosted shards of a node.
    pub fn hosted(&self, node: &str) -> Result<Vec<HostedShard>, OrderError> {
        if !self.inner.nodes.contains_key(node) {
            return Err(OrderError::UnknownNode(node.into()));
        }
        let st = self.inner.state.lock();
        Ok(st.hosted.of_node(node).cloned().collect())
    }

    /// Every node with its hosted and parked shards (`GET /nodes`), read in
    /// one pass under the lock.
    pub fn nodes(&self) -> shardmap::contract::hosted::Nodes {
        let now = now_ms();
        let mut st = self.inner.state.lock();
        st.parked.retain(|_, until| *until > now);
        let mut out: shardmap::contract::hosted::Nodes = self
            .inner
            .nodes
            .keys()
            .map(|n| (n.clone(), NodeRecord::default()))
            .collect();
        for ((n, _), h) in st.hosted.iter() {
            if let Some(r) = out.get_mut(n) {
                r.hosted.push(h.clone());
            }
        }
        for (n, s) in st.parked.keys() {
            if let Some(r) = out.get_mut(n) {
                r.parked.push(s.clone());
            }
        }
        out
    }

    /// What the hosted copies became since `since` (`GET /nodes?since=`):
    /// only the changes when `since` is a version of this run sync still
    /// covers, else everything.
    pub fn nodes_since(&self, since: Since) -> NodesChange {
        self.inner
            .state
            .lock()
            .hosted
            .since(since, self.inner.nodes.keys())
    }

    /// Drop a shard from a node: cancel its orders, wait for its transfer
    /// to stop, then evict it from the cache (retried while the cache is
    /// down): its copy is parked for `keep_evicted` (not served), so a
    /// later order for the pair copies only the delta. Returns once the
    /// eviction is scheduled.
    pub fn evict(&self, node: &str, shard: &str) -> Result<(), OrderError> {
        if !self.inner.shards.contains_key(shard) {
            return Err(OrderError::UnknownShard(shard.into()));
        }
        let Some(cache) = self.inner.nodes.get(node).cloned() else {
            return Err(OrderError::UnknownNode(node.into()));
        };
        {
            let mut st = self.inner.state.lock();
            let now = now_ms();
            let ids: Vec<u64> = st
                .orders
                .values()
                .filter(|o| {
                    o.node == node
                        && o.shard == shard
                        && matches!(o.state, OrderState::Queued | OrderState::Running)
                })
                .map(|o| o.id)
                .collect();
            for id in ids {
                if let Some(c) = st.cancels.get(&id) {
                    c.cancel();
                }
                if let Some(o) = st.orders.get_mut(&id) {
                    o.reason = Some("the shard was evicted from the node".into());
                    if o.state == OrderState::Queued {
                        o.state = OrderState::Cancelled;
                        o.finished_unix_ms = Some(now);
                    }
                }
            }
            st.hosted.remove(&(node.to_string(), shard.to_string()));
        }
        self.persist();
        let s = self.clone();
        let (node, shard) = (node.to_string(), shard.to_string());
        tokio::spawn(async move {
            let key = (node.clone(), shard.clone());
            // Wait for any transfer on the pair to wind down.
            loop {
                {
                    let mut st = s.inner.state.lock();
                    if !st.busy.contains(&key) {
                        st.busy.insert(key.clone());
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let keep = s.inner.cfg.keep_evicted;
            let r = retry(
                "cache evict",
                &shard,
                &s.inner.cfg.transfer,
                &s.inner.shutdown,
                &no_errors(),
                &s.inner.metrics.cache_errors,
                || cache.park(&shard, keep),
            )
            .await;
            {
                let mut st = s.inner.state.lock();
                st.busy.remove(&key);
                st.hosted.remove(&key);
                if r.is_ok() && !keep.is_zero() {
                    st.parked
                        .insert(key.clone(), now_ms() + keep.as_millis() as u64);
                }
            }
            if r.is_ok() {
                Metrics::inc(&s.inner.metrics.evictions);
                tracing::info!(node = %node, shard = %shard, keep_s = keep.as_secs(), "shard evicted (its copy parked for a delta re-fetch)");
            }
            s.inner.wake.notify_one();
        });
        Ok(())
    }

    /// Hand the current orders to the state file's writer (which writes
    /// only the latest of a burst). Taken and handed over under the state
    /// lock, so the writer never gets an older snapshot after a newer one.
    pub(super) fn persist(&self) {
        let mut st = self.inner.state.lock();
        for id in finished_beyond(st.orders.values(), self.inner.cfg.keep_finished) {
            st.orders.remove(&id);
        }
        // Every change to an order comes through here: the feed announces
        // the ones that just finished.
        let State { feed, orders, .. } = &mut *st;
        feed.observe(orders, now_ms());
        drop(st);
        if let Some(p) = &self.inner.persister {
            p.changed();
        }
    }

    /// Wait (at most `within`) until the state file holds every change so
    /// far; false on timeout. For a clean shutdown.
    pub async fn flush(&self, within: Duration) -> bool {
        let s = self.clone();
        tokio::task::spawn_blocking(move || {
            s.inner
                .persister
                .as_ref()
                .is_none_or(|p| p.flush_blocking(within))
        })
        .await
        .unwrap_or(false)
    }
}

/// The finished orders beyond the newest `keep`, by when they finished:
/// those that finished longest ago go first. An early order that ran long
/// has a low id but finished just now, and its submitter may not have read
/// the outcome yet.
fn finished_beyond<'a>(orders: impl Iterator<Item = &'a Order> + Clone, keep: usize) -> Vec<u64> {
    // Counted first: every change comes through here, and the book is
    // over its bound only just after an order finished.
    if orders.clone().filter(|o| o.state.is_finished()).count() <= keep {
        return Vec::new();
    }
    let mut finished: Vec<(u64, u64)> = orders
        .filter(|o| o.state.is_finished())
        .map(|o| (o.finished_unix_ms.unwrap_or(0), o.id))
        .collect();
    if finished.len() <= keep {
        return Vec::new();
    }
    let drop = finished.len() - keep;
    finished.select_nth_unstable(drop - 1);
    finished[..drop].iter().map(|&(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: u64, state: OrderState, finished: Option<u64>) -> Order {
        Order {
            id,
            shard: "s".into(),
            node: "n".into(),
            priority: 1.0,
            deadline_unix_ms: None,
            state,
            submitted_unix_ms: id,
            started_unix_ms: None,
            finished_unix_ms: finished,
            cursor: 0,
            rows: 0,
            bytes: 0,
            last_error: None,
            reason: None,
            report: None,
            epoch: 1,
        }
    }

    #[test]
    fn finished_orders_go_by_finish_time_not_id() {
        let orders = [
            // The first order ran longest and finished last.
            order(1, OrderState::Done, Some(500)),
            order(2, OrderState::Done, Some(100)),
            order(3, OrderState::Cancelled, Some(200)),
            order(4, OrderState::Running, None),
            order(5, OrderState::Done, Some(300)),
        ];
        let mut gone = finished_beyond(orders.iter(), 2);
        gone.sort_unstable();
        assert_eq!(gone, vec![2, 3]);
        assert!(finished_beyond(orders.iter(), 4).is_empty());
    }
}
