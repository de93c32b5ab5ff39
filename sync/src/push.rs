//! Finished orders pushed to the shard managers (`[manager] urls`), so the
//! leader turns a warm replica serving at once instead of on its next
//! poll of `GET /orders/{id}` (the poll stays: a lost event costs one
//! polling interval, never an order).
//!
//! HTTP, not the metadata store's pub/sub: sync has no metadata store to
//! speak of (its Redis are the nodes' caches, and a node's cache is not
//! where a manager listens), an HTTP answer tells the sender the event
//! arrived, and the call carries the same bearer token as every other
//! control route. Each event goes to every configured manager — the
//! standbys too, which only plan — as `POST /order-events`
//! ([`shardmap::contract::OrderEvent`]).
//!
//! Nothing here can hold up the scheduler: the feed hands events over
//! without waiting ([`crate::events`]); a fan-out loop copies each into a
//! bounded queue per manager (a full queue drops the event, counted); one
//! worker per manager sends its queue in order, each call under a
//! deadline, retried with backoff while the manager is unreachable or
//! answers 5xx, and given up after a few tries (counted). The loops are
//! supervised with the scheduler's.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hyper::{http, Method};
use shardcast_edge::client::{Call, CallError, Client, ClientOptions};
use shardmap::contract::{OrderEvent, OrderEventAnswer};
use tokio::sync::{broadcast, mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::supervise::Supervisor;

/// The path of the receiving route on a manager's listener.
pub const PATH: &str = "/order-events";

/// The delivery loops' names (one per manager, as the supervisor counts
/// them): also the most managers one sync pushes to.
const WORKERS: [&str; 8] = [
    "push-0", "push-1", "push-2", "push-3", "push-4", "push-5", "push-6", "push-7",
];

/// Where and how finished orders are pushed (`[manager]` of the sync
/// config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// Base URLs of the forecaster listeners that run a shard manager.
    pub urls: Vec<String>,
    /// The managers' `admin_token`, sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Deadline of one call.
    pub timeout: Duration,
    /// Events waiting per manager before new ones are dropped.
    pub queue: usize,
    /// Tries per event (the first included).
    pub attempts: u32,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            urls: vec![],
            token: None,
            timeout: Duration::from_millis(1000),
            queue: 1024,
            attempts: 5,
        }
    }
}

/// `[manager]` of the sync config.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerFile {
    /// Base URLs (`http://host:port`) of the forecasters that run a shard
    /// manager; every one gets every event. Empty: no push (the managers
    /// poll).
    #[serde(default)]
    pub urls: Vec<String>,
    /// The managers' `admin_token`.
    #[serde(default)]
    pub token: Option<String>,
    /// Deadline of one call, ms (default 1000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Events waiting per manager before new ones are dropped (default 1024).
    #[serde(default)]
    pub queue: Option<usize>,
}

impl ManagerFile {
    /// The validated settings; problems go to `errs`, each naming its field.
    pub fn validate(&self, errs: &mut Vec<String>) -> PushConfig {
        let d = PushConfig::default();
        if self.urls.len() > WORKERS.len() {
            errs.push(format!(
                "manager.urls: at most {} managers ({} given)",
                WORKERS.len(),
                self.urls.len()
            ));
        }
        for (i, u) in self.urls.iter().enumerate() {
            let ok = u
                .strip_prefix("http://")
                .is_some_and(|rest| !rest.is_empty() && u.parse::<http::Uri>().is_ok());
            if !ok {
                errs.push(format!(
                    "manager.urls[{i}]: `{u}` must be an http:// URL of a forecaster's listener"
                ));
            }
        }
        let timeout = Duration::from_millis(self.timeout_ms.unwrap_or(1000));
        if timeout.is_zero() || timeout > Duration::from_secs(30) {
            errs.push("manager.timeout_ms: must be 1..=30000".into());
        }
        let queue = self.queue.unwrap_or(d.queue);
        if queue == 0 || queue > 1 << 20 {
            errs.push("manager.queue: must be 1..=1048576".into());
        }
        PushConfig {
            urls: self.urls.clone(),
            token: self.token.clone().filter(|t| !t.is_empty()),
            timeout,
            queue,
            ..d
        }
    }
}

/// What one try at one event came to.
enum Sent {
    Done,
    Retry(CallError),
    GiveUp(CallError),
}

struct Target {
    url: String,
    rx: Mutex<mpsc::Receiver<OrderEvent>>,
}

/// Start pushing `sched`'s finished orders to every manager of `cfg`:
/// nothing to do without URLs. The loops stop at `shutdown`.
pub fn start(cfg: PushConfig, sched: &Scheduler, shutdown: CancellationToken) {
    if cfg.urls.is_empty() {
        return;
    }
    let metrics = sched.metrics().clone();
    let sup = Supervisor::new(sched.tasks().clone(), shutdown);
    let client = Client::new(ClientOptions {
        user_agent: "shardcast-sync",
        ..ClientOptions::default()
    });
    let cfg = Arc::new(cfg);
    let mut queues = Vec::with_capacity(cfg.urls.len());
    for (url, name) in cfg.urls.iter().zip(WORKERS) {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        queues.push(tx);
        let target = Arc::new(Target {
            url: format!("{}{PATH}", url.trim_end_matches('/')),
            rx: Mutex::new(rx),
        });
        let (cfg, client, metrics, stop) =
            (cfg.clone(), client.clone(), metrics.clone(), sup.stopped());
        sup.spawn(name, move || {
            deliver(
                target.clone(),
                cfg.clone(),
                client.clone(),
                metrics.clone(),
                stop.clone(),
            )
        });
    }
    let queues = Arc::new(queues);
    let (sched, stop) = (sched.clone(), sup.stopped());
    sup.spawn("push-fanout", move || {
        fan_out(
            sched.order_events(),
            queues.clone(),
            metrics.clone(),
            stop.clone(),
        )
    });
}

