//! Every proxy config shipped under conf/ parses and validates.

use std::path::Path;

#[test]
fn shipped_proxy_configs_validate() {
    let dir =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../conf");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("proxy-") && name.ends_with(".toml")) {
            continue;
        }
        seen += 1;
        let c = shardmap::Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.shards.is_empty());
        if c.listen.https.is_empty() {
            // Everything it points at loads too (catalog, nodes).
            let args = shardcast_proxy::run::Args {
                config: p.clone(),
                test: true,
                upgrade: false,
                upgrade_sock: String::new(),
                instance: None,
            };
            shardcast_proxy::run::check(&args).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }
    assert!(
        seen >= 2,
        "expected proxy-demo.toml and proxy-production.toml"
    );
}

#[test]
fn the_check_flag_reports_every_error_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[listen]\nhttp=[\"127.0.0.1:1\"]\n[[nodes]]\nname=\"a\"\naddress=\"nope\"\n[[shards]]\nid=\"s\"\ncategories=[]\nregions=[\"UK\"]\n[[routes]]\nname=\"r\"\npath=\"/x\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast-proxy"))
        .args(["-t", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "nodes[0].address",
        "shards[0].categories",
        "routes[0].path",
        "replication_factor",
    ] {
        assert!(err.contains(want), "missing {want} in:\n{err}");
    }
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast-proxy"))
        .args(["-t", "-c"])
        .arg(
            Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
                .join("../conf/proxy-demo.toml"),
        )
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
