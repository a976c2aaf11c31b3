"""Tests for smooth-quant: per-channel activation scales moved into MatMul/Gemm weights.

In float the pass is exact up to rounding: ``gamma / s`` and ``s * W`` are rounded to
float32 once each, so every product ``x_j w_j`` moves by about 1e-7 of itself. The
outlier channels make those products large (up to ~30) while outputs can be near zero,
so the comparisons use atol=1e-4 (a few ulps of the largest product) with the usual rtol.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.core.errors import CalibrationDataError, PassOptionError
from edgeopt.core.runtime import Feeds, run_model
from edgeopt.passes.quantize_static import QuantizeStaticPass
from edgeopt.passes.smooth_quant import MUL_PREFIX, SmoothQuantPass

ATOL = 1e-4
K, N, S = 64, 32, 8
OUTLIERS = [3, 17, 40]


def _vi(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _block(*, residual: bool = False) -> ir.Model:
    """x -> LayerNormalization (a few huge gamma entries) -> h -> MatMul -> y [and Add(h, x) -> r].

    The outlier channels' weight rows are small, so every channel matters in the
    output, as in a transformer whose LayerNorm output has a few outlier features.
    """
    rng = np.random.default_rng(0)
    gamma = rng.uniform(0.5, 1.5, K).astype(np.float32)
    gamma[OUTLIERS] = [60.0, -45.0, 80.0]
    w1 = (rng.standard_normal((K, N)) / 8).astype(np.float32)
    w1[OUTLIERS] /= 50
    inits = {"gamma": gamma, "beta": (0.1 * rng.standard_normal(K)).astype(np.float32), "W1": w1}
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1, name="ln"),
             helper.make_node("MatMul", ["h", "W1"], ["y"], name="mm")]
    outputs = [_vi("y", ["B", S, N])]
    if residual:
        nodes.append(helper.make_node("Add", ["h", "x"], ["r"], name="residual"))
        outputs.append(_vi("r", ["B", S, K]))
    graph = helper.make_graph(nodes, "block", [_vi("x", ["B", S, K])], outputs,
                              [nh.from_array(v, k) for k, v in inits.items()])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _data(batches: int = 4, rows: int = 8, seed: int = 0) -> list[Feeds]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((rows, S, K)).astype(np.float32)} for _ in range(batches)]


def _init(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()  # type: ignore[union-attr]


def test_layernorm_fold_is_exact(apply_pass, op_counts):
    model = _block()
    ops = op_counts(model)
    feeds = _data()
    gamma, w1 = _init(model, "gamma").copy(), _init(model, "W1").copy()
    assert apply_pass(SmoothQuantPass(calibration=feeds), model, feeds[:2], atol=ATOL).modified
    assert op_counts(model) == ops
    # s_j = max|X_j|^0.5 / max|W_j|^0.5, folded as gamma / s and s * W (rows).
    x_absmax = np.zeros(K)
    for f in feeds:
        mean, std = f["x"].mean(-1, keepdims=True), f["x"].std(-1, keepdims=True)
        h = (f["x"] - mean) / np.sqrt(std**2 + 1e-5) * gamma + _init(_block(), "beta")
        x_absmax = np.maximum(x_absmax, np.abs(h).reshape(-1, K).max(0))
    s = np.sqrt(x_absmax) / np.sqrt(np.abs(w1).max(1))
    np.testing.assert_allclose(_init(model, "gamma"), gamma / s, rtol=1e-4)
    np.testing.assert_allclose(_init(model, "W1"), w1 * s[:, None], rtol=1e-4)


def test_matmul_and_gemm_sharing_a_layernorm(apply_pass):
    rng = np.random.default_rng(1)
    gamma = rng.uniform(0.5, 1.5, K).astype(np.float32)
    gamma[OUTLIERS] = 50.0
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma"], ["h"], name="ln"),
             helper.make_node("MatMul", ["h", "W1"], ["y"], name="mm"),
             helper.make_node("Gemm", ["h", "W2"], ["z"], transB=1, name="gemm")]
    inits = {"gamma": gamma, "W1": rng.standard_normal((K, N)).astype(np.float32),
             "W2": rng.standard_normal((N, K)).astype(np.float32)}
    graph = helper.make_graph(nodes, "g", [_vi("x", ["M", K])], [_vi("y", ["M", N]), _vi("z", ["M", N])],
                              [nh.from_array(v, k) for k, v in inits.items()])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    feeds = [{"x": rng.standard_normal((16, K)).astype(np.float32)} for _ in range(2)]
    assert apply_pass(SmoothQuantPass(calibration=feeds), model, feeds[0], atol=ATOL).modified
    s = _init(model, "W1")[:, 0] / inits["W1"][:, 0]
    np.testing.assert_allclose(_init(model, "W2")[0], inits["W2"][0] * s, rtol=1e-5)  # same s, on columns
    np.testing.assert_allclose(_init(model, "gamma"), gamma / s, rtol=1e-5)
    # s = sqrt(max|X| / max|W|) with max|W| over both layers' rows for channel j.
    w_absmax = np.maximum(np.abs(inits["W1"]).max(1), np.abs(inits["W2"]).max(0))
    x = np.concatenate([f["x"] for f in feeds])
    h = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * gamma
    np.testing.assert_allclose(s, np.sqrt(np.abs(h).max(0) / w_absmax), rtol=1e-4)


def test_second_run_changes_nothing(apply_pass):
    model = _block()
    feeds = _data()
    SmoothQuantPass(calibration=feeds)(model)
    gamma = _init(model, "gamma").copy()
    assert not apply_pass(SmoothQuantPass(calibration=feeds), model, feeds[:1]).modified
    np.testing.assert_array_equal(_init(model, "gamma"), gamma)


def test_layernorm_that_feeds_a_residual_needs_insert_mul(apply_pass, op_counts, caplog):
    feeds = _data()
    model = _block(residual=True)
    with caplog.at_level(logging.DEBUG, logger="edgeopt.passes.smooth_quant"):
        assert not apply_pass(SmoothQuantPass(calibration=feeds), model, feeds[:1]).modified
    assert "skipped h: it feeds other ops too" in caplog.text
    ops = op_counts(model)
    assert apply_pass(SmoothQuantPass(calibration=feeds, insert_mul=True), model, feeds[:1], atol=ATOL).modified
    assert op_counts(model) == ops + Counter({"Mul": 1})
    mul = next(n for n in model.graph if n.op_type == "Mul")
    assert mul.name.startswith(MUL_PREFIX) and mul.inputs[0].name == "h"
    assert {n.name for n, _ in mul.outputs[0].uses()} == {"mm"}  # the residual keeps h
    assert not SmoothQuantPass(calibration=feeds, insert_mul=True)(model).modified


def test_weights_that_are_not_constants_are_skipped(apply_pass):
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma"], ["h"], name="ln"),
             helper.make_node("MatMul", ["h", "W"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [_vi("x", [4, K]), _vi("W", [K, N])], [_vi("y", [4, N])],
                              [nh.from_array(np.ones(K, np.float32), "gamma")])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((4, K)).astype(np.float32), "W": rng.standard_normal((K, N)).astype(np.float32)}
    assert not apply_pass(SmoothQuantPass(calibration=[feeds], insert_mul=True), model, feeds).modified


def test_static_int8_is_more_accurate_after_smoothing():
    """Per-tensor activations: the outlier channels take all the levels unless smoothed."""
    calib, test = _data(), _data(batches=1, rows=64, seed=1)[0]
    reference = run_model(_block(), test)["y"]

    def sqnr(model: ir.Model) -> float:
        out = run_model(QuantizeStaticPass(calibration=calib)(model).model, test)["y"]
        return float(10 * np.log10((reference**2).sum() / ((out - reference) ** 2).sum()))

    plain = sqnr(_block())
    smoothed = _block()
    SmoothQuantPass(calibration=calib)(smoothed)
    assert sqnr(smoothed) > plain + 15  # measured: 7.9 dB -> 33.7 dB


def test_bad_options():
    with pytest.raises(CalibrationDataError, match="needs calibration data"):
        SmoothQuantPass()
    with pytest.raises(PassOptionError, match=r"alpha must lie in \[0, 1\]"):
        SmoothQuantPass(calibration=[], alpha=1.5)
