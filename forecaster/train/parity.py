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
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from common import EVENT_CHANNELS, FeatureSpec, Prepared, load_panel

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
            "origin": str(prep.panel.local[o]),
            "origin_unix_ms": _unix_ms(prep.panel, o),
            "y_history": prep.panel.y[s, o - H + 1:o + 1].tolist(),
            "events_known": float(ev_known[b]),
            "past_events": {c: prep.ev[s, o - L + 1:o + 1, j].tolist() for j, c in enumerate(EVENT_CHANNELS)},
            "future_events": {c: prep.ev[s, o + 1:o + K + 1, j].tolist() for j, c in enumerate(EVENT_CHANNELS)},
            "covariates": "none known (all *_known = 0)",
        })
    fixture = {
        "model": f"{name}.onnx",
        "timezone": prep.panel.tz if spec.freq == "H" else None,
        "tolerance": TOLERANCE,
        "note": __doc__.strip(),
        "cases": cases,
        "inputs": {"past": past.tolist(), "future": future.tolist(), "scale": scale.tolist()},
        "expected": {k: v.tolist() for k, v in exp.items()},
    }
    (out / f"{name}.parity.json").write_text(json.dumps(fixture, separators=(",", ":")) + "\n")


def _unix_ms(panel, o: int) -> int | None:
    """Unix ms of an hourly period's start (the index is naive UTC); None for civil periods."""
    if panel.freq != "H":
        return None
    return int(pd.Timestamp(panel.index[o]).tz_localize("UTC").value // 1_000_000)


# ---------------------------------------------------------------------------
# Features across daylight-saving changes
# ---------------------------------------------------------------------------

DST_ZONE = "Europe/London"
# Transitions of 2011 in the zone: clocks forward 01:00 UTC 27 March, back 01:00 UTC 30 October.
DST_CHANGES_UTC = ["2011-03-27 01:00", "2011-10-30 01:00"]
# Event days on and next to the changes: the hours of a 23- or 25-hour day must all carry its event.
DST_EVENTS = """ds_start,ds_end,scope,kind,intensity
2011-03-27,2011-03-27,*,event,1.0
2011-03-28,2011-03-28,UK/*,closed,1.0
2011-10-30,2011-10-30,*,holiday,0.5
2011-10-31,2011-10-31,INTL/*,event,0.75
"""
DST_OFFSETS_H = [-26, -25, -3, -2, -1, 0, 1, 2, 22, 23, 24, 25]  # origins, hours from each change


def dst_panel(tz: str = DST_ZONE) -> pd.DataFrame:
    """A synthetic hourly panel of a store open 08-17 local, Sun-Fri, with naive local timestamps (as the
    dev data): one row per wall-clock hour, so the spring-forward gap has a row (moved to the next hour)
    and the fall-back hour has one row for its two hours."""
    rng = np.random.default_rng(11)
    local = pd.date_range("2011-03-01 00:00", "2011-11-10 23:00", freq="h")
    rows = []
    for sid, level in (("UK/A", 40.0), ("INTL/B", 3.0)):
        open_ = (local.dayofweek != 5) & (local.hour >= 8) & (local.hour <= 17)
        y = np.where(open_, rng.poisson(level * (1 + 0.5 * np.sin(local.hour / 24 * 6.28))), 0)
        rows.append(pd.DataFrame({"series_id": sid, "ds": local.strftime("%Y-%m-%d %H:%M:%S"), "y": y}))
    return pd.concat(rows, ignore_index=True)


def dst_fixture(spec: FeatureSpec, tz: str = DST_ZONE) -> dict:
    """Feature tensors of an hourly spec at origins around both 2011 changes of ``tz``, with everything the
    Rust builder needs to rebuild them (same layout as a model's ``cases``/``inputs``), plus the event
    calendar, so the Rust side also checks each hour's event day."""
    with tempfile.TemporaryDirectory() as d:
        pp, ep = Path(d) / "panel.csv", Path(d) / "events.csv"
        dst_panel(tz).to_csv(pp, index=False)
        ep.write_text(DST_EVENTS)
        panel = load_panel(pp, "H", tz=tz)
        prep = Prepared.make(panel, spec, ep)
    pos = {t: i for i, t in enumerate(panel.index)}
    series, origins = [], []
    for k, change in enumerate(DST_CHANGES_UTC):
        for dh in DST_OFFSETS_H:
            origins.append(pos[pd.Timestamp(change) + pd.Timedelta(hours=dh)])
            series.append((k + dh) % len(panel.ids))
    series, origins = np.array(series), np.array(origins)
    ev_known = np.ones(len(series))
    cov_known = np.zeros((len(series), len(spec.covariates)))
    past, future, scale = spec.build(panel.y, prep.cal, prep.ev, ev_known, prep.cov, cov_known, series, origins)
    H, L, K = spec.history_needed, spec.context, spec.horizon
    cases = []
    for b, (s, o) in enumerate(zip(series, origins)):
        cases.append({
            "series_id": panel.ids[s],
            "origin": str(panel.local[o]),
            "origin_unix_ms": _unix_ms(panel, o),
            "y_history": panel.y[s, o - H + 1:o + 1].tolist(),
            "events_known": 1.0,
            "past_events": {c: prep.ev[s, o - L + 1:o + 1, j].tolist() for j, c in enumerate(EVENT_CHANNELS)},
            "future_events": {c: prep.ev[s, o + 1:o + K + 1, j].tolist() for j, c in enumerate(EVENT_CHANNELS)},
        })
    r6 = lambda a: np.round(np.asarray(a, np.float64), 6).tolist()  # noqa: E731
    return {
        "note": "Hourly features across the 2011 daylight-saving changes of the zone (parity.py dst_fixture; "
                "regenerate with `python forecaster/train/parity.py --dst MODELS_DIR/shardcast_hourly.json`)",
        "timezone": tz,
        "events_csv": DST_EVENTS,
        "spec": spec.to_json(),
        "cases": cases,
        "inputs": {"past": r6(past), "future": r6(future), "scale": r6(scale)},
    }


def dst_fixture_path(contract: Path) -> Path:
    return contract.with_name(contract.name[: -len(".json")] + ".dst.parity.json")


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--dst":
        c = Path(sys.argv[2])
        fx = dst_fixture(FeatureSpec.from_json(json.loads(c.read_text())["spec"]))
        dst_fixture_path(c).write_text(json.dumps(fx, separators=(",", ":")) + "\n")
        print(dst_fixture_path(c))
    else:
        raise SystemExit("usage: parity.py --dst forecaster/models/shardcast_hourly.json")
