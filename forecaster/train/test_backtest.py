"""backtest.sh end to end on small synthetic panels at every frequency, and its error messages.

Each run trains a tiny LSTM (a few dozen steps) with one CV fold, so the
numbers mean nothing; what is checked is the command, the eval.json schema
and that every method was scored on the same cells.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

HERE = Path(__file__).resolve().parent
BACKTEST = HERE / "backtest.sh"
TRAIN = HERE / "train.py"
FAST = ["--steps", "24", "--eval-every", "8", "--patience", "0", "--cv-folds", "0"]
CV_FREQS = {"D", "M"}  # these also run the CV selection (one earlier fold): the rest skip it for speed

# (frequency, periods in the panel, --test-periods, baselines expected, horizons)
CASES = {
    "H": (24 * 7 * 5, 48, {"snaive24", "snaive168", "autoets", "autotheta"}, [1, 24]),
    "D": (300, 14, {"snaive7", "autoets", "autotheta"}, [1, 7]),
    "W": (130, 8, {"snaive52", "autoets", "autotheta"}, [1, 4]),
    "M": (72, 12, {"snaive12", "autoets", "autotheta"}, [1, 12]),
}


def synthetic(freq: str, n: int, path: Path, late_start: bool = True) -> Path:
    rng = np.random.default_rng(1)
    alias = {"H": "h", "D": "D", "W": "W-MON", "M": "MS"}[freq]
    idx = pd.date_range("2021-01-04", periods=n, freq=alias)
    t = np.arange(n)
    season = {"H": 24, "D": 7, "W": 52, "M": 12}[freq]
    rows = []
    for s in range(3):
        mu = (10 + 5 * s) * (1.5 + np.sin(2 * np.pi * t / season))
        y = rng.poisson(mu)
        start = n // 3 if (late_start and s == 2) else 0  # one series starts late
        rows += [(f"shop{s}", idx[i], int(y[i])) for i in range(start, n)]
    pd.DataFrame(rows, columns=["store", "when", "sales"]).to_csv(path, index=False)
    return path


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(BACKTEST), *args], capture_output=True, text=True, env=env, timeout=300, **kw)


@pytest.mark.parametrize("freq", list(CASES))
def test_end_to_end(freq, tmp_path):
    n, test, baselines, horizons = CASES[freq]
    panel = synthetic(freq, n, tmp_path / f"p_{freq}.csv")
    out = tmp_path / "out"
    r = run(["--panel", str(panel), "--freq", freq, "--id-col", "store", "--time-col", "when",
             "--target-col", "sales", "--test-periods", str(test), "--out", str(out), *FAST,
             *(["--cv-folds", "1"] if freq in CV_FREQS else []),
             *(["--coverage-recal"] if freq == "M" else [])])
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    ev = json.loads((out / "eval.json").read_text())
    text = (out / "EVAL.md").read_text()
    assert [s["horizon"] for s in ev["setups"]] == horizons
    for s in ev["setups"]:
        assert s["freq"] == freq
        assert set(s["models"]) == {"lstm"} | baselines, s["models"].keys()
        for name, m in s["models"].items():
            assert set(m) >= {"mase", "wql", "cov80", "cov98"}, name
            assert all(math.isfinite(m[k]) for k in ("mase", "wql", "cov80", "cov98")), (name, m)
            assert 0 <= m["cov80"] <= m["cov98"] <= 1
        # every method on the same cells
        assert len({m["n"] for m in s["models"].values()}) == 1
        assert s["cells"] == s["models"]["lstm"]["n"] > 0
    # the late series is never scored before its first observation; cells = series x origins x h
    h1 = ev["setups"][0]
    assert h1["cells"] == 3 * test
    # the report describes this data, not the dev data
    assert "p_" + freq in text and "Online Retail" not in text and "14 shards" not in text
    assert (out / "models" / f"backtest_{freq.lower()}.onnx").exists()
    assert ev["events"] is None
    assert len(ev["cv_cutoffs"]) == (1 if freq in CV_FREQS else 0)
    assert ev["coverage_recal"] == (freq == "M")
    # spread factors chosen for the graph's own output are in the shipped graph, and scored as served
    baked = [s for s in ev["setups"] if s["lstm_method"]["in_graph"]
             and any(abs(x - 1) > 1e-9 for x in s["lstm_method"]["spread_factors"])]
    meta = json.loads((out / "models" / f"backtest_{freq.lower()}.json").read_text())
    assert bool(ev["graph_recalibration"]) == bool(baked)
    assert len(meta["trained"].get("spread_recalibration", [])) == (len(ev["graph_recalibration"][0]["edits"])
                                                                     if baked else 0)
    for s in ev["setups"]:
        assert ("lstm_served" in s["variants"]) == bool(baked)


def test_late_series_history_is_not_zero_filled(tmp_path):
    sys.path.insert(0, str(HERE))
    from common import load_panel

    p = load_panel(synthetic("D", 90, tmp_path / "p.csv"), "D", "store", "when", "sales")
    assert list(p.start) == [0, 0, 30]
    assert not p.observed()[2, :30].any() and p.observed()[2, 30:].all()


def test_daily_scores_trading_days_only(tmp_path):
    """``--open-hours`` on a daily panel: a closed day (known to sell nothing) is scored for no method, and a
    ``--rescore`` follows the flag of the run that re-scores, not the saved one's."""
    panel = synthetic("D", 300, tmp_path / "p.csv", late_start=False)
    df = pd.read_csv(panel, parse_dates=["when"])
    df.loc[df["when"].dt.dayofweek == 5, "sales"] = 0  # the shops close on Saturdays
    df.to_csv(panel, index=False)
    out = tmp_path / "out"
    args = ["--panel", str(panel), "--freq", "D", "--id-col", "store", "--time-col", "when", "--target-col",
            "sales", "--test-periods", "14", "--out", str(out), *FAST]
    r = run(args)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    every_day = json.loads((out / "eval.json").read_text())
    r = run([*args, "--rescore", "--open-hours", "Sun-Fri:08-17"])
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    trading = json.loads((out / "eval.json").read_text())
    assert trading["open_hours"] == "Sun-Fri:08-17"
    assert "trading days of `Sun-Fri:08-17`" in (out / "EVAL.md").read_text()
    for a, b in zip(every_day["setups"], trading["setups"]):
        assert a["cells"] == 3 * a["origins"] * a["horizon"]
        # 14 test days hold two Saturdays: h=1 loses 2 of 14 origins' cells, h=7 one day in seven
        assert b["cells"] == a["cells"] * 6 // 7, (a["cells"], b["cells"])
        assert len({m["n"] for m in b["models"].values()}) == 1
    sys.path.insert(0, str(HERE))
    from common import open_days_mask

    idx = pd.date_range("2024-01-01", periods=14, freq="D")  # a Monday
    assert list(open_days_mask(idx, "Sun-Fri:08-17")) == [d != 5 for d in idx.dayofweek]
    assert open_days_mask(idx, "all").all()
    assert list(open_days_mask(idx, "Fri-Sun:10-16")) == [d in (4, 5, 6) for d in idx.dayofweek]


