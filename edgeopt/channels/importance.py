"""Importance of each channel of a coupled-channel group: which ones to remove first.

Criteria:

- ``l1`` / ``l2``: magnitude of every weight the channel owns across the group,
  the sources' output rows and the sinks' input columns together (Torch-Pruning's
  group magnitude importance, summed over members).
- ``bn``: ``|gamma|`` of the BatchNorm(s) in the group (network slimming). Run it
  before ``fold-batchnorm``: a folded group has no BatchNorm and is left unpruned.
- ``activation``: mean ``|x|`` of the channel at every sink's input on calibration
  data, streamed batch by batch (only per-position sums are kept).
- ``reconstruction``: how much the sinks' outputs change when the channel is removed,
  ``sum over sinks of ||W[:, c]||^2 * E[x_c^2]`` with ``W[:, c]`` the sink weights that read
  the channel and ``E[x_c^2]`` its second moment on calibration data (streamed the same
  way). Exact for removing one channel from a linear sink (``E||dy||^2``); cross terms
  between removed channels are neglected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Literal

import numpy as np
import onnx_ir as ir

from edgeopt.calibration.stream import stream_outputs
from edgeopt.channels.builder import Carrier, ChannelGroup, ChannelGroups, Member
from edgeopt.core.runtime import Feeds

logger = logging.getLogger(__name__)

Criterion = Literal["l1", "l2", "bn", "activation", "reconstruction"]
CALIBRATED: tuple[Criterion, ...] = ("activation", "reconstruction")
"""Criteria that need calibration data."""


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
    carriers, means = _sink_input_means(model, groups, calibration, power=1, samples=samples, on_batch=on_batch)
    return _to_groups(groups, carriers, means)


def reconstruction_scores(
    model: ir.Model, groups: ChannelGroups, calibration: str | Iterable[Feeds], *, samples: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[int, np.ndarray]:
    """``E||dy||^2`` of the sinks when one channel goes: ``||W[:, c]||^2 * E[x_c^2]`` summed over sinks."""
    carriers, means = _sink_input_means(model, groups, calibration, power=2, samples=samples, on_batch=on_batch)
    sinks = {name for g in groups.prunable() for name in g.sinks}
    weighted = {}
    for carrier in carriers:
        norms = np.zeros(carrier.length)
        for node, index in carrier.value.uses():
            column = _sink_column_norms(node, index, sinks)
            if column is not None and column.size == carrier.length:
                norms += column
        weighted[str(carrier.value.name)] = means[str(carrier.value.name)] * norms
    return _to_groups(groups, carriers, weighted, reduce="sum")


def _sink_column_norms(node: ir.Node, index: int, sinks: set[str]) -> np.ndarray | None:
    """``||W[:, j]||^2`` per input position ``j`` of a sink (None: ``node`` is not a sink reading input 0)."""
    if index != 0 or (node.name or node.op_type) not in sinks or len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    tensor = ir.convenience.get_const_tensor(node.inputs[1])
    if tensor is None or (node.op_type == "Conv" and node.attributes.get_int("group", 1) != 1):
        return None
    weight = tensor.numpy().astype(np.float64)
    axis = {"Conv": 1, "MatMul": 0}.get(node.op_type, 1 if node.attributes.get_int("transB", 0) else 0)
    moved = np.moveaxis(weight ** 2, axis, 0)
    return moved.reshape(moved.shape[0], -1).sum(axis=1)


def _sink_input_means(
    model: ir.Model, groups: ChannelGroups, calibration: str | Iterable[Feeds], *, power: int,
    samples: int | None, on_batch: Callable[[int], None] | None,
) -> tuple[list[Carrier], dict[str, np.ndarray]]:
    """Mean ``|x|**power`` per position of every sink input, streamed over the calibration data."""
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
            moved = np.moveaxis(np.abs(np.asarray(batch[name], dtype=np.float64)) ** power, carrier.axis, -1)
            flat = moved.reshape(-1, moved.shape[-1])
            sums[name] += flat.sum(axis=0)
            rows[name] += flat.shape[0]
        seen += len(next(iter(batch.values())))
        if on_batch is not None:
            on_batch(seen)
    return carriers, {n: sums[n] / max(rows[n], 1) for n in names}


def _to_groups(groups: ChannelGroups, carriers: list[Carrier], means: dict[str, np.ndarray], *,
               reduce: Literal["mean", "sum"] = "mean") -> dict[int, np.ndarray]:
    scores = {g.id: np.zeros(g.size) for g in groups.prunable()}
    for carrier in carriers:
        mean = means[str(carrier.value.name)]
        offset = 0
        for segment in carrier.layout:
            width = segment.count * segment.block
            if segment.group in scores:
                part = mean[offset:offset + width].reshape(segment.count, segment.block)
                part = part.mean(axis=1) if reduce == "mean" else part.sum(axis=1)
                scores[segment.group] += part
            offset += width
    return scores
