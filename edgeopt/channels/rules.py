"""Per-op rules that carry channel groups through an ONNX graph (:data:`RULES`, read by
:func:`edgeopt.channels.groups.build_groups`; the state they act on: :mod:`edgeopt.channels.builder`).

Each rule looks at a node whose inputs may carry channel layouts and either
propagates them to its outputs (adding the constants it indexes by channel as
group members), consumes them (a sink: Conv, Gemm, MatMul with a constant weight)
and starts a new group, or raises :class:`Unsafe`, which marks every group on
the node's inputs unprunable with the reason. Ops without a rule do the same.

Axes of carried tensors are negative (counted from the end), so elementwise
broadcasting needs no rank; ops that move or merge axes need the input's rank
from shape inference.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgeopt.channels.builder import GroupBuilder, Layout
from edgeopt.channels.rule_kit import (
    Rule,
    Unsafe,
    carried_input,
    carry,
    const_of,
    extra_outputs_unused,
    layout_length,
    new_source,
    only_first,
    rank_of,
    static_dims,
)
from edgeopt.channels.rules_shape import (
    concat_rule,
    flatten_rule,
    reduce_rule,
    reshape_rule,
    shape_rule,
    slice_rule,
    split_rule,
    squeeze_rule,
    transpose_rule,
)


def _conv(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    only_first(node, laid)
    weight = const_of(node.inputs[1])
    bias_value = node.inputs[2] if len(node.inputs) > 2 else None
    if weight is None or (bias_value is not None and const_of(bias_value) is None):
        if laid:
            raise Unsafe(f"Conv '{node.name}' has a computed weight or bias")
        return
    assert node.inputs[1] is not None
    group = node.attributes.get_int("group", 1)
    axis = 1 - weight.ndim
    if laid:
        _, in_axis, layout = carried_input(b, node)
        if in_axis != axis or layout_length(layout) != weight.shape[1] * group:
            raise Unsafe(f"Conv '{node.name}' reads channels on an unexpected axis")
        if group != 1:
            if not (weight.shape[1] == 1 and weight.shape[0] == group):
                raise Unsafe(f"grouped Conv '{node.name}' (group={group}) is not depthwise")
            b.add_members(node.inputs[1], 0, layout, "out")  # depthwise: channels pass through
            b.depthwise.append((node, layout))
            if bias_value is not None:
                b.add_members(bias_value, 0, layout, "bias")
            carry(b, node, axis, layout)
            return
        b.add_members(node.inputs[1], 1, layout, "in")
        b.add_sink(layout, node)
    elif group != 1:
        return
    out = new_source(b, node, weight.shape[0])
    b.add_members(node.inputs[1], 0, out, "out")
    if bias_value is not None:
        b.add_members(bias_value, 0, out, "bias")
    carry(b, node, axis, out)


def _gemm(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    only_first(node, laid)
    weight = const_of(node.inputs[1])
    trans_b = node.attributes.get_int("transB", 0)
    if weight is None or weight.ndim != 2:
        if laid:
            raise Unsafe(f"Gemm '{node.name}' has a computed weight")
        return
    assert node.inputs[1] is not None
    if laid:
        _, axis, layout = carried_input(b, node)
        if node.attributes.get_int("transA", 0) or axis != -1:
            raise Unsafe(f"Gemm '{node.name}' reads channels on a transposed axis")
        b.add_members(node.inputs[1], 1 if trans_b else 0, layout, "in")
        b.add_sink(layout, node)
    size = weight.shape[0 if trans_b else 1]
    c_value = node.inputs[2] if len(node.inputs) > 2 else None
    c = const_of(c_value)
    if c_value is not None and (c is None or (c.size > 1 and c.shape[-1] != size)):
        return  # a computed or full-width C: the outputs are not a source
    out = new_source(b, node, size)
    b.add_members(node.inputs[1], 0 if trans_b else 1, out, "out")
    if c_value is not None and c is not None and c.size > 1:
        b.add_members(c_value, c.ndim - 1, out, "bias")
    carry(b, node, -1, out)


def _matmul(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    if laid == [0, 1]:
        _batched_matmul(b, node)
        return
    weight = const_of(node.inputs[1])
    if 1 in laid or weight is None or weight.ndim != 2:
        if laid:
            raise Unsafe(f"MatMul '{node.name}' multiplies two activations")
        return
    assert node.inputs[1] is not None
    if laid:
        _, axis, layout = carried_input(b, node)
        if axis != -1:
            raise Unsafe(f"MatMul '{node.name}' carries channels on a non-contracted axis")
        b.add_members(node.inputs[1], 0, layout, "in")
        b.add_sink(layout, node)
    out = new_source(b, node, weight.shape[1])
    b.add_members(node.inputs[1], 1, out, "out")
    carry(b, node, -1, out)


def _batched_matmul(b: GroupBuilder, node: ir.Node) -> None:
    """Two activations (attention scores and context) that carry heads on the same batch axis."""
    _, axis, layout = carried_input(b, node, 0)
    _, other_axis, other = carried_input(b, node, 1)
    if axis != other_axis or axis > -3 or not _same_structure(layout, other):
        raise Unsafe(f"MatMul '{node.name}' multiplies two activations")
    for x, y in zip(layout, other, strict=True):
        if x.group is not None and y.group is not None:
            b.union(x.group, y.group)
    carry(b, node, axis, layout)


def _same_structure(a: Layout, c: Layout) -> bool:
    return len(a) == len(c) and all(
        x.count == y.count and x.block == y.block and (x.group is None) == (y.group is None)
        for x, y in zip(a, c, strict=True))


def _elementwise(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    """Broadcasting ops: carried operands merge their groups; constants along the axis are members."""
    if not laid:
        return
    _, axis, layout = carried_input(b, node, laid[0])
    for i in laid[1:]:
        _, other_axis, other = carried_input(b, node, i)
        if other_axis != axis or not _same_structure(layout, other):
            raise Unsafe(f"{node.op_type} '{node.name}' combines differently laid-out channels")
        for x, y in zip(layout, other, strict=True):
            if x.group is not None and y.group is not None:
                b.union(x.group, y.group)
    for i, value in enumerate(node.inputs):
        if value is None or i in laid:
            continue
        array = const_of(value)
        dims = list(array.shape) if array is not None else static_dims(value)
        if len(dims) < -axis or dims[len(dims) + axis] == 1:
            continue
        if array is None or dims[len(dims) + axis] != layout_length(layout):
            raise Unsafe(f"{node.op_type} '{node.name}': operand '{value.name}' spans the channels")
        b.add_members(value, len(dims) + axis, layout, "param")
    carry(b, node, axis, layout)


def _same(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    """Elementwise unary ops (activations, casts, Clip with scalar bounds)."""
    if laid:
        only_first(node, laid)
        extra_outputs_unused(node)
        _, axis, layout = carried_input(b, node)
        carry(b, node, axis, layout)


def _softmax(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    if not laid:
        return
    value, axis, layout = carried_input(b, node)
    rank = rank_of(value)
    default = -1 if b.opset >= 13 else 1
    softmax_axis = node.attributes.get_int("axis", default) % rank
    if b.opset < 13 or softmax_axis == rank + axis:
        raise Unsafe(f"{node.op_type} '{node.name}' normalizes over the channels")
    carry(b, node, axis, layout)


def _spatial(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    """Pooling and per-channel normalization: channels on axis 1 pass through."""
    if not laid:
        return
    only_first(node, laid)
    extra_outputs_unused(node)
    value, axis, layout = carried_input(b, node)
    if rank_of(value) + axis != 1:
        raise Unsafe(f"{node.op_type} '{node.name}' needs channels on axis 1")
    if node.op_type in ("BatchNormalization", "InstanceNormalization"):
        params = node.inputs[1:]
        if any(p is None or const_of(p) is None for p in params):
            raise Unsafe(f"{node.op_type} '{node.name}' has computed parameters")
        for index, param in enumerate(params):
            assert param is not None
            b.add_members(param, 0, layout, "bn" if index == 0 else "param")
    carry(b, node, axis, layout)


def _layer_norm(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    if not laid:
        return
    only_first(node, laid)
    extra_outputs_unused(node)
    value, axis, layout = carried_input(b, node)
    rank = rank_of(value)
    if rank + axis >= node.attributes.get_int("axis", -1) % rank:
        raise Unsafe(f"LayerNormalization '{node.name}' normalizes over the channels")
    carry(b, node, axis, layout)


def _pad_resize(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    """Pad, Resize, Upsample: fine when they leave the channel axis alone."""
    if not laid:
        return
    only_first(node, laid)
    value, axis, layout = carried_input(b, node)
    rank = rank_of(value)
    p = rank + axis
    if node.op_type == "Pad":
        pads = const_of(node.inputs[1]) if len(node.inputs) > 1 else None
        if pads is None and "pads" in node.attributes:
            pads = np.asarray(node.attributes.get_ints("pads"))
        if len(node.inputs) > 3 and node.inputs[3] is not None or pads is None or pads[p] or pads[p + rank]:
            raise Unsafe(f"Pad '{node.name}' pads the channels or has computed pads")
    else:
        index = 2 if node.op_type == "Resize" and b.opset >= 11 else 1
        scales = const_of(node.inputs[index]) if len(node.inputs) > index else None
        if scales is None or scales.size != rank or scales[p] != 1:
            raise Unsafe(f"{node.op_type} '{node.name}' resizes by sizes or along the channels")
    carry(b, node, axis, layout)


_UNARY = ("Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
          "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Identity", "Dropout", "Cast",
          "Clip", "Softplus", "Softsign", "Mish", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "ThresholdedRelu")
RULES: dict[str, Rule] = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul,
    **{op: _elementwise for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu")},
    **{op: _same for op in _UNARY},
    "Softmax": _softmax, "LogSoftmax": _softmax,
    **{op: _spatial for op in ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
                               "GlobalLpPool", "BatchNormalization", "InstanceNormalization")},
    "LayerNormalization": _layer_norm,
    "Pad": _pad_resize, "Resize": _pad_resize, "Upsample": _pad_resize,
    "Flatten": flatten_rule, "Reshape": reshape_rule, "Transpose": transpose_rule,
    "Squeeze": squeeze_rule, "Unsqueeze": squeeze_rule,
    **{op: reduce_rule for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                              "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp")},
    "Concat": concat_rule, "Split": split_rule, "Slice": slice_rule, "Shape": shape_rule,
}
