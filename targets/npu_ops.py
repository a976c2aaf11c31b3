"""Which ONNX ops an NPU execution provider of ONNX Runtime takes, and the partition table.

The op lists are the op builders registered in ONNX Runtime's own sources (an op
without a builder always falls back to the CPU EP; one with a builder may still
be refused for its attributes or dtypes at session time, which only the device
can tell):

- QNN (Qualcomm HTP): ``onnxruntime/core/providers/qnn/builder/op_builder_factory.cc``
  (main branch, 2025), which the QNN EP docs' "Supported ONNX operators" table follows.
- NNAPI (Android): ``onnxruntime/core/providers/nnapi/nnapi_builtin/builders/op_builder_factory.cc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import onnx_ir as ir

Ep = Literal["qnn", "nnapi"]

QNN_OPS = frozenset({
    "Abs", "Add", "And", "ArgMax", "ArgMin", "Asin", "Atan", "AveragePool", "BatchNormalization", "Cast",
    "Ceil", "Clip", "Concat", "Conv", "ConvTranspose", "Cos", "CumSum", "DepthToSpace", "DequantizeLinear",
    "Div", "Einsum", "Elu", "Equal", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements",
    "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
    "GridSample", "GroupNormalization", "GRU", "HardSigmoid", "HardSwish", "Identity",
    "InstanceNormalization", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "LogSoftmax", "LpNormalization", "LRN", "LSTM", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mod", "Mul",
    "Neg", "NonZero", "Not", "Or", "Pad", "Pow", "PRelu", "QuantizeLinear", "Reciprocal", "ReduceL2",
    "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "Relu", "Reshape", "Resize",
    "RMSNormalization", "RoiAlign", "Round", "ScatterElements", "ScatterND", "Selu", "Sigmoid", "Sign", "Sin",
    "Slice", "Softmax", "Softplus", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "STFT", "Sub", "Sum", "Tan",
    "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Unsqueeze", "Upsample", "Where", "Xor",
})
QNN_MS_OPS = frozenset({"FusedMatMul", "MatMulNBits", "QuickGelu", "RotaryEmbedding",
                        "SimplifiedLayerNormalization", "Inverse"})

NNAPI_OPS = frozenset({
    "Abs", "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Conv", "DepthToSpace",
    "DequantizeLinear", "Div", "Elu", "Exp", "Flatten", "Floor", "Gather", "Gemm", "GlobalAveragePool",
    "GlobalMaxPool", "Identity", "LeakyRelu", "Log", "LRN", "MatMul", "Max", "MaxPool", "Min", "Mul", "Neg",
    "Pad", "Pow", "PRelu", "QLinearConv", "QLinearMatMul", "QuantizeLinear", "ReduceMean", "Relu", "Reshape",
    "Resize", "Sigmoid", "Sin", "Slice", "Softmax", "Sqrt", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze",
})
NNAPI_MS_OPS = frozenset({"QLinearAdd", "QLinearMul", "QLinearAveragePool", "QLinearSigmoid"})

EP_NAMES = {"qnn": "QNN HTP", "nnapi": "NNAPI"}


@dataclass(frozen=True)
class Placement:
    """Where one node runs: on the NPU, or on the CPU EP (with why)."""

    node: str
    op: str
    device: Literal["npu", "cpu"]
    reason: str = ""


def supports(ep: Ep, node: ir.Node) -> bool:
    """Whether ``ep`` has an op builder for ``node``'s op type."""
    default, microsoft = (QNN_OPS, QNN_MS_OPS) if ep == "qnn" else (NNAPI_OPS, NNAPI_MS_OPS)
    if node.domain in ("", "ai.onnx"):
        return node.op_type in default
    return node.domain == "com.microsoft" and node.op_type in microsoft


def partition(model: ir.Model, ep: Ep) -> list[Placement]:
    """Every main-graph node with the device it lands on (nodes in subgraphs go with their parent).

    ``Constant`` nodes are left out: ORT turns them into initializers when it loads a model.
    """
    name = EP_NAMES[ep]
    table = []
    for index, node in enumerate(model.graph):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            continue
        label = node.name or f"#{index}"
        op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        if supports(ep, node):
            table.append(Placement(label, op, "npu"))
        else:
            table.append(Placement(label, op, "cpu", f"{name} has no builder for {op}"))
    return table


def summary(table: list[Placement], ep: Ep) -> str:
    """One line: how many nodes run on the NPU and which ops fall back."""
    on_cpu = sorted({p.op for p in table if p.device == "cpu"})
    npu = sum(p.device == "npu" for p in table)
    fallback = f"; CPU fallback: {', '.join(on_cpu)}" if on_cpu else "; no CPU fallback"
    return f"{EP_NAMES[ep]} partition: {npu} of {len(table)} node(s) on the NPU{fallback}"
