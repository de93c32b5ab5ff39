#!/usr/bin/env python3
"""Instructions per request of shardcast-proxy binaries, under callgrind.

Instruction counts do not move with the machine's noise (they repeat
within 1 %), so this is how two builds of the request path are compared
on a shared machine. The job: GET /inventory/{sku}, a random sku out of
100,000 per request, four upstream nodes (one nginx worker), one proxy
worker thread, keep-alive on both sides; h2load drives WARMUP requests,
callgrind's counters are zeroed, then exactly REQUESTS requests over
CONNECTIONS connections, and the counters are dumped. Background work
(health checks, telemetry export to a file) is counted as it runs.

Usage: benches/callgrind/run.py BINARY [BINARY ...]
           [--requests 10000] [--warmup 1000] [--connections 16] [--keep DIR]
Prints user-space instructions per request for each binary, and each one's
ratio to the first.
"""
import argparse
import glob
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import free_port, origin_conf, wait_port  # noqa: E402




def h2load(port, n, conns, uris):
    out = subprocess.run(
        ["h2load", "--h1", "-n", str(n), "-c", str(conns), "-m", "1", "-i", str(uris)],
        capture_output=True, text=True, timeout=600,
    ).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if not m:
        raise SystemExit(f"h2load: {out}")
    return int(m.group(4)), int(m.group(5))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--keep", help="copy the callgrind profiles here (for callgrind_annotate)")
    a = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "h2load", "nginx"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: apt-get install valgrind nghttp2-client nginx")
    tmp = Path(tempfile.mkdtemp(prefix="shardcast-callgrind-"))
    procs = []
    results = []
    try:
        ports = [free_port() for _ in range(4)]
        conf = origin_conf(tmp, ports)
        procs.append(subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)]))
        for p in ports:
            wait_port(p)
        rng = random.Random(7)
        for b in a.binaries:
            port, admin = free_port(), free_port()
            uris = tmp / "uris.txt"
            uris.write_text("".join(f"http://127.0.0.1:{port}/inventory/S{rng.randrange(100000)}\n"
                                    for _ in range(a.requests + a.warmup)))
            nodes = "\n".join(f'[[nodes]]\nname = "n{i}"\naddress = "127.0.0.1:{p}"\ncapacity = 100\n'
                              for i, p in enumerate(ports))
            shards = "".join(f'[[shards]]\nid = "s{i}"\ncategories = ["C{i}"]\nregions = ["UK"]\n'
                             for i in range(4))
            (tmp / "p.toml").write_text(f"""
replication_factor = 1
[listen]
http = ["127.0.0.1:{port}"]
admin = "127.0.0.1:{admin}"
threads = 1
{nodes}
{shards}
[[routes]]
name = "inventory"
path = "/inventory/{{sku}}"
default_region = "UK"
[telemetry]
sink = "file:{tmp}/telemetry.jsonl"
interval_s = 1
""")
            out = tmp / f"callgrind.{len(results)}"
            vg = subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no",
                 b, "-c", str(tmp / "p.toml"), "--upgrade-sock", str(tmp / "up.sock")],
                stdout=subprocess.DEVNULL, stderr=open(tmp / "vg.log", "a"),
                env=dict(os.environ, RUST_LOG="warn"))
            procs.append(vg)
            wait_port(port, 120)
            ok, failed = h2load(port, a.warmup, a.connections, uris)
            subprocess.run(["callgrind_control", "-z", str(vg.pid)], check=True, capture_output=True)
            ok, failed = h2load(port, a.requests, a.connections, uris)
            subprocess.run(["callgrind_control", "-d", str(vg.pid)], check=True, capture_output=True)
            vg.terminate()
            vg.wait(60)
            total = 0
            for f in glob.glob(f"{out}.*"):
                for line in open(f):
                    if line.startswith("summary:") or line.startswith("totals:"):
                        total = max(total, int(line.split()[1]))
            results.append((b, ok, failed, total))
            if a.keep:
                os.makedirs(a.keep, exist_ok=True)
                for f in glob.glob(f"{out}.*"):
                    shutil.copy(f, a.keep)
        base = results[0][3] / max(results[0][1], 1)
        print(f"\n{a.requests} requests over {a.connections} connections after {a.warmup} warm-up\n")
        print("| binary | succeeded | failed | instructions / request | ÷ first |")
        print("|---|---:|---:|---:|---:|")
        for b, ok, failed, total in results:
            per = total / max(ok, 1)
            print(f"| {b} | {ok} | {failed} | {per:,.0f} | {per / base:.3f} |")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
