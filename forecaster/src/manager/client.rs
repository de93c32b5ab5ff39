//! A small HTTP/1.1 client for the manager's calls to the sync scheduler,
//! the nodes' health checks and the proxies' admin APIs. JSON in, JSON out;
//! every call is bounded by a timeout and a response-size limit.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;

const MAX_RESPONSE: usize = 16 << 20;

#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_millis(500)));
        conn.set_nodelay(true);
        Client {
            inner: HyperClient::builder(TokioExecutor::new())
                // Below the servers' keep-alive deadline (10 s by default on
                // every shardcast listener), so an idle connection is dropped
                // here before the server closes it under a request.
                .pool_idle_timeout(Duration::from_secs(5))
                .build(conn),
        }
    }
}

/// A call that did not get a response (connect error, timeout, bad URL).
pub type CallError = String;

impl Client {
    /// Send one request; the status and the body, or why there is none.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), CallError> {
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(url)
            .header("user-agent", "shardcast-manager");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let fut = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| format!("{method} {url}: {e}"))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| format!("{method} {url}: reading the body: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| format!("{method} {url}: no answer within {timeout:?}"))?
    }

    /// GET and decode a 2xx JSON answer.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let (status, body) = self.call(Method::GET, url, None, None, timeout).await?;
        if !(200..300).contains(&status) {
            return Err(format!(
                "GET {url}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: {e}"))
    }
}
