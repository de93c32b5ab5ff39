#!/usr/bin/env python3
"""Idle-connection flood beside real traffic: shardcast vs nginx vs HAProxy.

For each proxy in turn (same origins, same machine, one worker each):
open N idle connections (they send nothing) from several loopback source
addresses, run wrk against the proxy while they are held, then wait until
the proxy has closed every idle one. Reports per proxy:

  - wrk's requests, non-2xx responses and socket errors while flooded;
  - how many idle connections were accepted and held, and how many were
    refused (reset at once);
  - the time from opening to the proxy's close, p50 and max;
  - the proxy's resident memory before, while holding them, and per idle
    connection ((held - before) / held).

Each proxy runs with its edge set the way an operator would: shardcast on
its defaults (10 s header deadline, per-client bound 512), nginx with
client_header_timeout 10s and keepalive_timeout 10s, HAProxy with timeout
http-request 10s and timeout client 10s.

Usage: benches/idle/run.py [--idle 8000] [--sources 16] [--seconds 6]
                           [--connections 32] [--no-build] [--only NAME]
Only loopback addresses are used; every wait is bounded.
"""
import argparse
import os
import re
import resource
import selectors
import shutil
import socket
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




def rss_kb(pid):
    """Resident memory of a process and its children (nginx's worker)."""
    total = 0
    pids = [pid]
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                pids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def open_idle(port, n, sources):
    """Open n connections that send nothing, round-robin over source addresses."""
    socks = []
    refused_at_connect = 0
    for i in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((f"127.0.0.{2 + i % sources}", 0))
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            refused_at_connect += 1
            s.close()
            continue
        s.setblocking(False)
        socks.append((s, time.time()))
    return socks, refused_at_connect


def wait_closed(socks, timeout):
    """Wait until the peer closes each socket: (reset at once, close times, still open)."""
    sel = selectors.DefaultSelector()
    for s, t0 in socks:
        sel.register(s, selectors.EVENT_READ, t0)
    reset, times = 0, []
    deadline = time.time() + timeout
    while sel.get_map() and time.time() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s, t0 = key.fileobj, key.data
            try:
                data = s.recv(1)
                if data:
                    continue  # a proxy that answers an idle connection (it should not)
                times.append(time.time() - t0)
            except ConnectionResetError:
                reset += 1
            except BlockingIOError:
                continue
            sel.unregister(s)
            s.close()
    left = len(sel.get_map())
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    return reset, times, left


