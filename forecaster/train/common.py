"""Panel loading, feature construction and metrics shared by training and evaluation.

Everything the Rust runtime has to reproduce lives here and is described,
feature by feature, in the JSON sidecar written by ``export_onnx.py``
(``FeatureSpec.describe``). The reference implementation of the feature
builder is ``FeatureSpec.build`` — the parity fixture records its inputs and
outputs so the Rust side can test its own builder against it.

Data model
----------
A panel is a long table ``series_id, ds, y`` (plus optional covariate
columns) at one frequency: ``H`` (hourly), ``D`` (daily), ``W`` (weekly,
periods labelled by their first day) or ``M`` (monthly, labelled by the first
day of the month). It is made regular on one grid: a series' history starts
at its first observation (``Panel.start``); periods after it that are
missing count as zero demand. Periods before it are *not* history: the
demand array holds 0 there only so that tensors can be built, training
never uses an origin whose window reaches before ``start`` and the
backtest never scores those cells.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

QUANTILES = [0.01, 0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975, 0.99]
COVARIATES = ["web_traffic", "sentiment"]
EVENT_CHANNELS = ["holiday", "closed", "event"]
Z_MAX = 20.0  # clip of the transformed outputs before exp (guards overflow)

FREQS = {
    # pandas alias, seasonal periods used as lag channels, default context,
    # horizon, scale window, aggregates (start, length) in steps
    "H": dict(alias="h", periods=[24, 168], context=24, horizon=24, scale_window=168, aggregates=[(0, 24)]),
    "D": dict(alias="D", periods=[7], context=28, horizon=28, scale_window=28,
              aggregates=[(0, 7), (7, 7), (14, 7), (21, 7), (0, 28)]),
    "W": dict(alias="W-MON", periods=[52], context=26, horizon=8, scale_window=8, aggregates=[(0, 4)]),
    "M": dict(alias="MS", periods=[12], context=12, horizon=12, scale_window=12, aggregates=[(0, 3), (0, 12)]),
}


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

@dataclass
class Panel:
    """A regular panel: ``y[s, t]`` for series ``ids[s]`` at times ``index[t]``."""

    freq: str
    ids: list[str]
    index: pd.DatetimeIndex
    y: np.ndarray  # [S, T] float64, >= 0
    cov: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [S, T], NaN = missing
    start: np.ndarray | None = None  # [S] index of each series' first observation (None: 0 for all)
    tz: str = "UTC"  # the store's time zone (hourly panels: index is naive UTC, see the module doc)

    def __post_init__(self):
        if self.start is None:
            self.start = np.zeros(len(self.ids), dtype=int)

    def slice_until(self, end: pd.Timestamp) -> "Panel":
        """Only the periods strictly before ``end``."""
        n = int(self.index.searchsorted(end))
        return Panel(self.freq, self.ids, self.index[:n], self.y[:, :n], {k: v[:, :n] for k, v in self.cov.items()},
                     self.start.copy(), self.tz)

    def observed(self) -> np.ndarray:
        """[S, T] bool: the period is at or after the series' first observation."""
        return np.arange(self.y.shape[1])[None, :] >= self.start[:, None]

    @property
    def local(self) -> pd.DatetimeIndex:
        """The periods' start on the store's wall clock (naive; hourly: may repeat or skip an hour)."""
        return local_index(self.index, self.freq, self.tz)

    def period_of_local(self, t: pd.Timestamp) -> int:
        """Position of the period holding local wall-clock time ``t`` (hourly: through the zone)."""
        if self.freq == "H":
            t = pd.DatetimeIndex(to_utc_naive(pd.Series([pd.Timestamp(t)]), self.tz))[0]
        return int(self.index.searchsorted(t))


def zone(name: str, flag: str = "--timezone") -> ZoneInfo:
    """An IANA time zone; a clear error naming ``flag`` otherwise."""
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise SystemExit(f"{flag} {name!r}: not an IANA time zone name (e.g. Europe/London, America/New_York, "
                         f"UTC)") from None


