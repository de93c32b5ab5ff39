//! The manager with its adapters, over the demo topology.

use super::*;
use std::time::{Duration, SystemTime};

/// A manager over the demo topology (copied to `dir`, no metadata store:
/// it leads alone), with one proxy listed; the topology path and text.
pub(super) fn demo_manager(dir: &std::path::Path) -> (Arc<Manager>, std::path::PathBuf, String) {
    let topo = dir.join("topology.toml");
    let good = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/topology.toml"),
    )
    .unwrap();
    std::fs::write(&topo, &good).unwrap();
    let text = "listen = \"127.0.0.1:0\"\n[model]\nhourly = \"h\"\ndaily = \"d\"\n[manager]\ntopology = \"topology.toml\"\nsync = \"http://127.0.0.1:1\"\nproxies = [\"http://127.0.0.1:1\"]\nprefix = \"p1\"\n";
    let cfg = crate::config::Config::parse(text, dir, "f.toml")
        .unwrap()
        .manager
        .unwrap();
    let store = Arc::new(Store::new(crate::store::Retention::default(), 0, 100));
    let m = Manager::new(cfg, store, ForecastHandle::new(), Clock::real()).unwrap();
    (m, topo, good)
}

#[test]
fn a_broken_topology_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let (m, proxy, good) = demo_manager(dir.path());
    assert_eq!(m.topology().shards.len(), 14);
    assert_eq!(m.topology().nodes.len(), 3);
    assert_eq!(m.topology().keys.prefix(), "p1");
    // a broken edit (with a new mtime) is refused and the old topology kept
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&proxy, "replication_factor = \"two\"\n").unwrap();
    let later = SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&proxy)
        .unwrap()
        .set_modified(later)
        .unwrap();
    m.refresh_topology();
    assert_eq!(m.topology().shards.len(), 14);
    assert_eq!(m.topology().modified, Some(later));
    // a good edit is taken
    std::fs::write(
        &proxy,
        good.replace("replication_factor = 2", "replication_factor = 3"),
    )
    .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&proxy)
        .unwrap()
        .set_modified(later + Duration::from_secs(5))
        .unwrap();
    m.refresh_topology();
    assert_eq!(m.topology().replication_factor, 3);
}
