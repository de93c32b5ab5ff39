//! Config reload and table updates: parse → validate → build → swap.
//!
//! Every path returns an outcome; a rejected reload leaves the running
//! snapshot serving and says why, field by field. The expensive part (the
//! catalog, possibly millions of skus) runs on a blocking thread and is
//! reused when the catalog did not change.
//!
//! A reload never reports plain success for a setting it did not apply:
//! what only a restart applies (see [`crate::restart`]) is compared with
//! what the process started with, and named in
//! [`ReloadOutcome::NeedsRestart`] for as long as the file and the process
//! disagree — also when the file has not changed since the last reload.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde::Serialize;
use shardmap::table::TableError;
use shardmap::{Catalog, Config, RoutingTable, TableUpdate, UpdateAnswer};
use tracing::{info, warn};

use crate::restart::{needs_restart, PendingChange, RestartOnly};
use crate::snapshot::{load_catalog, CatalogKey, Snapshot, Source};
use crate::state::Shared;
use crate::tls::load_certified_key;

/// What a reload did. JSON with an `outcome` tag; `POST /admin/reload`
/// answers 200 for `applied` and `unchanged`, 202 for `needs_restart`, 422
/// for `rejected`. `config_generation` is the running one after the
/// reload; a reload never moves the assignment version.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The whole file serves from `config_generation` on.
    Applied { config_generation: u64 },
    /// Everything in the file that can apply live serves from
    /// `config_generation` on (applied now, or by an earlier reload of the
    /// same file); the settings in `needs_restart` keep their running
    /// values until a restart or a graceful upgrade. Said again by every
    /// reload until the file and the process agree.
    NeedsRestart {
        config_generation: u64,
        needs_restart: Vec<PendingChange>,
    },
    /// The config was invalid; the previous one keeps serving.
    Rejected {
        config_generation: u64,
        errors: Vec<String>,
    },
    /// The file is what is running, and nothing in it waits for a restart.
    Unchanged { config_generation: u64 },
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
    prepare_reusing(path, reuse, None)
}

/// [`prepare`], also reusing what `running` (the serving config) already
/// expanded and checked of the topology where its inputs did not change.
/// The same result and errors as [`prepare`].
pub fn prepare_reusing(
    path: &Path,
    reuse: Option<(&CatalogKey, &Arc<Catalog>)>,
    running: Option<&Config>,
) -> Result<Prepared, Vec<String>> {
    let text =
        std::fs::read(path).map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    let config = Config::from_toml_reusing(&String::from_utf8_lossy(&text), path, running)
        .map_err(|e| e.lines())?;
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
            topology: config
                .topology
                .as_ref()
                .and_then(|p| std::fs::read(p).ok())
                .map(Arc::new),
        },
        config: Arc::new(config),
        catalog,
        certs,
    })
}

/// The restart-only settings of `file` the process does not run, logged
/// at warn level one by one.
fn pending(shared: &Shared, file: &Config, trigger: &str) -> Vec<PendingChange> {
    let p = needs_restart(&shared.edge.started, &RestartOnly::of(file));
    for c in &p {
        warn!(
            trigger,
            setting = %c.field,
            running = %c.running,
            file = %c.file,
            "config reload: this setting applies only after a restart or graceful upgrade; the running value stays"
        );
    }
    p
}

/// Reload the config file; `trigger` names what asked (sighup, file, api).
pub async fn reload(shared: &Arc<Shared>, trigger: &str) -> ReloadOutcome {
    let _guard = shared.reload_lock.lock().await;
    let cur = shared.current();
    let sh = shared.clone();
    let cur2 = cur.clone();
    let built = tokio::task::spawn_blocking(
        move || -> Result<Option<(Prepared, Snapshot)>, Vec<String>> {
            let p = prepare_reusing(
                &sh.config_path,
                Some((&cur2.source.catalog, &cur2.table.catalog)),
                Some(&cur2.config),
            )?;
            if p.source == cur2.source {
                return Ok(None);
            }
            // The next config generation; the manager's assignment (and its
            // version) stays wherever it still applies.
            let table = cur2.table.rebase(&p.config, p.catalog.clone());
            let snap = Snapshot::rebuild(
                Some(&cur2),
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
                config_generation: cur.table.config_generation,
                errors,
            }
        }
        Ok(None) => {
            // The file is the running snapshot's: still say what it holds
            // that the process does not run.
            let config_generation = cur.table.config_generation;
            let needs_restart = pending(shared, &cur.config, trigger);
            if needs_restart.is_empty() {
                ReloadOutcome::Unchanged { config_generation }
            } else {
                ReloadOutcome::NeedsRestart {
                    config_generation,
                    needs_restart,
                }
            }
        }
        Ok(Some((p, snap))) => {
            // Certificates for listeners that exist now; new listeners need
            // a graceful upgrade anyway.
            for (r, k) in shared.certs.iter().zip(p.certs) {
                r.set(k);
            }
            let config_generation = snap.table.config_generation;
            let assignment_version = snap.table.assignment_version;
            let names: Vec<&str> = snap.table.nodes.iter().map(|n| n.name.as_str()).collect();
            shared.nodes.retain(&names);
            // The admin token is read from the snapshot per request, and the
            // traffic listeners read their deadlines per connection: storing
            // the snapshot applies both. Connection bounds are atomics.
            shared.snapshot.store(Arc::new(snap));
            shared.edge.set_limits(&p.config);
            shared.counters.reloads_ok.fetch_add(1, Relaxed);
            // Under the reload lock: the snapshot is the one just stored.
            shared.record_version(&shared.current().table, &format!("reload:{trigger}"));
            info!(
                trigger,
                config_generation,
                %assignment_version,
                "config reloaded"
            );
            let needs_restart = pending(shared, &p.config, trigger);
            if needs_restart.is_empty() {
                ReloadOutcome::Applied { config_generation }
            } else {
                ReloadOutcome::NeedsRestart {
                    config_generation,
                    needs_restart,
                }
            }
        }
    }
}

/// Why a table update was not applied.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Table(#[from] TableError),
}

/// Apply a versioned table update from the shard manager: compare-and-set
/// on the assignment version alone (the config generation does not take
/// part); a delta only onto the version it was computed from. The
/// versions now serving, or why not.
///
/// The new table shares every shard entry the update leaves alone, and the
/// snapshot everything resolved from the config, so the cost follows the
/// number of shards that changed.
pub async fn apply_update(
    shared: &Arc<Shared>,
    update: TableUpdate,
) -> Result<UpdateAnswer, UpdateError> {
    let _guard = shared.reload_lock.lock().await;
    let started = std::time::Instant::now();
    let cur = shared.current();
    let table = match cur.table.apply(&update) {
        Ok(t) => t,
        Err(e) => {
            shared.counters.updates_rejected.fetch_add(1, Relaxed);
            return Err(e.into());
        }
    };
    let answer = UpdateAnswer {
        error: None,
        assignment_version: table.assignment_version,
        config_generation: table.config_generation,
    };
    shared.snapshot.store(Arc::new(cur.with_table(table)));
    let took = started.elapsed();
    shared.counters.updates_ok.fetch_add(1, Relaxed);
    shared.counters.update_apply.observe(took);
    shared.record_version(&shared.current().table, "update");
    info!(
        assignment_version = %answer.assignment_version,
        config_generation = answer.config_generation,
        delta = update.base.is_some(),
        shards = update.shards.len(),
        removed = update.removed.len(),
        apply_us = took.as_micros() as u64,
        "table update applied"
    );
    Ok(answer)
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
