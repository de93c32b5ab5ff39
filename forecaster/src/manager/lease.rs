//! Leadership (DESIGN.md, "Managers"): any number of managers run against
//! one metadata store; the one holding the lease leads, and only the
//! leader writes (table publishes, pre-fetch orders, evictions).
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>:leader` | string, TTL `lease_ms` | the holder's id (one per manager process) |
//! | `<prefix>:epoch` | integer | the last epoch taken; `INCR` by each new leader |
//!
//! Acquiring is `SET <prefix>:leader <id> NX PX <lease_ms>`, then `INCR
//! <prefix>:epoch`: a new leader always takes an epoch no manager had, and
//! numbers its assignments in it, so every target (the store's publish
//! script, proxies, sync) refuses what an older leader still sends.
//! Renewing and releasing are scripts that compare the holder first, so a
//! manager never extends or deletes another's lease.
//!
//! On a Redis Cluster both keys share the prefix's hash tag; after taking
//! the epoch the manager `WAIT`s for a replica of that slot's master (the
//! URL's `wait_replicas`), and gives the lease back when none confirms in
//! time: a failover then cannot hand the same epoch to a second leader.
//!
//! The lease's end is also tracked locally, from the time a successful
//! acquire or renew was *sent*: [`Lease::may_write`] is false from
//! `lease_ms - margin` after that, whatever Redis says, so a leader that is
//! cut off or paused stops writing before another can take over.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shardmap::contract::MetadataKeys;

use super::metadata::Conn;
use tracing::{info, warn};

/// Extend the lease only if this manager still holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Delete the lease only if this manager still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The manager's leadership, shared by the lease loop and the rounds.
pub struct Lease {
    id: String,
    lease: Duration,
    state: Mutex<Term>,
    /// Renewals that failed (Redis unreachable or erroring).
    pub renew_failures: AtomicU64,
    /// Writes a target refused by fencing (a higher epoch leads).
    pub fenced_writes: AtomicU64,
    /// Terms lost: lease expired locally, taken by another, or fenced.
    pub step_downs: AtomicU64,
}

#[derive(Debug, Clone, Default)]
struct Term {
    leader: bool,
    epoch: u64,
    /// Local end of the lease (from the send time of the last success).
    until: Option<Instant>,
    /// A term began that the manager has not yet taken up (restore).
    fresh: bool,
    /// The holder the last acquire attempt found (ours when leading).
    holder: Option<String>,
}

/// What `/manager` and `/metrics` show.
pub use shardmap::contract::manager::LeaseView;

impl Lease {
    pub fn new(lease: Duration) -> Lease {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Lease {
            id: format!("manager-{}-{nanos:x}", std::process::id()),
            lease,
            state: Mutex::new(Term::default()),
            renew_failures: AtomicU64::new(0),
            fenced_writes: AtomicU64::new(0),
            step_downs: AtomicU64::new(0),
        }
    }

