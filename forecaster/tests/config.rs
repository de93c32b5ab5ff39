//! Every shipped `conf/forecaster*.toml` parses and validates, and its
//! paths point at files that exist in the repository; a bad config names
//! file and field for every error.

use std::path::Path;

use shardcast_forecaster::config::Config;
use shardcast_forecaster::feeds::FeedSource;

#[test]
fn shipped_configs_validate() {
    let conf =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../conf");
    let mut n = 0;
    for e in std::fs::read_dir(&conf).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("forecaster") && name.ends_with(".toml")) {
            continue;
        }
        n += 1;
        let c = Config::load(&e.path()).unwrap_or_else(|err| panic!("{name}:\n{err}"));
        assert!(
            c.hourly_contract.is_file(),
            "{name}: {}",
            c.hourly_contract.display()
        );
        assert!(
            c.daily_contract.is_file(),
            "{name}: {}",
            c.daily_contract.display()
        );
        if let Some(h) = &c.history {
            if let FeedSource::File(p) = &h.source {
                assert!(p.is_file(), "{name}: {}", p.display());
            }
        }
    }
    assert!(n >= 1, "no conf/forecaster*.toml found");
}

#[test]
fn errors_name_file_and_field() {
    let text = r#"
listen = "not an address"
[store]
hour_buckets = 10
utc_offset_minutes = 9999
[model]
hourly = "h.json"
daily = "d.json"
intra_threads = 0
[planner]
cycle_s = 0
"#;
    let err = Config::parse(text, Path::new("."), "x.toml")
        .unwrap_err()
        .to_string();
    for field in [
        "listen",
        "store.hour_buckets",
        "store.utc_offset_minutes",
        "model.intra_threads",
        "planner.cycle_s",
    ] {
        assert!(
            err.contains(&format!("x.toml: {field}:")),
            "{field} missing in:\n{err}"
        );
    }
    assert!(
        err.contains("store.timezone"),
        "points to the new key:\n{err}"
    );
    let unknown = Config::parse(
        "listen = \"127.0.0.1:1\"\nbogus = 1\n[model]\nhourly=\"a\"\ndaily=\"b\"\n",
        Path::new("."),
        "y.toml",
    );
    assert!(unknown.unwrap_err().to_string().contains("bogus"));
}

#[test]
fn manager_errors_name_their_fields() {
    let text = r#"
listen = "0.0.0.0:9300"
[model]
hourly = "h.json"
daily = "d.json"
[manager]
proxy_config = "proxy.toml"
prefix = "a b"
telemetry_interval_s = 0
health_max_age_ms = 1
sync = "127.0.0.1:9910"
metadata = "mysql://x"
proxies = ["ftp://p"]
interval_ms = 1
quantile = 1.5
max_utilization = 0
scale_in_ratio = 2
default_threshold_rps = -1
observe_window_s = 0
fail_after = 0
"#;
    let err = Config::parse(text, Path::new("."), "m.toml")
        .unwrap_err()
        .to_string();
    for field in [
        "manager.sync",
        "manager.metadata",
        "manager.proxies[0]",
        "manager.interval_ms",
        "manager.quantile",
        "manager.max_utilization",
        "manager.scale_in_ratio",
        "manager.default_threshold_rps",
        "manager.observe_window_s",
        // the manager reads the topology file, not the proxy's config
        "manager.proxy_config",
        "manager.prefix",
        "manager.telemetry_interval_s",
        "manager.health_max_age_ms",
        "manager.fail_after",
        // not loopback, no token
        "manager.admin_token",
    ] {
        assert!(
            err.contains(&format!("m.toml: {field}:")),
            "{field} missing in:\n{err}"
        );
    }
}

/// The shipped manager plans with the topology the demo proxy routes by.
#[test]
fn shipped_manager_sections_name_the_proxies_topology() {
    let conf =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../conf");
    let proxy = shardmap::Config::load(&conf.join("proxy-demo.toml")).unwrap();
    let mut seen = 0;
    for e in std::fs::read_dir(&conf).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("forecaster") && name.ends_with(".toml")) {
            continue;
        }
        let c = Config::load(&e.path()).unwrap();
        if let Some(m) = c.manager {
            let t = shardmap::Topology::load(&m.topology)
                .unwrap_or_else(|err| panic!("{name}: manager.topology: {err}"));
            assert_eq!(t.nodes, proxy.nodes, "{name}");
            assert_eq!(t.shards, proxy.shards, "{name}");
            assert_eq!(Some(m.topology.clone()), proxy.topology, "{name}");
            assert_eq!(m.prefix, proxy.control.prefix, "{name}");
            seen += 1;
        }
    }
    assert!(seen >= 1);
}

#[test]
fn manager_topology_errors_name_the_topology_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("topology.toml"),
        "[[nodes]]\nname = \"a\"\naddress = \"nowhere\"\n[[shards]]\nid = \"s\"\ncategories = [\"X\"]\nregions = [\"UK\"]\n",
    )
    .unwrap();
    let text = "listen = \"127.0.0.1:1\"\n[model]\nhourly = \"h\"\ndaily = \"d\"\n[manager]\ntopology = \"topology.toml\"\nsync = \"http://127.0.0.1:1\"\n";
    let err = Config::parse(text, dir.path(), "f.toml")
        .unwrap_err()
        .to_string();
    let want = format!(
        "f.toml: manager.topology: {}: nodes[0].address:",
        dir.path().join("topology.toml").display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("replication_factor"), "{err}");
    let none = "listen = \"127.0.0.1:1\"\n[model]\nhourly = \"h\"\ndaily = \"d\"\n[manager]\nsync = \"http://127.0.0.1:1\"\n";
    let err = Config::parse(none, dir.path(), "f.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("f.toml: manager.topology: required"), "{err}");
}

