"""The whole system as the README's first command starts it, and the replay
benchmark, smoke-tested on the workspace's debug binaries (built by the
cargo step of scripts/test): every process starts, a request goes through,
the operator surfaces answer, Ctrl-C stops everything; a short replay runs
two policies end to end and reports what it measured."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


def test_stack_starts_serves_and_stops_cleanly(tmp_path):
    var = tmp_path / "var"
    launcher = subprocess.Popen(
        [str(ROOT / "scripts/stack"), "--free-ports", "--var", str(var), "--bin-dir", bins(),
         "--quiet", "--max-seconds", "300"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        ready = var / "stack.json"
        deadline = time.monotonic() + 180
        while not ready.exists():
            assert launcher.poll() is None, launcher.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the stack was not ready within 180 s"
            time.sleep(0.2)
        u = json.loads(ready.read_text())["urls"]
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
        status, headers, body = get(u["admin"] + "/dashboard")
        assert status == 200 and b"<html" in body.lower()
    finally:
        # Ctrl-C: the launcher stops every process it started.
        os.killpg(launcher.pid, signal.SIGINT)
        try:
            launcher.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            pytest.fail("the launcher did not stop within 40 s of SIGINT")
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
