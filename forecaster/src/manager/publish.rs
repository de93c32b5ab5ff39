//! The table publisher: the assignment to the metadata store
//! (`<prefix>:table`, by the fencing script in [`super::metadata`]) and to
//! each listed proxy (`PUT /admin/table`), with the shard and node records.
//!
//! A target that refuses the table as not newer (a proxy's 409, a newer
//! table in the store) has not received it. When the target already holds
//! exactly this version, it has; when it holds a newer version of this
//! manager's epoch, the counter moves past it and the same assignment goes
//! out again to every target at once; a higher epoch fences this manager.
//! What a pass learnt comes back as state machine events.
//!
//! A pass with a new version sends each proxy the delta from the last table
//! pushed (the shards whose replicas changed, and those removed), not the
//! whole table; a proxy known to be behind, or one that refuses the delta
//! because it holds another version (a 409 with a version older than
//! ours), gets the full table. The store gets the delta, and the full
//! table only now and then (see [`super::metadata`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use parking_lot::Mutex;
use shardmap::contract::MetadataKeys;
use shardmap::control::ReplicaAssignment;
use shardmap::{AssignmentVersion, TableUpdate, UpdateAnswer};
use tracing::warn;

use super::client::Client;
use super::lease::Lease;
use super::metadata::{self, NodeRecord, ShardRecord};
use super::state::Event;
use super::versions::{on_refusal, Refusal, Refusals};

/// How long a proxy has to answer a push of `bytes`: a delta (a few
/// hundred bytes, applied in well under a millisecond) gets 2 s; a full
/// table (~1 MB at 10k shards, the first push of every term and the cure
/// for a proxy that is behind) is read, parsed and built whole, so the
/// bound grows with the body: 2 s plus 10 s per MB, at most 30 s. A push
/// cut short is sent again next round, whole, and would be cut short again.
fn push_timeout(bytes: usize) -> Duration {
    let extra = Duration::from_millis((bytes as u64).saturating_mul(10) / 1000);
    (Duration::from_secs(2) + extra).min(Duration::from_secs(30))
}

/// The records written beside the table.
pub type Records = (Vec<ShardRecord>, Vec<NodeRecord>, Vec<u8>);

/// The table at a version, made when a target needs it whole, and the
/// replicas' change sequence number it was made at.
pub type TableOf<'a> = &'a (dyn Fn() -> (TableUpdate, u64) + Sync);
/// The delta from a full table (made at the given sequence number) to the
/// table of the pass, and the sequence number it was made at.
pub type DeltaFrom<'a> = &'a (dyn Fn(&TableUpdate, u64) -> (TableUpdate, u64) + Sync);

/// What one pass is to publish.
pub struct Pass<'a> {
    pub version: AssignmentVersion,
    /// The full table at `version`: made only when some target needs it
    /// (a proxy behind, the store's snapshot, the first push of a term),
    /// not every pass (ten thousand shards' replicas).
    pub table: TableOf<'a>,
    /// The delta from the last table pushed to the table at `version`.
    pub delta_from: DeltaFrom<'a>,
    /// Proxies without the current version (the only ones pushed to when
    /// nothing changed).
    pub behind: Vec<String>,
    pub changed: bool,
    pub keys: &'a MetadataKeys,
    pub metadata_url: Option<String>,
    /// The last metadata store error (a repeated one is not logged again).
    pub metadata_error: Option<String>,
}

/// What a pass learnt, and whether the table must go out again (a refusal
/// moved the version).
#[derive(Debug, Default)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub again: bool,
    /// Time spent on the metadata store (the rest of the pass is the
    /// proxies').
    pub store: Duration,
    /// Time spent making the delta and the full table, serialised (in the
    /// store's part or the proxies').
    pub table: Duration,
}

