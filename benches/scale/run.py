#!/usr/bin/env python3
"""The scale harness: a storefront-sized deployment, built from the real
Online Retail II data scaled up, run end to end and measured.

    benches/scale/run.py --shards 10000 --skus 1000000 --nodes 24 --proxies 2 --minutes 5 --out DIR
    benches/scale/run.py --shards 200 --skus 20000 --nodes 4 --proxies 2 --minutes 1 --debug --no-build

1. Builds the deployment (benches/scale/deployment.py: catalog, topology by
   rule, demand history, trace; reused when the parameters match) under
   DIR/deployment.
2. Starts the whole system with scripts/stack on it: the provider seeded
   from the generated catalog, sync with one cache per node (embedded: the
   nodes in sync's process, each on its own port; redis-postgres: one
   `shardcast-sync node` process per node on Redis, PostgreSQL provider),
   the forecaster with the shard manager on the forecaster's replay clock
   (policy `forecast`, pre-fetch only what is forecast hot), N proxies.
3. Replays the trace slice through the proxies (benches/replay/replay.py,
   lines dealt round-robin to the proxies), aligned to the forecaster's
   clock, for --minutes.
4. Reads every process's /metrics, the proxies' /admin/history and peak
   RSS (VmHWM), writes DIR/summary.json and DIR/summary.md, and stops the
   stack.

Everything is bounded: the stack by --timeout-minutes, the replay by
--minutes. Python standard library only.
"""

import argparse
import datetime as dt
import gzip
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "benches/replay"))
import deployment  # noqa: E402
import replay  # noqa: E402

_spec = importlib.util.spec_from_file_location("replay_run", ROOT / "benches/replay/run.py")
replay_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replay_run)
prom, psum, get, get_json = replay_run.prom, replay_run.psum, replay_run.get, replay_run.get_json


def log(msg):
    print(f"scale: {msg}", file=sys.stderr, flush=True)


def quantile(xs, q):
    return replay_run.quantile(xs, q) if xs else None


# --------------------------------------------------------------------------
# Reading what the processes report.

def vm_status(pid):
    """{VmHWM, VmRSS} in bytes from /proc/<pid>/status, or {}."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS"):
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def hist(metrics, name, labels=""):
    """A Prometheus histogram → {count, sum, mean, buckets [(le, cumulative)]}."""
    sel = f"{{{labels}}}" if labels else ""
    count = metrics.get(f"{name}_count{sel}")
    total = metrics.get(f"{name}_sum{sel}")
    buckets = []
    for k, v in metrics.items():
        if not k.startswith(f"{name}_bucket{{"):
            continue
        inner = k[len(name) + len("_bucket{"):-1]
        parts = dict(p.split("=", 1) for p in inner.split(",")) if inner else {}
        le = parts.pop("le", None)
        want = dict(p.split("=", 1) for p in labels.split(",")) if labels else {}
        if le is None or parts != want:
            continue
        le = le.strip('"')
        buckets.append((float("inf") if le == "+Inf" else float(le), v))
    buckets.sort()
    if not count:
        return {"count": int(count or 0), "sum_s": total, "mean_ms": None, "max_le_ms": None}
    top = next((le for le, c in buckets if c >= count), None)
    return {"count": int(count), "sum_s": total, "mean_ms": round(1e3 * total / count, 2),
            "max_le_ms": None if top is None or top == float("inf") else round(top * 1e3, 3),
            "buckets": [(("+Inf" if le == float("inf") else le), c) for le, c in buckets]}


def bucket_q(h, q):
    """The upper bound (ms) of the bucket the `q` quantile of histogram `h`
    (from `hist`) falls in; None without samples or past the last bound."""
    if not h.get("count"):
        return None
    want = q * h["count"]
    for le, cum in h.get("buckets", []):
        if cum >= want:
            return None if le == "+Inf" else round(le * 1e3, 3)
    return None


PHASES = ("topology", "observe", "probe", "hosted", "orders", "plan", "input", "planner", "submit", "evict",
          "publish", "store")


def round_phases(metrics):
    """Per phase of the manager's round: mean, and the buckets its p50 and
    p99 fall in (`shardcast_manager_round_phase_seconds{phase}`)."""
    out = {}
    for ph in PHASES:
        h = hist(metrics, "shardcast_manager_round_phase_seconds", f'phase="{ph}"')
        out[ph] = {"count": h["count"], "mean_ms": h["mean_ms"],
                   "p50_le_ms": bucket_q(h, 0.5), "p99_le_ms": bucket_q(h, 0.99)}
    return out


def summary_q(metrics, name):
    g = lambda q: metrics.get(f'{name}{{quantile="{q}"}}')
    p50, p99 = g("0.5"), g("0.99")
    return {"count": int(metrics.get(f"{name}_count", 0)),
            "p50_ms": None if p50 is None else round(p50 * 1e3, 2),
            "p99_ms": None if p99 is None else round(p99 * 1e3, 2),
            "mean_ms": (round(1e3 * metrics[f"{name}_sum"] / metrics[f"{name}_count"], 2)
                        if metrics.get(f"{name}_count") else None)}


def split_trace(src, n, out_dir):
    """Deal the trace's lines round-robin to n files (one per proxy)."""
    paths = [out_dir / f"trace-{i}.csv.gz" for i in range(n)]
    outs = [gzip.open(p, "wt", compresslevel=1) for p in paths]
    with gzip.open(src, "rt") as f:
        head = f.readline()
        for o in outs:
            o.write(head)
        for i, line in enumerate(f):
            outs[i % n].write(line)
    for o in outs:
        o.close()
    return paths


