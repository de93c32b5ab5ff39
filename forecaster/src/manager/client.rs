//! A small HTTP/1.1 client for the manager's calls to the sync scheduler,
//! the nodes' health checks and the proxies' admin APIs. JSON in, JSON out;
//! every call is bounded by a timeout and a response-size limit. A client
//! built [`Client::with_bearer`] sends its token with every call under one
//! base URL (the sync scheduler's `[manager] sync_token`), so the call
//! sites need not carry it.

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
    /// `(base URL, token)`: calls under the base carry the token.
    bearer: Option<(String, String)>,
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
            bearer: None,
        }
    }
}

/// A call that did not get a response (connect error, timeout, bad URL).
pub type CallError = String;

impl Client {
    /// Send `Authorization: Bearer <token>` with every call to a URL under
    /// `base` (`base` itself, or `base` followed by `/` or `?`) that does
    /// not bring its own token. No token: unchanged.
    pub fn with_bearer(mut self, base: &str, token: Option<String>) -> Client {
        self.bearer = token
            .filter(|t| !t.is_empty())
            .map(|t| (base.trim_end_matches('/').to_string(), t));
        self
    }

    fn bearer_for(&self, url: &str) -> Option<&str> {
        let (base, token) = self.bearer.as_ref()?;
        let rest = url.strip_prefix(base.as_str())?;
        (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
            .then_some(token.as_str())
    }

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
        if let Some(t) = token.or_else(|| self.bearer_for(url)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_only_to_urls_under_its_base() {
        let c = Client::default().with_bearer("http://127.0.0.1:9910/", Some("t".into()));
        assert_eq!(c.bearer_for("http://127.0.0.1:9910/orders/3"), Some("t"));
        assert_eq!(c.bearer_for("http://127.0.0.1:9910?x"), Some("t"));
        assert_eq!(c.bearer_for("http://127.0.0.1:9910"), Some("t"));
        assert_eq!(c.bearer_for("http://127.0.0.1:99101/orders"), None);
        assert_eq!(c.bearer_for("http://127.0.0.1:9101/health"), None);
        let none = Client::default().with_bearer("http://127.0.0.1:9910", Some(String::new()));
        assert_eq!(none.bearer_for("http://127.0.0.1:9910/orders"), None);
    }

    /// The header reaches the server (a real socket).
    #[tokio::test]
    async fn calls_under_the_base_carry_the_bearer_header() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let server = tokio::spawn(async move {
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
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                .await
                .unwrap();
            String::from_utf8_lossy(&got).to_ascii_lowercase()
        });
        let c = Client::default().with_bearer(&base, Some("sync-s3cret".into()));
        let (status, _) = c
            .call(
                Method::GET,
                &format!("{base}/nodes"),
                None,
                None,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        let head = server.await.unwrap();
        assert!(
            head.contains("authorization: bearer sync-s3cret\r\n"),
            "{head}"
        );
    }
}
