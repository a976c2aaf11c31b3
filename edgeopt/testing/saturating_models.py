"""Small float models built to saturate ONNX Runtime's u8 x s8 int8 kernels on x86 without VNNI.

Every weight of an output channel has the same sign and a magnitude near the
channel's largest, so per-channel int8 weights sit near +-127 and each pair of
neighbours adds up to far more than 128; the inputs are positive and large, so
their uint8 codes are near 255. ``255 * (127 + 120)`` does not fit an int16.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.core.runtime import Feeds


def saturating_conv(channels: int = 32, filters: int = 16, size: int = 8) -> ir.Model:
    """``x[N, channels, size, size]`` -> Conv 3x3 (pads 1) -> ``y``; weights one sign per filter."""
    rng = np.random.default_rng(0)
    signs = np.where(np.arange(filters) % 2 == 0, 1.0, -1.0)[:, None, None, None]
    weight = (rng.uniform(0.8, 1.0, (filters, channels, 3, 3)) * signs).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1])], "saturating_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", filters, size, size])],
        [nh.from_array(weight, "W")])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def saturating_matmul(depth: int = 256, width: int = 64) -> ir.Model:
    """``x[N, depth]`` @ ``W[depth, width]`` -> ``y``; each column one sign."""
    rng = np.random.default_rng(1)
    signs = np.where(np.arange(width) % 2 == 0, 1.0, -1.0)[None, :]
    weight = (rng.uniform(0.8, 1.0, (depth, width)) * signs).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")], "saturating_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", depth])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])], [nh.from_array(weight, "W")])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def large_positive_feeds(model: ir.Model, batches: int = 4, rows: int = 2, seed: int = 0) -> list[Feeds]:
    """Inputs uniform in [3, 4]: every uint8 code is near the top of the calibrated range."""
    rng = np.random.default_rng(seed)
    value = model.graph.inputs[0]
    shape = [d if isinstance(d, int) else rows for d in (value.shape or [])]
    name = value.name or "x"
    return [{name: rng.uniform(3.0, 4.0, shape).astype(np.float32)} for _ in range(batches)]
