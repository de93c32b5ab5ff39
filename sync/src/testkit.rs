//! Throwaway PostgreSQL and Redis servers for tests (feature `testkit`):
//! one Redis ([`Redis`]) or a Redis Cluster of three masters with a replica
//! each ([`RedisCluster`]).
//!
//! Each instance runs on a free port in its own temporary directory and is
//! stopped and removed on drop. Nothing here skips: when the server
//! binaries are missing, starting panics with a message naming the set-up
//! script (`scripts/setup`). Readiness is awaited with
//! [`eventually`]-style polling, never a fixed sleep.
//!
//! ```no_run
//! # async fn t() {
//! let pg = shardcast_sync::testkit::Postgres::start();
//! let redis = shardcast_sync::testkit::Redis::start();
//! let provider = shardcast_sync::provider::open(&pg.url()).await.unwrap();
//! let cache = shardcast_sync::cache::open(&redis.url(), "n1").await.unwrap();
//! # }
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod cluster;
pub use cluster::{NodeInfo, RedisCluster};

const SETUP: &str = "run `scripts/setup` (installs redis-server and postgresql)";

/// A port nobody listens on right now, picked below the kernel's ephemeral
/// range: a port that `bind(0)` hands out is one the kernel may give next to
/// an outgoing connection (a test's client, sync's connection to a node)
/// before the server it was picked for binds it.
pub fn free_port() -> u16 {
    use rand::Rng;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let base = if low > 12000 { 10000 } else { 1024 };
    let mut rng = rand::rng();
    for _ in 0..500 {
        let port = rng.random_range(base..low);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a port on 127.0.0.1")
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// Async version of [`eventually`].
pub async fn eventually_async<T, F: std::future::Future<Output = Option<T>>>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Directory holding `initdb` and `pg_ctl`: `$SHARDCAST_PG_BIN`, else the
/// newest `/usr/lib/postgresql/*/bin`.
pub fn pg_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SHARDCAST_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql: {SETUP}"))
}

/// A throwaway PostgreSQL cluster (trust auth, user `postgres`).
pub struct Postgres {
    dir: TempDir,
    port: u16,
    bin: PathBuf,
    as_postgres: bool,
}

impl Postgres {
    /// initdb + start on a free port; waits until it accepts connections.
    pub fn start() -> Postgres {
        let bin = pg_bin();
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("shardcast-pg-")
            .tempdir()
            .expect("cannot create a temporary directory");
        if as_postgres {
            // initdb refuses to run as root: the cluster belongs to `postgres`.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "cannot chown {} to postgres: {SETUP}",
                dir.path().display()
            );
        }
        let data = dir.path().join("data");
        let pg = Postgres {
            dir,
            port: 0,
            bin,
            as_postgres,
        };
        let out = pg.run(&format!(
            "{} -D {} -A trust -U postgres --no-sync -E UTF8",
            pg.bin.join("initdb").display(),
            data.display()
        ));
        assert!(out.0, "initdb failed: {}", out.1);
        let mut pg = pg;
        for attempt in 0..5 {
            pg.port = free_port();
            if pg.try_start() {
                return pg;
            }
            eprintln!(
                "postgres did not start on port {} (attempt {attempt}); retrying",
                pg.port
            );
        }
        panic!("postgres would not start; log:\n{}", pg.log());
    }

    fn run(&self, cmd: &str) -> (bool, String) {
        let out = if self.as_postgres {
            Command::new("su")
                .args(["postgres", "-s", "/bin/sh", "-c", cmd])
                .output()
        } else {
            Command::new("sh").args(["-c", cmd]).output()
        };
        match out {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, format!("cannot run `{cmd}`: {e}")),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn try_start(&self) -> bool {
        let (ok, _) = self.run(&format!(
            "{} -D {} -o '-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200' -l {}/log -w -t 30 start",
            self.bin.join("pg_ctl").display(),
            self.data().display(),
            self.port,
            self.dir.path().display(),
            self.dir.path().display()
        ));
        ok && port_open(self.port)
    }

    /// The server log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's process id (benches account its CPU and its
    /// backends'); `None` when it is not running.
    pub fn pid(&self) -> Option<u32> {
        let s = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        s.lines().next()?.trim().parse().ok()
    }

    /// A tokio-postgres connection string.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=5",
            self.port
        )
    }

    /// Crash-stop (`pg_ctl -m immediate`): the outage and crash tests.
    pub fn stop(&self) {
        let (ok, out) = self.run(&format!(
            "{} -D {} -m immediate -w stop",
            self.bin.join("pg_ctl").display(),
            self.data().display()
        ));
        assert!(ok, "pg_ctl stop failed: {out}");
    }

    /// Start again on the same port after [`Postgres::stop`] (recovery can
    /// take a few seconds).
    pub fn restart(&self) {
        let ok = self.try_start();
        assert!(
            ok,
            "postgres did not restart on port {}; log:\n{}",
            self.port,
            self.log()
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run(&format!(
            "{} -D {} -m immediate stop",
            self.bin.join("pg_ctl").display(),
            self.data().display()
        ));
    }
}

