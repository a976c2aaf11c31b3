"""Tests for quantize-dynamic: int8 MatMul weights, activations quantized at run time.

Dynamic quantization picks each activation's range per batch, so there is no
calibrated scale to count steps in; the outputs are compared by relative error
(norm of the difference over the norm of the float output). With int8 weights and
uint8 activations on these 2-layer MLPs it is about 1 %.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.core.runtime import run_model
from edgeopt.passes import QuantizeDynamicPass

# 8-bit rounding of weights and activations gives ~1 % here; 3 % fails a wrong
# scale or zero point (tens of %) without flaking.
MAX_RELATIVE_ERROR = 0.03


def _vi(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _mlp() -> ir.Model:
    """x[N, 32] -> MatMul(32 -> 64) -> Relu -> MatMul(64 -> 16) -> y."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")],
        "mlp", [_vi("x", ["N", 32])], [_vi("y", ["N", 16])],
        [nh.from_array((rng.standard_normal((32, 64)) / 6).astype(np.float32), "W1"),
         nh.from_array((rng.standard_normal((64, 16)) / 8).astype(np.float32), "W2")])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)}


def _quantize(**options: object) -> tuple[ir.Model, float]:
    """Quantize a fresh MLP; return it and its relative output error."""
    model = _mlp()
    reference = run_model(model, _feeds())["y"]
    weights = {name: v.const_value.numpy() for name, v in model.graph.initializers.items()}
    signature = [(v.name, v.dtype) for v in (*model.graph.inputs, *model.graph.outputs)]

    QuantizeDynamicPass(**options)(model)  # type: ignore[arg-type]

    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    assert [(v.name, v.dtype) for v in (*model.graph.inputs, *model.graph.outputs)] == signature
    got = run_model(model, _feeds())["y"]
    assert got.dtype == np.float32
    model.meta["float_weights"] = weights
    return model, float(np.linalg.norm(got - reference) / np.linalg.norm(reference))


def _ops(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
def test_matmuls_become_integer_and_stay_close(per_channel: bool) -> None:
    model, error = _quantize(per_channel=per_channel)

    ops = _ops(model)
    assert ops.count("MatMulInteger") == 2 and ops.count("DynamicQuantizeLinear") == 2
    assert "MatMul" not in ops
    assert error < MAX_RELATIVE_ERROR, error


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
def test_weight_scales(per_channel: bool) -> None:
    model, _ = _quantize(per_channel=per_channel, cpu="x86-vnni")  # int8 weights as emitted (no uint8 storage)

    weight = model.meta["float_weights"]["W1"]
    scale = model.graph.initializers["W1_scale"].const_value.numpy()
    # Symmetric int8: max|w| / 127, per output column (axis 1 of a MatMul weight) or overall.
    expected = np.abs(weight).max(0) / 127 if per_channel else np.abs(weight).max() / 127
    assert scale.shape == np.shape(expected)
    np.testing.assert_allclose(scale, expected, rtol=1e-6)
    assert model.graph.initializers["W1_quantized"].const_value.numpy().dtype == np.int8


def test_per_channel_is_at_least_as_accurate() -> None:
    _, per_channel = _quantize(per_channel=True)
    _, per_tensor = _quantize(per_channel=False)
    assert per_channel <= per_tensor * 1.05, (per_channel, per_tensor)


def test_exclude_keeps_matmul_float() -> None:
    model, error = _quantize(exclude=("mm2",))

    mm2 = next(node for node in model.graph if node.name == "mm2")
    assert mm2.op_type == "MatMul"
    assert mm2.inputs[1].name == "W2" and mm2.inputs[1].dtype == ir.DataType.FLOAT
    np.testing.assert_array_equal(mm2.inputs[1].const_value.numpy(), model.meta["float_weights"]["W2"])
    assert _ops(model).count("MatMulInteger") == 1
    assert error < MAX_RELATIVE_ERROR, error


def test_op_types_limits_what_is_quantized() -> None:
    model, error = _quantize(op_types=("Gemm",))

    assert "MatMulInteger" not in _ops(model) and _ops(model).count("MatMul") == 2
    assert error == 0.0


def test_uint8_weights() -> None:
    model, error = _quantize(weight_type="uint8")

    assert model.graph.initializers["W1_quantized"].const_value.numpy().dtype == np.uint8
    assert error < MAX_RELATIVE_ERROR, error


def test_codebook_clustered_convs_stay_float_and_the_rest_quantizes():
    """A Conv whose weight a codebook decodes at run time cannot be ConvInteger (ORT wants an
    initializer): it stays float instead of failing the whole model."""
    from edgeopt.cli.demo_model import ONNX_MODEL
    from edgeopt.core.model_io import load_model
    from edgeopt.core.runtime import random_feeds
    from edgeopt.passes import ClusterWeightsPass

    model = load_model(ONNX_MODEL)
    ClusterWeightsPass(clusters=16, min_elements=256)(model)
    feeds = random_feeds(model)
    expected = run_model(model, feeds)["logits"]

    assert QuantizeDynamicPass(op_types=("Conv", "MatMul", "Gemm"), cpu=None)(model).modified

    ops = [n.op_type for n in model.graph]
    assert "ConvInteger" in ops or "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    decoded_convs = [n for n in model.graph if n.op_type == "Conv" and not n.inputs[1].is_initializer()]
    assert decoded_convs  # the clustered ones, still float
    got = run_model(model, feeds)["logits"]
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.05
