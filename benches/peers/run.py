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

With --threads N every proxy runs N workers (nginx N worker processes,
HAProxy N threads, shardcast and the minimal Pingora proxy N threads).

With --callgrind, instead: user-space instructions per request under
valgrind's callgrind for shardcast, the minimal Pingora proxy (same
allocator, mimalloc), nginx and HAProxy doing the same job (harness.py:
GET /inventory/{sku}, a random sku of 100,000, four upstream nodes, sticky
by sku, one worker, keep-alive both sides; 1,000 warm-up requests, counters
zeroed, exactly 10,000 requests over 16 connections), and the ratios. These
counts repeat within 1 % on a loaded machine; CPU time does not.

With --modes h1:64,h1:2000,h2c:32x8 every round measures every mode
(wrk over N HTTP/1.1 connections; h2load over C cleartext HTTP/2
connections of M streams each) on every target, modes and targets
rotated per round; the load average is recorded beside each measurement
and the per-round CPU ratios to the minimal Pingora proxy are printed.
The minimal Pingora proxy serves h2c too (MINIMAL_ARGS=--timeouts: with
shardcast's upstream timeouts).

Beside CPU per request every mode prints where it went: user and system
µs per request apart, voluntary and involuntary context switches and
minor page faults per request (summed over the proxy's threads), and the
number of threads. With --syscalls each measurement also counts the
proxy's system calls by kind per request (`perf stat` on the syscall
tracepoints, EAGAIN returns of reads and writes apart); the tracepoints
cost CPU, so take CPU figures from a run without it.

Usage: benches/peers/run.py [--rounds 3] [--seconds 8] [--connections 32] [--threads 1]
                            [--modes h1:64,h1:2000,h2c:32x8] [--response-headers] [--syscalls]
       benches/peers/run.py --callgrind [--requests 10000] [--warmup 1000] [--keep DIR]
Only loopback addresses are used; every run is bounded by --seconds or
--requests.
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
from harness import (SHARDCAST_BACKGROUND, callgrind_count, free_port, haproxy_conf, nginx_proxy_conf,  # noqa: E402
                     origin_conf, shardcast_conf, uris_file, wait_port)

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/shardcast/target"))
TICK = os.sysconf("SC_CLK_TCK")




def cpu_ticks(pid):
    """(utime, stime) of a process, every thread's, in clock ticks, and its
    minor page faults."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]), int(parts[12]), int(parts[7])


def ctx_switches(pid):
    """(voluntary, involuntary) context switches summed over the threads
    alive now, and their number (a thread that ended takes its count)."""
    vol = invol = n = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0, 0
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
            n += 1
        except OSError:
            pass
    return vol, invol, n


def tree_counters(pids):
    """utime, stime (ticks), voluntary and involuntary context switches,
    threads, minor page faults, summed over `pids`."""
    out = [0, 0, 0, 0, 0, 0]
    for p in pids:
        u, s, f = cpu_ticks(p)
        v, i, n = ctx_switches(p)
        for k, x in enumerate((u, s, v, i, n, f)):
            out[k] += x
    return out


def children(pid):
    out = [pid]
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


# System calls whose EAGAIN returns are counted apart (a read that finds
# nothing, a write the socket does not take).
EAGAIN_CALLS = ("read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg", "accept4")


def perf_syscalls(pids, seconds, out):
    """Start counting the system calls of `pids` (every thread) for about
    `seconds` of load: `perf stat` on the syscall entry tracepoints, and on
    the exit tracepoints of EAGAIN_CALLS filtered to EAGAIN. It counts from
    before the load starts to after it ends (the idle moments add only the
    background loops' few calls a second)."""
    events = ["-e", "syscalls:sys_enter_*"]
    for c in EAGAIN_CALLS:
        events += ["-e", f"syscalls:sys_exit_{c}", "--filter", "ret == -11"]
    p = subprocess.Popen(["perf", "stat", "-x,", "-o", str(out), *events, "-p", ",".join(map(str, pids)),
                          "--", "sleep", str(seconds + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # attached before the load starts
    return p


def perf_result(p, out):
    """{syscall: count} of a finished `perf_syscalls`; EAGAIN returns as
    `<call> EAGAIN`."""
    p.wait(timeout=120)
    counts = {}
    for line in out.read_text().splitlines():
        f = line.split(",")
        if len(f) < 3 or not f[0].strip().isdigit():
            continue
        n, ev = int(f[0]), f[2]
        if ev.startswith("syscalls:sys_enter_"):
            k = ev.removeprefix("syscalls:sys_enter_")
            counts[k] = counts.get(k, 0) + n
        elif ev.startswith("syscalls:sys_exit_"):
            k = ev.removeprefix("syscalls:sys_exit_") + " EAGAIN"
            counts[k] = counts.get(k, 0) + n
    return counts


def print_syscalls(rows):
    """System calls per request by kind (median over rounds), every kind
    that any target makes at least once per 100 requests."""
    per = {}
    for n, v in rows:
        runs = [x for x in v if "syscalls" in x]
        if not runs:
            continue
        kinds = {k for x in runs for k in x["syscalls"]}
        per[n] = {k: statistics.median([x["syscalls"].get(k, 0) / max(x["requests"], 1) for x in runs])
                  for k in kinds}
    if not per:
        return
    kinds = sorted({k for d in per.values() for k, c in d.items() if c >= 0.01},
                   key=lambda k: -max(d.get(k, 0) for d in per.values()))
    names = list(per)
    print("\nsystem calls per request (perf stat on the syscall tracepoints, medians of the rounds)")
    print("| call | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    print("| **all** | " + " | ".join(
        f"**{sum(c for k, c in per[n].items() if not k.endswith('EAGAIN')):.2f}**" for n in names) + " |")
    for k in kinds:
        print(f"| {k} | " + " | ".join(f"{per[n].get(k, 0):.3f}" for n in names) + " |")


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
        capture_output=True, text=True, env=env, timeout=seconds + 60,
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


def h2load_h2c(port, seconds, conns, streams, uris):
    """Cleartext HTTP/2 (prior knowledge): `conns` connections with
    `streams` concurrent streams each, for `seconds`. h2load reports no
    percentiles: p50 is its mean request time, p99 its max."""
    out = subprocess.run(
        ["h2load", "-c", str(conns), "-m", str(streams), "-D", str(seconds), "-i", str(uris)],
        capture_output=True, text=True, timeout=seconds + 60,
    ).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if not m:
        raise SystemExit(f"h2load on port {port}: {out[-2000:]}")
    st = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    t = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)

    def ms(v):
        n = float(re.match(r"[\d.]+", v).group(0))
        return n * (1e-3 if v.endswith("us") else 1e3 if v.endswith("s") and not v.endswith("ms") else 1.0)
    done = int(m.group(4))
    return {
        "requests": done,
        "rps": done / seconds,
        "p50": ms(t.group(3)) if t else float("nan"),
        "p99": ms(t.group(2)) if t else float("nan"),
        "non2xx": int(m.group(5)) + (int(st.group(3)) + int(st.group(4)) if st else 0),
        "sockerr": "",
    }


def parse_mode(text):
    """`h1:N` (wrk, N HTTP/1.1 connections) or `h2c:CxM` (h2load, C
    connections of M streams)."""
    kind, _, arg = text.partition(":")
    if kind == "h1" and arg.isdigit():
        return ("h1", int(arg), 1)
    if kind == "h2c" and re.fullmatch(r"\d+x\d+", arg):
        c, m = arg.split("x")
        return ("h2c", int(c), int(m))
    raise SystemExit(f"--modes: `{text}` is neither h1:N nor h2c:CxM")


def mode_name(mode):
    kind, c, m = mode
    return f"h1 {c} conns" if kind == "h1" else f"h2c {c}x{m}"


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=32, help="h1 connections when --modes is not given")
    ap.add_argument("--modes", help="comma-separated h1:N and h2c:CxM (default h1:CONNECTIONS); "
                    "every round measures every mode on every target")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="workers per proxy")
    ap.add_argument("--response-headers", action="store_true",
                    help="shardcast adds its x-shardcast-* headers (the peers add none)")
    ap.add_argument("--syscalls", action="store_true",
                    help="also count each proxy's system calls by kind per request (perf stat on the "
                    "syscall tracepoints; their cost is in that run's CPU figures, so take CPU from a run without)")
    ap.add_argument("--callgrind", action="store_true", help="instructions per request instead")
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--keep", help="--callgrind: copy the profiles here")
    ap.add_argument("--only", help="--callgrind: comma-separated subset of targets")
    a = ap.parse_args()
    if a.callgrind:
        # Measures the binaries as built (SHARDCAST_BIN, MINIMAL_BIN or the
        # release builds in CARGO_TARGET_DIR); never builds.
        return callgrind_peers(a)
    modes = [parse_mode(m) for m in (a.modes or f"h1:{a.connections}").split(",")]
    for tool in ("wrk", "nginx", "haproxy") + (("h2load",) if any(m[0] == "h2c" for m in modes) else ()):
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
        path_lines = paths.read_text().split()
        # Origins: one nginx worker serving three node ports with a fixed body.
        origin_ports = [free_port() for _ in range(3)]
        conf = origin_conf(tmp, origin_ports, body='{{"node":{i},"stock":12,"price":2.55}}')
        spawn(["nginx", "-c", str(conf), "-p", str(tmp)])
        for p in origin_ports:
            wait_port(p)
        direct_port = origin_ports[0]

        # nginx and HAProxy: consistent hash on the sku; h2c on a port of
        # its own (both take prior-knowledge HTTP/2 only on a port set so).
        ngx_port, ngx_h2c = free_port(), free_port()
        nginx = spawn(["nginx", "-c", str(nginx_proxy_conf(tmp, ngx_port, origin_ports, a.threads, ngx_h2c)),
                       "-p", str(tmp)])
        hap_port, hap_h2c = free_port(), free_port()
        hap = spawn(["haproxy", "-f", str(haproxy_conf(tmp, hap_port, origin_ports, a.threads, hap_h2c))])

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
response_headers = {"true" if a.response_headers else "false"}
[listen]
http = ["127.0.0.1:{sc_port}"]
admin = "127.0.0.1:{sc_admin}"
threads = {a.threads}
[limits]
max_connections_per_client = 10000
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
        sc = spawn([os.environ.get("SHARDCAST_BIN", str(TARGET / "release/shardcast-proxy")),
                    "-c", str(tmp / "shardcast.toml"), "--upgrade-sock", str(tmp / "upgrade.sock")],
                   env=dict(os.environ, RUST_LOG="warn"))
        # SHARDCAST_OLD_BIN: another build beside it (before/after in one run).
        old = None
        if os.environ.get("SHARDCAST_OLD_BIN"):
            old_port, old_admin = free_port(), free_port()
            cfg = (tmp / "shardcast.toml").read_text().replace(f"127.0.0.1:{sc_port}", f"127.0.0.1:{old_port}")
            (tmp / "old.toml").write_text(cfg.replace(f"127.0.0.1:{sc_admin}", f"127.0.0.1:{old_admin}")
                                          .replace("telemetry.jsonl", "telemetry-old.jsonl"))
            old = spawn([os.environ["SHARDCAST_OLD_BIN"], "-c", str(tmp / "old.toml"),
                         "--upgrade-sock", str(tmp / "upgrade-old.sock")], env=dict(os.environ, RUST_LOG="warn"))
        # The smallest Pingora proxy doing the same job: shardcast's own
        # overhead is the difference. h2c on the same port, as shardcast;
        # MINIMAL_ARGS="--timeouts" gives it shardcast's upstream timeouts.
        min_port = free_port()
        mini = spawn([os.environ.get("MINIMAL_BIN", str(TARGET / "release/examples/minimal_pingora")),
                      "--threads", str(a.threads), *os.environ.get("MINIMAL_ARGS", "").split(), "--h2c",
                      f"127.0.0.1:{min_port}"]
                     + [f"127.0.0.1:{p}" for p in origin_ports])
        for p in (ngx_port, ngx_h2c, hap_port, hap_h2c, sc_port, min_port):
            wait_port(p)
        time.sleep(1)

        # (name, HTTP/1 port, h2c port, pid); the origin speaks no h2c.
        targets = [("direct", direct_port, None, None), ("shardcast", sc_port, sc_port, sc.pid),
                   ("nginx", ngx_port, ngx_h2c, nginx.pid), ("haproxy", hap_port, hap_h2c, hap.pid),
                   ("pingora-min", min_port, min_port, mini.pid)]
        if old:
            wait_port(old_port)
            targets.append(("shardcast-old", old_port, old_port, old.pid))
        uris = {}
        for _, _, h2p, _ in targets:
            if h2p:
                uris[h2p] = tmp / f"uris-{h2p}.txt"
                uris[h2p].write_text("".join(f"http://127.0.0.1:{h2p}{x}\n" for x in path_lines))

        def measure(mode, port, seconds):
            kind, c, m = mode
            if kind == "h1":
                return wrk(port, seconds, c, paths)
            return h2load_h2c(port, seconds, c, m, uris[port])

        def runnable(mode, t):
            return t[1] if mode[0] == "h1" else t[2]
        # warm-up
        for mode in modes:
            for t in targets:
                if runnable(mode, t):
                    measure(mode, runnable(mode, t), 2)
        results = {(mode, t[0]): [] for mode in modes for t in targets}
        loads = {mode: [] for mode in modes}
        for r in range(a.rounds):
            for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                order = targets[r % len(targets):] + targets[:r % len(targets)]
                for t in order:
                    name, pid, port = t[0], t[3], runnable(mode, t)
                    if not port:
                        continue
                    pids = children(pid) if pid else []
                    loads[mode].append(loadavg())
                    perf = perf_syscalls(pids, a.seconds, tmp / "perf.csv") if a.syscalls and pids else None
                    c0 = tree_counters(pids)
                    res = measure(mode, port, a.seconds)
                    c1 = tree_counters(pids)
                    if perf:
                        res["syscalls"] = perf_result(perf, tmp / "perf.csv")
                    per = [(y - x) / max(res["requests"], 1) for x, y in zip(c0, c1)]
                    nan = float("nan")
                    res["user_us"] = per[0] / TICK * 1e6 if pids else nan
                    res["sys_us"] = per[1] / TICK * 1e6 if pids else nan
                    res["cpu_us"] = res["user_us"] + res["sys_us"]
                    res["vcs"], res["ivcs"] = (per[2], per[3]) if pids else (nan, nan)
                    res["threads"] = c1[4] if pids else 0
                    res["faults"] = per[5] if pids else nan
                    results[(mode, name)].append(res)
                    print(f"round {r + 1} {mode_name(mode):14} {name:13} {res['rps']:9.0f} req/s  "
                          f"p50 {res['p50']:.3f} ms  p99 {res['p99']:.3f} ms  cpu {res['cpu_us']:.1f} us/req "
                          f"(user {res['user_us']:.1f} sys {res['sys_us']:.1f}, "
                          f"cs {res['vcs']:.2f}+{res['ivcs']:.2f})  "
                          f"non2xx {res['non2xx']} {res['sockerr']}  load {loads[mode][-1]:.1f}", flush=True)

        print()
        print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}  rounds: {a.rounds} x {a.seconds}s, interleaved, "
              f"{a.threads} worker(s) each; CPU = utime+stime of the proxy's processes ÷ requests")
        for mode in modes:
            rows = [(t[0], results[(mode, t[0])]) for t in targets if results[(mode, t[0])]]
            keys = ("rps", "p50", "p99", "cpu_us", "user_us", "sys_us", "vcs", "ivcs", "threads", "faults")
            med = {n: {k: statistics.median([x[k] for x in v]) for k in keys} for n, v in rows}
            ng = med["nginx"]
            lo, hi = min(loads[mode]), max(loads[mode])
            print(f"\n{mode_name(mode)} (load average {lo:.1f}–{hi:.1f} during the runs)")
            lat = "p50 ms | p99 ms" if mode[0] == "h1" else "mean ms | max ms"
            print(f"| target | req/s | {lat} | CPU µs/req | CPU ÷ nginx | CPU ÷ minimal Pingora "
                  f"| per round ÷ minimal Pingora |")
            print("|---|---:|---:|---:|---:|---:|---:|---|")
            for n, v in rows:
                m = med[n]
                if n == "direct":
                    print(f"| {n} | {m['rps']:.0f} | {m['p50']:.3f} | {m['p99']:.3f} | – | – | – | – |")
                    continue
                per_round = " / ".join(f"{x['cpu_us'] / y['cpu_us']:.2f}"
                                       for x, y in zip(v, results[(mode, "pingora-min")]))
                print(f"| {n} | {m['rps']:.0f} | {m['p50']:.3f} | {m['p99']:.3f} | {m['cpu_us']:.1f} | "
                      f"{m['cpu_us'] / ng['cpu_us']:.2f} | {m['cpu_us'] / med['pingora-min']['cpu_us']:.2f} "
                      f"| {per_round} |")
            # Where the CPU went: user space or the kernel, and how often
            # the proxy's threads slept (voluntary) or were preempted.
            print(f"\n| target | user µs/req | sys µs/req | sys ÷ minimal Pingora | voluntary ctx switches / req "
                  f"| involuntary / req | page faults / req | threads |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|")
            for n, v in rows:
                if n == "direct":
                    continue
                m = med[n]
                print(f"| {n} | {m['user_us']:.1f} | {m['sys_us']:.1f} | "
                      f"{m['sys_us'] / med['pingora-min']['sys_us']:.2f} | {m['vcs']:.3f} | {m['ivcs']:.3f} "
                      f"| {m['faults']:.3f} | {m['threads']:.0f} |")
            if a.syscalls:
                print_syscalls(rows)
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