def local_index(index: pd.DatetimeIndex, freq: str, tz: str) -> pd.DatetimeIndex:
    """Naive-UTC hourly periods -> naive local wall-clock times (other frequencies are civil already)."""
    if freq != "H":
        return index
    return index.tz_localize("UTC").tz_convert(zone(tz)).tz_localize(None)


def to_utc_naive(ds: pd.Series, tz: str) -> pd.Series:
    """Timestamps -> naive UTC: naive ones are wall-clock times in ``tz`` (a time in a spring-forward gap
    moves to the first instant after it, one in a fall-back fold is its first occurrence), aware ones are
    converted."""
    if getattr(ds.dt, "tz", None) is None:
        ds = ds.dt.tz_localize(zone(tz), ambiguous=np.ones(len(ds), dtype=bool), nonexistent="shift_forward")
    return ds.dt.tz_convert("UTC").dt.tz_localize(None)


def parse_times(col: pd.Series, freq: str, tz: str) -> pd.Series:
    """A time column -> timestamps on the panel's axis (naive UTC for hourly, civil otherwise)."""
    if freq == "H":
        zone(tz)  # an unknown zone is the flag's error, not the column's
    with warnings.catch_warnings():  # pandas warns before it falls back to objects on mixed offsets
        warnings.simplefilter("ignore", FutureWarning)
        ds = pd.to_datetime(col)
    if ds.dtype == object:  # several UTC offsets in one column
        ds = pd.to_datetime(col, utc=True)
    if freq == "H":
        return to_utc_naive(ds, tz)
    if getattr(ds.dt, "tz", None) is not None:  # a day is the local date of the timestamp
        ds = ds.dt.tz_convert(zone(tz)).dt.tz_localize(None)
    return ds


def period_index(start: pd.Timestamp, end: pd.Timestamp, freq: str) -> pd.DatetimeIndex:
    if freq == "W":
        return pd.date_range(start, end, freq="7D")
    return pd.date_range(start, end, freq=FREQS[freq]["alias"])


def load_panel(path: str | Path, freq: str, id_col: str = "series_id", time_col: str = "ds",
               target_col: str = "y", covariate_cols: list[str] | None = None, tz: str = "UTC") -> Panel:
    """Read a long-format CSV (optionally gzip) into a regular ``Panel``; hourly times are read in ``tz``."""
    if freq not in FREQS:
        raise SystemExit(f"--freq {freq!r}: use one of {', '.join(FREQS)}")
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise SystemExit(f"--panel {path}: no such file") from None
    flags = {id_col: "--id-col", time_col: "--time-col", target_col: "--target-col"}
    for c, flag in flags.items():
        if c not in df.columns:
            raise SystemExit(f"{path}: no column {c!r}: set {flag} to one of {list(df.columns)}")
    df = df.rename(columns={id_col: "series_id", time_col: "ds", target_col: "y"})
    df["series_id"] = df["series_id"].astype(str)
    try:
        df["ds"] = parse_times(df["ds"], freq, tz)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"{path}: column {time_col!r} is not a timestamp ({e}): check --time-col") from None
    if not pd.api.types.is_numeric_dtype(df["y"]):
        raise SystemExit(f"{path}: column {target_col!r} is not numeric: check --target-col")
    if df["y"].isna().any() or (df["y"] < 0).any():
        raise SystemExit(f"{path}: target {target_col!r} must be non-negative and present (--target-col)")
    if freq == "M":  # any day of the month labels that month
        df["ds"] = df["ds"].dt.to_period("M").dt.start_time
    ids = sorted(df["series_id"].unique())
    index = period_index(df["ds"].min(), df["ds"].max(), freq)
    if not df["ds"].isin(index).all():
        bad = df.loc[~df["ds"].isin(index), "ds"].iloc[0]
        raise SystemExit(f"{path}: timestamp {bad} is not on the {freq} grid starting {index[0]}: check --freq")
    wide = df.pivot_table(index="series_id", columns="ds", values="y", aggfunc="sum")
    wide = wide.reindex(index=ids, columns=index)
    first = df.groupby("series_id")["ds"].min().reindex(ids)
    start = index.searchsorted(pd.DatetimeIndex(first)).astype(int)
    # missing periods after a series' first observation are zero demand; before it there is no history
    y = wide.fillna(0.0).to_numpy(np.float64)
    cov = {}
    for c in covariate_cols or []:
        if c in df.columns:
            w = df.pivot_table(index="series_id", columns="ds", values=c, aggfunc="mean")
            cov[c] = w.reindex(index=ids, columns=index).to_numpy(np.float64)
    return Panel(freq, ids, index, y, cov, start, tz)


