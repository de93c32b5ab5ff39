//! The lease loop: until shutdown, every third of the lease, renew it when
//! leading, else try to take it (DESIGN.md, "Managers"); release it at the
//! end. The rounds only read the lease ([`super::lease::Lease::may_write`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::warn;

use super::{metadata, Conn, Manager};

impl Manager {
    /// Until shutdown, every third of the lease: renew it when leading,
    /// else try to take it (DESIGN.md, "Managers"); release it at the end.
    /// Without a metadata store there is nothing to hold.
    pub(super) async fn hold_lease(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.metadata_url().is_none() {
            return;
        }
        let mut conn: Option<Conn> = None;
        let mut last_error: Option<String> = None;
        loop {
            let keys = self.topology().keys.clone();
            if conn.is_none() {
                if let Some(url) = self.metadata_url() {
                    match metadata::connect(&url).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            self.lease.renew_failures.fetch_add(1, Relaxed);
                            // The lease ends by itself; may_write sees to it.
                            self.lease.tick_unreachable();
                            if last_error.as_deref() != Some(e.as_str()) {
                                warn!(error = %e, "metadata store unreachable; the lease cannot be renewed");
                            }
                            last_error = Some(e);
                        }
                    }
                }
            }
            if let Some(c) = conn.as_mut() {
                let was = self.lease.view().leader;
                let fut = self.lease.tick(c, &keys);
                match tokio::time::timeout(self.lease.period(), fut).await {
                    Ok(Ok(())) => last_error = None,
                    Ok(Err(e)) => {
                        self.lease.tick_unreachable();
                        if last_error.as_deref() != Some(e.as_str()) {
                            warn!(error = %e, "lease");
                        }
                        last_error = Some(e);
                        conn = None;
                    }
                    Err(_) => {
                        self.lease.renew_failures.fetch_add(1, Relaxed);
                        self.lease.tick_unreachable();
                        conn = None;
                    }
                }
                if !was && self.lease.view().leader {
                    self.wake();
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.lease.period()) => {}
                _ = shutdown.changed() => {
                    if let Some(c) = conn.as_mut() {
                        let _ = self.lease.release(c, &keys).await;
                    }
                    return;
                }
            }
        }
    }
}
