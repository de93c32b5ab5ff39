#!/usr/bin/env python3
"""Generate a storefront-sized shardcast deployment from the project's real data.

Writes, under --out:

- ``catalog.csv``: --skus rows ``sku,category``. Each sku is a real Online
  Retail StockCode (``data/online_retail/catalog.csv.gz``) with a numeric
  suffix; the real category of the sampled sku is kept, so the catalog's
  per-category mix follows the real catalog's popularity (skus are drawn
  weighted by their real ``lines`` count). Each real category is split into
  sub-categories (``LIGHTING.017``) so that sub-categories × regions gives
  --shards shards; a sku's sub-category is drawn from a Zipf law (a few
  sub-categories hold many skus, as in a real assortment).
- ``topology.toml``: --nodes nodes on loopback (``--node-port`` upward) and
  one ``[[shard_rules]]`` per real category (its sub-categories × every
  region), with the volatility tier derived from the demand history: the
  coefficient of variation of the category's real daily demand
  (``shard_daily.csv.gz``), lowest third ``low``, highest third ``high``.
- ``--tuned N`` adds N hand-tuned shards listed one by one beside the rules
  (``TUNED/T000``…: one category ``TUNED.000``… in region ``UK``, each with
  its own threshold), the kind an operator edits one at a time — what a
  reload that changes one shard touches.
- ``proxy.toml``: a proxy config naming the two files above (traffic on
  --http, admin on --admin).

Regions: ``UK`` and ``INTL`` (the real ones) plus ``R02``…; their count is
--regions (default 25), and --shards must be a multiple of it.

Deterministic for a given --seed. Usage:

    python3 benches/scale/gen.py --shards 10000 --skus 1000000 --nodes 24 --out /tmp/scale

Prints a one-line JSON summary. Reused by the scale harness.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import itertools
import json
import random
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deployment  # noqa: E402
from deployment import DATA, draw, nodes_toml, rule_toml, split, zipf_cumulative  # noqa: E402


def read_catalog(path: Path) -> dict[str, list[tuple[str, int]]]:
    """Real skus by category, each with its number of invoice lines."""
    by_cat: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for row in deployment.read_catalog(path):
        by_cat[row["category"]].append((row["sku"], row["lines"]))
    return dict(sorted(by_cat.items()))


def volatility_tiers(path: Path, cats: list[str]) -> dict[str, str]:
    """Coefficient of variation of each category's daily lines (both
    regions summed) → low / medium / high by tercile."""
    daily: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    with gzip.open(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            daily[row["category"]][row["ds"]] += float(row["lines"])
    cv = {}
    for c in cats:
        xs = list(daily.get(c, {}).values())
        m = statistics.fmean(xs) if xs else 0.0
        cv[c] = statistics.pstdev(xs) / m if m > 0 else 0.0
    ranked = sorted(cats, key=lambda c: cv[c])
    n = len(ranked)
    tiers = {}
    for i, c in enumerate(ranked):
        tiers[c] = "low" if i < n / 3 else ("high" if i >= 2 * n / 3 else "medium")
    return tiers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--skus", type=int, default=1_000_000)
    ap.add_argument("--nodes", type=int, default=24)
    ap.add_argument("--regions", type=int, default=25)
    ap.add_argument("--replication-factor", type=int, default=2)
    ap.add_argument("--node-port", type=int, default=21000, help="first node's port")
    ap.add_argument("--http", default="127.0.0.1:28080")
    ap.add_argument("--admin", default="127.0.0.1:29901")
    ap.add_argument("--metadata", default=None, help="redis:// URL of the metadata store")
    ap.add_argument("--zipf", type=float, default=1.1, help="sub-category skew")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--tuned", type=int, default=0, help="hand-tuned shards listed beside the rules")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.regions < 2 or a.shards % a.regions:
        ap.error(f"--shards ({a.shards}) must be a multiple of --regions ({a.regions}, at least 2)")
    if a.nodes < a.replication_factor:
        ap.error("--nodes must be at least --replication-factor")
    rng = random.Random(a.seed)
    real = read_catalog(DATA / "catalog.csv.gz")
    cats = list(real)
    regions = ["UK", "INTL"] + [f"R{i:02d}" for i in range(2, a.regions)]
    per_region = a.shards // a.regions
    if per_region < len(cats):
        ap.error(f"--shards / --regions must be at least {len(cats)} (one sub-category per real category)")
    popularity = [sum(n for _, n in real[c]) for c in cats]
    subs = dict(zip(cats, split(per_region, popularity)))
    tiers = volatility_tiers(DATA / "shard_daily.csv.gz", cats)

    a.out.mkdir(parents=True, exist_ok=True)
    # Skus: a real sku weighted by its lines, its real category, a Zipf
    # sub-category, a unique suffix.
    flat = [(sku, c, n) for c in cats for sku, n in real[c]]
    cum = list(itertools.accumulate(n for _, _, n in flat))
    zipf_cum = {c: zipf_cumulative(subs[c], a.zipf) for c in cats}
    per_cat = defaultdict(int)
    buf = io.StringIO()
    buf.write("sku,category\n")
    width = len(str(a.skus))
    for i in range(a.skus):
        sku, c, _ = flat[draw(rng, cum)]
        k = draw(rng, zipf_cum[c])
        buf.write(f"{sku}-{i:0{width}d},{c}.{k:03d}\n")
        per_cat[c] += 1
    (a.out / "catalog.csv").write_text(buf.getvalue())

    t = [
        "# Generated by benches/scale/gen.py: "
        + f"{a.shards} shards by rule, {a.nodes} nodes, seed {a.seed}.",
        f"replication_factor = {a.replication_factor}",
        "",
    ]
    t += nodes_toml(a.nodes, a.node_port, 1000)
    for k in range(a.tuned):
        t += [
            "[[shards]]",
            f'id = "TUNED/T{k:03d}"',
            f'categories = ["TUNED.{k:03d}"]',
            'regions = ["UK"]',
            "threshold = 5.0",
            "",
        ]
    for c in cats:
        t += rule_toml([f"{c}.{k:03d}" for k in range(subs[c])], regions, tiers[c])
    (a.out / "topology.toml").write_text("\n".join(t))

    p = [
        "# Generated by benches/scale/gen.py.",
        'topology = "topology.toml"',
        "",
        "[listen]",
        f'http = ["{a.http}"]',
        f'admin = "{a.admin}"',
        "",
        "[[routes]]",
        'name = "storefront"',
        'path = "/inventory/{sku}"',
        'region_header = "x-region"',
        'default_region = "UK"',
        "",
        "[catalog]",
        'csv = "catalog.csv"',
        "",
    ]
    if a.metadata:
        p += ["[control]", f'metadata = "{a.metadata}"', ""]
    (a.out / "proxy.toml").write_text("\n".join(p))
    print(
        json.dumps(
            {
                "out": str(a.out),
                "shards": a.shards + a.tuned,
                "regions": len(regions),
                "sub_categories": {c: subs[c] for c in cats},
                "volatility": tiers,
                "skus": a.skus,
                "skus_per_category": dict(per_cat),
                "nodes": a.nodes,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