def callgrind_peers(a):
    """Instructions per request of every proxy doing the same job."""
    for tool in ("valgrind", "callgrind_control", "h2load", "nginx", "haproxy"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: apt-get install valgrind nghttp2-client nginx haproxy")
    tmp = Path(tempfile.mkdtemp(prefix="shardcast-peers-cg-"))
    origin = None
    rows = []
    try:
        ports = [free_port() for _ in range(4)]
        origin = subprocess.Popen(["nginx", "-c", str(origin_conf(tmp, ports)), "-p", str(tmp)])
        for p in ports:
            wait_port(p)
        sc = os.environ.get("SHARDCAST_BIN", str(TARGET / "release/shardcast-proxy"))
        mini = os.environ.get("MINIMAL_BIN", str(TARGET / "release/examples/minimal_pingora"))
        targets = {
            "shardcast": lambda port: [sc, "-c", str(shardcast_conf(tmp, port, free_port(), ports)),
                                       "--upgrade-sock", str(tmp / f"up-{port}.sock")],
            "pingora-min": lambda port: [mini, f"127.0.0.1:{port}", *(f"127.0.0.1:{p}" for p in ports)],
            # the same with shardcast's upstream timeouts (Pingora's timers)
            "pingora-min+timeouts": lambda port: [mini, "--timeouts", f"127.0.0.1:{port}",
                                                  *(f"127.0.0.1:{p}" for p in ports)],
            "nginx": lambda port: ["nginx", "-c", str(nginx_proxy_conf(tmp, port, ports)), "-p", str(tmp)],
            "haproxy": lambda port: ["haproxy", "-db", "-f", str(haproxy_conf(tmp, port, ports))],
        }
        default = list(targets)
        # Pingora's own options tried on the floor (--only): its timeouts
        # on Tokio's timer; a larger upstream keep-alive pool (shardcast's).
        targets["pingora-min+timeouts+tokio-timers"] = lambda port: [
            mini, "--timeouts", "--tokio-timers", f"127.0.0.1:{port}", *(f"127.0.0.1:{p}" for p in ports)]
        targets["pingora-min+pool1024"] = lambda port: [
            mini, "--pool", "1024", f"127.0.0.1:{port}", *(f"127.0.0.1:{p}" for p in ports)]
        only = a.only.split(",") if a.only else default
        for name in only:
            if name not in targets:
                raise SystemExit(f"--only: no target {name} (have {', '.join(targets)})")
        for name in only:
            port = free_port()
            uris = uris_file(tmp / "uris.txt", port, a.requests + a.warmup)
            ok, failed, total, bg = callgrind_count(
                targets[name](port), port, uris, tmp / f"cg.{name}", a.warmup, a.requests,
                16, keep=a.keep, log=open(tmp / "vg.log", "a"),
                background=SHARDCAST_BACKGROUND if name == "shardcast" else None)
            per, bgr = total / max(ok, 1), bg / max(ok, 1)
            rows.append((name, ok, failed, per, bgr))
            print(f"{name:20} {ok} ok {failed} failed  {per:,.0f} instructions/request "
                  f"({bgr:,.0f} in background loops)", flush=True)
        per = {n: p for n, _, _, p, _ in rows}
        print(f"\ndate: {time.strftime('%Y-%m-%d %H:%M %Z')}  {a.requests} requests over 16 "
              f"connections after {a.warmup} warm-up, one worker each, callgrind (user space)")
        print("| proxy | succeeded | failed | instructions / request | of which shardcast's background "
              "loops | ÷ minimal Pingora | ÷ minimal Pingora + timeouts | ÷ nginx | ÷ HAProxy |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

        def ratio(p, n, fmt):
            return format(p / per[n], fmt) if n in per else "–"
        for n, ok, failed, p, bgr in rows:
            print(f"| {n} | {ok} | {failed} | {p:,.0f} | {bgr:,.0f} | {ratio(p, 'pingora-min', '.3f')} "
                  f"| {ratio(p, 'pingora-min+timeouts', '.3f')} | {ratio(p, 'nginx', '.2f')} "
                  f"| {ratio(p, 'haproxy', '.2f')} |")
    finally:
        if origin:
            origin.terminate()
            origin.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
