#!/usr/bin/env python3
"""The replay benchmark: the real demand trace through the real stack under
four shard-manager policies, compared.

    benches/replay/run.py                       # 4 policies x one week (2011-11-07..14), 1 trace h per s
    benches/replay/run.py --policies none,forecast --days 2 --scale 3
    benches/replay/run.py --no-policy --no-clock --debug --no-build   # today's real-time forecaster

For each policy: a fresh stack (scripts/stack --free-ports, its own var
dir, fresh caches and provider), the trace slice replayed through the
proxy (benches/replay/replay.py: every invoice line → GET
/inventory/{sku}?region=R at its trace time), then sync's /metrics and
/orders, the nodes' /metrics, the manager's /manager and decisions, and the
proxy's table history are collected, and the stack is stopped.

Policies are passed to the forecaster as `[manager] policy = "…"`
(none | reactive | forecast | oracle), `host_baseline = false` and, for
oracle, `oracle = "<csv shard_id,ds,lines>"` (the slice's real hourly
demand, written by this harness); the virtual clock as `[clock] start`
and `speed`. A forecaster that does not know these keys rejects them:
the harness then retries without them (or `--no-policy` / `--no-clock`
leaves them out) and marks the run `policy_applied: false` — every run is
then the same real-time manager, and the table says so.

Spikes are defined from the trace itself: a shard-hour is a spike when the
shard's demand (invoice lines) in that hour is above the shard's 90th
percentile hour over the replayed slice (every hour counts, quiet ones too)
and above zero.

Output: benches/replay/results/<date>/summary.json, summary.md, and SVG
plots (spike_hit_rate.svg, hit_timeline.svg). Python standard library only.
"""

import argparse
import datetime as dt
import gzip
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import replay  # noqa: E402

POLICIES = ["none", "reactive", "forecast", "oracle"]
HOURLY = ROOT / "data/online_retail/shard_hourly.csv.gz"


def log(msg):
    print(f"replay-bench: {msg}", file=sys.stderr, flush=True)


COPY_WHEN = ("spike", "hour_before", "hour_after", "other")


def copy_when(spike_hours, trace_sec):
    """Where a copy held at `trace_sec` stands against its shard's spike
    hours (hour starts, trace seconds): in one, the hour before one (a
    pre-fetch's lead), the hour after (the scale-in tail), or other."""
    h = int(trace_sec) // 3600 * 3600
    if h in spike_hours:
        return "spike"
    if h + 3600 in spike_hours:
        return "hour_before"
    if h - 3600 in spike_hours:
        return "hour_after"
    return "other"


def get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def get_json(url, timeout=5.0):
    try:
        return json.loads(get(url, timeout))
    except Exception as e:  # noqa: BLE001 — reported in the summary
        return {"error": f"{url}: {e}"}


def prom(text):
    """Prometheus text → {name{labels}: value} (counters and gauges)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+)\s+(\S+)$", line)
        if m:
            try:
                out[m.group(1)] = float(m.group(2))
            except ValueError:
                pass
    return out


def psum(metrics, name):
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def quantile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))
    return xs[i]


# --------------------------------------------------------------------------
# Inputs from the trace.

def hourly(start, end):
    """{shard: {hour epoch s: lines}} for start <= ds < end (every hour present)."""
    out = defaultdict(dict)
    s0, s1 = replay.to_sec(start), replay.to_sec(end)
    with gzip.open(HOURLY, "rt") as f:
        head = f.readline().strip().split(",")
        i_s, i_ds, i_l = head.index("shard_id"), head.index("ds"), head.index("lines")
        for line in f:
            p = line.rstrip("\n").split(",")
            ds = p[i_ds]
            if ds < start.strftime("%Y-%m-%d %H:%M:%S") or ds >= end.strftime("%Y-%m-%d %H:%M:%S"):
                continue
            h = replay.to_sec(replay.parse_time(ds))
            if s0 <= h < s1:
                out[p[i_s]][h] = int(float(p[i_l]))
    return out


def write_history(path, before):
    """The sales history up to the replay's start: the forecaster must not
    see the hours it is about to be tested on."""
    cut = before.strftime("%Y-%m-%d %H:%M:%S")
    with gzip.open(HOURLY, "rt") as f, gzip.open(path, "wt") as o:
        head = f.readline()
        cols = head.strip().split(",")
        i_ds = cols.index("ds")
        o.write(head)
        for line in f:
            if line.split(",")[i_ds] < cut:
                o.write(line)


def write_oracle(path, demand, scale):
    with open(path, "w") as o:
        o.write("shard_id,ds,lines\n")
        for s in sorted(demand):
            for h in sorted(demand[s]):
                o.write(f"{s},{replay.from_sec(h):%Y-%m-%d %H:%M:%S},{demand[s][h] * scale:g}\n")


def spike_hours(demand):
    """{shard: set(hour)}: hours above the shard's 90th percentile hour."""
    out = {}
    for s, hours in demand.items():
        v = sorted(hours.values())
        p90 = quantile(v, 0.9) if v else 0
        out[s] = {h for h, x in hours.items() if x > p90 and x > 0}
    return out


def thresholds(start, demand_before_days, scale, speed, clock):
    """Per-shard thresholds (req/s): the shard's 90th percentile hour over
    the weeks before the slice, as a request rate — in trace time with the
    virtual clock, in real time without it (an hour lasts 3600/speed s)."""
    d = hourly(start - dt.timedelta(days=demand_before_days), start)
    out = {}
    for s, hours in d.items():
        p90 = quantile(sorted(hours.values()), 0.9)
        per_s = p90 * scale / 3600.0 * (1.0 if clock else speed)
        out[s] = round(max(per_s, 1e-3), 4)
    return out


