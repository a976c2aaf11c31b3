"""Feature matching (FitNets-style hints): intermediate tensors the student kept from the teacher.

edgeopt's compressions keep value names: pruning slices the weights around a tensor
but the tensor keeps its name, dropping layers removes nodes and leaves the others
as they were, QDQ inserts Q/DQ pairs next to the original names. So the mapping
is found by name: a tensor both graphs compute, made by the same op type, float,
with the same shape in both after shape inference, or fewer entries along one axis (a
pruned tensor keeps some of the teacher's channels, in their order), that is not a graph
output. Of those, ``count`` evenly spread along the student's node order are matched,
with a mean squared error relative to the teacher tensor's mean square.

Which teacher channels a pruned tensor kept is read from data (:func:`channel_maps`): the
order-preserving assignment of student to teacher channels with the largest summed
correlation over one batch (dynamic programming); a tensor whose best assignment
correlates less than 0.5 on average is not matched.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeopt.core.runtime import Feeds, create_session
from edgeopt.core.shapes import infer_shapes

__all__ = ["channel_maps", "match_channels", "shared_features", "with_outputs"]

logger = logging.getLogger(__name__)


def shared_features(student: ir.Model, teacher: ir.Model, count: int) -> list[str]:
    """Up to ``count`` names of intermediate tensors ``student`` kept from ``teacher`` (same op, shape, dtype)."""
    if count <= 0:
        return []
    student, teacher = student.clone(), teacher.clone()
    for model in (student, teacher):
        infer_shapes(model)
    theirs = {v.name: (node.op_type, v) for node in teacher.graph for v in node.outputs if v.name}
    outputs = {v.name for v in student.graph.outputs} | {v.name for v in teacher.graph.outputs}
    found = []
    for node in student.graph:
        for value in node.outputs:
            match = theirs.get(value.name or "")
            if match is None or value.name in outputs or match[0] != node.op_type:
                continue
            other = match[1]
            if value.dtype is None or not value.dtype.is_floating_point() or value.dtype != other.dtype \
                    or value.shape is None or other.shape is None or _cut_axis(value.shape, other.shape) is False:
                continue
            found.append(value.name or "")
    shared = len(found)
    if shared > count:
        step = shared / count
        found = [found[min(shared - 1, int((i + 1) * step) - 1)] for i in range(count)]
    logger.info("distill: matching %d intermediate tensor(s) of %d shared: %s", len(found), shared, found)
    return found


def with_outputs(model: ir.Model, names: list[str]) -> ir.Model:
    """A copy of ``model`` that also outputs the intermediate tensors ``names``."""
    if not names:
        return model
    copy = model.clone()
    values = {v.name: v for node in copy.graph for v in node.outputs}
    copy.graph.outputs.extend(values[name] for name in names)
    return copy


def _cut_axis(mine: ir.Shape, theirs: ir.Shape) -> int | None | bool:
    """None when the shapes are equal, the axis where ``mine`` keeps fewer entries, or False (no match)."""
    if len(mine) != len(theirs):
        return False
    differ = [i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b]
    if not differ:
        return None
    axis = differ[0]
    small, big = mine[axis], theirs[axis]
    if len(differ) > 1 or not isinstance(small, int) or not isinstance(big, int) or small >= big:
        return False
    return axis


def channel_maps(student: dict[str, np.ndarray], teacher: dict[str, np.ndarray], *,
                 min_correlation: float = 0.5) -> dict[str, tuple[int, np.ndarray] | None]:
    """For each tensor of one batch: None (same shape), (axis, the teacher indices it kept), or left out.

    Args:
        student: The student's values of the matched tensors on one batch.
        teacher: The teacher's values of the same tensors on the same batch.
        min_correlation: Tensors whose best assignment correlates less on average are left out.
    """
    maps: dict[str, tuple[int, np.ndarray] | None] = {}
    for name, mine in student.items():
        theirs = teacher[name]
        if mine.shape == theirs.shape:
            maps[name] = None
            continue
        axis = next(i for i, (a, b) in enumerate(zip(mine.shape, theirs.shape, strict=True)) if a != b)
        corr = _correlation(mine, theirs, axis)
        kept, score = _monotone_assignment(corr)
        if score / len(kept) < min_correlation:
            logger.info("distill: not matching '%s': its channels correlate %.2f with the teacher's", name,
                        score / len(kept))
            continue
        maps[name] = (axis, kept)
    return maps


def _correlation(mine: np.ndarray, theirs: np.ndarray, axis: int, most: int = 4096) -> np.ndarray:
    """Pearson correlation of every student channel with every teacher channel along ``axis``."""
    rows = [np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).astype(np.float64) for a in (mine, theirs)]
    step = max(1, rows[0].shape[1] // most)
    s, t = (r[:, ::step] for r in rows)
    s = (s - s.mean(1, keepdims=True)) / np.maximum(s.std(1, keepdims=True), 1e-12)
    t = (t - t.mean(1, keepdims=True)) / np.maximum(t.std(1, keepdims=True), 1e-12)
    return s @ t.T / s.shape[1]


def _monotone_assignment(corr: np.ndarray) -> tuple[np.ndarray, float]:
    """Strictly increasing teacher indices, one per student row, maximizing the summed correlation."""
    rows, cols = corr.shape
    best = np.full((rows, cols), -np.inf)
    best[0] = corr[0]
    for i in range(1, rows):
        before = np.concatenate([[-np.inf], np.maximum.accumulate(best[i - 1])[:-1]])
        best[i] = corr[i] + before
    kept = np.empty(rows, np.int64)
    kept[-1] = int(np.argmax(best[-1]))
    for i in range(rows - 2, -1, -1):
        kept[i] = int(np.argmax(best[i, :kept[i + 1]]))
    return kept, float(best[-1, kept[-1]])


def match_channels(student: ir.Model, features: list[str], teacher: Any,
                   feeds: Feeds) -> dict[str, tuple[int, np.ndarray] | None]:
    """:func:`channel_maps` of ``features`` on one batch: the student in ONNX Runtime, ``teacher`` a session."""
    if not features:
        return {}
    mine = create_session(with_outputs(student, features)).run(features, feeds)
    theirs = teacher.run(features, feeds)
    return channel_maps(dict(zip(features, mine, strict=True)), dict(zip(features, theirs, strict=True)))
