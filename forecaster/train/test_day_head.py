"""The hourly model's whole-day total head is calibrated where a daily forecast is read: at day starts.

The 24-hour head answers next-day demand (the sidecar's ``1d``, the backtest's D h=1), read at the origin
whose first target hour is local midnight. A total over 15:00..14:59 spans two trading days, so its miss
rates need not be those of one calendar day. With ``--day-head-origins day-start`` (the default) the head's
spread factors are fitted on the validation window's day starts alone (in the store's zone, here one with
daylight saving), falling back to every origin when there are too few of them; checked on a panel whose
days each carry their own random level, with a real (short) training.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import model as M  # noqa: E402
import train  # noqa: E402
from common import Prepared, load_panel  # noqa: E402

TZ = "America/New_York"


def _panel(tmp: Path):
    """Hourly demand with a lognormal level per local day; naive timestamps are the store's wall clock."""
    rng = np.random.default_rng(11)
    idx = pd.date_range("2011-01-03", periods=24 * 7 * 12, freq="h")
    days = (idx.normalize() - idx[0].normalize()).days.to_numpy()
    rows = []
    for s in range(8):
        level = np.exp(rng.normal(0.0, 0.6, days.max() + 1))[days]
        lam = (4 + s) * level * (1.1 + np.sin(2 * np.pi * (idx.hour.to_numpy() - 6) / 24))
        y = rng.poisson(np.maximum(lam, 0.05))
        rows += [(f"shop{s}", idx[i], int(y[i])) for i in range(len(idx))]
    p = tmp / "panel.csv"
    pd.DataFrame(rows, columns=["series_id", "ds", "y"]).to_csv(p, index=False)
    return p


def _args(panel: Path, tmp: Path, origins: str):
    return train.parse_args(["--panel", str(panel), "--freq", "H", "--name", "t", "--out-dir", str(tmp),
                             "--timezone", TZ, "--steps", "30", "--eval-every", "30", "--patience", "0",
                             "--day-head-origins", origins])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dayhead")
    path = _panel(tmp)
    args = _args(path, tmp, "day-start")
    panel = load_panel(path, "H", tz=TZ)
    spec = train.make_spec(args)
    prep = Prepared.make(panel, spec, None)
    cutoff = len(panel.index) - 24 * 7
    val = 24 * 28  # 28 day starts x 8 series: enough cells for a calibration of their own
    return path, tmp, panel, spec, prep, cutoff, val


def test_day_start_mask_selects_the_origins_before_local_midnight(setup):
    path, tmp, panel, spec, prep, cutoff, val = setup
    vs = train.val_set(prep, spec, cutoff - val, cutoff, None)
    j = [i for i, (a, n) in enumerate(spec.aggregates) if a == 0 and n == 24][0]
    m = train.agg_calibration_mask(_args(path, tmp, "day-start"), spec, vs, prep, j)[:, 0]
    every = train.agg_calibration_mask(_args(path, tmp, "all"), spec, vs, prep, j)[:, 0]
    assert (every == vs["ag_valid"][:, j]).all()
    first = panel.local[vs["origins"][m] + 1]
    assert (first.hour == 0).all() and (first.minute == 0).all()
    # every validation day whose whole 24 hours lie in the window, for every series
    n_days = len({d for d in panel.local[vs["origins"][every] + 1].normalize()
                  if (panel.local[vs["origins"][every] + 1] == d).any()})
    assert m.sum() == len(panel.ids) * n_days
    assert 0 < m.sum() < every.sum() / 20


def test_few_day_starts_fall_back_to_every_origin(setup):
    path, tmp, panel, spec, prep, cutoff, val = setup
    short = 24 * 7  # 7 days x 8 series < the minimum cells of a calibration
    vs = train.val_set(prep, spec, cutoff - short, cutoff, None)
    m = train.agg_calibration_mask(_args(path, tmp, "day-start"), spec, vs, prep, 0)
    assert (m == vs["ag_valid"][:, :1]).all()


def test_day_start_calibration_matches_the_served_origins(setup):
    path, tmp, panel, spec, prep, cutoff, val = setup
    vs = train.val_set(prep, spec, cutoff - val, cutoff, None)
    day = (panel.local[np.minimum(vs["origins"] + 1, len(panel.index) - 1)].hour == 0) & vs["ag_valid"][:, 0]
    lv = spec.quantiles
    mi = lv.index(0.5)
    args = _args(path, tmp, "day-start")
    members, calib, trained = train.fit(args, prep, spec, cutoff, val, quiet=True)
    assert trained["hyper"]["day_head_origins"] == "day-start"
    _, za = M.forward(members, {"steps": np.ones(len(lv), np.float32), "aggs": np.ones(len(lv), np.float32)},
                      vs["past"], vs["future"], spec.aggregates, mi)
    z = np.asarray(za)[:, :1, :]
    y = vs["ya"][:, :1]
    on_days = train.fit_calibration(z, y, day[:, None], lv, False)[0]
    on_all = train.fit_calibration(z, y, vs["ag_valid"][:, :1], lv, False)[0]
    # the graph's 24-hour head carries the day starts' factors, not every origin's
    assert np.allclose(calib["aggs"][0], on_days), (calib["aggs"][0], on_days)
    assert not np.allclose(on_days, on_all), on_all
    # and at the day starts its inner quartiles (no ordering constraint moves them) miss at their levels
    c = calib["aggs"][0]
    zc = z[:, 0, mi:mi + 1] + c[None, :] * (z[:, 0, :] - z[:, 0, mi:mi + 1])
    yy = y[:, 0]
    assert abs((yy[day] < zc[day, mi - 1]).mean() - 0.25) < 0.03
    assert abs((yy[day] > zc[day, mi + 1]).mean() - 0.25) < 0.03