def wrk(port, seconds, conns):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", f"http://127.0.0.1:{port}/inventory/85123A"],
        capture_output=True, text=True, timeout=seconds + 30,
    ).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": reqs,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=int, default=8000)
    ap.add_argument("--sources", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--only", action="append")
    a = ap.parse_args()
    for tool in ("wrk", "nginx", "haproxy"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: run scripts/setup")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.idle + 1000 > hard:
        raise SystemExit(f"--idle {a.idle} needs more than the open-file limit {hard} allows")
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "shardcast-proxy", "--bin", "shardcast-proxy"],
                       cwd=ROOT, check=True, env=dict(os.environ, CARGO_TARGET_DIR=str(TARGET)))
    tmp = Path(tempfile.mkdtemp(prefix="shardcast-idle-"))
    procs = []

    def spawn(cmd, **kw):
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp / "stderr.log", "a"), **kw)
        procs.append(p)
        return p

    results = {}
    try:
        origin_ports = [free_port() for _ in range(3)]
        conf = origin_conf(tmp, origin_ports)
        spawn(["nginx", "-c", str(conf), "-p", str(tmp)])
        for p in origin_ports:
            wait_port(p)

        def start_shardcast():
            port, admin = free_port(), free_port()
            nodes = "\n".join(f'[[nodes]]\nname = "n{i}"\naddress = "127.0.0.1:{p}"\ncapacity = 1000\n'
                              for i, p in enumerate(origin_ports))
            (tmp / "shardcast.toml").write_text(f"""
replication_factor = 2
[listen]
http = ["127.0.0.1:{port}"]
admin = "127.0.0.1:{admin}"
threads = 1
{nodes}
[[shards]]
id = "all"
categories = ["X"]
regions = ["UK"]
[[routes]]
name = "inventory"
path = "/inventory/{{sku}}"
default_region = "UK"
""")
            p = spawn([str(TARGET / "release/shardcast-proxy"), "-c", str(tmp / "shardcast.toml"),
                       "--upgrade-sock", str(tmp / "upgrade.sock")], env=dict(os.environ, RUST_LOG="warn"))
            return port, p

        def start_nginx():
            port = free_port()
            ups = "\n".join(f"server 127.0.0.1:{p};" for p in origin_ports)
            (tmp / "nginx.conf").write_text(f"""
worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
worker_rlimit_nofile {hard};
events {{ worker_connections {hard // 2}; }}
http {{
  access_log off;
  client_header_timeout 10s; keepalive_timeout 10s;
  upstream nodes {{ hash $uri consistent; {ups} keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ proxy_pass http://nodes; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}""")
            return port, spawn(["nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)])

        def start_haproxy():
            port = free_port()
            srv = "\n".join(f"  server n{i} 127.0.0.1:{p}" for i, p in enumerate(origin_ports))
            (tmp / "haproxy.cfg").write_text(f"""
global
  nbthread 1
  maxconn {hard // 2 - 100}
defaults
  mode http
  maxconn {hard // 2 - 100}
  timeout connect 1s
  timeout client 10s
  timeout http-request 10s
  timeout http-keep-alive 10s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  default_backend nodes
backend nodes
  balance uri
  hash-type consistent
{srv}
""")
            return port, spawn(["haproxy", "-f", str(tmp / "haproxy.cfg")])

        targets = [("shardcast", start_shardcast), ("nginx", start_nginx), ("haproxy", start_haproxy)]
        for name, start in targets:
            if a.only and name not in a.only:
                continue
            port, proc = start()
            wait_port(port)
            # warm up (upstream keep-alive, lazy allocations)
            wrk(port, 1, a.connections)
            time.sleep(0.5)
            before = rss_kb(proc.pid)
            t_open = time.time()
            socks, refused_connect = open_idle(port, a.idle, a.sources)
            opened_s = time.time() - t_open
            time.sleep(0.5)
            held_rss = rss_kb(proc.pid)
            load = wrk(port, a.seconds, a.connections)
            reset, times, left = wait_closed(socks, timeout=60)
            held = len(times)
            results[name] = {
                "load": load,
                "opened": len(socks),
                "opened_s": opened_s,
                "refused": reset + refused_connect,
                "held": held,
                "still_open_60s": left,
                "close_p50_s": statistics.median(times) if times else float("nan"),
                "close_max_s": max(times) if times else float("nan"),
                "rss_before_mb": before / 1024,
                "rss_held_mb": held_rss / 1024,
                "kb_per_idle": (held_rss - before) / max(held, 1),
            }
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        print(f"\n{a.idle} idle connections from {a.sources} loopback addresses, "
              f"wrk -t1 -c{a.connections} -d{a.seconds}s beside them\n")
        print("| proxy | wrk requests | non-2xx | socket errors | idle held | refused | close p50 s | close max s "
              "| still open at 60 s | RSS before MB | RSS held MB | KB per idle conn |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, r in results.items():
            l = r["load"]
            print(f"| {name} | {l['requests']} | {l['non2xx']} | {l['socket_errors']} | {r['held']} | {r['refused']} "
                  f"| {r['close_p50_s']:.1f} | {r['close_max_s']:.1f} | {r['still_open_60s']} "
                  f"| {r['rss_before_mb']:.1f} | {r['rss_held_mb']:.1f} | {r['kb_per_idle']:.1f} |")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if os.environ.get("KEEP_TMP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
