"""The forecaster network in JAX: an LSTM encoder with MQ-RNN style quantile heads.

encoder  one LSTM layer over the past window [B, L, Fp]; its last hidden
         state h summarises the shard's recent demand. Gates are laid out
         in ONNX order (i, o, f, c) so the weights export as they are.
steps    for every future step k: relu(h·Wh + b1 + future_k·Wf)·W2 + future_k·Wlin
         + b2 (an MLP plus a linear skip from the known-future features) — one
         Q-vector of raw outputs per step (shared weights across steps; the
         step and calendar features tell steps apart).
aggs     the same shape of head for aggregate windows (next day / week /
         month totals) fed with the mean of the window's future features and
         a learned per-window bias.
quantile non-crossing by construction: z_0 = raw_0, z_i = z_0 + Σ |raw_1..i| (abs, not
         softplus: same ordering guarantee, and ~10x cheaper in ONNX Runtime).
highway  (optional, LSTNet style) a linear autoregressive path added to every
         quantile of every step: the last ``ar_lags`` values of the past
         window's y channel times per-step weights, plus per-step weights on
         the step's seasonal-naive channels (y_snaive{p}) and a per-step bias;
         the aggregate heads get the same lag term with their own weights.
         With ``ar_seasonal`` it also reads the last ``ar_lags`` positions of
         the seasonal lag channels (y_lag{p}: y[t-i-p]), so that a step can
         be persistence plus the change of the seasonal profile,
         y[t] + y[t+1-p] - y[t-p] (hourly: lag 25 of the next hour, which the
         y channel of a 24-hour window does not hold).
         In z space, learned with the rest (``init_params`` makes it zero;
         train.py starts it at a ridge fit, ``--highway-init``). It gives
         persistence and seasonal naive a direct path to the output instead
         of through the LSTM state. train.py gives hourly models one (kept only
         when it lowers the validation loss); other frequencies need ``--ar-lags N``.
calibrate z'_q = z_50 + c_q (z_q - z_50), c fitted on validation data after
         training (1 = no change).
ensemble several seeds are averaged in transformed space (quantile averaging).

Outputs are quantiles of log1p(demand/scale) ("z"); ``invert`` maps them to
demand: max(scale·(exp(min(z, Z_MAX)) - 1), 0), times the window length for
aggregates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from common import Z_MAX


def init_params(key, n_past: int, n_future: int, n_agg: int, hidden: int, head: int, n_q: int,
                horizon: int | None = None, ar_lags: int = 0, n_seasonal: int = 0,
                ar_seasonal: bool = False) -> dict:
    """Weights of one member; ``ar_lags > 0`` adds the highway (needs ``horizon``), ``ar_seasonal`` its
    weights on the seasonal lag channels."""
    ks = jax.random.split(key, 10)
    g = lambda k, shape, fan_in: jax.random.normal(k, shape, jnp.float32) / np.sqrt(fan_in)  # noqa: E731
    bias = np.zeros(4 * hidden, np.float32)
    bias[2 * hidden:3 * hidden] = 1.0  # forget gate (ONNX order i, o, f, c) starts open
    p = {
        "W": g(ks[0], (4 * hidden, n_past), n_past),
        "R": g(ks[1], (4 * hidden, hidden), hidden),
        "Wb": jnp.asarray(bias),
        "Rb": jnp.zeros(4 * hidden, jnp.float32),
        "s_h": g(ks[2], (hidden, head), hidden),
        "s_f": g(ks[3], (n_future, head), n_future),
        "s_b1": jnp.zeros(head, jnp.float32),
        "s_w2": g(ks[4], (head, n_q), head) * 0.1,
        "s_b2": jnp.asarray(np.r_[-1.0, np.full(n_q - 1, 0.3)].astype(np.float32)),
        "s_lin": jnp.zeros((n_future, n_q), jnp.float32),
        "a_h": g(ks[5], (hidden, head), hidden),
        "a_f": g(ks[6], (n_future, head), n_future),
        "a_e": jnp.zeros((n_agg, head), jnp.float32),
        "a_b1": jnp.zeros(head, jnp.float32),
        "a_w2": g(ks[7], (head, n_q), head) * 0.1,
        "a_b2": jnp.asarray(np.r_[-1.0, np.full(n_q - 1, 0.3)].astype(np.float32)),
        "a_lin": jnp.zeros((n_future, n_q), jnp.float32),
    }
    if ar_lags > 0:
        if horizon is None:
            raise ValueError("the highway needs the horizon")
        p["hw_p"] = jnp.zeros((ar_lags, horizon), jnp.float32)  # last ar_lags values -> each step
        p["hw_s"] = jnp.zeros((horizon, n_seasonal), jnp.float32)  # step k's seasonal-naive channels
        p["hw_b"] = jnp.zeros(horizon, jnp.float32)
        p["hw_pa"] = jnp.zeros((ar_lags, n_agg), jnp.float32)  # last ar_lags values -> each aggregate
        p["hw_ba"] = jnp.zeros(n_agg, jnp.float32)
        if ar_seasonal and n_seasonal > 0:
            # the last ar_lags positions of the lag channels, position-major ([i, p] -> row i * P + p)
            p["hw_l"] = jnp.zeros((ar_lags * n_seasonal, horizon), jnp.float32)
            p["hw_la"] = jnp.zeros((ar_lags * n_seasonal, n_agg), jnp.float32)
    return p


def ar_lags_of(p: dict) -> int:
    """The highway's number of past values (0: no highway)."""
    return int(p["hw_p"].shape[0]) if "hw_p" in p else 0


