//! The one HTTP/1.1 client of the control plane: the proxy's background
//! calls (health checks, the telemetry sink, the dashboard's reads of the
//! forecaster), the shard manager's calls to sync, the nodes and the
//! proxies, and sync's order events to the managers. Never used on the
//! proxy's request path.
//!
//! Every call has a deadline for the whole exchange and a bound on the
//! answer's size; idle connections are kept below the servers' keep-alive
//! deadline. A call that fails says how, as a [`CallError`] a caller can
//! branch on (no answer, or which status), and its message names the
//! method, the URL and the cause (hyper's own is only "client error
//! (Connect)").

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest answer read unless a call says otherwise.
pub const DEFAULT_MAX_BODY: usize = 16 << 20;

/// Why a call did not bring the answer asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The request could not be built (a bad URL).
    #[error("{method} {url}: {reason}")]
    Invalid {
        method: Method,
        url: String,
        reason: String,
    },
    /// No answer: connection refused or reset, DNS, TLS.
    #[error("{method} {url}: {reason}")]
    Transport {
        method: Method,
        url: String,
        reason: String,
    },
    /// No (whole) answer within the call's deadline.
    #[error("{method} {url}: no answer within {timeout:?}")]
    Timeout {
        method: Method,
        url: String,
        timeout: Duration,
    },
    /// The answer's body broke off or was larger than the bound.
    #[error("{method} {url}: reading the body: {reason}")]
    Body {
        method: Method,
        url: String,
        reason: String,
    },
    /// An answer, but not a success: the status and the server's message
    /// (the `error` of a shardcast error body, or the body's text).
    #[error("{method} {url}: {status} {message}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        message: String,
    },
    /// A success whose body is not the JSON expected.
    #[error("{method} {url}: not the expected answer: {reason}")]
    Decode {
        method: Method,
        url: String,
        reason: String,
    },
}

impl CallError {
    /// The status of an answer that was not a success.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The peer answered 404: what was asked for does not exist there.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// No answer at all (worth trying again later).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            CallError::Transport { .. } | CallError::Timeout { .. } | CallError::Body { .. }
        )
    }

    /// Worth retrying: no answer, or a 5xx / 429.
    pub fn is_retryable(&self) -> bool {
        self.is_unreachable()
            || self
                .status()
                .is_some_and(|s| s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS)
    }
}

/// How a [`Client`] connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Below the servers' keep-alive deadline (10 s by default on every
    /// shardcast listener), so an idle connection is dropped here before
    /// the server closes it under a request.
    pub pool_idle_timeout: Duration,
    pub user_agent: &'static str,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(5),
            user_agent: "shardcast",
        }
    }
}

/// A keep-alive HTTP/1.1 client; cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
    user_agent: &'static str,
}

impl Default for Client {
    fn default() -> Self {
        Client::new(ClientOptions::default())
    }
}

/// One call: what [`Client::send`] sends.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub method: Method,
    pub url: &'a str,
    /// Sent as `application/json`.
    pub json: Option<Bytes>,
    /// `Authorization: Bearer <token>`.
    pub token: Option<&'a str>,
    pub timeout: Duration,
    pub max_body: usize,
}

impl<'a> Call<'a> {
    pub fn new(method: Method, url: &'a str, timeout: Duration) -> Call<'a> {
        Call {
            method,
            url,
            json: None,
            token: None,
            timeout,
            max_body: DEFAULT_MAX_BODY,
        }
    }

    pub fn get(url: &'a str, timeout: Duration) -> Call<'a> {
        Call::new(Method::GET, url, timeout)
    }

    pub fn json(mut self, body: impl Into<Bytes>) -> Self {
        self.json = Some(body.into());
        self
    }

    pub fn token(mut self, token: Option<&'a str>) -> Self {
        self.token = token;
        self
    }

    pub fn max_body(mut self, n: usize) -> Self {
        self.max_body = n;
        self
    }
}

/// An error with its sources, joined by `: `.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: String,
}

/// The message of a refusal: a shardcast error body's `error`, or the
/// body's text (cut short).
fn message_of(body: &[u8]) -> String {
    if let Ok(b) = serde_json::from_slice::<ErrorBody>(body) {
        return b.error;
    }
    let text = String::from_utf8_lossy(body);
    let mut end = text.len().min(512);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim().to_string()
}

impl Client {
    pub fn new(o: ClientOptions) -> Client {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(o.connect_timeout));
        conn.set_nodelay(true);
        Client {
            inner: HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(o.pool_idle_timeout)
                .build(conn),
            user_agent: o.user_agent,
        }
    }

