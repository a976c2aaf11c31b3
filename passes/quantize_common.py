"""What the quantization passes share: pre-processing, ORT type names, data readers."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import onnx_ir as ir

from edgeopt.core.rewire import is_default_domain
from edgeopt.passes.convert_opset import ConvertOpsetPass
from edgeopt.passes.eliminate_identity import EliminateIdentityPass
from edgeopt.passes.fold_batchnorm import FoldBatchNormPass
from edgeopt.passes.fold_constants import FoldConstantsPass
from edgeopt.passes.infer_shapes import InferShapesPass
from edgeopt.passes.lift_constants import LiftConstantsPass
from edgeopt.passes.remove_unused import RemoveUnusedPass
from edgeopt.passes.topological_sort import TopologicalSortPass

logger = logging.getLogger(__name__)

QuantDType = Literal["int8", "uint8", "int16", "uint16", "int4", "uint4"]

def ort_type(name: str) -> Any:
    """ORT's ``QuantType`` for ``int8``, ``uint8``, ``int16``, ``uint16``, ``int4``, ``uint4``."""
    quant_type = import_quietly("onnxruntime.quantization.quant_utils").QuantType
    return {"int8": quant_type.QInt8, "uint8": quant_type.QUInt8, "int16": quant_type.QInt16,
            "uint16": quant_type.QUInt16, "int4": quant_type.QInt4, "uint4": quant_type.QUInt4}[name]

QUANTIZABLE_MIN_OPSET = 13
"""Per-channel DequantizeLinear (its ``axis``) needs opset 13."""


def prepare_for_quantization(model: ir.Model, *, min_opset: int = QUANTIZABLE_MIN_OPSET) -> None:
    """ORT-style pre-processing with our own passes, in place.

    Real models keep weights in Constant nodes, sit at old opsets and carry
    BatchNorm and Identity nodes; a quantizer must take them as they come:
    topological sort, weights lifted to initializers, constants folded,
    BatchNorm folded, dead code removed, the opset raised to ``min_opset``
    when below it, and shapes inferred (ORT's quantizer needs value types).
    """
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if opset < min_opset:
        logger.info("quantize: converting opset %d to %d first", opset, min_opset)
        ConvertOpsetPass(target_version=min_opset)(model)
    passes: list[ir.passes.PassBase] = [
        TopologicalSortPass(),
        LiftConstantsPass(min_elements=1),
        FoldConstantsPass(),
        EliminateIdentityPass(),
        FoldBatchNormPass(),
        RemoveUnusedPass(),
        InferShapesPass(),
    ]
    ir.passes.PassManager(passes, steps=1)(model)


@contextlib.contextmanager
def quiet_root_logging() -> Iterator[None]:
    """Keep ORT's quantization code from configuring logging.

    Some of its modules call ``logging.basicConfig(level=INFO)`` at import, and
    some functions call ``logging.warning()`` on the root logger, which does the
    same; with a handler already on the root logger, neither does anything.
    """
    root = logging.getLogger()
    guard = None if root.handlers else logging.NullHandler()
    if guard is not None:
        root.addHandler(guard)
    try:
        yield
    finally:
        if guard is not None:
            root.removeHandler(guard)


def import_quietly(module: str) -> Any:
    """Import an ORT quantization module under :func:`quiet_root_logging`."""
    with quiet_root_logging():
        return importlib.import_module(module)


def ir_from_ort(proto: Any) -> ir.Model:
    """An IR model from what ORT's quantizers return, topologically sorted (they append
    Q/DQ nodes after their consumers)."""
    model = ir.serde.deserialize_model(proto)
    model.graph.sort()
    return model


def unquantize_inputs(model: ir.Model, nodes: Iterable[str]) -> int:
    """Feed ``nodes`` float again where ORT's QDQ emitter gave them ``DQ(Q(x))``.

    ORT routes a quantized tensor's DequantizeLinear output to every consumer,
    excluded nodes included; a node kept in float should read the float tensor.
    Returns how many inputs were rewired (dead Q/DQ nodes are left to remove-unused).
    """
    wanted = set(nodes)
    rewired = 0
    for node in model.graph:
        if node.name not in wanted:
            continue
        for index, value in enumerate(node.inputs):
            dq = value.producer() if value is not None else None
            q = dq.inputs[0].producer() if dq is not None and dq.op_type == "DequantizeLinear" \
                and dq.inputs[0] is not None else None
            if q is not None and q.op_type == "QuantizeLinear" and q.inputs[0] is not None:
                node.replace_input_with(index, q.inputs[0])
                rewired += 1
    return rewired


