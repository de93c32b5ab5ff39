//! The request path: Pingora's `ProxyHttp` phases for shard-aware routing.
//!
//! Per request: one snapshot load, key extraction, table lookup, replica
//! choice (P2C on capacity-weighted in-flight), forward, retry on a
//! *different* replica after a connect error or a 502/503/504 for
//! idempotent methods within the retry budget, then telemetry. Per-request
//! state lives only in [`Ctx`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::modules::http::HttpModules;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use shardmap::config::MissingKey;
use shardmap::key::{self, KeyError};
use shardmap::table::{NodeIdx, ShardIdx};

use crate::framing;
use crate::node::{now_ms, InFlight};
use crate::selection::{P2c, Selector};
use crate::snapshot::Snapshot;
use crate::state::Shared;
use crate::telemetry::Outcome;

/// Largest request body read (and buffered for retries) before routing.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_TRIED: usize = 8;
const SKU_INLINE: usize = 48;
/// The node's cache verdict (a response field).
static X_CACHE: http::HeaderName = http::HeaderName::from_static("x-cache");

/// Where the request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    None,
    Shard(ShardIdx),
    /// A route's default pool (request without a key).
    Default(usize),
}

/// Per-request state, boxed: Pingora holds the context inside the
/// request's future, which it moves into a new box for every request (a
/// copy of the whole future), so a context inline there is copied with it
/// on every request; a box is one small allocation instead.
pub type Ctx = Box<RequestState>;

/// What [`Ctx`] holds.
pub struct RequestState {
    start: Instant,
    /// `start` as [`crate::node::now_ms`]: the request's one clock read
    /// serves the retry budget and the first replica choice.
    start_ms: u64,
    snap: Option<Arc<Snapshot>>,
    pool: Pool,
    node: Option<NodeIdx>,
    in_flight: Option<InFlight>,
    tried: [NodeIdx; MAX_TRIED],
    ntried: usize,
    cache_hit: Option<bool>,
    /// The client hung up, or failed a read or write: the request ends
    /// here, is not retried, and costs no node a health mark.
    client_aborted: bool,
    /// The sku, inline (no allocation); empty when longer than the buffer.
    sku: [u8; SKU_INLINE],
    sku_len: usize,
}

impl RequestState {
    /// The sku's bytes, copied from the extracted (UTF-8) key.
    fn sku(&self) -> &[u8] {
        &self.sku[..self.sku_len]
    }
}

pub struct ShardProxy {
    pub shared: Arc<Shared>,
    selector: P2c,
}

impl ShardProxy {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            selector: P2c,
        }
    }
}

fn status_error(code: u16, why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(code), why)
}

/// Answer directly with a short plain-text body.
async fn respond(session: &mut Session, code: u16, msg: &str, close: bool) -> Result<()> {
    let mut resp = ResponseHeader::build(code, Some(3))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", (msg.len() + 1).to_string())?;
    if close {
        resp.insert_header("connection", "close")?;
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    let mut body = Vec::with_capacity(msg.len() + 1);
    body.extend_from_slice(msg.as_bytes());
    body.push(b'\n');
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

fn header_of<'a>(req: &'a RequestHeader) -> impl Fn(&str) -> Option<&'a [u8]> {
    move |name: &str| req.headers.get(name).map(|v| v.as_bytes())
}

