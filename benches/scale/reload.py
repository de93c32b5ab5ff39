#!/usr/bin/env python3
"""Time `shardcast-proxy -t` and a config reload that changes one shard, on
a configuration benches/scale/gen.py wrote (run it with --tuned 1).

For each binary given: `-t` wall time (--runs times), then the proxy is
started on the configuration, and the threshold of the hand-tuned shard
`TUNED/T000` is flipped --reloads times, each followed by
`POST /admin/reload`; the time of each reload call is recorded (parse,
validate, build, swap; the answer comes after the swap). Binaries are
interleaved round by round so load on the machine hits them alike.

    python3 benches/scale/gen.py --tuned 1 --out /tmp/scale
    python3 benches/scale/reload.py --dir /tmp/scale BIN [BIN...]

Prints one JSON line per binary: -t times, reload times, p50s.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def admin_of(config: Path) -> str:
    m = re.search(r'^admin = "([^"]+)"', config.read_text(), re.M)
    if not m:
        sys.exit(f"{config}: no admin address")
    return "http://" + m.group(1)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"the proxy exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/live", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("the proxy did not start")


def flip(topology: Path, i: int) -> None:
    text = topology.read_text()
    head, sep, rest = text.partition('id = "TUNED/T000"')
    if not sep:
        sys.exit(f"{topology}: no TUNED/T000 shard (generate with --tuned 1)")
    rest = re.sub(r"threshold = [0-9.]+", f"threshold = {5.0 + (i % 2)}", rest, count=1)
    topology.write_text(head + sep + rest)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--reloads", type=int, default=10)
    ap.add_argument("bins", nargs="+")
    a = ap.parse_args()
    config = a.dir / "proxy.toml"
    admin = admin_of(config)
    out = {b: {"check_s": [], "reload_ms": []} for b in a.bins}
    for _ in range(a.runs):
        for b in a.bins:
            t0 = time.perf_counter()
            r = subprocess.run([b, "-t", "-c", str(config)], capture_output=True, text=True)
            out[b]["check_s"].append(round(time.perf_counter() - t0, 3))
            if r.returncode != 0:
                sys.exit(f"{b} -t failed: {r.stderr}")
    for b in a.bins:
        log = open(a.dir / "reload-proxy.log", "w")
        p = subprocess.Popen([b, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(admin, p, 120)
            for i in range(a.reloads):
                flip(a.dir / "topology.toml", i + 1)
                # The file watcher may pick the change up too: the reload
                # call then answers `unchanged`; both are timed.
                t0 = time.perf_counter()
                req = urllib.request.Request(admin + "/admin/reload", method="POST")
                with urllib.request.urlopen(req, timeout=60) as r:
                    body = json.loads(r.read())
                out[b]["reload_ms"].append((round((time.perf_counter() - t0) * 1000, 1), body["outcome"]))
                time.sleep(0.3)
        finally:
            p.terminate()
            p.wait(timeout=30)
            flip(a.dir / "topology.toml", 0)
    for b, r in out.items():
        applied = [ms for ms, o in r["reload_ms"] if o == "applied"]
        print(json.dumps({
            "bin": b,
            "check_s": r["check_s"],
            "check_p50_s": statistics.median(r["check_s"]),
            "reload_ms": r["reload_ms"],
            "reload_applied_p50_ms": statistics.median(applied) if applied else None,
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
