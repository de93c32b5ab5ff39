"""A year cycle the training targets never covered is no input: its weights stay at zero through training.

With a training span shorter than a year, every day-of-year value of the validation and test windows is
one training never saw, so the model can only extrapolate it (on one year of hourly electricity demand,
trained January–October, that made the validation loss rise from the first evaluation on). ``--year-cycle
auto`` turns the channels off there, and keeps them on a panel with more than a year behind validation.
Checked with a real (short) training of a daily model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import train  # noqa: E402
from common import Prepared, load_panel  # noqa: E402


def _panel(tmp: Path, days: int) -> Path:
    rng = np.random.default_rng(3)
    idx = pd.date_range("2012-01-02", periods=days, freq="D")
    t = np.arange(days)
    rows = []
    for s in range(3):
        lam = (5 + s) * (1.2 + np.sin(2 * np.pi * t / 7)) * (1.5 + np.sin(2 * np.pi * t / 365.25))
        rows += list(zip([f"s{s}"] * days, idx, rng.poisson(lam)))
    p = tmp / f"panel{days}.csv"
    pd.DataFrame(rows, columns=["series_id", "ds", "y"]).to_csv(p, index=False)
    return p


def _train(tmp: Path, days: int, *extra: str):
    path = _panel(tmp, days)
    args = train.parse_args(["--panel", str(path), "--freq", "D", "--name", "t", "--out-dir", str(tmp),
                             "--steps", "40", "--eval-every", "20", "--patience", "0", "--batch", "32", *extra])
    panel = load_panel(path, "D")
    spec = train.make_spec(args)
    prep = Prepared.make(panel, spec, None)
    cutoff = len(panel.index) - 28
    members, _, trained = train.fit(args, prep, spec, cutoff, 28)
    return spec, members[0], trained


def _year_weights(spec, p) -> list[np.ndarray]:
    past, fut = spec.past_names(), spec.future_names()
    out = []
    for name in train.YEAR_CHANNELS:
        out.append(p["W"][:, past.index(name)])
        out += [p[k][fut.index(name), :] for k in ("s_f", "s_lin", "a_f", "a_lin")]
    return out


@pytest.mark.parametrize("days,extra,on", [(300, (), False), (600, (), True), (300, ("--year-cycle", "on"), True),
                                           (600, ("--year-cycle", "off"), False)])
def test_year_cycle_weights(tmp_path, days, extra, on):
    spec, p, trained = _train(tmp_path, days, *extra)
    assert trained["hyper"]["year_cycle"] is on
    ws = _year_weights(spec, p)
    if on:
        assert any(np.abs(w).max() > 0 for w in ws)
    else:
        assert all(np.all(w == 0) for w in ws)
    # the other channels train either way
    dow = spec.past_names().index("dow_sin")
    assert np.abs(p["W"][:, dow]).max() > 0
    assert np.abs(p["s_lin"]).max() > 0
