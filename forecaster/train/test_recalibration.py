"""Spread recalibration chosen by the backtest's CV, and how it reaches the served graph.

The sidecar runs the ONNX graph alone, so factors the CV picks for a graph's own output are multiplied
into the graph's calibration (``backtest.bake_spread``). Checked here with real ONNX Runtime on the
committed hourly model: the baked graph serves exactly ``spread_z`` of the original graph's output on
the head it edits, leaves every other output alone, records what it did in its contract, and its parity
fixture agrees with the baked graph. Also: with ``--coverage-recal`` the choice ships the recalibrated
form when the folds' 80 % coverage is off the target band (moved only into the band), and keeps the
candidate as it is otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import backtest as bt  # noqa: E402
import parity  # noqa: E402
from common import FeatureSpec, Prepared, load_panel  # noqa: E402

import onnxruntime as ort  # noqa: E402

MODELS = HERE.parent / "models"
NAME = "shardcast_hourly"
OUTS = ["quantiles", "agg_quantiles", "quantiles_transformed", "agg_quantiles_transformed"]


def _panel(tmp: Path):
    rng = np.random.default_rng(3)
    idx = pd.date_range("2011-01-03", periods=24 * 7 * 6, freq="h")
    t = np.arange(len(idx))
    rows = []
    for s in range(3):
        y = rng.poisson((5 + 3 * s) * (1.2 + np.sin(2 * np.pi * t / 24)))
        rows += [(f"shop{s}", idx[i], int(y[i])) for i in range(len(idx))]
    p = tmp / "panel.csv"
    pd.DataFrame(rows, columns=["series_id", "ds", "y"]).to_csv(p, index=False)
    return load_panel(p, "H")


def _run(path: Path, past, future, scale) -> dict:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(OUTS, sess.run(OUTS, {"past": past, "future": future, "scale": scale})))


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bake")
    meta = json.loads((MODELS / f"{NAME}.json").read_text())
    spec = FeatureSpec.from_json(meta["spec"])
    panel = _panel(tmp)
    prep = Prepared.make(panel, spec, None)
    cutoff = len(panel.index) - 48
    j24 = [i for i, (st, n) in enumerate(spec.aggregates) if st == 0 and n == 24]
    assert j24, "the hourly graph has a 24-hour total head"
    c_agg = [1.3, 1.2, 1.1, 0.9, 1.0, 0.8, 0.7, 0.75, 0.75]
    c_steps = [1.05] * 4 + [1.0] + [0.95] * 4
    edits = [{"head": "aggs", "rows": j24, "factors": c_agg, "by": "D h=1"},
             {"head": "steps", "rows": [0], "factors": c_steps, "by": "H h=1"}]
    out = tmp / "out"
    rec = bt.bake_spread(MODELS, NAME, out, prep, cutoff, edits)
    ss = np.array([0, 1, 2, 0])
    oo = np.array([cutoff - 1, cutoff - 1, cutoff - 30, cutoff - 200])
    past, future, scale = prep.inputs(ss, oo)
    return dict(out=out, rec=rec, spec=spec, j24=j24[0], c_agg=np.array(c_agg), c_steps=np.array(c_steps),
                orig=_run(MODELS / meta["onnx"], past, future, scale), new=_run(out / meta["onnx"], past, future, scale),
                scale=scale.astype(np.float64))


def test_baked_head_serves_spread_z(baked):
    j, o, n = baked["j24"], baked["orig"], baked["new"]
    s = baked["scale"][:, 0] * 24
    want = bt.spread_z(o["agg_quantiles_transformed"][:, j].astype(np.float64), s, baked["c_agg"])
    got = n["agg_quantiles"][:, j]
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-3 * s.max())
    # the spread moved: an upper quantile narrower, a lower one wider, the median where it was
    mi = bt.LEVELS.index(0.5)
    np.testing.assert_allclose(n["agg_quantiles"][:, j, mi], o["agg_quantiles"][:, j, mi], rtol=1e-5)
    assert (n["agg_quantiles"][:, j, 7] < o["agg_quantiles"][:, j, 7]).all()
    assert (n["agg_quantiles"][:, j, 0] <= o["agg_quantiles"][:, j, 0] + 1e-3).all()
    want1 = bt.spread_z(o["quantiles_transformed"][:, :1].astype(np.float64), baked["scale"], baked["c_steps"])
    np.testing.assert_allclose(n["quantiles"][:, :1], want1, rtol=2e-4, atol=1e-3 * baked["scale"].max())


def test_other_outputs_untouched(baked):
    j, o, n = baked["j24"], baked["orig"], baked["new"]
    others = [i for i in range(o["agg_quantiles"].shape[1]) if i != j]
    np.testing.assert_array_equal(n["agg_quantiles"][:, others], o["agg_quantiles"][:, others])
    np.testing.assert_array_equal(n["quantiles"][:, 1:], o["quantiles"][:, 1:])


def test_contract_records_and_parity_fixture_agrees(baked):
    meta = json.loads((baked["out"] / f"{NAME}.json").read_text())
    rec = meta["trained"]["spread_recalibration"]
    assert [r["by"] for r in rec][-2:] == ["D h=1", "H h=1"]
    assert baked["rec"]["edits"][-2:] == rec[-2:]
    # the fixture the Rust parity test reads was computed from the baked weights: the baked graph meets it
    fx = json.loads((baked["out"] / f"{NAME}.parity.json").read_text())
    members, calib = parity.load_members(baked["out"] / f"{NAME}.weights.npz")
    orig_calib = parity.load_members(MODELS / f"{NAME}.weights.npz")[1]
    np.testing.assert_allclose(calib["aggs"][baked["j24"]], orig_calib["aggs"][baked["j24"]] * baked["c_agg"], rtol=1e-6)
    sess = ort.InferenceSession(str(baked["out"] / f"{NAME}.onnx"), providers=["CPUExecutionProvider"])
    inp = {k: np.asarray(fx["inputs"][k], np.float32) for k in ("past", "future", "scale")}
    got = dict(zip(OUTS, sess.run(OUTS, inp)))
    for k in OUTS:
        np.testing.assert_allclose(got[k], np.asarray(fx["expected"][k]), rtol=1e-3, atol=1e-3 * float(inp["scale"].max()) * 24)


def _fold(rng, n, width):
    """A fold whose forecasts have the right median and intervals ``width`` times too wide."""
    y = rng.gamma(4.0, 10.0, (2, n, 1))
    from scipy.stats import gamma

    lv = np.array(bt.LEVELS)
    qs = gamma.ppf(lv, 4.0, scale=10.0)
    med = qs[bt.LEVELS.index(0.5)]
    q = np.broadcast_to(med + width * (qs - med), (2, n, 1, len(lv))).copy()
    q = np.maximum(q, 0.0)
    # a baseline with the same median and far wider intervals: the score is MASE-bound, so the spread
    # factors cannot move it (a tie)
    base = np.broadcast_to(np.maximum(med + 5 * (qs - med), 0.0), q.shape).copy()
    return {"lstm": q, "y": y, "m": np.ones(y.shape, bool), "scale": np.ones(2), "base": {"b": base},
            "alt": {}, "z": {}}


@pytest.mark.parametrize("width,recal", [(1.0, False), (1.8, True)])
def test_choice_recalibrates_when_fold_coverage_is_off(width, recal):
    rng = np.random.default_rng(0)
    folds = [_fold(rng, 400, width), _fold(rng, 400, width)]
    # by default a tie on the score keeps the candidate as it is, whatever its coverage
    assert bt.choose(folds, ["b"], ["b"])[0] == "lstm"
    label, src, b, w, c, table, cov = bt.choose(folds, ["b"], ["b"], coverage_recal=True)
    assert src == "lstm" and b is None
    assert label.endswith("(recalibrated)") == recal, (label, cov, table[:4])
    if recal:
        assert cov > bt.COV80[1] and (c[bt.LEVELS.index(0.9)] < 0.8)
        got = bt.pooled_cov80(folds, [bt.forecast(f, src, b, w, c) for f in folds])
        assert bt.COV80[0] <= got <= bt.COV80[1]
        assert got > 0.80  # moved toward the band's near edge, not refitted to 0.80
    else:
        assert bt.COV80[0] <= cov <= bt.COV80[1] and np.allclose(c, 1.0)


def test_graph_edits_give_each_step_to_one_setup():
    def setup(h, src, factors, in_graph=True):
        return {"freq": "H", "horizon": h, "lstm_method": {"source": src, "in_graph": in_graph,
                                                            "spread_factors": factors}}
    c1, c24 = [1.1] * 4 + [1.0] + [1.1] * 4, [0.9] * 4 + [1.0] + [0.9] * 4
    e = bt.graph_edits([setup(24, "lstm", c24), setup(1, "lstm", c1)], "lstm", "steps", lambda h: list(range(h)))
    assert [(x["by"], x["rows"], x["factors"]) for x in e] == [("H h=1", [0], c1), ("H h=24", list(range(1, 24)), c24)]
    # a combination (not the graph) and factors of one edit nothing
    e = bt.graph_edits([setup(24, "lstm", [1.0] * 9), setup(1, "lstm", c1, in_graph=False)], "lstm", "steps",
                       lambda h: list(range(h)))
    assert e == []
