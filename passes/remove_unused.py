"""Dead-code elimination: unused nodes, initializers, functions and opset imports."""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedFunctionsPass

from edgeopt.pass_base import EdgeoptPass

logger = logging.getLogger(__name__)


class RemoveUnusedPass(EdgeoptPass):
    """Remove nodes whose outputs nobody uses, unused initializers and functions.

    Graph inputs and outputs are kept (an initializer that is also a graph input,
    as in IR < 4 models, stays). Nodes without outputs are kept. Subgraphs are
    visited (their unused nodes and initializers go too); inside model-local
    functions unused nodes are removed, and unused functions are dropped.
    """

    name = "remove-unused"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes = _remove_dead_nodes(model.graph)
        for function in model.functions.values():
            nodes += _remove_dead_nodes(function)
        initializers = sum(_remove_dead_initializers(g) for g in model.graphs())
        functions = RemoveUnusedFunctionsPass()(model).modified
        logger.info("remove-unused: %d node(s), %d initializer(s)%s removed", nodes,
                    initializers, ", functions" if functions else "")
        return ir.passes.PassResult(model, modified=bool(nodes or initializers or functions))


def _remove_dead_nodes(graph: ir.Graph | ir.Function) -> int:
    """Remove dead nodes, last first, so that whole dead chains go in one sweep."""
    removed = 0
    outputs = set(graph.outputs)
    for node in reversed(list(graph)):
        if node.outputs and all(not v.uses() and v not in outputs for v in node.outputs):
            graph.remove(node, safe=True)
            removed += 1
            continue
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                removed += _remove_dead_nodes(attr.as_graph())
            elif attr.type == ir.AttributeType.GRAPHS:
                removed += sum(_remove_dead_nodes(g) for g in attr.as_graphs())
    return removed


def _remove_dead_initializers(graph: ir.Graph) -> int:
    keep = set(graph.inputs) | set(graph.outputs)
    dead = [
        name
        for name, value in graph.initializers.items()
        if value not in keep and not value.uses()
    ]
    for name in dead:
        del graph.initializers[name]
    return len(dead)
