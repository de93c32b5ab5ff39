"""Export the trained network as a standard ONNX graph (ONNX ``LSTM`` op, opset 17).

Built node by node with ``onnx.helper`` — no tracing, so the graph holds only
standard operators any ONNX runtime runs: Transpose, LSTM, Squeeze,
Unsqueeze, MatMul, Add, Relu, Mul, Slice, Abs, CumSum, Concat,
ReduceMean, ReduceSum, Sub, Div, Min, Max, Exp, Identity.

The batch dimension is symbolic (``batch``): the Rust runtime forecasts every
shard in one call.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common import Z_MAX

OPSET = 17


class _G:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def const(self, name: str, arr) -> str:
        arr = np.asarray(arr)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        self.n += 1
        outs = [f"{op_type.lower()}_{self.n}" + (f"_{i}" if n_out > 1 else "") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{op_type}_{self.n}", **attrs))
        return outs if n_out > 1 else outs[0]


def _monotone(g: _G, raw: str, n_q: int, tag: str) -> str:
    base = g.op("Slice", [raw, g.const(f"{tag}_s0", [0]), g.const(f"{tag}_e0", [1]), g.const(f"{tag}_ax0", [2])])
    rest = g.op("Slice", [raw, g.const(f"{tag}_s1", [1]), g.const(f"{tag}_e1", [n_q]), g.const(f"{tag}_ax1", [2])])
    cs = g.op("CumSum", [g.op("Abs", [rest]), g.const(f"{tag}_cumaxis", np.array(2, np.int64))])
    return g.op("Concat", [base, g.op("Add", [base, cs])], axis=2)


def _member(g: _G, p: dict, m: int, x_lbf: str, future: str, mf: str, n_q: int) -> tuple[str, str]:
    P = {k: np.asarray(v, np.float32) for k, v in p.items()}
    H = P["R"].shape[1]
    W = g.const(f"m{m}_W", P["W"][None])
    R = g.const(f"m{m}_R", P["R"][None])
    Bb = g.const(f"m{m}_B", np.concatenate([P["Wb"], P["Rb"]])[None])
    _, y_h = g.op("LSTM", [x_lbf, W, R, Bb], n_out=2, hidden_size=H)
    h = g.op("Squeeze", [y_h, g.const(f"m{m}_sq", [0])])  # [B, H]

    def head(prefix: str, feats: str, extra_bias: np.ndarray | None) -> str:
        # the [B, head] part and its bias first: one large Add instead of two
        hb = g.op("Add", [g.op("MatMul", [h, g.const(f"m{m}_{prefix}_h", P[f"{prefix}_h"])]),
                          g.const(f"m{m}_{prefix}_b1", P[f"{prefix}_b1"])])
        hh = g.op("Unsqueeze", [hb, g.const(f"m{m}_{prefix}_unsq", [1])])  # [B, 1, head]
        if extra_bias is not None:
            hh = g.op("Add", [hh, g.const(f"m{m}_{prefix}_e", extra_bias.astype(np.float32))])
        ff = g.op("MatMul", [feats, g.const(f"m{m}_{prefix}_f", P[f"{prefix}_f"])])
        hid = g.op("Relu", [g.op("Add", [hh, ff])])
        # MLP output plus the linear skip from the features
        raw = g.op("Add", [g.op("MatMul", [hid, g.const(f"m{m}_{prefix}_w2", P[f"{prefix}_w2"])]),
                           g.op("MatMul", [feats, g.const(f"m{m}_{prefix}_lin", P[f"{prefix}_lin"])])])
        raw = g.op("Add", [raw, g.const(f"m{m}_{prefix}_b2", P[f"{prefix}_b2"])])
        return _monotone(g, raw, n_q, f"m{m}_{prefix}")

    zs, za = head("s", future, None), head("a", mf, P["a_e"])
    if "hw_p" in P:
        hs, ha = _highway(g, P, m, "past", future)
        zs, za = g.op("Add", [zs, hs]), g.op("Add", [za, ha])
    return zs, za


def _highway(g: _G, P: dict, m: int, past: str, future: str) -> tuple[str, str]:
    """model.highway: the last n values of the past y channel (and, with ``hw_l``, of its seasonal lag
    channels) and the seasonal-naive channels, linearly."""
    n, S = P["hw_p"].shape[0], P["hw_s"].shape[1]
    t = f"m{m}_hw"
    # past[:, L-n:, 0] as [B, n]: a negative start counts from the end of the window
    last = g.op("Slice", [past, g.const(f"{t}_ps", [-n, 0]), g.const(f"{t}_pe", [np.iinfo(np.int64).max, 1]),
                          g.const(f"{t}_pax", [1, 2])])
    last = g.op("Squeeze", [last, g.const(f"{t}_psq", [2])])
    seas = g.op("Slice", [future, g.const(f"{t}_fs", [0]), g.const(f"{t}_fe", [S]), g.const(f"{t}_fax", [2])])
    sk = g.op("ReduceSum", [g.op("Mul", [seas, g.const(f"{t}_s", P["hw_s"])]), g.const(f"{t}_sax", [2])],
              keepdims=0)  # [B, K]
    hs = g.op("Add", [g.op("Add", [g.op("MatMul", [last, g.const(f"{t}_p", P["hw_p"])]), sk]),
                      g.const(f"{t}_b", P["hw_b"])])
    ha = g.op("Add", [g.op("MatMul", [last, g.const(f"{t}_pa", P["hw_pa"])]), g.const(f"{t}_ba", P["hw_ba"])])
    if "hw_l" in P:  # past[:, L-n:, 1:1+S] (the seasonal lag channels) as [B, n*S], position-major
        lags = g.op("Slice", [past, g.const(f"{t}_ls", [-n, 1]), g.const(f"{t}_le", [np.iinfo(np.int64).max, 1 + S]),
                              g.const(f"{t}_lax", [1, 2])])
        lags = g.op("Reshape", [lags, g.const(f"{t}_lshape", np.array([-1, n * S], np.int64))])
        hs = g.op("Add", [hs, g.op("MatMul", [lags, g.const(f"{t}_l", P["hw_l"])])])
        ha = g.op("Add", [ha, g.op("MatMul", [lags, g.const(f"{t}_la", P["hw_la"])])])
    unsq = g.const(f"{t}_unsq", [2])
    return g.op("Unsqueeze", [hs, unsq]), g.op("Unsqueeze", [ha, unsq])


def build(members: list[dict], calib: dict, spec, name: str, doc: str) -> onnx.ModelProto:
    """The ONNX model for an ensemble of trained members plus calibration."""
    g = _G()
    L, K, Q = spec.context, spec.horizon, len(spec.quantiles)
    Fp, Ff, A = len(spec.past_names()), len(spec.future_names()), len(spec.aggregates)
    mi = spec.quantiles.index(0.5)

    x_lbf = g.op("Transpose", ["past"], perm=[1, 0, 2])
    pieces = []
    for j, (a, n) in enumerate(spec.aggregates):
        sl = g.op("Slice", ["future", g.const(f"agg{j}_s", [a]), g.const(f"agg{j}_e", [a + n]), g.const(f"agg{j}_ax", [1])])
        pieces.append(g.op("ReduceMean", [sl], axes=[1], keepdims=1))
    mf = pieces[0] if len(pieces) == 1 else g.op("Concat", pieces, axis=1)  # [B, A, Ff]

    zs_all, za_all = [], []
    for m, p in enumerate(members):
        zs, za = _member(g, p, m, x_lbf, "future", mf, Q)
        zs_all.append(zs)
        za_all.append(za)

    def mean_of(xs: list[str], tag: str) -> str:
        if len(xs) == 1:
            return xs[0]
        s = xs[0]
        for x in xs[1:]:
            s = g.op("Add", [s, x])
        return g.op("Div", [s, g.const(f"{tag}_n", np.float32(len(xs)))])

    def calibrated(z: str, c: np.ndarray, tag: str) -> str:
        zm = g.op("Slice", [z, g.const(f"{tag}_ms", [mi]), g.const(f"{tag}_me", [mi + 1]), g.const(f"{tag}_max", [2])])
        d = g.op("Mul", [g.op("Sub", [z, zm]), g.const(f"{tag}_c", np.asarray(c, np.float32))])
        return g.op("Add", [zm, d])

    zs = calibrated(mean_of(zs_all, "steps"), calib["steps"], "cal_steps")
    za = calibrated(mean_of(za_all, "aggs"), calib["aggs"], "cal_aggs")
    g.nodes.append(helper.make_node("Identity", [zs], ["quantiles_transformed"], name="out_z_steps"))
    g.nodes.append(helper.make_node("Identity", [za], ["agg_quantiles_transformed"], name="out_z_aggs"))

    scale3 = g.op("Unsqueeze", ["scale", g.const("scale_unsq", [2])])  # [B, 1, 1]
    zmax = g.const("z_max", np.float32(Z_MAX))
    one = g.const("one", np.float32(1.0))
    zero = g.const("zero", np.float32(0.0))

    def inv(z: str, mult: str) -> str:
        e = g.op("Sub", [g.op("Exp", [g.op("Min", [z, zmax])]), one])
        return g.op("Max", [g.op("Mul", [mult, e]), zero])

    q = inv("quantiles_transformed", scale3)
    lens = g.const("agg_lengths", np.array([n for _, n in spec.aggregates], np.float32).reshape(1, A, 1))
    qa = inv("agg_quantiles_transformed", g.op("Mul", [scale3, lens]))
    g.nodes.append(helper.make_node("Identity", [q], ["quantiles"], name="out_q_steps"))
    g.nodes.append(helper.make_node("Identity", [qa], ["agg_quantiles"], name="out_q_aggs"))

    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("past", f32, ["batch", L, Fp]),
        helper.make_tensor_value_info("future", f32, ["batch", K, Ff]),
        helper.make_tensor_value_info("scale", f32, ["batch", 1]),
    ]
    outputs = [
        helper.make_tensor_value_info("quantiles", f32, ["batch", K, Q]),
        helper.make_tensor_value_info("agg_quantiles", f32, ["batch", A, Q]),
        helper.make_tensor_value_info("quantiles_transformed", f32, ["batch", K, Q]),
        helper.make_tensor_value_info("agg_quantiles_transformed", f32, ["batch", A, Q]),
    ]
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="shardcast-forecaster-train", doc_string=doc)
    model.ir_version = 8  # readable by every ONNX Runtime since 1.10
    onnx.checker.check_model(model, full_check=True)
    return model