# --------------------------------------------------------------------------
# One policy.

class Run:
    def __init__(self, a, policy, out_dir, demand, spikes):
        self.a, self.policy = a, policy
        self.var = (Path(a.var) / policy).resolve()
        self.out_dir = out_dir
        self.demand, self.spikes = demand, spikes
        self.proc = None
        self.info = None

    def stack_args(self, with_policy, with_clock):
        a = self.a
        args = [str(ROOT / "scripts/stack"), "--free-ports", "--var", str(self.var), "--quiet",
                "--no-build", "--max-seconds", str(a.max_minutes * 60 + 300),
                "--backend", a.backend]
        if a.bin_dir:
            args += ["--bin-dir", a.bin_dir]
        elif a.debug:
            args += ["--debug"]
        sets = [
            f'feeds.history.source="{self.var / "history.csv.gz"}"',
            f"manager.interval_ms={a.interval_ms}",
        ]
        if not with_clock:
            # "Observed" load = the last trace hour, in real seconds.
            sets += ["planner.cycle_s=1",
                     f"manager.observe_window_s={max(1, round(3600 / a.speed))}"]
        if with_clock:
            # Trace time throughout, as scripts/demo runs it (scripts/stack
            # --clock-start: history cut at the start, timings scaled).
            args += ["--clock-start", f"{self.start:%Y-%m-%d %H:%M:%S}", "--clock-speed", f"{a.speed:g}"]
        if with_policy:
            sets += [f'manager.policy="{self.policy}"', "manager.host_baseline=false"]
            if self.policy == "oracle":
                sets += [f'manager.oracle="{self.var / "oracle.csv"}"']
        for s in sets + a.set:
            args += ["--set", s]
        args += ["--shard-thresholds", str(self.var / "thresholds.json")]
        for s in a.proxy_set:
            args += ["--proxy-set", s]
        return args + self.econ_args()

    def econ_args(self):
        """The provider's wide-area latency (sync: every delta batch and
        slow-path read waits it), how long an evicted copy stays parked for a
        delta re-fetch (the shipped conf/sync.toml's keep, in trace time),
        and the miss cost the planner weighs copies with (the same latency)."""
        a = self.a
        keep = 0 if a.no_keep_evicted else round(shipped_keep_evicted_s() / a.speed, 3)
        out = ["--sync-set", f"provider.read_latency_ms={a.provider_latency_ms}",
               "--sync-set", f"transfer.keep_evicted_s={keep}"]
        if a.max_staleness_s is not None:
            # One bound in trace time for every policy: sync's hosted copies
            # and the nodes' slow-path fills (scripts/stack gives the nodes
            # sync's value).
            out += ["--sync-set",
                    f"freshness.max_staleness_s={round(a.max_staleness_s / a.speed, 4)}"]
        if a.provider_latency_ms > 0:
            out += ["--set", f"manager.miss_cost_ms={a.provider_latency_ms}"]
        for s in a.sync_set:
            out += ["--sync-set", s]
        return out

    def start_stack(self, with_policy, with_clock):
        ready = self.var / "stack.json"
        ready.unlink(missing_ok=True)
        logf = open(self.var / "stack.out", "w")
        self.proc = subprocess.Popen(self.stack_args(with_policy, with_clock), cwd=ROOT,
                                     stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        logf.close()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if ready.exists():
                self.info = json.loads(ready.read_text())
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.3)
        self.stop_stack()
        return False

    def stop_stack(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log(f"{self.policy}: launcher did not stop; killing it and its processes")
                os.killpg(self.proc.pid, signal.SIGKILL)
                for pid in (self.info or {}).get("pids", {}).values():
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        self.proc = None

    def settle(self, timeout_s=60):
        """Wait until sync has no queued or running orders (the initial
        copies of a policy that makes them), bounded."""
        sync = self.info["urls"]["sync"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            orders = get_json(sync + "/orders")
            if isinstance(orders, list) and orders and not any(
                    o.get("state") in ("queued", "running") for o in orders):
                return True
            time.sleep(0.5)
        return False

    def execute(self):
        a = self.a
        self.start = replay.parse_time(a.start)
        self.end = self.start + dt.timedelta(days=a.days)
        if self.var.exists():
            subprocess.run(["rm", "-rf", str(self.var)], check=True)
        self.var.mkdir(parents=True)
        write_history(self.var / "history.csv.gz", self.start)
        write_oracle(self.var / "oracle.csv", self.demand, a.scale)
        with_policy, with_clock = not a.no_policy, not a.no_clock
        notes = []
        # Degrade step by step: a forecaster without the virtual clock may
        # still know the policies, and the other way round.
        for _attempt in range(3):
            self.thr = thresholds(self.start, a.threshold_weeks * 7, a.scale, a.speed, with_clock)
            (self.var / "thresholds.json").write_text(json.dumps(self.thr, indent=1))
            ok = self.start_stack(with_policy, with_clock)
            if ok or not (with_policy or with_clock):
                break
            self.stop_stack()
            out = (self.var / "stack.out").read_text(errors="replace")
            unknown = sorted(set(re.findall(r"unknown field `(\w+)`", out)))
            if not unknown:
                break  # some other failure: reported below
            if "clock" in unknown and with_clock:
                with_clock = False
            elif with_policy and set(unknown) & {"policy", "oracle", "host_baseline"}:
                with_policy = False
            else:
                break
            note = (f"forecaster rejected {', '.join(unknown)}: ran without "
                    + ("[clock]" if "clock" in unknown else "[manager] policy"))
            log(f"{self.policy}: {note}; retrying")
            notes.append(note)
        if not ok:
            tail = (self.var / "stack.out").read_text(errors="replace")[-2000:]
            raise SystemExit(f"replay-bench: {self.policy}: the stack did not start:\n{tail}")
        try:
            return self.measure(with_policy, with_clock, notes)
        finally:
            self.stop_stack()

    def start_changes(self):
        """The provider's own changes while the trace replays (stock and
        price updates from the invoice lines, `shardcast-sync changes`), so a
        parked copy has a real delta to catch up on. Embedded backend only."""
        a = self.a
        if a.changes_rate <= 0 or a.backend != "embedded":
            return None
        exe = bin_dir(a) / "shardcast-sync"
        logf = open(self.var / "changes.out", "w")
        p = subprocess.Popen([str(exe), "changes", "--provider", f"sqlite:{self.var / 'provider.db'}",
                              "--rate", f"{a.changes_rate:g}",
                              "--limit", str(int(a.changes_rate * a.max_minutes * 60))],
                             cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        return p

    def stop_changes(self, p):
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    def measure(self, with_policy, with_clock, notes):
        a, u = self.a, self.info["urls"]
        start = self.start
        why = replay.models_down(u["forecaster"])
        if why is not None:
            hint = (f"{why} (see {self.var / 'logs' / 'forecaster.log'}; "
                    "scripts/setup installs ONNX Runtime into .venv)")
            if not a.allow_fallback:
                raise SystemExit(f"replay-bench: {self.policy}: {hint}; "
                                 "--allow-fallback measures the fallback anyway")
            log(f"{self.policy}: warning: {hint}")
            notes.append(f"forecaster without its models: {why}")
        if with_clock:
            # The forecaster's trace clock runs from its start: begin the
            # replay where that clock is now, so telemetry, forecasts and
            # plans line up with the requests (the skipped first hours of the
            # Monday are the quiet night).
            begin = replay.clock_begin(u["forecaster"], a.speed)
            if begin is not None:
                start = max(self.start, replay.from_sec(int(begin)))
                notes.append(f"replay started at trace time {start:%Y-%m-%d %H:%M} (forecaster clock)")
            else:
                notes.append("no forecaster replay clock (GET /clock)")
        else:
            settled = self.settle()
            if not settled:
                notes.append("sync still had open orders when the replay began")
        log(f"{self.policy}: stack ready ({u['storefront']}); replaying "
            f"{start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d} at {a.speed:g}x, scale {a.scale:g}")
        rp = replay.Replayer(u["storefront"], start, self.end, speed=a.speed, scale=a.scale,
                             workers=a.workers, max_rps=a.max_rps, max_seconds=a.max_minutes * 60,
                             record=True)
        t0 = time.monotonic()
        def trace_now():
            return replay.clock_now(u["forecaster"]) if with_clock else None

        # Cache cost: how many (shard, node) copies sync keeps hosted, sampled
        # through the replay (a policy that hosts everything always hits).
        samples, stop = [], threading.Event()
        parked_samples = []
        # The same copies by when they were held, for the shard's spikes:
        # in a spike hour, the hour before one, the hour after, or other.
        when = defaultdict(int)
        when_samples = [0]
        # Per shard too, to see which shards hold the copies.
        when_by_shard = defaultdict(lambda: defaultdict(int))
        # The forecasts the manager planned from, once per sample (trace
        # second, shard → horizon → levels/values): what the crossing
        # probability was read from, beside the hour's actual demand.
        forecast_samples = []
        last_origin = [None]
        self.reads = ProviderReadsByHour()
        changes = self.start_changes()

        def sample():
            while not stop.wait(0.25):
                n = get_json(u["sync"] + "/nodes", timeout=2.0)
                tnow = (replay.to_sec(rp.start) + (time.monotonic() - rp.t0) * a.speed
                        if rp.t0 is not None else None)
                if isinstance(n, dict) and "error" not in n:
                    samples.append(sum(len(v.get("hosted") or []) for v in n.values()
                                       if isinstance(v, dict)))
                    parked_samples.append(sum(len(v.get("parked") or []) for v in n.values()
                                              if isinstance(v, dict)))
                    if tnow is not None:
                        when_samples[0] += 1
                        for v in n.values():
                            for h in (v.get("hosted") or []) if isinstance(v, dict) else []:
                                w = copy_when(self.spikes.get(h.get("shard"), ()), tnow)
                                when[w] += 1
                                when_by_shard[h.get("shard")][w] += 1
                if tnow is not None and with_clock:
                    f = get_json(u["forecaster"] + "/forecasts", timeout=2.0)
                    if isinstance(f, dict) and "shards" in f and \
                            f.get("generated_at") != last_origin[0]:
                        last_origin[0] = f.get("generated_at")
                        forecast_samples.append({"trace_sec": tnow, "generated_at": last_origin[0],
                                                 "origin_hour": f.get("origin_hour"),
                                                 "shards": f["shards"]})
                if tnow is not None:
                    try:
                        self.reads.add(tnow, prom(get(u["sync"] + "/metrics", timeout=2.0)))
                        self.reads.add_orders(tnow, time.time(), a.speed,
                                              get_json(u["sync"] + "/orders", timeout=2.0))
                    except Exception:  # noqa: BLE001 — a missed sample widens the next
                        pass

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            tot = rp.run(progress_s=a.every, label=f"  {self.policy}", trace_now=trace_now)
        finally:
            stop.set()
            sampler.join(timeout=3)
            self.stop_changes(changes)
        self.hosted_mean = sum(samples) / len(samples) if samples else None
        self.parked_mean = sum(parked_samples) / len(parked_samples) if parked_samples else None
        self.hosted_samples = len(samples)
        self.copies_when = ({k: when[k] / when_samples[0] for k in COPY_WHEN}
                            if when_samples[0] else None)
        self.copies_when_by_shard = ({sh: {k: m[k] / when_samples[0] for k in COPY_WHEN}
                                      for sh, m in sorted(when_by_shard.items())}
                                     if when_samples[0] else None)
        wall = time.monotonic() - t0
        time.sleep(1.5)  # last telemetry frame, last manager round
        recs = rp.all_records()
        sync_metrics = prom(get(u["sync"] + "/metrics"))
        orders = get_json(u["sync"] + "/orders")
        nodes_hosted = get_json(u["sync"] + "/nodes")
        node_metrics = {n: prom(get(x + "/metrics")) for n, x in u["nodes"].items()}
        manager = get_json(u["forecaster"] + "/manager")
        decisions = get_json(u["forecaster"] + "/manager/decisions?limit=10000")
        history = get_json(u["admin"] + "/admin/history")
        raw = {"manager": manager, "decisions": decisions, "orders": orders,
               "nodes": nodes_hosted, "table_history": history,
               "forecasts": forecast_samples}
        (self.out_dir / f"raw-{self.policy}.json").write_text(json.dumps(raw, indent=1))
        return self.report(recs, tot, rp, wall, sync_metrics, orders, nodes_hosted, node_metrics,
                           manager, decisions, history, with_policy, with_clock, notes)

    def report(self, recs, tot, rp, wall, sm, orders, hosted, nm, manager, decisions, history,
               with_policy, with_clock, notes):
        hit = miss = sh_hit = sh_miss = 0
        lat, failed, non2xx = [], 0, 0
        by_hour = defaultdict(lambda: [0, 0, 0])  # hour → [requests, hit, miss]
        for tsec, shard, cache, ms, status in recs:
            h = int(tsec) // 3600 * 3600
            b = by_hour[h]
            b[0] += 1
            lat.append(ms)
            if status == 0 or status >= 500:
                failed += 1
            if not (200 <= status < 300):
                non2xx += 1
            spike = h in self.spikes.get(shard, ())
            if cache == "hit":
                hit += 1
                b[1] += 1
                sh_hit += spike
            elif cache == "miss":
                miss += 1
                b[2] += 1
                sh_miss += spike
        # Transfers: what sync copied, against full copies of the same shards.
        shard_rows = {}
        if isinstance(hosted, dict):
            for n in hosted.values():
                for h in (n.get("hosted") or []) if isinstance(n, dict) else []:
                    shard_rows[h["shard"]] = max(shard_rows.get(h["shard"], 0), h.get("rows", 0))
        done = [o for o in orders if o.get("state") == "done"] if isinstance(orders, list) else []
        for o in done:
            shard_rows[o["shard"]] = max(shard_rows.get(o["shard"], 0), o.get("rows", 0))
        rows = sum(o.get("rows", 0) for o in done)
        nbytes = sum(o.get("bytes", 0) for o in done)
        bpr = nbytes / rows if rows else 0.0
        full_rows = sum(shard_rows.get(o["shard"], 0) for o in done)
        dec = decisions if isinstance(decisions, list) else []
        actions = defaultdict(int)
        for d in dec:
            actions[f"{d.get('action')}/{d.get('reason')}"] += 1
        versions = history if isinstance(history, list) else []
        in_spikes = self.spike_report(recs)
        return {
            "spike_hours": in_spikes,
            "provider_latency_ms": self.a.provider_latency_ms,
            "keep_evicted": not self.a.no_keep_evicted,
            "policy": self.policy,
            "policy_applied": with_policy,
            "virtual_clock": with_clock,
            "thresholds_rps": self.thr,
            "notes": notes,
            "wall_s": round(wall, 1),
            "cache": {
                "mean_hosted_copies": self.hosted_mean,
                "mean_parked_copies": self.parked_mean,
                "samples": self.hosted_samples,
                # mean hosted copies split by when they were held (sums to
                # the mean over the samples taken while replaying)
                "copies_when": self.copies_when,
                "copies_when_by_shard": self.copies_when_by_shard,
                "copy_hours": (self.hosted_mean * wall * self.a.speed / 3600
                               if self.hosted_mean is not None else None),
            },
            "requests": tot.sent,
            "ok": tot.ok,
            "non_2xx": non2xx,
            "failed": failed,
            "skipped_lines": rp.skipped,
            # sent again once after the proxy closed an idle keep-alive connection
            "resent_after_idle_close": tot.resent,
            "failures": [{"trace_time": f"{replay.from_sec(int(t)):%Y-%m-%d %H:%M:%S}", "path": pth,
                          "status": st, "shard": sh, "x_cache": xc, "body": b}
                         for t, pth, st, sh, xc, b in rp.failures[:50]],
            "max_lag_s": round(rp.max_lag_s, 2),
            "hit_rate": hit / (hit + miss) if hit + miss else None,
            "hit_rate_spikes": sh_hit / (sh_hit + sh_miss) if sh_hit + sh_miss else None,
            "spike_requests": sh_hit + sh_miss,
            "latency_ms": {"p50": quantile(lat, 0.5), "p90": quantile(lat, 0.9),
                           "p99": quantile(lat, 0.99), "max": max(lat) if lat else None},
            "provider_reads": {
                "slow_path": miss,
                "sync_rows": rows,
                "total": miss + rows,
                "node_misses_metric": sum(v.get('shardcast_node_requests_total{outcome="miss"}', 0)
                                          for v in nm.values()),
            },
            "transfers": {
                "orders_done": len(done),
                "rows": rows,
                "bytes": nbytes,
                "full_copy_rows": full_rows,
                "full_copy_bytes": round(full_rows * bpr),
                "delta_ratio": rows / full_rows if full_rows else None,
                "sync_bytes_metric": psum(sm, "shardcast_sync_bytes_copied_total"),
                "sync_rows_metric": psum(sm, "shardcast_sync_rows_copied_total"),
            },
            "manager": {
                "decisions": dict(sorted(actions.items())),
                "assignment_version": (manager.get("assignment_version")
                                       if isinstance(manager, dict) else None),
                "proxy_table_versions": len(versions),
                "rounds": manager.get("rounds") if isinstance(manager, dict) else None,
            },
            "timeline": [
                {"hour": f"{replay.from_sec(h):%Y-%m-%d %H:00}", "requests": b[0],
                 "hit_rate": b[1] / (b[1] + b[2]) if b[1] + b[2] else None}
                for h, b in sorted(by_hour.items())
            ],
        }


    def spike_report(self, recs):
        """What a storefront feels in spike shard-hours: latency of the
        requests to a shard in its spike hours, its warm hit rate, and the
        provider's work for that shard in those hours (the slow path: one
        query and one row per miss; sync: delta queries and rows read for
        the shard, sampled from sync's counters per trace hour)."""
        lat, hit, miss = [], 0, 0
        for tsec, shard, cache, ms, status in recs:
            h = int(tsec) // 3600 * 3600
            if h not in self.spikes.get(shard, ()):
                continue
            lat.append(ms)
            hit += cache == "hit"
            miss += cache == "miss"
        sq = sr = 0
        split = dict.fromkeys(ProviderReadsByHour.KINDS, 0)
        fresh = 0
        for (shard, h), (q, r) in self.reads.delta.items():
            if h in self.spikes.get(shard, ()):
                sq += q
                sr += r
                orow = self.reads.order_rows.get((shard, h), {})
                for k, v in orow.items():
                    split[k] += v
                fresh += max(0, r - sum(orow.values()))
        return {
            "requests": len(lat),
            "warm_hit_rate": hit / (hit + miss) if hit + miss else None,
            "latency_ms": {"p50": quantile(lat, 0.5), "p90": quantile(lat, 0.9),
                           "p99": quantile(lat, 0.99), "max": max(lat) if lat else None},
            "provider_reads": {
                "slow_path_queries": miss,
                "slow_path_rows": miss,
                "sync_queries": sq,
                "sync_rows": sr,
                "queries": miss + sq,
                "rows": miss + sr,
            },
            # sync's rows in spike hours by what read them: pre-fetch orders
            # (a pair's first copy or a re-fetch; started within the spike
            # hour or before it) and freshness deltas of hosted copies.
            "sync_rows_split": dict(split, freshness=fresh),
            "week_sync_queries": sum(q for q, _ in self.reads.delta.values()),
            "week_sync_rows": sum(r for _, r in self.reads.delta.values()),
            "reads_samples": self.reads.samples,
        }


class ProviderReadsByHour:
    """sync's per-shard delta-read counters, differenced between samples
    and charged to the trace hour of the sample; beside them the rows each
    pre-fetch order copied between the same samples (sync's `/orders`), so
    the rows of a shard-hour split into orders and freshness (the rest:
    deltas that keep hosted copies current)."""

    Q = 'shardcast_sync_provider_queries_total{op="delta",shard="'
    R = 'shardcast_sync_provider_rows_read_total{op="delta",shard="'
    # An order's kind: the first copy of the (node, shard) pair in the run
    # (whole), or a later one (a re-fetch: the delta since a parked copy's
    # cursor, or whole once the park expired); and whether it started in
    # the hour its rows are charged to or before.
    KINDS = ("first_in_hour", "first_before", "refetch_in_hour", "refetch_before")

    def __init__(self):
        self.last = {}
        self.delta = defaultdict(lambda: [0, 0])  # (shard, hour) → [queries, rows]
        self.order_rows = defaultdict(lambda: dict.fromkeys(self.KINDS, 0))  # (shard, hour) → kind → rows
        self.seen_rows = {}  # order id → rows already charged
        self.first_order = {}  # (node, shard) → id of the run's first order on the pair
        self.samples = 0

    def add_orders(self, trace_sec, wall_sec, speed, orders):
        if not isinstance(orders, list):
            return
        h = int(trace_sec) // 3600 * 3600
        for o in sorted(orders, key=lambda o: o.get("id", 0)):
            pair = (o.get("node"), o.get("shard"))
            self.first_order.setdefault(pair, o.get("id"))
            rows = int(o.get("rows") or 0)
            d = rows - self.seen_rows.get(o["id"], 0)
            if d <= 0:
                continue
            self.seen_rows[o["id"]] = rows
            started = o.get("started_unix_ms")
            started_trace = (trace_sec - (wall_sec - started / 1000.0) * speed
                             if started else trace_sec)
            kind = ("first" if self.first_order[pair] == o["id"] else "refetch") + (
                "_in_hour" if started_trace >= h else "_before")
            self.order_rows[(o["shard"], h)][kind] += d

    def add(self, trace_sec, metrics):
        h = int(trace_sec) // 3600 * 3600
        self.samples += 1
        for k, v in metrics.items():
            for i, pre in enumerate((self.Q, self.R)):
                if k.startswith(pre):
                    shard = k[len(pre):-2]
                    d = v - self.last.get((i, shard), 0.0)
                    self.last[(i, shard)] = v
                    self.delta[(shard, h)][i] += int(d)


def shipped_keep_evicted_s():
    """conf/sync.toml's `[transfer] keep_evicted_s` (sync's default when
    absent): the bench keeps parked copies as long in trace time."""
    import tomllib
    with open(ROOT / "conf/sync.toml", "rb") as f:
        return float(tomllib.load(f).get("transfer", {}).get("keep_evicted_s", 3 * 86400))


def bin_dir(a):
    if a.bin_dir:
        return Path(a.bin_dir)
    target = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/shardcast/target"))
    return target / ("debug" if a.debug else "release")


# --------------------------------------------------------------------------
# Output.

def ratio(a, b):
    return "–" if a is None or not b else f"{a / b:.2f}"


def spike_markdown(summary):
    """The per-policy table in spike shard-hours, and the targets against
    the oracle."""
    runs = summary["runs"]
    s = summary["settings"]
    lines = [
        "",
        f"In spike shard-hours (provider latency {s.get('provider_latency_ms', 0)} ms per read):",
        "",
        "| policy | warm hit rate | p50 / p99 ms | provider queries (slow path + sync) "
        "| provider rows (slow path + sync) | mean hosted copies | mean parked copies | bytes moved (full copies) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        sp = r.get("spike_hours") or {}
        pr, lt = sp.get("provider_reads") or {}, sp.get("latency_ms") or {}
        c, t = r.get("cache") or {}, r["transfers"]
        lines.append(
            f"| {r['policy']} | {pct(sp.get('warm_hit_rate'))} | {lt.get('p50', 0):.1f} / {lt.get('p99', 0):.1f} "
            f"| {pr.get('queries', 0):,} ({pr.get('slow_path_queries', 0):,} + {pr.get('sync_queries', 0):,}) "
            f"| {pr.get('rows', 0):,} ({pr.get('slow_path_rows', 0):,} + {pr.get('sync_rows', 0):,}) "
            f"| {c.get('mean_hosted_copies') or 0:.1f} | {c.get('mean_parked_copies') or 0:.1f} "
            f"| {t['bytes']:,} ({t['full_copy_bytes']:,}) |")
    split_rows = [r for r in runs if (r.get("spike_hours") or {}).get("sync_rows_split")]
    if split_rows:
        lines += ["", "sync's rows in spike shard-hours, by what read them (orders: the pair's first "
                  "copy or a re-fetch, started within the spike hour or before; freshness: deltas "
                  "of hosted copies):", "",
                  "| policy | first copy, started in the hour | first copy, started before "
                  "| re-fetch, started in the hour | re-fetch, started before | freshness |",
                  "|---|---|---|---|---|---|"]
        for r in split_rows:
            x = r["spike_hours"]["sync_rows_split"]
            lines.append(f"| {r['policy']} | {x['first_in_hour']:,} | {x['first_before']:,} "
                         f"| {x['refetch_in_hour']:,} | {x['refetch_before']:,} | {x['freshness']:,} |")
    when_rows = [r for r in runs if (r.get("cache") or {}).get("copies_when")]
    if when_rows:
        lines += ["", "mean hosted copies by when they were held against the shard's spikes:", "",
                  "| policy | in a spike hour | the hour before | the hour after | other | all |",
                  "|---|---|---|---|---|---|"]
        for r in when_rows:
            w = r["cache"]["copies_when"]
            lines.append(f"| {r['policy']} | " + " | ".join(f"{w.get(k, 0):.2f}" for k in COPY_WHEN)
                         + f" | {sum(w.values()):.2f} |")
    by = {r["policy"]: r for r in runs}
    f, o = by.get("forecast"), by.get("oracle")
    if f and o:
        fs, os_ = f["spike_hours"], o["spike_hours"]
        fc, oc = f["cache"].get("mean_hosted_copies"), o["cache"].get("mean_hosted_copies")
        lines += ["", "Targets (forecast against the oracle; against none and reactive):", "",
                  f"- warm hit rate in spikes: {ratio(fs['warm_hit_rate'], os_['warm_hit_rate'])} of the oracle's (target ≥ 0.95)",
                  f"- mean hosted copies: {ratio(fc, oc)}× the oracle's (target ≤ 1.2)",
                  f"- bytes moved: {ratio(f['transfers']['bytes'], o['transfers']['bytes'])}× the oracle's (target ≤ 1.2)"]
        for other in ("none", "reactive"):
            x = by.get(other)
            if x:
                xs = x["spike_hours"]
                lines.append(
                    f"- against {other}: spike p99 {fs['latency_ms']['p99']:.1f} vs {xs['latency_ms']['p99']:.1f} ms, "
                    f"spike provider queries {fs['provider_reads']['queries']:,} vs {xs['provider_reads']['queries']:,}, "
                    f"rows {fs['provider_reads']['rows']:,} vs {xs['provider_reads']['rows']:,}")
    return "\n".join(lines) + "\n"


def pct(x):
    return "–" if x is None else f"{100 * x:.1f} %"


def markdown(summary):
    s = summary["settings"]
    lines = [
        f"Replay {s['start']} + {s['days']:g} days at {s['speed']:g}x (1 trace hour = "
        f"{3600 / s['speed']:.2f} s), scale {s['scale']:g}, {s['backend']} backend, "
        f"{summary['date']}.",
        "",
        "| policy | applied | hit rate | hit rate in spikes | provider reads (slow path + sync rows) "
        "| bytes transferred (full copies) | mean hosted copies | p50 / p99 ms | failed / non-2xx | requests |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["runs"]:
        t, p, lt = r["transfers"], r["provider_reads"], r["latency_ms"]
        lines.append(
            f"| {r['policy']} | {'yes' if r['policy_applied'] else 'no'} | {pct(r['hit_rate'])} "
            f"| {pct(r['hit_rate_spikes'])} | {p['total']:,} ({p['slow_path']:,} + {p['sync_rows']:,}) "
            f"| {t['bytes']:,} ({t['full_copy_bytes']:,}) "
            f"| {(r.get('cache') or {}).get('mean_hosted_copies') or 0:.1f} "
            f"| {lt['p50']:.1f} / {lt['p99']:.1f} "
            f"| {r['failed']} / {r['non_2xx']} | {r['requests']:,} |")
    notes = sorted({n for r in summary["runs"] for n in r["notes"]})
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    lines += ["", f"Spikes: {summary['spikes']['definition']} "
              f"({summary['spikes']['shard_hours']} shard-hours)."]
    return "\n".join(lines) + "\n" + spike_markdown(summary)


COLORS = {"none": "#888888", "reactive": "#e08a00", "forecast": "#1f77b4", "oracle": "#2ca02c"}


def svg_bars(summary):
    runs = summary["runs"]
    w, h, left, bottom, top = 640, 320, 60, 50, 40
    bw = (w - left - 20) / max(1, len(runs))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">'
           'Node cache hit rate: overall (light) and during spikes (dark)</text>']
    ph = h - top - bottom
    for i in range(0, 101, 20):
        y = top + ph * (1 - i / 100)
        out.append(f'<line x1="{left}" x2="{w - 20}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{i} %</text>')
    for k, r in enumerate(runs):
        x = left + k * bw
        c = COLORS.get(r["policy"], "#444")
        for j, (key, op) in enumerate((("hit_rate", 0.4), ("hit_rate_spikes", 1.0))):
            v = r[key] or 0.0
            bh = ph * v
            bx = x + bw * 0.15 + j * bw * 0.35
            out.append(f'<rect x="{bx:.1f}" y="{top + ph - bh:.1f}" width="{bw * 0.33:.1f}" '
                       f'height="{bh:.1f}" fill="{c}" fill-opacity="{op}"/>')
            out.append(f'<text x="{bx + bw * 0.165:.1f}" y="{top + ph - bh - 4:.1f}" '
                       f'text-anchor="middle" font-size="10">{100 * v:.0f}</text>')
        label = r["policy"] + ("" if r["policy_applied"] else " *")
        out.append(f'<text x="{x + bw / 2:.1f}" y="{h - bottom + 18}" text-anchor="middle">{label}</text>')
    if any(not r["policy_applied"] for r in runs):
        out.append(f'<text x="{left}" y="{h - 10}" font-size="10">* policy not applied '
                   '(forecaster without [manager] policy): the same real-time manager</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def svg_timeline(summary, demand_total):
    runs = summary["runs"]
    hours = sorted({p["hour"] for r in runs for p in r["timeline"]} | set(demand_total))
    if not hours:
        return "<svg xmlns=\"http://www.w3.org/2000/svg\"/>\n"
    idx = {hh: i for i, hh in enumerate(hours)}
    w, h, left, bottom, top = 900, 360, 60, 60, 40
    pw, ph = w - left - 20, h - top - bottom
    x = lambda i: left + pw * (i + 0.5) / len(hours)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="12">',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">'
           'Hit rate per trace hour (lines) over demand (grey bars, invoice lines)</text>']
    dmax = max(demand_total.values() or [1]) or 1
    for hh, v in demand_total.items():
        bh = ph * 0.9 * v / dmax
        out.append(f'<rect x="{x(idx[hh]) - pw / len(hours) / 2:.1f}" y="{top + ph - bh:.1f}" '
                   f'width="{pw / len(hours):.2f}" height="{bh:.1f}" fill="#ccc"/>')
    for i in range(0, 101, 25):
        y = top + ph * (1 - i / 100)
        out.append(f'<line x1="{left}" x2="{w - 20}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{i} %</text>')
    for k, r in enumerate(runs):
        pts = [f"{x(idx[p['hour']]):.1f},{top + ph * (1 - p['hit_rate']):.1f}"
               for p in r["timeline"] if p["hit_rate"] is not None]
        c = COLORS.get(r["policy"], "#444")
        if pts:
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{" ".join(pts)}"/>')
        out.append(f'<text x="{left + 10 + k * 110}" y="{h - 12}" fill="{c}">■ {r["policy"]}</text>')
    for i, hh in enumerate(hours):
        if hh.endswith("00:00"):
            out.append(f'<text x="{x(i):.1f}" y="{top + ph + 16}" text-anchor="middle" '
                       f'font-size="10">{hh[5:10]}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--start", default="2011-11-07", help="trace time (store-local)")
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--speed", type=float, default=3600.0, help="trace seconds per real second")
    ap.add_argument("--scale", type=float, default=1.0, help="requests per invoice line")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--max-rps", type=float, default=3000.0)
    ap.add_argument("--max-minutes", type=float, default=4.0,
                    help="bound on each policy's replay (real minutes)")
    ap.add_argument("--interval-ms", type=int, default=100,
                    help="manager round interval, real ms (100, the stack's floor on a replay clock: "
                         "6 trace minutes at 3600x; the shipped 2 s rounds are 2 trace seconds apart, "
                         "so the finest rounds are the nearest to them)")
    ap.add_argument("--threshold-weeks", type=float, default=4.0,
                    help="per-shard thresholds: p90 hour of this many weeks before the slice")
    ap.add_argument("--no-policy", action="store_true", help="do not pass [manager] policy")
    ap.add_argument("--no-clock", action="store_true", help="do not pass [clock] (real-time forecaster)")
    ap.add_argument("--debug", action="store_true", help="debug binaries")
    ap.add_argument("--bin-dir")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--allow-fallback", action="store_true",
                    help="run even when the forecaster serves its seasonal-naive fallback, not its models")
    ap.add_argument("--backend", choices=["embedded", "redis-postgres"], default="embedded")
    ap.add_argument("--set", action="append", default=[], help="extra forecaster override (scripts/stack --set)")
    ap.add_argument("--proxy-set", action="append", default=[])
    ap.add_argument("--provider-latency-ms", type=int, default=30,
                    help="wide-area latency of every provider read (sync's [provider] read_latency_ms)")
    ap.add_argument("--no-keep-evicted", action="store_true",
                    help="drop an evicted copy at once (every re-fetch a full copy)")
    ap.add_argument("--changes-rate", type=float, default=100.0,
                    help="provider changes per real second during the replay (0: none)")
    ap.add_argument("--max-staleness-s", type=float, default=900.0,
                    help="how far a node's answer may lag the provider, trace seconds, for "
                         "every policy: hosted copies' delta reads and slow-path fills "
                         "(sync's [freshness] max_staleness_s, scaled by --speed; default "
                         "900 = 15 trace minutes)")
    ap.add_argument("--sync-set", action="append", default=[], help="extra sync override")
    ap.add_argument("--var", default=str(ROOT / "var/replay"),
                    help="state of each policy's stack: VAR/<policy> (default var/replay)")
    ap.add_argument("--out", help="results directory (default benches/replay/results/<date>)")
    ap.add_argument("--every", type=float, default=10.0, help="progress line every S seconds")
    a = ap.parse_args()
    policies = [p.strip() for p in a.policies.split(",") if p.strip()]
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise SystemExit(f"replay-bench: unknown policies {bad}; choose from {POLICIES}")
    if a.days <= 0 or a.days * 24 * 3600 / a.speed > a.max_minutes * 60 * 1.5:
        raise SystemExit(f"replay-bench: {a.days:g} days at {a.speed:g}x take "
                         f"{a.days * 24 * 3600 / a.speed / 60:.1f} min, over --max-minutes {a.max_minutes:g}")
    date = dt.date.today().isoformat()
    out_dir = Path(a.out) if a.out else HERE / "results" / date
    out_dir.mkdir(parents=True, exist_ok=True)

    if not a.no_build and not a.bin_dir:
        cmd = ["cargo", "build", "--workspace", "--bins"] + ([] if a.debug else ["--release"])
        log(" ".join(cmd))
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            raise SystemExit("replay-bench: build failed")

    start = replay.parse_time(a.start)
    end = start + dt.timedelta(days=a.days)
    demand = hourly(start, end)
    spikes = spike_hours(demand)
    demand_total = defaultdict(int)
    for s, hours in demand.items():
        for hh, v in hours.items():
            demand_total[f"{replay.from_sec(hh):%Y-%m-%d %H:00}"] += v
    log(f"{len(policies)} policies x {a.days:g} trace days at {a.speed:g}x "
        f"(~{a.days * 24 * 3600 / a.speed / 60:.1f} min each); results in {out_dir}")
    runs = []
    thr = {}
    interrupted = False
    current = None

    def on_signal(_s, _f):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for p in policies:
            current = Run(a, p, out_dir, demand, spikes)
            r = current.execute()
            thr = current.thr
            current = None
            runs.append(r)
            log(f"{p}: hit {pct(r['hit_rate'])}, in spikes {pct(r['hit_rate_spikes'])}, "
                f"{r['transfers']['bytes']:,} bytes in {r['transfers']['orders_done']} orders, "
                f"p99 {r['latency_ms']['p99']:.1f} ms, failed {r['failed']}")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping the stack, writing what was measured")
        if current is not None:
            current.stop_stack()
    summary = {
        "date": date,
        "settings": {"start": a.start, "days": a.days, "speed": a.speed, "scale": a.scale,
                     "backend": a.backend, "workers": a.workers, "max_rps": a.max_rps,
                     "interval_ms": a.interval_ms, "thresholds_rps": thr,
                     "provider_latency_ms": a.provider_latency_ms,
                     "keep_evicted": not a.no_keep_evicted, "changes_rate": a.changes_rate,
                     "max_staleness_trace_s": a.max_staleness_s,
                     "set": a.set, "sync_set": a.sync_set,
                     "binaries": a.bin_dir or ("debug" if a.debug else "release")},
        "spikes": {
            "definition": "shard-hours whose demand (invoice lines) is above the shard's 90th "
                          "percentile hour over the replayed slice, and above zero",
            "shard_hours": sum(len(v) for v in spikes.values()),
            "per_shard": {s: len(v) for s, v in sorted(spikes.items())},
        },
        "interrupted": interrupted,
        "runs": runs,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out_dir / "summary.md").write_text(markdown(summary))
    (out_dir / "spike_hit_rate.svg").write_text(svg_bars(summary))
    (out_dir / "hit_timeline.svg").write_text(svg_timeline(summary, dict(demand_total)))
    print(markdown(summary))
    log(f"wrote {out_dir}/summary.json, summary.md, spike_hit_rate.svg, hit_timeline.svg")
    return 1 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
