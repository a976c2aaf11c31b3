"""Feature matching (FitNets-style hints): intermediate tensors the student kept from the teacher.

edgeopt's compressions keep value names: pruning slices the weights around a tensor
but the tensor keeps its name, dropping layers removes nodes and leaves the others
as they were, QDQ inserts Q/DQ pairs next to the original names. So the mapping
is found by name: a tensor both graphs compute, made by the same op type, float,
with the same shape in both after shape inference (a pruned tensor with fewer channels
is not a match), that is not a graph output. Of those, ``count`` evenly spread along the
student's node order are matched, with a mean squared error relative to the
teacher tensor's mean square.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from edgeopt.core.shapes import infer_shapes

__all__ = ["shared_features", "with_outputs"]

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
                    or value.shape is None or other.shape is None or value.shape != other.shape:
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
