"""The whole system as the README's first command starts it, and the replay
benchmark, smoke-tested on the workspace's debug binaries (built by the
cargo step of scripts/test): every process starts, a request goes through,
the operator surfaces answer, Ctrl-C stops everything; a short replay runs
two policies end to end and reports what it measured."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benches/replay"))
import replay  # noqa: E402
BIN = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/shardcast/target")) / "debug"


def bins():
    for b in ("shardcast-proxy", "shardcast-sync", "shardcast-forecaster"):
        if not (BIN / b).exists():
            pytest.fail(f"{BIN / b} not built: run `cargo build --workspace` first (scripts/test does)")
    return str(BIN)


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, dict(r.headers), r.read()


def processes_mentioning(text):
    out = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True).stdout.split()
    return [p for p in out if int(p) != os.getpid()]


def launch(var, *extra, max_seconds=300):
    """scripts/stack in its own session; its URLs once ready (bounded)."""
    launcher = subprocess.Popen(
        [str(ROOT / "scripts/stack"), "--free-ports", "--var", str(var), "--bin-dir", bins(),
         "--quiet", "--max-seconds", str(max_seconds), *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    ready = var / "stack.json"
    deadline = time.monotonic() + 180
    while not ready.exists():
        if launcher.poll() is not None or time.monotonic() >= deadline:
            stop(launcher)
            pytest.fail("the stack was not ready within 180 s: "
                        + launcher.stderr.read().decode()[-3000:])
        time.sleep(0.2)
    return launcher, json.loads(ready.read_text())["urls"]


def stop(proc, what="launcher", within=40):
    """Ctrl-C: the launcher (or the demo) stops every process it started."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return  # the group is gone already
    try:
        proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the {what} did not stop within {within} s of SIGINT")


def test_stack_starts_serves_and_stops_cleanly(tmp_path):
    var = tmp_path / "var"
    launcher, u = launch(var)
    try:
        # a real sku through the proxy to a node
        status, headers, _ = get(u["storefront"] + "/inventory/85123A?region=UK")
        assert status == 200
        assert headers.get("x-cache") in ("hit", "miss"), headers
        # the manager knows every shard; the dashboard is served
        deadline = time.monotonic() + 30
        while True:
            m = json.loads(get(u["forecaster"] + "/manager")[2])
            if m.get("rounds", 0) > 0:
                break
            assert time.monotonic() < deadline, m
            time.sleep(0.5)
        assert len(m["shards"]) == 14 and len(m["nodes"]) == 3, m
        # the trained models serve, not the seasonal-naive fallback
        assert replay.models_down(u["forecaster"], timeout_s=60) is None
        status, headers, body = get(u["admin"] + "/dashboard")
        assert status == 200 and b"<html" in body.lower()
    finally:
        stop(launcher)
    deadline = time.monotonic() + 10
    while processes_mentioning(str(var)):
        assert time.monotonic() < deadline, f"left running: {processes_mentioning(str(var))}"
        time.sleep(0.2)


def test_replay_compares_policies(tmp_path):
    out = tmp_path / "results"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benches/replay/run.py"), "--policies", "none,forecast",
         "--days", "0.5", "--bin-dir", bins(), "--no-build", "--out", str(out), "--max-minutes", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    s = json.loads((out / "summary.json").read_text())
    runs = {x["policy"]: x for x in s["runs"]}
    assert set(runs) == {"none", "forecast"}
    for p, x in runs.items():
        assert x["policy_applied"] and x["virtual_clock"], (p, x["notes"])
        assert x["requests"] > 100 and x["failed"] == 0, (p, x)
    # no pre-fetch copies nothing; the forecast policy copies shards ahead
    assert runs["none"]["transfers"]["orders_done"] == 0
    # what a storefront feels in spikes, with the provider 30 ms away
    for p, x in runs.items():
        sp = x["spike_hours"]
        assert x["provider_latency_ms"] == 30 and sp["requests"] > 0, (p, sp)
        assert sp["reads_samples"] > 0 and sp["latency_ms"]["p99"] > 0, (p, sp)
    # fill on miss reads the provider once per miss; sync reads nothing for it
    none = runs["none"]["spike_hours"]["provider_reads"]
    assert none["slow_path_queries"] > 0 and none["sync_rows"] == 0, none
    assert runs["forecast"]["spike_hours"]["week_sync_rows"] > 0
    assert (out / "summary.md").exists() and (out / "spike_hit_rate.svg").exists()


# --------------------------------------------------------------------------
# The demo on the replay clock.

DEMO_SPEED = 1800  # a trace hour every 2 s
SUMMARY = re.compile(r"^replay: +\d+s  trace (\d{4}-\d\d-\d\d \d\d:\d\d)")
THRESHOLD_RPS = 0.02  # conf/forecaster.toml default_threshold_rps (trace seconds)


def trace_hourly(day):
    """{shard: {hour 0..23: invoice lines}} of one trace day."""
    import gzip
    out = {}
    with gzip.open(ROOT / "data/online_retail/shard_hourly.csv.gz", "rt") as f:
        head = f.readline().strip().split(",")
        i_s, i_ds, i_l = head.index("shard_id"), head.index("ds"), head.index("lines")
        for line in f:
            p = line.rstrip("\n").split(",")
            if p[i_ds].startswith(day):
                out.setdefault(p[i_s], {})[int(p[i_ds][11:13])] = float(p[i_l])
    return out


