"""Helpers shared by the channel rules (:mod:`edgeopt.channels.rules`, :mod:`edgeopt.channels.rules_shape`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from edgeopt.channels.builder import GroupBuilder, Layout, Segment

DEFAULT_DOMAINS = ("", "ai.onnx")

Rule = Callable[[GroupBuilder, ir.Node, list[int]], None]
"""A rule: carry, consume or block the layouts on a node's inputs ``laid`` (their indices)."""


class Unsafe(Exception):  # noqa: N818 - a control-flow signal, not an error for users
    """The node cannot carry its input channels; the message is the reason."""


def const_of(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.is_graph_input():
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except Exception:  # noqa: BLE001 - malformed Constant, unreadable external data
        return None
    return None if tensor is None else tensor.numpy()


def rank_of(value: ir.Value | None) -> int:
    if value is None or value.shape is None:
        raise Unsafe(f"rank of '{value.name if value else '?'}' is unknown (run infer-shapes)")
    return len(value.shape)


def static_dims(value: ir.Value) -> list[int | None]:
    if value.shape is None:
        raise Unsafe(f"shape of '{value.name}' is unknown (run infer-shapes)")
    return [d if isinstance(d, int) else None for d in value.shape.dims]


def layout_length(layout: Layout) -> int:
    return sum(s.count * s.block for s in layout)


def carried_input(b: GroupBuilder, node: ir.Node, index: int = 0) -> tuple[ir.Value, int, Layout]:
    value = node.inputs[index]
    assert value is not None
    axis, layout = b.layouts[value]
    return value, axis, layout


def only_first(node: ir.Node, laid: list[int]) -> None:
    if any(i != 0 for i in laid):
        raise Unsafe(f"{node.op_type} '{node.name}' takes channels on a parameter input")


def extra_outputs_unused(node: ir.Node) -> None:
    if any(v.uses() or v.is_graph_output() for v in node.outputs[1:]):
        raise Unsafe(f"{node.op_type} '{node.name}' has extra outputs in use")


def carry(b: GroupBuilder, node: ir.Node, axis: int, layout: Layout) -> None:
    b.layouts[node.outputs[0]] = (axis, layout)


def new_source(b: GroupBuilder, node: ir.Node, size: int) -> Layout:
    return (Segment(b.new_group(size, node.name or node.op_type), size),)
