//! Freshness: hosted shards kept within the staleness bound, woken by the
//! provider's NOTIFY or the poll timer.

use std::collections::HashMap;
use std::time::Duration;

use super::{now_ms, HostedState, Scheduler};
use crate::freshness::CopyClock;
use crate::metrics::Metrics;
use crate::transfer::{catch_up, no_errors, TransferError};

impl Scheduler {
    /// Keep hosted shards within `max_staleness` of the provider: each copy
    /// is read when its [`CopyClock`] says (provider NOTIFYs mark copies
    /// changed; `poll_interval` bounds the sleep in between).
    pub(super) async fn freshness(self) {
        let mut notify = self.inner.provider.subscribe();
        let (bound, poll) = (self.inner.cfg.max_staleness, self.inner.cfg.poll_interval);
        // Copies due within one tick are read together: early by at most a
        // tick (the bound still holds), and one pass per tick however many
        // copies there are.
        let tick = (bound / 20).clamp(Duration::from_millis(5), poll.max(Duration::from_millis(5)));
        let tick_ms = tick.as_millis() as u64;
        let mut clocks: HashMap<(String, String), CopyClock> = HashMap::new();
        loop {
            let notified = notify.is_some();
            let now = now_ms();
            let due: Vec<(String, String)> = {
                let st = self.inner.state.lock();
                clocks.retain(|k, _| st.hosted.contains_key(k));
                let mut due = vec![];
                for (k, h) in &st.hosted {
                    // Found before inserted: a pass over every hosted copy
                    // each tick copies no key that is already there.
                    let c = match clocks.get_mut(k) {
                        Some(c) => c,
                        None => clocks
                            .entry(k.clone())
                            .or_insert_with(|| CopyClock::copied(h.last_sync_unix_ms)),
                    };
                    if h.last_sync_unix_ms > c.synced {
                        // An order brought it current meanwhile.
                        *c = CopyClock::copied(h.last_sync_unix_ms);
                    }
                    let is_due = c
                        .due_at(bound, notified, poll)
                        .is_some_and(|t| t <= now + tick_ms);
                    if is_due && !st.busy.contains(k) {
                        due.push(k.clone());
                    }
                }
                due
            };
            if !due.is_empty() {
                for (key, started, finished) in self.refresh_pairs(due).await {
                    if let Some(c) = clocks.get_mut(&key) {
                        c.read(started, finished);
                    }
                }
            }
            let now = now_ms();
            // A copy due but busy (an order or an eviction on it) waits for
            // the next tick; an order leaves it current anyway.
            let next = clocks
                .values()
                .filter_map(|c| c.due_at(bound, notified, poll))
                .min()
                .map_or(poll, |t| Duration::from_millis(t.saturating_sub(now)))
                .clamp(tick, poll.max(tick));
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(next) => {}
                r = async {
                    match notify.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    if r {
                        Metrics::inc(&self.inner.metrics.wakeups_notify);
                        let at = now_ms();
                        for c in clocks.values_mut() {
                            c.changed(at);
                        }
                    } else {
                        notify = None;
                    }
                }
            }
        }
    }

    /// One freshness pass over every hosted (node, shard) not busy, now.
    pub async fn refresh_all(&self) {
        let pairs: Vec<(String, String)> = self.inner.state.lock().hosted.keys().cloned().collect();
        self.refresh_pairs(pairs).await;
    }

    /// Read the delta of each of `pairs` not busy into its copy; returns
    /// each pair read with when its read started and finished (Unix ms).
    pub(super) async fn refresh_pairs(
        &self,
        pairs: Vec<(String, String)>,
    ) -> Vec<((String, String), u64, u64)> {
        Metrics::inc(&self.inner.metrics.refreshes);
        let pairs: Vec<(String, String)> = {
            let mut st = self.inner.state.lock();
            let free: Vec<_> = pairs
                .into_iter()
                .filter(|k| st.hosted.contains_key(k) && !st.busy.contains(k))
                .collect();
            for k in &free {
                st.busy.insert(k.clone());
            }
            free
        };
        // Pairs refresh concurrently, so one node's cache outage (retried
        // until it is back) does not hold up the others.
        let tasks = pairs.iter().cloned().map(|key| {
            let s = self.clone();
            async move {
                let started = now_ms();
                let (node, shard_id) = &key;
                let found = (
                    s.inner.nodes.get(node).cloned(),
                    s.inner.shards.get(shard_id).cloned(),
                );
                let (Some(cache), Some(shard)) = found else {
                    let mut st = s.inner.state.lock();
                    st.busy.remove(&key);
                    st.hosted.remove(&key);
                    return None;
                };
                let res = catch_up(
                    s.inner.provider.clone(),
                    cache.clone(),
                    &shard,
                    &s.inner.bucket,
                    &s.inner.cfg.transfer,
                    &s.inner.metrics,
                    &s.inner.shutdown,
                    true,
                    &no_errors(),
                    &|_| {},
                )
                .await;
                let size = if res.is_ok() {
                    cache.size(shard_id).await.ok()
                } else {
                    None
                };
                let mut st = s.inner.state.lock();
                st.busy.remove(&key);
                match res {
                    Ok(p) => {
                        let finished = now_ms();
                        st.hosted.update(&key, |h| {
                            h.cursor = p.cursor;
                            h.state = HostedState::Warm;
                            if let Some(n) = size {
                                h.rows = n;
                            }
                            h.last_sync_unix_ms = finished;
                        });
                        Some((key, started, finished))
                    }
                    Err(TransferError::NotHosted) => {
                        st.hosted.remove(&key);
                        None
                    }
                    Err(TransferError::Cancelled) => None,
                }
            }
        });
        let done: Vec<_> = futures::future::join_all(tasks)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !pairs.is_empty() {
            self.inner.wake.notify_one();
        }
        done
    }
}
