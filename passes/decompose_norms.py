"""Rewrite norm reductions into ReduceSum and elementwise ops that every converter handles.

``ReduceL2(x) = Sqrt(ReduceSum(x * x))``, ``ReduceSumSquare(x) = ReduceSum(x * x)`` and
``ReduceL1(x) = ReduceSum(Abs(x))``, with the same axes, ``keepdims`` and
``noop_with_empty_axes``. onnx2tf 1.29.24 maps ReduceL2 to ``tf.norm``, which fails
on the L2-normalized embedding of sentence-transformers models (all-MiniLM-L6-v2);
the TFLite targets run this pass in ``prepare()``. The axes move between attribute
and input the way each op's opset wants them (ReduceSum takes an axes input from
opset 13, the norm reductions only from opset 18).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.rewire import Constants, is_default_domain, opset_version, rewrite_matching

logger = logging.getLogger(__name__)

# op -> the elementwise op before ReduceSum ("Square" = x * x) and whether Sqrt follows
_RULES = {"ReduceL2": ("Square", True), "ReduceSumSquare": ("Square", False), "ReduceL1": ("Abs", False)}


class DecomposeNormsPass(EdgeoptPass):
    """Replace ReduceL2 / ReduceSumSquare / ReduceL1 with Mul or Abs, ReduceSum and Sqrt.

    Output names are kept (the last new node produces the old output value), so
    graph outputs and consumers are unchanged. Subgraphs are visited; functions
    are not. Needs opset 11+ (older opsets have no ``noop_with_empty_axes`` semantics
    to match); other nodes are left alone.
    """

    name = "decompose-norms"
    min_opset = 11

    def requires(self, model: ir.Model) -> None:
        if any(_matches(node) for node in ir.traversal.RecursiveGraphIterator(model.graph)):
            super().requires(model)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = opset_version(model) or 0
        count = rewrite_matching(
            model, _matches, lambda node, constants, names: _decompose(node, opset, constants, names))
        logger.info("decompose-norms: rewrote %d reduction(s)", count)
        return ir.passes.PassResult(model, modified=count > 0)


def _matches(node: ir.Node) -> bool:
    return node.op_type in _RULES and is_default_domain(node)


def _decompose(node: ir.Node, opset: int, constants: Constants, node_names: set[str]) -> None:
    graph = node.graph
    assert graph is not None
    elementwise, sqrt = _RULES[node.op_type]
    x = node.inputs[0]
    assert x is not None
    base = node.name or node.op_type
    keepdims = node.attributes.get_int("keepdims", 1)
    noop = node.attributes.get_int("noop_with_empty_axes", 0)
    if opset >= 18:  # both ops take axes as an input
        axes_input: ir.Value | None = node.inputs[1] if len(node.inputs) > 1 else None
    else:  # the norm has an axes attribute; ReduceSum takes an input from opset 13
        axes = node.attributes.get_ints("axes")
        axes_input = constants.add(f"{base}_axes", np.asarray(axes, np.int64)) if axes and opset >= 13 else None
    if elementwise == "Square":
        pre = ir.Node("", "Mul", inputs=[x, x], name=_unique(f"{base}_square", node_names))
    else:
        pre = ir.Node("", "Abs", inputs=[x], name=_unique(f"{base}_abs", node_names))
    attributes = [ir.AttrInt64("keepdims", keepdims)]
    if noop:
        attributes.append(ir.AttrInt64("noop_with_empty_axes", noop))
    if opset < 13 and node.attributes.get_ints("axes"):
        attributes.append(ir.AttrInt64s("axes", list(node.attributes.get_ints("axes") or ())))
    inputs = [pre.outputs[0]] + ([axes_input] if axes_input is not None else [])
    reduce = ir.Node("", "ReduceSum", inputs=inputs, attributes=attributes, name=_unique(f"{base}_sum", node_names))
    new_nodes = [pre, reduce]
    if sqrt:
        new_nodes.append(ir.Node("", "Sqrt", inputs=[reduce.outputs[0]], name=_unique(f"{base}_sqrt", node_names)))
    old = node.outputs[0]
    last = new_nodes[-1].outputs[0]
    for value in (pre.outputs[0], reduce.outputs[0], last):
        value.type = x.type
    graph.insert_before(node, new_nodes)
    # The last new node takes over the old output (its name, shape and every use, graph outputs included).
    name, shape = old.name, old.shape
    old.replace_all_uses_with(last, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    last.name, last.shape = name, shape
    for value, suffix in ((pre.outputs[0], "sq"), (reduce.outputs[0], "sum")):
        if value is not last:
            value.name = _unique(f"{base}_{suffix}", constants.taken)

def _unique(name: str, taken: set[str]) -> str:
    unique, n = name, 0
    while unique in taken:
        n += 1
        unique = f"{name}_{n}"
    taken.add(unique)
    return unique