impl ShardProxy {
    /// Resolve route, key and shard; Err(response) when the request is
    /// answered here.
    fn route(
        &self,
        snap: &Snapshot,
        req: &RequestHeader,
        ctx: &mut RequestState,
    ) -> std::result::Result<(), (u16, String)> {
        let path = req.uri.path();
        let query = req.uri.query();
        let cfg = &snap.config;
        let Some((ri, route, (psku, pregion))) = cfg
            .routes
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.pattern.matches(path).map(|m| (i, r, m)))
        else {
            return Err((404, "no route for this path".into()));
        };
        match key::extract(
            &route.sku,
            &route.region,
            psku,
            pregion,
            query,
            header_of(req),
        ) {
            Ok(k) => {
                let region = k.region.as_deref().or(route.default_region.as_deref());
                let (shard, _how) = snap.table.route(&k.sku, region);
                ctx.pool = Pool::Shard(shard);
                if k.sku.len() <= SKU_INLINE {
                    ctx.sku[..k.sku.len()].copy_from_slice(k.sku.as_bytes());
                    ctx.sku_len = k.sku.len();
                }
                Ok(())
            }
            Err(KeyError::Missing) => match &route.on_missing_key {
                MissingKey::Reject => {
                    self.shared.counters.rejected_no_key.fetch_add(1, Relaxed);
                    Err((
                        400,
                        format!(
                            "missing sku: route `{}` takes it from {}",
                            route.name,
                            describe(&route.sku)
                        ),
                    ))
                }
                MissingKey::DefaultPool(_) => {
                    ctx.pool = Pool::Default(ri);
                    Ok(())
                }
            },
            Err(KeyError::Malformed(why)) => {
                self.shared
                    .counters
                    .rejected_bad_request
                    .fetch_add(1, Relaxed);
                Err((400, format!("malformed key: {why}")))
            }
        }
    }

    /// The replica for this attempt of the request, and its peer.
    fn choose(&self, snap: &Snapshot, ctx: &mut RequestState) -> Result<Box<HttpPeer>> {
        // A retry: the previous attempt is over.
        ctx.in_flight = None;
        if ctx.ntried > 0 {
            let retry = &snap.config.retry;
            if ctx.ntried > retry.max_retries as usize {
                return Err(status_error(502, "retries exhausted"));
            }
            if !self
                .shared
                .retry_budget
                .try_retry(retry.budget_ratio, retry.min_per_second)
            {
                self.shared.counters.retries_denied.fetch_add(1, Relaxed);
                return Err(status_error(503, "retry budget exhausted"));
            }
            self.shared.counters.retries.fetch_add(1, Relaxed);
            if let Some(n) = ctx.node {
                snap.nodes[n as usize]
                    .counters
                    .retries
                    .fetch_add(1, Relaxed);
            }
        }
        let now = if ctx.ntried == 0 {
            ctx.start_ms
        } else {
            now_ms()
        };
        let tried = &ctx.tried[..ctx.ntried];
        let (serving, draining, replicas) = self.candidates(snap, ctx.pool);
        let pick = self
            .selector
            .pick(serving, &snap.nodes, &snap.capacity, tried, now)
            .or_else(|| {
                self.selector
                    .pick(draining, &snap.nodes, &snap.capacity, tried, now)
            })
            .or_else(|| {
                // Every replica is ejected or down: rather than fail, try the
                // least-loaded one not yet tried (Envoy's panic mode).
                let all = replicas
                    .iter()
                    .filter(|r| r.state != shardmap::ReplicaState::Warming)
                    .map(|r| r.node);
                let pool: Vec<NodeIdx> = if replicas.is_empty() {
                    serving.to_vec()
                } else {
                    all.collect()
                };
                pool.into_iter()
                    .filter(|n| !tried.contains(n))
                    .min_by_key(|n| snap.nodes[*n as usize].in_flight())
            });
        let Some(node) = pick else {
            self.shared.counters.no_replica.fetch_add(1, Relaxed);
            return Err(status_error(503, "no replica available for this shard"));
        };
        if ctx.ntried < MAX_TRIED {
            ctx.tried[ctx.ntried] = node;
            ctx.ntried += 1;
        }
        ctx.node = Some(node);
        ctx.in_flight = Some(snap.nodes[node as usize].start());
        Ok(Box::new(snap.peers[node as usize].clone()))
    }

    fn candidates<'s>(
        &self,
        snap: &'s Snapshot,
        pool: Pool,
    ) -> (&'s [NodeIdx], &'s [NodeIdx], &'s [shardmap::table::Replica]) {
        match pool {
            Pool::Shard(s) => {
                let e = snap.table.shard(s);
                (&e.serving, &e.draining, &e.replicas)
            }
            Pool::Default(r) => (&snap.default_pools[r], &[], &[]),
            Pool::None => (&[], &[], &[]),
        }
    }
}

fn describe(k: &shardmap::key::KeySource) -> String {
    match k {
        shardmap::key::KeySource::Path => "the `{sku}` path segment".into(),
        shardmap::key::KeySource::Query(q) => format!("query parameter `{q}`"),
        shardmap::key::KeySource::Header(h) => format!("header `{h}`"),
    }
}

/// A failure on the client's side of the request: it hung up or reset, a
/// read or write to it failed or timed out, or it broke the protocol
/// mid-request. Only upstream failures count against nodes.
fn is_client_gone(e: &Error) -> bool {
    matches!(e.esource(), ErrorSource::Downstream)
}

fn is_idempotent(req: &RequestHeader) -> bool {
    req.method.is_idempotent()
}

#[async_trait]
impl ProxyHttp for ShardProxy {
    type CTX = Ctx;

