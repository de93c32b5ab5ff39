"""Parity: the JAX forward pass and ONNX Runtime agree within 1e-4 on the same inputs.

Runs against every committed model in forecaster/models/ (or the directory in
$SHARDCAST_MODELS). Plain ``pytest forecaster/train/test_parity.py`` or
``python forecaster/train/test_parity.py``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import FeatureSpec, set_threads  # noqa: E402

set_threads()

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402

import parity  # noqa: E402

MODELS = Path(os.environ.get("SHARDCAST_MODELS", HERE.parent / "models"))
NAMES = sorted(p.name[: -len(".json")] for p in MODELS.glob("*.json") if not p.name.endswith(".parity.json"))
OUTPUTS = ["quantiles", "agg_quantiles", "quantiles_transformed", "agg_quantiles_transformed"]


def _load(name: str):
    meta = json.loads((MODELS / f"{name}.json").read_text())
    spec = FeatureSpec.from_json(meta["spec"])
    members, calib = parity.load_members(MODELS / f"{name}.weights.npz")
    sess = ort.InferenceSession(str(MODELS / meta["onnx"]), providers=["CPUExecutionProvider"])
    return meta, spec, members, calib, sess


def _random_inputs(spec: FeatureSpec, batch: int, seed: int):
    rng = np.random.default_rng(seed)
    Fp, Ff = len(spec.past_names()), len(spec.future_names())
    past = rng.normal(0, 1, (batch, spec.context, Fp)).astype(np.float32)
    past[..., 0] = np.abs(past[..., 0])  # transformed demand is >= 0
    future = rng.normal(0, 1, (batch, spec.horizon, Ff)).astype(np.float32)
    scale = rng.uniform(1, 500, (batch, 1)).astype(np.float32)
    return past, future, scale


def _compare(got: dict, want: dict, tol: float, scale: np.ndarray, lengths: list[int]) -> None:
    """Transformed outputs: absolute error <= tol. Demand outputs: error <= tol x
    max(1, |expected|, scale x length) -- float32 exp() turns a 1e-7 difference
    in z into scale x 1e-7 demand units, whatever the size of the quantile."""
    for k in OUTPUTS:
        g, w = np.asarray(got[k]), np.asarray(want[k])
        assert g.shape == w.shape, (k, g.shape, w.shape)
        if k.endswith("transformed"):
            denom = 1.0
        else:
            mult = scale[:, :, None] * (np.asarray(lengths, np.float32)[None, :, None] if k.startswith("agg") else 1.0)
            denom = np.maximum(np.maximum(1.0, np.abs(w)), mult)
        err = float(np.max(np.abs(g - w) / denom))
        assert err <= tol, f"{k}: max error {err:.2e} > {tol}"


@pytest.mark.parametrize("name", NAMES)
def test_onnx_is_standard(name):
    meta = json.loads((MODELS / f"{name}.json").read_text())
    m = onnx.load(str(MODELS / meta["onnx"]))
    onnx.checker.check_model(m, full_check=True)
    ops = {n.op_type for n in m.graph.node}
    assert "LSTM" in ops
    assert [i.name for i in m.graph.input] == [i["name"] for i in meta["inputs"]]
    assert [o.name for o in m.graph.output] == [o["name"] for o in meta["outputs"]]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert (MODELS / meta["onnx"]).stat().st_size < 1_000_000


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 7, 300])
def test_jax_vs_onnxruntime_random(name, batch):
    _, spec, members, calib, sess = _load(name)
    past, future, scale = _random_inputs(spec, batch, seed=batch)
    want = parity.jax_outputs(members, calib, spec, past, future, scale)
    got = dict(zip(OUTPUTS, sess.run(OUTPUTS, {"past": past, "future": future, "scale": scale})))
    _compare(got, want, parity.TOLERANCE, scale, [n for _, n in spec.aggregates])


@pytest.mark.parametrize("name", NAMES)
def test_fixture(name):
    """The committed fixture: ORT reproduces the recorded JAX outputs, and the
    feature builder reproduces the recorded tensors from the raw history."""
    _, spec, members, calib, sess = _load(name)
    fx = json.loads((MODELS / f"{name}.parity.json").read_text())
    inp = {k: np.asarray(v, np.float32) for k, v in fx["inputs"].items()}
    got = dict(zip(OUTPUTS, sess.run(OUTPUTS, inp)))
    lens = [n for _, n in spec.aggregates]
    _compare(got, fx["expected"], fx["tolerance"], inp["scale"], lens)
    _compare(parity.jax_outputs(members, calib, spec, inp["past"], inp["future"], inp["scale"]),
             fx["expected"], fx["tolerance"], inp["scale"], lens)
    # rebuild the features of each case from its raw fields alone
    import pandas as pd

    from common import EVENT_CHANNELS, FREQS, calendar

    H, L, K = spec.history_needed, spec.context, spec.horizon
    for b, c in enumerate(fx["cases"]):
        origin = pd.Timestamp(c["origin"])
        step = pd.Timedelta(days=7) if spec.freq == "W" else None
        if step is not None:
            idx = pd.date_range(end=origin, periods=H, freq="7D").append(
                pd.date_range(origin + step, periods=K, freq="7D"))
        else:
            idx = pd.date_range(end=origin, periods=H, freq=FREQS[spec.freq]["alias"])
            idx = idx.append(pd.date_range(origin, periods=K + 1, freq=FREQS[spec.freq]["alias"])[1:])
        y = np.zeros((1, H + K))
        y[0, :H] = c["y_history"]
        ev = np.zeros((1, H + K, len(EVENT_CHANNELS)))
        for j, ch in enumerate(EVENT_CHANNELS):
            ev[0, H - L:H, j] = c["past_events"][ch]
            ev[0, H:, j] = c["future_events"][ch]
        cov = np.full((1, H, len(spec.covariates)), np.nan)
        past, future, scale = spec.build(y, calendar(idx, spec.freq), ev, np.array([c["events_known"]]), cov,
                                         np.ones((1, len(spec.covariates))), np.array([0]), np.array([H - 1]))
        np.testing.assert_allclose(past[0], inp["past"][b], atol=1e-5)
        np.testing.assert_allclose(future[0], inp["future"][b], atol=1e-5)
        np.testing.assert_allclose(scale[0], inp["scale"][b], rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_quantiles_are_ordered_and_non_negative(name):
    _, spec, _, _, sess = _load(name)
    past, future, scale = _random_inputs(spec, 64, seed=99)
    q, qa = sess.run(["quantiles", "agg_quantiles"], {"past": past, "future": future, "scale": scale})
    for x in (q, qa):
        assert np.isfinite(x).all() and (x >= 0).all()
        assert (np.diff(x, axis=-1) >= -1e-5).all()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