    /// Send one request: the status and the whole body (at most
    /// `max_body` bytes), all within `timeout`; any status is an answer.
    pub async fn send(&self, c: Call<'_>) -> Result<(StatusCode, Bytes), CallError> {
        let (method, url) = (c.method.clone(), c.url);
        let fail = |kind: fn(Method, String, String) -> CallError, reason: String| {
            kind(method.clone(), url.to_string(), reason)
        };
        let mut req = http::Request::builder()
            .method(c.method.clone())
            .uri(url)
            .header(http::header::USER_AGENT, self.user_agent)
            .header(http::header::ACCEPT, "application/json");
        if c.json.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = c.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(c.json.unwrap_or_default()))
            .map_err(|e| fail(invalid, e.to_string()))?;
        let exchange = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| fail(transport, chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), c.max_body)
                .collect()
                .await
                .map_err(|e| fail(body_error, e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(c.timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout {
                method: method.clone(),
                url: url.to_string(),
                timeout: c.timeout,
            })?
    }

    /// [`Self::send`], with a status other than 2xx as a
    /// [`CallError::Status`].
    pub async fn send_ok(&self, c: Call<'_>) -> Result<Bytes, CallError> {
        let (method, url) = (c.method.clone(), c.url.to_string());
        let (status, body) = self.send(c).await?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(CallError::Status {
                method,
                url,
                status,
                message: message_of(&body),
            })
        }
    }

    /// [`Self::send_ok`] and decode the JSON answer as `T`.
    pub async fn send_json<T: DeserializeOwned>(&self, c: Call<'_>) -> Result<T, CallError> {
        let (method, url) = (c.method.clone(), c.url.to_string());
        let body = self.send_ok(c).await?;
        serde_json::from_slice(&body).map_err(|e| CallError::Decode {
            method,
            url,
            reason: e.to_string(),
        })
    }

    /// GET `url` and decode a 2xx JSON answer.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        url: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<T, CallError> {
        self.send_json(Call::get(url, timeout).token(token)).await
    }

    /// `method` `url` with `body` as JSON, and decode a 2xx JSON answer.
    pub async fn call_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        body: &B,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let json = serde_json::to_vec(body).map_err(|e| CallError::Invalid {
            method: method.clone(),
            url: url.to_string(),
            reason: format!("encoding the body: {e}"),
        })?;
        self.send_json(Call::new(method, url, timeout).json(json).token(token))
            .await
    }
}

fn invalid(method: Method, url: String, reason: String) -> CallError {
    CallError::Invalid {
        method,
        url,
        reason,
    }
}

fn transport(method: Method, url: String, reason: String) -> CallError {
    CallError::Transport {
        method,
        url,
        reason,
    }
}

fn body_error(method: Method, url: String, reason: String) -> CallError {
    CallError::Body {
        method,
        url,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on port 0 that reads one request head and answers `resp`
    /// verbatim; returns the base URL and the head it read.
    async fn one_shot(resp: &'static [u8]) -> (String, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(resp).await.unwrap();
            String::from_utf8_lossy(&got).to_ascii_lowercase()
        });
        (base, h)
    }

    #[tokio::test]
    async fn a_refusal_is_a_status_error_with_the_servers_message() {
        let (base, head) = one_shot(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 24\r\nconnection: close\r\n\r\n{\"error\":\"no order 42\"}\n",
        )
        .await;
        let url = format!("{base}/orders/42");
        let e = Client::default()
            .get_json::<serde_json::Value>(&url, Some("t0k"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            format!("GET {url}: 404 Not Found no order 42")
        );
        let head = head.await.unwrap();
        assert!(head.contains("authorization: bearer t0k\r\n"), "{head}");
    }

    #[tokio::test]
    async fn no_answer_is_unreachable_or_a_timeout() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let url = format!("http://{closed}/x");
        let e = Client::default()
            .send(Call::get(&url, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(matches!(e, CallError::Transport { .. }), "{e:?}");
        assert!(e.is_retryable());
        assert!(e.to_string().contains("refused"), "{e}");

        // Accepts and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", l.local_addr().unwrap());
        let _keep = tokio::spawn(async move {
            let (_s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let e = Client::default()
            .send(Call::get(&url, Duration::from_millis(100)))
            .await
            .unwrap_err();
        assert!(matches!(e, CallError::Timeout { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn a_success_that_is_not_the_expected_json_is_a_decode_error() {
        let (base, _head) = one_shot(
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\n{\"id\":\"x\"",
        )
        .await;
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Order {
            id: u64,
        }
        let e = Client::default()
            .get_json::<Order>(&format!("{base}/o"), None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, CallError::Decode { .. }), "{e:?}");
    }
}
