//! The sync and node config files, validated whole.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::http::ListenerConfig;

#[test]
fn every_error_is_reported_with_its_field() {
    let text = r#"
control = "nope"
[transfer]
concurrency = 0
[[nodes]]
name = "a"
cache = "memcached://x"
[[nodes]]
name = "a"
cache = "memory"
[[shards]]
id = "{bad}"
categories = ["X"]
regions = ["UK"]
"#;
    let e = SyncConfig::from_toml(text, Path::new("/tmp/sync.toml")).unwrap_err();
    let all = e.errors.join("\n");
    for want in [
        "control",
        "transfer.concurrency",
        "nodes[0].cache",
        "nodes[1].name",
        "nodes[1].listen",
        "shards[0].id",
    ] {
        assert!(all.contains(want), "missing {want} in:\n{all}");
    }
}

#[test]
fn listener_deadlines_and_bounds_have_per_listener_defaults_and_are_checked() {
    let c = SyncConfig::from_toml(
        "[[nodes]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n",
        Path::new("x.toml"),
    )
    .unwrap();
    assert_eq!(c.control_listener, ListenerConfig::control());
    assert_eq!(c.node_listener, ListenerConfig::node());
    assert_eq!(c.control_listener.limits.max_per_client, 1024);
    assert_eq!(c.node_listener.limits.max_per_client, 4096);
    assert_eq!(
        c.control_listener.deadlines.keepalive,
        Duration::from_secs(75)
    );
    let bad = r#"
[timeouts]
client_header_ms = 0
client_keepalive_ms = 7200000
[limits]
max_connections = 10
max_connections_per_client = 20
[node.limits]
max_connections = 0
[[nodes]]
name = "a"
listen = "127.0.0.1:0"
"#;
    let e = SyncConfig::from_toml(bad, Path::new("x.toml")).unwrap_err();
    let all = e.errors.join("\n");
    for want in [
        "timeouts.client_header_ms:",
        "timeouts.client_keepalive_ms:",
        "limits.max_connections_per_client: 20 exceeds",
        "node.limits.max_connections: 0",
    ] {
        assert!(all.contains(want), "missing {want} in:\n{all}");
    }
    // A lower listener bound lowers the per-client default with it.
    let n = NodeConfig::from_toml(
        "name = \"n\"\nlisten = \"127.0.0.1:0\"\n[timeouts]\nclient_body_ms = 500\n[limits]\nmax_connections = 100\n",
        Path::new("node.toml"),
    )
    .unwrap();
    assert_eq!(n.settings.listener.limits.max_per_client, 100);
    assert_eq!(
        n.settings.listener.deadlines.body,
        Duration::from_millis(500)
    );
    let e = NodeConfig::from_toml(
        "name = \"n\"\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_connections_per_client = 0\nbogus = 1\n",
        Path::new("node.toml"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
}

#[test]
fn a_control_api_off_loopback_needs_a_token() {
    let nodes = "[[nodes]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n";
    for (head, ok) in [
        ("control = \"0.0.0.0:9910\"\n", false),
        ("control = \"10.1.2.3:9910\"\ncontrol_token = \"\"\n", false),
        ("control = \"[::]:9910\"\n", false),
        (
            "control = \"0.0.0.0:9910\"\ncontrol_token = \"s3cret\"\n",
            true,
        ),
        ("control = \"127.0.0.1:9910\"\n", true),
        ("control = \"[::1]:9910\"\n", true),
    ] {
        let r = SyncConfig::from_toml(&format!("{head}{nodes}"), Path::new("sync.toml"));
        match (r, ok) {
            (Ok(c), true) => assert_eq!(c.control_token.is_some(), head.contains("s3cret")),
            (Err(e), false) => {
                let all = e.errors.join("\n");
                assert!(all.contains("control_token: required"), "{head}: {all}");
            }
            (Ok(_), false) => panic!("{head}: accepted without a token"),
            (Err(e), true) => panic!("{head}: {e}"),
        }
    }
}

#[test]
fn one_staleness_bound_for_hosted_copies_and_fills() {
    let nodes = "[[nodes]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n";
    let c = SyncConfig::from_toml(nodes, Path::new("sync.toml")).unwrap();
    assert_eq!(c.scheduler.max_staleness, Duration::from_secs(30));
    let c = SyncConfig::from_toml(
        &format!("[freshness]\nmax_staleness_s = 0.25\n{nodes}"),
        Path::new("sync.toml"),
    )
    .unwrap();
    assert_eq!(c.scheduler.max_staleness, Duration::from_millis(250));
    // The older fill_ttl_s: accepted when it agrees, named when not.
    let ok = format!("[node]\nfill_ttl_s = 30\n{nodes}");
    assert!(SyncConfig::from_toml(&ok, Path::new("sync.toml")).is_ok());
    let bad = format!("[freshness]\nmax_staleness_s = -2\n[node]\nfill_ttl_s = 60\n{nodes}");
    let all = SyncConfig::from_toml(&bad, Path::new("sync.toml"))
        .unwrap_err()
        .errors
        .join("\n");
    assert!(all.contains("freshness.max_staleness_s: -2"), "{all}");
    assert!(all.contains("node.fill_ttl_s: 60 differs"), "{all}");
    let n = NodeConfig::from_toml(
        "name = \"n\"\nlisten = \"127.0.0.1:0\"\nmax_staleness_s = 0.5\n",
        Path::new("node.toml"),
    )
    .unwrap();
    assert_eq!(n.settings.fill_ttl, Duration::from_millis(500));
    let e = NodeConfig::from_toml(
        "name = \"n\"\nlisten = \"127.0.0.1:0\"\nfill_ttl_s = 10\n",
        Path::new("node.toml"),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("fill_ttl_s: 10 differs from max_staleness_s"),
        "{e}"
    );
}

#[test]
fn unknown_fields_are_errors() {
    let e = SyncConfig::from_toml("bandwith = 3\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("bandwith"), "{e}");
}

#[test]
fn defaults_are_the_fourteen_data_shards() {
    let c = SyncConfig::from_toml(
        "[[nodes]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n",
        Path::new("/etc/shardcast/sync.toml"),
    )
    .unwrap();
    assert_eq!(c.shards.len(), 14);
    assert_eq!(c.provider_url, "sqlite:/etc/shardcast/../var/provider.db");
}
