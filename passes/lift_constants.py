"""Turn ``Constant`` nodes holding tensors into initializers."""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from edgeopt.core.pass_base import EdgeoptPass

logger = logging.getLogger(__name__)


class LiftConstantsPass(EdgeoptPass):
    """Store weights held in ``Constant`` nodes as initializers, where passes expect them.

    Exported and hand-edited models often keep weights in Constant nodes; later
    passes (BatchNorm folding, quantization, pruning) look for initializers, and a
    Constant node is one more node to run. Every Constant (``value`` or a typed form
    such as ``value_floats``) of at least ``min_elements`` elements is lifted (all of
    them by default); Constants that are graph outputs stay. Models with IR < 4, where
    every initializer must also be a graph input, are left unchanged. Subgraphs
    are visited; model-local functions are not (they cannot hold initializers).

    Args:
        min_elements: Smallest tensor (in elements) to lift.
    """

    name = "lift-constants"

    def __init__(self, *, min_elements: int = 0) -> None:
        super().__init__()
        self.min_elements = min_elements

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if model.ir_version < 4:
            logger.debug("lift-constants: IR version %d < 4; skipped", model.ir_version)
            return ir.passes.PassResult(model, modified=False)
        lifter = LiftConstantsToInitializersPass(lift_all_constants=True,
                                                 size_limit=self.min_elements)
        modified = lifter(model).modified
        logger.info("lift-constants: %s", "lifted" if modified else "nothing to lift")
        return ir.passes.PassResult(model, modified=modified)