/// Copy each event into every manager's queue; a full queue drops it.
async fn fan_out(
    mut events: broadcast::Receiver<OrderEvent>,
    queues: Arc<Vec<mpsc::Sender<OrderEvent>>>,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let ev = tokio::select! {
            r = events.recv() => r,
            _ = shardcast_edge::http1::stopped(&mut stop) => return,
        };
        match ev {
            Ok(ev) => {
                for q in queues.iter() {
                    if q.try_send(ev.clone()).is_err() {
                        metrics.order_events_dropped.fetch_add(1, Relaxed);
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                metrics.order_events_dropped.fetch_add(n, Relaxed);
                tracing::warn!(
                    missed = n,
                    "order events fell behind; the managers' polling covers them"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Send one manager's queue, in order, until shutdown.
async fn deliver(
    target: Arc<Target>,
    cfg: Arc<PushConfig>,
    client: Client,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut rx = target.rx.lock().await;
    loop {
        let ev = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => return },
            _ = shardcast_edge::http1::stopped(&mut stop) => return,
        };
        let mut backoff = Duration::from_millis(50);
        for attempt in 1..=cfg.attempts.max(1) {
            let outcome = tokio::select! {
                o = send(&client, &target.url, &cfg, &ev) => o,
                _ = shardcast_edge::http1::stopped(&mut stop) => return,
            };
            match outcome {
                Sent::Done => {
                    metrics.order_events_sent.fetch_add(1, Relaxed);
                    break;
                }
                Sent::Retry(e) if attempt < cfg.attempts => {
                    metrics.order_events_retried.fetch_add(1, Relaxed);
                    tracing::debug!(url = %target.url, seq = ev.seq, error = %e, retry_in = ?backoff, "order event not delivered; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shardcast_edge::http1::stopped(&mut stop) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Sent::Retry(e) | Sent::GiveUp(e) => {
                    metrics.order_events_failed.fetch_add(1, Relaxed);
                    tracing::warn!(url = %target.url, seq = ev.seq, order = ev.order, error = %e,
                        "order event given up; the manager finds the order by polling");
                    break;
                }
            }
        }
    }
}

async fn send(client: &Client, url: &str, cfg: &PushConfig, ev: &OrderEvent) -> Sent {
    let body = match serde_json::to_vec(ev) {
        Ok(b) => b,
        Err(e) => {
            return Sent::GiveUp(CallError::Invalid {
                method: Method::POST,
                url: url.to_string(),
                reason: e.to_string(),
            })
        }
    };
    let call = Call::new(Method::POST, url, cfg.timeout)
        .json(body)
        .token(cfg.token.as_deref())
        .max_body(4096);
    match client.send_json::<OrderEventAnswer>(call).await {
        Ok(_) => Sent::Done,
        Err(e) if e.is_retryable() => Sent::Retry(e),
        Err(e) => Sent::GiveUp(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmap::contract::OrderState;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_manager_section_is_validated() {
        let mut errs = vec![];
        let f = ManagerFile {
            urls: vec!["http://127.0.0.1:9300".into(), "ftp://x".into()],
            token: Some(String::new()),
            timeout_ms: Some(0),
            queue: None,
        };
        let c = f.validate(&mut errs);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("manager.urls[1]"), "{errs:?}");
        assert!(errs[1].starts_with("manager.timeout_ms"), "{errs:?}");
        assert_eq!((c.token, c.queue), (None, 1024));
    }

    /// A manager that answers 503 once, then takes the event: one retry,
    /// one delivery, in order.
    #[tokio::test]
    async fn a_refused_event_is_retried_then_delivered() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let n = h.fetch_add(1, Relaxed);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let _ = s.read(&mut buf).await;
                    let (status, body) = if n == 0 {
                        ("503 Unavailable", r#"{"error":"busy"}"#)
                    } else {
                        ("200 OK", r#"{"accepted":true,"duplicate":false}"#)
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        let (tx, rx) = mpsc::channel(4);
        let target = Arc::new(Target {
            url: format!("{base}{PATH}"),
            rx: Mutex::new(rx),
        });
        let metrics = Arc::new(Metrics::default());
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(deliver(
            target,
            Arc::new(PushConfig::default()),
            Client::default(),
            metrics.clone(),
            stop,
        ));
        tx.send(OrderEvent {
            source: "s".into(),
            seq: 1,
            order: 1,
            shard: "UK/SEASONAL".into(),
            node: "node-a".into(),
            state: OrderState::Done,
            epoch: 1,
            at_unix_ms: 1,
            reason: None,
        })
        .await
        .unwrap();
        let t0 = std::time::Instant::now();
        while metrics.order_events_sent.load(Relaxed) == 0 {
            assert!(t0.elapsed() < Duration::from_secs(5), "never delivered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(metrics.order_events_retried.load(Relaxed), 1);
        assert_eq!(metrics.order_events_failed.load(Relaxed), 0);
        assert_eq!(hits.load(Relaxed), 2);
        stop_tx.send_replace(true);
        worker.await.unwrap();
    }
}
