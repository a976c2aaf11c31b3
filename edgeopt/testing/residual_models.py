"""Small residual models for the layer-dropping tests and docs, built with ``onnx.helper``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx import numpy_helper as nh


def residual_mlp(
    blocks: int = 3,
    *,
    width: int = 16,
    classes: int = 10,
    identity: Sequence[int] = (),
    seed: int = 0,
) -> onnx.ModelProto:
    """``x[N, width] -> blocks x (x + relu(x A_i) B_i) -> x W -> logits[N, classes]``.

    Block ``i`` in ``identity`` has ``B_i = 0``, so it is the identity by construction.
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    for i in range(blocks):
        a = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        b = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        if i in identity:
            b[:] = 0
        inits += [nh.from_array(a, f"A{i}"), nh.from_array(b, f"B{i}")]
        nodes += [helper.make_node("MatMul", [x, f"A{i}"], [f"h{i}"], name=f"fc{i}a"),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"),
                  helper.make_node("MatMul", [f"r{i}", f"B{i}"], [f"f{i}"], name=f"fc{i}b"),
                  helper.make_node("Add", [x, f"f{i}"], [f"x{i + 1}"], name=f"add{i}")]
        x = f"x{i + 1}"
    inits.append(nh.from_array(rng.standard_normal((width, classes)).astype(np.float32), "W"))
    inits.append(nh.from_array(rng.standard_normal(classes).astype(np.float32), "bias"))
    nodes += [helper.make_node("MatMul", [x, "W"], ["z"], name="head"),
              helper.make_node("Add", ["z", "bias"], ["logits"], name="head_bias")]
    graph = helper.make_graph(
        nodes, "residual_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def residual_cnn(blocks: int = 3, *, channels: int = 4, seed: int = 0) -> onnx.ModelProto:
    """``x[N, C, 6, 6] -> blocks x relu(x + conv1x1(relu(depthwise3x3(x)))) -> pool -> Gemm -> logits[N, 10]``."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    for i in range(blocks):
        inits += [nh.from_array((rng.standard_normal((channels, 1, 3, 3)) / 3).astype(np.float32), f"D{i}"),
                  nh.from_array(rng.standard_normal(channels).astype(np.float32) / 4, f"d{i}"),
                  nh.from_array((rng.standard_normal((channels, channels, 1, 1)) / 2).astype(np.float32), f"P{i}")]
        nodes += [helper.make_node("Conv", [x, f"D{i}", f"d{i}"], [f"h{i}"], name=f"dw{i}", group=channels,
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}a"),
                  helper.make_node("Conv", [f"r{i}", f"P{i}"], [f"f{i}"], name=f"pw{i}"),
                  helper.make_node("Add", [x, f"f{i}"], [f"s{i}"], name=f"add{i}"),
                  helper.make_node("Relu", [f"s{i}"], [f"x{i + 1}"], name=f"relu{i}b")]
        x = f"x{i + 1}"
    inits.append(nh.from_array(rng.standard_normal((10, channels)).astype(np.float32), "W"))
    inits.append(nh.from_array(rng.standard_normal(10).astype(np.float32), "bias"))
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"),
              helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "W", "bias"], ["logits"], name="head", transB=1)]
    graph = helper.make_graph(
        nodes, "residual_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model
