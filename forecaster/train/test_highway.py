"""The autoregressive highway: JAX and the exported ONNX graph agree, and it is a real path.

Random members with non-zero highway weights at every frequency's default spec (the trainer
zero-initialises them, so a freshly initialised member would not exercise the export).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import FREQS, FeatureSpec, set_threads  # noqa: E402

set_threads()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402

import export_onnx  # noqa: E402
import model as M  # noqa: E402
import parity  # noqa: E402


def _member(spec: FeatureSpec, seed: int, ar_lags: int, ar_seasonal: bool = False) -> dict:
    Fp, Ff = len(spec.past_names()), len(spec.future_names())
    p = M.init_params(jax.random.PRNGKey(seed), Fp, Ff, len(spec.aggregates), 8, 8, len(spec.quantiles),
                      horizon=spec.horizon, ar_lags=ar_lags, n_seasonal=len(spec.periods), ar_seasonal=ar_seasonal)
    rng = np.random.default_rng(seed)
    return {k: (rng.normal(0, 0.3, np.shape(v)).astype(np.float32) if k.startswith("hw_") else np.asarray(v))
            for k, v in p.items()}


def _inputs(spec: FeatureSpec, batch: int, seed: int):
    rng = np.random.default_rng(seed)
    past = rng.normal(0, 1, (batch, spec.context, len(spec.past_names()))).astype(np.float32)
    past[..., 0] = np.abs(past[..., 0])
    future = rng.normal(0, 1, (batch, spec.horizon, len(spec.future_names()))).astype(np.float32)
    scale = rng.uniform(1, 50, (batch, 1)).astype(np.float32)
    return past, future, scale


def _run(members, calib, spec, past, future, scale):
    mp = export_onnx.build(members, calib, spec, "hw", "test")
    sess = ort.InferenceSession(mp.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {"past": past, "future": future, "scale": scale})))
    return got, parity.jax_outputs(members, calib, spec, past, future, scale)


@pytest.mark.parametrize("ar_seasonal", [False, True])
@pytest.mark.parametrize("freq", sorted(FREQS))
def test_highway_export_matches_jax(freq, ar_seasonal):
    spec = FeatureSpec.default(freq)
    n = min([spec.context] + spec.periods)
    members = [_member(spec, 1, n, ar_seasonal), _member(spec, 2, n, ar_seasonal)]
    assert ("hw_l" in members[0]) == ar_seasonal
    Q = len(spec.quantiles)
    calib = {"steps": np.ones((spec.horizon, Q), np.float32), "aggs": np.ones((len(spec.aggregates), Q), np.float32)}
    past, future, scale = _inputs(spec, 5, 3)
    got, want = _run(members, calib, spec, past, future, scale)
    for k in ("quantiles_transformed", "agg_quantiles_transformed"):
        np.testing.assert_allclose(got[k], want[k], atol=1e-4, err_msg=k)


def test_highway_reads_the_last_values_and_seasonal_channels():
    """Moving the newest past value or a step's seasonal-naive value moves the output by exactly the weights."""
    spec = FeatureSpec.default("H")
    n = 24
    p = _member(spec, 4, n)
    Q = len(spec.quantiles)
    calib = {"steps": np.ones((spec.horizon, Q), np.float32), "aggs": np.ones((len(spec.aggregates), Q), np.float32)}
    past, future, scale = _inputs(spec, 1, 5)
    base, _ = _run([p], calib, spec, past, future, scale)
    q = {k: v for k, v in p.items() if not k.startswith("hw_")}
    # only the highway's contribution, through ONNX: full graph minus the graph without a highway
    nohw, _ = _run([q], calib, spec, past, future, scale)
    hw = base["quantiles_transformed"] - nohw["quantiles_transformed"]  # [1, K, Q]
    want = (past[0, -n:, 0] @ p["hw_p"] + (future[0, :, :2] * p["hw_s"]).sum(-1) + p["hw_b"])  # [K]
    np.testing.assert_allclose(hw[0], np.repeat(want[:, None], Q, 1), atol=1e-4)
    hwa = base["agg_quantiles_transformed"] - nohw["agg_quantiles_transformed"]
    np.testing.assert_allclose(hwa[0, :, 0], past[0, -n:, 0] @ p["hw_pa"] + p["hw_ba"], atol=1e-4)


def test_highway_reads_the_seasonal_lag_channels():
    """With the seasonal lag channels, the highway adds their last n positions times its weights (the origin's
    y_lag24 is y[t-24], lag 25 of the next hour), and nothing of the positions before them."""
    spec = FeatureSpec.default("H")
    n, P = 12, len(spec.periods)
    p = _member(spec, 6, n, ar_seasonal=True)
    q = {k: v for k, v in p.items() if k not in ("hw_l", "hw_la")}
    Q = len(spec.quantiles)
    calib = {"steps": np.ones((spec.horizon, Q), np.float32), "aggs": np.ones((len(spec.aggregates), Q), np.float32)}
    past, future, scale = _inputs(spec, 2, 7)
    past[1, :-n, 1:1 + P] += 5.0  # older positions of the lag channels: the LSTM sees them, the highway must not

    def contribution(past):
        full, _ = _run([p], calib, spec, past, future, scale)
        nolag, _ = _run([q], calib, spec, past, future, scale)
        return {k: full[k] - nolag[k] for k in ("quantiles_transformed", "agg_quantiles_transformed")}

    got = contribution(past)
    lags = past[:, -n:, 1:1 + P].reshape(2, -1)  # position-major, as the weights' rows
    np.testing.assert_allclose(got["quantiles_transformed"], np.repeat((lags @ p["hw_l"])[..., None], Q, 2), atol=1e-4)
    np.testing.assert_allclose(got["agg_quantiles_transformed"][..., 0], lags @ p["hw_la"], atol=1e-4)
