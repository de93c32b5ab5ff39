//! Active health checks: every interval, `GET <health.path>` on every node
//! of the current table. A node that answers 2xx is (back) in rotation once
//! any passive ejection has run out; one that fails is taken out. What
//! these checks find is the one source of node health: [`publish`] hands it
//! to the shard manager.

pub mod publish;

use std::sync::Arc;

use futures::future::join_all;
use tracing::{info, warn};

use crate::http_client::Client;
use crate::state::Shared;

/// Run checks until `shutdown` turns true.
pub async fn run(shared: Arc<Shared>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let client = Client::default();
    loop {
        let snap = shared.current();
        let h = snap.config.health.clone();
        let checks = snap.table.nodes.iter().zip(&snap.nodes).map(|(spec, rt)| {
            let url = format!("http://{}{}", spec.address, h.path);
            let client = client.clone();
            let rt = rt.clone();
            async move {
                let res = client.get_status(&url, h.timeout).await;
                let ok = matches!(res, Ok(s) if (200..300).contains(&s));
                let was = rt.usable(crate::node::now_ms());
                rt.set_check_result(ok);
                let is = rt.usable(crate::node::now_ms());
                if was && !ok {
                    warn!(node = %rt.name, result = ?res, "health check failed; node out of rotation");
                } else if !was && is {
                    info!(node = %rt.name, "health check passed; node back in rotation");
                }
            }
        });
        join_all(checks).await;
        tokio::select! {
            _ = tokio::time::sleep(h.interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
