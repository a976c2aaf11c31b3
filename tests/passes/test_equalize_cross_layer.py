"""Tests for equalize-cross-layer: per-channel rescaling of consecutive layers, exact in float.

Rescaling by ``s`` and ``1 / s`` rounds each weight once more in float32, so outputs
move by a few float32 ulps of the largest terms of each dot product. Outputs here
reach a few hundred with terms of similar size, so the comparison uses atol=1e-4
(about 2e-7 of the largest output) with the usual rtol.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.core.errors import PassOptionError
from edgeopt.core.runtime import run_model
from edgeopt.passes.equalize_cross_layer import EqualizeCrossLayerPass
from edgeopt.passes.quantize_static import QuantizeStaticPass

ATOL = 1e-4


def _vi(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _spread(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Weights whose output channels span orders of magnitude, as after BatchNorm folding."""
    w = rng.standard_normal(shape)
    w *= np.exp(rng.uniform(-3, 3, (shape[0],) + (1,) * (len(shape) - 1)))
    return w.astype(np.float32)


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x: list[int | str], y: list[int | str],
           *, outputs: tuple[str, ...] = ("y",), opset: int = 17) -> ir.Model:
    """Extra outputs are the (N, 8, 6, 6) intermediates of :func:`_separable`."""
    graph = helper.make_graph(nodes, "g", [_vi("x", x)], [_vi(o, y if o == "y" else ["N", 8, 6, 6]) for o in outputs],
                              [nh.from_array(v, k) for k, v in inits.items()])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _separable(act: tuple[str, dict] = ("Relu", {}), *, extra_nodes: tuple[onnx.NodeProto, ...] = (),
               extra_inits: dict[str, np.ndarray] | None = None, outputs: tuple[str, ...] = ("y",),
               opset: int = 17) -> ir.Model:
    """x -> Conv 3x3 (3->8) -> act -> depthwise 3x3 -> Relu -> pointwise 1x1 (8->4) -> y."""
    rng = np.random.default_rng(0)
    op, attrs = act[0], dict(act[1])
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node(op, ["a", *attrs.pop("inputs", [])], ["ar"], name="act1", **attrs),
             helper.make_node("Conv", ["ar", "W2", "B2"], ["b"], pads=[1, 1, 1, 1], group=8, name="dw"),
             helper.make_node("Relu", ["b"], ["br"], name="act2"),
             helper.make_node("Conv", ["br", "W3"], ["y"], name="pw"), *extra_nodes]
    inits = {"W1": _spread(rng, 8, 3, 3, 3), "B1": rng.standard_normal(8).astype(np.float32),
             "W2": _spread(rng, 8, 1, 3, 3), "B2": rng.standard_normal(8).astype(np.float32),
             "W3": _spread(rng, 4, 8, 1, 1), **(extra_inits or {})}
    return _model(nodes, inits, ["N", 3, 6, 6], ["N", 4, 6, 6], outputs=outputs, opset=opset)


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {name: value.const_value.numpy().copy() for name, value in model.graph.initializers.items()
            if value.const_value is not None}


