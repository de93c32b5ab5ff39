//! Process life cycle: SIGTERM drains in-flight requests; reloads with a
//! million-sku catalog fail no request.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let nodes = [TestNode::start("n1").await];
    let mut o = opts();
    o.extra = "replication_factor = 1\n".into();
    o.catalog = "[catalog.skus]\nslow1 = \"ALPHA\"\nA1 = \"ALPHA\"\n".into();
    let mut p = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    let url = p.url("/inventory/slow1");
    let inflight =
        tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    p.signal("TERM");
    let status = inflight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(status, 200, "the request in flight at SIGTERM was served");
    // the process exits once drained, within the grace period (2 s) + slack
    let exited = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "proxy did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = exited;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_with_a_million_sku_catalog_fail_no_request() {
    let nodes = [
        TestNode::start("n1").await,
        TestNode::start("n2").await,
        TestNode::start("n3").await,
    ];
    let refs: Vec<&TestNode> = nodes.iter().collect();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("catalog.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
        writeln!(f, "sku,category").unwrap();
        for i in 0..1_000_000u32 {
            writeln!(f, "S{i},{}", if i % 2 == 0 { "ALPHA" } else { "BETA" }).unwrap();
        }
    }
    let mut o = opts();
    o.catalog = format!("[catalog]\ncsv = \"{}\"\n", csv.display());
    let p = Proxy::start(&refs, opts_with(o.catalog.clone())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..4)
        .map(|w| {
            let (base, stop) = (format!("http://{}", p.http), stop.clone());
            tokio::spawn(async move {
                let c = reqwest::Client::new();
                let (mut ok, mut bad) = (0u64, vec![]);
                let mut i = w * 7919;
                while !stop.load(SeqCst) {
                    i = (i + 104_729) % 1_000_000;
                    match c.get(format!("{base}/inventory/S{i}")).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => bad.push(r.status().to_string()),
                        Err(e) => bad.push(e.to_string()),
                    }
                }
                (ok, bad)
            })
        })
        .collect();
    let c = reqwest::Client::new();
    let g0 = p.config_generation().await;
    let a0 = p.assignment_version().await;
    // 1. assignment change, catalog reused
    let text = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        text.replace(
            "id = \"UK/ALPHA\"",
            "id = \"UK/ALPHA\"\nreplicas = [\"n1\"]",
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let r = c.post(p.admin_url("/admin/reload")).send().await.unwrap();
    let fast = t0.elapsed();
    assert_eq!(r.status(), 200);
    // 2. the catalog itself changes: a million rows re-read off the request path
    {
        let mut f = std::fs::OpenOptions::new().append(true).open(&csv).unwrap();
        writeln!(f, "NEWSKU,BETA").unwrap();
    }
    let r = c.post(p.admin_url("/admin/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(p.url("/inventory/NEWSKU")).send().await.unwrap();
    assert_eq!(r.headers()["x-shardcast-shard"], "UK/BETA");
    assert!(p.config_generation().await >= g0 + 2);
    assert_eq!(
        p.assignment_version().await,
        a0,
        "a reload is no assignment"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, SeqCst);
    let (mut ok, mut bad) = (0, vec![]);
    for h in handles {
        let (o, b) = h.await.unwrap();
        ok += o;
        bad.extend(b);
    }
    assert!(ok > 50, "{ok}");
    assert!(
        bad.is_empty(),
        "failed during reloads: {:?}",
        &bad[..bad.len().min(5)]
    );
    eprintln!("reload with catalog reused took {fast:?}");
}

fn opts_with(catalog: String) -> ProxyOpts {
    let mut o = opts();
    o.catalog = catalog;
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_hands_over_the_listener_without_failures() {
    let nodes = [TestNode::start("n1").await];
    let mut o = opts();
    o.extra = "replication_factor = 1\n".into();
    let mut old = Proxy::start(&nodes.iter().collect::<Vec<_>>(), o).await;
    let stop = Arc::new(AtomicBool::new(false));
    let base = old.url("/inventory/A");
    let s2 = stop.clone();
    let load = tokio::spawn(async move {
        let (mut ok, mut bad) = (0u64, vec![]);
        while !s2.load(SeqCst) {
            // a new connection each time: the listener itself is handed over
            let c = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            match c.get(format!("{base}{}", ok % 100)).send().await {
                Ok(r) if r.status() == 200 => ok += 1,
                Ok(r) => bad.push(r.status().to_string()),
                Err(e) => bad.push(e.to_string()),
            }
        }
        (ok, bad)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // the new process waits for the sockets, then the old one hands them over
    let log = old.dir.path().join("new.log");
    let mut new = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast-proxy"))
        .arg("-c")
        .arg(&old.config)
        .arg("--upgrade")
        .arg("--upgrade-sock")
        .arg(old.dir.path().join("upgrade.sock"))
        .stdout(std::process::Stdio::from(
            std::fs::File::create(&log).unwrap(),
        ))
        .stderr(std::process::Stdio::from(
            std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");
    let t0 = Instant::now();
    while old.child.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "old process did not exit after SIGQUIT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, SeqCst);
    let (ok, bad) = load.await.unwrap();
    let alive = new.try_wait().unwrap().is_none();
    let _ = new.kill();
    let _ = new.wait();
    assert!(
        alive,
        "new process died: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(ok > 20, "{ok}");
    assert!(
        bad.is_empty(),
        "failed during upgrade: {:?}",
        &bad[..bad.len().min(5)]
    );
}
