//! Copying a shard's delta from the provider into one node's cache.
//!
//! [`catch_up`] reads batches from the cache's cursor on, in version order,
//! and applies each one atomically with its cursor. Reading runs ahead of
//! writing. Optionally ([`TransferParams::stream`], off by default) the
//! rest of a long delta streams through one read after its first batch
//! ([`Provider::delta_stream`]: one PostgreSQL portal), and several
//! batches may be in flight to the cache ([`TransferParams::in_flight`]),
//! each landing only where its start is the cursor, taken in order. Every
//! batch is charged to a shared [`TokenBucket`] before it is written, at
//! the transfer's [`Urgency`] (see [`crate::budget`]).
//! Provider or cache outages are retried with capped exponential backoff
//! and a log line; the transfer resumes where the cursor is.

use std::collections::VecDeque;
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::cache::{Applied, ShardCache};
use crate::metrics::Metrics;
use crate::model::{encode_batch, Batch, CacheBatch, ShardDef};
use crate::provider::{Provider, ProviderError};

pub use crate::budget::{TokenBucket, Urgency};

/// How transfers read and write.
#[derive(Debug, Clone)]
pub struct TransferParams {
    pub batch_rows: usize,
    pub max_value_bytes: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The transfer's place among the budget's waiters (the scheduler sets
    /// an order's priority and deadline; default: a freshness refresh).
    pub urgency: Urgency,
    /// Batches written to the cache before the first of them is answered
    /// (1: one at a time). More than one keeps the cache busy while the
    /// next batch travels; the cursor check makes every batch land only
    /// behind the one before it. Default 1: 4 measured no faster on one
    /// Redis and slower on a cluster (benches/RESULTS.md).
    pub in_flight: usize,
    /// Read a long delta through one streaming read
    /// ([`Provider::delta_stream`]) after its first batch, instead of a
    /// query per batch. Default off, for the same reason.
    pub stream: bool,
}

impl Default for TransferParams {
    fn default() -> Self {
        TransferParams {
            batch_rows: 2000,
            max_value_bytes: 64 * 1024,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            urgency: Urgency::default(),
            in_flight: 1,
            stream: false,
        }
    }
}

/// What a catch-up did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The cache's cursor when it stopped.
    pub cursor: u64,
    pub rows: u64,
    pub bytes: u64,
    pub batches: u64,
    /// Batches the cache already had (replays after a crash).
    pub skipped: u64,
}

impl Progress {
    /// Count a batch the cache applied.
    fn count(&mut self, f: &InFlight, metrics: &Metrics) {
        self.rows += f.rows;
        self.bytes += f.bytes;
        self.batches += 1;
        metrics.rows_copied.fetch_add(f.rows, Relaxed);
        metrics.bytes_copied.fetch_add(f.bytes, Relaxed);
        metrics.batches_applied.fetch_add(1, Relaxed);
    }
}

/// Why the writer stopped before the reader's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// Read the cursor again and go on from there.
    Again,
    /// The shard's cursor is gone during an incremental refresh.
    NotHosted,
}

/// A batch sent to the cache and not yet answered: its write runs as its
/// own task (retried there with backoff), aborted if the transfer stops.
struct InFlight {
    from: u64,
    to: u64,
    rows: u64,
    bytes: u64,
    task: tokio::task::JoinHandle<Result<Applied, TransferError>>,
}

impl InFlight {
    fn spawn(
        cache: Arc<dyn ShardCache>,
        shard: String,
        cb: CacheBatch,
        params: TransferParams,
        cancel: CancellationToken,
        on_error: ErrorSink,
        metrics: Arc<Metrics>,
    ) -> InFlight {
        let (from, to) = (cb.from, cb.to);
        let rows = (cb.upserts.len() + cb.deletes.len()) as u64;
        let bytes = cb.bytes as u64;
        let task = tokio::spawn(async move {
            retry(
                "cache batch write",
                &shard,
                &params,
                &cancel,
                &on_error,
                &metrics.cache_errors,
                || cache.apply(&shard, &cb),
            )
            .await
        });
        InFlight {
            from,
            to,
            rows,
            bytes,
            task,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransferError {
    #[error("cancelled")]
    Cancelled,
    /// The shard was evicted while an incremental refresh ran.
    #[error("shard is no longer hosted on this node")]
    NotHosted,
}

/// Where retries report (for the order's `last_error`): `Some(error)`
/// while retrying, `None` once recovered.
pub type ErrorSink = Arc<dyn Fn(Option<String>) + Send + Sync>;

/// An [`ErrorSink`] that drops reports.
pub fn no_errors() -> ErrorSink {
    Arc::new(|_| {})
}

/// Run `op` until it succeeds, with capped exponential backoff; a warning
/// on the first failure and every tenth, an info line on recovery. Stops
/// only when `cancel` fires.
pub async fn retry<T, E: Display, Fut: Future<Output = Result<T, E>>>(
    what: &str,
    shard: &str,
    params: &TransferParams,
    cancel: &CancellationToken,
    on_error: &ErrorSink,
    counter: &std::sync::atomic::AtomicU64,
    mut op: impl FnMut() -> Fut,
) -> Result<T, TransferError> {
    let mut delay = params.backoff_min;
    let mut failures = 0u64;
    loop {
        let r = tokio::select! {
            r = op() => r,
            _ = cancel.cancelled() => return Err(TransferError::Cancelled),
        };
        match r {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(shard, what, failures, "recovered; transfer resumes");
                    on_error(None);
                }
                return Ok(v);
            }
            Err(e) => {
                counter.fetch_add(1, Relaxed);
                failures += 1;
                if failures == 1 || failures % 10 == 0 {
                    tracing::warn!(shard, what, error = %e, failures, retry_in_ms = delay.as_millis() as u64,
                        "{what} failed; retrying with backoff");
                }
                on_error(Some(format!("{what}: {e}")));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Err(TransferError::Cancelled),
                }
                delay = (delay * 2).min(params.backoff_max);
            }
        }
    }
}

