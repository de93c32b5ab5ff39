"""The wrk mixes have the properties the README promises, the generator is
deterministic, the runner refuses non-loopback targets, and mix.lua counts
what a server answers (run through real wrk when it is installed).

Run: .venv/bin/python -m pytest -q benches/wrk/  (scripts/test does).
"""
import csv
import gzip
import http.server
import re
import shutil
import subprocess
import sys
import threading
from argparse import Namespace
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_paths as mp  # noqa: E402
import run as runner  # noqa: E402

N = 4000


@pytest.fixture(scope="module")
def data():
    return mp.Data()


def args(**kw):
    return mp.parse_args([f"-{k}={v}" if k == "n" else f"--{k.replace('_', '-')}={v}" for k, v in kw.items()])


def parsed(lines):
    return [mp.parse_path(p) for p in lines]


def test_cli_output_is_deterministic_and_matches_the_library(tmp_path, data):
    # A separate process (fresh hash seed) writes the same bytes as this one.
    subprocess.run([sys.executable, str(HERE / "make_paths.py"), "--dir", str(tmp_path), "-n", str(N),
                    "--mixes", "popular,spike,unknown"], check=True, capture_output=True)
    a = args(n=N)
    for mix in ("popular", "spike", "unknown"):
        want = "".join(p + "\n" for p in mp.make(mix, data, a))
        assert (tmp_path / f"{mix}.txt").read_text() == want, mix
    assert mp.make("popular", data, args(n=N, seed=7)) != mp.make("popular", data, a)


def test_regions_only_uk_intl_and_paths_well_formed(data):
    a = args(n=N)
    pat = re.compile(r"^/inventory/[A-Za-z0-9%._-]+\?region=(UK|INTL)$")
    for mix in mp.MIXES:
        lines = mp.make(mix, data, a)
        assert lines, mix
        bad = [p for p in lines if not pat.match(p)]
        assert not bad, (mix, bad[:3])


def test_trace_is_the_invoice_lines_in_order(data):
    want = []
    with gzip.open(mp.DATA / "lines.csv.gz", "rt", newline="") as f:
        for r in csv.DictReader(f):
            if not mp.addressable(r["sku"]):
                continue
            region = "UK" if r["country"] in ("United Kingdom", "Channel Islands") else "INTL"
            want.append((r["sku"], region))
            if len(want) == N:
                break
    assert parsed(mp.make("trace", data, args(n=N))) == want


def test_popular_keeps_the_real_uk_share(data):
    real = sum(1 for l in data.lines if l[2] == "UK") / len(data.lines)
    lines = parsed(mp.make("popular", data, args(n=20000)))
    uk = sum(1 for _, g in lines if g == "UK") / len(lines)
    assert 0.85 < real < 0.97
    assert abs(uk - real) < 0.01, (uk, real)
    # Demand-weighted: the most requested sku is the trace's best seller.
    top_trace = Counter(l[1] for l in data.lines).most_common(1)[0][0]
    assert Counter(s for s, _ in lines).most_common(1)[0][0] == top_trace


def test_uniform_is_every_catalog_row_once(data):
    lines = parsed(mp.make("uniform", data, args()))
    assert len(lines) == len(set(lines)) == len(data.rows)
    assert set(lines) == set(data.rows)
    assert {s for s, _ in lines} == set(data.category) - data.skipped


@pytest.mark.parametrize("share", [0.8, 0.5])
def test_spike_concentrates_one_cell(data, share):
    lines = parsed(mp.make("spike", data, args(n=N, spike_share=share)))
    cell = [1 for s, g in lines if g == "UK" and data.category[s] == "SEASONAL"]
    assert len(lines) == N
    assert abs(len(cell) / N - share) < 0.01
    # The rest is spread by popularity over the other shards, not one sku.
    rest = Counter(s for s, g in lines if not (g == "UK" and data.category[s] == "SEASONAL"))
    assert len(rest) > 100


def test_spike_in_another_cell(data):
    lines = parsed(mp.make("spike", data, args(n=N, spike_category="LIGHTING", spike_region="INTL")))
    share = sum(1 for s, g in lines if g == "INTL" and data.category[s] == "LIGHTING") / N
    assert abs(share - 0.8) < 0.01


