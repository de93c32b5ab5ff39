#!/usr/bin/env python3
"""Side-by-side routing benchmark: shardcast-proxy vs nginx vs HAProxy.

The same job for each: route GET /inventory/{sku}?region=R (a sku mix drawn
from the Online Retail II trace) to one of three origin nodes by sku, over
keep-alive upstream connections, one worker thread each. Direct-to-origin is
the floor. Targets run in interleaved rounds so they share the machine's
noise; the script prints req/s, p50/p99 latency, the proxy's CPU µs per
request (utime+stime from /proc over the run ÷ requests) and ratios to
nginx. shardcast runs with every data-plane feature on (telemetry to a file
sink, response headers, health checks, retries).

Usage: benches/peers/run.py [--rounds 3] [--seconds 8] [--connections 32]
Only loopback addresses are used; every run is bounded by --seconds.
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import free_port, origin_conf, wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/shardcast/target"))
TICK = os.sysconf("SC_CLK_TCK")




def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])  # utime + stime


def tree_ticks(pids):
    return sum(cpu_ticks(p) for p in pids)


def children(pid):
    out = [pid]
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def parse_latency(text, label):
    m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(port, seconds, conns, paths):
    env = dict(os.environ, SHARDCAST_PATHS=str(paths))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s",
         str(ROOT / "benches/wrk/skus.lua"), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, env=env, timeout=seconds + 30,
    ).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": reqs,
        "rps": rps,
        "p50": parse_latency(out, "50%"),
        "p99": parse_latency(out, "99%"),
        "non2xx": int(errs.group(1)) if errs else 0,
        "sockerr": sock.group(1) if sock else "",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    for tool in ("wrk", "nginx", "haproxy"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: run scripts/setup")
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "shardcast-proxy", "--bin", "shardcast-proxy",
                        "--example", "minimal_pingora"], cwd=ROOT, check=True,
                       env=dict(os.environ, CARGO_TARGET_DIR=str(TARGET)))
    tmp = Path(tempfile.mkdtemp(prefix="shardcast-peers-"))
    procs = []

    def spawn(cmd, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / "stderr.log", "a"), **kw)
        procs.append(p)
        return p

    try:
        paths = tmp / "paths.txt"
        subprocess.run([sys.executable, str(ROOT / "benches/wrk/make_paths.py"), "20000", str(paths)], check=True,
                       stdout=subprocess.DEVNULL)
        # Origins: one nginx worker serving three node ports with a fixed body.
        origin_ports = [free_port() for _ in range(3)]
        conf = origin_conf(tmp, origin_ports, body='{{"node":{i},"stock":12,"price":2.55}}')
        spawn(["nginx", "-c", str(conf), "-p", str(tmp)])
        for p in origin_ports:
            wait_port(p)
        direct_port = origin_ports[0]

        # nginx as the routing proxy: consistent hash on the sku.
        ngx_port = free_port()
        ups = "\n".join(f"server 127.0.0.1:{p};" for p in origin_ports)
        (tmp / "nginx.conf").write_text(f"""
worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream nodes {{ hash $sku consistent; {ups} keepalive 128; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{ngx_port} backlog=4096; keepalive_requests 1000000;
    location ~ ^/inventory/(?<sku>[^/?]+) {{
      proxy_pass http://nodes; proxy_http_version 1.1; proxy_set_header Connection "";
    }}
  }}
}}""")
        nginx = spawn(["nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)])

        # HAProxy: consistent hash on the path's sku segment.
        hap_port = free_port()
        srv = "\n".join(f"  server n{i} 127.0.0.1:{p}" for i, p in enumerate(origin_ports))
        (tmp / "haproxy.cfg").write_text(f"""
global
  nbthread 1
  tune.bufsize 16384
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{hap_port}
  default_backend nodes
