//! Request-path pieces without sockets: replica choice and framing checks.
//! `cargo bench -p shardcast-proxy --bench request_path`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardcast_proxy::node::{now_ms, NodeRuntime};
use shardcast_proxy::selection::{P2c, Selector};

fn selection(c: &mut Criterion) {
    let nodes: Vec<Arc<NodeRuntime>> = (0..8)
        .map(|i| Arc::new(NodeRuntime::new(&format!("n{i}"))))
        .collect();
    let cap = vec![1000.0; 8];
    let mut g = c.benchmark_group("selection");
    g.throughput(Throughput::Elements(1));
    for rf in [2usize, 3, 5] {
        let cands: Vec<u32> = (0..rf as u32).collect();
        g.bench_function(format!("p2c_rf{rf}"), |b| {
            let now = now_ms();
            b.iter(|| black_box(P2c.pick(black_box(&cands), &nodes, &cap, &[], now)))
        });
    }
    g.bench_function("p2c_rf3_with_inflight_guard", |b| {
        let cands = [0u32, 1, 2];
        b.iter(|| {
            let n = P2c.pick(&cands, &nodes, &cap, &[], now_ms()).unwrap();
            black_box(nodes[n as usize].start())
        })
    });
    g.finish();
}

fn framing(c: &mut Criterion) {
    let mut r =
        pingora_http::RequestHeader::build("GET", b"/inventory/85123A?region=UK", None).unwrap();
    r.append_header("host", "shop.example").unwrap();
    r.append_header("user-agent", "wrk").unwrap();
    r.append_header("accept", "*/*").unwrap();
    c.bench_function("framing_check", |b| {
        b.iter(|| {
            black_box(shardcast_proxy::framing::check(
                black_box(&r),
                false,
                16384,
                || false,
            ))
        })
    });
}

criterion_group!(benches, selection, framing);
criterion_main!(benches);