# --------------------------------------------------------------------------

class Harness:
    def __init__(self, a):
        self.a = a
        self.out = Path(a.out).resolve()
        self.var = self.out / "var"
        self.proc = None
        self.info = None
        self.histories = {}  # proxy -> {(epoch, counter): unix_ms}

    def stack_args(self, d):
        a = self.a
        sets = [
            f'feeds.history.source="{d.history}"',
            'feeds.history.align="as_is"',
            f'clock.start="{d.start:%Y-%m-%d %H:%M:%S}"',
            f"clock.speed={a.speed:g}",
            f"planner.cycle_s={a.cycle_s:g}",
            f"manager.interval_ms={a.interval_ms}",
            f'manager.policy="{a.policy}"',
            "manager.host_baseline=false",
            f"manager.drain_ms={max(200, round(3600_000 / a.speed))}",
            f"store.max_shards={max(100_000, 2 * a.shards)}",
        ]
        args = [str(ROOT / "scripts/stack"), "--free-ports", "--var", str(self.var), "--quiet",
                "--no-build", "--max-seconds", str(a.timeout_minutes * 60),
                "--backend", a.backend, "--topology", str(d.topology), "--catalog", str(d.catalog),
                "--proxies", str(a.proxies), "--ready-timeout", str(a.timeout_minutes * 60)]
        if a.bin_dir:
            args += ["--bin-dir", a.bin_dir]
        elif a.debug:
            args += ["--debug"]
        for s in sets + a.set:
            args += ["--set", s]
        for s in a.proxy_set:
            args += ["--proxy-set", s]
        for s in a.sync_set:
            args += ["--sync-set", s]
        return args

    def bin_dir(self):
        if self.a.bin_dir:
            return Path(self.a.bin_dir)
        target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/shardcast/target"))
        return target / ("debug" if self.a.debug else "release")

    def seeded_provider(self, d):
        """The embedded provider seeded from the deployment's catalog, once
        per deployment (a million skus take minutes to load); each run
        starts from a fresh copy of it."""
        db = d.out / "provider.db"
        stamp = d.out / "provider.params.json"
        if db.exists() and stamp.exists() and json.loads(stamp.read_text()) == d.params():
            return db, 0.0
        db.unlink(missing_ok=True)
        log(f"seeding {db} from {d.catalog}")
        t = time.monotonic()
        r = subprocess.run([str(self.bin_dir() / "shardcast-sync"), "load", "--provider", f"sqlite:{db}",
                            "--catalog", str(d.catalog)], cwd=ROOT)
        if r.returncode != 0:
            raise SystemExit("scale: seeding the provider failed")
        stamp.write_text(json.dumps(d.params()))
        return db, time.monotonic() - t

    def start_stack(self, d):
        if self.var.exists():
            subprocess.run(["rm", "-rf", str(self.var)], check=True)
        self.var.mkdir(parents=True)
        self.seed_s = None
        if self.a.backend == "embedded":
            db, self.seed_s = self.seeded_provider(d)
            # A copy: the stack seeds only a provider that does not exist.
            subprocess.run(["cp", str(db), str(self.var / "provider.db")], check=True)
        ready = self.var / "stack.json"
        logf = open(self.out / "stack.out", "w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.stack_args(d), cwd=ROOT, stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        deadline = t0 + self.a.timeout_minutes * 60
        while time.monotonic() < deadline:
            if ready.exists():
                self.info = json.loads(ready.read_text())
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        tail = (self.out / "stack.out").read_text(errors="replace")[-3000:]
        self.stop_stack()
        raise SystemExit(f"scale: the stack did not start:\n{tail}")

    def stop_stack(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                log("launcher did not stop; killing its process groups")
                for pid in [self.proc.pid, *(self.info or {}).get("pids", {}).values()]:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        self.proc = None

    def poll_histories(self):
        """Each proxy's table version history (it keeps the last 256)."""
        for p, u in self.info["urls"]["proxies"].items():
            h = get_json(u["admin"] + "/admin/history", timeout=10)
            if isinstance(h, list):
                seen = self.histories.setdefault(p, {})
                for e in h:
                    v = e.get("assignment_version") or {}
                    key = (v.get("epoch", 0), v.get("counter", 0))
                    if e.get("cause") == "update" and key not in seen:
                        seen[key] = e.get("unix_ms")

    def convergence(self):
        """Per assignment version every proxy applied: last apply − first
        apply across the proxies (ms)."""
        per = {}
        for p, seen in self.histories.items():
            for k, ms in seen.items():
                per.setdefault(k, {})[p] = ms
        n = len(self.histories)
        spreads = [max(v.values()) - min(v.values()) for v in per.values() if len(v) == n]
        return {"versions": len(per), "versions_on_every_proxy": len(spreads),
                "spread_p50_ms": quantile(spreads, 0.5), "spread_p99_ms": quantile(spreads, 0.99),
                "spread_max_ms": max(spreads) if spreads else None}

    def run(self):
        a = self.a
        self.out.mkdir(parents=True, exist_ok=True)
        start = replay.parse_time(a.start)
        trace_days = max(1, -(-int(a.minutes * 60 * a.speed) // 86400) + 1)
        t = time.monotonic()
        d = deployment.ensure(log=log, out=self.out / "deployment", shards=a.shards, skus=a.skus,
                              nodes=a.nodes, start=start, history_days=a.history_days,
                              trace_days=trace_days, scale=a.scale, seed=a.seed,
                              hot_share=a.hot_share)
        build_s = time.monotonic() - t
        man = d.info()
        log(f"starting the stack ({a.backend}, {a.nodes} nodes, {a.proxies} proxies)")
        ready_s = self.start_stack(d)
        u = self.info["urls"]
        log(f"stack ready in {ready_s:.0f}s; pids {self.info['pids']}")
        try:
            return self.measure(d, man, build_s, ready_s)
        finally:
            self.stop_stack()

    def wait_first_table(self, timeout_s=300):
        """Until the manager has run a round and every proxy serves one of
        its tables (bounded); the seconds it took, or None."""
        u, t0 = self.info["urls"], time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            # The version history, not /metrics: at 10k shards a proxy's
            # /metrics is megabytes of per-shard series.
            self.poll_histories()
            if len(self.histories) == len(u["proxies"]) and all(self.histories.values()):
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                break
            time.sleep(1)
        return None

    def check_models(self):
        """A forecaster serving its seasonal-naive fallback measures another
        system: stop, unless --allow-fallback."""
        why = replay.models_down(self.info["urls"]["forecaster"])
        if why is None:
            return
        hint = (f"{why} (see {self.var / 'logs' / 'forecaster.log'}; "
                "scripts/setup installs ONNX Runtime into .venv)")
        if not self.a.allow_fallback:
            raise SystemExit(f"scale: {hint}; --allow-fallback measures the fallback anyway")
        log(f"warning: {hint}")

    def measure(self, d, man, build_s, ready_s):
        a, u = self.a, self.info["urls"]
        notes = []
        first = self.wait_first_table()
        if first is None:
            notes.append("no manager table on every proxy before the replay began")
        else:
            log(f"every proxy has the manager's first table after {first:.0f}s more")
        self.check_models()
        clock = get_json(u["forecaster"] + "/clock")
        start = d.start
        if "now_unix_ms" in clock:
            start = max(d.start, dt.datetime.fromtimestamp(
                clock["now_unix_ms"] / 1000 + 30 / a.speed, dt.timezone.utc).replace(tzinfo=None))
        else:
            notes.append(f"no forecaster clock: {clock.get('error')}")
        end = d.start + dt.timedelta(days=d.trace_days)
        traces = split_trace(d.trace, a.proxies, self.var)
        proxies = list(u["proxies"].items())
        players = [replay.Replayer(pu["storefront"], start, end, speed=a.speed, scale=a.scale,
                                   workers=a.workers, max_rps=a.max_rps / a.proxies,
                                   max_seconds=a.minutes * 60, record=False, seed=a.seed + i,
                                   path=traces[i])
                   for i, (_, pu) in enumerate(proxies)]

        def trace_now():
            c = get_json(u["forecaster"] + "/clock")
            return c["now_unix_ms"] / 1000 if "now_unix_ms" in c else None

        log(f"replaying trace {start:%Y-%m-%d %H:%M} on at {a.speed:g}x, scale {a.scale:g}, "
            f"for {a.minutes:g} min through {a.proxies} proxies")
        results = [None] * len(players)

        def play(i):
            results[i] = players[i].run(progress_s=a.every if i == 0 else 0,
                                        label=f"  {proxies[i][0]}", trace_now=trace_now)

        threads = [threading.Thread(target=play, args=(i,), daemon=True) for i in range(len(players))]
        # The manager's rounds as they complete: a round that does not end
        # never reaches the round-time summary, so the longest stretch
        # without a completed round is kept too (a lower bound on it).
        rounds, stop = [], threading.Event()

        def sample_rounds():
            while not stop.wait(5):
                try:
                    m = prom(get(u["forecaster"] + "/metrics", timeout=10))
                except Exception:  # noqa: BLE001 — a missed sample
                    continue
                rounds.append((time.monotonic(), m.get("shardcast_manager_rounds_total", 0)))

        sampler = threading.Thread(target=sample_rounds, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        for th in threads:
            th.start()
        next_poll = t0 + 20
        while any(th.is_alive() for th in threads):
            time.sleep(1)
            if time.monotonic() >= next_poll:
                # A proxy keeps its last 256 versions: read them as they come.
                self.poll_histories()
                next_poll = time.monotonic() + 20
            if self.proc.poll() is not None:
                for p in players:
                    p.stop()
                notes.append("the stack stopped during the replay (see stack.out)")
        wall = time.monotonic() - t0
        stop.set()
        sampler.join(timeout=15)
        time.sleep(2)  # the last telemetry frame and manager round
        longest, last_t, last_n = 0.0, t0, None
        for t, n in rounds:
            if last_n is None or n > last_n:
                last_t, last_n = t, n
            longest = max(longest, t - last_t)
        self.poll_histories()

        rss = {n: vm_status(pid) for n, pid in self.info["pids"].items()}
        fm = prom(get(u["forecaster"] + "/metrics", timeout=30))
        sm = prom(get(u["sync"] + "/metrics", timeout=30))
        pm = {p: prom(get(pu["admin"] + "/metrics", timeout=30)) for p, pu in proxies}
        versions = {p: (m.get("shardcast_table_assignment_epoch"),
                        m.get("shardcast_table_assignment_counter")) for p, m in pm.items()}
        # The manager goes on publishing after the replay (orders still
        # finish), and the proxies are read one after the other: versions
        # that differ are read again, a few times within a second, before
        # they count as not converged.
        for _ in range(5):
            if len(set(versions.values())) <= 1:
                break
            time.sleep(0.2)
            again = {p: prom(get(pu["admin"] + "/metrics", timeout=30)) for p, pu in proxies}
            versions = {p: (m.get("shardcast_table_assignment_epoch"),
                            m.get("shardcast_table_assignment_counter")) for p, m in again.items()}
        sent = sum(r.sent for r in results if r)
        ok = sum(r.ok for r in results if r)
        non2xx = sum(r.non2xx for r in results if r)
        errors = sum(r.errors for r in results if r)
        hit = sum(r.hit for r in results if r)
        miss = sum(r.miss for r in results if r)
        lat = sum(r.lat_sum for r in results if r)
        cyc = {k: hist(fm, "shardcast_forecaster_cycle_seconds", f'rerun="{k}"')
               for k in ("both", "hourly", "daily", "none")}
        for k, v in cyc.items():
            v.pop("buckets", None)
            longest = fm.get(f'shardcast_forecaster_cycle_max_seconds{{rerun="{k}"}}')
            v["max_ms"] = round(longest * 1e3, 1) if longest is not None and v["count"] else None
        apply = {p: hist(m, "shardcast_table_update_apply_seconds") for p, m in pm.items()}
        summary = {
            "date": dt.date.today().isoformat(),
            "command": " ".join(sys.argv),
            "settings": {k: v for k, v in vars(a).items()},
            "binaries": a.bin_dir or ("debug" if a.debug else "release"),
            "load_average_at_end": os.getloadavg(),
            "deployment": {k: man[k] for k in ("params", "sub_categories", "history_rows",
                                               "trace_lines", "skus_per_sub_category")},
            "simulated": [
                f"{a.nodes} nodes as " + ("in-process caches in sync's process, each node on its own "
                                          "HTTP port" if a.backend == "embedded" else
                                          "one `shardcast-sync node` process each, caches in one Redis "
                                          "(prefix per node)"),
                "the provider: " + ("SQLite" if a.backend == "embedded" else "PostgreSQL")
                + " seeded from the generated catalog (real products and their variants)",
                "demand: the real invoice lines of the slice, each sent to one variant of its product",
                "all processes on one 2-core shared machine, loopback only",
            ],
            "timings_s": {"deployment_build": round(build_s, 1),
                          "provider_seed": None if self.seed_s is None else round(self.seed_s, 1),
                          "stack_ready": round(ready_s, 1),
                          "first_table_on_every_proxy": None if first is None else round(first, 1),
                          "replay_wall": round(wall, 1)},
            "requests": sent,
            "ok": ok,
            "failed_requests": non2xx + errors,
            "non_2xx": non2xx,
            "no_response": errors,
            # Requests sent again because a kept-alive connection the proxy
            # closed while idle failed before any answer (not failures).
            "client_stale_connection_retries": sum(p.totals().resent for p in players),
            "request_rate": round(sent / wall, 1) if wall else None,
            "mean_latency_ms": round(lat / sent, 2) if sent else None,
            "hit_rate": round(hit / (hit + miss), 4) if hit + miss else None,
            "proxy_requests_metric": {p: m.get("shardcast_requests_total") for p, m in pm.items()},
            "peak_rss_bytes": {n: v.get("VmHWM") for n, v in rss.items()},
            "rss_at_end_bytes": {n: v.get("VmRSS") for n, v in rss.items()},
            "forecaster_cycles": {"cold_both_models": cyc["both"], "hourly_rerun": cyc["hourly"],
                                  "daily_rerun": cyc["daily"], "cached": cyc["none"],
                                  "cycles_total": fm.get("shardcast_forecaster_cycles_total"),
                                  "shards": fm.get("shardcast_forecaster_shards")},
            "manager_round": summary_q(fm, "shardcast_manager_round_seconds"),
            "manager_round_phases": round_phases(fm),
            # Rounds woken by a finished order between planning rounds:
            # they apply it and publish, without the planner.
            "manager_orders_round": summary_q(fm, "shardcast_manager_orders_round_seconds"),
            "manager_longest_without_a_completed_round_s": round(longest, 1),
            "manager_publish_until_every_proxy": summary_q(fm, "shardcast_manager_publish_seconds"),
            "proxy_apply_spread": self.convergence(),
            "proxy_table_apply": apply,
            "proxy_table_updates": {p: {"ok": m.get('shardcast_table_updates_total{result="ok"}'),
                                        "rejected": m.get('shardcast_table_updates_total{result="rejected"}')}
                                    for p, m in pm.items()},
            "proxy_table_versions_at_end": versions,
            # On one version, and one of the manager's (epoch 0 is the
            # topology's starting table).
            "proxies_converged_at_end": (len(set(versions.values())) == 1
                                         and all((v[0] or 0) >= 1 for v in versions.values())),
            "manager_proxies_behind": fm.get("shardcast_manager_proxies_behind"),
            "prefetch": {
                "orders_submitted": psum(sm, "shardcast_sync_orders_submitted_total"),
                "orders_done": psum(sm, "shardcast_sync_orders_done_total"),
                "orders_failed": psum(sm, "shardcast_sync_orders_failed_total"),
                "rows": psum(sm, "shardcast_sync_rows_copied_total"),
                "bytes": psum(sm, "shardcast_sync_bytes_copied_total"),
                "manager_orders": {k: fm.get(f'shardcast_manager_orders_total{{outcome="{k}"}}')
                                   for k in ("done", "failed", "cancelled", "refused")},
            },
            "notes": notes,
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
        md = markdown(summary)
        (self.out / "summary.md").write_text(md)
        print(md)
        log(f"wrote {self.out}/summary.json and summary.md")
        return summary


def ms(x):
    return "–" if x is None else f"{x:,.1f} ms"


def mib(x):
    return "–" if not x else f"{x / 2**20:,.0f} MiB"


def markdown(s):
    p = s["deployment"]["params"]
    fc, mr, pub = s["forecaster_cycles"], s["manager_round"], s["manager_publish_until_every_proxy"]
    mo = s["manager_orders_round"]
    sp = s["proxy_apply_spread"]
    pf = s["prefetch"]
    apply = s["proxy_table_apply"]
    rss = s["peak_rss_bytes"]

    def cyc(c):
        if not c["count"]:
            return "– (none ran)"
        longest = f"longest {ms(c['max_ms'])}" if c.get("max_ms") is not None \
            else f"all ≤ {ms(c['max_le_ms'])}"
        return f"{ms(c['mean_ms'])} mean of {c['count']} ({longest})"

    rows = [
        ("deployment", f"{p['shards']:,} shards, {p['skus']:,} skus, {p['nodes']} nodes, "
                       f"{s['settings']['proxies']} proxies, {s['settings']['backend']} backend, "
                       f"{s['binaries']} binaries"),
        ("requests / failed", f"{s['requests']:,} / {s['failed_requests']:,} "
                              f"({s['request_rate']} req/s, hit rate {s['hit_rate']})"),
        ("forecaster cycle: both models (cold / new day)", cyc(fc["cold_both_models"])),
        ("forecaster cycle: hourly model re-run", cyc(fc["hourly_rerun"])),
        ("forecaster cycle: cached", cyc(fc["cached"])),
        ("manager planning round p50 / p99", f"{ms(mr['p50_ms'])} / {ms(mr['p99_ms'])} ({mr['count']} rounds; "
                                    f"longest stretch with no round completing during the replay "
                                    f"{s['manager_longest_without_a_completed_round_s']} s)"),
        ("manager round following finished orders (no plan) p50 / p99",
         f"{ms(mo['p50_ms'])} / {ms(mo['p99_ms'])} ({mo['count']} rounds)"),
        ("manager round by phase: mean (p50 bucket / p99 bucket)",
         "; ".join(f"{k} {v['mean_ms']:.1f} ms (≤ {v['p50_le_ms']} / ≤ {v['p99_le_ms']})"
                   for k, v in s.get("manager_round_phases", {}).items()
                   if v["mean_ms"] is not None) or "–"),
        ("changed table published until every proxy has it, p50 / p99",
         f"{ms(pub['p50_ms'])} / {ms(pub['p99_ms'])} ({pub['count']} publishes)"),
        ("same version applied, first → last proxy, p50 / p99",
         f"{ms(sp['spread_p50_ms'])} / {ms(sp['spread_p99_ms'])} "
         f"({sp['versions_on_every_proxy']} versions on every proxy)"),
        ("proxy table-apply time (mean, max bucket)",
         "; ".join(f"{k} {ms(v['mean_ms'])}, ≤ {ms(v['max_le_ms'])} ({v['count']})"
                   for k, v in apply.items())),
        ("proxies on one manager table version at the end",
         ("yes" if s["proxies_converged_at_end"] else "no")
         + f" ({', '.join(f'{k} {v[0]:.0f}:{v[1]:.0f}' for k, v in s['proxy_table_versions_at_end'].items() if v[0] is not None)})"),
        ("pre-fetch orders done / failed; rows; bytes",
         f"{pf['orders_done']:,.0f} / {pf['orders_failed']:,.0f}; {pf['rows']:,.0f}; {pf['bytes']:,.0f}"),
        ("peak RSS", ", ".join(f"{k} {mib(v)}" for k, v in rss.items()
                               if not k.startswith("node-") or k == "node-00")
         + (f" (+ {sum(1 for k in rss if k.startswith('node-'))} node processes, "
            f"max {mib(max((v or 0) for k, v in rss.items() if k.startswith('node-')))})"
            if any(k.startswith("node-") for k in rss) else "")),
        ("stack ready after / replay wall", f"{s['timings_s']['stack_ready']} s / {s['timings_s']['replay_wall']} s"),
    ]
    out = [f"Scale run, {s['date']}: `{s['command']}`", "", "| what | measured |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    if s["notes"]:
        out += ["", *[f"- {n}" for n in s["notes"]]]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--skus", type=int, default=1_000_000)
    ap.add_argument("--nodes", type=int, default=24)
    ap.add_argument("--proxies", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=5.0, help="replay duration (real minutes)")
    ap.add_argument("--out", required=True, help="results directory (summary.json, summary.md)")
    ap.add_argument("--start", default="2011-11-07 08:00",
                    help="trace time the replay starts at (the history ends there)")
    ap.add_argument("--speed", type=float, default=360.0, help="trace seconds per real second")
    ap.add_argument("--scale", type=float, default=4.0, help="requests per invoice line")
    ap.add_argument("--history-days", type=int, default=40, help="demand history before the start")
    ap.add_argument("--workers", type=int, default=8, help="replay threads per proxy")
    ap.add_argument("--max-rps", type=float, default=1000.0, help="request rate cap over all proxies")
    ap.add_argument("--interval-ms", type=int, default=1000, help="manager round interval")
    ap.add_argument("--cycle-s", type=float, default=None,
                    help="forecaster planning cycle (default: a quarter trace hour)")
    ap.add_argument("--policy", default="forecast", help="[manager] policy")
    ap.add_argument("--backend", choices=["embedded", "redis-postgres"], default="embedded")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--hot-share", type=float, default=0.1,
                    help="share of each rule's shards whose peak hours cross its threshold")
    ap.add_argument("--timeout-minutes", type=float, default=None,
                    help="bound on the whole run (default: --minutes + 25)")
    ap.add_argument("--debug", action="store_true", help="debug binaries")
    ap.add_argument("--bin-dir")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--allow-fallback", action="store_true",
                    help="run even when the forecaster serves its seasonal-naive fallback, not its models")
    ap.add_argument("--set", action="append", default=[], help="forecaster override (scripts/stack --set)")
    ap.add_argument("--proxy-set", action="append", default=[])
    ap.add_argument("--sync-set", action="append", default=[])
    ap.add_argument("--every", type=float, default=15.0, help="progress line every S seconds")
    a = ap.parse_args()
    if a.cycle_s is None:
        a.cycle_s = max(1.0, 900.0 / a.speed)
    if a.timeout_minutes is None:
        a.timeout_minutes = a.minutes + 25
    if a.minutes <= 0 or a.proxies < 1:
        raise SystemExit("scale: --minutes must be positive and --proxies at least 1")
    if not a.no_build and not a.bin_dir:
        cmd = ["cargo", "build", "--workspace", "--bins"] + ([] if a.debug else ["--release"])
        log(" ".join(cmd))
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            raise SystemExit("scale: build failed")
    h = Harness(a)

    def on_signal(_s, _f):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        s = h.run()
    except KeyboardInterrupt:
        h.stop_stack()
        log("interrupted")
        return 1
    return 0 if s["failed_requests"] == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