    /// No downstream modules. Pingora's default adds a response compression
    /// module, disabled, that still builds its context and runs its
    /// filters on every request; nodes answer small JSON bodies and
    /// shardcast never compresses them.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        let start = Instant::now();
        Box::new(RequestState {
            start,
            start_ms: crate::node::ms_at(start),
            snap: None,
            pool: Pool::None,
            node: None,
            in_flight: None,
            tried: [0; MAX_TRIED],
            ntried: 0,
            cache_hit: None,
            client_aborted: false,
            sku: [0; SKU_INLINE],
            sku_len: 0,
        })
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let shared = &self.shared;
        shared.counters.requests.fetch_add(1, Relaxed);
        shared.retry_budget.on_request_at(ctx.start_ms);
        let snap = shared.snapshot.load_full();
        // Keep-alive with no timer of Pingora's: it would arm one on every
        // wait for the next request when the keep-alive it keeps is timed
        // (a client's `Keep-Alive: timeout=N`), while the connection's own
        // deadlines (`DeadlineIo`: first byte, head, body, keep-alive idle)
        // already bound every one of those waits, with one timer per
        // connection. Pingora has read the request's keep-alive from its
        // headers: untimed (`Some(0)`) for a plain HTTP/1.1 request, or off;
        // setting it again would look `Connection` up once more.
        if session.get_keepalive().is_some_and(|s| s > 0) {
            session.set_keepalive(Some(0));
        }
        let h2 = session.is_http2();
        // The raw head is read only for an HTTP/1 request that has
        // Transfer-Encoding (where Pingora drops a parsed Content-Length).
        let downstream = session.as_downstream();
        let raw_cl = || {
            downstream
                .as_http1()
                .is_some_and(|s| framing::raw_has_content_length(&s.get_headers_raw_bytes()))
        };
        if let Err(bad) = framing::check(
            downstream.req_header(),
            h2,
            snap.config.max_header_bytes,
            raw_cl,
        ) {
            shared.counters.rejected_bad_request.fetch_add(1, Relaxed);
            respond(session, bad.status, bad.reason, true).await?;
            return Ok(true);
        }
        let routed = self.route(&snap, session.req_header(), ctx);
        if let Err((code, msg)) = routed {
            respond(session, code, &msg, false).await?;
            return Ok(true);
        }
        // Read a request body whole before choosing a node: a broken or slow
        // body is answered here and never forwarded, and the buffered body
        // lets an idempotent request be retried on another replica.
        if !session.as_mut().is_body_empty() {
            session.as_mut().enable_retry_buffering();
            // The whole body within `client_body_ms`: the connection's
            // deadline covers HTTP/1; this covers each HTTP/2 stream too.
            let deadline = tokio::time::Instant::now() + snap.config.timeouts.client_body;
            let mut total = 0usize;
            loop {
                let chunk = match tokio::time::timeout_at(deadline, session.read_request_body())
                    .await
                {
                    Ok(r) => r,
                    Err(_) => {
                        shared.counters.rejected_bad_request.fetch_add(1, Relaxed);
                        let _ = respond(session, 408, "request body deadline exceeded", true).await;
                        return Ok(true);
                    }
                };
                match chunk {
                    Ok(Some(chunk)) => {
                        total += chunk.len();
                        if total > MAX_BODY_BYTES {
                            respond(session, 413, "request body too large", true).await?;
                            return Ok(true);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if is_client_gone(&e) {
                            ctx.client_aborted = true;
                            return Ok(true);
                        }
                        shared.counters.rejected_bad_request.fetch_add(1, Relaxed);
                        // The connection's body deadline fires as a timed-out read.
                        let timed_out = matches!(e.etype(), ErrorType::ReadTimedout)
                            || e.root_cause()
                                .downcast_ref::<std::io::Error>()
                                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
                        let (code, msg) = if timed_out {
                            (408, "request body deadline exceeded")
                        } else {
                            (400, "malformed request body")
                        };
                        let _ = respond(session, code, msg, true).await;
                        return Ok(true);
                    }
                }
            }
        }
        ctx.snap = Some(snap);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // Borrowed out of the context for the choice (no reference count
        // traffic on the snapshot shared by every worker), then put back.
        let Some(snap) = ctx.snap.take() else {
            return Err(status_error(500, "no routing snapshot"));
        };
        let peer = self.choose(&snap, ctx);
        ctx.snap = Some(snap);
        peer
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        let (Some(snap), Some(node)) = (ctx.snap.as_ref(), ctx.node) else {
            return Ok(());
        };
        let rt = &snap.nodes[node as usize];
        if matches!(status, 502..=504) {
            let h = &snap.config.health;
            rt.record_failure(h.eject_after_failures, h.ejection);
            if is_idempotent(session.req_header())
                && ctx.ntried <= snap.config.retry.max_retries as usize
            {
                let mut e =
                    Error::explain(ErrorType::HTTPStatus(status), "node answered 502/503/504");
                e.set_retry(true);
                return Err(e);
            }
        } else {
            rt.record_success();
        }
        // A walk over the few fields a node sends, comparing names, costs
        // less than hashing the name for a lookup.
        let x_cache = resp.headers.iter().find(|(k, _)| **k == X_CACHE);
        ctx.cache_hit = match x_cache.map(|(_, v)| v.as_bytes()) {
            Some(v) if v.eq_ignore_ascii_case(b"hit") => Some(true),
            Some(v) if v.eq_ignore_ascii_case(b"miss") => Some(false),
            _ => None,
        };
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(snap) = ctx.snap.as_ref() {
            if snap.config.response_headers {
                if let Pool::Shard(s) = ctx.pool {
                    resp.insert_header("x-shardcast-shard", snap.table.shard(s).id.as_str())?;
                }
                if let Some(n) = ctx.node {
                    resp.insert_header(
                        "x-shardcast-node",
                        snap.table.nodes[n as usize].name.as_str(),
                    )?;
                }
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(snap), Some(node)) = (ctx.snap.as_ref(), ctx.node) {
            let rt = &snap.nodes[node as usize];
            rt.counters.connect_failures.fetch_add(1, Relaxed);
            let h = &snap.config.health;
            rt.record_failure(h.eject_after_failures, h.ejection);
            // Nothing reached the node: safe to retry any method, if another
            // replica is left to try.
            e.set_retry(ctx.ntried <= snap.config.retry.max_retries as usize);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if is_client_gone(&e) {
            // The client's failure is the client's: no retry (nobody is
            // waiting for the answer) and no health mark on the node.
            ctx.client_aborted = true;
            let mut e = e;
            e.set_retry(false);
            return e;
        }
        let mut e = e.more_context(format!("node {peer}"));
        if session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else if !is_idempotent(session.req_header()) {
            // A pooled keep-alive connection the node closed while idle:
            // the request never reached it, so a new connection may carry
            // it (Pingora's own rule). Anything else is not retried.
            e.retry
                .decide_reuse(client_reused && session.response_written().is_none());
        } else {
            // A broken connection mid-request is a node failure too — but
            // not a stale pooled one (the node closed it while idle).
            if !matches!(e.etype(), ErrorType::HTTPStatus(_)) && !client_reused {
                if let (Some(snap), Some(node)) = (ctx.snap.as_ref(), ctx.node) {
                    let h = &snap.config.health;
                    snap.nodes[node as usize].record_failure(h.eject_after_failures, h.ejection);
                }
            }
            // A node that dies before answering (reset, EOF before the
            // response head) is retried on another replica like a connect
            // error: the method is idempotent and nothing reached the client.
            let max = ctx
                .snap
                .as_ref()
                .map_or(0, |s| s.config.retry.max_retries as usize);
            if session.response_written().is_none() && ctx.ntried <= max {
                e.set_retry(true);
            } else {
                e.retry.decide_reuse(client_reused);
            }
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if is_client_gone(e) {
            ctx.client_aborted = true;
        }
        let code = match e.etype() {
            ErrorType::HTTPStatus(c) => *c,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        // A response already under way (a node that stopped mid-body) is
        // cut where it stands: the connection closes, so the client sees a
        // short body, never an error page appended to it.
        let started = session
            .response_written()
            .is_some_and(|r| !r.status.is_informational() || r.status == 101);
        if code > 0 && !started {
            let msg = match code {
                502 => "bad gateway: no replica answered",
                503 => "service unavailable: no replica available",
                504 => "gateway timeout",
                400 => "bad request",
                _ => "error",
            };
            let _ = respond(session, code, msg, code == 400).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.in_flight = None;
        if ctx.client_aborted {
            self.shared.counters.client_aborted.fetch_add(1, Relaxed);
            tracing::debug!(
                error = %e.map(|e| e.to_string()).unwrap_or_default(),
                "client gone before the answer was delivered"
            );
        }
        let (Some(snap), Pool::Shard(s)) = (ctx.snap.as_ref(), ctx.pool) else {
            return;
        };
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        // A client that hung up says nothing about the shard's nodes.
        let error = !ctx.client_aborted && (e.is_some() || status >= 500 || status == 0);
        snap.stats[s as usize].record(Outcome {
            sku: ctx.sku(),
            error,
            cache_hit: ctx.cache_hit,
            bytes: session.body_bytes_sent() as u64,
            latency_us: ctx.start.elapsed().as_micros() as u64,
        });
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        // Counted in metrics; client hang-ups are routine.
        matches!(error.esource(), ErrorSource::Downstream)
    }
}
