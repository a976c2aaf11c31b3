"""Convert float32 weights and activations to float16, keeping float32 graph I/O.

The graph is rewritten by ONNX Runtime's own converter
(``onnxruntime.transformers.float16.convert_float_to_float16``), the one ORT's
GPU tooling uses, rather than a hand-written one: it already casts around
blocked nodes, keeps Cast targets and value_info consistent, walks subgraphs
and clamps weights into float16's range. This wrapper fixes the settings
(float32 inputs/outputs kept, ORT's list of ops without float16 kernels always
blocked) and adds a block list of numerically fragile ops.

Why those ops stay float32 (float16: max 65504, 11-bit mantissa):

- ``Exp``, ``Pow``, ``Log``, ``Reciprocal``: overflow or lose all precision on
  ordinary inputs (``exp(x)`` overflows above x = 11.1; ``x ** 2`` above 256).
- ``Softmax``, ``LogSoftmax``: an exponential and a sum over a whole axis.
- ``ReduceSum``, ``ReduceMean``, ``ReduceSumSquare``, ``ReduceL2``,
  ``ReduceLogSumExp``, ``ReduceProd``: long accumulations (the mean and
  variance of a decomposed LayerNorm); a sum of 4096 values of 1.0 already
  rounds in float16.
- ``Range``, ``CumSum`` and the shape ops are in ORT's default list (or work on
  integers, which the converter never touches).

``LayerNormalization`` is not blocked: its float16 kernels accumulate in float32.

``QuantizeLinear`` and ``DequantizeLinear`` (:data:`QUANTIZE_OPS`) always stay
float32: below opset 19 their scale must be float32 (ORT rejects a model whose
DequantizeLinear has a float16 scale), and the int8/int4 tensors they decode
would not shrink anyway. A quantized model's remaining float ops are converted
between Casts, which is valid; whether it is worth it is the caller's question
(after static QDQ quantization it is not on ORT CPU: the Casts between each
DequantizeLinear and its op stop ORT from fusing them into int8 kernels).
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from edgeopt.core.pass_base import EdgeoptPass, adopt
from edgeopt.passes.quantize_common import ir_from_ort, quiet_root_logging

logger = logging.getLogger(__name__)

FRAGILE_OPS: tuple[str, ...] = (
    "Exp", "Pow", "Log", "Reciprocal", "Softmax", "LogSoftmax",
    "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd",
)
"""Op types kept in float32 by default, on top of ORT's ``DEFAULT_OP_BLOCK_LIST``."""

QUANTIZE_OPS: tuple[str, ...] = ("QuantizeLinear", "DequantizeLinear")
"""Op types always kept in float32, whatever ``op_block_list`` says (their scales must be float32 below opset 19)."""


class ConvertFloat16Pass(EdgeoptPass):
    """Store weights and compute activations in float16; graph inputs/outputs stay float32.

    Nodes whose op type is in ``op_block_list`` (default: :data:`FRAGILE_OPS`), in
    :data:`QUANTIZE_OPS` or in ORT's list of ops without float16 kernels, and nodes named in
    ``node_block_list``, stay float32 with Casts around them. Graph input and
    output names and dtypes are kept (a Cast is added after each float input and
    before each float output). Subgraphs are converted too. A model with no
    float32 node outside the block lists is left alone (``modified=False``), so the pass is idempotent.

    Args:
        op_block_list: Op types that stay float32 (added to ORT's default list).
        node_block_list: Node names that stay float32.
        keep_io_types: Keep float32 graph inputs and outputs.
    """

    name = "convert-fp16"
    preserves_semantics = False

    def __init__(
        self,
        *,
        op_block_list: tuple[str, ...] = FRAGILE_OPS,
        node_block_list: tuple[str, ...] = (),
        keep_io_types: bool = True,
    ) -> None:
        super().__init__()
        self.op_block_list = tuple(op_block_list)
        self.node_block_list = tuple(node_block_list)
        self.keep_io_types = keep_io_types

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.transformers import float16

        blocked = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(self.op_block_list) | set(QUANTIZE_OPS))
        if not _has_float32_compute(model, set(blocked), set(self.node_block_list)):
            logger.info("convert-fp16: no float32 node to convert")
            return ir.passes.PassResult(model, modified=False)
        with quiet_root_logging():
            proto = float16.convert_float_to_float16(
                ir.serde.serialize_model(model), keep_io_types=self.keep_io_types,
                op_block_list=blocked, node_block_list=list(self.node_block_list),
            )
        converted = ir_from_ort(proto)
        _type_initializers_as_stored(converted)
        adopt(model, converted)
        kept = sum(1 for n in model.graph if n.op_type in blocked or n.name in self.node_block_list)
        logger.info("convert-fp16: converted to float16, %d node(s) kept in float32", kept)
        return ir.passes.PassResult(model, modified=True)


def _type_initializers_as_stored(model: ir.Model) -> None:
    """Give each initializer its tensor's dtype: ORT's converter leaves the float32 scales of blocked
    DequantizeLinear nodes as they are but records them as float16 in value_info (the checker rejects that)."""
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None and value.dtype != tensor.dtype:
            value.type = ir.TensorType(tensor.dtype)


def _has_float32_compute(model: ir.Model, blocked: set[str], nodes: set[str]) -> bool:
    """Whether a node that may be converted (not a Cast, not blocked) computes in float32."""
    return any(
        node.op_type != "Cast" and node.op_type not in blocked and node.name not in nodes
        and any(o.dtype in (ir.DataType.FLOAT, None) for o in node.outputs)  # None: not inferred yet
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
    )
