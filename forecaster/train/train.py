#!/usr/bin/env python3
"""Train the shardcast forecaster on a long-format panel and export it to ONNX.

    python forecaster/train/train.py --panel data.csv --freq H --name my_hourly

The panel is ``series_id, ds, y`` (column names settable) plus optional
covariate columns; ``--events`` and ``--signal NAME=FILE`` add the feeds of
SIGNALS.md. Data after ``--cutoff`` (default: the last ``--test-days`` days)
is never seen: it is what ``evaluate.py`` scores. The ``--val-days`` before
the cutoff select the training step (early stopping) and calibrate the
quantiles; they are not trained on.

Writes ``<out-dir>/<name>.onnx`` (the graph), ``<name>.json`` (the contract
for the Rust runtime), ``<name>.parity.json`` (inputs and expected outputs
for the parity tests) and ``<name>.weights.npz`` (the JAX weights, which the
parity test runs beside ONNX Runtime). ``evaluate.py`` scores the ONNX file.

Reproducible: the same flags and data give the same weights (seeded numpy
batch sampling, seeded JAX init, XLA CPU on fixed threads).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (FREQS, QUANTILES, FeatureSpec, Prepared, dump_json, load_panel,  # noqa: E402
                    open_hours_mask, set_threads)

set_threads()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pandas as pd  # noqa: E402

import export_onnx  # noqa: E402
import model as M  # noqa: E402

REPO = HERE.parent.parent


# default held-out test and validation windows, in periods of the frequency
TEST_PERIODS = {"H": 28 * 24, "D": 28, "W": 13, "M": 12}
VAL_PERIODS = {"H": 28 * 24, "D": 28, "W": 13, "M": 12}


def period_offset(freq: str, days: int, flag: str = "--test-days") -> int:
    """Days as a number of periods; months have no fixed length in days, so M needs periods."""
    if freq == "M":
        raise SystemExit(f"{flag} cannot say how many months: use {flag.replace('days', 'periods')} with --freq M")
    if freq == "W" and days % 7:
        raise SystemExit(f"{flag} {days} is not whole weeks: use {flag.replace('days', 'periods')} with --freq W")
    return {"H": days * 24, "D": days, "W": days // 7}[freq]


def window_periods(args, which: str) -> int:
    """--test-periods/--val-periods, else --test-days/--val-days, else the frequency's default."""
    per, days = getattr(args, f"{which}_periods"), getattr(args, f"{which}_days")
    if per is not None:
        if per < 0:
            raise SystemExit(f"--{which}-periods must be >= 0")
        return per
    if days is not None:
        return period_offset(args.freq, days, f"--{which}-days")
    return (TEST_PERIODS if which == "test" else VAL_PERIODS)[args.freq]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--panel", required=True, help="long-format CSV(.gz): series_id, ds, y[, covariates]")
    ap.add_argument("--freq", required=True, choices=list(FREQS))
    ap.add_argument("--id-col", default="series_id")
    ap.add_argument("--time-col", default="ds")
    ap.add_argument("--target-col", default="y")
    ap.add_argument("--covariate-cols", default="", help="comma-separated panel columns that are covariate feeds")
    ap.add_argument("--covariates", default=",".join(["web_traffic", "sentiment"]),
                    help="covariate channels of the model (each gets a value and a known flag)")
    ap.add_argument("--events", default=None, help="event calendar CSV (SIGNALS.md)")
    ap.add_argument("--timezone", default="UTC", help="IANA time zone of an hourly panel's naive timestamps (its store's wall clock), e.g. Europe/London; daylight saving included")
    ap.add_argument("--signal", action="append", default=[], help="NAME=FILE covariate feed (SIGNALS.md)")
    ap.add_argument("--context", type=int, default=None)
    ap.add_argument("--horizon", type=int, default=None)
    ap.add_argument("--periods", default=None, help="comma-separated seasonal periods (lag channels)")
    ap.add_argument("--ar-lags", type=int, default=None,
                    help="linear autoregressive highway over the last N values of the past window and each "
                         "step's seasonal-naive channels (0: none; default 24 for an hourly model, kept only when "
                         "it lowers the validation loss, --highway-select; none at other frequencies: on a small "
                         "monthly panel a trained one overfit, eval_notes.md)")
    ap.add_argument("--ar-channels", choices=["y", "seasonal"], default="seasonal",
                    help="what the highway reads at the last --ar-lags positions of the past window: the y channel "
                         "('y'), or also its seasonal lag channels y_lag{p} ('seasonal': then a step can be "
                         "persistence plus the change of the seasonal profile, y[t] + y[t+1-p] - y[t-p])")
    ap.add_argument("--highway-init", choices=["ridge", "zero"], default="ridge",
                    help="the highway's starting weights: the ridge regression of the targets on its inputs "
                         "over training origins ('ridge'), or zero")
    ap.add_argument("--highway-ridge", type=float, default=1e-5,
                    help="ridge penalty of the highway's starting fit, relative to the mean diagonal of X'WX")
    ap.add_argument("--highway-select", choices=["off", "val"], default="val",
                    help="'val': also train the members without the highway and keep whichever has the lower "
                         "validation loss (twice the training time; a linear path that wins on a smooth load can "
                         "cost on intermittent counts)")
    ap.add_argument("--highway-train", choices=["on", "off"], default="off",
                    help="'off' keeps the highway at its ridge start: the network learns what the linear forecast "
                         "misses (gradient steps on nearly collinear lag weights undo a fit whose weights must "
                         "cancel to within a fraction of a percent)")
    ap.add_argument("--year-cycle", choices=["auto", "on", "off"], default="auto",
                    help="day-of-year channels as inputs: 'auto' only when the training targets span a whole "
                         "year (a cycle never seen once cannot be learned; its values in validation and test "
                         "would be extrapolation); 'off' fixes their weights at zero")
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--head", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6000, help="most training steps (early stopping may end sooner)")
    ap.add_argument("--patience", type=int, default=1500,
                    help="stop when the validation loss has not improved for this many steps (0: never)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--members", type=int, default=1, help="ensemble size (seeds seed..seed+n-1)")
    ap.add_argument("--test-periods", type=int, default=None,
                    help="held-out periods at the end (default: 28 days for H and D, 13 weeks, 12 months)")
    ap.add_argument("--test-days", type=int, default=None, help="the same in days (H, D, W only)")
    ap.add_argument("--cutoff", default=None, help="first held-out period (default: the last --test-periods)")
    ap.add_argument("--val-periods", type=int, default=None,
                    help="validation periods before the cutoff (default as --test-periods)")
    ap.add_argument("--val-days", type=int, default=None, help="the same in days (H, D, W only)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--drop-events", type=float, default=0.1, help="P(event feed hidden) per training sample")
    ap.add_argument("--drop-cov", type=float, default=0.2, help="P(a covariate feed hidden) per training sample")
    ap.add_argument("--weight-power", type=float, default=0.5,
                    help="sample weight = scale**p (0: every series equal, 1: weights as raw demand)")
    ap.add_argument("--recent-boost", type=float, default=0.0,
                    help="sample origins with weight exp(boost * position), position 0..1 over the training span")
    ap.add_argument("--open-hours", "--calibrate-hours", dest="open_hours", default="all",
                    help="hourly cells used to calibrate (and, in the backtest, score): 'all' or e.g. "
                         "'Sun-Fri:08-17' (the same flag and default as evaluate.py/backtest.py)")
    ap.add_argument("--no-calibrate", action="store_true")
    ap.add_argument("--day-head-origins", choices=["day-start", "all"], default="day-start",
                    help="hourly: origins that calibrate a whole-day total head (e.g. the 24-hour head that "
                         "answers next-day demand): 'day-start' (the hour before local midnight, where a daily "
                         "forecast is read) or 'all' (every validation origin)")
    ap.add_argument("--refit", action="store_true",
                    help="after validation, retrain each member up to its best step on targets up to the cutoff")
    ap.add_argument("--name", required=True)
    ap.add_argument("--out-dir", default=str(REPO / "forecaster" / "models"))
    ap.add_argument("--data-note", default="", help="free text for the sidecar's 'trained_on'")
    return ap.parse_args(argv)


