#!/usr/bin/env python3
"""A proxy's memory by component, from differences: one idle
shardcast-proxy per configuration, side by side, each measured after
/ready (VmRSS) and at its peak (VmHWM).

    benches/scale/proxy_memory.py --deployment DIR/deployment --bin-dir BIN

Configurations (the scale deployment's topology and catalog, and the
shipped demo's):

- demo: 14 shards, 3 nodes, the 4,877 real skus (conf/proxy-demo.toml);
- catalog: the demo's topology with the deployment's catalog (its skus'
  sub-categories are in no shard there, so they route by hash);
- shards: the deployment's topology (shards by rule, its nodes) with the
  real 4,877-sku catalog;
- both: the deployment's topology and catalog (what the scale run runs).

catalog − demo is what the skus cost, shards − demo what the shards and
nodes cost (table, per-shard stats, health state), both − demo the two
together. Nodes are not started: health checks fail, which costs nothing
here. Python standard library only.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benches"))
from harness import free_port  # noqa: E402


def dump(d):
    # scripts/stack's TOML writer (the launcher is a script, not a module).
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("stack", str(ROOT / "scripts/stack"))
    spec = importlib.util.spec_from_loader("stack", loader)
    m = importlib.util.module_from_spec(spec)
    loader.exec_module(m)
    return m.dump_toml(d)


def status(pid):
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS"):
            out[k] = int(v.split()[0]) * 1024
    return out


def measure(exe, conf, name, tmp, settle_s):
    base = tomllib.loads((ROOT / "conf/proxy-demo.toml").read_text())
    base["topology"] = str(conf["topology"])
    base["catalog"]["csv"] = str(conf["catalog"])
    admin = free_port()
    base["listen"] = {"http": [f"127.0.0.1:{free_port()}"], "admin": f"127.0.0.1:{admin}", "threads": 1}
    base.pop("telemetry", None)
    base.pop("dashboard", None)
    path = tmp / f"{name}.toml"
    path.write_text(dump(base) + "\n")
    log = open(tmp / f"{name}.log", "w")
    t0 = time.monotonic()
    p = subprocess.Popen([str(exe), "-c", str(path), "--upgrade-sock", str(tmp / f"{name}.sock")],
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if p.poll() is not None:
                raise SystemExit(f"proxy-memory: {name} exited; see {tmp / (name + '.log')}")
            if time.monotonic() - t0 > 600:
                raise SystemExit(f"proxy-memory: {name} not ready in 600 s")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:  # noqa: BLE001 — not yet
                pass
            time.sleep(0.5)
        ready_s = time.monotonic() - t0
        time.sleep(settle_s)
        return {"ready_s": round(ready_s, 1), **status(p.pid)}
    finally:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deployment", required=True, help="a scale run's DIR/deployment")
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after /ready before reading")
    ap.add_argument("--out", help="write the results here (JSON)")
    a = ap.parse_args()
    d = Path(a.deployment)
    demo = {"topology": ROOT / "conf/topology.toml", "catalog": ROOT / "data/online_retail/catalog.csv.gz"}
    confs = {
        "demo": demo,
        "catalog": {"topology": demo["topology"], "catalog": d / "catalog.csv.gz"},
        "shards": {"topology": d / "topology.toml", "catalog": demo["catalog"]},
        "both": {"topology": d / "topology.toml", "catalog": d / "catalog.csv.gz"},
    }
    exe = Path(a.bin_dir) / "shardcast-proxy"
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, conf in confs.items():
            res[name] = measure(exe, conf, name, Path(tmp), a.settle)
            print(f"proxy-memory: {name}: {json.dumps(res[name])}", file=sys.stderr, flush=True)
    mib = lambda x: x / 2**20
    rows = [("demo (14 shards, 4,877 skus)", res["demo"]),
            ("+ the deployment's catalog", res["catalog"]),
            ("+ the deployment's shards", res["shards"]),
            ("both (the scale run's proxy)", res["both"])]
    print("| proxy | ready after | RSS after ready | peak RSS | over demo (RSS) |")
    print("|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['ready_s']} s | {mib(r['VmRSS']):,.0f} MiB | {mib(r['VmHWM']):,.0f} MiB "
              f"| {mib(r['VmRSS'] - res['demo']['VmRSS']):+,.0f} MiB |")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
