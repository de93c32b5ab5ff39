//! The scheduler's state file: one writer, off the async workers.
//!
//! The scheduler tells [`Persister::changed`] after every change to its
//! orders, which only sets a flag under a short lock. One thread writes:
//! it takes the snapshot itself (the scheduler's source, read under the
//! scheduler's lock), serializes it, writes a fresh temp file in the same
//! directory (`.NAME.PID.N.tmp`, created exclusively), `fsync`s it,
//! `rename`s it over the file and `fsync`s the directory. So the file is
//! always one whole snapshot, the previous or the new, whatever is killed
//! when; a burst of changes is one write, and writes start at most every
//! `min_gap` (a cold fill changes orders hundreds of times a second, and
//! copying and serializing the whole book for each change was most of
//! sync's CPU). A write that fails (a full disk, a read-only file system)
//! is logged and counted (`shardcast_sync_state_writes_total{outcome=
//! "error"}`), its temp file removed, and the previous file stays; the
//! next change tries again.
//!
//! [`load`] reads the file at start. One that cannot be read or parsed is
//! an error: logged, counted (`shardcast_sync_state_file_corrupt_total`)
//! and moved aside to `NAME.corrupt-<unix ms>` for a post-mortem, never
//! silently replaced.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::metrics::Metrics;

/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded<T> {
    /// No state file yet.
    Missing,
    Found(T),
    /// Unreadable or not a snapshot; moved aside to `moved_to` (when the
    /// rename worked).
    Corrupt {
        error: String,
        moved_to: Option<PathBuf>,
    },
}

fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.")
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Read the state file at `path`. Also removes temp files a killed writer
/// left beside it.
pub fn load<T: DeserializeOwned>(path: &Path, metrics: &Metrics) -> Loaded<T> {
    remove_stale_temps(path);
    let parsed = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<T>(&bytes).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => Err(format!("cannot read: {e}")),
    };
    let error = match parsed {
        Ok(v) => return Loaded::Found(v),
        Err(e) => e,
    };
    Metrics::inc(&metrics.state_file_corrupt);
    let aside = PathBuf::from(format!(
        "{}.corrupt-{}",
        path.display(),
        crate::scheduler::now_ms()
    ));
    match std::fs::rename(path, &aside) {
        Ok(()) => {
            tracing::error!(path = %path.display(), moved_to = %aside.display(), error = %error,
                "scheduler state file is corrupt: moved aside, its orders are not reloaded");
            Loaded::Corrupt {
                error,
                moved_to: Some(aside),
            }
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %error, rename_error = %e,
                "scheduler state file is corrupt and cannot be moved aside; its orders are not reloaded");
            Loaded::Corrupt {
                error,
                moved_to: None,
            }
        }
    }
}

fn remove_stale_temps(path: &Path) {
    let prefix = temp_prefix(path);
    let Ok(entries) = std::fs::read_dir(dir_of(path)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::info!(file = %e.path().display(), "removed a temp file an interrupted state write left")
                }
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), error = %err, "cannot remove a stale state temp file")
                }
            }
        }
    }
}