def highway_lags(p: dict, past):
    """The highway's seasonal-lag inputs [B, n * P] (position-major), or None when it has none."""
    if "hw_l" not in p:
        return None
    n, P = p["hw_p"].shape[0], p["hw_s"].shape[1]
    return past[:, past.shape[1] - n:, 1:1 + P].reshape(past.shape[0], n * P)


def highway(p: dict, past, future):
    """The linear path: (steps [B, K, 1], aggs [B, A, 1]) in z space, added to every quantile."""
    n, P = p["hw_p"].shape[0], p["hw_s"].shape[1]
    last = past[:, past.shape[1] - n:, 0]  # [B, n] the y channel, oldest first
    hs = last @ p["hw_p"] + (future[:, :, :P] * p["hw_s"]).sum(-1) + p["hw_b"]  # [B, K]
    ha = last @ p["hw_pa"] + p["hw_ba"]  # [B, A]
    lags = highway_lags(p, past)
    if lags is not None:
        hs, ha = hs + lags @ p["hw_l"], ha + lags @ p["hw_la"]
    return hs[..., None], ha[..., None]


def lstm_last(p: dict, x: jnp.ndarray) -> jnp.ndarray:
    """Last hidden state of the LSTM over x [B, L, F] (zero initial state)."""
    H = p["R"].shape[1]
    B = x.shape[0]
    xw = jnp.einsum("blf,gf->lbg", x, p["W"]) + p["Wb"] + p["Rb"]

    def step(carry, xt):
        h, c = carry
        g = xt + h @ p["R"].T
        i = jax.nn.sigmoid(g[:, :H])
        o = jax.nn.sigmoid(g[:, H:2 * H])
        f = jax.nn.sigmoid(g[:, 2 * H:3 * H])
        cc = jnp.tanh(g[:, 3 * H:])
        c = f * c + i * cc
        h = o * jnp.tanh(c)
        return (h, c), None

    z = jnp.zeros((B, H), x.dtype)
    (h, _), _ = jax.lax.scan(step, (z, z), xw)
    return h


def monotone(raw: jnp.ndarray) -> jnp.ndarray:
    base = raw[..., :1]
    inc = jnp.cumsum(jnp.abs(raw[..., 1:]), axis=-1)
    return jnp.concatenate([base, base + inc], axis=-1)


def calibrate(z: jnp.ndarray, c: jnp.ndarray, median_index: int) -> jnp.ndarray:
    zm = z[..., median_index:median_index + 1]
    return zm + c * (z - zm)


def forward_one(p: dict, past, future, aggregates: list[tuple[int, int]]):
    """Transformed quantiles (z) of one member: steps [B, K, Q], aggs [B, A, Q]."""
    h = lstm_last(p, past)
    hs = jax.nn.relu((h @ p["s_h"] + p["s_b1"])[:, None, :] + future @ p["s_f"])
    raw = hs @ p["s_w2"] + future @ p["s_lin"] + p["s_b2"]
    z_steps = monotone(raw)
    mf = jnp.stack([future[:, a:a + n, :].mean(axis=1) for a, n in aggregates], axis=1)  # [B, A, Ff]
    ha = jax.nn.relu((h @ p["a_h"] + p["a_b1"])[:, None, :] + p["a_e"] + mf @ p["a_f"])
    rawa = ha @ p["a_w2"] + mf @ p["a_lin"] + p["a_b2"]
    z_aggs = monotone(rawa)
    if "hw_p" in p:
        hs, ha = highway(p, past, future)
        z_steps, z_aggs = z_steps + hs, z_aggs + ha
    return z_steps, z_aggs


def forward(members: list[dict], calib: dict, past, future, aggregates, median_index: int):
    """Ensemble mean in z space, then calibration. Returns z_steps, z_aggs."""
    outs = [forward_one(p, past, future, aggregates) for p in members]
    zs = sum(o[0] for o in outs) / len(outs)
    za = sum(o[1] for o in outs) / len(outs)
    zs = calibrate(zs, calib["steps"], median_index)
    za = calibrate(za, calib["aggs"], median_index)
    return zs, za


def invert(z, scale, lengths=None):
    """Demand quantiles from transformed ones: max(scale*(exp(min(z,Z_MAX))-1), 0) [* length]."""
    s = scale[:, :, None]
    if lengths is not None:
        s = s * jnp.asarray(lengths, z.dtype)[None, :, None]
    return jnp.maximum(s * (jnp.exp(jnp.minimum(z, Z_MAX)) - 1.0), 0.0)