def load_signal(path: str | Path, panel: Panel) -> np.ndarray:
    """A covariate feed (SIGNALS.md: ``[series_id,] ds, value``) on the panel's grid, NaN = missing.

    Rows without ``series_id`` (or with ``*``) apply to every series.
    """
    df = pd.read_csv(path)
    df["ds"] = parse_times(df["ds"], panel.freq, panel.tz)
    out = np.full(panel.y.shape, np.nan)
    pos = {t: i for i, t in enumerate(panel.index)}
    sid = {s: i for i, s in enumerate(panel.ids)}
    if "series_id" not in df.columns:
        df["series_id"] = "*"
    for s, t, v in zip(df["series_id"].astype(str), df["ds"], df["value"]):
        ti = pos.get(t)
        if ti is None:
            continue
        if s in ("*", "", "nan"):
            out[:, ti] = v
        elif s in sid:
            out[sid[s], ti] = v
    return out


def load_events(path: str | Path | None, panel: Panel) -> tuple[np.ndarray, bool]:
    """Event channels ``[S, T, 3]`` (holiday, closed, event) from an event calendar.

    An entry covers whole days ``ds_start .. ds_end`` (inclusive). ``scope`` is
    ``*`` (all series), an exact series id, or a prefix ending in ``*``
    (``UK/*``). The channel value is the largest ``intensity`` of the
    entries covering the period times the fraction of the period's days
    covered (for hourly and daily periods: the intensity). ``kind`` values
    ``holiday`` and ``closed`` have their own channels; any other kind goes
    to ``event``. Returns (channels, feed_present).
    """
    ev = np.zeros(panel.y.shape + (len(EVENT_CHANNELS),))
    if path is None:
        return ev, False
    df = pd.read_csv(path)
    days_per = {"H": None, "D": None, "W": 7, "M": None}[panel.freq]
    idx = panel.local  # an hour's day is its local date
    for r in df.itertuples(index=False):
        start = pd.Timestamp(r.ds_start).normalize()
        end = pd.Timestamp(r.ds_end).normalize() + pd.Timedelta(days=1)  # exclusive
        ch = EVENT_CHANNELS.index(r.kind) if r.kind in EVENT_CHANNELS else 2
        scope = str(r.scope)
        if scope == "*":
            rows = np.arange(len(panel.ids))
        elif scope.endswith("*"):
            rows = np.array([i for i, s in enumerate(panel.ids) if s.startswith(scope[:-1])], dtype=int)
        else:
            rows = np.array([i for i, s in enumerate(panel.ids) if s == scope], dtype=int)
        if rows.size == 0:
            continue
        if panel.freq in ("H", "D"):
            day = idx.normalize()
            frac = ((day >= start) & (day < end)).astype(float)
        else:
            p_start = idx
            p_end = idx + (pd.Timedelta(days=days_per) if days_per else pd.offsets.MonthBegin(1))
            lo = np.maximum(p_start.values, start.to_datetime64())
            hi = np.minimum(p_end.values, end.to_datetime64())
            covered = np.clip((hi - lo) / np.timedelta64(1, "D"), 0, None)
            frac = covered / ((p_end - p_start) / pd.Timedelta(days=1)).to_numpy()
        val = float(r.intensity) * frac
        ev[rows, :, ch] = np.maximum(ev[rows, :, ch], val[None, :])
    return ev, True


# ---------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------

def calendar_names(freq: str) -> list[str]:
    base = {"H": ["hour_sin", "hour_cos", "dow_sin", "dow_cos"], "D": ["dow_sin", "dow_cos"],
            "W": [], "M": []}[freq]
    return base + ["doy_sin", "doy_cos"]