/// A throwaway Redis server (no persistence).
pub struct Redis {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

fn redis_binary() -> PathBuf {
    for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("redis-server not found: {SETUP}");
}

impl Redis {
    /// Start on a free port; waits until it answers PING.
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("shardcast-redis-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let mut r = Redis {
            dir,
            port: 0,
            child: None,
        };
        for attempt in 0..5 {
            r.port = free_port();
            if r.spawn() {
                return r;
            }
            eprintln!(
                "redis did not start on port {} (attempt {attempt}); retrying",
                r.port
            );
        }
        panic!("redis-server would not start");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new(redis_binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else {
            panic!("cannot run redis-server: {SETUP}");
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if self.ping() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        false
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's process id (benches account its CPU).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill the server (an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port after [`Redis::stop`] (empty: no
    /// persistence).
    pub fn restart(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The workspace root (for data files in tests): read when the test runs
/// (cargo and nextest set `CARGO_MANIFEST_DIR`), so that a test built from
/// another checkout into the same target dir reads this checkout's files.
pub fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Compare a shard in a cache with the provider's snapshot: `Ok` when the
/// cache holds exactly the provider's live rows (same encoded values) and
/// its cursor is at least the snapshot's; otherwise a description of the
/// difference.
pub async fn cache_matches_provider(
    p: &dyn crate::provider::Provider,
    c: &dyn crate::cache::ShardCache,
    s: &crate::model::ShardDef,
) -> Result<(), String> {
    use crate::model::{encode_value, field};
    let snap = p.snapshot(s, 5000).await.map_err(|e| e.to_string())?;
    let mut want: Vec<(String, bytes::Bytes)> = snap
        .rows
        .iter()
        .filter_map(|r| {
            Some((
                field(&r.sku, &r.region),
                encode_value(r, r.item.as_ref()?, 1 << 20).ok()?,
            ))
        })
        .collect();
    want.sort();
    let mut have = c.dump(&s.id).await.map_err(|e| e.to_string())?;
    have.sort();
    if have != want {
        let missing = want.iter().filter(|w| !have.contains(w)).count();
        let extra = have.iter().filter(|h| !want.contains(h)).count();
        return Err(format!(
            "shard {}: cache has {} items, provider {}; {missing} missing or stale, {extra} extra or stale",
            s.id,
            have.len(),
            want.len()
        ));
    }
    let cursor = c.cursor(&s.id).await.map_err(|e| e.to_string())?;
    if cursor < Some(snap.to) {
        return Err(format!(
            "shard {}: cursor {cursor:?} behind the provider's {}",
            s.id, snap.to
        ));
    }
    Ok(())
}

/// Seed a provider with the project's catalog (scale 1, ~6,800 rows).
pub async fn seed_catalog(p: &dyn crate::provider::ProviderAdmin) -> u64 {
    let cat = workspace_root().join("data/online_retail/catalog.csv.gz");
    crate::load::load(p, &cat, 1, 5000)
        .await
        .unwrap_or_else(|e| panic!("seeding from {}: {e}", cat.display()))
}

/// A child process that is killed (and reaped) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `bin` with `args` and collect its `WHO listening on ADDR` lines
/// until there are `want` of them; its stdout keeps being drained after.
pub fn spawn_listening(
    bin: &str,
    args: &[&str],
    want: usize,
) -> (Proc, Vec<(String, std::net::SocketAddr)>) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let proc = Proc(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut addrs = vec![];
    while addrs.len() < want {
        let l = lines.next().expect("exited before listening").unwrap();
        if let Some((who, addr)) = l.split_once(" listening on ") {
            addrs.push((who.to_string(), addr.parse().expect("listening address")));
        }
    }
    // Keep draining stdout so later prints never block or fail.
    std::thread::spawn(move || for _ in lines {});
    (proc, addrs)
}
