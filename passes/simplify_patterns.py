"""Simplify common exporter patterns with onnxscript's rewrite rules, chosen and guarded.

onnxscript ships a library of pattern rewrites; this pass applies the ones that
keep outputs identical (float round-off aside) and that shrink what the
exporters emit: Pad fused into Conv, no-op Cast/Expand/Transpose/Slice/ScatterND,
chains of Reshape/Transpose/Unsqueeze/Slice collapsed, ``x*1``/``x+0`` removed,
successive Relu/Clip/Min/Max merged, Reshape shapes made literal. Rules of our own
(onnxscript has none for these, or one that is unsafe) follow: 2-D MatMul + constant
bias into Gemm (Add's broadcasting checked), a Linear between two Reshapes into one
Gemm, a Reshape of a Squeeze/Unsqueeze/Flatten/Reshape, a Transpose that moves only
unit axes into a Reshape, two Slices on different axes into one. Rules whose result
depends on the opset run only where the model's opset has the ops they emit.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._rewrite_rule import RewriteRuleClassBase
from onnxscript.rewriter.rules.common import (
    _basic_rules,
    _collapse_slices,
    _fuse_hardswish,
    _fuse_pad_into_conv,
    _fuse_relus_clips,
    _materialize_reshape_shape,
    _min_max_to_clip,
    _no_op,
    _redundant_scatter_nd,
    _remove_expand_before_binary_op,
)

from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.passes.eliminate_identity import EliminateIdentityPass

logger = logging.getLogger(__name__)

#: HardSigmoid*x -> HardSwish needs HardSwish (opset 14).
_HARDSWISH_OPSET = 14


class SimplifyPatternsPass(EdgeoptPass):
    """Rewrite exporter idioms into fewer, simpler nodes (onnxscript's rules, curated).

    Needs opset 13 or later: the rules emit the input-based forms of Slice,
    Unsqueeze and Reshape. Subgraphs are visited by the rule engine; model-local
    functions are left alone.

    Args:
        gemm: Turn 2-D ``MatMul`` + ``Add`` into ``Gemm`` (one kernel in ONNX Runtime
            and TFLite's FullyConnected).
    """

    name = "simplify-patterns"
    min_opset = 13

    def __init__(self, *, gemm: bool = True) -> None:
        super().__init__()
        self.gemm = gemm

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        rules = pattern.RewriteRuleSet(_rules(opset=opset, gemm=self.gemm))
        count = rules.apply_to_model(model)
        if count:  # rules that find a no-op leave an Identity in its place
            EliminateIdentityPass()(model)
        logger.info("simplify-patterns: %d rewrite(s)", count)
        return ir.passes.PassResult(model, modified=bool(count))


def _rules(*, opset: int, gemm: bool) -> list[pattern.RewriteRule]:
    rules: list[pattern.RewriteRule] = [
        *_no_op.rules.rules,
        *_basic_rules.basic_optimization_rules().rules,
        *_collapse_slices.rules.rules,
        *_redundant_scatter_nd.rules.rules,
        *_remove_expand_before_binary_op.expand_before_binary_op_rules.rules,
        *_materialize_reshape_shape.rules.rules,
        *_min_max_to_clip.rules.rules,
        *_fuse_relus_clips.rules.rules,
        *_fuse_pad_into_conv.rules.rules,
    ]
    if opset >= _HARDSWISH_OPSET:
        rules.extend(_fuse_hardswish.fuse_hardswish_rules().rules)
    rules.append(LayoutKeepingTransposeToReshape.rule())
    rules.append(SliceOfSlice.rule())
    rules.extend(ReshapeOfReshaped.rule(producer) for producer in ReshapeOfReshaped.PRODUCERS)
    if gemm:
        for rule in (MatMulAddToGemm.rule(), ReshapedLinearToGemm.rule()):
            rules.extend(rule.commute())  # the bias is Add's first input in TorchScript exports
    return rules


class ReshapeOfReshaped(RewriteRuleClassBase):
    """``Reshape(Squeeze|Unsqueeze|Flatten|Reshape(x), shape)`` -> ``Reshape(x, shape)``: a
    reshape only needs the element count, which the first op keeps. Only for a constant
    ``shape`` without zeros (a 0 copies a dimension of the input, which the first op changed)."""

    PRODUCERS = ("Squeeze", "Unsqueeze", "Flatten", "Reshape")

    def __init__(self, producer: str) -> None:
        super().__init__(f"ReshapeOf{producer}")
        self.producer = producer

    def pattern(self, op, x, shape):  # type: ignore[no-untyped-def]
        first = getattr(op, self.producer)(x, _allow_other_inputs=True, _allow_other_attributes=True)
        return op.Reshape(first, shape, _allow_other_attributes=True)

    def check(self, context, x: ir.Value, shape: ir.Value) -> MatchResult:  # type: ignore[no-untyped-def]
        result = MatchResult()
        target = shape.const_value
        if target is None or 0 in target.numpy().tolist():
            return result.fail("the target shape must be a constant without zeros")
        return result

    def rewrite(self, op, x: ir.Value, shape: ir.Value) -> ir.Value:  # type: ignore[no-untyped-def]
        return op.Reshape(x, shape)


class MatMulAddToGemm(RewriteRuleClassBase):
    """``Add(MatMul(a, b), c)`` -> ``Gemm(a, b, c)`` for 2-D float ``a``, ``b`` and a constant
    ``c`` (a bias: a residual Add stays visible) that Gemm can broadcast to the product's
    shape (so the Add's own broadcasting never grows the result)."""

    def pattern(self, op, a, b, c):  # type: ignore[no-untyped-def]
        return op.Add(op.MatMul(a, b, _outputs=["product"]), c)

    def check(self, context, a: ir.Value, b: ir.Value, c: ir.Value, **_: ir.Value) -> MatchResult:  # type: ignore[no-untyped-def, override]
        result = MatchResult()
        if a.dtype not in _GEMM_TYPES or a.shape is None or b.shape is None:
            return result.fail("a float MatMul with known shapes is needed")
        if len(a.shape) != 2 or len(b.shape) != 2:
            return result.fail("Gemm takes 2-D operands")
        product = (a.shape[0], b.shape[1])
        if c.const_value is None:  # a residual Add stays: block finders and pruning read it
            return result.fail("the addend must be a constant bias")
        if c.shape is None or len(c.shape) > 2:
            return result.fail("the addend must be at most 2-D")
        for dim, target in zip(reversed(list(c.shape)), reversed(product), strict=False):
            if dim != 1 and dim != target:
                return result.fail("the addend does not broadcast to the product's shape")
        return result

    def rewrite(self, op, a: ir.Value, b: ir.Value, c: ir.Value, product: ir.Value) -> ir.Value:  # type: ignore[no-untyped-def]
        out = op.Gemm(a, b, c)
        matmul, gemm = product.producer(), out.producer()
        if matmul is not None and gemm is not None and matmul.name:
            gemm.name = matmul.name  # the layer keeps its name (sensitivity tables, --exclude patterns)
        return out


#: ONNX Runtime's CPU Gemm kernels.
_GEMM_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE)


class ReshapedLinearToGemm(RewriteRuleClassBase):
    """``Reshape(Add(MatMul(Reshape(x, s1), W), b), s2)`` -> ``Reshape(Gemm(Reshape(x, [-1, K]), W, b), s2)``:
    a Linear on an N-D tensor between two Reshapes (window attention's projections) as one
    Gemm, a node fewer. ``W`` is a constant (K, N), ``b`` a constant of N values, and
    ``s2`` a constant without zeros (the rows are flattened before it)."""

    def pattern(self, op, x, s1, w, b, s2):  # type: ignore[no-untyped-def]
        return op.Reshape(op.Add(op.MatMul(op.Reshape(x, s1, _allow_other_attributes=True), w), b), s2,
                          _allow_other_attributes=True)

    def check(self, context, x: ir.Value, s1: ir.Value, w: ir.Value, b: ir.Value,  # type: ignore[no-untyped-def, override]
              s2: ir.Value) -> MatchResult:
        result = MatchResult()
        weight, bias, target = w.const_value, b.const_value, s2.const_value
        if weight is None or bias is None or target is None or len(weight.shape) != 2:
            return result.fail("a constant 2-D weight, bias and output shape are needed")
        if w.dtype not in _GEMM_TYPES or b.dtype != w.dtype or x.dtype != w.dtype:
            return result.fail("Gemm runs float and double")
        if bias.size != weight.shape[1] or any(d != 1 for d in list(bias.shape)[:-1]):
            return result.fail("the bias must hold one value per output feature")
        if 0 in target.numpy().tolist():
            return result.fail("the output shape copies a dimension (0)")
        return result

    def rewrite(self, op, x: ir.Value, s1: ir.Value, w: ir.Value, b: ir.Value, s2: ir.Value) -> ir.Value:  # type: ignore[no-untyped-def]
        assert w.const_value is not None and b.const_value is not None
        rows = op.initializer(ir.tensor(np.array([-1, w.const_value.shape[0]], np.int64)), _fresh(w, "rows"))
        bias = b
        if len(b.const_value.shape) != 1:
            bias = op.initializer(ir.tensor(b.const_value.numpy().reshape(-1)), _fresh(b, "vector"))
        return op.Reshape(op.Gemm(op.Reshape(x, rows), w, bias), s2)


class LayoutKeepingTransposeToReshape(RewriteRuleClassBase):
    """A ``Transpose`` that only moves axes of size 1 keeps the memory order: it is a
    ``Reshape`` (no copy at run time), which then merges with a Reshape after it."""

    def pattern(self, op, x, perm):  # type: ignore[no-untyped-def]
        return op.Transpose(x, perm=perm)

    def check(self, context, x: ir.Value, perm: ir.Attr) -> MatchResult:  # type: ignore[no-untyped-def, override]
        result = MatchResult()
        if x.shape is None or not x.shape.is_static() or perm is None:
            return result.fail("a static input shape and a perm are needed")
        order = [axis for axis in perm.as_ints() if x.shape[axis] != 1]
        if order != sorted(order):
            return result.fail("the Transpose reorders axes longer than 1")
        return result

    def rewrite(self, op, x: ir.Value, perm: ir.Attr) -> ir.Value:  # type: ignore[no-untyped-def]
        assert x.shape is not None
        shape = np.array([x.shape[axis] for axis in perm.as_ints()], np.int64)
        return op.Reshape(x, op.initializer(ir.tensor(shape), _fresh(x, "transposed_shape")))


def _fresh(value: ir.Value, suffix: str) -> str:
    """A name for a new initializer next to ``value`` that its graph does not hold yet (the rule
    engine would otherwise replace an existing initializer of that name)."""
    graph = value.graph
    producer = value.producer()
    if graph is None and producer is not None:
        graph = producer.graph
    base = f"{value.name or 'value'}_{suffix}"
    taken = graph.initializers if graph is not None else {}
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


class SliceOfSlice(RewriteRuleClassBase):
    """``Slice(Slice(x, ...), ...)`` on different axes -> one ``Slice`` over both (a strided
    downsampling of rows then columns, as LeViT exports it). Every input is a constant and
    both Slices name their axes; axes given as negative numbers need ``x``'s rank."""

    def pattern(self, op, x, s1, e1, a1, t1, s2, e2, a2, t2):  # type: ignore[no-untyped-def]
        return op.Slice(op.Slice(x, s1, e1, a1, t1), s2, e2, a2, t2)

    def check(self, context, x, s1, e1, a1, t1, s2, e2, a2, t2) -> MatchResult:  # type: ignore[no-untyped-def, override]
        result = MatchResult()
        parts = (s1, e1, a1, t1, s2, e2, a2, t2)
        if any(v is None or v.const_value is None for v in parts):
            return result.fail("every start, end, axis and step must be a constant")
        if x.shape is None:
            return result.fail("the input's rank is needed to compare axes")
        rank = len(x.shape)
        first = {int(a) % rank for a in a1.const_value.numpy().reshape(-1)}
        second = {int(a) % rank for a in a2.const_value.numpy().reshape(-1)}
        if first & second:
            return result.fail("the Slices share an axis")
        return result

    def rewrite(self, op, x, s1, e1, a1, t1, s2, e2, a2, t2):  # type: ignore[no-untyped-def]
        def joined(a: ir.Value, b: ir.Value, suffix: str) -> ir.Value:
            assert a.const_value is not None and b.const_value is not None
            array = np.concatenate([a.const_value.numpy().reshape(-1), b.const_value.numpy().reshape(-1)])
            return op.initializer(ir.tensor(array.astype(np.int64)), _fresh(x, suffix))

        return op.Slice(x, joined(s1, s2, "slice_starts"), joined(e1, e2, "slice_ends"),
                        joined(a1, a2, "slice_axes"), joined(t1, t2, "slice_steps"))
