"""Weekly alternatives to the daily model's weekly-total heads, scored from a weekly backtest's saved run.

Backtest-only measurements (nothing here is served); ``eval_notes.md`` reports them. For each window of
``RUN`` (``backtest.sh --freq W --daily-panel ... --out RUN``), against the run's own baselines, as ratios
to the best baseline (MASE / wQL) and 80 % coverage:

- ``yoy<K>``: last year's week scaled by the year-over-year ratio of the last ``K`` weeks,
  ``y[t-52] * sum(y[o-K+1..o]) / sum(y[o-K+1-52..o-52])``, with quantiles from its in-sample log1p
  residuals (pooled over series, per lead, from origins before the window); alone and as a quantile
  average with the LSTM, AutoETS or AutoTheta. Only windows with a year of history before them score.
- ``bias``: per series, the median weekly total over the window divided by the actual total.
- with ``--daily-sum``, on the test window only (the weekly run keeps the test window's daily graph, not
  its folds' ones): the daily graph's seven daily forecasts summed level by level (full dependence) and
  with the spread added in quadrature (independence), against the weekly head.

    .venv/bin/python forecaster/train/weekly_probe.py --run /tmp/eval/weekly \\
        --panel data/online_retail/shard_weekly.csv.gz --daily-panel data/online_retail/shard_daily.csv.gz \\
        --id-col shard_id --target-col lines --events data/online_retail/events.csv --daily-sum
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from choice import LEVELS, score  # noqa: E402
from common import FeatureSpec, Prepared, load_panel  # noqa: E402

BASES = ("naive", "autoets", "autotheta")


def yoy_point(Y: np.ndarray, o: int, lead: int, k: int) -> np.ndarray:
    """Year-over-year scaled seasonal naive for period ``o + lead`` from origin ``o`` (NaN without a year)."""
    if o + lead - 52 < 0 or o - k + 1 - 52 < 0:
        return np.full(Y.shape[0], np.nan)
    num = Y[:, o - k + 1:o + 1].sum(1)
    den = Y[:, o - k + 1 - 52:o + 1 - 52].sum(1)
    return Y[:, o + lead - 52] * (num + 1.0) / (den + 1.0)


def yoy_forecast(Y: np.ndarray, cutoff: int, h: int, n_win: int, k: int) -> np.ndarray | None:
    """[S, n_win, h, Q] quantiles, residual quantiles per lead from in-sample origins before ``cutoff``."""
    S = Y.shape[0]
    resq = []
    for lead in range(1, h + 1):
        res = [np.log1p(Y[:, o + lead]) - np.log1p(p) for o in range(cutoff - lead)
               if np.isfinite(p := yoy_point(Y, o, lead, k)).all()]
        if len(res) < 3:
            return None
        resq.append(np.quantile(np.concatenate(res), LEVELS))
    out = np.full((S, n_win, h, len(LEVELS)), np.nan)
    for w in range(n_win):
        o = cutoff - 1 + w
        for lead in range(1, h + 1):
            p = yoy_point(Y, o, lead, k)
            out[:, w, lead - 1] = np.maximum(np.expm1(np.log1p(p)[:, None] + resq[lead - 1][None, :]), 0.0)
    return out if np.isfinite(out).all() else None


def ratio(r: dict, bm: float, bw: float) -> str:
    return f"{r['mase'] / bm:.3f} / {r['wql'] / bw:.3f} / {r['cov80']:.3f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="--out of a weekly backtest (forecasts.npz, eval.json)")
    ap.add_argument("--panel", required=True, help="the weekly panel of that run")
    ap.add_argument("--daily-panel", default=None, help="its daily panel (for --daily-sum)")
    ap.add_argument("--id-col", default="series_id")
    ap.add_argument("--time-col", default="ds")
    ap.add_argument("--target-col", default="y")
    ap.add_argument("--events", default=None)
    ap.add_argument("--k", default="4,8,13", help="comma-separated YoY ratio windows in weeks")
    ap.add_argument("--daily-sum", action="store_true")
    a = ap.parse_args(argv)
    run = Path(a.run)
    if not (run / "forecasts.npz").exists():
        raise SystemExit(f"--run {run}: no forecasts.npz (run backtest.sh --freq W there first)")
    wp = load_panel(a.panel, "W", a.id_col, a.time_col, a.target_col)
    Y = wp.y.astype(float)
    z = np.load(run / "forecasts.npz")
    ev = json.loads((run / "eval.json").read_text())
    cuts = sorted({int(f.split("_")[0][1:]) for f in z.files})
    print("window h | lstm | " + " | ".join(f"yoy{k} alone; best blend" for k in a.k.split(",")) +
          "   (MASE ratio / wQL ratio / cov80)")
    for c in cuts:
        for h in sorted({int(f.split("_h")[1].split(".")[0]) for f in z.files if f.startswith(f"c{c}_")}):
            key = f"c{c}_h{h}"
            y, m, sc = z[f"{key}.y"], z[f"{key}.m"], z[f"{key}.scale"]
            base = {n: score(y, z[f"{key}.base.{n}"], m, sc) for n in BASES if f"{key}.base.{n}" in z.files}
            bm = min(r["mase"] for r in base.values())
            bw = min(r["wql"] for r in base.values())
            cols = [ratio(score(y, z[f"{key}.lstm"], m, sc), bm, bw)]
            for k in (int(x) for x in a.k.split(",")):
                q = yoy_forecast(Y, c, h, y.shape[1], k)
                if q is None:
                    cols.append("no year of history")
                    continue
                blends = []
                for w in (0.25, 0.5, 0.75):
                    for other in ("lstm",) + tuple(n for n in BASES[1:] if f"{key}.base.{n}" in z.files):
                        oq = z[f"{key}.lstm"] if other == "lstm" else z[f"{key}.base.{other}"]
                        r = score(y, w * q + (1 - w) * oq, m, sc)
                        blends.append((max(r["mase"] / (0.9 * bm), r["wql"] / (0.95 * bw)), f"{w:g}*yoy+{other}", r))
                _, label, r = min(blends, key=lambda t: t[0])
                cols.append(f"{ratio(score(y, q, m, sc), bm, bw)}; {label} {ratio(r, bm, bw)}")
            print(f"{wp.index[c].date()} h={h} | " + " | ".join(cols))
    test = len(wp.index) - ev["test_periods"]
    key = f"c{test}_h1"
    y = z[f"{key}.y"]
    print("bias (median total / actual total), test window h=1, lstm:",
          np.round(z[f"{key}.lstm"][..., LEVELS.index(0.5)].sum((1, 2)) / np.maximum(y.sum((1, 2)), 1), 2).tolist())
    for n in BASES[1:]:
        print(f"  {n}:", np.round(z[f"{key}.base.{n}"][..., LEVELS.index(0.5)].sum((1, 2)) /
                                  np.maximum(y.sum((1, 2)), 1), 2).tolist())
    if a.daily_sum:
        daily_sum(a, run, ev, wp, z, test)


def daily_sum(a, run: Path, ev: dict, wp, z, test: int) -> None:
    import onnxruntime as ort

    if not a.daily_panel:
        raise SystemExit("--daily-sum needs --daily-panel")
    dp = load_panel(a.daily_panel, "D", a.id_col, a.time_col, a.target_col)
    name = ev["model"]
    meta = json.loads((run / "models" / f"{name}.json").read_text())
    spec = FeatureSpec.from_json(meta["spec"])
    sess = ort.InferenceSession(str(run / "models" / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    prep = Prepared.make(dp, spec, a.events)
    dpos = {t: i for i, t in enumerate(dp.index)}
    key = f"c{test}_h1"
    y, m, sc = z[f"{key}.y"], z[f"{key}.m"], z[f"{key}.scale"]
    S, n_win = y.shape[:2]
    ss = np.repeat(np.arange(S), n_win)
    oo = np.array([dpos[wp.index[o + 1]] - 1 for o in np.tile(test - 1 + np.arange(n_win), S)])
    past, future, scale = prep.inputs(ss, oo)
    q, qa = sess.run(["quantiles", "agg_quantiles"], {"past": past, "future": future, "scale": scale})
    mi = LEVELS.index(0.5)
    shape = (S, n_win, 1, len(LEVELS))
    head = qa[:, 0, :].reshape(shape)
    if not np.allclose(head, z[f"{key}.lstm"], rtol=1e-4, atol=1e-2):
        raise SystemExit(f"--run {run}: its graph no longer gives the saved weekly forecasts")
    dev = q[:, :7, :] - q[:, :7, mi:mi + 1]
    med = q[:, :7, mi].sum(1)[:, None]
    cands = {"weekly head": head, "7 days summed, full dependence": q[:, :7, :].sum(1).reshape(shape),
             "7 days summed, independent": np.maximum(
                 med + np.sign(dev.sum(1)) * np.sqrt((dev ** 2).sum(1)), 0.0).reshape(shape)}
    cands.update({n: z[f"{key}.base.{n}"] for n in BASES[1:]})
    print("test window h=1 (MASE / wQL / cov80):")
    for n, f in cands.items():
        r = score(y, f, m, sc)
        print(f"  {n:32s} {r['mase']:.3f} / {r['wql']:.3f} / {r['cov80']:.3f}")


if __name__ == "__main__":
    main()
