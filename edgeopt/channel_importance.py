"""Importance of each channel of a coupled-channel group: which ones to remove first.

Criteria:

- ``l1`` / ``l2``: magnitude of every weight the channel owns across the group,
  the sources' output rows and the sinks' input columns together (Torch-Pruning's
  group magnitude importance, summed over members).
- ``bn``: ``|gamma|`` of the BatchNorm(s) in the group (network slimming). Run it
  before ``fold-batchnorm``: a folded group has no BatchNorm and is left unpruned.
- ``activation``: mean ``|x|`` of the channel at every sink's input on calibration
  data, streamed batch by batch (only per-position sums are kept).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Literal

import numpy as np
import onnx_ir as ir

from edgeopt.channel_groups import Carrier, ChannelGroup, ChannelGroups, Member
from edgeopt.runtime import Feeds

logger = logging.getLogger(__name__)

Criterion = Literal["l1", "l2", "bn", "activation"]


def _per_channel(array: np.ndarray, member: Member, size: int, *, power: int) -> np.ndarray:
    """Sum of ``|w|**power`` per group channel of a member constant."""
    moved = np.moveaxis(np.abs(array.astype(np.float64)) ** power, member.axis, 0)
    span = moved[member.offset:member.offset + size * member.block]
    return span.reshape(size, -1).sum(axis=1)


def _const(value: ir.Value) -> np.ndarray:
    tensor = ir.convenience.get_const_tensor(value)
    assert tensor is not None, f"group member '{value.name}' is not a constant"
    return tensor.numpy()


def magnitude_scores(group: ChannelGroup, *, power: int) -> np.ndarray:
    """L1 (``power=1``) or L2 (``power=2``) norm of each channel's weights in the group."""
    total = np.zeros(group.size)
    for member in group.members:
        if member.role in ("out", "in"):
            total += _per_channel(_const(member.value), member, group.size, power=power)
    return total if power == 1 else np.sqrt(total)


def bn_scores(group: ChannelGroup) -> np.ndarray | None:
    """``|gamma|`` summed over the group's BatchNorms; None when the group has none."""
    members = [m for m in group.members if m.role == "bn"]
    if not members:
        return None
    return sum((_per_channel(_const(m.value), m, group.size, power=1) for m in members), np.zeros(group.size))


def weight_scores(groups: Iterable[ChannelGroup], criterion: Criterion) -> dict[int, np.ndarray]:
    """Scores of the weight-only criteria; groups ``bn`` cannot score get a reason instead."""
    scores: dict[int, np.ndarray] = {}
    for group in groups:
        if criterion in ("l1", "l2"):
            scores[group.id] = magnitude_scores(group, power=1 if criterion == "l1" else 2)
        elif criterion == "bn":
            found = bn_scores(group)
            if found is None:
                group.reason = "no BatchNorm in the group (criterion 'bn'; run before fold-batchnorm)"
            else:
                scores[group.id] = found
    return scores


def sink_inputs(groups: ChannelGroups) -> list[Carrier]:
    """Carried tensors read by a sink of a prunable group: where activations are measured."""
    sinks = {name for g in groups.prunable() for name in g.sinks}
    out = []
    for carrier in groups.carriers:
        users = {node.name or node.op_type for node, _ in carrier.value.uses()}
        if users & sinks and carrier.value.name:
            out.append(carrier)
    return out


def activation_scores(
    model: ir.Model, groups: ChannelGroups, calibration: str | Iterable[Feeds], *, samples: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[int, np.ndarray]:
    """Mean ``|x|`` of each channel where the group's sinks read it, over the calibration data."""
    from edgeopt.calibrate import stream_outputs

    carriers = sink_inputs(groups)
    names = [str(c.value.name) for c in carriers]
    work = model.clone()
    present = {v.name for v in work.graph.outputs}
    by_name = {v.name: v for node in work.graph for v in node.outputs}
    work.graph.outputs.extend(by_name[n] for n in names if n not in present and n in by_name)
    sums = {n: np.zeros(c.length) for n, c in zip(names, carriers, strict=True)}
    rows = dict.fromkeys(names, 0)
    seen = 0
    for batch in stream_outputs(work, names, calibration, model=model, samples=samples):
        for name, carrier in zip(names, carriers, strict=True):
            moved = np.moveaxis(np.abs(np.asarray(batch[name], dtype=np.float64)), carrier.axis, -1)
            flat = moved.reshape(-1, moved.shape[-1])
            sums[name] += flat.sum(axis=0)
            rows[name] += flat.shape[0]
        seen += len(next(iter(batch.values())))
        if on_batch is not None:
            on_batch(seen)
    return _to_groups(groups, carriers, {n: sums[n] / max(rows[n], 1) for n in names})


def _to_groups(groups: ChannelGroups, carriers: list[Carrier], means: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    scores = {g.id: np.zeros(g.size) for g in groups.prunable()}
    for carrier in carriers:
        mean = means[str(carrier.value.name)]
        offset = 0
        for segment in carrier.layout:
            width = segment.count * segment.block
            if segment.group in scores:
                part = mean[offset:offset + width].reshape(segment.count, segment.block).mean(axis=1)
                scores[segment.group] += part
            offset += width
    return scores
