#!/usr/bin/env python3
"""Write wrk path lists ("mixes") drawn from the Online Retail II trace.

Every output line is one request path, `/inventory/{sku}?region={UK|INTL}`;
`benches/wrk/mix.lua` cycles through a file of them. The region of an invoice
line is UK for the United Kingdom and the Channel Islands and INTL otherwise,
the rule `data/derive.py` and `shardcast-sync load` use, so every known
(sku, region) pair below is a row the seeded provider holds.

Mixes (all deterministic for a given --seed; files are `<dir>/<mix>.txt`):

  trace    N invoice lines in trace order, from --trace-from on.
  popular  N invoice lines sampled with replacement: skus weighted by demand
           (--weight lines: one per invoice line; quantity: units sold) with
           the real per-sku UK/INTL split.
  uniform  every (sku, region) row of the catalog once, shuffled: each sku
           once per region it sold in (not N lines).
  spike    a --spike-share of the N requests on one shard's cell
           (--spike-category x --spike-region, skus by their demand in that
           region), the rest popular outside that cell.
  unknown  an --unknown-share of the N requests on skus not in the catalog
           (the proxy's hash fallback; nodes answer 404), the rest popular.

Usage:
  make_paths.py [--dir var/wrk] [--mixes trace,popular,...] [-n 20000] ...
  make_paths.py N OUT     (legacy form: the popular mix, N lines, to OUT)

A manifest (`<dir>/manifest.json`) records the parameters and the measured
properties of each mix. Python 3.11 standard library only.
"""
import argparse
import csv
import gzip
import json
import random
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import quote, unquote

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data/online_retail"
MIXES = ("trace", "popular", "uniform", "spike", "unknown")
REGIONS = ("UK", "INTL")
UK_COUNTRIES = {"United Kingdom", "Channel Islands"}


def region_of(country):
    return "UK" if country in UK_COUNTRIES else "INTL"


def addressable(sku):
    """Whether the proxy accepts the sku as a key: it answers 400 to skus with
    spaces or control characters (shardmap/src/key.rs), and the catalog has
    one, "47503J " (a trailing space from the raw data)."""
    return sku != "" and sku.isprintable() and not any(c.isspace() for c in sku)


def path(sku, region):
    # Percent-encoded so that any other character a sku may hold ('#', '?',
    # '%') stays inside the path segment.
    return f"/inventory/{quote(sku, safe='')}?region={region}"


def parse_path(p):
    """(sku, region) of a line written by `path`."""
    rest, _, query = p.partition("?region=")
    return unquote(rest.removeprefix("/inventory/")), query


class Data:
    """The catalog and the invoice lines, read once."""

    def __init__(self, data_dir=DATA):
        self.category = {}   # sku -> category (every catalog sku)
        self.rows = []       # (sku, region) per addressable catalog row, in file order
        self.skipped = set() # catalog skus the proxy cannot address
        with gzip.open(data_dir / "catalog.csv.gz", "rt", newline="") as f:
            r = csv.reader(f)
            head = next(r)
            si, ci, ki = head.index("sku"), head.index("category"), head.index("countries")
            for rec in r:
                self.category[rec[si]] = rec[ci]
                if not addressable(rec[si]):
                    self.skipped.add(rec[si])
                    continue
                regions = sorted({region_of(c) for c in rec[ki].split(";") if c}) or ["UK"]
                self.rows += [(rec[si], reg) for reg in regions]
        # Invoice lines in trace order: (ts, sku, region, quantity).
        self.lines = []
        with gzip.open(data_dir / "lines.csv.gz", "rt", newline="") as f:
            r = csv.reader(f)
            head = next(r)
            ti, si, ci, qi = (head.index(k) for k in ("ts", "sku", "country", "quantity"))
            for rec in r:
                if rec[si] in self.skipped or not addressable(rec[si]):
                    continue
                self.lines.append((rec[ti], rec[si], region_of(rec[ci]), int(rec[qi])))

    def demand(self, weight, keep=lambda sku, region: True):
        """(sku, region) pairs and their weights: one per invoice line, or units sold."""
        if weight == "lines":
            pairs = [(s, g) for _, s, g, _ in self.lines if keep(s, g)]
            return pairs, None
        w = Counter()
        for _, s, g, q in self.lines:
            if q > 0 and keep(s, g):
                w[(s, g)] += q
        pairs = sorted(w)
        return pairs, [w[p] for p in pairs]


def sample(rng, pairs, weights, k):
    if k <= 0:
        return []
    if not pairs:
        raise SystemExit("make_paths: nothing to sample from (check --spike-category/--spike-region)")
    return rng.choices(pairs, weights=weights, k=k)


def unknown_skus(rng, known, k):
    """k distinct skus that look like real ones and are not in the catalog."""
    out = []
    seen = set()
    while len(out) < k:
        s = f"U{rng.randrange(10**6):06d}"
        if s not in known and s not in seen:
            seen.add(s)
            out.append(s)
    return out


