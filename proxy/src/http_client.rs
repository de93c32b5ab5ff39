//! The proxy's client for its own background calls: active health checks,
//! the telemetry sink, the dashboard's reads of the forecaster and
//! `--check`'s question to a running instance. Never used on the request
//! path. It is the workspace's one client ([`shardcast_edge::client`]) with
//! string errors for callers that only log them.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use shardcast_edge::client::{self as edge, Call, ClientOptions};

#[derive(Clone)]
pub struct Client {
    inner: edge::Client,
}

impl Default for Client {
    fn default() -> Self {
        Self {
            inner: edge::Client::new(ClientOptions {
                user_agent: "shardcast-proxy",
                ..ClientOptions::default()
            }),
        }
    }
}

impl Client {
    /// The shared client, for typed calls.
    pub fn edge(&self) -> &edge::Client {
        &self.inner
    }

    /// GET `url`; Ok(status) or a message.
    pub async fn get_status(&self, url: &str, timeout: Duration) -> Result<u16, String> {
        // The body is read (and dropped) so the connection can be reused.
        self.inner
            .send(Call::get(url, timeout).max_body(1 << 20))
            .await
            .map(|(s, _)| s.as_u16())
            .map_err(|e| e.to_string())
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
        self.inner
            .send(Call::get(url, timeout).token(token).max_body(limit))
            .await
            .map(|(s, b)| (s.as_u16(), b))
            .map_err(|e| e.to_string())
    }

    /// POST a JSON body; Ok when the peer answered 2xx.
    pub async fn post_json(
        &self,
        url: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), String> {
        self.inner
            .send_ok(
                Call::new(Method::POST, url, timeout)
                    .json(body)
                    .max_body(64 * 1024),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
