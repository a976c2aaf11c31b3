"""Sort nodes so that every value is produced before it is used."""

from __future__ import annotations

import logging

import onnx_ir as ir

from edgeopt.core.pass_base import EdgeoptPass

logger = logging.getLogger(__name__)


class TopologicalSortPass(EdgeoptPass):
    """Reorder the nodes of every graph (subgraphs and functions included) topologically.

    The sort is stable: an already sorted graph keeps its order and reports
    ``modified=False``.
    """

    name = "topological-sort"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graphs: list[ir.Graph | ir.Function] = [*model.graphs(), *model.functions.values()]
        before = [list(graph) for graph in graphs]
        model.graph.sort()  # sorts its subgraphs too
        for function in model.functions.values():
            function.sort()
        moved = sum(
            a is not b
            for graph, old in zip(graphs, before, strict=True)
            for a, b in zip(old, graph, strict=True)
        )
        logger.info("topological-sort: %d node(s) moved", moved)
        return ir.passes.PassResult(model, modified=moved > 0)