PERIODS_PER_YEAR = {"H": 8766, "D": 365, "W": 52, "M": 12}
YEAR_CHANNELS = ("doy_sin", "doy_cos")


def year_cycle_on(args, spec: FeatureSpec, panel, limit: int) -> bool:
    """Whether the day-of-year channels are inputs, for training on targets before period ``limit``."""
    mode = getattr(args, "year_cycle", "auto")
    if mode != "auto":
        return mode == "on"
    span = limit - int(min(panel.start)) - spec.min_origin  # target periods the longest series trains on
    return span >= PERIODS_PER_YEAR[spec.freq]


def input_mask(spec: FeatureSpec, params: dict, frozen: tuple[str, ...]) -> dict:
    """1 for every weight, 0 for those reading the ``frozen`` channels (kept at zero through training)."""
    m = {k: np.ones(np.shape(v), np.float32) for k, v in params.items()}
    past, fut = spec.past_names(), spec.future_names()
    for name in frozen:
        if name in past:
            m["W"][:, past.index(name)] = 0.0
        if name in fut:
            for k in ("s_f", "s_lin", "a_f", "a_lin"):
                m[k][fut.index(name), :] = 0.0
    return {k: jnp.asarray(v) for k, v in m.items()}


def make_loss(spec: FeatureSpec):
    lv = jnp.asarray(spec.quantiles, jnp.float32)

    def pin(y, z):
        d = y[..., None] - z
        return jnp.maximum(lv * d, (lv - 1) * d).mean(-1)

    def loss(params, past, future, ys, ya, ms, ma, w):
        zs, za = M.forward_one(params, past, future, spec.aggregates)
        ls = (pin(ys, zs) * ms).sum(-1) / jnp.maximum(ms.sum(-1), 1.0)
        la = (pin(ya, za) * ma).sum(-1) / jnp.maximum(ma.sum(-1), 1.0)
        return ((ls + 0.5 * la) * w).sum() / w.sum()

    return loss