def _ops(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def test_depthwise_separable_chain_is_equalized(apply_pass):
    model = _separable()
    ops = _ops(model)
    result = apply_pass(EqualizeCrossLayerPass(), model, atol=ATOL)
    assert result.modified
    assert _ops(model) == ops
    w = _weights(model)
    r1 = np.abs(w["W1"]).reshape(8, -1).max(1)
    r2 = np.abs(w["W2"]).reshape(8, -1).max(1)  # depthwise: input channel i is W2[i]
    r3 = np.abs(w["W3"]).max(axis=(0, 2, 3))
    np.testing.assert_allclose(r1, r2, rtol=1e-2)  # each pair's ranges meet at sqrt(r1 * r2)
    np.testing.assert_allclose(r2, r3, rtol=1e-2)


def test_second_run_changes_nothing(apply_pass):
    model = _separable()
    EqualizeCrossLayerPass()(model)
    before = _weights(model)
    assert not apply_pass(EqualizeCrossLayerPass(), model).modified
    for name, array in _weights(model).items():
        np.testing.assert_array_equal(array, before[name], err_msg=name)


def test_few_iterations_leave_work_for_a_second_run():
    model = _separable()
    assert EqualizeCrossLayerPass(iterations=1)(model).modified
    assert EqualizeCrossLayerPass(iterations=1)(model).modified


@pytest.mark.parametrize("act", [
    ("LeakyRelu", {"alpha": 0.1}),
    ("Clip", {"inputs": ["zero"]}),
    ("MaxPool", {"kernel_shape": [1, 1]}),
    ("PRelu", {"inputs": ["slope"]}),
])
def test_positive_homogeneous_activations_are_crossed(apply_pass, act):
    inits = {"zero": np.array(0, np.float32), "slope": np.full((8, 1, 1), 0.2, np.float32)}
    model = _separable(act, extra_inits=inits)
    assert apply_pass(EqualizeCrossLayerPass(), model, atol=ATOL).modified
    w = _weights(model)
    np.testing.assert_allclose(np.abs(w["W1"]).reshape(8, -1).max(1), np.abs(w["W2"]).reshape(8, -1).max(1),
                               rtol=1e-2)


def test_relu6_ends_the_pair(apply_pass):
    inits = {"zero": np.array(0, np.float32), "six": np.array(6, np.float32)}
    model = _separable(("Clip", {"inputs": ["zero", "six"]}), extra_inits=inits)
    before = _weights(model)
    apply_pass(EqualizeCrossLayerPass(), model, atol=ATOL)  # the dw -> pw pair is still equalized
    after = _weights(model)
    np.testing.assert_array_equal(after["W1"], before["W1"])
    np.testing.assert_array_equal(after["B1"], before["B1"])


def test_old_clip_with_attributes(apply_pass):
    model = _separable(("Clip", {"min": 0.0}), opset=10)
    assert apply_pass(EqualizeCrossLayerPass(), model, atol=ATOL).modified
    assert not np.array_equal(_weights(model)["W1"], _separable()
                              .graph.initializers["W1"].const_value.numpy())  # type: ignore[union-attr]


def test_intermediate_with_another_consumer_is_left_alone(apply_pass):
    extra = (helper.make_node("Identity", ["a"], ["side"], name="side"),)
    model = _separable(extra_nodes=extra, outputs=("y", "side"))
    before = _weights(model)
    apply_pass(EqualizeCrossLayerPass(), model, atol=ATOL)
    after = _weights(model)
    np.testing.assert_array_equal(after["W1"], before["W1"])  # conv's output is seen by 'side'
    assert not np.array_equal(after["W3"], before["W3"])  # dw -> pw still equalized


def test_batchnorm_between_ends_the_pair(apply_pass):
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], name="c1"),
             helper.make_node("BatchNormalization", ["a", "s", "bb", "m", "v"], ["an"], name="bn"),
             helper.make_node("Relu", ["an"], ["ar"]),
             helper.make_node("Conv", ["ar", "W2"], ["y"], name="c2")]
    inits = {"W1": _spread(rng, 4, 3, 1, 1), "W2": _spread(rng, 2, 4, 1, 1),
             **{k: rng.uniform(0.5, 1.5, 4).astype(np.float32) for k in ("s", "bb", "m", "v")}}
    model = _model(nodes, inits, [1, 3, 4, 4], [1, 2, 4, 4])
    assert not apply_pass(EqualizeCrossLayerPass(), model).modified


def test_weights_that_are_not_constants_are_skipped(apply_pass):
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], name="c1"),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "W2"], ["y"], name="c2")]
    graph = helper.make_graph(nodes, "g", [_vi("x", [1, 3, 4, 4]), _vi("W2", [2, 4, 1, 1])], [_vi("y", [1, 2, 4, 4])],
                              [nh.from_array(_spread(rng, 4, 3, 1, 1), "W1")])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    feeds = {"x": rng.standard_normal((1, 3, 4, 4)).astype(np.float32),
             "W2": rng.standard_normal((2, 4, 1, 1)).astype(np.float32)}
    assert not apply_pass(EqualizeCrossLayerPass(), model, feeds).modified


def test_conv_then_flatten_gemm_is_not_a_pair(apply_pass):
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], name="c1"),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Flatten", ["ar"], ["f"]),
             helper.make_node("Gemm", ["f", "W2"], ["y"], name="fc")]
    model = _model(nodes, {"W1": _spread(rng, 4, 3, 1, 1), "W2": _spread(rng, 4, 2)}, [1, 3, 1, 1], [1, 2])
    assert not apply_pass(EqualizeCrossLayerPass(), model).modified


