"""Store-local time in the trainer: hourly panels read in an IANA zone (daylight saving included), calendar
features, open hours and event days on the store's wall clock, and the DST parity fixture the Rust builder is
checked against (``forecaster/models/shardcast_hourly.dst.parity.json``) still what this code builds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import parity  # noqa: E402
from common import FeatureSpec, Prepared, calendar, load_panel, open_hours_mask  # noqa: E402

MODELS = HERE.parent / "models"


@pytest.fixture(scope="module")
def london(tmp_path_factory):
    d = tmp_path_factory.mktemp("dst")
    (d / "panel.csv").write_text(parity.dst_panel().to_csv(index=False))
    (d / "events.csv").write_text(parity.DST_EVENTS)
    return d, load_panel(d / "panel.csv", "H", tz="Europe/London")


def _pos(panel, utc: str) -> int:
    return int(panel.index.get_loc(pd.Timestamp(utc)))


def test_local_days_have_23_and_25_hours(london):
    _, p = london
    per_day = pd.Series(1, index=p.local.normalize()).groupby(level=0).sum()
    assert per_day[pd.Timestamp("2011-03-27")] == 23
    assert per_day[pd.Timestamp("2011-10-30")] == 25
    assert per_day[pd.Timestamp("2011-06-01")] == 24
    # every period is one real hour: the index (naive UTC) has no gap and no repeat
    assert (np.diff(p.index.asi8) == 3_600 * 10**9).all()
    # the spring-forward row (01:00, which never happened) moved to 02:00; its demand is kept
    df = parity.dst_panel()
    assert p.y.sum() == df["y"].sum()


def test_calendar_open_hours_and_events_follow_the_wall_clock(london):
    d, p = london
    cal = calendar(p.local, "H")
    hour = np.round(np.arctan2(cal[:, 0], cal[:, 1]) / (2 * np.pi) * 24) % 24
    # 09:00 BST on Monday 28 March 2011 is 08:00 UTC; 09:00 GMT on Monday 31 October is 09:00 UTC
    assert hour[_pos(p, "2011-03-28 08:00")] == 9
    assert hour[_pos(p, "2011-10-31 09:00")] == 9
    assert list(hour[_pos(p, "2011-10-29 23:00"):_pos(p, "2011-10-29 23:00") + 4]) == [0, 1, 1, 2]
    assert list(hour[_pos(p, "2011-03-26 23:00"):_pos(p, "2011-03-26 23:00") + 3]) == [23, 0, 2]
    mask = open_hours_mask(p.local, "Sun-Fri:08-17")
    assert mask[_pos(p, "2011-03-28 07:00")] and not mask[_pos(p, "2011-03-28 17:00")]
    assert mask[_pos(p, "2011-10-31 17:00")] and not mask[_pos(p, "2011-10-31 07:00")]
    spec = FeatureSpec.default("H")
    prep = Prepared.make(p, spec, d / "events.csv")
    hol = prep.ev[0, :len(p.index), 0]
    on = np.flatnonzero(hol > 0)
    # the 25 hours of 30 October (local), from 23:00 UTC on the 29th
    assert len(on) == 25 and p.index[on[0]] == pd.Timestamp("2011-10-29 23:00")
    uk = p.ids.index("UK/A")
    on = np.flatnonzero(prep.ev[uk, :len(p.index), 2] > 0)  # the 23 hours of 27 March (local)
    assert len(on) == 23 and p.index[on[0]] == pd.Timestamp("2011-03-27 00:00")
    on = np.flatnonzero(prep.ev[uk, :len(p.index), 1] > 0)  # 28 March, from 23:00 UTC on the 27th
    assert len(on) == 24 and p.index[on[0]] == pd.Timestamp("2011-03-27 23:00")


def test_utc_default_keeps_naive_times_as_they_are(tmp_path):
    df = parity.dst_panel()
    (tmp_path / "p.csv").write_text(df.to_csv(index=False))
    p = load_panel(tmp_path / "p.csv", "H")
    assert p.tz == "UTC"
    assert (p.index == pd.DatetimeIndex(pd.to_datetime(df["ds"].unique()))).all()
    assert (p.local == p.index).all()


def test_offsets_in_the_data_are_converted(tmp_path):
    (tmp_path / "p.csv").write_text("series_id,ds,y\na,2011-10-30T00:00:00+01:00,1\na,2011-10-30T01:00:00+01:00,2\n"
                                    "a,2011-10-30T01:00:00+00:00,3\n")
    p = load_panel(tmp_path / "p.csv", "H", tz="Europe/London")
    assert list(p.y[0]) == [1, 2, 3]
    assert [str(t) for t in p.local] == ["2011-10-30 00:00:00", "2011-10-30 01:00:00", "2011-10-30 01:00:00"]


def test_unknown_zone_names_the_flag(tmp_path):
    (tmp_path / "p.csv").write_text("series_id,ds,y\na,2011-01-01 00:00,1\n")
    with pytest.raises(SystemExit, match="--timezone 'Europe/Londres'"):
        load_panel(tmp_path / "p.csv", "H", tz="Europe/Londres")


def test_dst_parity_fixture_is_current():
    contract = MODELS / "shardcast_hourly.json"
    spec = FeatureSpec.from_json(json.loads(contract.read_text())["spec"])
    want = json.loads(parity.dst_fixture_path(contract).read_text())
    got = json.loads(json.dumps(parity.dst_fixture(spec)))
    hint = "regenerate: python forecaster/train/parity.py --dst forecaster/models/shardcast_hourly.json"
    assert got["spec"] == want["spec"], hint
    assert got["cases"] == want["cases"], hint
    for k in ("past", "future", "scale"):
        assert np.allclose(got["inputs"][k], want["inputs"][k], atol=1e-6), (k, hint)
    # the fixture's windows hold hours of both changes
    offs = {c["origin"][-6:] for c in want["cases"]}
    assert len(want["cases"]) == 2 * len(parity.DST_OFFSETS_H), offs