#[test]
fn replay_clock_and_policy_are_validated() {
    let base = "listen = \"127.0.0.1:1\"\n[model]\nhourly = \"h\"\ndaily = \"d\"\n";
    let conf =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../conf");
    let bad = format!(
        "{base}[clock]\nstart = \"soon\"\nspeed = 0\n[manager]\ntopology = \"topology.toml\"\nsync = \"http://127.0.0.1:1\"\npolicy = \"oracle\"\n"
    );
    let err = Config::parse(&bad, &conf, "c.toml")
        .unwrap_err()
        .to_string();
    for field in ["clock.start", "clock.speed", "manager.oracle"] {
        assert!(
            err.contains(&format!("c.toml: {field}:")),
            "{field}:\n{err}"
        );
    }
    let good = format!(
        "{base}[clock]\nstart = \"2011-11-07 00:00:00\"\nspeed = 3600\n[manager]\ntopology = \"topology.toml\"\nsync = \"http://127.0.0.1:1\"\npolicy = \"reactive\"\nhost_baseline = false\n"
    );
    let c = Config::parse(&good, &conf, "c.toml").unwrap();
    let clock = c.clock.unwrap();
    assert_eq!(clock.speed, 3600.0);
    assert_eq!(clock.start_ms, 1_320_624_000_000);
    let m = c.manager.unwrap();
    assert!(!m.host_baseline);
    assert_eq!(m.policy, shardcast_forecaster::config::Policy::Reactive);
    let unknown = format!(
        "{base}[manager]\ntopology = \"topology.toml\"\nsync = \"http://x\"\npolicy = \"psychic\"\n"
    );
    assert!(Config::parse(&unknown, Path::new("."), "c.toml").is_err());
}

#[test]
fn client_deadlines_and_connection_bounds_default_and_are_validated() {
    let base = "listen = \"127.0.0.1:1\"\n[model]\nhourly = \"h\"\ndaily = \"d\"\n";
    let c = Config::parse(base, Path::new("."), "c.toml").unwrap();
    assert_eq!(c.deadlines, shardcast_edge::Deadlines::default());
    assert_eq!(c.deadlines.keepalive, std::time::Duration::from_secs(10));
    assert_eq!(
        (c.limits.max_connections, c.limits.max_per_client),
        (1024, 1024)
    );
    let bad = format!(
        "{base}[timeouts]\nclient_header_ms = 0\nclient_write_ms = 3600001\n[limits]\nmax_connections = 10\nmax_connections_per_client = 11\n"
    );
    let err = Config::parse(&bad, Path::new("."), "c.toml")
        .unwrap_err()
        .to_string();
    for field in [
        "timeouts.client_header_ms",
        "timeouts.client_write_ms",
        "limits.max_connections_per_client",
    ] {
        assert!(
            err.contains(&format!("c.toml: {field}:")),
            "{field}:\n{err}"
        );
    }
    let zero = format!("{base}[limits]\nmax_connections = 0\nmax_connections_per_client = 0\n");
    let err = Config::parse(&zero, Path::new("."), "c.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("c.toml: limits.max_connections: 0"), "{err}");
    let unknown = format!("{base}[timeouts]\nclient_idle_ms = 5\n");
    let err = Config::parse(&unknown, Path::new("."), "c.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("client_idle_ms"), "{err}");
}

#[test]
fn timezone_is_an_iana_name_and_sets_the_replay_start() {
    let base = "listen = \"127.0.0.1:1\"\n[model]\nhourly = \"h.json\"\ndaily = \"d.json\"\n";
    let with = |store: &str, rest: &str| {
        Config::parse(
            &format!("{base}[store]\n{store}\n{rest}"),
            Path::new("."),
            "z.toml",
        )
    };
    let err = with("timezone = \"Europe/Londres\"", "")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("z.toml: store.timezone:") && err.contains("Europe/Londres"),
        "{err}"
    );
    // Without the key the store keeps UTC.
    let c = Config::parse(base, Path::new("."), "z.toml").unwrap();
    assert_eq!(c.timezone.name(), "UTC");
    // The replay clock's start is read on the store's clock: 09:00 BST.
    let c = with(
        "timezone = \"Europe/London\"",
        "[clock]\nstart = \"2011-06-01 09:00:00\"\nspeed = 60",
    )
    .unwrap();
    assert_eq!(c.timezone.name(), "Europe/London");
    let start = c.clock.unwrap().start_ms;
    assert_eq!(
        shardcast_forecaster::time::format_utc_ms(start),
        "2011-06-01T08:00:00.000Z"
    );
    // The shipped demo store is the UK one.
    let conf = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../conf/forecaster.toml");
    assert_eq!(
        Config::load(&conf).unwrap().timezone.name(),
        "Europe/London"
    );
}
