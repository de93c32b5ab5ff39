"""A missing feed degrades the forecast, it never stops it.

For every committed model: forecasts on real inputs (the last training
origins of the shipped panel) with the event calendar known, then with it
unknown (``events_known`` = 0, channels 0), then with garbage-free covariate
values suddenly known. Every variant must give finite, ordered,
non-negative quantiles, and dropping the calendar must not move the total
median demand by more than half.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import FeatureSpec, Prepared, load_panel, set_threads  # noqa: E402

set_threads()

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402

REPO = HERE.parent.parent
MODELS = REPO / "forecaster" / "models"
DATA = REPO / "data" / "online_retail"
PANELS = {"H": "shard_hourly.csv.gz", "D": "shard_daily.csv.gz"}
NAMES = sorted(p.name[: -len(".json")] for p in MODELS.glob("*.json") if not p.name.endswith(".parity.json"))


def _check(q: np.ndarray) -> None:
    assert np.isfinite(q).all() and (q >= 0).all()
    assert (np.diff(q, axis=-1) >= -1e-4).all()


@pytest.mark.parametrize("name", NAMES)
def test_missing_and_present_feeds(name):
    meta = json.loads((MODELS / f"{name}.json").read_text())
    spec = FeatureSpec.from_json(meta["spec"])
    if spec.freq not in PANELS:
        pytest.skip("no shipped panel at this frequency")
    panel = load_panel(DATA / PANELS[spec.freq], spec.freq, "shard_id", "ds", "lines")
    prep = Prepared.make(panel, spec, DATA / "events.csv")
    sess = ort.InferenceSession(str(MODELS / meta["onnx"]), providers=["CPUExecutionProvider"])
    S = len(panel.ids)
    origin = panel.y.shape[1] - 1 - 2 * spec.horizon
    series = np.repeat(np.arange(S), 8)
    origins = np.tile(origin - np.arange(8) * 3, S)

    def run(drop_events: float, cov: np.ndarray | None = None):
        if cov is not None:
            prep.cov = cov
        past, future, scale = prep.inputs(series, origins, drop_events=np.full(len(series), drop_events))
        q, qa = sess.run(["quantiles", "agg_quantiles"], {"past": past, "future": future, "scale": scale})
        _check(q)
        _check(qa)
        return q, qa

    mi = spec.quantiles.index(0.5)
    q_with, _ = run(0.0)
    q_without, _ = run(1.0)
    a, b = q_with[..., mi].sum(), q_without[..., mi].sum()
    assert 0.5 < b / a < 2.0, (a, b)
    # a covariate feed that appears (never seen in training) must not break the forecast
    rng = np.random.default_rng(0)
    cov = rng.uniform(0, 1000, prep.cov.shape)
    run(0.0, cov)