@pytest.mark.parametrize("share", [0.1, 0.25])
def test_unknown_fraction(data, share):
    lines = parsed(mp.make("unknown", data, args(n=N, unknown_share=share)))
    unknown = [s for s, _ in lines if s not in data.category]
    assert abs(len(unknown) / N - share) < 0.005
    assert len(set(unknown)) > 50
    assert all(s.startswith("U") for s in unknown)


def test_no_unaddressable_skus(data):
    # The proxy answers 400 to "47503J " (trailing space); no mix sends it.
    assert "47503J " in data.skipped
    for mix in mp.MIXES:
        assert all(mp.addressable(s) for s, _ in parsed(mp.make(mix, data, args(n=N))))


def test_manifest_records_measured_properties(tmp_path):
    mp.main(["--dir", str(tmp_path), "-n", "2000", "--mixes", "spike,unknown"])
    import json
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["spike"]["UK/SEASONAL_share"] == 0.8
    assert m["unknown"]["unknown_share"] == 0.1
    assert set(m["spike"]["regions"]) <= {"UK", "INTL"}


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://127.0.0.2:1", "http://[::1]:8080",
                                 "http://localhost:8080"])
def test_runner_accepts_loopback(url):
    assert runner.loopback_url(url) == url


@pytest.mark.parametrize("url", ["http://10.0.0.1:8080", "http://192.168.1.1", "http://0.0.0.0:8080",
                                 "ftp://127.0.0.1/", "127.0.0.1:8080"])
def test_runner_refuses_other_targets(url):
    with pytest.raises(SystemExit):
        runner.loopback_url(url)


def test_runner_bounds():
    for bad in (["-d", "600"], ["-c", "1000"], ["-t", "8"], ["-t", "4", "-c", "2"], ["--mixes", "nope"]):
        with pytest.raises(SystemExit):
            runner.main(bad + ["--url", "http://127.0.0.1:1"])


class Node(http.server.BaseHTTPRequestHandler):
    """Answers like a reference node behind the demo proxy: 404 for `U…`
    skus, x-cache alternating by sku, the shard header from the region."""
    protocol_version = "HTTP/1.1"
    wbufsize = 65536
    disable_nagle_algorithm = True

    def do_GET(self):
        sku, region = mp.parse_path(self.path)
        body = b"{}"
        self.send_response(404 if sku.startswith("U") else 200)
        self.send_header("content-length", str(len(body)))
        self.send_header("X-Cache", "HIT" if len(sku) % 2 else "miss")
        self.send_header("x-shardcast-shard", f"{region}/X")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk not installed (scripts/setup installs it)")
def test_mix_lua_counts_statuses_cache_and_shards(tmp_path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Node)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        paths = tmp_path / "few.txt"
        paths.write_text("/inventory/AB?region=UK\n/inventory/ABC?region=INTL\n/inventory/U1?region=UK\n")
        out = subprocess.run(
            ["wrk", "-t2", "-c2", "-d1s", "--latency", "-s", str(HERE / "mix.lua"),
             f"http://127.0.0.1:{srv.server_address[1]}", "--", str(paths)],
            capture_output=True, text=True, timeout=30, check=True).stdout
    finally:
        srv.shutdown()
    s = runner.parse_summary(out)
    assert s is not None, out
    assert s["mix"] == "few"
    n = int(s["requests"])
    hit, miss, none = int(s["hit"]), int(s["miss"]), int(s["none"])
    assert n > 10
    # Counted responses cover every completed request (wrk may count a few
    # more that were cut at the deadline).
    assert n - 4 <= hit + miss + none <= n
    assert none == 0 and hit > 0 and miss > 0
    # Each thread cycles through all three paths: a third are the 404 sku.
    assert abs(int(s["non2xx"]) / (hit + miss) - 1 / 3) < 0.1
    assert "404:" in s["statuses"] and "200:" in s["statuses"]
    assert s["shards"].startswith("UK/X:")
    assert len(re.findall(r"^  thread \d: responses=", out, re.M)) == 2
