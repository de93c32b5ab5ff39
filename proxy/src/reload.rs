//! Config reload and table updates: parse → validate → build → swap.
//!
//! Every path returns an outcome; a rejected reload leaves the running
//! snapshot serving and says why, field by field. The expensive part (the
//! catalog, possibly millions of skus) runs on a blocking thread and is
//! reused when the catalog did not change.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde::Serialize;
use shardmap::table::TableError;
use shardmap::{Catalog, Config, RoutingTable, TableUpdate};
use tracing::{info, warn};

use crate::snapshot::{load_catalog, CatalogKey, Snapshot, Source};
use crate::state::Shared;
use crate::tls::load_certified_key;

/// What a reload did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The new config serves from `version` on.
    Applied {
        version: u64,
        /// Settings that only a restart or graceful upgrade applies.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        needs_restart: Vec<String>,
    },
    /// The config was invalid; the previous one keeps serving.
    Rejected { version: u64, errors: Vec<String> },
    /// Neither the config file nor the catalog changed: nothing to do.
    Unchanged { version: u64 },
}

/// Everything built from a config before anything is swapped in.
pub struct Prepared {
    pub config: Arc<Config>,
    pub catalog: Arc<Catalog>,
    pub source: Source,
    pub certs: Vec<rustls::sign::CertifiedKey>,
}

/// Load and check a config and everything it points at. `reuse` is the
/// running catalog, kept when the catalog source is unchanged. Blocking.
pub fn prepare(
    path: &Path,
    reuse: Option<(&CatalogKey, &Arc<Catalog>)>,
) -> Result<Prepared, Vec<String>> {
    let text =
        std::fs::read(path).map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    let config = Config::from_toml(&String::from_utf8_lossy(&text), path).map_err(|e| e.lines())?;
    let key = CatalogKey::of(&config);
    let catalog = match reuse {
        Some((k, c)) if *k == key => c.clone(),
        _ => Arc::new(load_catalog(&config).map_err(|e| vec![format!("{}: {e}", path.display())])?),
    };
    let mut certs = vec![];
    let mut errors = vec![];
    for (i, h) in config.listen.https.iter().enumerate() {
        match load_certified_key(&h.cert, &h.key) {
            Ok(k) => certs.push(k),
            Err(e) => errors.push(format!("{}: listen.https[{i}]: {e}", path.display())),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let tls_key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        for l in &config.listen.https {
            std::fs::read(&l.cert).ok().hash(&mut h);
            std::fs::read(&l.key).ok().hash(&mut h);
        }
        h.finish()
    };
    Ok(Prepared {
        source: Source {
            text: Arc::new(text),
            catalog: key,
            tls: tls_key,
        },
        config: Arc::new(config),
        catalog,
        certs,
    })
}

fn listener_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut v = vec![];
    if old.listen.http != new.listen.http {
        v.push("listen.http".into());
    }
    let addrs = |c: &Config| c.listen.https.iter().map(|h| h.addr).collect::<Vec<_>>();
    if addrs(old) != addrs(new) {
        v.push("listen.https".into());
    }
    if old.listen.admin != new.listen.admin || old.listen.admin_token != new.listen.admin_token {
        v.push("listen.admin".into());
    }
    if old.listen.threads != new.listen.threads {
        v.push("listen.threads".into());
    }
    v
}

/// Reload the config file; `trigger` names what asked (sighup, file, api).
pub async fn reload(shared: &Arc<Shared>, trigger: &str) -> ReloadOutcome {
    let _guard = shared.reload_lock.lock().await;
    let cur = shared.current();
    let sh = shared.clone();
    let cur2 = cur.clone();
    let built = tokio::task::spawn_blocking(
        move || -> Result<Option<(Prepared, Snapshot)>, Vec<String>> {
            let p = prepare(
                &sh.config_path,
                Some((&cur2.source.catalog, &cur2.table.catalog)),
            )?;
            if p.source == cur2.source {
                return Ok(None);
            }
            let table = cur2
                .table
                .rebase(&p.config, p.catalog.clone(), cur2.table.version + 1);
            let snap = Snapshot::build(
                p.config.clone(),
                p.source.clone(),
                table,
                &sh.nodes,
                &sh.stats,
            )
            .map_err(|e| vec![format!("{}: {e}", sh.config_path.display())])?;
            Ok(Some((p, snap)))
        },
    )
    .await
    .unwrap_or_else(|e| Err(vec![format!("reload task failed: {e}")]));
    match built {
        Err(errors) => {
            shared.counters.reloads_failed.fetch_add(1, Relaxed);
            for e in &errors {
                warn!(trigger, error = %e, "config reload rejected; previous config keeps serving");
            }
            ReloadOutcome::Rejected {
                version: cur.table.version,
                errors,
            }
        }
        Ok(None) => ReloadOutcome::Unchanged {
            version: cur.table.version,
        },
        Ok(Some((p, snap))) => {
            let needs_restart = listener_changes(&cur.config, &p.config);
            // Certificates for listeners that exist now; new listeners need
            // a graceful upgrade anyway.
            for (r, k) in shared.certs.iter().zip(p.certs) {
                r.set(k);
            }
            let version = snap.table.version;
            let names: Vec<&str> = snap.table.nodes.iter().map(|n| n.name.as_str()).collect();
            shared.nodes.retain(&names);
            shared.snapshot.store(Arc::new(snap));
            shared.counters.reloads_ok.fetch_add(1, Relaxed);
            shared.record_version(version, &format!("reload:{trigger}"));
            for n in &needs_restart {
                warn!(setting = %n, "changed in config; applies after a restart or graceful upgrade");
            }
            info!(trigger, version, "config reloaded");
            ReloadOutcome::Applied {
                version,
                needs_restart,
            }
        }
    }
}

/// Why a table update was not applied.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("cannot build the updated table: {0}")]
    Build(String),
}

/// Apply a versioned table update from the shard manager.
pub async fn apply_update(shared: &Arc<Shared>, update: TableUpdate) -> Result<u64, UpdateError> {
    let _guard = shared.reload_lock.lock().await;
    let cur = shared.current();
    let table = match cur.table.apply(&cur.config, &update) {
        Ok(t) => t,
        Err(e) => {
            shared.counters.updates_rejected.fetch_add(1, Relaxed);
            return Err(e.into());
        }
    };
    let version = table.version;
    // Same nodes as the running snapshot: address resolution cannot fail
    // differently, but keep the error path total.
    let snap = Snapshot::build(
        cur.config.clone(),
        cur.source.clone(),
        table,
        &shared.nodes,
        &shared.stats,
    )
    .map_err(UpdateError::Build)?;
    shared.snapshot.store(Arc::new(snap));
    shared.counters.updates_ok.fetch_add(1, Relaxed);
    shared.record_version(version, "update");
    info!(
        version,
        shards = update.shards.len(),
        "table update applied"
    );
    Ok(version)
}

/// Build the first snapshot at start-up.
pub fn initial(
    prepared: &Prepared,
    nodes: &crate::node::NodeRegistry,
    stats: &crate::telemetry::StatsRegistry,
) -> Result<Snapshot, Vec<String>> {
    let table = RoutingTable::build(&prepared.config, prepared.catalog.clone(), 1);
    Snapshot::build(
        prepared.config.clone(),
        prepared.source.clone(),
        table,
        nodes,
        stats,
    )
    .map_err(|e| vec![e])
}
