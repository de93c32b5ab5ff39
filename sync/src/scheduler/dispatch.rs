//! The transfer loop: the dispatcher picks the best runnable order, holds
//! its slot through a [`RunningSlot`] and runs its transfer to the end.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{
    now_ms, stale_reason, HostedShard, HostedState, Inner, Order, OrderState, Report, Scheduler,
    State,
};
use crate::metrics::Metrics;
use crate::transfer::{catch_up, ErrorSink, Progress, TransferError, TransferParams, Urgency};

/// A running order's hold on the scheduler: one of the `concurrency`
/// slots, its (node, shard) pair and its cancel token. Released with the
/// state lock held on the normal way out ([`RunningSlot::release`]); on
/// any other (an early return, a panic, the task dropped at shutdown) the
/// drop releases it and finishes the order: queued again at shutdown,
/// otherwise cancelled with a reason.
pub(super) struct RunningSlot {
    inner: Arc<Inner>,
    id: u64,
    key: (String, String),
    released: bool,
}

impl RunningSlot {
    fn release(&mut self, st: &mut State) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        st.running_orders = st.running_orders.saturating_sub(1);
        st.busy.remove(&self.key);
        st.cancels.remove(&self.id);
    }
}

impl Drop for RunningSlot {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let inner = self.inner.clone();
        {
            let mut st = inner.state.lock();
            self.release(&mut st);
            if let Some(o) = st.orders.get_mut(&self.id) {
                if o.state == OrderState::Running {
                    if inner.shutdown.is_cancelled() {
                        o.state = OrderState::Queued;
                    } else {
                        o.state = OrderState::Cancelled;
                        o.finished_unix_ms = Some(now_ms());
                        o.reason = Some(if std::thread::panicking() {
                            "the transfer failed unexpectedly (internal error; see the log)".into()
                        } else {
                            "the transfer stopped unexpectedly".into()
                        });
                        Metrics::inc(&inner.metrics.orders_failed);
                    }
                }
            }
        }
        tracing::error!(order = self.id, node = %self.key.0, shard = %self.key.1,
            panicked = std::thread::panicking(), "transfer ended without finishing its order; slot freed");
        Scheduler {
            inner: inner.clone(),
        }
        .persist();
        inner.wake.notify_one();
    }
}

impl Scheduler {
    /// Pick the best runnable order: highest priority, then earliest
    /// deadline, then oldest.
    pub(super) fn pick(&self) -> Option<(Order, CancellationToken, RunningSlot)> {
        // Once shutdown fires nothing starts: a transfer it interrupts puts
        // its order back in the queue for the next run, and re-running it
        // here would end at once, again and again.
        if self.inner.shutdown.is_cancelled() {
            return None;
        }
        let mut st = self.inner.state.lock();
        if st.running_orders >= self.inner.cfg.concurrency.max(1) {
            return None;
        }
        let rank = |a: &&Order, b: &&Order| {
            b.priority
                .total_cmp(&a.priority)
                .then(
                    a.deadline_unix_ms
                        .unwrap_or(u64::MAX)
                        .cmp(&b.deadline_unix_ms.unwrap_or(u64::MAX)),
                )
                .then(a.id.cmp(&b.id))
        };
        let queued = || st.orders.values().filter(|o| o.state == OrderState::Queued);
        let busy = |o: &Order| st.busy.contains(&(o.node.clone(), o.shard.clone()));
        // The best queued order is almost always free to run: look past it
        // (a key built per order) only when its copy is busy.
        let best = match queued().min_by(rank) {
            Some(o) if !busy(o) => o.id,
            Some(_) => queued().filter(|o| !busy(o)).min_by(rank)?.id,
            None => return None,
        };
        let o = st.orders.get_mut(&best)?;
        o.state = OrderState::Running;
        o.started_unix_ms = Some(now_ms());
        let o = o.clone();
        let token = self.inner.shutdown.child_token();
        st.cancels.insert(best, token.clone());
        st.running_orders += 1;
        st.busy.insert((o.node.clone(), o.shard.clone()));
        let slot = RunningSlot {
            inner: self.inner.clone(),
            id: best,
            key: (o.node.clone(), o.shard.clone()),
            released: false,
        };
        st.parked.remove(&(o.node.clone(), o.shard.clone()));
        st.hosted
            .insert_new((o.node.clone(), o.shard.clone()), || HostedShard {
                shard: o.shard.clone(),
                state: HostedState::Warming,
                cursor: 0,
                rows: 0,
                last_sync_unix_ms: 0,
            });
        Some((o, token, slot))
    }

    pub(super) async fn dispatch(self) {
        loop {
            let notified = self.inner.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            while let Some((o, token, slot)) = self.pick() {
                self.persist();
                tokio::spawn(self.clone().run_order(o, token, slot));
            }
            tokio::select! {
                _ = notified => {}
                _ = self.inner.shutdown.cancelled() => return,
            }
        }
    }