def test_the_demo_runs_on_the_replay_clock_and_prefetches_before_the_rise(tmp_path):
    """scripts/demo as shipped, at a high speed on debug binaries: the
    forecaster's /clock is trace time and tracks the replay's, the hours'
    telemetry is the trace's, and the manager pre-fetches by forecast
    before a shard's demand first crosses its threshold that day."""
    import datetime as dt
    import threading

    var = tmp_path / "var"
    env = dict(os.environ, DEMO_START="2011-11-07 00:00", DEMO_SPEED=str(DEMO_SPEED),
               DEMO_MAX_SECONDS="45")
    demo = subprocess.Popen(
        [str(ROOT / "scripts/demo"), "--bin-dir", bins(), "--free-ports", "--var", str(var), "--quiet"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()

    def clock(fc):
        return json.loads(get(fc + "/clock")[2])

    def at(s):
        return dt.datetime.strptime(s[:16], "%Y-%m-%d %H:%M")

    try:
        ready = var / "stack.json"
        deadline = time.monotonic() + 180
        while not ready.exists():
            assert demo.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "the stack was not ready within 180 s"
            time.sleep(0.2)
        fc = json.loads(ready.read_text())["urls"]["forecaster"]
        c = clock(fc)
        assert c["replay"] and c["speed"] == DEMO_SPEED, c
        assert c["now"].startswith("2011-11-07"), f"not on the replay clock: {c}"
        # The replay's timeline (its summary line) and the forecaster's clock
        # agree within a real second's worth of trace time, line after line.
        seen, deadline = 0, time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, "".join(lines)[-3000:]
            assert demo.poll() is None, "".join(lines)[-3000:]
            summary = [m for m in map(SUMMARY.match, lines) if m]
            if len(summary) > seen:
                seen = len(summary)
                now = at(clock(fc)["now"])
                trace = at(summary[-1].group(1))
                assert abs((now - trace).total_seconds()) <= DEMO_SPEED * 1.5, (now, summary[-1].string)
                if trace >= dt.datetime(2011, 11, 7, 15):
                    break
            time.sleep(0.2)
        c = clock(fc)
        real_now_ms, trace_now = time.time() * 1000, at(c["now"])
        manager = json.loads(get(fc + "/manager")[2])
        decisions = json.loads(get(fc + "/manager/decisions?limit=500")[2])
        series = json.loads(get(fc + "/series?hours=24")[2])
    finally:
        stop(demo, "demo", within=60)
        reader.join(timeout=5)
    out = "".join(lines)
    day = trace_hourly("2011-11-07")

    # The forecaster's hours hold the trace's demand of those hours.
    begin = at(out.split("on the forecaster's clock from ")[1])
    first, last = begin.hour + 1, trace_now.hour - 1
    assert last - first >= 6, (begin, trace_now)
    got = want = 0.0
    for shard, s in series["shards"].items():
        h = s["hourly"]
        for k, v in enumerate(h["values"]):
            t = dt.datetime.fromtimestamp((h["start_unix_ms"] + k * h["step_ms"]) / 1000, dt.timezone.utc)
            if t.date() == dt.date(2011, 11, 7) and first <= t.hour <= last:
                got += v
                want += day.get(shard, {}).get(t.hour, 0.0)
    assert want > 500 and 0.8 <= got / want <= 1.2, (got, want)

    # A forecast pre-fetch before its shard's demand first crossed the
    # threshold that day (the trace says when), and the manager's count.
    thr = THRESHOLD_RPS * 3600
    ahead = []
    for d in decisions:
        if d["action"] != "add" or d["reason"] != "forecast":
            continue
        t = trace_now - dt.timedelta(seconds=(real_now_ms - d["at_unix_ms"]) / 1000 * DEMO_SPEED)
        rise = next((h for h in range(24) if day.get(d["shard"], {}).get(h, 0) > thr), None)
        if rise is not None and t < dt.datetime(2011, 11, 7, rise):
            ahead.append((d["shard"], f"{t:%H:%M}", rise))
    assert ahead, f"no forecast pre-fetch before a rise: {decisions}"
    p = manager["prefetch"]
    assert p["by_reason"].get("forecast", 0) >= 1 and p["warm_before_rise"] >= 1, p
    assert "warm before rise" in out and "forecaster 2011-11-07" in out, out[-2000:]


def test_the_benches_refuse_a_forecaster_without_its_models(tmp_path):
    """ONNX Runtime missing: the forecaster serves its fallback, says so on
    /metrics, and the replay and scale benches stop on it (models_down)."""
    launcher, u = launch(tmp_path / "var", "--set", "model.onnxruntime_lib=/nonexistent/libonnxruntime.so",
                         max_seconds=120)
    try:
        why = replay.models_down(u["forecaster"], timeout_s=60)
        assert why is not None and why.startswith("models not loaded"), why
        assert 'model="hourly"' in why and 'model="daily"' in why, why
    finally:
        stop(launcher)