backend nodes
  balance hash path,field(3,/)
  hash-type consistent
  default-server pool-purge-delay 60s
{srv}
""")
        hap = spawn(["haproxy", "-f", str(tmp / "haproxy.cfg")])

        # shardcast with its features on.
        sc_port, sc_admin = free_port(), free_port()
        nodes = "\n".join(
            f'[[nodes]]\nname = "n{i}"\naddress = "127.0.0.1:{p}"\ncapacity = 1000\n'
            for i, p in enumerate(origin_ports))
        shards = ""
        for region in ("UK", "INTL"):
            for c in ("SEASONAL", "LIGHTING", "KITCHEN_DINING", "BAGS_STORAGE", "PAPER_PARTY_KIDS",
                      "JEWELLERY_FASHION", "HOME_DECOR_OTHER"):
                shards += f'[[shards]]\nid = "{region}/{c}"\ncategories = ["{c}"]\nregions = ["{region}"]\n'
        (tmp / "shardcast.toml").write_text(f"""
replication_factor = 2
response_headers = true
[listen]
http = ["127.0.0.1:{sc_port}"]
admin = "127.0.0.1:{sc_admin}"
threads = 1
{nodes}
[[routes]]
name = "inventory"
path = "/inventory/{{sku}}"
region_query = "region"
default_region = "UK"
[catalog]
csv = "{ROOT}/data/online_retail/catalog.csv.gz"
[telemetry]
sink = "file:{tmp}/telemetry.jsonl"
interval_s = 1
{shards}
""")
        sc = spawn([str(TARGET / "release/shardcast-proxy"), "-c", str(tmp / "shardcast.toml"),
                    "--upgrade-sock", str(tmp / "upgrade.sock")], env=dict(os.environ, RUST_LOG="warn"))
        # The smallest Pingora proxy doing the same job: shardcast's own
        # overhead is the difference.
        min_port = free_port()
        mini = spawn([str(TARGET / "release/examples/minimal_pingora"), f"127.0.0.1:{min_port}"]
                     + [f"127.0.0.1:{p}" for p in origin_ports])
        for p in (ngx_port, hap_port, sc_port, min_port):
            wait_port(p)
        time.sleep(1)

        targets = [("direct", direct_port, None), ("shardcast", sc_port, sc.pid),
                   ("nginx", ngx_port, nginx.pid), ("haproxy", hap_port, hap.pid),
                   ("pingora-min", min_port, mini.pid)]
        # warm-up
        for name, port, _ in targets:
            wrk(port, 2, a.connections, paths)
        results = {t[0]: [] for t in targets}
        for r in range(a.rounds):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for name, port, pid in order:
                pids = children(pid) if pid else []
                c0 = tree_ticks(pids) if pids else 0
                res = wrk(port, a.seconds, a.connections, paths)
                c1 = tree_ticks(pids) if pids else 0
                res["cpu_us"] = (c1 - c0) / TICK * 1e6 / max(res["requests"], 1) if pids else float("nan")
                results[name].append(res)
                print(f"round {r + 1} {name:9} {res['rps']:9.0f} req/s  p50 {res['p50']:.3f} ms  "
                      f"p99 {res['p99']:.3f} ms  cpu {res['cpu_us']:.1f} us/req  non2xx {res['non2xx']} {res['sockerr']}",
                      flush=True)

        med = {n: {k: statistics.median([x[k] for x in v]) for k in ("rps", "p50", "p99", "cpu_us")}
               for n, v in results.items()}
        ng = med["nginx"]
        print()
        print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}  rounds: {a.rounds} x {a.seconds}s, "
              f"{a.connections} connections, wrk -t1, one worker each")
        print("| target | req/s | p50 ms | p99 ms | CPU µs/req | req/s ÷ nginx | CPU ÷ nginx |")
        print("|---|---|---|---|---|---|---|")
        for n in ("direct", "shardcast", "pingora-min", "nginx", "haproxy"):
            m = med[n]
            cpu_ratio = m["cpu_us"] / ng["cpu_us"] if n != "direct" else float("nan")
            print(f"| {n} | {m['rps']:.0f} | {m['p50']:.3f} | {m['p99']:.3f} | {m['cpu_us']:.1f} | "
                  f"{m['rps'] / ng['rps']:.2f} | {cpu_ratio:.2f} |")
        bad = sum(x["non2xx"] for v in results.values() for x in v)
        if bad:
            print(f"warning: {bad} non-2xx responses", file=sys.stderr)
    finally:
        for p in procs:
            try:
                p.send_signal(signal.SIGINT)
                p.wait(timeout=5)
            except Exception:
                p.kill()
        if os.environ.get("KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
