//! `POST /order-events`: sync's word that a pre-fetch order finished
//! ([`OrderEvent`], pushed by sync's `push` module), so the shard manager
//! follows its orders at once — a round without the planner reads the
//! order from sync and turns a warm replica serving — instead of at its
//! next interval. The manager's polling stays the fallback: an event only
//! wakes it.
//!
//! Idempotent: per `source` (one run of sync) the highest `seq` seen is
//! kept, and an event at or below it is answered `duplicate` and changes
//! nothing. Behind the manager's `admin_token`, like its other routes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use parking_lot::Mutex;
use shardmap::contract::orders::InvalidEvent;
use shardmap::contract::{OrderEvent, OrderEventAnswer};

use crate::manager::routes::{admitted, error, reply};
use crate::manager::Manager;

/// The route.
pub const PATH: &str = "/order-events";
/// Largest event body read.
const MAX_BODY: usize = 16 * 1024;
/// Runs of sync remembered (the oldest is forgotten past this).
const SOURCES_KEPT: usize = 64;

/// What the route has seen; counted on `/metrics`.
#[derive(Debug, Default)]
pub struct OrderEvents {
    /// source → (highest seq, when it was last heard from, a counter).
    seen: Mutex<BTreeMap<String, (u64, u64)>>,
    heard: AtomicU64,
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused: AtomicU64,
}

impl OrderEvents {
    /// Check and record `ev`: `Ok(true)` when it is new, `Ok(false)` when
    /// its `(source, seq)` was seen already.
    pub fn admit(&self, ev: &OrderEvent) -> Result<bool, InvalidEvent> {
        ev.validate()?;
        let tick = self.heard.fetch_add(1, Relaxed);
        let mut seen = self.seen.lock();
        let fresh = match seen.get_mut(&ev.source) {
            Some((seq, at)) => {
                *at = tick;
                if ev.seq <= *seq {
                    false
                } else {
                    *seq = ev.seq;
                    true
                }
            }
            None => {
                if seen.len() >= SOURCES_KEPT {
                    let oldest = seen
                        .iter()
                        .min_by_key(|(_, (_, at))| *at)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = oldest {
                        seen.remove(&k);
                    }
                }
                seen.insert(ev.source.clone(), (ev.seq, tick));
                true
            }
        };
        drop(seen);
        if fresh {
            self.accepted.fetch_add(1, Relaxed);
        } else {
            self.duplicates.fetch_add(1, Relaxed);
        }
        Ok(fresh)
    }
}

/// Answer `POST /order-events`: 200 with an [`OrderEventAnswer`] (a new
/// event wakes the manager), 400 for a body that is not an event, 401
/// without the manager's token, 404 when this forecaster runs no manager.
pub async fn handle<B>(
    m: Option<&Manager>,
    events: &OrderEvents,
    req: Request<B>,
) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let m = match admitted(m, &req) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    if req.method() != http::Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            events.refused.fetch_add(1, Relaxed);
            return error(StatusCode::BAD_REQUEST, &format!("reading body: {e}"));
        }
    };
    let parsed = shardcast_edge::body::require_json_object(&body)
        .map_err(str::to_string)
        .and_then(|()| serde_json::from_slice::<OrderEvent>(&body).map_err(|e| e.to_string()));
    let ev = match parsed {
        Ok(ev) => ev,
        Err(why) => {
            events.refused.fetch_add(1, Relaxed);
            return error(StatusCode::BAD_REQUEST, &format!("order event: {why}"));
        }
    };
    match events.admit(&ev) {
        Ok(fresh) => {
            if fresh {
                tracing::debug!(source = %ev.source, seq = ev.seq, order = ev.order, shard = %ev.shard,
                    node = %ev.node, state = %ev.state, "order finished at sync; manager woken");
                m.orders_finished(ev.order);
            }
            reply(
                StatusCode::OK,
                &OrderEventAnswer {
                    accepted: fresh,
                    duplicate: !fresh,
                },
            )
        }
        Err(e) => {
            events.refused.fetch_add(1, Relaxed);
            error(StatusCode::BAD_REQUEST, &e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmap::contract::OrderState;

    fn ev(source: &str, seq: u64) -> OrderEvent {
        OrderEvent {
            source: source.into(),
            seq,
            order: seq,
            shard: "UK/SEASONAL".into(),
            node: "node-c".into(),
            state: OrderState::Done,
            epoch: 1,
            at_unix_ms: 1,
            reason: None,
        }
    }

    #[test]
    fn an_event_counts_once_per_run_of_sync() {
        let e = OrderEvents::default();
        assert_eq!(e.admit(&ev("a", 1)), Ok(true));
        assert_eq!(e.admit(&ev("a", 1)), Ok(false), "a retry");
        assert_eq!(e.admit(&ev("a", 3)), Ok(true), "a gap is fine");
        assert_eq!(e.admit(&ev("a", 2)), Ok(false), "late and older");
        assert_eq!(e.admit(&ev("b", 1)), Ok(true), "another run");
        let running = OrderEvent {
            state: OrderState::Running,
            ..ev("a", 9)
        };
        assert!(e.admit(&running).is_err());
        assert_eq!(
            e.admit(&ev("a", 9)),
            Ok(true),
            "a refused one is not recorded"
        );
        assert_eq!(e.accepted.load(Relaxed), 4);
        assert_eq!(e.duplicates.load(Relaxed), 2);
    }

    #[test]
    fn the_runs_remembered_are_bounded() {
        let e = OrderEvents::default();
        for i in 0..(SOURCES_KEPT as u64 + 10) {
            e.admit(&ev(&format!("s{i}"), 1)).unwrap();
        }
        assert_eq!(e.seen.lock().len(), SOURCES_KEPT);
        // The newest are the ones kept.
        assert_eq!(
            e.admit(&ev(&format!("s{}", SOURCES_KEPT + 9), 1)),
            Ok(false)
        );
    }

    #[tokio::test]
    async fn without_a_manager_the_route_says_so() {
        let req = Request::post(PATH)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let r = handle(None, &OrderEvents::default(), req).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