def _err(args, tmp_path) -> str:
    r = run([*args, "--out", str(tmp_path / "o"), *FAST])
    assert r.returncode != 0
    return r.stderr + r.stdout


def test_errors_name_the_flag(tmp_path):
    panel = synthetic("D", 120, tmp_path / "p.csv")
    assert "--target-col" in _err(["--panel", str(panel), "--freq", "D", "--id-col", "store", "--time-col",
                                   "when"], tmp_path)
    assert "--id-col" in _err(["--panel", str(panel), "--freq", "D", "--time-col", "when", "--target-col",
                               "sales"], tmp_path)
    cols = ["--id-col", "store", "--time-col", "when", "--target-col", "sales"]
    assert "--freq" in _err(["--panel", str(panel), "--freq", "X", *cols], tmp_path)
    assert "--freq" in _err(["--panel", str(panel), "--freq", "W", *cols], tmp_path)  # daily dates, weekly grid?
    assert "--test-periods" in _err(["--panel", str(panel), "--freq", "D", "--test-periods", "100", *cols],
                                    tmp_path)
    assert "--events" in _err(["--panel", str(panel), "--freq", "D", "--events", str(tmp_path / "none.csv"),
                               *cols], tmp_path)
    assert "--panel" in _err(["--panel", str(tmp_path / "missing.csv"), "--freq", "D", *cols], tmp_path)


def test_train_months_need_periods(tmp_path):
    panel = synthetic("M", 60, tmp_path / "m.csv")
    r = subprocess.run([sys.executable, str(TRAIN), "--panel", str(panel), "--freq", "M", "--id-col", "store",
                        "--time-col", "when", "--target-col", "sales", "--test-days", "30", "--name", "m",
                        "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--test-periods" in r.stderr


def test_evaluate_rejects_unknown_model_and_skip(tmp_path):
    panel = synthetic("D", 120, tmp_path / "p.csv")
    ev = HERE / "evaluate.py"
    r = subprocess.run([sys.executable, str(ev), "--daily-panel", str(panel), "--daily-model", "nope",
                        "--out", str(tmp_path / "r.md")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--daily-model nope" in r.stderr
    r = subprocess.run([sys.executable, str(ev), "--daily-panel", str(panel), "--skip", "w4",
                        "--out", str(tmp_path / "r.md")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--skip" in r.stderr