    pub(super) async fn run_order(self, o: Order, token: CancellationToken, mut slot: RunningSlot) {
        let started = Instant::now();
        // Validated on submit and on reload; an order that still names
        // something unknown is cancelled, never indexed.
        let found = (
            self.inner.shards.get(&o.shard).cloned(),
            self.inner.nodes.get(&o.node).cloned(),
        );
        let (Some(shard), Some(cache)) = found else {
            let why = stale_reason(&o, &self.inner.shards, &self.inner.nodes)
                .unwrap_or_else(|| "unknown shard or node".into());
            tracing::warn!(order = o.id, shard = %o.shard, node = %o.node, reason = %why, "order cancelled");
            {
                let mut st = self.inner.state.lock();
                slot.release(&mut st);
                st.hosted.remove(&(o.node.clone(), o.shard.clone()));
                if let Some(ord) = st.orders.get_mut(&o.id) {
                    ord.state = OrderState::Cancelled;
                    ord.finished_unix_ms = Some(now_ms());
                    ord.reason = Some(why);
                }
            }
            Metrics::inc(&self.inner.metrics.orders_failed);
            self.persist();
            self.inner.wake.notify_one();
            return;
        };
        let params = TransferParams {
            urgency: Urgency {
                priority: o.priority,
                deadline_unix_ms: o.deadline_unix_ms,
            },
            ..self.inner.cfg.transfer.clone()
        };
        tracing::info!(order = o.id, shard = %o.shard, node = %o.node, priority = o.priority, "pre-fetch started");
        let id = o.id;
        let on_error: ErrorSink = {
            let s = self.clone();
            Arc::new(move |e: Option<String>| {
                if let Some(o) = s.inner.state.lock().orders.get_mut(&id) {
                    o.last_error = e;
                }
            })
        };
        let progress = |p: &Progress| {
            if let Some(o) = self.inner.state.lock().orders.get_mut(&id) {
                o.cursor = p.cursor;
                o.rows = p.rows;
                o.bytes = p.bytes;
            }
        };
        let res = catch_up(
            self.inner.provider.clone(),
            cache.clone(),
            &shard,
            &self.inner.bucket,
            &params,
            &self.inner.metrics,
            &token,
            false,
            &on_error,
            &progress,
        )
        .await;
        let size = match &res {
            Ok(_) => cache.size(&shard.id).await.unwrap_or(0),
            Err(_) => 0,
        };
        let key = (o.node.clone(), o.shard.clone());
        let report = {
            let mut st = self.inner.state.lock();
            slot.release(&mut st);
            let now = now_ms();
            match res {
                Ok(p) => {
                    let met = o.deadline_unix_ms.map(|d| now <= d);
                    let report = Report {
                        order: id,
                        shard: o.shard.clone(),
                        node: o.node.clone(),
                        cursor: p.cursor,
                        rows: p.rows,
                        bytes: p.bytes,
                        duration_ms: started.elapsed().as_millis() as u64,
                        deadline_met: met,
                        finished_unix_ms: now,
                    };
                    st.hosted.update(&key, |h| {
                        h.state = HostedState::Warm;
                        h.cursor = p.cursor;
                        h.rows = size;
                        h.last_sync_unix_ms = now;
                    });
                    if let Some(ord) = st.orders.get_mut(&id) {
                        ord.state = OrderState::Done;
                        ord.finished_unix_ms = Some(now);
                        ord.cursor = p.cursor;
                        ord.rows = p.rows;
                        ord.bytes = p.bytes;
                        ord.last_error = None;
                        ord.report = Some(report.clone());
                    }
                    Some(report)
                }
                Err(TransferError::Cancelled) | Err(TransferError::NotHosted) => {
                    if let Some(ord) = st.orders.get_mut(&id) {
                        if self.inner.shutdown.is_cancelled() {
                            // Shutting down: run again after a restart.
                            ord.state = OrderState::Queued;
                        } else {
                            ord.state = OrderState::Cancelled;
                            ord.finished_unix_ms = Some(now);
                            ord.reason.get_or_insert_with(|| "cancelled".into());
                        }
                    }
                    None
                }
            }
        };
        self.persist();
        if let Some(r) = report {
            let m = &self.inner.metrics;
            Metrics::inc(&m.orders_done);
            m.transfer_seconds.observe(started.elapsed());
            match r.deadline_met {
                Some(true) => Metrics::inc(&m.deadlines_met),
                Some(false) => Metrics::inc(&m.deadlines_missed),
                None => {}
            }
            tracing::info!(order = r.order, shard = %r.shard, node = %r.node, cursor = r.cursor, rows = r.rows,
                bytes = r.bytes, duration_ms = r.duration_ms, deadline_met = ?r.deadline_met, "shard warm on node");
            let _ = self.inner.reports.send(r);
        }
        self.inner.wake.notify_one();
    }
}