def calendar(index: pd.DatetimeIndex, freq: str) -> np.ndarray:
    """Calendar encodings ``[T, C]`` in the order of ``calendar_names``, of *local* period starts
    (``Panel.local``).

    hour = hour of day 0..23; dow = day of week, Monday = 0; doy = day of year
    1..366 of the period's first day. Each x becomes sin(2πx/P), cos(2πx/P)
    with P = 24, 7, 365.25 (doy uses doy - 1).
    """
    cols = []
    if freq == "H":
        h = index.hour.to_numpy(float)
        cols += [np.sin(2 * np.pi * h / 24), np.cos(2 * np.pi * h / 24)]
    if freq in ("H", "D"):
        d = index.dayofweek.to_numpy(float)
        cols += [np.sin(2 * np.pi * d / 7), np.cos(2 * np.pi * d / 7)]
    doy = index.dayofyear.to_numpy(float) - 1
    cols += [np.sin(2 * np.pi * doy / 365.25), np.cos(2 * np.pi * doy / 365.25)]
    return np.stack(cols, axis=-1)


@dataclass
class FeatureSpec:
    """How raw history becomes the model's input tensors. Serialised into the sidecar."""

    freq: str
    context: int
    horizon: int
    periods: list[int]
    scale_window: int
    aggregates: list[tuple[int, int]]
    quantiles: list[float] = field(default_factory=lambda: list(QUANTILES))
    covariates: list[str] = field(default_factory=lambda: list(COVARIATES))

    @staticmethod
    def default(freq: str, **over) -> "FeatureSpec":
        f = FREQS[freq]
        kw = dict(freq=freq, context=f["context"], horizon=f["horizon"], periods=list(f["periods"]),
                  scale_window=f["scale_window"], aggregates=[tuple(a) for a in f["aggregates"]])
        kw.update({k: v for k, v in over.items() if v is not None})
        return FeatureSpec(**kw)

    # --- feature names, in tensor order -----------------------------------
    def past_names(self) -> list[str]:
        return (["y"] + [f"y_lag{p}" for p in self.periods] + calendar_names(self.freq)
                + EVENT_CHANNELS + ["events_known"]
                + [n for c in self.covariates for n in (c, f"{c}_known")] + ["log_scale"])

    def future_names(self) -> list[str]:
        return ([f"y_snaive{p}" for p in self.periods] + calendar_names(self.freq)
                + EVENT_CHANNELS + ["events_known", "step"])

    @property
    def history_needed(self) -> int:
        """Raw observations needed before and including the origin."""
        return max(self.context + max(self.periods, default=0), self.scale_window)

    @property
    def min_origin(self) -> int:
        return self.history_needed - 1

    # --- the builder --------------------------------------------------------
    def build(self, y: np.ndarray, cal: np.ndarray, ev: np.ndarray, ev_known: np.ndarray,
              cov: np.ndarray, cov_known: np.ndarray, series: np.ndarray, origin: np.ndarray):
        """Input tensors for forecasts made at the end of period ``origin``.

        y [S, T] raw demand; cal [T_all, C] calendar for every period incl. the
        horizon beyond T; ev [S, T_all, 3] event channels; ev_known [B] 0/1;
        cov [S, T, NC] covariate values (NaN = missing); cov_known [B, NC] 0/1
        (0 forces a feed to "missing"); series [B], origin [B] indices with
        origin >= min_origin.

        Returns past [B, L, Fp], future [B, K, Ff], scale [B, 1] (float32).
        """
        L, K = self.context, self.horizon
        B = len(series)
        o = origin[:, None]
        s = series[:, None]
        scale = 1.0 + y[s, o - np.arange(self.scale_window)[None, :]].mean(axis=1)  # [B]
        ls = scale[:, None]
        tr = lambda v: np.log1p(v / ls)  # noqa: E731  the demand transform
        pt = o - (L - 1) + np.arange(L)[None, :]  # [B, L] past periods, oldest first
        cols = [tr(y[s, pt])]
        for p in self.periods:
            cols.append(tr(y[s, pt - p]))
        past = [np.stack(cols, -1), cal[pt]]
        evk = ev_known.astype(float)[:, None, None]
        past.append(ev[s, pt] * evk)
        past.append(np.broadcast_to(evk, (B, L, 1)))
        for j in range(len(self.covariates)):
            v = cov[s, pt, j] if cov.shape[-1] > j else np.full((B, L), np.nan)
            known = (~np.isnan(v)) & (cov_known[:, j:j + 1] > 0)
            vz = np.where(known, np.maximum(np.nan_to_num(v), 0.0), 0.0)
            mean = vz.sum(1, keepdims=True) / np.maximum(known.sum(1, keepdims=True), 1)
            vv = np.where(known, np.log1p(vz / (1.0 + mean)), 0.0)
            past.append(np.stack([vv, known.astype(float)], -1))
        past.append(np.broadcast_to(np.log1p(scale)[:, None, None], (B, L, 1)))
        past = np.concatenate(past, -1)

        k = np.arange(1, K + 1)[None, :]
        ft = o + k  # [B, K]
        fut = []
        for p in self.periods:
            src = o + k - p * np.ceil(k / p).astype(int)  # most recent same-phase period <= origin
            fut.append(tr(y[s, src])[..., None])
        fut.append(cal[ft])
        fut.append(ev[s, ft] * evk)
        fut.append(np.broadcast_to(evk, (B, K, 1)))
        fut.append(np.broadcast_to((k / K)[..., None], (B, K, 1)))
        future = np.concatenate(fut, -1)
        return past.astype(np.float32), future.astype(np.float32), scale[:, None].astype(np.float32)

    def targets(self, y: np.ndarray, series: np.ndarray, origin: np.ndarray, scale: np.ndarray,
                limit: int | None = None):
        """Transformed targets: steps [B, K], aggregates [B, A], and their masks.

        Only periods before ``limit`` (default: the end of ``y``) count: a step
        mask is 1 when its period is before it, an aggregate mask when the
        aggregate's whole window is.
        """
        limit = y.shape[1] if limit is None else min(limit, y.shape[1])
        tk = origin[:, None] + np.arange(1, self.horizon + 1)[None, :]
        ok = tk < limit
        yy = np.where(ok, y[series[:, None], np.minimum(tk, y.shape[1] - 1)], 0.0)
        sc = scale.reshape(-1, 1)
        steps = np.log1p(yy / sc)
        aggs = np.stack([np.log1p(yy[:, a:a + n].sum(1) / (sc[:, 0] * n)) for a, n in self.aggregates], -1)
        amask = np.stack([ok[:, a + n - 1] for a, n in self.aggregates], -1)
        return (steps.astype(np.float32), aggs.astype(np.float32), ok.astype(np.float32),
                amask.astype(np.float32))

    def describe(self) -> dict:
        """The feature contract, written into the sidecar JSON."""
        L, K = self.context, self.horizon
        unit = {"H": "hour", "D": "day", "W": "week (Monday-based)", "M": "calendar month"}[self.freq]
        tr = "log1p(v / scale)"
        past = {"y": f"demand of period t, transformed {tr}"}
        for p in self.periods:
            past[f"y_lag{p}"] = f"demand of period t-{p}, transformed {tr}"
        fut = {}
        for p in self.periods:
            fut[f"y_snaive{p}"] = (f"demand of the most recent period with the same phase mod {p} at or before the "
                                   f"origin: period origin + k - {p}*ceil(k/{p}), transformed {tr}")
        cal = {
            "hour_sin": "sin(2*pi*hour/24), hour = hour of day 0..23 of the period start",
            "hour_cos": "cos(2*pi*hour/24)",
            "dow_sin": "sin(2*pi*dow/7), dow = day of week of the period start, Monday = 0",
            "dow_cos": "cos(2*pi*dow/7)",
            "doy_sin": "sin(2*pi*(doy-1)/365.25), doy = day of year 1..366 of the period start",
            "doy_cos": "cos(2*pi*(doy-1)/365.25)",
        }
        evd = {
            "holiday": "event calendar, kind=holiday: max intensity of entries covering the period "
                       "(W/M: times the fraction of its days covered); 0 when the feed is missing",
            "closed": "event calendar, kind=closed: as holiday",
            "event": "event calendar, any other kind: as holiday",
            "events_known": "1 when the event feed is loaded and current, else 0 (then the three event "
                            "channels are 0 too)",
        }
        covd = {}
        for c in self.covariates:
            covd[c] = (f"covariate feed '{c}' at period t: log1p(max(v,0) / (1 + m)), m = mean of max(v,0) over the "
                       f"known values of this feed in the context window; 0 when missing")
            covd[f"{c}_known"] = f"1 when '{c}' has a value for period t, else 0"
        past.update({n: cal[n] for n in calendar_names(self.freq)})
        past.update(evd)
        past.update(covd)
        past["log_scale"] = "log1p(scale), the same value at every step"
        fut.update({n: cal[n] for n in calendar_names(self.freq)})
        fut.update(evd)
        fut["step"] = f"k / {K} for the k-th future period, k = 1..{K}"
        return {
            "frequency": self.freq,
            "period": unit,
            "context_length": L,
            "horizon": K,
            "seasonal_periods": self.periods,
            "history_needed": self.history_needed,
            "scale": (f"scale = 1 + mean(y over the {self.scale_window} periods ending at the origin, "
                      f"origin included); y is raw demand per period (request/line counts)"),
            "short_history": (f"a series with fewer than {self.history_needed} periods of history is padded "
                              f"with 0 demand before its first period (training used only origins with full "
                              f"history after each series' first observation)"),
            "batching": "stack any number of series along the batch axis; rows are independent",
            "demand_transform": tr,
            "past_features": [{"name": n, "definition": past[n]} for n in self.past_names()],
            "past_time_order": f"past[:, i, :] describes period origin - {L - 1} + i (i = {L - 1} is the origin)",
            "future_features": [{"name": n, "definition": fut[n]} for n in self.future_names()],
            "future_time_order": "future[:, k-1, :] describes period origin + k",
            "aggregates": [{"start_step": a, "length": n,
                            "definition": f"total demand of periods origin+{a + 1} .. origin+{a + n}"}
                           for a, n in self.aggregates],
            "quantiles": self.quantiles,
        }

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["aggregates"] = [list(a) for a in self.aggregates]
        return d

    @staticmethod
    def from_json(d: dict) -> "FeatureSpec":
        d = dict(d)
        d["aggregates"] = [tuple(a) for a in d["aggregates"]]
        return FeatureSpec(**d)


