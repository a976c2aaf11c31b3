"""Rewrite ``Erf`` as elementwise ops (Abramowitz & Stegun 7.1.26), for converters without an erf kernel.

TFLite has no builtin ERF: onnx2tf 1.29.24 maps ONNX ``Erf`` to ``tf.math.erf`` and
the TFLite converter then fails ("Could not translate MLIR to FlatBuffer") on the
exact GELU of BERT-style models (all-MiniLM-L6-v2). With ``a = |x|`` and
``t = 1 / (1 + p a)``::

    erf(x) = sign(x) * (1 - (a1 t + a2 t^2 + a3 t^3 + a4 t^4 + a5 t^5) exp(-a^2))

whose absolute error is below 1.5e-7 (A&S 7.1.26), float32 rounding level. The
sign is a ``Where(x < 0, -y, y)`` (TFLite's SIGN has no int8 kernel; SELECT and LESS do).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.rewire import Constants, is_default_domain, rewrite_matching
from edgeopt.passes.infer_shapes import InferShapesPass

logger = logging.getLogger(__name__)

_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)  # a1 .. a5


class DecomposeErfPass(EdgeoptPass):
    """Replace float ``Erf`` nodes with Abs, Mul, Add, Div, Exp, Less and Where (|error| < 1.5e-7).

    The output value keeps its name, shape and uses (graph outputs included).
    Subgraphs are visited; functions are not. Needs opset 9+ (Erf, Where, Less).
    """

    name = "decompose-erf"
    min_opset = 9

    def requires(self, model: ir.Model) -> None:
        if any(_matches(node) for node in ir.traversal.RecursiveGraphIterator(model.graph)):
            super().requires(model)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if any(n.op_type == "Erf" and is_default_domain(n) and n.inputs[0] is not None and n.inputs[0].dtype is None
               for n in ir.traversal.RecursiveGraphIterator(model.graph)):

            InferShapesPass()(model)  # the constants need the input's float type
        count = rewrite_matching(model, _matches, _decompose)
        logger.info("decompose-erf: rewrote %d Erf node(s)", count)
        return ir.passes.PassResult(model, modified=count > 0)


def _matches(node: ir.Node) -> bool:
    x = node.inputs[0] if node.inputs else None
    return (node.op_type == "Erf" and is_default_domain(node) and x is not None and x.dtype is not None
            and x.dtype.is_floating_point())


def _decompose(node: ir.Node, constants: Constants, node_names: set[str]) -> None:
    graph, x, old = node.graph, node.inputs[0], node.outputs[0]
    assert graph is not None and x is not None and x.dtype is not None
    base = node.name or "erf"
    dtype = x.dtype.numpy()
    new_nodes: list[ir.Node] = []

    def const(name: str, number: float) -> ir.Value:
        return constants.add(f"{base}_{name}", np.asarray(number, dtype))

    def op(op_type: str, *inputs: ir.Value) -> ir.Value:
        node_name = f"{base}_{op_type.lower()}_{len(new_nodes)}"
        while node_name in node_names:
            node_name += "_"
        node_names.add(node_name)
        new = ir.Node("", op_type, inputs=inputs, name=node_name)
        new.outputs[0].type = ir.TensorType(ir.DataType.BOOL) if op_type == "Less" else x.type
        new_nodes.append(new)
        return new.outputs[0]

    one = const("one", 1.0)
    a = op("Abs", x)
    t = op("Div", one, op("Add", op("Mul", a, const("p", _P)), one))
    poly = op("Mul", t, const("a5", _A[4]))
    for index in (3, 2, 1, 0):  # Horner: ((((a5 t + a4) t + a3) t + a2) t + a1) t
        poly = op("Mul", op("Add", poly, const(f"a{index + 1}", _A[index])), t)
    y = op("Sub", one, op("Mul", poly, op("Exp", op("Mul", op("Mul", a, a), const("minus_one", -1.0)))))
    negative = op("Less", x, const("zero", 0.0))
    result = op("Where", negative, op("Mul", y, const("minus_one", -1.0)), y)
    graph.insert_before(node, new_nodes)
    name, shape = old.name, old.shape
    old.replace_all_uses_with(result, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    result.name, result.shape = name, shape
    for value in (n.outputs[0] for n in new_nodes[:-1]):
        value.name = _unique(f"{base}_{value.producer().op_type.lower()}", constants.taken)  # type: ignore[union-attr]


def _unique(name: str, taken: set[str]) -> str:
    unique, n = name, 0
    while unique in taken:
        n += 1
        unique = f"{name}_{n}"
    taken.add(unique)
    return unique
