#!/usr/bin/env python3
"""Write a wrk path list drawn from the Online Retail II trace.

Each output line is `/inventory/{sku}?region={UK|INTL}`, sampled from the
invoice lines so that popular skus appear in proportion to their demand.
Usage: make_paths.py [N] [OUT]  (default 20000 lines to benches/wrk/paths.txt)
"""
import csv
import gzip
import random
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[2]
n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
out = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "benches/wrk/paths.txt"
rows = []
with gzip.open(root / "data/online_retail/lines.csv.gz", "rt") as f:
    for r in csv.DictReader(f):
        rows.append((r["sku"], "UK" if r["country"] == "United Kingdom" else "INTL"))
rng = random.Random(42)
with open(out, "w") as f:
    for sku, region in rng.choices(rows, k=n):
        f.write(f"/inventory/{sku}?region={region}\n")
print(f"{n} paths from {len(rows)} invoice lines -> {out}")