@dataclass
class Prepared:
    """A panel with every per-period input precomputed for fast batch building."""

    panel: Panel
    spec: FeatureSpec
    cal: np.ndarray  # [T + K, C]
    ev: np.ndarray  # [S, T + K, 3]
    ev_present: bool
    cov: np.ndarray  # [S, T, NC]

    @staticmethod
    def make(panel: Panel, spec: FeatureSpec, events: str | Path | None,
             signals: dict[str, str] | None = None) -> "Prepared":
        K = spec.horizon
        step = pd.Timedelta(days=7) if panel.freq == "W" else None
        if step is not None:
            full = pd.date_range(panel.index[0], periods=len(panel.index) + K, freq="7D")
        else:
            full = pd.date_range(panel.index[0], periods=len(panel.index) + K, freq=FREQS[panel.freq]["alias"])
        ext = Panel(panel.freq, panel.ids, full, np.zeros((len(panel.ids), len(full))), tz=panel.tz)
        ev, present = load_events(events, ext)
        cov = np.full(panel.y.shape + (len(spec.covariates),), np.nan)
        for j, c in enumerate(spec.covariates):
            if c in panel.cov:
                cov[:, :, j] = panel.cov[c]
            if signals and c in signals:
                v = load_signal(signals[c], panel)
                cov[:, :, j] = np.where(np.isnan(v), cov[:, :, j], v)
        return Prepared(panel, spec, calendar(ext.local, panel.freq), ev, present, cov)

    def inputs(self, series: np.ndarray, origin: np.ndarray, drop_events: np.ndarray | None = None,
               drop_cov: np.ndarray | None = None):
        B = len(series)
        evk = np.full(B, 1.0 if self.ev_present else 0.0)
        if drop_events is not None:
            evk = evk * (1 - drop_events)
        ck = np.ones((B, len(self.spec.covariates)))
        if drop_cov is not None:
            ck = ck * (1 - drop_cov)
        return self.spec.build(self.panel.y, self.cal, self.ev, evk, self.cov, ck, series, origin)


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------

