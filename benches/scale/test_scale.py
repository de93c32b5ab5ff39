"""The scale harness, smoke-tested small on the workspace's debug binaries
(built by the cargo step of scripts/test): a generated 200-shard, 20k-sku,
4-node deployment with 2 proxies runs end to end for a minute and the
summary carries every measurement the full-size run reports."""

import gzip
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIN = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/shardcast/target")) / "debug"
sys.path.insert(0, str(HERE))
import deployment  # noqa: E402


def bins():
    for b in ("shardcast-proxy", "shardcast-sync", "shardcast-forecaster"):
        if not (BIN / b).exists():
            pytest.fail(f"{BIN / b} not built: run `cargo build --workspace` first (scripts/test does)")
    return str(BIN)


def test_the_deployment_scales_the_real_data(tmp_path):
    import datetime as dt
    d = deployment.Deployment(tmp_path, shards=60, skus=6000, nodes=5,
                              start=dt.datetime(2011, 11, 7, 8), history_days=10, trace_days=1)
    m = d.build(log=lambda _m: None)
    topo = tomllib.loads(d.topology.read_text())
    cells = [(c, r) for rule in topo["shard_rules"] for c in rule["categories"] for r in rule["regions"]]
    assert len(cells) == len(set(cells)) == 60
    assert [n["name"] for n in topo["nodes"]] == [f"node-{i:02d}" for i in range(5)]
    with gzip.open(d.catalog, "rt") as f:
        rows = f.read().splitlines()[1:]
    assert len(rows) == 6000
    subs = {c for c, _ in cells}
    # Every sku's category is one of the rules' sub-categories, and every
    # real product is still there under its own sku.
    assert all(r.split(",")[1] in subs for r in rows)
    real = deployment.read_catalog()
    assert {p["sku"] for p in real} <= {r.split(",", 1)[0] for r in rows}
    # The trace only asks for skus of the catalog.
    skus = {r.split(",", 1)[0] for r in rows}
    with gzip.open(d.trace, "rt") as f:
        trace = f.read().splitlines()[1:]
    assert trace and all(line.split(",")[1] in skus for line in trace)
    # The same parameters give the same files; the manifest says so.
    assert d.current() and m["trace_lines"] == len(trace)


def test_scale_harness_runs_small(tmp_path):
    out = tmp_path / "scale"
    r = subprocess.run(
        [sys.executable, str(HERE / "run.py"), "--shards", "200", "--skus", "20000", "--nodes", "4",
         "--proxies", "2", "--minutes", "1", "--bin-dir", bins(), "--no-build", "--out", str(out),
         "--timeout-minutes", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["requests"] > 100 and s["failed_requests"] == 0, s
    assert set(s["peak_rss_bytes"]) == {"sync", "forecaster", "proxy", "proxy-2"}
    assert all(v and v > 0 for v in s["peak_rss_bytes"].values())
    assert s["forecaster_cycles"]["cycles_total"] > 0
    assert s["manager_round"]["count"] > 0 and s["manager_round"]["p99_ms"] is not None
    # Every phase of every round is in its histogram (a round may end
    # between the two being read); the plan takes time.
    ph, rounds = s["manager_round_phases"], s["manager_round"]["count"]
    assert all(abs(ph[k]["count"] - rounds) <= 1 for k in ph), ph
    assert ph["plan"]["mean_ms"] > 0 and ph["observe"]["mean_ms"] > 0, ph
    assert s["proxies_converged_at_end"], s["proxy_table_versions_at_end"]
    assert all(v["count"] > 0 for v in s["proxy_table_apply"].values())
    assert s["prefetch"]["orders_done"] > 0 and s["prefetch"]["bytes"] > 0
    assert (out / "summary.md").read_text().startswith("Scale run")
