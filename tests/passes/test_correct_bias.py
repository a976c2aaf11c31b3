"""Tests for correct-bias: biases absorb the mean error of (fake-)quantized weights.

The pass changes float outputs on purpose, so instead of equality with the original
the tests check what it promises: with the weights replaced by their quantized
values, the corrected model's mean output per channel over the calibration data
equals the original float model's. Those means are float32 sums of a few hundred
terms, so they agree to about 1e-5 (the tolerance used).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh
from onnxruntime.quantization.quant_utils import quantize_data

from edgeopt.core.errors import CalibrationDataError, PassOptionError
from edgeopt.core.runtime import Feeds, run_model
from edgeopt.passes.correct_bias import CORRECTED_KEY, CorrectBiasPass, fake_quantize
from edgeopt.passes.quantize_static import QuantizeStaticPass


def _vi(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x: list[int | str],
           y: list[int | str], extra_inputs: tuple[onnx.ValueInfoProto, ...] = ()) -> ir.Model:
    graph = helper.make_graph(nodes, "g", [_vi("x", x), *extra_inputs], [_vi("y", y)],
                              [nh.from_array(v, k) for k, v in inits.items()])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _skewed(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Small positive weights and one large one: per-tensor int8 rounds most of them to 0."""
    w = rng.uniform(0.005, 0.035, shape)
    w.reshape(-1)[0] = 10.0
    return w.astype(np.float32)


def _matmul_add(k: int = 16, n: int = 8) -> ir.Model:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["y"], name="add")]
    return _model(nodes, {"W": _skewed(rng, k, n), "b": rng.standard_normal(n).astype(np.float32)},
                  ["N", k], ["N", n])


def _conv(bias: bool) -> ir.Model:
    rng = np.random.default_rng(1)
    inputs = ["x", "W", "B"] if bias else ["x", "W"]
    inits = {"W": _skewed(rng, 4, 3, 3, 3), "B": rng.standard_normal(4).astype(np.float32)}
    if not bias:
        del inits["B"]
    return _model([helper.make_node("Conv", inputs, ["y"], pads=[1, 1, 1, 1], name="conv")], inits,
                  ["N", 3, 5, 5], ["N", 4, 5, 5])


def _gemm(with_c: bool) -> ir.Model:
    rng = np.random.default_rng(2)
    inputs = ["x", "W", "C"] if with_c else ["x", "W"]
    node = helper.make_node("Gemm", inputs, ["y"], transB=1, alpha=0.5, beta=2.0, name="gemm")
    inits = {"W": _skewed(rng, 6, 16), "C": rng.standard_normal(6).astype(np.float32)}
    if not with_c:
        del inits["C"]
    return _model([node], inits, ["N", 16], ["N", 6])


def _calibration(model: ir.Model, batches: int = 4, rows: int = 32, seed: int = 0) -> list[Feeds]:
    """Non-negative inputs (as after a ReLU), so a weight error shifts the mean output."""
    rng = np.random.default_rng(seed)
    shape = [rows if not isinstance(d, int) else d for d in model.graph.inputs[0].shape]  # type: ignore[union-attr]
    return [{"x": rng.uniform(0, 1, shape).astype(np.float32)} for _ in range(batches)]


def _fake_quantized_weights(model: ir.Model, *, per_channel: bool) -> ir.Model:
    """A copy whose layer weights ``W`` are replaced by their fake-quantized values."""
    copy = ir.from_proto(ir.serde.serialize_model(model))
    value = copy.graph.initializers["W"]
    node = value.consumers()[0]
    trans_b = node.op_type == "Gemm" and node.attributes.get_int("transB", 0) != 0
    axis = (0 if node.op_type == "Conv" or trans_b else 1) if per_channel else None
    value.const_value = ir.tensor(fake_quantize(value.const_value.numpy(), axis), name="W")  # type: ignore[union-attr]
    return copy


def _channel_means(model: ir.Model, feeds: list[Feeds]) -> np.ndarray:
    out = np.concatenate([run_model(model, f)["y"] for f in feeds])
    return np.moveaxis(out, 1, -1).reshape(-1, out.shape[1]).mean(0, dtype=np.float64)


