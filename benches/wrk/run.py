#!/usr/bin/env python3
"""Run wrk with each sku/region mix against a local shardcast proxy.

  benches/wrk/run.sh                                  # every mix, 5 s each, http://127.0.0.1:8080
  benches/wrk/run.sh --mixes spike,unknown -d 10 -c 32 -t 2
  benches/wrk/run.sh --url http://127.0.0.1:18080 -H 'accept: application/json' --markdown

Generates the mixes with make_paths.py when a file is missing (or with
--regen), then runs `wrk --latency -s benches/wrk/mix.lua URL -- FILE` once
per mix and prints one line per mix. Loopback targets only: this is a load
generator, and a typo must not point it at someone else's server. Duration,
connections and threads are bounded for the same reason. The node caches
keep what earlier mixes filled, so the order of --mixes matters for hit
ratios; --warmup S runs each mix for S seconds unrecorded first.
Python 3.11 standard library only.
"""
import argparse
import ipaddress
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from make_paths import MIXES  # noqa: E402

LIMITS = {"duration": (1, 120), "connections": (1, 256), "threads": (1, 4)}


def loopback_url(url):
    """The URL if every address its host resolves to is loopback; else SystemExit."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise SystemExit(f"run: {url!r} is not an http(s) URL")
    try:
        port = u.port or (443 if u.scheme == "https" else 80)
        infos = socket.getaddrinfo(u.hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError) as e:
        raise SystemExit(f"run: cannot resolve {u.hostname!r}: {e}")
    addrs = {i[4][0] for i in infos}
    bad = sorted(a for a in addrs if not ipaddress.ip_address(a.split("%")[0]).is_loopback)
    if not addrs or bad:
        raise SystemExit(f"run: refusing non-loopback target {url} ({', '.join(bad) or 'no address'}); "
                         "only 127.0.0.0/8 and ::1 are allowed")
    return url


def parse_summary(out):
    """The key=value pairs of mix.lua's `wrk-mix` line."""
    m = re.search(r"^wrk-mix (.*)$", out, re.M)
    if not m:
        return None
    return dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)


def run_wrk(a, mix, path, seconds):
    cmd = ["wrk", f"-t{a.threads}", f"-c{a.connections}", f"-d{seconds}s", "--latency",
           "--timeout", "5s", "-s", str(HERE / "mix.lua")]
    for h in a.header:
        cmd += ["-H", h]
    cmd += [a.url, "--", str(path)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 30)
    return cmd, p


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="proxy URL, loopback only")
    ap.add_argument("--mixes", default=",".join(MIXES), help=f"comma-separated from {','.join(MIXES)}")
    ap.add_argument("-d", "--duration", type=int, default=5, help="seconds per mix (1-120, default 5)")
    ap.add_argument("-c", "--connections", type=int, default=16, help="1-256 (default 16)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="wrk threads, 1-4 (default 2)")
    ap.add_argument("-H", "--header", action="append", default=[], help="extra request header, as for wrk")
    ap.add_argument("--warmup", type=int, default=0, help="unrecorded seconds per mix first (default 0)")
    ap.add_argument("--dir", type=Path, default=ROOT / "var/wrk", help="where the mixes are (default var/wrk)")
    ap.add_argument("--regen", action="store_true", help="regenerate the mixes even if present")
    ap.add_argument("--markdown", action="store_true", help="also print a markdown table")
    ap.add_argument("--verbose", action="store_true", help="print wrk's full output")
    a = ap.parse_args(argv)
    for k, (lo, hi) in LIMITS.items():
        v = getattr(a, k)
        if not lo <= v <= hi:
            ap.error(f"--{k} {v} outside {lo}..{hi}")
    if not 0 <= a.warmup <= LIMITS["duration"][1]:
        ap.error("--warmup outside 0..120")
    if a.threads > a.connections:
        ap.error("--threads must not exceed --connections")
    mixes = [m.strip() for m in a.mixes.split(",") if m.strip()]
    unknown = [m for m in mixes if m not in MIXES]
    if unknown:
        ap.error(f"unknown mix {', '.join(unknown)}; choose from {', '.join(MIXES)}")
    loopback_url(a.url)
    if not shutil.which("wrk"):
        raise SystemExit("run: wrk not found (scripts/setup installs it)")

    missing = [m for m in mixes if a.regen or not (a.dir / f"{m}.txt").is_file()]
    if missing:
        subprocess.run([sys.executable, str(HERE / "make_paths.py"), "--dir", str(a.dir),
                        "--mixes", ",".join(missing)], check=True)

    print(f"# wrk -t{a.threads} -c{a.connections} -d{a.duration}s against {a.url}, mixes from {a.dir}")
    print(f"{'mix':8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'sock err':>9} "
          f"{'hit ratio':>9}  top shards")
    rows = []
    failed = False
    for mix in mixes:
        path = a.dir / f"{mix}.txt"
        if a.warmup:
            run_wrk(a, mix, path, a.warmup)
        cmd, p = run_wrk(a, mix, path, a.duration)
        if a.verbose:
            print(p.stdout + p.stderr)
        s = parse_summary(p.stdout)
        if p.returncode != 0 or s is None:
            failed = True
            err = (p.stderr or p.stdout).strip().splitlines()
            print(f"{mix:8} wrk failed (exit {p.returncode}): {err[-1] if err else 'no output'}")
            continue
        nonok = int(s["non2xx"])
        reqs = int(s["requests"])
        pct = f"{nonok} ({100 * nonok / reqs:.1f}%)" if reqs else str(nonok)
        sock = sum(int(x) for x in s["socket_errors"].split("/"))
        top = ",".join(s["shards"].split(",")[:3])
        print(f"{mix:8} {float(s['rps']):9.0f} {float(s['p50_ms']):8.2f} {float(s['p99_ms']):8.2f} "
              f"{nonok:8d} {sock:9d} {s['hit_ratio']:>9}  {top}")
        rows.append((mix, s, pct, sock))
    if a.markdown and rows:
        print("\n| mix | req/s | p50 ms | p99 ms | non-2xx | socket errors | hit ratio | top shards |")
        print("|---|---|---|---|---|---|---|---|")
        for mix, s, pct, sock in rows:
            top = ", ".join(s["shards"].split(",")[:2])
            print(f"| {mix} | {float(s['rps']):.0f} | {float(s['p50_ms']):.2f} | {float(s['p99_ms']):.2f} "
                  f"| {pct} | {sock} | {s['hit_ratio']} | {top} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
