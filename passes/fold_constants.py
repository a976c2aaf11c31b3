"""Evaluate nodes whose inputs are all constants, with onnxscript's folder."""

from __future__ import annotations

import logging

import onnx_ir as ir

from edgeopt.pass_base import EdgeoptPass
from onnxscript.optimizer import _constant_folding

logger = logging.getLogger(__name__)


class FoldConstantsPass(EdgeoptPass):
    """Replace constant subexpressions by initializers (onnxscript's constant folder).

    Folding is limited by tensor size so that a small expression never turns into
    a large stored tensor. The folder skips control flow, random ops and nodes
    fed by graph inputs (IR < 4 initializers listed as inputs stay overridable),
    and keeps graph output names. Subgraphs and model functions are visited.

    Args:
        input_size_limit: Largest input (elements) a folded node may read.
        output_size_limit: Largest output (elements) a folded node may create.
    """

    name = "fold-constants"

    def __init__(self, *, input_size_limit: int = 8192, output_size_limit: int = 262144) -> None:
        super().__init__()
        self.input_size_limit = input_size_limit
        self.output_size_limit = output_size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folder = _constant_folding.FoldConstantsPass(
            shape_inference=False,
            input_size_limit=self.input_size_limit,
            output_size_limit=self.output_size_limit,
        )
        result = folder(model)
        logger.info("fold-constants: %s", "folded" if result.modified else "nothing to fold")
        return ir.passes.PassResult(model, modified=result.modified)
