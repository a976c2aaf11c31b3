"""Remove nodes that return their input: ``x + 0``, ``x - 0``, ``x * 1``, ``x / 1``, zero ``Pad``,
a ``Reshape`` to the shape its input already has."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.rewire import bypass, const_array, is_default_domain

logger = logging.getLogger(__name__)

#: op -> (neutral value, which operand may hold it: "either" or "second")
_NEUTRAL: dict[str, tuple[float, str]] = {
    "Add": (0.0, "either"),
    "Sub": (0.0, "second"),
    "Mul": (1.0, "either"),
    "Div": (1.0, "second"),
}


class EliminateNeutralPass(EdgeoptPass):
    """Drop ``Add``/``Sub`` of an all-zero constant, ``Mul``/``Div`` by an all-one constant,
    a constant-mode ``Pad`` whose pads are all zero, and a ``Reshape`` whose input and
    output have the same static shape.

    Exporters keep such nodes: a Linear's zero bias, a layer scale or a GroupNorm
    affine of ones, padding to a window multiple that happens to be zero. A node goes
    only where it provably returns its other input unchanged: same element type, and
    the constant broadcasts into the other input's known shape without growing it
    (``x + zeros(1, C)`` with ``x`` of shape ``(N, C)``, not with ``x`` of shape ``(C,)``).
    Subgraphs are visited; model-local functions are not.
    """

    name = "eliminate-neutral"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        removed = 0
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            kept = _kept_input(node)
            if kept is None or not bypass(node.outputs[0], kept):
                continue
            assert node.graph is not None
            node.graph.remove(node, safe=True)
            removed += 1
        logger.info("eliminate-neutral: removed %d node(s)", removed)
        return ir.passes.PassResult(model, modified=removed > 0)


def _kept_input(node: ir.Node) -> ir.Value | None:
    """The input ``node`` returns unchanged, or None."""
    if not is_default_domain(node) or len(node.outputs) != 1:
        return None
    if node.op_type == "Pad":
        return _zero_pad_input(node)
    if node.op_type == "Reshape":
        return _same_shape_input(node)
    if node.op_type not in _NEUTRAL or len(node.inputs) != 2 or None in node.inputs:
        return None
    neutral, where = _NEUTRAL[node.op_type]
    first, second = node.inputs
    candidates = [(first, second)] + ([(second, first)] if where == "either" else [])
    for kept, other in candidates:
        assert kept is not None and other is not None
        array = const_array(other)
        if array is None or array.size == 0 or not np.all(array == neutral):
            continue
        if _returns_unchanged(kept, array.shape, node.outputs[0]):
            return kept
    return None


def _returns_unchanged(kept: ir.Value, constant_shape: tuple[int, ...], output: ir.Value) -> bool:
    """``kept`` has the output's type, and a constant of ``constant_shape`` broadcast against
    it keeps its shape."""
    if kept.dtype is None or kept.dtype != output.dtype or kept.shape is None:
        return False
    shape = list(kept.shape)
    if len(constant_shape) > len(shape):
        return False
    tail = shape[len(shape) - len(constant_shape):]
    return all(c == 1 or (isinstance(d, int) and d == c) for c, d in zip(constant_shape, tail, strict=True))


def _zero_pad_input(node: ir.Node) -> ir.Value | None:
    mode = node.attributes.get("mode")
    if mode is not None and mode.as_string() != "constant":
        return None
    if "pads" in node.attributes:  # Pad before opset 11
        pads = np.asarray(node.attributes["pads"].as_ints())
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        found = const_array(node.inputs[1])
        if found is None:
            return None
        pads = found
    else:
        return None
    source = node.inputs[0]
    if pads.size == 0 or np.any(pads != 0) or source is None or source.dtype != node.outputs[0].dtype:
        return None
    return source


def _same_shape_input(node: ir.Node) -> ir.Value | None:
    source, out = node.inputs[0] if node.inputs else None, node.outputs[0]
    if source is None or source.shape is None or out.shape is None or source.dtype != out.dtype:
        return None
    if not source.shape.is_static() or not out.shape.is_static():
        return None
    return source if tuple(source.shape) == tuple(out.shape) else None
