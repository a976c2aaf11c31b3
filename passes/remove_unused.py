"""Dead-code elimination: unused nodes, initializers, functions and opset imports."""

from __future__ import annotations

import logging

import onnx_ir as ir

from edgeopt.core.dead_code import remove_unused
from edgeopt.core.pass_base import EdgeoptPass

logger = logging.getLogger(__name__)


class RemoveUnusedPass(EdgeoptPass):
    """Remove nodes whose outputs nobody uses, unused initializers, functions and opset imports.

    Graph inputs and outputs are kept (an initializer that is also a graph input,
    as in IR < 4 models, stays). Nodes without outputs are kept. Subgraphs are
    visited (their unused nodes and initializers go too, and so does whatever
    only a removed node's subgraph used); inside model-local functions unused
    nodes are removed, and unused functions are dropped. The model's imports of
    domains that no node or function uses are dropped; the default domain stays.
    """

    name = "remove-unused"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        removed = remove_unused(model)
        logger.info("remove-unused: %d node(s), %d initializer(s), %d opset import(s)%s removed",
                    removed.nodes, removed.initializers, removed.opsets, ", functions" if removed.functions else "")
        return ir.passes.PassResult(model, modified=bool(removed))