def make(mix, data, a):
    """The path lines of one mix."""
    # One generator per mix, so adding or reordering mixes changes no other.
    rng = random.Random(f"{a.seed}:{mix}")
    n = a.n
    if mix == "trace":
        start = 0
        if a.trace_from:
            start = next((i for i, l in enumerate(data.lines) if l[0] >= a.trace_from), len(data.lines))
        return [path(s, g) for _, s, g, _ in data.lines[start:start + n]]
    if mix == "popular":
        pairs, w = data.demand(a.weight)
        return [path(s, g) for s, g in sample(rng, pairs, w, n)]
    if mix == "uniform":
        rows = list(data.rows)
        rng.shuffle(rows)
        return [path(s, g) for s, g in rows]
    if mix == "spike":
        def in_cell(s, g):
            return g == a.spike_region and data.category.get(s) == a.spike_category
        k = round(a.spike_share * n)
        hot = sample(rng, *data.demand(a.weight, in_cell), k)
        rest = sample(rng, *data.demand(a.weight, lambda s, g: not in_cell(s, g)), n - k)
        out = [path(s, g) for s, g in hot + rest]
        rng.shuffle(out)
        return out
    if mix == "unknown":
        k = round(a.unknown_share * n)
        pool = unknown_skus(rng, data.category, max(1, min(k, a.unknown_distinct)))
        pairs, w = data.demand(a.weight)
        known = sample(rng, pairs, w, n - k)
        # Unknown skus take the real region split, so the hash fallback is
        # exercised per region as a storefront would.
        regions = [g for _, g in sample(rng, pairs, w, k)]
        out = [path(rng.choice(pool), g) for g in regions] + [path(s, g) for s, g in known]
        rng.shuffle(out)
        return out
    raise SystemExit(f"make_paths: unknown mix {mix!r}; choose from {', '.join(MIXES)}")


def properties(lines, data, a):
    """What the manifest (and the tests) check about a mix."""
    regions = Counter()
    unknown = 0
    cell = 0
    skus = set()
    for p in lines:
        s, g = parse_path(p)
        regions[g] += 1
        skus.add(s)
        cat = data.category.get(s)
        if cat is None:
            unknown += 1
        elif cat == a.spike_category and g == a.spike_region:
            cell += 1
    n = len(lines) or 1
    return {
        "lines": len(lines),
        "distinct_skus": len(skus),
        "regions": dict(sorted(regions.items())),
        "uk_share": round(regions["UK"] / n, 4),
        "unknown_share": round(unknown / n, 4),
        f"{a.spike_region}/{a.spike_category}_share": round(cell / n, 4),
    }


def write(out, lines):
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(p + "\n" for p in lines)
    tmp.replace(out)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("legacy", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, default=ROOT / "var/wrk", help="output directory (default var/wrk)")
    ap.add_argument("--mixes", default=",".join(MIXES), help="comma-separated (default all)")
    ap.add_argument("-n", type=int, default=20000, help="lines per mix (not uniform) (default 20000)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--weight", choices=("lines", "quantity"), default="lines",
                    help="demand weight for popular/spike/unknown (default lines)")
    ap.add_argument("--trace-from", default="", help="trace mix starts at this ts, e.g. '2010-11-01' (default: start)")
    ap.add_argument("--spike-category", default="SEASONAL")
    ap.add_argument("--spike-region", default="UK", choices=REGIONS)
    ap.add_argument("--spike-share", type=float, default=0.8)
    ap.add_argument("--unknown-share", type=float, default=0.1)
    ap.add_argument("--unknown-distinct", type=int, default=500, help="distinct unknown skus (default 500)")
    ap.add_argument("--data", type=Path, default=DATA, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.n <= 0:
        ap.error("-n must be positive")
    if not 1 <= a.unknown_distinct <= 100000:
        ap.error("--unknown-distinct must be within 1..100000")
    for name in ("spike_share", "unknown_share"):
        if not 0.0 <= getattr(a, name) <= 1.0:
            ap.error(f"--{name.replace('_', '-')} must be within [0, 1]")
    return a


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    data = Data(a.data)
    if a.legacy:
        # make_paths.py [N] [OUT]: the popular mix to one file.
        if len(a.legacy) > 2:
            raise SystemExit("usage: make_paths.py [N] [OUT]")
        a.n = int(a.legacy[0])
        out = Path(a.legacy[1]) if len(a.legacy) > 1 else ROOT / "benches/wrk/paths.txt"
        lines = make("popular", data, a)
        write(out, lines)
        print(f"{len(lines)} paths from {len(data.lines)} invoice lines -> {out}")
        return
    mixes = [m.strip() for m in a.mixes.split(",") if m.strip()]
    if data.skipped:
        print(f"skipping {len(data.skipped)} catalog sku(s) the proxy rejects as keys: "
              f"{', '.join(repr(s) for s in sorted(data.skipped))}")
    manifest_path = a.dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()
              if k not in ("legacy", "dir", "mixes", "data")}
    for mix in mixes:
        lines = make(mix, data, a)
        out = a.dir / f"{mix}.txt"
        write(out, lines)
        props = properties(lines, data, a)
        manifest[mix] = {"file": out.name, "params": params, **props}
        print(f"{mix:8} {props['lines']:6} lines  {props['distinct_skus']:5} skus  "
              f"UK {props['uk_share']:.1%}  unknown {props['unknown_share']:.1%}  "
              f"{a.spike_region}/{a.spike_category} {props[f'{a.spike_region}/{a.spike_category}_share']:.1%}  -> {out}")
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
