"""Find the blocks of a model that can be dropped: residual blocks and transformer layers.

Found from the graph's structure, never from names. A *residual block* is an
``Add(x, f(x))`` whose one operand ``x`` is an ancestor of the other: its nodes
are every node that depends on ``x`` and feeds the ``Add``. Bypassing it (every
use of the ``Add``'s output reads ``x`` instead) is safe when none of those nodes
feeds anything outside the block (shape computations excepted: they stay) and
``x`` has the ``Add``'s output type and shape.

Consecutive residual blocks form a *chain*: the next block's ``x`` is this block's
output (pre-LN transformers), or that output through one single-input node such
as ``LayerNormalization`` or ``Relu`` (post-LN transformers, ResNet blocks). A
*layer* groups a chain's blocks from one attention block (one with a ``Softmax``)
to the next; without attention each block is a layer. A layer spans from its
first block's input to the next layer's input (post-LN: through the last
``LayerNormalization``), so dropping it removes the whole layer. Only the top-level
graph is searched; subgraphs and model-local functions are not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import onnx_ir as ir

from edgeopt.core.rewire import const_array, is_default_domain, producers_within
from edgeopt.core.shapes import infer_shapes

logger = logging.getLogger(__name__)

Granularity = Literal["layer", "block"]
_SHAPE_OPS = frozenset({"Shape", "Size"})


@dataclass(frozen=True)
class Block:
    """A droppable span of the graph: dropping it makes every use of ``end`` read ``start``."""

    name: str
    """``layer<i>`` or ``block<i>``, numbered in graph order."""
    kind: Granularity
    start: str
    """The block's input value (the residual ``x``)."""
    end: str
    """The value that ``start`` replaces."""
    nodes: tuple[str, ...]
    attention: bool
    parameters: int
    """Weights used by this block's nodes only: what dropping it removes."""
    droppable: bool
    reason: str | None = None
    """Why the block cannot be dropped (None when it can)."""


@dataclass
class _Residual:
    add: ir.Node
    start: ir.Value
    end: ir.Value


def find_blocks(model: ir.Model, granularity: Granularity = "layer") -> list[Block]:
    """The residual blocks (``"block"``) or layers (``"layer"``) of ``model``, in graph order.

    Every candidate is listed; those that cannot be dropped have ``droppable=False``
    and a ``reason``.
    """
    if granularity not in ("layer", "block"):
        raise ValueError(f"granularity must be 'layer' or 'block', got {granularity!r}")
    graph = model.graph
    order = {node: i for i, node in enumerate(graph)}
    residuals, shapes = _residuals(model)
    spans: list[tuple[ir.Value, ir.Value, bool]] = []
    if granularity == "block":
        spans = [(r.start, r.end, _has_attention(_region(r.start, r.end))) for r in residuals]
    else:
        for chain in _chains(residuals):
            spans += _layers(chain)
    shapes.update(_shapes(model, [v for span in spans for v in span[:2] if (v.name or "") not in shapes]))
    blocks = []
    for i, (start, end, attention) in enumerate(sorted(spans, key=lambda s: _position(order, s[1].producer()))):
        region = _region(start, end)
        ordered = sorted(region, key=lambda n: order.get(n, -1))
        reason = _why_not(start, end, region, shapes)
        blocks.append(Block(f"{granularity}{i}", granularity, start.name or "", end.name or "",
                            tuple(n.name or n.op_type for n in ordered), attention,
                            _own_parameters(region), reason is None, reason))
        if reason:
            logger.debug("%s%d (%s -> %s) not droppable: %s", granularity, i, start.name, end.name, reason)
    logger.info("found %d %s(s), %d droppable", len(blocks), granularity, sum(b.droppable for b in blocks))
    return blocks


def _position(order: dict[ir.Node, int], node: ir.Node | None) -> int:
    return -1 if node is None else order.get(node, -1)


def _residuals(model: ir.Model) -> tuple[list[_Residual], dict[str, ir.Shape | None]]:
    """Residual blocks, and the shapes of their inputs and outputs by name.

    An ``Add`` that broadcasts ``x`` (an attention mask added to the scores) is not a
    residual; neither is one whose region holds another residual ``Add`` (a long-range
    connection spanning several blocks).
    """
    found = [r for node in model.graph if (r := _residual(node)) is not None]
    shapes = _shapes(model, [v for r in found for v in (r.start, r.end)])
    found = [r for r in found if not _broadcasts(shapes.get(r.start.name or ""), shapes.get(r.end.name or ""))]
    adds = {r.add for r in found}
    kept = []
    for r in found:
        inner = (adds - {r.add}) & _region(r.start, r.end)
        if inner:
            logger.debug("'%s' spans %d residual block(s): not a block", r.add.name, len(inner))
        else:
            kept.append(r)
    return kept, shapes


def _broadcasts(start: ir.Shape | None, end: ir.Shape | None) -> bool:
    return start is not None and end is not None and start != end


def _residual(node: ir.Node) -> _Residual | None:
    """``Add(x, f(x))`` with ``x`` an ancestor of ``f(x)``, or None."""
    if node.op_type != "Add" or not is_default_domain(node) or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is None or b is None or a is b or const_array(a) is not None or const_array(b) is not None:
        return None
    for x, fx in ((a, b), (b, a)):
        if x in _ancestor_values(fx):
            return _Residual(node, x, node.outputs[0])
    return None


def _ancestor_values(value: ir.Value) -> set[ir.Value]:
    seen: set[ir.Value] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        producer = v.producer()
        if producer is None:
            continue
        for inp in producer.inputs:
            if inp is not None and inp not in seen:
                seen.add(inp)
                stack.append(inp)
    return seen


