"""``weekly_probe``'s year-over-year seasonal naive: exact on a seasonal series with steady growth, NaN
without a year of history, ordered quantiles, and no forecast at all when no origin before the window can
measure its residuals."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import weekly_probe as wp  # noqa: E402
from choice import LEVELS  # noqa: E402


def _grown(n: int = 120, growth: float = 1.3) -> np.ndarray:
    t = np.arange(n)
    shape = 200 + 150 * np.sin(2 * np.pi * t / 52) + 60 * (t % 52 > 44)  # a season with a year-end peak
    return np.stack([k * shape * growth ** (t / 52) for k in (1.0, 3.0)])


def test_yoy_point_follows_growth_and_season():
    Y = _grown()
    o = 100
    for lead in (1, 4):
        p = wp.yoy_point(Y, o, lead, 8)
        # growth over 8 weeks against the same 8 weeks a year ago is the yearly growth
        np.testing.assert_allclose(p, Y[:, o + lead], rtol=0.01)
    assert np.isnan(wp.yoy_point(Y, 40, 1, 8)).all()  # the target's week a year before is before the data
    assert np.isnan(wp.yoy_point(Y, 55, 1, 8)).all()  # the ratio's weeks a year before are


def test_yoy_forecast_quantiles_and_history():
    rng = np.random.default_rng(5)
    Y = rng.poisson(_grown()).astype(float)
    q = wp.yoy_forecast(Y, 100, 4, 10, 8)
    assert q.shape == (2, 10, 4, len(LEVELS))
    assert (np.diff(q, axis=-1) >= 0).all()
    med = q[..., LEVELS.index(0.5)]
    truth = np.stack([Y[:, 99 + w + 1:99 + w + 5] for w in range(10)], 1)
    assert np.median(np.abs(med / truth - 1)) < 0.1
    assert wp.yoy_forecast(Y, 62, 1, 4, 8) is None  # no origin before the window has a year of ratio history
