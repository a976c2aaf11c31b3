"""Which channels of each group to remove: ratios, per-layer caps, rounding, and the plan report.

``uniform`` removes ``ratio`` of every prunable group; ``global`` ranks every
channel of every prunable group together (scores divided by their group's mean,
so layers of different scale compare) and removes the lowest ``ratio`` of all.
Either way a group keeps at least ``1 - max_ratio`` of its channels, and the kept
count is rounded *up* to a multiple of ``round_to`` features (never above the group size;
a group of attention heads of ``head_dim`` features rounds its head count accordingly),
so rounding prunes less rather than more; ``rounding="down"`` rounds as Torch-Pruning
does (prunes more, but keeps at least ``round_to``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edgeopt.channels.builder import ChannelGroup

Scope = Literal["uniform", "global"]
Rounding = Literal["up", "down"]
Kinds = Literal["all", "channels", "heads"]
"""Which groups a run prunes: every group, plain channels only, or attention heads only."""


@dataclass
class GroupPlan:
    """One group in the plan: how many channels it keeps, or why it is left alone."""

    id: int
    size: int
    keep: int
    sources: list[str]
    sinks: list[str]
    reason: str | None = None
    removed: list[int] = field(default_factory=list)
    head_dim: int | None = None
    """Attention heads of this many features (None: plain channels)."""

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "keep": self.keep, "sources": self.sources,
                "sinks": self.sinks, "reason": self.reason, "head_dim": self.head_dim}


@dataclass
class PrunePlan:
    """Every group of a model with what pruning does to it."""

    groups: list[GroupPlan]
    criterion: str
    ratio: float
    scope: str

    @property
    def channels(self) -> tuple[int, int]:
        """(channels before, channels after) over all groups."""
        return sum(g.size for g in self.groups), sum(g.keep for g in self.groups)

    def as_dict(self) -> dict[str, Any]:
        before, after = self.channels
        return {"criterion": self.criterion, "ratio": self.ratio, "scope": self.scope,
                "channels_before": before, "channels_after": after,
                "groups": [g.as_dict() for g in self.groups]}


def keep_count(size: int, wanted: float, *, round_to: int, max_ratio: float, rounding: Rounding = "up") -> int:
    """``wanted`` kept channels, at least ``ceil((1 - max_ratio) * size)`` and 1, rounded up
    (or down, as Torch-Pruning does, but never below ``round_to``) to a multiple of
    ``round_to``, at most ``size``."""
    floor = max(1, math.ceil((1.0 - max_ratio) * size - 1e-9))
    keep = max(wanted, floor)
    if round_to > 1:
        steps = math.ceil(keep / round_to - 1e-9) if rounding == "up" else max(1, math.floor(keep / round_to + 1e-9))
        keep = steps * round_to
    return min(size, max(1, math.ceil(keep - 1e-9)))


def select(
    groups: list[ChannelGroup], scores: dict[int, np.ndarray], *, ratio: float, scope: Scope,
    round_to: int, max_ratio: float, rounding: Rounding = "up",
) -> dict[int, np.ndarray]:
    """Channel indices to remove per group id (groups without scores are left alone)."""
    scored = [g for g in groups if g.prunable and g.id in scores]
    if ratio <= 0 or not scored:
        return {}
    wanted: dict[int, float] = {}
    if scope == "uniform":
        wanted = {g.id: g.size * (1.0 - ratio) for g in scored}
    else:
        normalized = {g.id: scores[g.id] / (float(np.mean(scores[g.id])) or 1.0) for g in scored}
        flat = np.sort(np.concatenate(list(normalized.values())))
        cut = int(math.floor(ratio * flat.size + 1e-9))
        threshold = flat[cut - 1] if cut > 0 else -np.inf
        wanted = {g.id: g.size - int(np.sum(normalized[g.id] <= threshold)) for g in scored}
    removed: dict[int, np.ndarray] = {}
    for group in scored:
        unit = round_to // math.gcd(round_to, group.width)  # heads of 32 features are aligned already
        keep = keep_count(group.size, wanted[group.id], round_to=unit, max_ratio=max_ratio, rounding=rounding)
        if keep < group.size:
            order = np.argsort(scores[group.id], kind="stable")  # lowest first
            removed[group.id] = np.sort(order[:group.size - keep]).astype(np.int64)
    return removed


def make_plan(
    groups: list[ChannelGroup], removed: dict[int, np.ndarray], *, criterion: str, ratio: float, scope: str
) -> PrunePlan:
    rows = [
        GroupPlan(id=g.id, size=g.size, keep=g.size - int(removed.get(g.id, np.zeros(0)).size),
                  sources=list(g.sources), sinks=list(g.sinks), reason=g.reason,
                  removed=[int(i) for i in removed.get(g.id, np.zeros(0, dtype=np.int64))], head_dim=g.head_dim)
        for g in groups
    ]
    return PrunePlan(rows, criterion, ratio, scope)