/// Bring `shard` in `cache` up to date with the provider.
///
/// `must_be_hosted`: for an incremental refresh, stop with
/// [`TransferError::NotHosted`] instead of starting a shard from scratch
/// when its cursor is gone (it was evicted). Otherwise a shard not hosted
/// whose evicted copy is parked in the cache resumes from the parked
/// cursor: only the delta since is copied. `progress` is called after
/// every batch.
#[allow(clippy::too_many_arguments)]
pub async fn catch_up(
    provider: Arc<dyn Provider>,
    cache: Arc<dyn ShardCache>,
    shard: &ShardDef,
    bucket: &TokenBucket,
    params: &TransferParams,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
    must_be_hosted: bool,
    on_error: &ErrorSink,
    progress: &(dyn Fn(&Progress) + Send + Sync),
) -> Result<Progress, TransferError> {
    let mut p = Progress::default();
    'restart: loop {
        let start = retry(
            "cache cursor read",
            &shard.id,
            params,
            cancel,
            on_error,
            &metrics.cache_errors,
            || cache.cursor(&shard.id),
        )
        .await?;
        if start.is_none() && must_be_hosted {
            return Err(TransferError::NotHosted);
        }
        // Not hosted: an evicted copy kept parked is brought current by the
        // delta since its cursor instead of copied whole.
        let parked = match start {
            Some(_) => None,
            None => {
                retry(
                    "cache parked cursor read",
                    &shard.id,
                    params,
                    cancel,
                    on_error,
                    &metrics.cache_errors,
                    || cache.parked(&shard.id),
                )
                .await?
            }
        };
        if let Some(c) = parked {
            tracing::debug!(shard = %shard.id, cursor = c, "resuming a parked copy from its cursor");
        }
        let mut cursor = start.or(parked).unwrap_or(0);
        p.cursor = cursor;
        let resuming = parked.is_some();

        // Reader: ahead of the writer by up to `in_flight` + 1 batches.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<CacheBatch>(params.in_flight.max(1) + 1);
        let reader_cancel = cancel.child_token();
        let reader = {
            let provider = provider.clone();
            let shard = shard.clone();
            let params = params.clone();
            let metrics = metrics.clone();
            let cancel = reader_cancel.clone();
            let on_error = on_error.clone();
            tokio::spawn(async move {
                let mut c = cursor;
                let mut first = true;
                // After a full first batch, the rest of the delta comes
                // through one streaming read; a refresh of a few rows
                // stays one query.
                let mut stream: Option<BoxStream<'static, Result<Batch, ProviderError>>> = None;
                // A streaming read that failed is not tried again in this
                // transfer (the per-batch reads retry with backoff).
                let mut may_stream = params.stream;
                let mut report_recovery = false;
                loop {
                    let streamed = match stream.as_mut() {
                        None => None,
                        Some(s) => match s.next().await {
                            Some(Ok(mut b)) if b.from == c => {
                                if !b.more {
                                    // The stream's snapshot is the one its
                                    // portal opened with: a read of what was
                                    // committed since ends the transfer.
                                    b.more = true;
                                    stream = None;
                                    may_stream = false;
                                }
                                Some(b)
                            }
                            Some(Ok(b)) => {
                                tracing::warn!(shard = %shard.id, expected = c, got = b.from,
                                    "streamed delta out of step; reading per batch");
                                None
                            }
                            Some(Err(e)) => {
                                metrics.provider_errors.fetch_add(1, Relaxed);
                                tracing::warn!(shard = %shard.id, error = %e,
                                    "streamed delta read failed; reading per batch with backoff");
                                on_error(Some(format!("provider delta stream: {e}")));
                                may_stream = false;
                                report_recovery = true;
                                None
                            }
                            None => None,
                        },
                    };
                    let b = match streamed {
                        Some(b) => b,
                        None => {
                            stream = None;
                            let b = retry(
                                "provider delta read",
                                &shard.id,
                                &params,
                                &cancel,
                                &on_error,
                                &metrics.provider_errors,
                                || provider.delta(&shard, c, params.batch_rows),
                            )
                            .await?;
                            if std::mem::take(&mut report_recovery) {
                                // Read again after the stream's failure.
                                on_error(None);
                            }
                            if b.more && may_stream {
                                stream = Some(provider.clone().delta_stream(
                                    shard.clone(),
                                    b.to,
                                    params.batch_rows,
                                ));
                            }
                            b
                        }
                    };
                    if b.malformed > 0 {
                        metrics.rows_malformed.fetch_add(b.malformed, Relaxed);
                        metrics.rows_rejected.fetch_add(b.malformed, Relaxed);
                    }
                    let more = b.more;
                    let cb = encode_batch(&shard.id, &b, params.max_value_bytes, &metrics);
                    c = cb.to;
                    let empty = cb.upserts.is_empty() && cb.deletes.is_empty() && cb.from == cb.to;
                    // An empty first batch still matters when the shard is not
                    // hosted yet: applying it creates the cursor (or hosts a
                    // parked copy again).
                    let must_send = !empty || b.from == 0 || (resuming && first);
                    first = false;
                    if must_send && tx.send(cb).await.is_err() {
                        return Ok(());
                    }
                    if !more {
                        return Ok::<(), TransferError>(());
                    }
                }
            })
        };
        let _guard = reader_cancel.clone().drop_guard();

        // Writer: up to `in_flight` batches sent before the first is
        // answered, so the cache never waits for the next batch to be sent.
        // Each batch still lands only where its `from` is the cursor (the
        // script's check), so a batch sent behind one that failed finds the
        // cursor elsewhere and writes nothing; results are taken in order,
        // so the transfer's cursor moves over a batch only once it and
        // every batch before it were applied (and, on a cluster with
        // `wait_replicas`, acknowledged).
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let depth = params.in_flight.max(1);
        let mut reader_done = false;
        let mut restart: Option<Restart> = None;
        loop {
            let can_take = restart.is_none() && !reader_done && inflight.len() < depth;
            if inflight.is_empty() && !can_take {
                break;
            }
            tokio::select! {
                biased;
                r = async { (&mut inflight.front_mut().expect("non-empty").task).await },
                    if !inflight.is_empty() =>
                {
                    let f = inflight.pop_front().expect("non-empty");
                    let outcome = match r {
                        Ok(Ok(o)) => o,
                        Ok(Err(e)) => return Err(e),
                        // A write that panicked fails the transfer as it
                        // would have had it run inline.
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        Err(e) => {
                            tracing::error!(shard = %shard.id, error = %e, "cache write task failed; restarting the transfer");
                            restart.get_or_insert(Restart::Again);
                            continue;
                        }
                    };
                    if restart.is_some() {
                        // Behind a batch that did not land: count what did.
                        if outcome == Applied::Applied {
                            p.count(&f, metrics);
                        }
                        continue;
                    }
                    match outcome {
                        Applied::Applied => {
                            p.count(&f, metrics);
                            cursor = f.to;
                        }
                        Applied::AlreadyApplied { cursor: c } => {
                            p.skipped += 1;
                            metrics.batches_skipped.fetch_add(1, Relaxed);
                            if c > f.to {
                                // Someone else moved further; restart from there.
                                restart = Some(Restart::Again);
                                continue;
                            }
                            cursor = c;
                        }
                        Applied::CursorMismatch { cursor: c } => {
                            tracing::info!(shard = %shard.id, expected = f.from, found = ?c, "cursor moved under the transfer; re-reading");
                            restart = Some(if c.is_none() && must_be_hosted {
                                Restart::NotHosted
                            } else {
                                Restart::Again
                            });
                            continue;
                        }
                    }
                    p.cursor = cursor;
                    progress(&p);
                }
                cb = rx.recv(), if can_take => {
                    let Some(cb) = cb else {
                        reader_done = true;
                        continue;
                    };
                    let waited = bucket.take(cb.bytes, params.urgency).await;
                    metrics
                        .budget_wait_us
                        .fetch_add(waited.as_micros() as u64, Relaxed);
                    inflight.push_back(InFlight::spawn(
                        cache.clone(),
                        shard.id.clone(),
                        cb,
                        params.clone(),
                        cancel.clone(),
                        on_error.clone(),
                        metrics.clone(),
                    ));
                }
            }
        }
        if let Some(why) = restart {
            // The reader may be parked on a full channel: abort it.
            reader.abort();
            let _ = reader.await;
            if why == Restart::NotHosted {
                return Err(TransferError::NotHosted);
            }
            continue 'restart;
        }
        match reader.await {
            Ok(Ok(())) => return Ok(p),
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                tracing::error!(shard = %shard.id, error = %e, "delta reader task failed; restarting the transfer");
                continue 'restart;
            }
        }
    }
}