/// Write `bytes` to `path` atomically and durably, through the temp file
/// number `n`.
fn write_atomic(path: &Path, bytes: &[u8], n: u64) -> std::io::Result<()> {
    let dir = dir_of(path);
    let tmp = dir.join(format!(
        "{}{}.{n}.tmp",
        temp_prefix(path),
        std::process::id()
    ));
    let res = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename itself survives a power cut only once the directory
        // is on disk.
        File::open(dir)?.sync_all()
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// The snapshot the writer takes when it writes.
pub type Source<T> = Box<dyn Fn() -> T + Send>;

struct Slot {
    /// A change not yet in a write that started.
    dirty: bool,
    /// Changes told, and handled (written or failed).
    saved: u64,
    handled: u64,
    /// Write now, without waiting out the gap (a flush is waiting).
    urgent: bool,
    closed: bool,
}

struct Shared {
    slot: Mutex<Slot>,
    cv: Condvar,
}

/// The one writer of a state file. Dropping it lets the writer write a
/// pending change and stop.
pub struct Persister {
    shared: Arc<Shared>,
    running: bool,
    metrics: Arc<Metrics>,
}

impl Persister {
    /// Start the writer thread for `path`: it writes what `source` gives,
    /// starting writes at most every `min_gap`.
    pub fn start<T: Serialize + 'static>(
        path: PathBuf,
        metrics: Arc<Metrics>,
        min_gap: Duration,
        source: Source<T>,
    ) -> Persister {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                dirty: false,
                saved: 0,
                handled: 0,
                urgent: false,
                closed: false,
            }),
            cv: Condvar::new(),
        });
        let (sh, m) = (shared.clone(), metrics.clone());
        let running = std::thread::Builder::new()
            .name("sync-state-writer".into())
            .spawn(move || writer(path, sh, m, min_gap, source))
            .map_err(|e| tracing::error!(error = %e, "cannot start the state writer thread; orders will not survive a restart"))
            .is_ok();
        Persister {
            shared,
            running,
            metrics,
        }
    }

    /// The source changed: a write follows. Never blocks on I/O.
    pub fn changed(&self) {
        if !self.running {
            Metrics::inc(&self.metrics.state_write_errors);
            return;
        }
        let mut s = self.shared.slot.lock();
        s.dirty = true;
        s.saved += 1;
        self.shared.cv.notify_all();
    }

    /// Block until every change told so far is handled, at most `within`;
    /// false on timeout. For shutdown and tests.
    pub fn flush_blocking(&self, within: Duration) -> bool {
        if !self.running {
            return true;
        }
        let deadline = std::time::Instant::now() + within;
        let mut s = self.shared.slot.lock();
        let want = s.saved;
        s.urgent = true;
        self.shared.cv.notify_all();
        while s.handled < want {
            if self.shared.cv.wait_until(&mut s, deadline).timed_out() {
                return s.handled >= want;
            }
        }
        true
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.shared.slot.lock().closed = true;
        self.shared.cv.notify_all();
    }
}

