"""A storefront-sized shardcast deployment built from the project's real
Online Retail II data, scaled up. Used by benches/scale/run.py; its
generation pieces (the real catalog, the popularity split, the Zipf
sub-category draw, the topology's nodes and rules) also serve
benches/scale/gen.py. Every function is deterministic for a given seed.

How the real data is scaled (benches/scale/README.md says more):

- **Categories → sub-categories.** Each of the 7 real categories is split
  into sub-categories (`LIGHTING.0017`), their number proportional to the
  category's real popularity (invoice lines), at least one each; shards are
  sub-category × region (`UK`, `INTL`: the regions the provider loader and
  the real shard series know), declared by one `[[shard_rules]]` per real
  category, so `shards / 2` sub-categories in all.
- **Skus.** Every real product is kept under its own sku; the rest are
  variants (`85123A-0000123`) of real products drawn with probability
  proportional to the product's real invoice lines, so the catalog's
  per-category mix follows real popularity. A sku keeps its product's
  category, median price and countries (so the provider holds it in the
  regions it really sold in) and lands in a sub-category of it drawn from a
  Zipf law (a few sub-categories hold many skus, as in a real assortment).
- **Demand history.** A shard's hourly series is its real parent shard's
  series (`REGION/CATEGORY` in shard_hourly.csv.gz) times the share of the
  parent's demand its skus carry (from per-product, per-region real line
  counts), times the request scale. Same shape as the parent, re-scaled.
- **Trace.** Each real invoice line (ts, sku, country) of the replayed
  slice becomes a request for one of its product's skus (uniform among the
  product's variants), so each shard's live demand is the same re-scaling
  of its parent's real demand as its history.
- **Volatility tiers** come from the shipped topology (derived from the
  real demand history); per-rule thresholds from the history: the
  (1 − hot_share) quantile over the rule's shards of each shard's
  90th-percentile hour, as a rate (the rule's busiest `hot_share`, a tenth
  by default, crosses it at peak hours).
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import gzip
import hashlib
import itertools
import json
import math
import random
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "online_retail"
REGIONS = ["UK", "INTL"]
UK_COUNTRIES = {"United Kingdom", "Channel Islands"}
VERSION = 2  # bump when the output changes for the same parameters


def region_of(country):
    return "UK" if country in UK_COUNTRIES else "INTL"


def split(total, weights):
    """`total` split proportionally to `weights`, each part at least 1
    (largest remainders)."""
    s = sum(weights)
    raw = [total * w / s for w in weights]
    parts = [max(1, int(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    i = 0
    while sum(parts) < total:
        parts[order[i % len(order)]] += 1
        i += 1
    while sum(parts) > total:
        j = max(range(len(parts)), key=lambda k: parts[k])
        parts[j] -= 1
    return parts


def zipf_cumulative(n, s):
    """Cumulative Zipf weights (exponent `s`) of ranks 1..n: the
    sub-category draw, a few holding many skus."""
    return list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))


def draw(rng, cum):
    """An index drawn with the cumulative weights `cum`."""
    return min(bisect.bisect_left(cum, rng.random() * cum[-1]), len(cum) - 1)


def nodes_toml(count, first_port, capacity):
    """`[[nodes]]` lines: `node-00`… on loopback from `first_port` upward,
    in zones z1..z3."""
    t = []
    for i in range(count):
        t += ["[[nodes]]", f'name = "node-{i:02d}"', f'address = "127.0.0.1:{first_port + i}"',
              f"capacity = {capacity:g}", f'zone = "z{i % 3 + 1}"', ""]
    return t


def rule_toml(categories, regions, volatility, threshold=None):
    """One `[[shard_rules]]`: a shard per (category, region)."""
    t = ["[[shard_rules]]", 'id = "{region}/{category}"',
         "categories = [" + ", ".join(f'"{c}"' for c in categories) + "]",
         "regions = [" + ", ".join(f'"{r}"' for r in regions) + "]",
         f'volatility = "{volatility}"']
    if threshold is not None:
        t.append(f"threshold = {threshold}")
    return t + [""]


def read_catalog(path=DATA / "catalog.csv.gz"):
    """Real products: [{sku, category, description, median_price, lines, countries}]."""
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["lines"] = max(1, int(r["lines"] or 1))
    return rows


def real_volatility(path=ROOT / "conf" / "topology.toml"):
    """{category: volatility} from the shipped topology (derived there from
    the real demand history)."""
    t = tomllib.loads(Path(path).read_text())
    return {c: s.get("volatility", "medium") for s in t.get("shards", []) for c in s["categories"]}


def lines_by_sku_region(path=DATA / "lines.csv.gz"):
    """{(sku, region): invoice lines} over the whole real trace."""
    out = defaultdict(int)
    with gzip.open(path, "rt", newline="") as f:
        r = csv.reader(f)
        next(r, None)
        for row in r:
            if len(row) >= 3:
                out[(row[1], region_of(row[2]))] += 1
    return out


def real_hourly(start, end, path=DATA / "shard_hourly.csv.gz"):
    """{real shard id: {ds: lines}} for start <= ds < end (strings)."""
    s0, s1 = start.strftime("%Y-%m-%d %H:%M:%S"), end.strftime("%Y-%m-%d %H:%M:%S")
    out = defaultdict(dict)
    with gzip.open(path, "rt") as f:
        head = f.readline().strip().split(",")
        i_s, i_ds, i_l = head.index("shard_id"), head.index("ds"), head.index("lines")
        for line in f:
            p = line.rstrip("\n").split(",")
            if s0 <= p[i_ds] < s1:
                out[p[i_s]][p[i_ds]] = float(p[i_l])
    return out


def quantile(xs, q):
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


class Deployment:
    """The generated files and what they hold; `build` writes them."""

    def __init__(self, out, shards, skus, nodes, start, history_days, trace_days,
                 scale=1.0, replication_factor=2, zipf=0.8, seed=13, capacity=1000.0, hot_share=0.1):
        if shards < 2 * 7 or shards % 2:
            raise ValueError(f"--shards {shards}: an even number, at least 14 (7 categories x 2 regions)")
        if nodes < replication_factor:
            raise ValueError(f"--nodes {nodes}: at least the replication factor ({replication_factor})")
        self.out = Path(out)
        self.shards, self.skus, self.nodes = shards, skus, nodes
        self.start, self.history_days, self.trace_days = start, history_days, trace_days
        self.scale, self.rf, self.zipf, self.seed = scale, replication_factor, zipf, seed
        self.capacity = capacity
        self.hot_share = hot_share
        self.catalog = self.out / "catalog.csv.gz"
        self.topology = self.out / "topology.toml"
        self.history = self.out / "history.csv.gz"
        self.trace = self.out / "trace.csv.gz"
        self.thresholds = self.out / "thresholds.json"
        self.manifest = self.out / "deployment.json"

    def params(self):
        return {"version": VERSION, "shards": self.shards, "skus": self.skus, "nodes": self.nodes,
                "start": f"{self.start:%Y-%m-%d %H:%M}", "history_days": self.history_days,
                "trace_days": self.trace_days, "scale": self.scale, "replication_factor": self.rf,
                "zipf": self.zipf, "seed": self.seed, "capacity": self.capacity,
                "hot_share": self.hot_share}

    def current(self):
        """The files on disk were built with these parameters."""
        try:
            return json.loads(self.manifest.read_text()).get("params") == self.params()
        except (OSError, ValueError):
            return False

    def info(self):
        return json.loads(self.manifest.read_text())

    # ------------------------------------------------------------------
    def build(self, log=print):
        """Write catalog, topology, history, trace and thresholds; returns
        the manifest (also in deployment.json)."""
        self.out.mkdir(parents=True, exist_ok=True)
        rng = random.Random(self.seed)
        real = read_catalog()
        if self.skus < len(real):
            raise ValueError(f"--skus {self.skus}: at least the {len(real)} real products")
        by_cat = defaultdict(list)
        for p in real:
            by_cat[p["category"]].append(p)
        cats = sorted(by_cat)
        popularity = [sum(p["lines"] for p in by_cat[c]) for c in cats]
        subs = dict(zip(cats, split(self.shards // 2, popularity)))
        width = len(str(max(subs.values()) - 1))
        sub_name = lambda c, k: f"{c}.{k:0{width}d}"
        zipf_cum = {c: zipf_cumulative(subs[c], self.zipf) for c in cats}

        # Skus: every real product, then variants by popularity.
        log(f"deployment: {self.skus:,} skus over {self.shards // 2:,} sub-categories x {len(REGIONS)} regions")
        cum = list(itertools.accumulate(p["lines"] for p in real))
        variants = defaultdict(list)        # real sku -> [(sku, sub index)]
        per_sub = defaultdict(lambda: defaultdict(int))  # real sku -> {sub: count}
        width_v = len(str(self.skus))
        with gzip.open(self.catalog, "wt", newline="", compresslevel=1) as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["sku", "category", "description", "median_price", "lines", "countries"])
            for i in range(self.skus):
                if i < len(real):
                    p, sku = real[i], real[i]["sku"]
                else:
                    p = real[draw(rng, cum)]
                    sku = f"{p['sku']}-{i:0{width_v}d}"
                k = draw(rng, zipf_cum[p["category"]])
                variants[p["sku"]].append(sku)
                per_sub[p["sku"]][k] += 1
                w.writerow([sku, sub_name(p["category"], k), p["description"], p["median_price"],
                            p["lines"], p["countries"]])

        # Each shard's share of its parent's demand.
        log("deployment: demand shares from the real per-product, per-region lines")
        lines_sr = lines_by_sku_region()
        share = {}  # shard id -> share of the parent REGION/CATEGORY demand
        for c in cats:
            for r in REGIONS:
                tot = sum(lines_sr.get((p["sku"], r), 0) for p in by_cat[c])
                acc = defaultdict(float)
                for p in by_cat[c]:
                    n = lines_sr.get((p["sku"], r), 0)
                    if n == 0:
                        continue
                    nv = len(variants[p["sku"]])
                    for k, m in per_sub[p["sku"]].items():
                        acc[k] += n * m / nv
                for k in range(subs[c]):
                    share[f"{r}/{sub_name(c, k)}"] = (acc.get(k, 0.0) / tot) if tot else 0.0

        # History: the parent's real series, re-scaled, up to the start.
        h0 = self.start - dt.timedelta(days=self.history_days)
        parents = real_hourly(h0, self.start)
        log(f"deployment: history {h0:%Y-%m-%d} .. {self.start:%Y-%m-%d} for {len(share):,} shards")
        p90 = {}
        rows = 0
        with gzip.open(self.history, "wt", compresslevel=1) as f:
            f.write("shard_id,ds,lines\n")
            for sid in sorted(share):
                r, sub = sid.split("/", 1)
                parent = parents.get(f"{r}/{sub.rsplit('.', 1)[0]}", {})
                k = share[sid] * self.scale
                hours = sorted(parent)
                vals = []
                buf = []
                for j, ds in enumerate(hours):
                    v = parent[ds] * k
                    vals.append(v)
                    # Zero hours are implied (the reader fills gaps with 0);
                    # the first and last anchor the span.
                    if v > 0 or j == 0 or j == len(hours) - 1:
                        buf.append(f"{sid},{ds},{v:.4g}\n")
                f.write("".join(buf))
                rows += len(buf)
                p90[sid] = quantile(vals, 0.9) / 3600.0

        # Topology: nodes (ports are the launcher's), one rule per category.
        vol = real_volatility()
        thresholds = {}
        t = [f"# generated by benches/scale/deployment.py: {self.shards} shards by rule, "
             f"{self.nodes} nodes, {self.skus} skus, seed {self.seed}",
             f"replication_factor = {self.rf}", ""]
        t += nodes_toml(self.nodes, 20000, self.capacity)
        for c in cats:
            names = [sub_name(c, k) for k in range(subs[c])]
            # The rule's busier shards (its top `hot_share` at their peak
            # hours) cross it: pre-fetch for some, not for every shard.
            thr = quantile([p90[f"{r}/{n}"] for n in names for r in REGIONS], 1.0 - self.hot_share)
            thr = float(f"{max(thr, 1e-7):.4g}")
            thresholds[c] = thr
            t += rule_toml(names, REGIONS, vol.get(c, "medium"), thr)
        self.topology.write_text("\n".join(t))
        self.thresholds.write_text(json.dumps(thresholds, indent=1) + "\n")

        # Trace: real lines of the slice, each to one of its product's skus.
        t1 = self.start + dt.timedelta(days=self.trace_days)
        s0, s1 = self.start.strftime("%Y-%m-%d %H:%M"), t1.strftime("%Y-%m-%d %H:%M")
        n_trace = 0
        with gzip.open(DATA / "lines.csv.gz", "rt", newline="") as f, \
                gzip.open(self.trace, "wt", newline="", compresslevel=1) as o:
            r = csv.reader(f)
            head = next(r)
            w = csv.writer(o, lineterminator="\n")
            w.writerow(head)
            for row in r:
                if len(row) < 3 or row[0] < s0:
                    continue
                if row[0] >= s1:
                    break
                vs = variants.get(row[1])
                if not vs:
                    continue
                # Deterministic per line, independent of the run's rng.
                h = int.from_bytes(hashlib.blake2b(f"{n_trace}:{row[1]}".encode(), digest_size=8).digest(), "big")
                row[1] = vs[h % len(vs)]
                w.writerow(row)
                n_trace += 1

        sizes = sorted((sum(per_sub[p["sku"]].get(k, 0) for p in by_cat[c]), c, k)
                       for c in cats for k in range(subs[c]))
        manifest = {
            "params": self.params(),
            "files": {k: str(getattr(self, k)) for k in
                      ("catalog", "topology", "history", "trace", "thresholds")},
            "sub_categories": subs,
            "history_rows": rows,
            "trace_lines": n_trace,
            "skus_per_sub_category": {"min": sizes[0][0], "median": sizes[len(sizes) // 2][0],
                                      "max": sizes[-1][0]},
            "thresholds_rps": thresholds,
        }
        self.manifest.write_text(json.dumps(manifest, indent=1) + "\n")
        return manifest


def ensure(log=print, **kw):
    """The deployment for these parameters: built unless already on disk."""
    d = Deployment(**kw)
    if d.current():
        log(f"deployment: reusing {d.out}")
    else:
        d.build(log=log)
    return d
