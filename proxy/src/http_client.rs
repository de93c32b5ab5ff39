//! A small HTTP/1.1 client for the proxy's own background calls: active
//! health checks, the telemetry sink and the dashboard's reads of the
//! forecaster. Never used on the request path.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;

#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(1)));
        conn.set_nodelay(true);
        Self {
            inner: HyperClient::builder(TokioExecutor::new())
                // Below the forecaster's keep-alive (10 s): never pick a
                // connection the server is closing.
                .pool_idle_timeout(Duration::from_secs(5))
                .build(conn),
        }
    }
}

impl Client {
    /// GET `url`; Ok(status) or a message.
    pub async fn get_status(&self, url: &str, timeout: Duration) -> Result<u16, String> {
        let req = http::Request::get(url)
            .header("user-agent", "shardcast-health")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            // drain so the connection can be reused
            let _ = resp.into_body().collect().await;
            Ok(status)
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| format!("timed out after {timeout:?}"))?
    }

    /// GET `url` and read at most `limit` body bytes, all within `timeout`:
    /// Ok((status, body)) or a message.
    pub async fn get_body(
        &self,
        url: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<(u16, Bytes), String> {
        self.get_body_with_token(url, None, timeout, limit).await
    }

    /// [`Self::get_body`] with `Authorization: Bearer <token>` when given.
    pub async fn get_body_with_token(
        &self,
        url: &str,
        token: Option<&str>,
        timeout: Duration,
        limit: usize,
    ) -> Result<(u16, Bytes), String> {
        let mut req = http::Request::get(url).header("accept", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| chain(&e))?;
            let status = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| format!("reading body: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| format!("timed out after {timeout:?}"))?
    }

    /// POST a JSON body; Ok when the peer answered 2xx.
    pub async fn post_json(
        &self,
        url: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), String> {
        let req = http::Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("sink answered {status}"))
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| format!("timed out after {timeout:?}"))?
    }
}

/// An error with its sources (hyper's own message is only "client error
/// (Connect)"; the cause is what an operator needs).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}