def test_dense_chain_gemm_matmul_add(apply_pass):
    """Gemm(transB) -> Relu -> MatMul + Add -> LeakyRelu -> Gemm(C, alpha, beta)."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Gemm", ["x", "W1", "C1"], ["a"], transB=1, name="fc1"),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("MatMul", ["ar", "W2"], ["m"], name="fc2"),
             helper.make_node("Add", ["m", "b2"], ["mb"], name="bias2"),
             helper.make_node("LeakyRelu", ["mb"], ["mr"], alpha=0.05),
             helper.make_node("Gemm", ["mr", "W3", "C3"], ["y"], alpha=0.5, beta=2.0, name="fc3")]
    inits = {"W1": _spread(rng, 16, 8), "C1": rng.standard_normal(16).astype(np.float32),
             "W2": _spread(rng, 12, 16).T.copy(), "b2": rng.standard_normal((1, 12)).astype(np.float32),
             "W3": _spread(rng, 4, 12).T.copy(), "C3": rng.standard_normal(4).astype(np.float32)}
    model = _model(nodes, inits, ["N", 8], ["N", 4])
    feeds = {"x": rng.standard_normal((5, 8)).astype(np.float32)}
    assert apply_pass(EqualizeCrossLayerPass(), model, feeds, atol=ATOL).modified
    w = _weights(model)
    np.testing.assert_allclose(np.abs(w["W1"]).max(1), np.abs(w["W2"]).max(1), rtol=1e-2)
    np.testing.assert_allclose(np.abs(w["W2"]).max(0), np.abs(w["W3"]).max(1), rtol=1e-2)
    assert w["b2"].shape == (1, 12)  # the bias keeps its shape


def test_shared_weight_is_copied(apply_pass):
    """W2 also feeds a second Conv outside the pair: that one must keep the original weights."""
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], name="c1"),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "W2"], ["y"], name="c2"),
             helper.make_node("Conv", ["x4", "W2"], ["z"], name="other")]
    inits = {"W1": _spread(rng, 4, 3, 1, 1), "W2": _spread(rng, 2, 4, 1, 1)}
    graph = helper.make_graph(nodes, "g", [_vi("x", [1, 3, 4, 4]), _vi("x4", [1, 4, 4, 4])],
                              [_vi("y", [1, 2, 4, 4]), _vi("z", [1, 2, 4, 4])],
                              [nh.from_array(v, k) for k, v in inits.items()])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    original = inits["W2"].copy()
    feeds = {n: rng.standard_normal((1, c, 4, 4)).astype(np.float32) for n, c in (("x", 3), ("x4", 4))}
    assert apply_pass(EqualizeCrossLayerPass(), model, feeds, atol=ATOL).modified
    other = next(n for n in model.graph if n.name == "other")
    np.testing.assert_array_equal(other.inputs[1].const_value.numpy(), original)  # type: ignore[union-attr]
    c2 = next(n for n in model.graph if n.name == "c2")
    assert c2.inputs[1] is not other.inputs[1]


def test_constant_node_weights_are_rewritten_in_place(apply_pass):
    rng = np.random.default_rng(8)
    w1, w2 = _spread(rng, 4, 3, 1, 1), _spread(rng, 2, 4, 1, 1)
    nodes = [helper.make_node("Constant", [], ["W1"], value=nh.from_array(w1)),
             helper.make_node("Constant", [], ["W2"], value=nh.from_array(w2)),
             helper.make_node("Conv", ["x", "W1"], ["a"], name="c1"),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "W2"], ["y"], name="c2")]
    model = _model(nodes, {}, [1, 3, 4, 4], [1, 2, 4, 4])
    assert apply_pass(EqualizeCrossLayerPass(), model, atol=ATOL).modified
    assert [n.op_type for n in model.graph].count("Constant") == 2
    assert not model.graph.initializers


def test_per_tensor_int8_gets_more_accurate():
    """The point of the pass: per-tensor int8 weights of a depthwise-separable chain."""
    rng = np.random.default_rng(9)
    calib = [{"x": rng.standard_normal((8, 3, 6, 6)).astype(np.float32)} for _ in range(4)]
    test = {"x": rng.standard_normal((32, 3, 6, 6)).astype(np.float32)}
    reference = run_model(_separable(), test)["y"]

    def sqnr(model: ir.Model) -> float:
        quantized = QuantizeStaticPass(calibration=calib, per_channel=False)(model).model
        out = run_model(quantized, test)["y"]
        return float(10 * np.log10((reference**2).sum() / ((out - reference) ** 2).sum()))

    plain = sqnr(_separable())
    equalized = _separable()
    EqualizeCrossLayerPass()(equalized)
    assert sqnr(equalized) > plain + 5  # measured: 24.1 dB -> 31.1 dB


def test_bad_options():
    with pytest.raises(PassOptionError, match="iterations must be >= 1"):
        EqualizeCrossLayerPass(iterations=0)
    with pytest.raises(PassOptionError, match="tolerance must be >= 0"):
        EqualizeCrossLayerPass(tolerance=-1.0)
