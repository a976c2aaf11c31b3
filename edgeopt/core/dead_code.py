"""Dead-code elimination: unused nodes, initializers, functions and opset imports.

The ``remove-unused`` pass (:mod:`edgeopt.passes.remove_unused`) wraps
:func:`remove_unused`; the engines call the function directly.
"""

from __future__ import annotations

from typing import NamedTuple

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedFunctionsPass


class Removed(NamedTuple):
    """What :func:`remove_unused` removed."""

    nodes: int
    initializers: int
    functions: bool
    opsets: int

    def __bool__(self) -> bool:
        return bool(self.nodes or self.initializers or self.functions or self.opsets)


def remove_unused(model: ir.Model) -> Removed:
    """Remove, in place, nodes whose outputs nobody uses, unused initializers, functions and opset imports.

    Graph inputs and outputs are kept (an initializer that is also a graph input,
    as in IR < 4 models, stays). Nodes without outputs are kept. Subgraphs are
    visited (their unused nodes and initializers go too, and so does whatever
    only a removed node's subgraph used); inside model-local functions unused
    nodes are removed, and unused functions are dropped. The model's imports of
    domains that no node or function uses are dropped; the default domain stays.
    """
    nodes = _remove_dead_nodes(model.graph)
    for function in model.functions.values():
        nodes += _remove_dead_nodes(function)
    initializers = sum(_remove_dead_initializers(g) for g in model.graphs())
    functions = RemoveUnusedFunctionsPass()(model).modified
    opsets = _remove_unused_opsets(model)
    return Removed(nodes, initializers, functions, opsets)


def _remove_dead_nodes(root: ir.Graph | ir.Function) -> int:
    """Remove dead nodes of ``root`` and its subgraphs with a worklist.

    Removing a node revisits the producers of its inputs (and of the inputs of
    nodes in its subgraphs), so whole dead chains go in one run whatever the
    node order: the graph need not be topologically sorted.
    """
    worklist = list(ir.traversal.RecursiveGraphIterator(root))
    detached: set[ir.Node] = set()  # nodes inside the subgraphs of removed nodes
    removed = 0
    while worklist:
        node = worklist.pop()  # last first: a sorted graph's dead chains go in order
        if node in detached or node.graph is None or not _is_dead(node):
            continue
        freed = [v for v in node.inputs if v is not None] + _detach_subgraphs(node, detached)
        node.graph.remove(node, safe=True)
        removed += 1
        worklist.extend(p for v in freed if (p := v.producer()) is not None)
    return removed


def _is_dead(node: ir.Node) -> bool:
    """Whether ``node`` has outputs and none is used or is a graph output."""
    return bool(node.outputs) and all(
        not v.uses() and not v.is_graph_output() for v in node.outputs
    )


def _detach_subgraphs(node: ir.Node, detached: set[ir.Node]) -> list[ir.Value]:
    """Drop the inputs of every node in ``node``'s subgraphs, so that outer values
    used only there become unused when ``node`` goes. Those nodes are added to
    ``detached``; returns the inputs dropped."""
    dropped: list[ir.Value] = []
    for attr in node.attributes.values():
        graphs = ([attr.as_graph()] if attr.type == ir.AttributeType.GRAPH
                  else attr.as_graphs() if attr.type == ir.AttributeType.GRAPHS else [])
        for graph in graphs:
            for inner in graph:
                detached.add(inner)
                dropped += _detach_subgraphs(inner, detached)
                dropped += [v for v in inner.inputs if v is not None]
                inner.resize_inputs(0)
    return dropped


def _remove_unused_opsets(model: ir.Model) -> int:
    used = {"", "ai.onnx"}
    used.update(node.domain for node in ir.traversal.RecursiveGraphIterator(model.graph))
    for function in model.functions.values():
        used.add(function.domain)
        used.update(node.domain for node in ir.traversal.RecursiveGraphIterator(function))
    unused = [domain for domain in model.opset_imports if domain not in used]
    for domain in unused:
        del model.opset_imports[domain]
    return len(unused)


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