/// The delta that turns the full table `prev` into the table of
/// `shards` at `version`: as [`TableUpdate::delta_from`], without a copy
/// of the whole table to compare (only the shards that changed are
/// copied). One ordered walk over both.
pub fn delta(
    version: AssignmentVersion,
    prev: &TableUpdate,
    shards: &BTreeMap<String, Vec<ReplicaAssignment>>,
) -> TableUpdate {
    let mut changed = BTreeMap::new();
    let mut removed = vec![];
    let mut old = prev.shards.iter().peekable();
    for (id, reps) in shards {
        while let Some((o, _)) = old.next_if(|(o, _)| *o < id) {
            removed.push(o.clone());
        }
        match old.next_if(|(o, _)| *o == id) {
            Some((_, r)) if r == reps => {}
            _ => {
                changed.insert(id.clone(), reps.clone());
            }
        }
    }
    removed.extend(old.map(|(o, _)| o.clone()));
    TableUpdate {
        version,
        base: Some(prev.version),
        shards: changed,
        removed,
    }
}

/// Bring the full table `last` to the delta's version in place (the
/// delta's base must be `last`'s version): as [`TableUpdate::then`],
/// costing the delta, not the table.
fn advance(last: &mut TableUpdate, d: &TableUpdate) -> bool {
    if d.base != Some(last.version) {
        return false;
    }
    for id in &d.removed {
        last.shards.remove(id);
    }
    for (id, reps) in &d.shards {
        last.shards.insert(id.clone(), reps.clone());
    }
    last.version = d.version;
    true
}

/// What the store's part of a pass works with, beside the pass.
struct StoreCtx<'a> {
    url: &'a str,
    /// The delta from the version before, when there is one.
    delta: Option<metadata::Delta<'a>>,
    lease: &'a Lease,
    refusals: &'a Refusals,
}

/// Publishes to the metadata store and the proxies.
pub struct Publisher {
    http: Client,
    proxies: Vec<String>,
    token: Option<String>,
    /// The last table that went out with a new version: the base of the
    /// next delta, and the replicas' change sequence number it matches.
    last: Mutex<Option<(TableUpdate, u64)>>,
    /// What this manager last wrote of each shard and node record: a pass
    /// writes only those that changed.
    written: Mutex<metadata::Written>,
    /// Operator commands taken so far (each changes the settings the
    /// store holds), and how many of them the store is known to hold: an
    /// operator's command is answered once it is stored, so one taken just
    /// before the lease ran out is not acknowledged and then lost.
    operator_taken: std::sync::atomic::AtomicU64,
    operator_stored: tokio::sync::watch::Sender<OperatorStored>,
}

/// How many operator commands the store holds, and up to which one they
/// were replaced by the store's settings at the start of a term (never
/// to be held).
#[derive(Debug, Clone, Copy, Default)]
struct OperatorStored {
    stored: u64,
    superseded: u64,
}

impl Publisher {
    pub fn new(proxies: Vec<String>, token: Option<String>) -> Publisher {
        Publisher {
            http: Client::default(),
            proxies,
            token,
            last: Mutex::new(None),
            written: Mutex::new(metadata::Written::default()),
            operator_taken: std::sync::atomic::AtomicU64::new(0),
            operator_stored: tokio::sync::watch::Sender::new(OperatorStored::default()),
        }
    }

    /// Count an operator command the state took; its number, for
    /// [`Publisher::operator_stored`].
    pub fn operator_taken(&self) -> u64 {
        use std::sync::atomic::Ordering::SeqCst;
        self.operator_taken.fetch_add(1, SeqCst) + 1
    }

