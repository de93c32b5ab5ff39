"""Parity fixtures: inputs and the trainer's (JAX) outputs, for the Python and Rust parity tests.

``<name>.parity.json`` holds

- ``cases``: a handful of real forecasts at the end of the training data
  (every series at one origin, plus a few more): for each, the raw history
  (``y_history``, oldest first, ending at the origin), the origin timestamp,
  whether the event feed was known, and the event channels of the past and
  future periods — everything needed to rebuild the features — together with
  the built ``past``/``future``/``scale`` tensors;
- ``expected``: the JAX forward pass on those tensors for every output name.

A runtime that reproduces ``past``/``future``/``scale`` from the raw fields
(within 1e-5) and ``expected`` from the tensors implements the contract.
Tolerance: absolute ``tolerance`` on the ``*_transformed`` outputs; on the
demand outputs ``tolerance`` x max(1, |expected|, scale x length), since
float32 exp() turns a 1e-7 difference in z into scale x 1e-7 demand units.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common import EVENT_CHANNELS, FeatureSpec, Prepared

TOLERANCE = 1e-4


def jax_outputs(members, calib, spec: FeatureSpec, past, future, scale) -> dict[str, np.ndarray]:
    import model as M

    zs, za = M.forward(members, calib, past, future, spec.aggregates, spec.quantiles.index(0.5))
    lens = [n for _, n in spec.aggregates]
    return {
        "quantiles": np.asarray(M.invert(zs, scale)),
        "agg_quantiles": np.asarray(M.invert(za, scale, lens)),
        "quantiles_transformed": np.asarray(zs),
        "agg_quantiles_transformed": np.asarray(za),
    }


def load_members(path: Path) -> tuple[list[dict], dict]:
    z = np.load(path)
    members: dict[int, dict] = {}
    calib = {}
    for k in z.files:
        head, key = k.split(".", 1)
        if head == "calib":
            calib[key] = z[k]
        else:
            members.setdefault(int(head[1:]), {})[key] = z[k]
    return [members[i] for i in sorted(members)], calib


def write_fixture(out: Path, name: str, spec: FeatureSpec, members, calib, prep: Prepared, cutoff: int) -> None:
    S = len(prep.panel.ids)
    origin_main = cutoff - 1 - spec.horizon  # the last origin whose horizon is inside the training data
    series = list(range(S)) + [0, S - 1]
    origins = [origin_main] * S + [origin_main - 7, origin_main - 30]
    series = np.array(series)
    origins = np.array(origins)
    ev_known = np.array([1.0] * S + [0.0, 1.0]) if prep.ev_present else np.zeros(len(series))
    cov_known = np.ones((len(series), len(spec.covariates)))
    past, future, scale = spec.build(prep.panel.y, prep.cal, prep.ev, ev_known, prep.cov, cov_known,
                                     series, origins)
    exp = jax_outputs(members, calib, spec, past, future, scale)
    H = spec.history_needed
    L, K = spec.context, spec.horizon
    cases = []
    for b, (s, o) in enumerate(zip(series, origins)):
        cases.append({
            "series_id": prep.panel.ids[s],
            "origin": str(prep.panel.index[o]),
            "y_history": prep.panel.y[s, o - H + 1:o + 1].tolist(),
            "events_known": float(ev_known[b]),
            "past_events": {c: prep.ev[s, o - L + 1:o + 1, j].tolist() for j, c in enumerate(EVENT_CHANNELS)},
            "future_events": {c: prep.ev[s, o + 1:o + K + 1, j].tolist() for j, c in enumerate(EVENT_CHANNELS)},
            "covariates": "none known (all *_known = 0)",
        })
    fixture = {
        "model": f"{name}.onnx",
        "tolerance": TOLERANCE,
        "note": __doc__.strip(),
        "cases": cases,
        "inputs": {"past": past.tolist(), "future": future.tolist(), "scale": scale.tolist()},
        "expected": {k: v.tolist() for k, v in exp.items()},
    }
    (out / f"{name}.parity.json").write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
