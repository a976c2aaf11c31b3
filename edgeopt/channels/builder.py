"""Coupled-channel groups of an ONNX graph: which weights must be cut together.

A *group* is a set of channels that only exist together: the output channels of
one or more layers (Conv, Gemm, MatMul with a constant weight: the *sources*),
every constant that is indexed by those channels on the way (bias, BatchNorm
parameters, depthwise Conv weights, per-channel constants of elementwise ops),
and the input channels of the layers that consume them (the *sinks*). Residual
Add/Mul merge the groups of their operands into one; Concat lays several groups
(and fixed channels) side by side on one axis; Flatten/Reshape into a Gemm turns
each channel into a block of features. The rules per op live in
:mod:`edgeopt.channels.rules`, which build on this module (never the reverse:
:func:`edgeopt.channels.groups.build_groups` hands the rule table to the walk); an
op without a rule marks the groups reaching it unprunable, with the reason, so
nothing is pruned unsafely.

The result is plain data (:class:`ChannelGroups`) that importance criteria score
and ``prune-channels`` slices. Graph inputs and outputs keep their shapes: a
group that reaches a graph output is unprunable.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)

Role = Literal["out", "in", "bias", "bn", "param"]
"""What a member is: a source's weight (``out``), a sink's weight (``in``), a bias,
a BatchNorm scale (``bn``) or another per-channel constant (``param``)."""


@dataclass(frozen=True)
class Segment:
    """A run of channels on one axis: ``count`` channels of ``group`` (None: fixed
    channels that never change), each spanning ``block`` consecutive positions."""

    group: int | None
    count: int
    block: int = 1


Layout = tuple[Segment, ...]
"""One channel axis of a tensor: its segments in order."""


@dataclass(frozen=True)
class Carrier:
    """A tensor whose ``axis`` (negative, counted from the end) is laid out by ``layout``."""

    value: ir.Value
    axis: int
    layout: Layout

    @property
    def length(self) -> int:
        return sum(s.count * s.block for s in self.layout)


@dataclass(frozen=True)
class Member:
    """A constant cut with a group: channel ``c`` of the group is positions
    ``offset + c * block ... + block`` of ``axis``."""

    value: ir.Value
    axis: int
    offset: int
    block: int
    role: Role


@dataclass
class ChannelGroup:
    """Channels removed together, with everything indexed by them."""

    id: int
    size: int
    sources: list[str] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    sinks: list[str] = field(default_factory=list)
    reason: str | None = None
    """Why the group is unprunable (None: it can be pruned)."""
    head_dim: int | None = None
    """Attention heads: each channel is one head of ``head_dim`` features (None: plain channels)."""

    @property
    def prunable(self) -> bool:
        return self.reason is None

    @property
    def width(self) -> int:
        """Features per channel at the sources (``head_dim`` for heads, else 1)."""
        return self.head_dim or 1

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "sources": self.sources, "sinks": self.sinks,
                "constants": sorted({str(m.value.name) for m in self.members}), "reason": self.reason,
                "head_dim": self.head_dim}


@dataclass
class ChannelGroups:
    """Every group of a graph, plus the tensors and Reshape shapes that carry them."""

    groups: list[ChannelGroup]
    carriers: list[Carrier]
    reshapes: list[tuple[ir.Value, int, Layout]]
    """``(shape constant, index, layout)``: a Reshape target entry to recompute."""
    depthwise: list[tuple[ir.Node, Layout]] = field(default_factory=list)
    """Depthwise Convs whose ``group`` attribute is the channel count of the layout."""
    targets: list[tuple[ir.Node, np.ndarray, Layout]] = field(default_factory=list)
    """``(Reshape, new target, layout)``: Reshapes that get their own count-free target
    (``0`` copies, ``-1`` infers) when a group of the layout is pruned (head splits and merges)."""

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def by_id(self) -> dict[int, ChannelGroup]:
        return {g.id: g for g in self.groups}


class GroupBuilder:
    """Union-find over raw group ids while the rules walk the graph."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self._parent: list[int] = []
        self._size: list[int] = []
        self._sources: list[list[str]] = []
        self.members: list[tuple[int, Member]] = []
        self.sinks: list[tuple[int, str]] = []
        self.reasons: dict[int, str] = {}
        self.layouts: dict[ir.Value, tuple[int, Layout]] = {}
        self.reshapes: list[tuple[ir.Value, int, Layout]] = []
        self.depthwise: list[tuple[ir.Node, Layout]] = []
        self.targets: list[tuple[ir.Node, np.ndarray, Layout]] = []
        self.head_dims: dict[int, int] = {}

    def new_group(self, size: int, source: str) -> int:
        self._parent.append(len(self._parent))
        self._size.append(size)
        self._sources.append([source])
        return len(self._parent) - 1

    def find(self, group: int) -> int:
        while self._parent[group] != group:
            self._parent[group] = self._parent[self._parent[group]]
            group = self._parent[group]
        return group

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[rb] = ra
            self._sources[ra].extend(self._sources[rb])
            if rb in self.head_dims:
                self.head_dims.setdefault(ra, self.head_dims[rb])

    def coarsen(self, group: int, factor: int) -> None:
        """Make every ``factor`` consecutive channels of ``group`` one channel (attention heads of
        ``factor`` features): every layout, member and shape entry recorded so far is rewritten.
        Raises ValueError (nothing changed) when a layout does not split evenly."""
        root = self.find(group)

        def mine(raw: int | None) -> bool:
            return raw is not None and self.find(raw) == root

        layouts = [layout for _, layout in self.layouts.values()] + [layout for _, _, layout in self.reshapes]
        layouts += [layout for _, _, layout in self.targets]
        if any(any(mine(s.group) for s in layout) for _, layout in self.depthwise):
            raise ValueError("a depthwise Conv carries the channels")
        if any(s.count % factor for layout in layouts for s in layout if mine(s.group)):
            raise ValueError(f"the channels do not split into blocks of {factor}")

        def convert(layout: Layout) -> Layout:
            return tuple(Segment(s.group, s.count // factor, s.block * factor) if mine(s.group) else s for s in layout)

        self.layouts = {v: (axis, convert(layout)) for v, (axis, layout) in self.layouts.items()}
        self.reshapes = [(v, i, convert(layout)) for v, i, layout in self.reshapes]
        self.targets = [(n, t, convert(layout)) for n, t, layout in self.targets]
        self.members = [(raw, dataclasses.replace(m, block=m.block * factor) if mine(raw) else m)
                        for raw, m in self.members]
        self._size[root] //= factor
        self.head_dims[root] = self.head_dims.get(root, 1) * factor

    def block(self, layout: Layout, reason: str) -> None:
        """Mark every group of ``layout`` unprunable (the first reason is kept)."""
        for segment in layout:
            if segment.group is not None:
                root = self.find(segment.group)
                if root not in self.reasons:
                    logger.debug("channel groups: group %d unprunable: %s", root, reason)
                self.reasons.setdefault(root, reason)

    def add_members(self, value: ir.Value, axis: int, layout: Layout, role: Role) -> None:
        """``value``'s ``axis`` (non-negative) is laid out by ``layout``."""
        offset = 0
        for segment in layout:
            if segment.group is not None:
                self.members.append((segment.group, Member(value, axis, offset, segment.block, role)))
            offset += segment.count * segment.block

    def add_sink(self, layout: Layout, node: ir.Node) -> None:
        for segment in layout:
            if segment.group is not None:
                self.sinks.append((segment.group, node.name or node.op_type))

    def finish(self) -> ChannelGroups:
        roots = sorted({self.find(g) for g in range(len(self._parent))})
        groups = {r: ChannelGroup(id=r, size=self._size[r], sources=self._sources[r],
                                  reason=self.reasons.get(r)) for r in roots}
        for raw, head_dim in self.head_dims.items():
            groups[self.find(raw)].head_dim = head_dim
        for reason_root, reason in self.reasons.items():
            groups[self.find(reason_root)].reason = groups[self.find(reason_root)].reason or reason
        for raw, member in self.members:
            groups[self.find(raw)].members.append(member)
        for raw, sink in self.sinks:
            if sink not in groups[self.find(raw)].sinks:
                groups[self.find(raw)].sinks.append(sink)
        for group in groups.values():
            _check_members(group)
        remap = {v: (axis, self.normalize(layout)) for v, (axis, layout) in self.layouts.items()}
        carriers = [Carrier(v, axis, layout) for v, (axis, layout) in remap.items()]
        reshapes = [(v, i, self.normalize(layout)) for v, i, layout in self.reshapes]
        depthwise = [(n, self.normalize(layout)) for n, layout in self.depthwise]
        targets = [(n, t, self.normalize(layout)) for n, t, layout in self.targets]
        return ChannelGroups(list(groups.values()), carriers, reshapes, depthwise, targets)

    def normalize(self, layout: Layout) -> Layout:
        return tuple(Segment(None if s.group is None else self.find(s.group), s.count, s.block) for s in layout)


def _check_members(group: ChannelGroup) -> None:
    """A constant also used outside the group's nodes cannot be sliced safely."""
    if group.reason is not None:
        return
    for member in group.members:
        if member.value.is_graph_input() or member.value.is_graph_output():
            group.reason = f"constant '{member.value.name}' is a graph input or output"
            return
        users = {id(node) for node, _ in member.value.uses()}
        if len(users) > 1:
            group.reason = f"constant '{member.value.name}' is shared by {len(users)} nodes"
            return


def positions(layout: Layout, removed: dict[int, np.ndarray]) -> np.ndarray:
    """Positions along an axis laid out by ``layout`` that go when ``removed[group]`` channels go."""
    out: list[np.ndarray] = []
    offset = 0
    for segment in layout:
        channels = removed.get(segment.group) if segment.group is not None else None
        if channels is not None and channels.size:
            base = offset + channels[:, None] * segment.block + np.arange(segment.block)[None, :]
            out.append(base.reshape(-1))
        offset += segment.count * segment.block
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


def kept_length(layout: Layout, removed: dict[int, np.ndarray]) -> int:
    total = sum(s.count * s.block for s in layout)
    return total - int(positions(layout, removed).size)