def train_member(prep: Prepared, spec: FeatureSpec, args, seed: int, limit: int, val,
                 stop_at: int | None = None, frozen: tuple[str, ...] | None = None) -> tuple[dict, dict]:
    """Train one member on targets before period ``limit``; returns (best params, log).

    Origins run up to ``limit - 1``: near the limit only the first steps of
    the horizon have targets (masked loss), so the most recent data trains
    the short horizons. ``stop_at`` ends training early (the refit replays
    the validation run's schedule up to its best step). ``frozen`` input channels have their weights
    fixed at zero (default: the year cycle's when the targets before ``limit`` span less than a year)."""
    train_last = limit - 1
    rng = np.random.default_rng(seed)
    S = len(prep.panel.ids)
    Fp, Ff = len(spec.past_names()), len(spec.future_names())
    params = M.init_params(jax.random.PRNGKey(seed), Fp, Ff, len(spec.aggregates), args.hidden, args.head,
                           len(spec.quantiles), horizon=spec.horizon, ar_lags=ar_lags(args, spec),
                           n_seasonal=len(spec.periods), ar_seasonal=ar_seasonal(args))
    sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(200, args.steps // 10), args.steps, args.lr * 0.05)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=args.weight_decay))
    if frozen is None:
        frozen = () if year_cycle_on(args, spec, prep.panel, limit) else YEAR_CHANNELS
    mask = input_mask(spec, params, frozen)
    params = jax.tree_util.tree_map(lambda v, m: v * m, params, mask)
    state = opt.init(params)
    loss = make_loss(spec)
    hold = highway_held(args)  # 1 for the weights training moves, 0 for the highway's when it is held
    moves = {k: jnp.float32(0.0 if hold and k.startswith("hw_") else 1.0) for k in params}

    @jax.jit
    def step(params, state, past, future, ys, ya, ms, ma, w):
        l, g = jax.value_and_grad(loss)(params, past, future, ys, ya, ms, ma, w)
        up, state = opt.update(g, state, params)
        up = {k: u * moves[k] for k, u in up.items()}
        params = jax.tree_util.tree_map(lambda v, m: v * m, optax.apply_updates(params, up), mask)
        return params, state, l

    eval_loss = jax.jit(loss)
    # a series' origins start once its window lies after its first observation
    lo = np.maximum(spec.min_origin, prep.panel.start + spec.min_origin)
    ok = lo <= train_last
    if not ok.any():
        raise SystemExit("no series has enough history before the validation window: lower --context or "
                         "--val-periods/--test-periods")
    usable = np.flatnonzero(ok)
    n_orig = (train_last - lo[usable] + 1).astype(float)
    sp = n_orig / n_orig.sum()  # every (series, origin) pair equally likely
    if "hw_p" in params and getattr(args, "highway_init", "ridge") == "ridge":
        params = ridge_highway(params, prep, spec, args, seed, limit, lo, usable, sp)
    best = (np.inf, params, 0)
    log = []
    t0 = time.time()
    run = 0.0
    last = args.steps if stop_at is None else stop_at
    patience = getattr(args, "patience", 0) or 0
    for it in range(1, last + 1):
        s = usable[rng.choice(len(usable), args.batch, p=sp)]
        u = rng.random(args.batch)
        if args.recent_boost > 0:  # more recent origins more often: position ~ exp(boost * x) on 0..1
            bst = args.recent_boost
            u = np.log1p(u * np.expm1(bst)) / bst
        o = np.minimum(lo[s] + np.floor(u * (train_last - lo[s] + 1)).astype(int), train_last)
        de = (rng.random(args.batch) < args.drop_events).astype(float)
        dc = (rng.random((args.batch, len(spec.covariates))) < args.drop_cov).astype(float)
        past, future, scale = prep.inputs(s, o, de, dc)
        ys, ya, ms, ma = spec.targets(prep.panel.y, s, o, scale, limit)
        w = (scale[:, 0] ** args.weight_power).astype(np.float32)
        params, state, l = step(params, state, past, future, ys, ya, ms, ma, w)
        run = 0.98 * run + 0.02 * float(l) if it > 1 else float(l)
        if val is not None and (it % args.eval_every == 0 or it == last):
            vl = float(eval_loss(params, *val))
            log.append({"step": it, "train_loss": round(run, 5), "val_loss": round(vl, 5)})
            print(f"  seed {seed} step {it:5d} train {run:.4f} val {vl:.4f} ({time.time() - t0:.0f}s)", flush=True)
            if vl < best[0]:
                best = (vl, params, it)
            elif patience and it - best[2] >= patience:
                print(f"  seed {seed}: early stop at {it}, best step {best[2]}", flush=True)
                break
    if val is None:
        best = (float("nan"), params, last)
    return jax.tree_util.tree_map(np.asarray, best[1]), {"best_step": best[2], "best_val_loss": best[0], "log": log}


def undertrained_warning(seed: int, log: dict) -> str | None:
    """A member whose validation loss was lowest at the first evaluation, and only rose after, is barely
    trained: the validation window disagrees with training about something the model learns early."""
    evals = log["log"]
    if len(evals) < 3 or log["best_step"] != evals[0]["step"]:
        return None
    return (f"seed {seed}: the validation loss was lowest at the first evaluation (step {log['best_step']}) and "
            f"did not improve over the {evals[-1]['step']} steps run, so the chosen model is barely trained; "
            "look for an input whose validation values training never saw (a calendar cycle longer than the "
            "training span: --year-cycle off) or a validation window in another regime (--val-periods)")


HIGHWAY_FIT_SAMPLES = 20000


def ridge_highway(params: dict, prep: Prepared, spec: FeatureSpec, args, seed: int, limit: int,
                  lo: np.ndarray, usable: np.ndarray, sp: np.ndarray) -> dict:
    """Start the highway at the weighted ridge regression of each step's (and aggregate's) transformed
    target on the highway's inputs over training origins, its bias set so that the initial network's median
    plus the highway is that regression: training starts from a linear autoregressive forecast and the
    network learns what it misses. The lag inputs are nearly collinear (neighbouring hours of a smooth
    series), a direction gradient descent from zero learns slowly; least squares does not care."""
    train_last = limit - 1
    counts = train_last - lo[usable] + 1
    if counts.sum() <= HIGHWAY_FIT_SAMPLES:  # every training origin once: a resample's fit would vary by seed
        s = np.repeat(usable, counts)
        o = np.concatenate([np.arange(lo[u], train_last + 1) for u in usable])
    else:
        rng = np.random.default_rng(seed + 7919)  # its own stream: the batch sampling is unchanged
        s = usable[rng.choice(len(usable), HIGHWAY_FIT_SAMPLES, p=sp)]
        o = np.minimum(lo[s] + np.floor(rng.random(len(s)) * (train_last - lo[s] + 1)).astype(int), train_last)
    n_s = len(s)
    past, future, scale = prep.inputs(s, o)
    ys, ya, ms, ma = spec.targets(prep.panel.y, s, o, scale, limit)
    w = (scale[:, 0] ** args.weight_power).astype(np.float64)
    n, P = params["hw_p"].shape[0], params["hw_s"].shape[1]
    last = past[:, -n:, 0].astype(np.float64)
    lags = M.highway_lags(params, past)
    if lags is not None:  # the seasonal lag channels' last n positions after the y channel's
        last = np.concatenate([last, np.asarray(lags, np.float64)], 1)
    nl = last.shape[1]
    mi = spec.quantiles.index(0.5)
    base = {k: v for k, v in params.items() if not k.startswith("hw_")}
    z0s, z0a = (np.asarray(z)[..., mi] for z in M.forward_one(base, past, future, spec.aggregates))

    def solve(X, y, m):
        ww = w * m
        if ww.sum() <= 0:
            return np.zeros(X.shape[1])
        Xw = X * ww[:, None]
        A = X.T @ Xw
        A += getattr(args, "highway_ridge", 1e-3) * np.trace(A) / len(A) * np.eye(len(A))
        return np.linalg.solve(A, Xw.T @ y)

    ones = np.ones((n_s, 1))
    out = {k: np.array(v, np.float32) for k, v in params.items() if k.startswith("hw_")}
    for k in range(spec.horizon):
        c = solve(np.concatenate([last, future[:, k, :P].astype(np.float64), ones], 1), ys[:, k], ms[:, k])
        out["hw_p"][:, k], out["hw_s"][k], out["hw_b"][k] = c[:n], c[nl:nl + P], c[-1] - np.average(z0s[:, k], weights=w)
        if "hw_l" in out:
            out["hw_l"][:, k] = c[n:nl]
    for j in range(len(spec.aggregates)):
        c = solve(np.concatenate([last, ones], 1), ya[:, j], ma[:, j])
        out["hw_pa"][:, j], out["hw_ba"][j] = c[:n], c[-1] - np.average(z0a[:, j], weights=w)
        if "hw_la" in out:
            out["hw_la"][:, j] = c[n:nl]
    return {**params, **{k: jnp.asarray(v) for k, v in out.items()}}


def val_set(prep: Prepared, spec: FeatureSpec, val_start: int, cutoff: int, mask_t: np.ndarray | None):
    """Validation tensors: every origin with some target in [val_start, cutoff)."""
    S = len(prep.panel.ids)
    K = spec.horizon
    origins = np.arange(max(spec.min_origin, val_start - K), cutoff - 1)
    ss, oo = np.meshgrid(np.arange(S), origins, indexing="ij")
    ss, oo = ss.ravel(), oo.ravel()
    keep = oo >= prep.panel.start[ss] + spec.min_origin
    if not keep.any():  # every series is young: score what there is (zero-padded history)
        keep = oo >= prep.panel.start[ss]
    ss, oo = ss[keep], oo[keep]
    past, future, scale = prep.inputs(ss, oo)
    yk = oo[:, None] + np.arange(1, K + 1)[None, :]
    valid = (yk >= val_start) & (yk < cutoff) & (yk >= prep.panel.start[ss][:, None])
    ys_raw = prep.panel.y[ss[:, None], np.minimum(yk, prep.panel.y.shape[1] - 1)]
    ys = np.log1p(ys_raw / scale).astype(np.float32)
    ag_valid = np.stack([(oo + a + 1 >= val_start) & (oo + a + n < cutoff) for a, n in spec.aggregates], -1)
    ya_raw = np.stack([ys_raw[:, a:a + n].sum(1) for a, n in spec.aggregates], -1)
    ya = np.log1p(ya_raw / (scale * np.array([n for _, n in spec.aggregates])[None, :])).astype(np.float32)
    cell_mask = valid & (mask_t[np.minimum(yk, len(mask_t) - 1)] if mask_t is not None else True)
    return dict(past=past, future=future, scale=scale, ys=ys, ya=ya, valid=valid, ag_valid=ag_valid,
                cell_mask=cell_mask, ys_raw=ys_raw, ya_raw=ya_raw, origins=oo)


def fit_calibration(z: np.ndarray, y: np.ndarray, mask: np.ndarray, levels: list[float], per_step: bool) -> np.ndarray:
    """Spread factors c [K or 1, Q]: z'_q = z50 + c (z_q - z50) so that val miss rates match the levels.

    For a level τ below the median the target is P(y < q) = τ, above it
    P(y > q) = 1 - τ (the two tails of the intervals); the median keeps c = 1.
    """
    mi = levels.index(0.5)
    grid = np.exp(np.linspace(np.log(0.3), np.log(4.0), 141))
    K, Q = z.shape[1], z.shape[2]
    groups = [[k] for k in range(K)] if per_step else [list(range(K))]
    out = np.ones((len(groups), Q), np.float32)
    for gi, ks in enumerate(groups):
        m = mask[:, ks]
        if m.sum() < 200:
            continue
        zz = z[:, ks][m]  # [N, Q]
        yy = y[:, ks][m]
        zm = zz[:, mi:mi + 1]
        for qi, tau in enumerate(levels):
            if qi == mi:
                continue
            cand = zm + grid[None, :] * (zz[:, qi:qi + 1] - zm)  # [N, G]
            miss = (yy[:, None] < cand).mean(0) if tau < 0.5 else (yy[:, None] > cand).mean(0)
            target = tau if tau < 0.5 else 1 - tau
            out[gi, qi] = grid[np.argmin(np.abs(miss - target))]
        # keep quantiles ordered: spread factors must not shrink moving away from the median
        for qi in range(mi + 2, Q):
            out[gi, qi] = max(out[gi, qi], out[gi, qi - 1])
        for qi in range(mi - 2, -1, -1):
            out[gi, qi] = max(out[gi, qi], out[gi, qi + 1])
    if not per_step:
        out = np.repeat(out, K, axis=0)
    return out


DAY_HEAD_MIN_CELLS = 200  # fit_calibration's own minimum: fewer day-start cells fall back to every origin


def agg_calibration_mask(args, spec: FeatureSpec, vs: dict, prep: Prepared, j: int) -> np.ndarray:
    """Validation cells [N, 1] that calibrate aggregate head ``j``.

    An hourly head that totals whole local days from the first step (the 24-hour head) answers the
    daily forecast, read at the origin whose first target hour starts a local day. Its miss rates at
    those origins differ from the mean over every hour of the day (a total that starts at 15:00 spans
    two trading days), so with ``--day-head-origins day-start`` it is calibrated on them alone."""
    a, n = spec.aggregates[j]
    mask = vs["ag_valid"][:, j:j + 1]
    if args.freq != "H" or getattr(args, "day_head_origins", "all") != "day-start" or a != 0 or n % 24:
        return mask
    local = prep.panel.local
    first = np.minimum(vs["origins"] + 1, len(local) - 1)
    day_start = (local.hour[first] == 0)[:, None]
    m = mask & day_start
    return m if m.sum() >= DAY_HEAD_MIN_CELLS else mask


AR_LAGS_DEFAULT = {"H": 24}  # the highway by default (chosen on validation, --highway-select): hourly only


def ar_lags(args, spec: FeatureSpec) -> int:
    """The highway's number of past values: --ar-lags (default: 24 for an hourly model, at most its context,
    else none; see the flag's help)."""
    n = getattr(args, "ar_lags", None)
    if n is None:
        return min(AR_LAGS_DEFAULT.get(spec.freq, 0), spec.context)
    if n < 0 or n > spec.context:
        raise SystemExit(f"--ar-lags {n}: must be 0 (no highway) .. the context ({spec.context}; --context)")
    return n


def highway_held(args) -> bool:
    """Whether the highway stays at its ridge start through training (--highway-train off)."""
    return getattr(args, "highway_train", "on") == "off" and getattr(args, "highway_init", "ridge") == "ridge"


def ar_seasonal(args) -> bool:
    """Whether the highway also reads the seasonal lag channels (--ar-channels seasonal)."""
    return getattr(args, "ar_channels", "y") == "seasonal"


def make_spec(args) -> FeatureSpec:
    cov_names = [c for c in args.covariates.split(",") if c]
    over = dict(context=args.context, horizon=args.horizon,
                periods=[int(p) for p in args.periods.split(",")] if args.periods is not None else None,
                covariates=cov_names, quantiles=list(QUANTILES))
    return FeatureSpec.default(args.freq, **over)


def fit(args, prep: Prepared, spec: FeatureSpec, cutoff: int, val_periods: int, quiet: bool = False):
    """Train on targets before period ``cutoff``: early stopping and calibration on the ``val_periods``
    before it, then (``--refit``) retrain up to the best step on every target before ``cutoff``.

    Returns (members, calib, trained) — ``trained`` is the sidecar's record of the run."""
    t_start = time.time()
    panel = prep.panel
    T = panel.y.shape[1]
    val_start = cutoff - val_periods
    K = spec.horizon
    train_last = val_start - 2  # origins up to here have at least one target before validation
    if train_last <= spec.min_origin + 1:
        raise SystemExit(f"not enough history: the model needs {spec.min_origin + 3} periods before the "
                         f"validation window, the panel has {val_start}; lower --test-periods/--val-periods "
                         f"or --context")
    first_origin = int(min(max(spec.min_origin, st + spec.min_origin) for st in panel.start))
    print(f"panel {len(panel.ids)} series x {T} {args.freq} periods; train origins "
          f"{panel.index[first_origin]} .. {panel.index[train_last]} (targets before validation), val targets "
          f"{panel.index[val_start]} .. {panel.index[cutoff - 1]}, held out from {panel.index[min(cutoff, T - 1)]}",
          flush=True)

    hours_mask = open_hours_mask(panel.local, args.open_hours) if args.freq == "H" else None
    val = None
    vs = None
    if val_periods > 0:
        vs = val_set(prep, spec, val_start, cutoff, hours_mask)
        w = (vs["scale"][:, 0] ** args.weight_power).astype(np.float32)
        # validation loss only over target cells inside the validation window
        val = (vs["past"], vs["future"], vs["ys"], vs["ya"], vs["valid"].astype(np.float32),
               vs["ag_valid"].astype(np.float32), w)

    year_cycle = year_cycle_on(args, spec, panel, val_start)
    frozen = () if year_cycle else YEAR_CHANNELS
    if not year_cycle:
        print("day-of-year channels off: the training targets span less than a year (--year-cycle)", flush=True)
    def train_all(a):
        out = [train_member(prep, spec, a, a.seed + m, val_start, val, frozen=frozen) for m in range(a.members)]
        return [p for p, _ in out], [lg for _, lg in out]

    members, logs = train_all(args)
    highway_choice = None
    if getattr(args, "highway_select", "off") == "val" and ar_lags(args, spec) > 0 and val is not None:
        # the same members without the highway; the lower mean validation loss is kept (and refitted)
        plain = argparse.Namespace(**{**vars(args), "ar_lags": 0})
        members0, logs0 = train_all(plain)
        with_hw = float(np.mean([lg["best_val_loss"] for lg in logs]))
        without = float(np.mean([lg["best_val_loss"] for lg in logs0]))
        highway_choice = {"val_loss_with": round(with_hw, 6), "val_loss_without": round(without, 6),
                          "kept": "highway" if with_hw < without else "none"}
        print(f"highway: validation loss {with_hw:.5f} with, {without:.5f} without; kept "
              f"{highway_choice['kept']} (--highway-select val)", flush=True)
        if without <= with_hw:
            args, members, logs = plain, members0, logs0
    warnings = [undertrained_warning(args.seed + m, lg) for m, lg in enumerate(logs)]
    warnings = [w for w in warnings if w]
    for w in warnings:
        print("WARNING:", w, flush=True)

    Q = len(spec.quantiles)
    calib = {"steps": np.ones((K, Q), np.float32), "aggs": np.ones((len(spec.aggregates), Q), np.float32)}
    if vs is not None and not args.no_calibrate:
        zs, za = M.forward(members, {"steps": np.ones(Q, np.float32), "aggs": np.ones(Q, np.float32)},
                           vs["past"], vs["future"], spec.aggregates, spec.quantiles.index(0.5))
        zs, za = np.asarray(zs), np.asarray(za)
        per_step = vs["cell_mask"].sum(0).min() >= 1000
        calib["steps"] = fit_calibration(zs, vs["ys"], vs["cell_mask"], spec.quantiles, per_step)
        calib["aggs"] = np.concatenate([fit_calibration(za[:, j:j + 1], vs["ya"][:, j:j + 1],
                                                        agg_calibration_mask(args, spec, vs, prep, j),
                                                        spec.quantiles, False)
                                        for j in range(len(spec.aggregates))], 0)
        print("calibration (steps, first/last):", np.round(calib["steps"][0], 2), np.round(calib["steps"][-1], 2))
        print("calibration (aggs):", np.round(calib["aggs"], 2))

    refit_until = None
    if args.refit and vs is not None:
        # same seeds and schedule, stopped at each member's best validation step, now also
        # trained on the validation window; the calibration fitted above is kept
        print("refit on targets up to the cutoff", flush=True)
        members = [train_member(prep, spec, args, args.seed + m, cutoff, None, stop_at=lg["best_step"],
                                frozen=frozen)[0]
                   for m, lg in enumerate(logs)]
        refit_until = str(panel.index[cutoff - 1])

    trained = {
        "date": dt.date.today().isoformat(),
        "panel": os.path.relpath(args.panel, REPO) if Path(args.panel).is_absolute() else args.panel,
        "data_note": args.data_note,
        "series": len(panel.ids),
        "first_period": str(panel.index[0]),
        "train_origins": [str(panel.index[first_origin]), str(panel.index[cutoff - 2 if refit_until else train_last])],
        "validation_targets": [str(panel.index[val_start]), str(panel.index[cutoff - 1])] if vs else None,
        "refit_on_targets_until": refit_until,
        "held_out_from": str(panel.index[cutoff]) if cutoff < T else None,
        "events": (os.path.relpath(args.events, REPO) if args.events and Path(args.events).is_absolute()
                   else args.events),
        "members": [{"seed": args.seed + m, "best_step": lg["best_step"], "best_val_loss": lg["best_val_loss"],
                     "steps_run": lg["log"][-1]["step"] if lg["log"] else None}
                    for m, lg in enumerate(logs)],
        "warnings": warnings,
        "hyper": {"ar_lags": ar_lags(args, spec), "ar_channels": getattr(args, "ar_channels", "y"),
                  "highway_init": args.highway_init, "highway_ridge": getattr(args, "highway_ridge", 1e-3),
                  "highway_train": "off" if highway_held(args) else "on", "year_cycle": year_cycle}
        | {k: getattr(args, k) for k in ("hidden", "head", "steps", "patience", "batch", "lr", "weight_decay",
                                          "drop_events", "drop_cov", "weight_power", "recent_boost", "refit",
                                          "day_head_origins")},
        "highway_choice": highway_choice,
        "train_seconds": round(time.time() - t_start, 1),
    }
    return members, calib, trained


def main(argv=None) -> None:
    args = parse_args(argv)
    t_start = time.time()
    spec = make_spec(args)
    panel = load_panel(args.panel, args.freq, args.id_col, args.time_col, args.target_col,
                       [c for c in args.covariate_cols.split(",") if c], tz=args.timezone)
    signals = dict(s.split("=", 1) for s in args.signal)
    prep = Prepared.make(panel, spec, args.events, signals)
    T = panel.y.shape[1]
    if args.cutoff:
        cutoff = panel.period_of_local(pd.Timestamp(args.cutoff))
    else:
        cutoff = T - window_periods(args, "test")
    members, calib, trained = fit(args, prep, spec, cutoff, window_periods(args, "val"))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_artifacts(out, args.name, spec, members, calib, trained, prep, cutoff)
    print(f"wrote {out / args.name}.onnx/.json/.parity.json in {time.time() - t_start:.0f}s")


def sidecar(name: str, spec: FeatureSpec, hidden: int, n_members: int, trained: dict, ar_lags: int = 0,
            ar_seasonal: bool = False) -> dict:
    K, Q, A = spec.horizon, len(spec.quantiles), len(spec.aggregates)
    Fp, Ff = len(spec.past_names()), len(spec.future_names())
    return {
        "name": name,
        "format": "shardcast-forecaster-model/1",
        "onnx": f"{name}.onnx",
        "opset": export_onnx.OPSET,
        "architecture": (f"{n_members} x (LSTM(hidden={hidden}) encoder over the past window + per-step and "
                         f"per-aggregate MLP quantile heads"
                         + (f" + a linear autoregressive highway over the last {ar_lags} values"
                            + (" of y and its seasonal lag channels" if ar_seasonal else "")
                            + " and the seasonal-naive channels" if ar_lags else "")
                         + "); members averaged in transformed space; "
                         f"quantile spread calibrated on validation data"),
        "inputs": [
            {"name": "past", "shape": ["batch", spec.context, Fp], "dtype": "float32",
             "features": "features.past_features, in order"},
            {"name": "future", "shape": ["batch", K, Ff], "dtype": "float32",
             "features": "features.future_features, in order"},
            {"name": "scale", "shape": ["batch", 1], "dtype": "float32", "definition": "features.scale"},
        ],
        "outputs": [
            {"name": "quantiles", "shape": ["batch", K, Q], "dtype": "float32",
             "definition": "demand quantiles of period origin+k (k = index+1), in demand units"},
            {"name": "agg_quantiles", "shape": ["batch", A, Q], "dtype": "float32",
             "definition": "quantiles of total demand over features.aggregates[j], in demand units"},
            {"name": "quantiles_transformed", "shape": ["batch", K, Q], "dtype": "float32",
             "definition": "the same in transformed space z (see inverse)"},
            {"name": "agg_quantiles_transformed", "shape": ["batch", A, Q], "dtype": "float32",
             "definition": "the same in transformed space z (see inverse)"},
        ],
        "inverse": {
            "steps": "quantiles = max(scale * (exp(min(z, 20)) - 1), 0)",
            "aggregates": "agg_quantiles = max(scale * length_j * (exp(min(z, 20)) - 1), 0)",
            "note": "done inside the graph; given for users of the *_transformed outputs",
        },
        "quantile_levels": spec.quantiles,
        "horizons": horizon_map(spec),
        "features": spec.describe(),
        "spec": spec.to_json(),
        "trained": trained,
    }


def horizon_map(spec: FeatureSpec) -> dict:
    f = spec.freq
    if f == "H":
        return {"1h": {"output": "quantiles", "index": 0},
                "1d": {"output": "agg_quantiles", "index": 0, "note": "total of the next 24 hours"},
                "next_24_hours_profile": {"output": "quantiles", "index": "0..23"}}
    if f == "D":
        out = {"1d": {"output": "quantiles", "index": 0}}
        for j, (a, n) in enumerate(spec.aggregates):
            if a == 0 and n == 7:
                out["1w"] = {"output": "agg_quantiles", "index": j, "note": "total of the next 7 days"}
            if a == 0 and n == 28:
                out["1mo"] = {"output": "agg_quantiles", "index": j,
                              "note": "total of the next 28 days (4 whole weeks: a month without weekday mix bias)"}
        out["weeks_1_to_4"] = {"output": "agg_quantiles",
                               "index": [j for j, (a, n) in enumerate(spec.aggregates) if n == 7]}
        return out
    return {"step1": {"output": "quantiles", "index": 0}}


def write_artifacts(out: Path, name: str, spec: FeatureSpec, members: list[dict], calib: dict, trained: dict,
                    prep: Prepared, cutoff: int) -> None:
    import onnx

    hidden = members[0]["R"].shape[1]
    meta = sidecar(name, spec, hidden, len(members), trained, M.ar_lags_of(members[0]), "hw_l" in members[0])
    doc = (f"shardcast forecaster '{name}': quantile forecasts of per-shard demand. "
           f"Contract: {name}.json. Trained on {trained.get('data_note') or trained.get('panel')}.")
    mp = export_onnx.build(members, calib, spec, name, doc)
    onnx.save(mp, out / f"{name}.onnx")
    # weights kept for the parity test and for evaluation of the JAX side
    np.savez_compressed(out / f"{name}.weights.npz",
                        **{f"m{m}.{k}": v for m, p in enumerate(members) for k, v in p.items()},
                        **{f"calib.{k}": v for k, v in calib.items()})
    dump_json(meta, out / f"{name}.json")
    import parity

    parity.write_fixture(out, name, spec, members, calib, prep, cutoff)


if __name__ == "__main__":
    main()
