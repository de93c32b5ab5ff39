#!/usr/bin/env python3
"""Instructions per request of shardcast-proxy binaries, under callgrind.

Instruction counts do not move with the machine's noise (they repeat
within 1 %), so this is how two builds of the request path are compared
on a shared machine. The job (`harness.shardcast_conf`, shared with
`benches/peers/run.py --callgrind`): GET /inventory/{sku}, a random sku out
of 100,000 per request, looked up in a 100,000-sku catalog, four shards of
two replicas (P2C) on four upstream nodes (one nginx worker), one proxy
worker thread, keep-alive on both sides; h2load drives WARMUP requests,
callgrind's counters are zeroed, then exactly REQUESTS requests over
CONNECTIONS connections, and the counters are dumped. Background work
(health checks, telemetry export to a file) is counted as it runs.

Usage: benches/callgrind/run.py BINARY [BINARY ...]
           [--requests 10000] [--warmup 1000] [--connections 16] [--keep DIR]
           [--no-catalog] [--rf 2]
Prints user-space instructions per request for each binary, and each one's
ratio to the first.
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import (SHARDCAST_BACKGROUND, callgrind_count, free_port, origin_conf,  # noqa: E402
                     shardcast_conf, uris_file, wait_port)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rf", type=int, default=2, help="replicas per shard")
    ap.add_argument("--no-catalog", action="store_true", help="every sku by the hash fallback")
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
        for i, b in enumerate(a.binaries):
            port, admin = free_port(), free_port()
            uris = uris_file(tmp / "uris.txt", port, a.requests + a.warmup)
            cfg = shardcast_conf(tmp, port, admin, ports, catalog=not a.no_catalog, rf=a.rf)
            ok, failed, total, bg = callgrind_count(
                [b, "-c", str(cfg), "--upgrade-sock", str(tmp / "up.sock")], port, uris,
                tmp / f"callgrind.{i}", a.warmup, a.requests, a.connections, keep=a.keep,
                log=open(tmp / "vg.log", "a"), background=SHARDCAST_BACKGROUND)
            results.append((b, ok, failed, total, bg))
        base = results[0][3] / max(results[0][1], 1)
        print(f"\n{a.requests} requests over {a.connections} connections after {a.warmup} warm-up\n")
        print("| binary | succeeded | failed | instructions / request | ÷ first "
              "| of which background loops | request path | ÷ first |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        path0 = (results[0][3] - results[0][4]) / max(results[0][1], 1)
        for b, ok, failed, total, bg in results:
            per, bgr = total / max(ok, 1), bg / max(ok, 1)
            print(f"| {b} | {ok} | {failed} | {per:,.0f} | {per / base:.3f} | {bgr:,.0f} "
                  f"| {per - bgr:,.0f} | {(per - bgr) / path0:.3f} |")
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