def pinball(y: np.ndarray, q: np.ndarray, levels: list[float]) -> np.ndarray:
    """Quantile loss per level: y [...], q [..., Q] -> [..., Q]."""
    lv = np.asarray(levels)
    d = y[..., None] - q
    return np.maximum(lv * d, (lv - 1) * d)


def metric_table(y: np.ndarray, q: np.ndarray, levels: list[float], scale_mase: np.ndarray,
                 mask: np.ndarray) -> dict:
    """Metrics over the cells where ``mask`` is true.

    y [S, N] actuals, q [S, N, Q] quantile forecasts (must contain 0.5 and,
    for the intervals, 0.1/0.9 and 0.01/0.99), scale_mase [S] in-sample
    seasonal-naive MAE. MASE is the mean over series of MAE(p50)/scale; wQL is
    the mean over the 2.5/10/50/90/97.5 % levels of 2*sum(pinball)/sum(|y|);
    sMAPE is the mean of 2|y-p50|/(|y|+|p50|) with 0/0 counted as 0.
    """
    li = {round(l, 4): i for i, l in enumerate(levels)}
    med = q[..., li[0.5]]
    m = mask.astype(bool)
    err = np.abs(y - med)
    per_series = np.array([err[s][m[s]].mean() / scale_mase[s] for s in range(y.shape[0]) if m[s].any()])
    wql_levels = [0.025, 0.1, 0.5, 0.9, 0.975]
    denom = np.abs(y[m]).sum()
    wql = np.mean([2 * pinball(y[m], q[m][:, [li[l]]], [l]).sum() / denom for l in wql_levels])
    den = np.abs(y) + np.abs(med)
    sm = np.where(den > 0, 2 * err / np.where(den > 0, den, 1), 0.0)[m].mean()
    cov80 = ((y >= q[..., li[0.1]]) & (y <= q[..., li[0.9]]))[m].mean()
    cov98 = ((y >= q[..., li[0.01]]) & (y <= q[..., li[0.99]]))[m].mean()
    return {"MASE": float(per_series.mean()), "wQL": float(wql), "sMAPE": float(sm),
            "cov80": float(cov80), "cov98": float(cov98), "n": int(m.sum())}


