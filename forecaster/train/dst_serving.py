"""What a fixed UTC offset costs a store whose clocks change: the same hourly model scored on the same hours,
once with its calendar features, event days and open hours read on the store's clock (``--timezone``, as the
sidecar now does) and once on a fixed UTC+0 clock (the sidecar's former ``utc_offset_minutes = 0``, the
shipped setting for the UK dev store), which in British Summer Time labels 09:00 as 08:00.

Demand is the same in both (the real hours, UTC grid); only the calendar differs, and the cells scored are the
store's open hours in both. Rolling origins over ``--days`` days from ``--start`` (local), h = 1 (every hour)
and h = 24 (every local midnight, the 24 steps).

    .venv/bin/python forecaster/train/dst_serving.py --panel data/online_retail/shard_hourly.csv.gz \\
        --models-dir DIR --model NAME --timezone Europe/London --start 2011-09-16 --days 28 \\
        --events data/online_retail/events.csv --open-hours Sun-Fri:08-17 [--json out.json]

Use a model trained on data before ``--start`` (a backtest fold's, ``DIR/models/folds/<date>``) for an
out-of-sample window.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Prepared, load_panel, metric_table, open_hours_mask, set_threads  # noqa: E402

set_threads()

from backtest import mase_scale  # noqa: E402
from evaluate import Onnx  # noqa: E402


def score(panel, model: Onnx, events, start: int, n: int, mask: np.ndarray) -> dict:
    prep = Prepared.make(panel, model.spec, events)
    S = len(panel.ids)
    scale = mase_scale(panel, start, mask)  # as the backtest's (season 24, open hours)
    out = {}
    for h, step in ((1, 1), (24, 24)):
        origins = np.arange(start - 1, start - 1 + n - h + 1, step)
        ss, oo = np.repeat(np.arange(S), len(origins)), np.tile(origins, S)
        q, _ = model.run(prep, ss, oo)
        t = oo[:, None] + np.arange(1, h + 1)[None, :]
        y = panel.y[ss[:, None], t].reshape(S, -1)
        qq = q[:, :h].reshape(S, -1, q.shape[-1])
        m = mask[t].reshape(S, -1)
        r = metric_table(y, qq, model.spec.quantiles, scale, m)
        out[f"h={h}"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--panel", required=True)
    ap.add_argument("--id-col", default="shard_id")
    ap.add_argument("--time-col", default="ds")
    ap.add_argument("--target-col", default="lines")
    ap.add_argument("--models-dir", required=True)
    ap.add_argument("--model", default="shardcast_hourly")
    ap.add_argument("--timezone", required=True)
    ap.add_argument("--start", required=True, help="first local day of the window")
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--events", default=None)
    ap.add_argument("--open-hours", default="Sun-Fri:08-17")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    model = Onnx(a.model, Path(a.models_dir))
    zoned = load_panel(a.panel, "H", a.id_col, a.time_col, a.target_col, tz=a.timezone)
    fixed = dataclasses.replace(zoned, tz="UTC")  # the same hours, read on a UTC+0 clock
    start = zoned.period_of_local(pd.Timestamp(a.start))
    end = zoned.period_of_local(pd.Timestamp(a.start) + pd.Timedelta(days=a.days))
    mask = open_hours_mask(zoned.local, a.open_hours)  # the store's open hours, scored in both
    res = {"window": [str(zoned.local[start]), str(zoned.local[end - 1])], "model": a.model,
           "timezone": a.timezone, "cells_open": int(mask[start:end].sum()) * len(zoned.ids)}
    for label, p in ((a.timezone, zoned), ("fixed UTC+0", fixed)):
        res[label] = score(p, model, a.events, start, end - start, mask)
        print(label, json.dumps(res[label]), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
