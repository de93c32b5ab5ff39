//! The proxy config, parsed and validated whole.

use super::*;

const MIN: &str = r#"
[listen]
http = ["127.0.0.1:0"]
[[nodes]]
name = "a"
address = "127.0.0.1:1"
[[nodes]]
name = "b"
address = "127.0.0.1:2"
[[shards]]
id = "s1"
categories = ["X"]
regions = ["UK"]
[[routes]]
name = "inv"
path = "/inventory/{sku}"
"#;

#[test]
fn minimal_config_validates_and_assigns() {
    let c = Config::from_toml(MIN, Path::new("t.toml")).unwrap();
    assert_eq!(c.shards[0].replicas.len(), 2);
    assert_ne!(c.shards[0].replicas[0], c.shards[0].replicas[1]);
}

#[test]
fn every_error_is_reported_with_its_field() {
    let bad = r#"
replication_factor = 5
[listen]
http = ["nope"]
admin = "0.0.0.0:9901"
[[nodes]]
name = "a"
address = "127.0.0.1"
capacity = -1
[[shards]]
id = "s1"
categories = ["X"]
regions = ["UK"]
replicas = ["zz"]
[[shards]]
id = "s2"
categories = ["X"]
regions = ["UK"]
[[routes]]
name = "r"
path = "inventory"
"#;
    let e = Config::from_toml(bad, Path::new("bad.toml")).unwrap_err();
    let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
    for want in [
        "listen.http[0]",
        "listen.admin_token",
        "nodes[0].address",
        "nodes[0].capacity",
        "replication_factor",
        "shards[0].replicas[0]",
        "shards[1].categories[0]",
        "routes[0].path",
    ] {
        assert!(fields.contains(&want), "missing {want} in {fields:?}");
    }
    assert!(e.to_string().starts_with("bad.toml: "));
}

#[test]
fn dashboard_forecaster_is_optional_and_checked() {
    let c = Config::from_toml(MIN, Path::new("t.toml")).unwrap();
    assert_eq!(c.dashboard.forecaster, None);
    assert_eq!(c.dashboard.forecaster_timeout, Duration::from_millis(250));
    let ok = format!("{MIN}\n[dashboard]\nforecaster = \"http://127.0.0.1:9300/\"\n");
    let c = Config::from_toml(&ok, Path::new("t.toml")).unwrap();
    assert_eq!(
        c.dashboard.forecaster.as_deref(),
        Some("http://127.0.0.1:9300")
    );
    let bad = format!(
        "{MIN}\n[dashboard]\nforecaster = \"https://f:9300/x\"\nforecaster_timeout_ms = 5000\n"
    );
    let e = Config::from_toml(&bad, Path::new("t.toml")).unwrap_err();
    let fields: Vec<&str> = e.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["dashboard.forecaster", "dashboard.forecaster_timeout_ms"],
        "{e}"
    );
    for u in [
        "http://f:9300/forecasts",
        "http://f",
        "http://:1",
        "http://u@f:1",
    ] {
        assert!(check_base_url(u).is_err(), "{u} accepted");
    }
    let typo = format!("{MIN}\n[dashboard]\nforcaster = \"http://f:1\"\n");
    assert!(Config::from_toml(&typo, Path::new("t.toml")).is_err());
}

#[test]
fn unknown_field_is_an_error_with_a_line() {
    let e = Config::from_toml(
        &format!("{MIN}\nreplicaton_factor = 2\n"),
        Path::new("t.toml"),
    )
    .unwrap_err();
    assert!(e.errors[0].message.contains("unknown field"), "{e}");
    assert!(e.errors[0].field.starts_with("line "), "{e}");
}
