"""The Conv least-squares refit recovers a convolution from its inputs and ONNX Runtime's outputs."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.blocks.conv_refit import conv_projection
from edgeopt.core.rewire import ConstantWriter
from edgeopt.core.runtime import run_model


def _conv_model(group: int, strides: list[int], pads: list[int], dilations: list[int], seed: int) -> ir.Model:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((8, 8 // group, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", group=group, strides=strides, pads=pads,
                            dilations=dilations)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [nh.from_array(weight, "W"), nh.from_array(bias, "B")])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize(("group", "strides", "pads", "dilations"), [
    (1, [1, 1], [1, 1, 1, 1], [1, 1]),
    (8, [2, 2], [1, 0, 2, 1], [1, 1]),  # depthwise, strided, asymmetric pads
    (2, [1, 2], [0, 0, 0, 0], [2, 1]),  # grouped, dilated
])
def test_refit_recovers_the_convolution(group: int, strides: list[int], pads: list[int], dilations: list[int]) -> None:
    teacher = _conv_model(group, strides, pads, dilations, seed=0)
    student = _conv_model(group, strides, pads, dilations, seed=1)
    projection = conv_projection(next(iter(student.graph)))
    assert projection is not None
    systems = projection.systems()
    assert len(systems) == group
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = rng.standard_normal((4, 8, 9, 9)).astype(np.float32)
        projection.add(systems, x, run_model(teacher, {"x": x})["y"])
    projection.write(next(iter(student.graph)), ConstantWriter(student), systems, ridge=1e-9)
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(run_model(student, {"x": x})["y"], run_model(teacher, {"x": x})["y"],
                               rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(student.graph.initializers["W"].const_value.numpy(),  # type: ignore[union-attr]
                               teacher.graph.initializers["W"].const_value.numpy(),  # type: ignore[union-attr]
                               atol=1e-3)