    /// Lead without a lease in epoch `epoch` (no metadata store: the one
    /// manager there is).
    pub fn lead_alone(&self, epoch: u64) {
        let mut t = self.state.lock();
        t.leader = true;
        t.epoch = epoch;
        t.until = None;
        t.holder = Some(self.id.clone());
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// How often the lease loop runs: a third of the lease.
    pub fn period(&self) -> Duration {
        self.lease / 3
    }

    fn margin(&self) -> Duration {
        self.lease / 5
    }

    /// The epoch of the current term, if this manager leads, has taken the
    /// term up ([`Lease::taken_up`]) and its lease has not (locally) ended,
    /// less a safety margin: checked before every write. A term not yet
    /// taken up is not written in: the round would write settings the
    /// store's restore is about to replace.
    pub fn may_write(&self) -> Option<u64> {
        let t = self.state.lock();
        if !t.leader || t.fresh {
            return None;
        }
        match t.until {
            None => Some(t.epoch),
            Some(u) if Instant::now() + self.margin() < u => Some(t.epoch),
            Some(_) => None,
        }
    }

    /// A term this manager leads but has not yet taken up: its epoch, until
    /// [`Lease::taken_up`] says the store's table and settings were read.
    pub fn fresh(&self) -> Option<u64> {
        let t = self.state.lock();
        (t.leader && t.fresh).then_some(t.epoch)
    }

    /// The term of `epoch` continues from the store: writes may begin.
    pub fn taken_up(&self, epoch: u64) {
        let mut t = self.state.lock();
        if t.epoch == epoch {
            t.fresh = false;
        }
    }

    pub fn view(&self) -> LeaseView {
        let t = self.state.lock();
        LeaseView {
            leader: t.leader && (t.until.is_none() || t.until > Some(Instant::now())),
            epoch: t.epoch,
            holder: t.holder.clone(),
            id: self.id.clone(),
            lease_ms: self.lease.as_millis() as u64,
        }
    }

    /// Stop leading (a write refused by fencing, or the lease gone); the
    /// lease loop tries to acquire again normally.
    pub fn step_down(&self, why: &str) {
        let mut t = self.state.lock();
        if t.leader && t.until.is_some() {
            warn!(epoch = t.epoch, reason = why, "stepping down as leader");
            t.leader = false;
            t.fresh = false;
            t.until = None;
            self.step_downs.fetch_add(1, Relaxed);
        }
    }

    /// The store could not be asked: a leader whose lease ended locally
    /// steps down (it stopped writing already, see [`Lease::may_write`]).
    pub fn tick_unreachable(&self) {
        let expired = {
            let t = self.state.lock();
            t.leader && t.until.is_some_and(|u| Instant::now() >= u)
        };
        if expired {
            self.step_down("lease expired: the metadata store did not answer");
        }
    }

    /// A write refused because a higher epoch leads: count it, step down.
    pub fn fenced(&self, what: &str) {
        self.fenced_writes.fetch_add(1, Relaxed);
        self.step_down(what);
    }

    /// One pass of the lease loop: renew when leading, else try to acquire.
    pub async fn tick(&self, conn: &mut Conn, keys: &MetadataKeys) -> Result<(), String> {
        let key = keys.leader();
        let (leader, until) = {
            let t = self.state.lock();
            (t.leader, t.until)
        };
        if leader && until.is_some_and(|u| Instant::now() >= u) {
            self.step_down("lease expired before it could be renewed");
        }
        let sent = Instant::now();
        let px = self.lease.as_millis() as u64;
        if leader && until.is_some_and(|u| sent < u) {
            let r: Result<i64, _> = redis::Script::new(RENEW)
                .key(&key)
                .arg(&self.id)
                .arg(px)
                .invoke_async(conn)
                .await;
            match r {
                Ok(1) => {
                    let mut t = self.state.lock();
                    if t.leader {
                        t.until = Some(sent + self.lease);
                    }
                    Ok(())
                }
                Ok(_) => {
                    self.step_down("the lease is held by another manager");
                    Ok(())
                }
                Err(e) => {
                    self.renew_failures.fetch_add(1, Relaxed);
                    Err(format!("renewing the lease: {e}"))
                }
            }
        } else {
            let got: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&self.id)
                .arg("NX")
                .arg("PX")
                .arg(px)
                .query_async(conn)
                .await
                .map_err(|e| format!("acquiring the lease: {e}"))?;
            if got.is_none() {
                let holder: Option<String> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(conn)
                    .await
                    .map_err(|e| e.to_string())?;
                self.state.lock().holder = holder;
                return Ok(());
            }
            let epoch: u64 = match redis::cmd("INCR").arg(keys.epoch()).query_async(conn).await {
                Ok(e) => e,
                Err(e) => {
                    // Without an epoch there is no term: give the lease back.
                    let _ = self.release(conn, keys).await;
                    return Err(format!("taking an epoch: {e}"));
                }
            };
            // On a cluster a failover could lose the epoch and the lease
            // and give both to another manager: a term begins only once a
            // replica holds them.
            if let Err(e) = conn.wait_replicated(&keys.epoch()).await {
                let _ = self.release(conn, keys).await;
                return Err(format!(
                    "epoch {epoch} not replicated, lease given back: {e}"
                ));
            }
            let mut t = self.state.lock();
            t.leader = true;
            t.fresh = true;
            t.epoch = epoch;
            t.until = Some(sent + self.lease);
            t.holder = Some(self.id.clone());
            info!(epoch, id = %self.id, lease_ms = px, "leading: lease acquired");
            Ok(())
        }
    }

    /// Give the lease back (shutdown), if still ours.
    pub async fn release(&self, conn: &mut Conn, keys: &MetadataKeys) -> Result<(), String> {
        {
            let mut t = self.state.lock();
            t.leader = false;
            t.until = None;
        }
        redis::Script::new(RELEASE)
            .key(keys.leader())
            .arg(&self.id)
            .invoke_async::<i64>(conn)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_stops_writing_before_its_lease_ends() {
        let l = Lease::new(Duration::from_millis(1000));
        assert_eq!(l.may_write(), None, "not leading");
        {
            let mut t = l.state.lock();
            t.leader = true;
            t.epoch = 7;
            t.until = Some(Instant::now() + Duration::from_millis(900));
        }
        assert_eq!(l.may_write(), Some(7));
        // Within the margin (a fifth of the lease) of the end: no writes.
        l.state.lock().until = Some(Instant::now() + Duration::from_millis(150));
        assert_eq!(l.may_write(), None);
        l.state.lock().until = Some(Instant::now() + Duration::from_millis(900));
        l.fenced("test");
        assert_eq!(l.may_write(), None);
        assert!(!l.view().leader);
        assert_eq!(l.fenced_writes.load(Relaxed), 1);
    }

    #[test]
    fn a_term_is_written_in_only_once_taken_up() {
        let l = Lease::new(Duration::from_millis(1000));
        {
            let mut t = l.state.lock();
            t.leader = true;
            t.fresh = true;
            t.epoch = 3;
            t.until = Some(Instant::now() + Duration::from_millis(900));
        }
        assert_eq!(l.fresh(), Some(3));
        assert_eq!(l.may_write(), None, "the store not yet read");
        assert!(l.view().leader, "leading all the same");
        l.taken_up(2);
        assert_eq!(l.may_write(), None, "an older term's restore");
        l.taken_up(3);
        assert_eq!(l.fresh(), None);
        assert_eq!(l.may_write(), Some(3));
    }

    #[test]
    fn alone_there_is_no_lease_to_lose() {
        let l = Lease::new(Duration::from_millis(1000));
        l.lead_alone(1);
        assert_eq!(l.may_write(), Some(1));
        l.step_down("test");
        assert_eq!(l.may_write(), Some(1), "no store: nobody else can lead");
    }
}