fn writer<T: Serialize>(
    path: PathBuf,
    sh: Arc<Shared>,
    m: Arc<Metrics>,
    min_gap: Duration,
    source: Source<T>,
) {
    let mut n = 0u64;
    let mut last: Option<std::time::Instant> = None;
    loop {
        let upto = {
            let mut s = sh.slot.lock();
            loop {
                if !s.dirty {
                    if s.closed {
                        return;
                    }
                    sh.cv.wait(&mut s);
                    continue;
                }
                let due = last.map(|l| l + min_gap);
                match due {
                    Some(due) if !s.urgent && !s.closed && std::time::Instant::now() < due => {
                        sh.cv.wait_until(&mut s, due);
                    }
                    _ => break,
                }
            }
            s.dirty = false;
            s.urgent = false;
            s.saved
        };
        // Every change told up to `upto` is in what the source gives now.
        let snapshot = source();
        last = Some(std::time::Instant::now());
        n += 1;
        let res = serde_json::to_vec(&snapshot)
            .map_err(std::io::Error::other)
            .and_then(|b| write_atomic(&path, &b, n));
        drop(snapshot);
        match res {
            Ok(()) => Metrics::inc(&m.state_writes),
            Err(e) => {
                Metrics::inc(&m.state_write_errors);
                tracing::error!(path = %path.display(), error = %e,
                    "cannot write the scheduler state; the previous file stays, the next change tries again");
            }
        }
        let mut s = sh.slot.lock();
        s.handled = upto;
        sh.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
    struct Snap {
        n: u64,
        pad: String,
    }

    /// A persister of `Snap`s: set the value, then tell it.
    fn persister(
        path: &Path,
        m: &Arc<Metrics>,
        min_gap: Duration,
    ) -> (Persister, Arc<Mutex<Snap>>) {
        let value = Arc::new(Mutex::new(Snap {
            n: 0,
            pad: String::new(),
        }));
        let v = value.clone();
        let p = Persister::start(
            path.to_path_buf(),
            m.clone(),
            min_gap,
            Box::new(move || v.lock().clone()),
        );
        (p, value)
    }

    #[test]
    fn concurrent_changes_leave_a_whole_file_at_every_moment_and_the_latest_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let m = Arc::new(Metrics::default());
        let (p, value) = persister(&path, &m, Duration::from_millis(2));
        let p = Arc::new(p);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Relaxed) {
                    if let Ok(b) = std::fs::read(&path) {
                        serde_json::from_slice::<Snap>(&b).unwrap_or_else(|e| {
                            panic!("a torn state file ({e}): {} bytes", b.len())
                        });
                        reads += 1;
                    }
                }
                reads
            })
        };
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let (p, counter, value) = (p.clone(), counter.clone(), value.clone());
                std::thread::spawn(move || {
                    for _ in 0..300 {
                        let n = counter.fetch_add(1, Relaxed);
                        // Different lengths, so an interleaving would show.
                        let pad = "x".repeat((n as usize * 37) % 20_000);
                        *value.lock() = Snap { n, pad };
                        p.changed();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        *value.lock() = Snap {
            n: u64::MAX,
            pad: String::new(),
        };
        p.changed();
        assert!(p.flush_blocking(Duration::from_secs(10)));
        stop.store(true, Relaxed);
        let reads = reader.join().unwrap();
        let last: Snap = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(last.n, u64::MAX, "the latest snapshot wins");
        let writes = m.state_writes.load(Relaxed);
        assert!(
            (1..1201).contains(&writes),
            "{writes} writes for 1,201 changes: bursts are one write"
        );
        assert_eq!(m.state_write_errors.load(Relaxed), 0);
        assert!(reads > 0);
        // No temp file left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn writes_start_at_most_every_gap_and_a_flush_or_drop_does_not_wait_it_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let m = Arc::new(Metrics::default());
        // A gap no test waits out.
        let (p, value) = persister(&path, &m, Duration::from_secs(3600));
        value.lock().n = 1;
        p.changed();
        assert!(p.flush_blocking(Duration::from_secs(10)));
        let read = || {
            serde_json::from_slice::<Snap>(&std::fs::read(&path).unwrap())
                .unwrap()
                .n
        };
        assert_eq!(read(), 1);
        // Within the gap, changes wait...
        value.lock().n = 2;
        p.changed();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(read(), 1, "no second write within the gap");
        assert_eq!(m.state_writes.load(Relaxed), 1);
        // ...unless a flush asks for them.
        assert!(p.flush_blocking(Duration::from_secs(10)));
        assert_eq!(read(), 2);
        // A change pending at drop is written.
        value.lock().n = 3;
        p.changed();
        drop(p);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while read() != 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(read(), 3, "the change pending at drop was written");
    }

    #[test]
    fn a_failed_write_is_counted_and_the_previous_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let m = Arc::new(Metrics::default());
        let (p, value) = persister(&path, &m, Duration::ZERO);
        *value.lock() = Snap {
            n: 1,
            pad: "first".into(),
        };
        p.changed();
        assert!(p.flush_blocking(Duration::from_secs(10)));
        // The next write's temp file cannot be created (as a full disk
        // fails a write: the writer sees an I/O error mid-way).
        let blocker = dir
            .path()
            .join(format!(".state.json.{}.2.tmp", std::process::id()));
        std::fs::create_dir(&blocker).unwrap();
        *value.lock() = Snap {
            n: 2,
            pad: "second".into(),
        };
        p.changed();
        assert!(p.flush_blocking(Duration::from_secs(10)));
        assert_eq!(m.state_write_errors.load(Relaxed), 1);
        let kept: Snap = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(kept.n, 1, "the previous file is intact");
        // The next change writes again.
        *value.lock() = Snap {
            n: 3,
            pad: "third".into(),
        };
        p.changed();
        assert!(p.flush_blocking(Duration::from_secs(10)));
        let now: Snap = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(now.n, 3);
        assert_eq!(m.state_writes.load(Relaxed), 2);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_counted_and_stale_temps_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let m = Metrics::default();
        assert!(matches!(load::<Snap>(&path, &m), Loaded::Missing));
        std::fs::write(&path, b"{\"n\": 1, \"pad\": \"tor").unwrap();
        std::fs::write(dir.path().join(".state.json.1.7.tmp"), b"{").unwrap();
        match load::<Snap>(&path, &m) {
            Loaded::Corrupt {
                moved_to: Some(aside),
                error,
            } => {
                assert!(error.contains("EOF"), "{error}");
                assert_eq!(std::fs::read(&aside).unwrap(), b"{\"n\": 1, \"pad\": \"tor");
                assert!(aside
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("state.json.corrupt-"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!path.exists());
        assert!(!dir.path().join(".state.json.1.7.tmp").exists());
        assert_eq!(m.state_file_corrupt.load(Relaxed), 1);
        std::fs::write(&path, br#"{"n": 4, "pad": ""}"#).unwrap();
        assert!(matches!(
            load::<Snap>(&path, &m),
            Loaded::Found(Snap { n: 4, .. })
        ));
    }
}
