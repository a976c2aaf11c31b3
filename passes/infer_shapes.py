"""Fill in missing value types and shapes with ONNX shape inference."""

from __future__ import annotations

import logging

import onnx_ir as ir

from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.shapes import infer_shapes

logger = logging.getLogger(__name__)


class InferShapesPass(EdgeoptPass):
    """Add types and shapes that ONNX shape inference can prove, and nothing else.

    Nothing known is overwritten and graph inputs are never touched; subgraphs are
    visited, model-local functions are not. The rules: :func:`edgeopt.core.shapes.infer_shapes`.
    """

    name = "infer-shapes"

    def __init__(self, *, data_prop: bool = True) -> None:
        super().__init__()
        self.data_prop = data_prop

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        updated = infer_shapes(model, data_prop=self.data_prop)
        logger.info("infer-shapes: refined %d value(s)", updated)
        return ir.passes.PassResult(model, modified=updated > 0)