def unquantize_float_consumers(model: ir.Model, quantized_types: Iterable[str]) -> int:
    """Feed float nodes the float tensor where ORT's QDQ emitter gave them ``DQ(Q(x))``.

    A tensor quantized for one consumer (a MatMul) reaches every other consumer through the same
    DequantizeLinear, and ORT quantizes a MatMul's output as well: a bias or residual Add, a
    LayerNorm or a GELU then computes on quantization error it need not have (in a transformer, every
    layer's residual stream). A node whose op type is not quantized reads ``x`` itself where that is
    free: ``x`` comes from a graph input or a float node (its float value exists anyway), or from a
    MatMul/Gemm whose quantized output only float nodes read (the Quantize then goes, and ORT runs
    the layer as MatMulIntegerToFloat / QGemm with a float output; after a Conv it would cost the
    int8 output fusion, so it stays). On all-MiniLM-L6-v2 (static a8w8 of its MatMuls and tables)
    embedding cosine 0.937 -> 0.993. Returns how many inputs were rewired (dead Q/DQ nodes are
    left to remove-unused).
    """
    quantized = set(quantized_types) | {"QuantizeLinear", "DequantizeLinear"}

    def is_float(node: ir.Node) -> bool:
        return node.op_type not in quantized

    rewired = 0
    for node in list(model.graph):
        source = _quantized_source(node.outputs[0]) if node.op_type == "DequantizeLinear" else None
        if source is None:
            continue
        producer = source.producer()
        readers = [user for user, _ in node.outputs[0].uses()]
        if _reads_dequantized(producer) and not (
                producer is not None and producer.op_type in FLOAT_OUTPUT_INTEGER_OPS and all(map(is_float, readers))):
            continue
        for user, index in list(node.outputs[0].uses()):
            if is_float(user):
                user.replace_input_with(index, source)
                rewired += 1
    return rewired


FLOAT_OUTPUT_INTEGER_OPS = ("MatMul", "Gemm")
"""Integer ops ORT runs as well with a float output (MatMulIntegerToFloat, QGemm without y_scale)."""


def _quantized_source(value: ir.Value | None) -> ir.Value | None:
    """``x`` where ``value`` is ``DequantizeLinear(QuantizeLinear(x))``, else None."""
    dq = value.producer() if value is not None else None
    if dq is None or dq.op_type != "DequantizeLinear" or dq.inputs[0] is None:
        return None
    q = dq.inputs[0].producer()
    return q.inputs[0] if q is not None and q.op_type == "QuantizeLinear" else None


def _reads_dequantized(node: ir.Node | None) -> bool:
    """An integer node of the QDQ graph (one of its inputs is a DequantizeLinear output)."""
    return node is not None and any(
        v is not None and v.producer() is not None and v.producer().op_type == "DequantizeLinear"  # type: ignore[union-attr]
        for v in node.inputs)


def shape_nodes(model: ir.Model) -> list[str]:
    """Main-graph nodes whose first input is not a float tensor (shape arithmetic,
    index math): nothing to quantize there, so they are excluded up front."""
    names = []
    for node in model.graph:
        first = node.inputs[0] if node.inputs else None
        if node.name and (first is None or first.dtype is None or not first.dtype.is_floating_point()):
            names.append(node.name)
    return names


TRANSFORMER_OP_TYPES = ("MatMul", "Gemm", "Gather")
"""What static int8 quantizes by default in a transformer. Quantizing LayerNorm, Softmax,
residual Adds and GELU as well took all-MiniLM-L6-v2's embedding cosine from 0.94 to 0.38
(bench/quantize_prepasses.py); the MatMuls hold the MACs and Gather the embedding tables
(without it the file stays 59 MB instead of 23 MB; tables get a scale per row, see
:mod:`edgeopt.passes.quantize_tables`). With the float path kept float
(:func:`unquantize_float_consumers`) the cosine is 0.993."""


def is_transformer_like(model: ir.Model) -> bool:
    """A LayerNormalization, or a Softmax fed by a MatMul of two computed tensors (attention)."""
    for node in model.graph:
        if node.op_type == "LayerNormalization" and is_default_domain(node):
            return True
        if node.op_type == "Softmax" and _attention_scores(node):
            return True
    return False


def _attention_scores(softmax: ir.Node) -> bool:
    seen, frontier = 0, [softmax.inputs[0]]
    while frontier and seen < 8:  # a few elementwise steps (scale, mask Add) back from the Softmax
        value = frontier.pop()
        producer = value.producer() if value is not None else None
        if producer is None:
            continue
        seen += 1
        if producer.op_type == "MatMul":
            return all(v is not None and v.const_value is None and not v.is_initializer()
                       for v in producer.inputs)
        if producer.op_type in ("Add", "Mul", "Div", "Sub", "Where", "Cast"):
            frontier.extend(v for v in producer.inputs if v is not None)
    return False
