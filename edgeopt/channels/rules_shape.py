"""Channel rules of the ops that move, merge, split or read axes: Flatten, Reshape, Transpose,
Squeeze/Unsqueeze, reductions, Concat, Split, Slice and Shape (see :mod:`edgeopt.channels.rules`)."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from edgeopt.channels.builder import GroupBuilder, Layout, Segment
from edgeopt.channels.rule_kit import (
    Unsafe,
    carried_input,
    carry,
    const_of,
    layout_length,
    only_first,
    rank_of,
    static_dims,
)


def flatten_rule(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    if not laid:
        return
    value, axis, layout = carried_input(b, node)
    dims = static_dims(value)
    p = len(dims) + axis
    split = node.attributes.get_int("axis", 1) % max(len(dims), 1)
    _merge_tail(b, node, dims, p, split, layout)


def _merge_tail(b: GroupBuilder, node: ir.Node, dims: list[int | None], p: int, split: int, layout: Layout) -> None:
    """Axes ``split..`` merge into the last output axis: each channel becomes a block."""
    tail = dims[p + 1:]
    if split != p or any(d is None for d in tail):
        raise Unsafe(f"{node.op_type} '{node.name}' mixes the channels with other axes")
    factor = math.prod(d for d in tail if d is not None)
    merged = tuple(Segment(s.group, s.count, s.block * factor) for s in layout)
    carry(b, node, -1, merged)


def reshape_rule(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    """Reshape that merges the channel axis with the axes after it (a flatten into a Gemm, or
    attention heads merged back), or that splits the last axis into heads (see :func:`_split_heads`)."""
    if not laid:
        return
    only_first(node, laid)
    value, axis, layout = carried_input(b, node)
    dims = static_dims(value)
    p = len(dims) + axis
    out = node.outputs[0].shape
    if out is not None and len(out) == p + 2 and p == len(dims) - 1 and _same_lead(value, out, p):
        _split_heads(b, node, layout, out, p)
        return
    if out is None or len(out) != p + 1 or not _same_lead(value, out, p):
        raise Unsafe(f"Reshape '{node.name}' splits or moves the channels")
    _merge_tail(b, node, dims, p, p, layout)
    merged = b.layouts[node.outputs[0]][1]
    try:
        target, shape_const = _reshape_target(node)
    except Unsafe:
        target, shape_const = None, None
    if target is not None and target[-1] <= 0:
        return  # -1 or 0 in the channel entry: nothing to rewrite
    if target is not None and shape_const is not None and len(shape_const.uses()) == 1:
        b.reshapes.append((shape_const, target.size - 1, merged))
    else:  # computed or shared target: this Reshape gets its own ``[0, .., 0, -1]``
        b.targets.append((node, np.array([0] * p + [-1], dtype=np.int64), merged))


def _same_lead(value: ir.Value, out: ir.Shape, p: int) -> bool:
    """The first ``p`` axes of the Reshape's input and output are the same."""
    assert value.shape is not None
    return all(out[i] == value.shape[i] for i in range(p))


def _split_heads(b: GroupBuilder, node: ir.Node, layout: Layout, out: ir.Shape, p: int) -> None:
    """``[.., E] -> [.., H, D]``: the channel group becomes H heads of D features (coarsened in
    place, so every projection, bias and shape entry met so far moves in blocks of D)."""
    head_dim = out[p + 1]
    if len(layout) != 1 or layout[0].group is None or layout[0].block != 1 or not isinstance(head_dim, int):
        raise Unsafe(f"Reshape '{node.name}' splits channels that are not one group into heads")
    segment = layout[0]
    heads = segment.count // head_dim
    if segment.count % head_dim or (isinstance(out[p], int) and out[p] != heads):
        raise Unsafe(f"Reshape '{node.name}' splits the channels unevenly")
    try:
        b.coarsen(segment.group, head_dim)  # type: ignore[arg-type]
    except ValueError as e:
        raise Unsafe(f"Reshape '{node.name}' splits channels into heads, but {e}") from e
    split = (Segment(segment.group, heads),)
    carry(b, node, -2, split)
    b.targets.append((node, np.array([0] * p + [-1, head_dim], dtype=np.int64), split))


def _reshape_target(node: ir.Node) -> tuple[np.ndarray | None, ir.Value | None]:
    """The target's last entry and the constant holding it: the target itself, or the last
    input of the Concat that builds a dynamic target (``[batch, -1]`` from Shape ops)."""
    target = const_of(node.inputs[1])
    if target is not None:
        return target.reshape(-1), node.inputs[1]
    producer = node.inputs[1].producer() if node.inputs[1] is not None else None
    if producer is not None and producer.op_type == "Concat" and producer.inputs:
        last = const_of(producer.inputs[-1])
        if last is not None and last.size == 1:
            return last.reshape(-1), producer.inputs[-1]
    raise Unsafe(f"Reshape '{node.name}' has a computed shape")


