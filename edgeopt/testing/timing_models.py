"""Models whose run time is set by construction, for the tests of side-by-side timing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def matmul_chain(path: Path, layers: int, *, batch: int | str = "batch", tokens: int = 64, width: int = 256) -> Path:
    """x ``[batch, tokens, width]`` through ``layers`` width x width MatMuls then a Relu (0 layers: the Relu
    alone), saved at ``path``: ``layers * tokens * width**2`` MACs a sample."""
    rng = np.random.default_rng(layers)
    weights = [numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
                                       f"w{i}") for i in range(layers)]
    names = ["x", *[f"h{i}" for i in range(layers)]]
    nodes = [helper.make_node("MatMul", [names[i], f"w{i}"], [names[i + 1]], name=f"mm{i}") for i in range(layers)]
    nodes.append(helper.make_node("Relu", [names[-1]], ["y"], name="relu"))
    shape = [batch, tokens, width]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path