def _region(start: ir.Value, end: ir.Value) -> set[ir.Node]:
    """Nodes that depend on ``start`` and feed ``end`` (the producer of ``end`` included)."""
    descendants: set[ir.Node] = set()
    stack = [start]
    while stack:
        for user, _ in stack.pop().uses():
            if user not in descendants:
                descendants.add(user)
                stack.extend(user.outputs)
    return producers_within(end.producer(), descendants)


def _is_shape_only(node: ir.Node, memo: dict[ir.Node, bool]) -> bool:
    """Whether ``node`` computes from shapes and constants only (Shape -> Gather -> Concat...)."""
    if node not in memo:
        memo[node] = False  # guards cycles
        if node.op_type in _SHAPE_OPS:
            memo[node] = True
        else:
            producers = [v.producer() for v in node.inputs if v is not None and const_array(v) is None]
            memo[node] = bool(producers) and all(p is not None and _is_shape_only(p, memo) for p in producers)
    return memo[node]


def _why_not(start: ir.Value, end: ir.Value, region: set[ir.Node], shapes: dict[str, ir.Shape | None]) -> str | None:
    """Why bypassing ``start -> end`` would be unsafe, or None when it is safe."""
    if not region:
        return "no node between its input and output"
    memo: dict[ir.Node, bool] = {}
    for node in region:
        for out in node.outputs:
            if out is end:
                continue
            outside = [user for user, _ in out.uses() if user not in region]
            if (outside or out.is_graph_output()) and not _is_shape_only(node, memo):
                what = "a graph output" if out.is_graph_output() else f"node '{outside[0].name}'"
                return f"'{out.name}' inside the block also feeds {what}"
    if start.dtype is not None and end.dtype is not None and start.dtype != end.dtype:
        return f"input dtype {start.dtype} differs from output dtype {end.dtype}"
    start_shape, end_shape = shapes.get(start.name or ""), shapes.get(end.name or "")
    if start_shape is None or end_shape is None:
        return "shapes unknown (run: edgeopt optimize MODEL -o OUT --passes infer-shapes)"
    if start_shape != end_shape:
        return f"input shape {start_shape} differs from output shape {end_shape}"
    return None


def _shapes(model: ir.Model, values: Iterable[ir.Value]) -> dict[str, ir.Shape | None]:
    """Shapes of ``values`` by name; when some are unknown, inferred on a copy of the model."""
    shapes = {v.name or "": v.shape for v in values}
    if all(s is not None for s in shapes.values()):
        return shapes
    copy = model.clone()
    infer_shapes(copy)
    known = {v.name: v.shape for v in copy.graph.inputs}
    known.update({o.name: o.shape for node in copy.graph for o in node.outputs})
    return {name: shape if shape is not None else known.get(name) for name, shape in shapes.items()}


def _has_attention(region: Iterable[ir.Node]) -> bool:
    return any(node.op_type == "Softmax" for node in region)


def _own_parameters(region: set[ir.Node]) -> int:
    """Elements of the constants that only ``region``'s nodes use."""
    total = 0
    seen: set[ir.Value] = set()
    for node in region:
        for value in node.inputs:
            if value is None or value in seen or value.is_graph_input():
                continue
            seen.add(value)
            array = const_array(value)
            if array is not None and value.is_initializer() and all(u in region for u, _ in value.uses()):
                total += int(array.size)
    return total


def _link(value: ir.Value) -> ir.Value | None:
    """The output of the one single-input node (LayerNorm, Relu...) that alone consumes ``value``."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    node = uses[0][0]
    dynamic = [v for v in node.inputs if v is not None and const_array(v) is None]
    if dynamic != [value] or len(node.outputs) != 1 or node.op_type in _SHAPE_OPS:
        return None
    return node.outputs[0]


def _chains(residuals: list[_Residual]) -> list[tuple[list[_Residual], bool]]:
    """Residual blocks grouped into chains, each with whether its links are nodes (post-norm)."""
    by_start: dict[ir.Value, _Residual] = {r.start: r for r in residuals}
    followed = set()
    successor: dict[int, tuple[_Residual, bool]] = {}
    for i, r in enumerate(residuals):
        nxt = by_start.get(r.end)
        linked = False
        if nxt is None and (link := _link(r.end)) is not None:
            nxt, linked = by_start.get(link), True
        if nxt is not None:
            successor[i] = (nxt, linked)
            followed.add(id(nxt))
    index = {id(r): i for i, r in enumerate(residuals)}
    chains = []
    for r in residuals:
        if id(r) in followed:
            continue
        chain, links = [r], []
        while (step := successor.get(index[id(chain[-1])])) is not None:
            chain.append(step[0])
            links.append(step[1])
        chains.append((chain, bool(links) and all(links)))
    return chains


def _layers(chain_info: tuple[list[_Residual], bool]) -> list[tuple[ir.Value, ir.Value, bool]]:
    """A chain cut into layers: (start, end, has attention) each."""
    chain, post_norm = chain_info
    attention = [_has_attention(_region(r.start, r.end)) for r in chain]
    groups: list[list[int]] = []
    for i, has in enumerate(attention):
        if not groups or not any(attention) or has:
            groups.append([i])
        else:
            groups[-1].append(i)
    spans = []
    for g, members in enumerate(groups):
        start = chain[members[0]].start
        if g + 1 < len(groups):
            end = chain[groups[g + 1][0]].start
        else:
            last = chain[members[-1]].end
            end = (_link(last) or last) if post_norm else last
        spans.append((start, end, any(attention[i] for i in members)))
    return spans