def seasonal_mae(y: np.ndarray, m: int, mask: np.ndarray | None = None) -> np.ndarray:
    """In-sample seasonal-naive MAE per series (over cells where mask is true)."""
    e = np.abs(y[:, m:] - y[:, :-m])
    if mask is not None:
        mm = mask[:, m:].astype(bool)
        out = np.array([e[s][mm[s]].mean() for s in range(y.shape[0])])
    else:
        out = e.mean(1)
    return np.where(out > 0, out, 1.0)


def open_hours_mask(index: pd.DatetimeIndex, spec: str) -> np.ndarray:
    """``"all"`` or ``"Sun-Fri:08-17"`` (days of week, inclusive hour range) -> bool [T]."""
    if spec == "all":
        return np.ones(len(index), bool)
    days, hours = spec.split(":")
    h0, h1 = (int(x) for x in hours.split("-"))
    return open_days_mask(index, spec) & (index.hour >= h0) & (index.hour <= h1)


def open_days_mask(index: pd.DatetimeIndex, spec: str) -> np.ndarray:
    """The trading days of an open-hours spec (``"Sun-Fri:08-17"`` -> Sunday .. Friday), every hour of them."""
    if spec == "all":
        return np.ones(len(index), bool)
    days = spec.split(":")[0]
    names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    d0, d1 = (names.index(x.strip().lower()[:3]) for x in days.split("-"))
    allowed = set()
    d = d0
    while True:
        allowed.add(d)
        if d == d1:
            break
        d = (d + 1) % 7
    return np.isin(index.dayofweek, list(allowed))


def dump_json(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")


def set_threads() -> None:
    """Keep XLA modest: the machine is shared."""
    import os

    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=2")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def nan_guard(x: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(x).all():
        raise FloatingPointError(f"non-finite values in {what}")
    return x

