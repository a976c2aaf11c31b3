"""Repair after layer dropping: refit the next projections by least squares.

After a block is dropped, the layers right after it see a different input. For
each *projection* reading the dropped block's input (directly, or through up to three
single-input nodes: LayerNormalization, Transpose, pooling...), i.e. a ``MatMul`` or
``Gemm`` with a constant 2-D weight,
new weights ``W'`` (and bias) minimize ``‖X' W' + b' − Y‖²``, where ``X'`` is the
projection's input in the dropped model and ``Y`` its output in the original one,
on calibration data. A 2-D ``Conv`` (grouped and depthwise too) reading it is refitted
the same way on its input patches (:mod:`edgeopt.blocks.conv_refit`). Only ``XᵀX`` and ``XᵀY``
are accumulated (:class:`edgeopt.core.least_squares.NormalEquations`), one batch at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeopt.blocks.conv_refit import ConvProjection, conv_projection
from edgeopt.blocks.residual import Block
from edgeopt.core.least_squares import NormalEquations
from edgeopt.core.rewire import ConstantWriter, const_array, is_default_domain
from edgeopt.core.runtime import Feeds, create_session, run_session

logger = logging.getLogger(__name__)


@dataclass
class _Projection:
    node: str
    x: str
    """Input activation (name in the dropped model)."""
    y: str
    """Output before any bias Add (name in both models)."""
    weight: np.ndarray
    """As ``(in, out)``."""
    transposed: bool
    bias_node: str | None
    """A following ``Add`` with a constant ``(out,)`` bias, or the Gemm itself."""

    def systems(self) -> list[NormalEquations]:
        return [NormalEquations(self.weight.shape[0], self.weight.shape[1], bias=self.bias_node is not None)]

    def add(self, systems: list[NormalEquations], x: np.ndarray, y: np.ndarray) -> None:
        systems[0].add(x.reshape(-1, self.weight.shape[0]), y.reshape(-1, self.weight.shape[1]))

    def write(self, node: ir.Node, writer: ConstantWriter, systems: list[NormalEquations], ridge: float) -> None:
        weight, bias = systems[0].solve(ridge=ridge)
        assert node.graph is not None
        _write({n.name: n for n in node.graph}, writer, self, weight, bias)


Projection = _Projection | ConvProjection


def repair(original: ir.Model, dropped: ir.Model, blocks: Sequence[Block],
           data: Callable[[], Iterable[Feeds]], *, ridge: float = 1e-4) -> list[str]:
    """Refit, in ``dropped``, the projections after each of ``blocks``; returns their node names.

    Args:
        original: The model before dropping (its outputs are the targets).
        dropped: The same model after :func:`drop_blocks` (changed in place).
        blocks: The blocks that were dropped (their ``start`` values feed the projections).
        data: Starts a pass over the calibration data.
        ridge: Relative ridge of the least-squares solve.
    """
    projections = _projections(dropped, blocks)
    names = {o.name for node in original.graph for o in node.outputs}
    projections = [p for p in projections if p.y in names]
    if not projections:
        logger.info("drop repair: no MatMul/Gemm/Conv after the dropped block(s); nothing refitted")
        return []
    ref_session = create_session(_exposed(original, [p.y for p in projections]))
    new_session = create_session(_exposed(dropped, [p.x for p in projections]))
    systems = [p.systems() for p in projections]
    for feeds in data():
        ref, got = run_session(ref_session, feeds), run_session(new_session, feeds)
        for p, system in zip(projections, systems, strict=True):
            p.add(system, got[p.x], ref[p.y])
    writer = ConstantWriter(dropped)
    nodes = {node.name: node for node in dropped.graph}
    for p, system in zip(projections, systems, strict=True):
        p.write(nodes[p.node], writer, system, ridge)
    logger.info("drop repair: refitted %d projection(s) on %d rows", len(projections), systems[0][0].samples)
    return [p.node for p in projections]


def _exposed(model: ir.Model, names: Sequence[str]) -> ir.Model:
    copy = model.clone()
    values = {v.name: v for v in copy.graph.inputs}
    values.update({o.name: o for node in copy.graph for o in node.outputs})
    present = set(copy.graph.outputs)
    for name in dict.fromkeys(names):
        if values[name] not in present:
            copy.graph.outputs.append(values[name])
            present.add(values[name])
    return copy


def _projections(model: ir.Model, blocks: Sequence[Block]) -> list[Projection]:
    values = {v.name: v for v in model.graph.inputs}
    values.update({o.name: o for node in model.graph for o in node.outputs})
    found: dict[str, Projection] = {}
    for block in blocks:
        start = values.get(block.end) or values.get(block.start)  # graph outputs take the end's name
        if start is None:
            continue
        for value in _readers(start):
            for node, index in value.uses():
                projection: Projection | None = None
                if index == 0:
                    projection = _projection(node, index) or conv_projection(node)
                if projection is not None and node.name and projection.x in values:
                    found.setdefault(node.name, projection)
    return list(found.values())


def _readers(value: ir.Value, depth: int = 3) -> list[ir.Value]:
    """``value`` and what it becomes through up to ``depth`` single-input nodes (LayerNorm, Transpose,
    pooling, Flatten...): the next projection may read it there (each is refitted on its own input)."""
    found = [value]
    if depth == 0:
        return found
    for node, _ in value.uses():
        dynamic = [v for v in node.inputs if v is not None and const_array(v) is None]
        if (dynamic == [value] and len(node.outputs) == 1 and node.op_type not in ("Shape", "Size")
                and _projection(node, 0) is None and conv_projection(node) is None):
            found += _readers(node.outputs[0], depth - 1)
    return found


def _projection(node: ir.Node, index: int) -> _Projection | None:
    """``node`` as a projection of its input ``index``, or None when it is not one."""
    if not is_default_domain(node) or index != 0 or len(node.inputs) < 2:
        return None
    x, w = node.inputs[0], node.inputs[1]
    array = const_array(w)
    if x is None or array is None or array.ndim != 2 or not x.name or not node.outputs[0].name:
        return None
    if node.op_type == "MatMul":
        return _Projection(node.name or "", x.name, node.outputs[0].name, array, False, _bias_add(node, array.shape[1]))
    if node.op_type == "Gemm" and not node.attributes.get_int("transA", 0):
        alpha, beta = node.attributes.get_float("alpha", 1.0), node.attributes.get_float("beta", 1.0)
        transposed = bool(node.attributes.get_int("transB", 0))
        weight = (array.T if transposed else array) * alpha
        if alpha != 1.0 or beta != 1.0:
            return None  # rare; left alone rather than folding the scales
        bias = node.name if len(node.inputs) > 2 and const_array(node.inputs[2]) is not None else None
        if bias is not None and const_array(node.inputs[2]).shape != (weight.shape[1],):  # type: ignore[union-attr]
            return None
        return _Projection(node.name or "", x.name, node.outputs[0].name, weight, transposed, bias)
    return None


def _bias_add(node: ir.Node, out: int) -> str | None:
    uses = list(node.outputs[0].uses())
    if len(uses) != 1 or node.outputs[0].is_graph_output():
        return None
    add = uses[0][0]
    if add.op_type != "Add" or not add.name:
        return None
    other = add.inputs[1 - uses[0][1]]
    bias = const_array(other)
    return add.name if bias is not None and bias.shape == (out,) else None


def _write(nodes: dict[str | None, ir.Node], writer: ConstantWriter, p: _Projection,
           weight: np.ndarray, bias: np.ndarray | None) -> None:
    node = nodes[p.node]
    dtype = p.weight.dtype
    writer.set(node, 1, np.ascontiguousarray((weight.T if p.transposed else weight).astype(dtype)), "repaired")
    if bias is None or p.bias_node is None:
        return
    if node.op_type == "Gemm":
        old = const_array(node.inputs[2])
        assert old is not None
        writer.set(node, 2, bias.astype(old.dtype), "repaired")
        return
    add = nodes[p.bias_node]
    slot = 1 if const_array(add.inputs[1]) is not None else 0
    old = const_array(add.inputs[slot])
    assert old is not None
    writer.set(add, slot, (old + bias).astype(old.dtype), "repaired")
