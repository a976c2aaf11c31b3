"""Small models for the pruning tests: ONNX text for the graph, numpy for the weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def build(text: str, weights: dict[str, np.ndarray]) -> ir.Model:
    """Parse ``text`` (a graph whose weights are undefined names) and add ``weights`` as initializers."""
    proto = onnx.parser.parse_model(f"{HEADER}\n{text}")
    proto.graph.initializer.extend(numpy_helper.from_array(_cast(a), n) for n, a in weights.items())
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def _cast(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    return array.astype(np.float32) if array.dtype.kind == "f" else array


RESIDUAL_CNN = """
net (float[N,3,8,8] x) => (float[N,4] y) {
    c1 = Conv<pads=[1,1,1,1]>(x, w1, b1)
    r1 = Relu(c1)
    d = Conv<group=16, pads=[1,1,1,1]>(r1, wd, bd)
    r2 = Relu(d)
    c2 = Conv(r2, w2, b2)
    s = Add(c2, r1)
    c3 = Conv(s, w3, b3)
    r3 = Relu(c3)
    cat = Concat<axis=1>(s, r3)
    p = MaxPool<kernel_shape=[2,2], strides=[2,2]>(cat)
    f = Flatten(p)
    y = Gemm<transB=1>(f, wf, bf)
}
"""
"""A residual block with a depthwise Conv, a Concat and a Flatten into a Gemm: groups
{c1, d, c2} (16 channels, merged by the Add) and {c3} (8), concatenated into 24 channels
that the Gemm reads as 24 blocks of 16 features."""


def residual_weights(seed: int = 0, zero: tuple[list[int], list[int]] | None = None) -> dict[str, np.ndarray]:
    """Random weights; ``zero=(Z, Z3)`` zeroes every weight of channels Z of the residual
    group and Z3 of the c3 group (outgoing and incoming), so removing them changes nothing."""
    rng = np.random.default_rng(seed)
    w = {
        "w1": rng.standard_normal((16, 3, 3, 3)), "b1": rng.standard_normal(16),
        "wd": rng.standard_normal((16, 1, 3, 3)), "bd": rng.standard_normal(16),
        "w2": rng.standard_normal((16, 16, 1, 1)) * 0.3, "b2": rng.standard_normal(16),
        "w3": rng.standard_normal((8, 16, 1, 1)) * 0.3, "b3": rng.standard_normal(8),
        "wf": rng.standard_normal((4, 24 * 16)) * 0.1, "bf": rng.standard_normal(4),
    }
    if zero is not None:
        z, z3 = zero
        for name in ("w1", "b1", "wd", "bd", "w2", "b2"):
            w[name][z] = 0
        w["w2"][:, z] = 0
        w["w3"][:, z] = 0
        w["w3"][z3] = 0
        w["b3"][z3] = 0
        gemm = w["wf"].reshape(4, 24, 16)
        gemm[:, z] = 0
        gemm[:, [16 + c for c in z3]] = 0
    return w


def residual_cnn(seed: int = 0, zero: tuple[list[int], list[int]] | None = None) -> ir.Model:
    return build(RESIDUAL_CNN, residual_weights(seed, zero))


TRANSFORMER_BLOCK = """
block (float[N,6,16] x) => (float[N,6,16] y) {
    q = MatMul(x, wq)
    heads = Reshape(q, split)
    merged = Reshape(heads, join)
    o = MatMul(merged, wo)
    h = Add(x, o)
    u = MatMul(h, w1)
    ub = Add(u, b1)
    g = Relu(ub)
    v = MatMul(g, w2)
    vb = Add(v, b2)
    y = Add(h, vb)
}
"""
"""A (toy) attention projection split into 2 heads and back, and an FFN of 32 neurons."""


def transformer_block(seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    return build(TRANSFORMER_BLOCK, {
        "wq": rng.standard_normal((16, 16)) * 0.3, "wo": rng.standard_normal((16, 16)) * 0.3,
        "w1": rng.standard_normal((16, 32)) * 0.3, "b1": rng.standard_normal(32) * 0.1,
        "w2": rng.standard_normal((32, 16)) * 0.3, "b2": rng.standard_normal(16) * 0.1,
        "split": np.array([0, 0, 2, 8], np.int64), "join": np.array([0, 0, 16], np.int64),
    })


HEADS, HEAD_DIM, WIDTH = 4, 4, 16
ATTENTION = """
attn (float[N,S,16] x) => (float[N,S,16] y) {
    q0 = MatMul(x, wq)
    q = Add(q0, bq)
    k0 = MatMul(x, wk)
    k = Add(k0, bk)
    v0 = MatMul(x, wv)
    v = Add(v0, bv)
    qh = Reshape(q, split)
    kh = Reshape(k, split)
    vh = Reshape(v, split)
    qt = Transpose<perm=[0,2,1,3]>(qh)
    kt = Transpose<perm=[0,2,3,1]>(kh)
    vt = Transpose<perm=[0,2,1,3]>(vh)
    s0 = MatMul(qt, kt)
    s = Mul(s0, scale)
    p = Softmax<axis=-1>(s)
    c = MatMul(p, vt)
    ct = Transpose<perm=[0,2,1,3]>(c)
    m = Reshape(ct, join)
    o0 = MatMul(m, wo)
    o = Add(o0, bo)
    h = Add(x, o)
    y = LayerNormalization<axis=-1>(h, g, b)
}
"""
"""One self-attention block of 4 heads of 4 features; ``split`` is shared by Q, K and V (as in torch exports)."""


def attention(seed: int = 0, zero: tuple[int, ...] = ()) -> ir.Model:
    """Random weights; every Q/K/V/O weight and bias of the heads in ``zero`` is 0, so removing them changes nothing."""
    rng = np.random.default_rng(seed)
    w = {n: rng.standard_normal((WIDTH, WIDTH)) * 0.4 for n in ("wq", "wk", "wv", "wo")}
    w |= {n: rng.standard_normal(WIDTH) * 0.1 for n in ("bq", "bk", "bv", "bo")}
    for head in zero:
        cols = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
        for n in ("wq", "wk", "wv"):
            w[n][:, cols] = 0
        for n in ("bq", "bk", "bv"):
            w[n][cols] = 0
        w["wo"][cols] = 0
    w |= {"scale": np.array(0.5), "g": np.ones(WIDTH), "b": np.zeros(WIDTH),
          "split": np.array([0, 0, HEADS, HEAD_DIM], np.int64), "join": np.array([0, 0, WIDTH], np.int64)}
    return build(ATTENTION, w)
