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

from collections.abc import Collection
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


FLOAT_NOTE = "left in float by the quantizer: runs in float (fp16 on QNN HTP), not in the QDQ precision"


def partition(model: ir.Model, ep: Ep, *, unquantized: Collection[int] = ()) -> list[Placement]:
    """Every main-graph node with the device it lands on (nodes in subgraphs go with their parent).

    ``Constant`` nodes are left out: ORT turns them into initializers when it loads a model.
    ``unquantized``: indices (in ``model.graph``) of nodes the QDQ artifact computes in float
    (:func:`unquantized_nodes`); their NPU placements say so.
    """
    name = EP_NAMES[ep]
    table = []
    for index, node in enumerate(model.graph):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            continue
        label = node.name or f"#{index}"
        op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        if supports(ep, node):
            table.append(Placement(label, op, "npu", FLOAT_NOTE if index in unquantized else ""))
        else:
            table.append(Placement(label, op, "cpu", f"{name} has no builder for {op}"))
    return table


def summary(table: list[Placement], ep: Ep) -> str:
    """One line: how many nodes run on the NPU, which ops fall back, which stay float."""
    on_cpu = sorted({p.op for p in table if p.device == "cpu"})
    npu = sum(p.device == "npu" for p in table)
    fallback = f"; CPU fallback: {', '.join(on_cpu)}" if on_cpu else "; no CPU fallback"
    floats = sorted({p.op for p in table if p.device == "npu" and p.reason == FLOAT_NOTE})
    if floats:
        fallback += f"; not quantized (float on the NPU): {', '.join(floats)}"
    return f"{EP_NAMES[ep]} partition: {npu} of {len(table)} node(s) on the NPU{fallback}"


_QDQ = ("QuantizeLinear", "DequantizeLinear")
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16)


def unquantized_nodes(float_model: ir.Model, quantized: ir.Model) -> set[int]:
    """Indices (in ``float_model.graph``) of the nodes that ``quantized``, its QDQ form, still computes in float.

    A node is float when a float activation reaches it from anything but a ``DequantizeLinear``, or a
    float output of it goes anywhere but a ``QuantizeLinear``. The QDQ quantizer keeps the original
    nodes in order, inserts Q/DQ pairs and drops a ``Relu``/``Clip`` it folds into the range before
    it; so the nodes are paired in order, skipping float nodes with no counterpart. If the quantized
    graph has a node left over, the pairing failed and nothing is claimed (empty set).
    """
    def compute(model: ir.Model) -> list[tuple[int, ir.Node]]:
        return [(i, n) for i, n in enumerate(model.graph) if not (n.op_type in (*_QDQ, "Constant")
                                                                  and n.domain in ("", "ai.onnx"))]

    kept = iter(compute(quantized))
    pairs, pending = [], next(kept, None)
    for index, node in compute(float_model):
        if pending is not None and pending[1].op_type == node.op_type:
            pairs.append((index, pending[1]))
            pending = next(kept, None)
    if pending is not None:
        return set()
    outputs = set(quantized.graph.outputs)
    floats = set()
    for index, node in pairs:
        inputs = [v for v in node.inputs if v is not None and v.dtype in _FLOATS and not v.is_initializer()
                  and v.const_value is None]
        if any(getattr(v.producer(), "op_type", None) != "DequantizeLinear" for v in inputs) or any(
                o.dtype in _FLOATS and (o in outputs or any(c.op_type != "QuantizeLinear" for c, _ in o.uses()))
                for o in node.outputs):
            floats.add(index)
    return floats
