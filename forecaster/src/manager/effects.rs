//! Carrying out the state's effects: pre-fetch orders, cancels and
//! evictions at sync, in the order the state asked for them, with the
//! events their answers lead to applied before the effects that follow.

use std::collections::VecDeque;

use tracing::{info, warn};

use super::phases::{Laps, Phase};
use super::state::{Effect, Event, OrderRequest};
use super::sync::Announced;
use super::Manager;
use crate::time::now_unix_ms;

/// Evictions (and cancels) sent to sync at once: a round can find dozens
/// of shards cooled, and one call at a time each waits for the one before.
const EVICTIONS_IN_FLIGHT: usize = 16;

impl Manager {
    /// Carry out effects in order; those of the events they lead to come
    /// before the rest.
    pub(super) async fn carry_out(&self, effects: Vec<Effect>, laps: &mut Laps) {
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(e) = queue.pop_front() {
            let more = match e {
                Effect::Record(d) => {
                    self.metrics.decision(&d);
                    self.log.record(d);
                    continue;
                }
                Effect::Submit(order) => {
                    // The orders queued after it go in the same call, up to
                    // the first effect that is neither an order nor a log
                    // line (a cancel or an eviction must reach sync before
                    // the orders that follow it).
                    let mut orders = vec![order];
                    loop {
                        match queue.pop_front() {
                            Some(Effect::Submit(o)) => orders.push(o),
                            Some(Effect::Record(d)) => {
                                self.metrics.decision(&d);
                                self.log.record(d);
                            }
                            Some(other) => {
                                queue.push_front(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    let was = laps.enter(Phase::Submit);
                    let results = self.submit(&orders).await;
                    let now = now_unix_ms();
                    let mut more = vec![];
                    for (order, r) in orders.into_iter().zip(results) {
                        more.extend(match r {
                            Ok(id) => self.apply(Event::OrderSubmitted { order, id, now }),
                            Err(error) => {
                                if !order.adds_replica {
                                    warn!(shard = %order.shard, node = %order.node, error = %error, "refresh order refused");
                                }
                                self.apply(Event::OrderRefused { order, error, now })
                            }
                        });
                    }
                    laps.enter(was);
                    more
                }
                Effect::Cancel { id } => {
                    // The cancels queued after it go out with it, a few at
                    // a time (each is its own call to sync), all before the
                    // effects that follow.
                    let mut ids = vec![id];
                    while let Some(Effect::Cancel { id }) = queue.front() {
                        ids.push(*id);
                        queue.pop_front();
                    }
                    let was = laps.enter(Phase::Evict);
                    use futures::StreamExt;
                    futures::stream::iter(ids)
                        .for_each_concurrent(EVICTIONS_IN_FLIGHT, |id| self.sync.cancel(id))
                        .await;
                    laps.enter(was);
                    continue;
                }
                e @ Effect::Evict { .. } => {
                    // The evictions queued after it go out with it, a few
                    // at a time (each is its own call to sync).
                    let mut batch = vec![e];
                    while let Some(Effect::Evict { .. }) = queue.front() {
                        batch.extend(queue.pop_front());
                    }
                    let was = laps.enter(Phase::Evict);
                    let evicted = self.evict(batch).await;
                    laps.enter(was);
                    let mut more = vec![];
                    for (shard, node, detail) in evicted {
                        let now = now_unix_ms();
                        more.extend(self.apply(Event::Evicted {
                            shard,
                            node,
                            detail,
                            now,
                        }));
                    }
                    more
                }
                // The round publishes after its last event; an operator
                // change is written by the round it wakes.
                Effect::Publish { .. } | Effect::Refused(_) => continue,
                Effect::PersistOperator => {
                    self.wake();
                    continue;
                }
            };
            for m in more.into_iter().rev() {
                queue.push_front(m);
            }
        }
    }

    /// Carry out evictions at sync, [`EVICTIONS_IN_FLIGHT`] at a time: the
    /// cold ones sync scheduled, in the order given, as `(shard, node,
    /// detail)`. A drained replica's eviction that fails is only logged.
    async fn evict(&self, batch: Vec<Effect>) -> Vec<(String, String, String)> {
        use futures::StreamExt;
        futures::stream::iter(batch)
            .map(|e| async move {
                match e {
                    Effect::Evict {
                        shard,
                        node,
                        cold: None,
                    } => {
                        self.sync.evict_drained(&node, &shard).await;
                        None
                    }
                    Effect::Evict {
                        shard,
                        node,
                        cold: Some(detail),
                    } => match self.sync.evict(&node, &shard).await {
                        Ok(()) => Some((shard, node, detail)),
                        Err(e) => {
                            warn!(shard, node, error = %e, "evicting a cold shard failed");
                            None
                        }
                    },
                    _ => None,
                }
            })
            .buffered(EVICTIONS_IN_FLIGHT)
            .filter_map(std::future::ready)
            .collect()
            .await
    }

    /// Pre-fetch orders to sync, in the lease's epoch once sync knows it:
    /// per order, sync's id or why not.
    async fn submit(&self, orders: &[OrderRequest]) -> Vec<Result<u64, String>> {
        let refuse = |why: String| orders.iter().map(|_| Err(why.clone())).collect();
        let Some(epoch) = self.lease.may_write() else {
            return refuse("not leading: no orders".into());
        };
        if self.with_state(|st| st.sync_epoch) < epoch {
            return refuse(format!("epoch {epoch} not yet announced to sync"));
        }
        self.sync
            .submit(orders, epoch, &self.lease)
            .await
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    /// A new term tells sync its epoch before ordering anything, so the
    /// orders of every older leader are refused from then on. Tried every
    /// round until sync answers.
    pub(super) async fn announce_epoch(&self) {
        let Some(epoch) = self.lease.may_write() else {
            return;
        };
        if self.with_state(|st| st.sync_epoch) >= epoch {
            return;
        }
        match self.sync.announce(epoch).await {
            Announced::Yes => {
                info!(epoch, "sync fenced: orders of older epochs are refused");
                self.apply(Event::EpochAnnounced(epoch));
            }
            Announced::Fenced => self.lease.fenced("sync has seen a higher epoch"),
            Announced::Failed(e) => {
                warn!(error = %e, "announcing the epoch to sync failed; no orders until it answers");
            }
        }
    }
}
