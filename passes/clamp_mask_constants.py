"""Clamp "minus infinity" float constants (additive attention masks) to a finite -limit.

Transformer exports build the attention mask as ``scores + mask`` with
``mask = finfo(float32).min`` (-3.4e38) or ``-inf`` on padded positions. Any
quantizer then sees a tensor whose range spans 1e38: one uint8 or uint16 step is
~1e34 and every real attention score rounds to 0 (all-MiniLM-L6-v2 in QDQ gave
a cosine of 0.46 to float even with 16-bit activations). Replaced by -100,
``softmax`` still gives masked positions a weight of at most ``exp(-100 + spread)``
(below 1e-30 for any realistic spread of scores), so the float model's outputs
are unchanged to float32 precision, and the same export reaches a cosine of
0.9992 with 16-bit activations.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgeopt.core.errors import PassOptionError
from edgeopt.core.pass_base import EdgeoptPass

logger = logging.getLogger(__name__)


class ClampMaskConstantsPass(EdgeoptPass):
    """Replace float constant elements at or below ``-threshold`` (and ``-inf``) by ``-limit``.

    Initializers (not graph inputs) and ``Constant`` node tensors are visited, in
    the main graph and subgraphs; model-local functions are not. Only negative
    extremes are touched: they are what additive masks use. Graph inputs and
    outputs are unchanged.

    Args:
        limit: The value masked elements become (negated): 100 by default.
        threshold: Elements at or below ``-threshold`` count as "minus infinity".
    """

    name = "clamp-mask-constants"

    def __init__(self, *, limit: float = 100.0, threshold: float = 1e30) -> None:
        super().__init__()
        if not 0 < limit < threshold:
            raise PassOptionError(f"clamp-mask-constants: need 0 < limit < threshold, got limit={limit}, "
                                  f"threshold={threshold}.")
        self.limit = limit
        self.threshold = threshold

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        clamped = 0
        for graph in model.graphs():
            for value in graph.initializers.values():
                if not value.is_graph_input() and value.const_value is not None:
                    tensor = self._clamped(value.const_value, value.name)
                    if tensor is not None:
                        value.const_value = tensor
                        clamped += 1
            for node in graph:
                attr = node.attributes.get("value")
                if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and attr is not None \
                        and attr.type == ir.AttributeType.TENSOR:
                    tensor = self._clamped(attr.as_tensor(), node.outputs[0].name)
                    if tensor is not None:
                        node.attributes["value"] = ir.AttrTensor("value", tensor)
                        node.outputs[0].const_value = tensor
                        clamped += 1
        logger.info("clamp-mask-constants: clamped %d constant(s) to -%g", clamped, self.limit)
        return ir.passes.PassResult(model, modified=clamped > 0)

    def _clamped(self, tensor: ir.TensorProtocol, name: str | None) -> ir.TensorProtocol | None:
        if tensor.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16):
            return None
        array = tensor.numpy()
        extreme = array <= -self.threshold
        if not extreme.any():
            return None
        logger.debug("clamp-mask-constants: %s: %d element(s) -> -%g", name, int(extreme.sum()), self.limit)
        return ir.tensor(np.where(extreme, np.asarray(-self.limit, array.dtype), array), name=tensor.name)
