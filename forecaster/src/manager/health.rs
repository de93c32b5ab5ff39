//! Node health as the manager sees it: every round, one `GET` of each
//! node's health path, all nodes at once. The answers go to the state
//! machine ([`super::state::Event::NodeProbed`]), which counts failures in
//! a row against `fail_after`.
//!
//! This is a second health checker beside the proxies' own (which eject a
//! failing node from their selection on their own schedule): the manager
//! needs a node's health to *plan* (restore the replication factor
//! elsewhere), and the proxies do not publish theirs yet.

use std::time::Duration;

use http::Method;

use super::client::Client;
use shardmap::config::NodeSpec;

/// Probes each node's health path.
#[derive(Clone)]
pub struct Prober {
    http: Client,
    path: String,
    timeout: Duration,
}

impl Prober {
    pub fn new(path: &str, timeout: Duration) -> Prober {
        Prober {
            http: Client::default(),
            path: path.to_string(),
            timeout,
        }
    }

    /// One probe of every node: a 2xx is healthy, anything else says why not.
    pub async fn probe(&self, nodes: &[NodeSpec]) -> Vec<(String, Result<(), String>)> {
        let probes = nodes.iter().map(|n| {
            let url = format!("http://{}{}", n.address, self.path);
            let http = self.http.clone();
            let t = self.timeout;
            async move {
                let r = http.call(Method::GET, &url, None, None, t).await;
                let ok = match r {
                    Ok((s, _)) if (200..300).contains(&s) => Ok(()),
                    Ok((s, _)) => Err(format!("health check answered {s}")),
                    Err(e) => Err(e),
                };
                (n.name.clone(), ok)
            }
        });
        join_all(probes).await
    }
}

/// Poll a few futures concurrently to completion, results in order.
async fn join_all<F: std::future::Future>(fs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}
