//! A throwaway Redis Cluster: `masters` × (1 master + 1 replica)
//! `redis-server --cluster-enabled yes` on free ports (client and bus),
//! joined with `redis-cli --cluster create … --cluster-replicas 1`, ready
//! once every node says `cluster_state:ok` and every replica's link is up.
//! Processes are killed and their directories removed on drop.
//!
//! The node timeout is short (1 s by default) so that killing a master
//! promotes its replica within a few seconds, and replicas may fail over
//! however stale they are (`cluster-replica-validity-factor 0`): the tests
//! decide what was replicated, not the clock.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{eventually, free_port, SETUP};

struct Node {
    port: u16,
    bus: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A running Redis Cluster (see the module docs).
pub struct RedisCluster {
    _dir: TempDir,
    nodes: Vec<Node>,
    node_timeout_ms: u64,
}

/// One line of `CLUSTER NODES`, the parts the tests need.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    pub slots: Vec<(u16, u16)>,
}

fn cli_binary() -> PathBuf {
    for p in ["/usr/bin/redis-cli", "/usr/local/bin/redis-cli"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("redis-cli not found: {SETUP}");
}

/// A free port whose neighbour is not needed: the bus port is chosen
/// separately (`cluster-port`), so ephemeral ports near 65535 are fine.
fn two_free_ports() -> (u16, u16) {
    loop {
        let (a, b) = (free_port(), free_port());
        if a != b {
            return (a, b);
        }
    }
}

/// `redis-cli -h 127.0.0.1 -p port args…`: its output, "" when the node
/// does not answer.
fn cli_at(port: u16, args: &[&str]) -> String {
    Command::new(cli_binary())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl RedisCluster {
    /// Three masters with a replica each, node timeout 1 s.
    pub fn start() -> RedisCluster {
        Self::start_with(3, 1000)
    }

    pub fn start_with(masters: usize, node_timeout_ms: u64) -> RedisCluster {
        let dir = tempfile::Builder::new()
            .prefix("shardcast-rcluster-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let mut c = RedisCluster {
            nodes: (0..masters * 2)
                .map(|i| {
                    let d = dir.path().join(format!("n{i}"));
                    std::fs::create_dir_all(&d).expect("node directory");
                    let (port, bus) = two_free_ports();
                    Node {
                        port,
                        bus,
                        dir: d,
                        child: None,
                    }
                })
                .collect(),
            _dir: dir,
            node_timeout_ms,
        };
        for i in 0..c.nodes.len() {
            // A port free when picked may be taken by another test's server
            // before ours binds it: then pick again.
            let mut attempts = 0;
            while !c.spawn(i) {
                attempts += 1;
                assert!(attempts < 5, "redis-server would not start in cluster mode");
                (c.nodes[i].port, c.nodes[i].bus) = two_free_ports();
            }
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(c.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let out = Command::new(cli_binary())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c.wait_ok(Duration::from_secs(30));
        c
    }

    /// Start node `i`; false when it exited instead of answering (its
    /// ports were taken).
    fn spawn(&mut self, i: usize) -> bool {
        let n = &mut self.nodes[i];
        let child = Command::new(super::redis_binary())
            .args(["--port", &n.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &n.bus.to_string(),
            ])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &self.node_timeout_ms.to_string()])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--save", "", "--appendonly", "no", "--logfile", "redis.log"])
            .arg("--dir")
            .arg(&n.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server: {e}: {SETUP}"));
        let port = n.port;
        let child = n.child.insert(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if !matches!(child.try_wait(), Ok(None)) {
                n.child = None;
                return false;
            }
            // Ours is alive, so the port is ours: the answer is from it.
            if cli_at(port, &["PING"]).trim() == "PONG" {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("cluster node on port {port} did not answer PING within 10 s");
    }

    /// Run `redis-cli -p port args…` and return its output ("" when the
    /// node does not answer).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli_at(port, args)
    }

    fn alive(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
    }

    /// Wait until every live node reports `cluster_state:ok`, agrees on
    /// the masters, and every live replica's link to its master is up.
    pub fn wait_ok(&self, timeout: Duration) {
        eventually(timeout, "cluster_state:ok on every node", || {
            let mut view = None;
            for p in self.alive() {
                if !self
                    .cli(p, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
                {
                    return None;
                }
                let info = self.cli(p, &["INFO", "replication"]);
                if info.contains("role:slave") && !info.contains("master_link_status:up") {
                    return None;
                }
                let mut masters: Vec<(u16, Vec<(u16, u16)>)> = self
                    .nodes_seen_by(p)
                    .into_iter()
                    .filter(|n| n.master && !n.failed && !n.slots.is_empty())
                    .map(|n| (n.port, n.slots))
                    .collect();
                masters.sort();
                match &view {
                    None => view = Some(masters),
                    Some(v) if *v == masters => {}
                    Some(_) => return None,
                }
            }
            Some(())
        });
    }

    /// `CLUSTER NODES` as seen by the node on `port`.
    pub fn nodes_seen_by(&self, port: u16) -> Vec<NodeInfo> {
        self.cli(port, &["CLUSTER", "NODES"])
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let addr = f.get(1)?.split('@').next()?;
                let port = addr.rsplit_once(':')?.1.parse().ok()?;
                let flags = f.get(2)?;
                let slots = f
                    .iter()
                    .skip(8)
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| match s.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => s.parse().ok().map(|a| (a, a)),
                    })
                    .collect();
                Some(NodeInfo {
                    port,
                    master: flags.contains("master"),
                    failed: flags.contains("fail"),
                    slots,
                })
            })
            .collect()
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        let p = self.alive().next().expect("a live node");
        let out = self.cli(p, &["CLUSTER", "KEYSLOT", key]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key}: `{out}`"))
    }

    /// The port of the master serving `slot`, as live nodes see it (`None`
    /// while they disagree or no live master has it).
    pub fn master_of_slot(&self, slot: u16) -> Option<u16> {
        let mut seen = None;
        for p in self.alive() {
            let m = self
                .nodes_seen_by(p)
                .into_iter()
                .find(|n| {
                    n.master && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
                })?
                .port;
            if seen.is_some_and(|s| s != m) {
                return None;
            }
            seen = Some(m);
        }
        seen
    }

    /// The port of the master serving `key`.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot = self.slot(key);
        eventually(Duration::from_secs(10), "a master for the slot", || {
            self.master_of_slot(slot)
        })
    }

    /// `kill -9` the node on `port` (it keeps its `nodes.conf` for
    /// [`RedisCluster::restart`]).
    pub fn kill(&mut self, port: u16) {
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait until a live node other than `old` serves `slot` as master and
    /// the cluster is `ok` again; returns its port and how long it took.
    pub fn wait_promoted(&self, slot: u16, old: u16, timeout: Duration) -> (u16, Duration) {
        let start = Instant::now();
        let port = loop {
            let m = self.master_of_slot(slot).filter(|m| *m != old);
            if let Some(m) = m.filter(|m| self.cli(*m, &["ROLE"]).starts_with("master")) {
                break m;
            }
            assert!(
                start.elapsed() < timeout,
                "no replica promoted for slot {slot} within {timeout:?}:\n{}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let took = start.elapsed();
        eventually(timeout, "cluster_state:ok after failover", || {
            self.alive()
                .all(|p| {
                    self.cli(p, &["CLUSTER", "INFO"])
                        .contains("cluster_state:ok")
                })
                .then_some(())
        });
        (port, took)
    }

    /// Start a killed node again with its old `nodes.conf`: a master that
    /// lost its slots rejoins as a replica of its successor.
    pub fn restart(&mut self, port: u16) {
        let i = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .expect("a node of this cluster");
        assert!(self.nodes[i].child.is_none(), "node {port} is running");
        assert!(
            self.spawn(i),
            "node {port} would not start again on its ports"
        );
    }

    /// Every live node's view of the cluster and the end of its log (for
    /// failure messages).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let log = std::fs::read_to_string(n.dir.join("redis.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            out += &format!(
                "--- node {} sees:\n{}--- its log:\n{}\n",
                n.port,
                self.cli(n.port, &["CLUSTER", "NODES"]),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        out
    }

    /// The port of the live replica of the master on `master`.
    pub fn replica_of(&self, master: u16) -> u16 {
        eventually(Duration::from_secs(10), "a replica of the master", || {
            self.alive().filter(|p| *p != master).find(|p| {
                let role = self.cli(*p, &["ROLE"]);
                let mut l = role.lines();
                l.next() == Some("slave") && l.nth(1) == Some(master.to_string().as_str())
            })
        })
    }

    fn signal(&self, port: u16, sig: &str) {
        let pid = self
            .nodes
            .iter()
            .find(|n| n.port == port)
            .and_then(|n| n.child.as_ref())
            .map(|c| c.id())
            .expect("a running node of this cluster");
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// `kill -STOP` the node on `port`: it reads nothing until resumed.
    pub fn pause(&self, port: u16) {
        self.signal(port, "-STOP");
    }

    /// `kill -CONT` after [`RedisCluster::pause`].
    pub fn resume(&self, port: u16) {
        self.signal(port, "-CONT");
    }

    /// The process id of every running node (benches account their CPU).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    /// The client port of every node.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `redis+cluster://127.0.0.1:p1,…` naming every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("{}{}", crate::cache::cluster::SCHEME, seeds.join(","))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