@pytest.mark.parametrize(("build", "per_channel"), [
    (_matmul_add, False), (_matmul_add, True),
    (lambda: _conv(True), False), (lambda: _conv(False), True),
    (lambda: _gemm(True), False), (lambda: _gemm(False), True),
])
def test_quantized_weights_keep_the_float_mean(build, per_channel, checker, op_counts):
    original = build()
    model = build()
    feeds = _calibration(model)
    ops = op_counts(model)
    weight = model.graph.initializers["W"].const_value.numpy().copy()  # type: ignore[union-attr]
    result = CorrectBiasPass(calibration=feeds, per_channel=per_channel)(model)
    assert result.modified
    checker(model)
    assert op_counts(model) == ops
    assert [v.name for v in model.graph.inputs] == ["x"] and [v.name for v in model.graph.outputs] == ["y"]
    np.testing.assert_array_equal(model.graph.initializers["W"].const_value.numpy(), weight)  # type: ignore[union-attr]
    expected = _channel_means(original, feeds)
    uncorrected = _channel_means(_fake_quantized_weights(original, per_channel=per_channel), feeds)
    corrected = _channel_means(_fake_quantized_weights(model, per_channel=per_channel), feeds)
    np.testing.assert_allclose(corrected, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(uncorrected - expected).max() > 1e-3  # there was something to correct


def test_correction_matches_numpy():
    model = _matmul_add()
    feeds = _calibration(model)
    w = model.graph.initializers["W"].const_value.numpy()  # type: ignore[union-attr]
    b = model.graph.initializers["b"].const_value.numpy().copy()  # type: ignore[union-attr]
    CorrectBiasPass(calibration=feeds, per_channel=False)(model)
    x = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    shift = (x @ (w - fake_quantize(w, None)).astype(np.float64)).mean(0)
    np.testing.assert_allclose(model.graph.initializers["b"].const_value.numpy() - b, shift,  # type: ignore[union-attr]
                               rtol=1e-4, atol=1e-6)


def test_static_int8_after_correction_is_closer_to_float():
    feeds = _calibration(_matmul_add())
    test = _calibration(_matmul_add(), batches=1, rows=256, seed=1)[0]
    reference = run_model(_matmul_add(), test)["y"]

    def errors(model: ir.Model) -> tuple[float, float]:
        # bias correction predicts the error of rounding to nearest (learned rounding has no mean shift to fix)
        quantized = QuantizeStaticPass(calibration=feeds, per_channel=False, rounding="nearest")(model).model
        diff = run_model(quantized, test)["y"] - reference
        return float(np.abs(diff.mean(0)).mean()), float(np.abs(diff).mean())

    plain_bias, plain_error = errors(_matmul_add())
    corrected = _matmul_add()
    CorrectBiasPass(calibration=feeds, per_channel=False)(corrected)
    bias, error = errors(corrected)
    assert bias < plain_bias / 5  # measured: 0.17 -> 0.009 mean shift per channel
    assert error < plain_error / 3  # measured: 0.17 -> 0.023 mean absolute error


def test_second_run_changes_nothing():
    model = _conv(False)
    feeds = _calibration(model)
    CorrectBiasPass(calibration=feeds)(model)
    conv = next(iter(model.graph))
    assert conv.metadata_props[CORRECTED_KEY] == "true"
    bias = conv.inputs[2].const_value.numpy().copy()  # type: ignore[union-attr]
    assert not CorrectBiasPass(calibration=feeds)(model).modified
    np.testing.assert_array_equal(conv.inputs[2].const_value.numpy(), bias)  # type: ignore[union-attr]


def test_what_is_left_alone(caplog):
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="no_bias"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "V"], ["y"], name="weights_fed")]
    model = _model(nodes, {"W": _skewed(rng, 8, 8)}, ["N", 8], ["N", 4], (_vi("V", [8, 4]),))
    feeds = [{"x": rng.uniform(0, 1, (4, 8)).astype(np.float32), "V": rng.standard_normal((8, 4)).astype(np.float32)}]
    with caplog.at_level(logging.DEBUG, logger="edgeopt.passes.correct_bias"):
        assert not CorrectBiasPass(calibration=feeds)(model).modified
    assert "no_bias: a MatMul needs a bias Add" in caplog.text
    assert "weights_fed: weights are not float32 constants" in caplog.text


def test_calibration_spec_string():
    model = _matmul_add()
    assert CorrectBiasPass(calibration="random:3")(model).modified


@pytest.mark.parametrize(("weight_type", "qtype", "axis"), [
    ("int8", TensorProto.INT8, None), ("int8", TensorProto.INT8, 1), ("uint8", TensorProto.UINT8, None)])
def test_fake_quantize_matches_onnxruntime(weight_type, qtype, axis):
    w = np.random.default_rng(4).standard_normal((16, 8)).astype(np.float32) * np.float32(0.3)
    columns = [w] if axis is None else [w[:, [j]] for j in range(w.shape[1])]
    expected = []
    for part in columns:
        zero, scale, q = quantize_data(part, qtype, symmetric=weight_type == "int8")
        expected.append((q.astype(np.float32) - np.float32(zero)) * np.float32(scale))
    np.testing.assert_allclose(fake_quantize(w, axis, weight_type), np.concatenate(expected, axis=1),
                               rtol=1e-6, atol=1e-7)


def test_bad_options():
    with pytest.raises(CalibrationDataError, match="needs calibration data"):
        CorrectBiasPass()
    with pytest.raises(PassOptionError, match="weight_type must be"):
        CorrectBiasPass(calibration=[], weight_type="int4")  # type: ignore[arg-type]


def test_ir3_model_gets_its_new_bias_as_a_constant_node(checker):
    """Before IR 4 every initializer must also be a graph input, so new constants are nodes."""
    weight = _skewed(np.random.default_rng(5), 4, 3, 1, 1)
    nodes = [helper.make_node("Constant", [], ["W"], value=nh.from_array(weight)),
             helper.make_node("Conv", ["x", "W"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "g", [_vi("x", ["N", 3, 4, 4])], [_vi("y", ["N", 4, 4, 4])])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3))
    feeds = _calibration(model)
    assert CorrectBiasPass(calibration=feeds, per_channel=False)(model).modified
    checker(model)
    assert not model.graph.initializers
    assert [n.op_type for n in model.graph].count("Constant") == 2
    run_model(model, feeds[0])
