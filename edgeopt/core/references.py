"""Find node inputs that nothing defines: the mark of a broken (hand-edited, half-written) file.

A name a node reads must be a graph input, an initializer, another node's output
in the same graph (in any order: graphs need not be sorted) or, inside a
subgraph, one of those in an enclosing graph. Inside a model-local function it
must be a function input or a node output there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass

import onnx


@dataclass(frozen=True)
class UndefinedRead:
    """Node ``node`` (op ``op``) reads ``name``, which nothing in scope defines."""

    node: str
    op: str
    name: str

    def __str__(self) -> str:
        return f"node '{self.node}' ({self.op}) reads '{self.name}', which nothing in the graph defines"


def undefined_reads(model: onnx.ModelProto) -> list[UndefinedRead]:
    """Every read of an undefined name in ``model``: its graph, subgraphs and functions."""
    found = list(_graph_reads(model.graph, frozenset()))
    for function in model.functions:
        defined = {*function.input, *(o for n in function.node for o in n.output)}
        found += _node_reads(function.node, defined)
    return found


def _graph_reads(graph: onnx.GraphProto, outer: Set[str]) -> Iterator[UndefinedRead]:
    defined = {*outer, *(v.name for v in graph.input), *(t.name for t in graph.initializer),
               *(s.values.name for s in graph.sparse_initializer), *(o for n in graph.node for o in n.output)}
    yield from _node_reads(graph.node, defined)


def _node_reads(nodes: Iterable[onnx.NodeProto], defined: Set[str]) -> list[UndefinedRead]:
    found = []
    for index, node in enumerate(nodes):
        op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        found += [UndefinedRead(node.name or f"#{index}", op, name)
                  for name in node.input if name and name not in defined]
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                found += _graph_reads(sub, defined)
    return found