    /// Operator commands taken so far.
    pub fn operator_commands(&self) -> u64 {
        self.operator_taken
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the store holds the operator settings with command `n` in
    /// them within `within` (a pass writes them).
    /// False at once when the store's settings replaced command `n`.
    pub async fn operator_stored(&self, n: u64, within: std::time::Duration) -> bool {
        let mut rx = self.operator_stored.subscribe();
        let decided = async {
            rx.wait_for(|s| s.stored >= n || s.superseded >= n)
                .await
                .is_ok_and(|s| s.superseded < n)
        };
        tokio::time::timeout(within, decided).await.unwrap_or(false)
    }

    /// Commands up to `n` were replaced by the settings a new term read
    /// from the store.
    pub fn operator_superseded(&self, n: u64) {
        self.operator_stored
            .send_modify(|s| s.superseded = s.superseded.max(n));
    }

    async fn put(&self, proxy: &str, body: Vec<u8>) -> Result<(StatusCode, Vec<u8>), String> {
        let url = format!("{proxy}/admin/table");
        let timeout = push_timeout(body.len());
        self.http
            .send(
                Method::PUT,
                &url,
                Some(body),
                self.token.as_deref(),
                timeout,
            )
            .await
            .map(|(s, b)| (s, b.to_vec()))
            .map_err(|e| e.to_string())
    }

    /// One pass: the store (when there is one), then the proxies.
    pub async fn publish_once(
        &self,
        conn: &mut Option<metadata::Conn>,
        pass: Pass<'_>,
        records: impl FnOnce() -> Records,
        lease: &Lease,
        refusals: &Refusals,
    ) -> Outcome {
        let mut out = Outcome::default();
        let version = pass.version;
        // Nanoseconds spent making tables (the closures below add to it).
        let table_ns = AtomicU64::new(0);
        let timed = |t0: Instant| {
            table_ns.fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
        };
        let t0 = Instant::now();
        // The delta from the last table that went out, for a new version.
        let delta = pass
            .changed
            .then(|| {
                self.last
                    .lock()
                    .as_ref()
                    .filter(|(l, _)| l.version < version)
                    .map(|(l, since)| (pass.delta_from)(l, *since))
            })
            .flatten();
        let (delta, delta_seq) = match delta {
            Some((d, seq)) => (Some(d), seq),
            None => (None, 0),
        };
        let delta_body = delta
            .as_ref()
            .map(|d| serde_json::to_vec(d).unwrap_or_default());
        timed(t0);
        // The full table and its body, each made once, when some target
        // needs it.
        let full = OnceLock::new();
        let full_with_seq = || {
            full.get_or_init(|| {
                let t0 = Instant::now();
                let t = (pass.table)();
                timed(t0);
                t
            })
        };
        let full_table = || &full_with_seq().0;
        let body = OnceLock::new();
        let full_body = || {
            body.get_or_init(|| {
                let t = full_table();
                let t0 = Instant::now();
                let b = serde_json::to_vec(t).unwrap_or_default();
                timed(t0);
                b
            })
            .clone()
        };
        if let Some(url) = &pass.metadata_url {
            let started = std::time::Instant::now();
            let ctx = StoreCtx {
                url,
                delta: delta
                    .as_ref()
                    .and_then(|d| d.base)
                    .zip(delta_body.as_deref())
                    .map(|(base, body)| metadata::Delta { base, body }),
                lease,
                refusals,
            };
            let go_on = self
                .store_pass(conn, &pass, ctx, &full_body, records, &mut out)
                .await;
            out.store = started.elapsed();
            if !go_on {
                out.table = Duration::from_nanos(table_ns.load(Relaxed));
                return out;
            }
        }
        self.push(
            &pass,
            (&delta, delta_seq),
            &delta_body,
            &full_with_seq,
            &full_body,
            lease,
            refusals,
            &mut out,
        )
        .await;
        out.table = Duration::from_nanos(table_ns.load(Relaxed));
        out
    }

    /// The proxies' part of a pass.
    #[allow(clippy::too_many_arguments)]
    async fn push<'t>(
        &self,
        pass: &Pass<'_>,
        (delta, delta_seq): (&Option<TableUpdate>, u64),
        delta_body: &Option<Vec<u8>>,
        full_table: &(dyn Fn() -> &'t (TableUpdate, u64) + Sync),
        full_body: &(dyn Fn() -> Vec<u8> + Sync),
        lease: &Lease,
        refusals: &Refusals,
        out: &mut Outcome,
    ) {
        let version = pass.version;
        let Pass {
            behind, changed, ..
        } = pass;
        let changed = *changed;
        if changed || !behind.is_empty() {
            let targets: Vec<String> = if changed {
                self.proxies.clone()
            } else {
                behind.clone()
            };
            if changed {
                // The base of the next delta: brought forward by this one,
                // or (the first of a term) the full table.
                let mut last = self.last.lock();
                let advanced = match (last.as_mut(), delta) {
                    (Some((l, seq)), Some(d)) => {
                        let ok = advance(l, d);
                        if ok {
                            *seq = delta_seq;
                        }
                        ok
                    }
                    _ => false,
                };
                if !advanced {
                    *last = Some(full_table().clone());
                }
            }
            if lease.may_write().is_none() {
                return;
            }
            // Every proxy at once: a push waits for the proxy to apply the
            // table, and the proxies apply it side by side.
            let push = |p: &str| {
                let p = p.to_string();
                let (delta_body, behind) = (&delta_body, &behind);
                async move {
                    // A proxy known to be behind holds no known base.
                    let via_delta = match delta_body {
                        Some(d) if !behind.contains(&p) => {
                            let r = self.put(&p, d.clone()).await;
                            match &r {
                                Ok((StatusCode::CONFLICT, answer))
                                    if serde_json::from_slice::<UpdateAnswer>(answer)
                                        .is_ok_and(|a| a.assignment_version < version) =>
                                {
                                    // Not at the delta's base: the full table.
                                    None
                                }
                                _ => Some(r),
                            }
                        }
                        _ => None,
                    };
                    let r = match via_delta {
                        Some(r) => r,
                        None => self.put(&p, full_body()).await,
                    };
                    (p, r)
                }
            };
            let answers = futures::future::join_all(targets.iter().map(|p| push(p))).await;
            for (p, r) in answers {
                let delivered = match &r {
                    Ok((s, _)) if s.is_success() => true,
                    // Not newer than what the proxy holds: delivered only if
                    // it holds this very version.
                    Ok((StatusCode::CONFLICT, answer)) => {
                        refusals.proxy.fetch_add(1, Relaxed);
                        match serde_json::from_slice::<UpdateAnswer>(answer) {
                            Ok(a) => match on_refusal(version, a.assignment_version) {
                                Refusal::Current => true,
                                Refusal::Outrank(v) => {
                                    // The same assignment goes out again to
                                    // every proxy, past this one's version.
                                    out.events.push(Event::Outranked {
                                        version: v,
                                        target: p.clone(),
                                        theirs: a.assignment_version,
                                    });
                                    out.again = true;
                                    return;
                                }
                                Refusal::Fenced => {
                                    lease.fenced("a proxy holds a table of a higher epoch");
                                    false
                                }
                                Refusal::Retry => false,
                            },
                            Err(e) => {
                                warn!(proxy = %p, error = %e, "a 409 without the proxy's assignment version");
                                false
                            }
                        }
                    }
                    _ => false,
                };
                if delivered {
                    out.events.push(Event::Delivered { proxy: p });
                } else {
                    if !behind.contains(&p) {
                        warn!(proxy = %p, result = ?r.map(|(s, _)| s), "table push failed; retrying next round");
                    }
                    out.events.push(Event::NotDelivered { proxy: p });
                }
            }
        }
    }

    /// The store's part of a pass: the table when it changed (or the
    /// store lost it), then the records. False when the pass must end here
    /// (outranked, fenced, or no longer leading).
    async fn store_pass(
        &self,
        conn: &mut Option<metadata::Conn>,
        pass: &Pass<'_>,
        ctx: StoreCtx<'_>,
        full_body: &(dyn Fn() -> Vec<u8> + Sync),
        records: impl FnOnce() -> Records,
        out: &mut Outcome,
    ) -> bool {
        let StoreCtx {
            url,
            delta,
            lease,
            refusals,
        } = ctx;
        let Pass {
            version,
            changed,
            keys,
            metadata_error,
            ..
        } = pass;
        let (version, changed) = (*version, *changed);
        if conn.is_none() {
            // A new connection: the store may have restarted since.
            self.written.lock().forget();
            match metadata::connect(url).await {
                Ok(c) => *conn = Some(c),
                Err(e) => out.events.push(Event::MetadataStatus(Err(e))),
            }
        }
        if let Some(c) = conn.as_mut() {
            // Also re-written when the store lost it (restart, flush) or
            // holds an older one.
            let stored = metadata::read_head(c, keys).await;
            let mut write = changed;
            let mut fenced = None;
            match &stored {
                // Newer than ours, or ours by number with other content
                // (another writer): refused, not delivered.
                Ok(Some(t))
                    if t.version > version
                        || (t.version == version && t.writer.as_deref() != Some(lease.id())) =>
                {
                    refusals.metadata.fetch_add(1, Relaxed);
                    let refusal = if t.version == version {
                        version
                            .past(t.version)
                            .map_or(Refusal::Fenced, Refusal::Outrank)
                    } else {
                        on_refusal(version, t.version)
                    };
                    match refusal {
                        Refusal::Outrank(v) => {
                            out.events.push(Event::Outranked {
                                version: v,
                                target: "metadata".into(),
                                theirs: t.version,
                            });
                            out.again = true;
                            return false;
                        }
                        Refusal::Current | Refusal::Retry => {}
                        Refusal::Fenced => {
                            fenced = Some(format!(
                                "the store holds table version {}, which version {} cannot outrank: another manager leads",
                                t.version, version
                            ));
                        }
                    }
                }
                Ok(Some(t)) if t.version == version => {}
                Ok(None) => {
                    // The store lost the table (a restart, a flush): and
                    // with it, most likely, the records.
                    self.written.lock().forget();
                    write = true;
                }
                _ => write = true,
            }
            if lease.may_write().is_none() {
                return false;
            }
            if let Some(e) = fenced {
                // Writing would change nothing (proxies skip what is not
                // newer) and would overwrite the leader's records.
                lease.fenced(&e);
                if metadata_error.as_deref() != Some(e.as_str()) {
                    warn!(error = %e, "table not published");
                }
                out.events.push(Event::MetadataStatus(Err(e)));
            } else {
                let mut res = Ok(());
                if write {
                    let full = || Ok(full_body());
                    res = match metadata::publish_table(c, keys, version, &full, delta, lease.id())
                        .await
                    {
                        Ok(metadata::Published::Written) => Ok(()),
                        Ok(metadata::Published::Fenced(why)) => {
                            refusals.metadata.fetch_add(1, Relaxed);
                            lease.fenced(&why);
                            warn!(reason = %why, version = %version, "table refused by the store: a newer leader");
                            out.events.push(Event::MetadataStatus(Err(why)));
                            return false;
                        }
                        Err(e) => Err(e),
                    };
                }
                if res.is_ok() {
                    // Read before the records are built: every command
                    // counted by now is in the settings they carry.
                    let taken = self
                        .operator_taken
                        .load(std::sync::atomic::Ordering::SeqCst);
                    let (shards, nodes, op) = records();
                    let mut written = std::mem::take(&mut *self.written.lock());
                    let r = metadata::write_changed_state(
                        c,
                        keys,
                        version,
                        &shards,
                        &nodes,
                        &op,
                        &mut written,
                    )
                    .await;
                    *self.written.lock() = written;
                    match r.map(|w| w.published) {
                        Ok(metadata::Published::Written) => {
                            self.operator_stored.send_if_modified(|s| {
                                let newer = taken > s.stored;
                                s.stored = s.stored.max(taken);
                                newer
                            });
                        }
                        Ok(metadata::Published::Fenced(why)) => {
                            lease.fenced(&why);
                            warn!(reason = %why, "records refused by the store: a newer leader");
                            out.events.push(Event::MetadataStatus(Err(why)));
                            return false;
                        }
                        Err(e) => res = Err(e),
                    }
                }
                if let Err(e) = &res {
                    warn!(error = %e, "metadata store write failed; retrying next round");
                    self.written.lock().forget();
                    *conn = None;
                }
                out.events.push(Event::MetadataStatus(res));
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::{advance, delta, push_timeout, Publisher};
    use shardmap::control::ReplicaAssignment;
    use shardmap::table::ReplicaState;
    use shardmap::{AssignmentVersion, TableUpdate};
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[test]
    fn the_delta_from_the_replicas_is_the_full_tables_and_brings_the_base_forward() {
        let table = |shards: &[(&str, &[(&str, ReplicaState)])]| -> BTreeMap<_, _> {
            shards
                .iter()
                .map(|(id, reps)| {
                    let reps = reps
                        .iter()
                        .map(|(n, state)| ReplicaAssignment {
                            node: n.to_string(),
                            state: *state,
                        })
                        .collect::<Vec<_>>();
                    (id.to_string(), reps)
                })
                .collect()
        };
        use ReplicaState::{Draining, Serving, Warming};
        let before = table(&[
            ("a", &[("n1", Serving)]),
            ("b", &[("n1", Serving), ("n2", Serving)]),
            ("c", &[("n3", Serving)]),
            ("e", &[("n2", Serving)]),
        ]);
        let after = table(&[
            ("b", &[("n1", Draining), ("n2", Serving), ("n4", Warming)]),
            ("c", &[("n3", Serving)]),
            ("d", &[("n1", Warming)]),
        ]);
        let (v1, v2) = (AssignmentVersion::new(1, 1), AssignmentVersion::new(1, 2));
        let last = TableUpdate::full(v1, before);
        let d = delta(v2, &last, &after);
        assert_eq!(d, TableUpdate::full(v2, after.clone()).delta_from(&last));
        assert_eq!(d.shards.keys().collect::<Vec<_>>(), ["b", "d"]);
        assert_eq!(d.removed, ["a", "e"]);
        let mut base = last.clone();
        assert!(advance(&mut base, &d));
        assert_eq!(base, TableUpdate::full(v2, after));
        assert_eq!(Some(&base), last.then(&d).as_ref());
        // A delta of another base leaves the table as it is.
        assert!(!advance(&mut base, &d));
        assert_eq!(base.version, v2);
    }

    #[tokio::test]
    async fn a_command_replaced_by_the_stored_settings_is_not_acknowledged() {
        let p = Publisher::new(Vec::new(), None);
        let wait = Duration::from_millis(50);
        let first = p.operator_taken();
        assert!(!p.operator_stored(first, wait).await, "no write yet");
        p.operator_stored.send_modify(|s| s.stored = first);
        assert!(p.operator_stored(first, wait).await);
        let second = p.operator_taken();
        p.operator_superseded(second);
        // A later write covers it by count, but it is not in the settings.
        p.operator_stored.send_modify(|s| s.stored = second);
        assert!(!p.operator_stored(second, wait).await);
        let third = p.operator_taken();
        p.operator_stored.send_modify(|s| s.stored = third);
        assert!(
            p.operator_stored(third, wait).await,
            "taken after the restore"
        );
    }

    #[test]
    fn a_full_table_gets_longer_than_a_delta() {
        assert_eq!(push_timeout(250), Duration::from_millis(2002));
        // 10k shards: ~1 MB.
        assert_eq!(push_timeout(1_006_871), Duration::from_millis(12_068));
        assert_eq!(push_timeout(100 << 20), Duration::from_secs(30));
    }
}