def transpose_rule(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    if not laid:
        return
    value, axis, layout = carried_input(b, node)
    rank = rank_of(value)
    perm = list(node.attributes.get_ints("perm", list(range(rank))[::-1]))
    carry(b, node, perm.index(rank + axis) - rank, layout)


def _axes(b: GroupBuilder, node: ir.Node, input_index: int) -> list[int] | None:
    if "axes" in node.attributes:
        return list(node.attributes.get_ints("axes"))
    array = const_of(node.inputs[input_index]) if len(node.inputs) > input_index else None
    if array is None and len(node.inputs) > input_index and node.inputs[input_index] is not None:
        raise Unsafe(f"{node.op_type} '{node.name}' has computed axes")
    return None if array is None else [int(a) for a in array.reshape(-1)]


def squeeze_rule(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    if not laid:
        return
    only_first(node, laid)
    value, axis, layout = carried_input(b, node)
    rank = rank_of(value)
    p = rank + axis
    axes = _axes(b, node, 1)
    if node.op_type == "Unsqueeze":
        if axes is None:
            raise Unsafe(f"Unsqueeze '{node.name}' has no axes")
        out_rank = rank + len(axes)
        inserted = sorted(a % out_rank for a in axes)
        q = p
        for a in inserted:
            if a <= q:
                q += 1
        carry(b, node, q - out_rank, layout)
        return
    removed = sorted(a % rank for a in axes) if axes else [i for i, d in enumerate(static_dims(value)) if d == 1]
    if p in removed:
        raise Unsafe(f"Squeeze '{node.name}' removes the channel axis")
    carry(b, node, p - sum(a < p for a in removed) - (rank - len(removed)), layout)


def reduce_rule(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    if not laid:
        return
    only_first(node, laid)
    value, axis, layout = carried_input(b, node)
    rank = rank_of(value)
    p = rank + axis
    axes = _axes(b, node, 1)
    reduced = sorted(a % rank for a in axes) if axes else list(range(rank))
    if p in reduced:
        raise Unsafe(f"{node.op_type} '{node.name}' reduces over the channels")
    keep = node.attributes.get_int("keepdims", 1)
    out_rank = rank if keep else rank - len(reduced)
    q = p if keep else p - sum(a < p for a in reduced)
    carry(b, node, q - out_rank, layout)


def concat_rule(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    if not laid:
        return
    first, axis, _ = carried_input(b, node, laid[0])
    rank = rank_of(first)
    if node.attributes.get_int("axis", 0) % rank != rank + axis:
        raise Unsafe(f"Concat '{node.name}' joins along another axis than the channels")
    segments: list[Segment] = []
    for i, value in enumerate(node.inputs):
        assert value is not None
        if i in laid:
            _, other_axis, layout = carried_input(b, node, i)
            if other_axis != axis:
                raise Unsafe(f"Concat '{node.name}' joins channels on different axes")
            segments.extend(layout)
            continue
        dims = list(const_of(value).shape) if const_of(value) is not None else static_dims(value)  # type: ignore[union-attr]
        size = dims[rank + axis]
        if size is None:
            raise Unsafe(f"Concat '{node.name}': input '{value.name}' has a dynamic channel count")
        segments.append(Segment(None, size))
    carry(b, node, axis, tuple(segments))


def split_rule(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    if not laid:
        return
    only_first(node, laid)
    value, axis, layout = carried_input(b, node)
    rank = rank_of(value)
    if node.attributes.get_int("axis", 0) % rank != rank + axis:
        for out in node.outputs:
            b.layouts[out] = (axis, layout)
        return
    sizes = _axes(b, node, 1) if "split" not in node.attributes else list(node.attributes.get_ints("split"))
    if sizes is None:
        total, parts = layout_length(layout), len(node.outputs)
        sizes = [total // parts] * parts if total % parts == 0 else []
    start, cuts = 0, []
    for size in sizes:
        chunk: list[Segment] = []
        used = 0
        for s in _segments_from(layout, start):
            if used == size:
                break
            chunk.append(s)
            used += s.count * s.block
        if used != size:
            raise Unsafe(f"Split '{node.name}' cuts through a channel group")
        cuts.append(tuple(chunk))
        start += size
    if len(cuts) != len(node.outputs):
        raise Unsafe(f"Split '{node.name}' has sizes that do not match its outputs")
    for out, part in zip(node.outputs, cuts, strict=True):
        b.layouts[out] = (axis, part)


def _segments_from(layout: Layout, start: int) -> list[Segment]:
    offset, out = 0, []
    for s in layout:
        if offset >= start:
            out.append(s)
        elif offset + s.count * s.block > start:
            raise Unsafe("Split cuts through a channel group")
        offset += s.count * s.block
    return out


def slice_rule(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    if not laid:
        return
    only_first(node, laid)
    value, axis, layout = carried_input(b, node)
    rank = rank_of(value)
    starts = const_of(node.inputs[1])
    axes = _axes(b, node, 3) if len(node.inputs) > 3 else None
    if starts is None:
        raise Unsafe(f"Slice '{node.name}' has computed starts")
    sliced = [a % rank for a in axes] if axes is not None else list(range(starts.size))
    if rank + axis in sliced:
        raise Unsafe(f"Slice '{node.name}' slices the channels")
    carry(b, node, axis, layout)


def shape_rule(b: GroupBuilder, node: ir.Node, laid: list[int]) -> None:
    if not laid:
        return
    value, axis, _ = carried_input(b, node)
    rank = rank_of(value)
    start = node.attributes.get_int("start", 0) % (rank + 1) if "start" in node.attributes else 0
    end = node.attributes.get_int("end", rank)
    end = end % (rank + 1) if end < 0 else min(end, rank)
    if start <= rank + axis < end:
        raise Unsafe(f"Shape '{node.name}' reads the channel count")
