"""Dead-code elimination: unused nodes, initializers, functions and opset imports."""

from __future__ import annotations

import logging

import onnx_ir as ir

from edgeopt.core.dead_code import remove_unused
from edgeopt.core.pass_base import EdgeoptPass

logger = logging.getLogger(__name__)


class RemoveUnusedPass(EdgeoptPass):
    """Remove nodes whose outputs nobody uses, unused initializers, functions and opset imports.

    Graph inputs and outputs are kept; subgraphs and model-local functions are
    visited. What is kept and why: :func:`edgeopt.core.dead_code.remove_unused`.
    """

    name = "remove-unused"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        removed = remove_unused(model)
        logger.info("remove-unused: %d node(s), %d initializer(s), %d opset import(s)%s removed",
                    removed.nodes, removed.initializers, removed.opsets, ", functions" if removed.functions else "")
        return ir.passes.PassResult(model, modified=bool(removed))
