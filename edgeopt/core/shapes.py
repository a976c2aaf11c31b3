"""Fill in missing value types and shapes with ONNX shape inference (conservatively).

The ``infer-shapes`` pass (:mod:`edgeopt.passes.infer_shapes`) wraps
:func:`infer_shapes`; the core and the engines call the function directly.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

logger = logging.getLogger(__name__)


def infer_shapes(model: ir.Model, *, data_prop: bool = True) -> int:
    """Add to ``model``, in place, the types and shapes ONNX shape inference proves.

    Conservative by design: a value's type is set only when it had none, and a
    dimension only becomes concrete where it was unknown or symbolic; nothing
    known is overwritten and graph inputs are never touched. Strict inference
    is used, so a model that inference rejects is left unchanged. Subgraphs are
    visited (ONNX inference walks them); model-local functions are not.

    Returns:
        How many values got a type or a better shape.
    """

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=data_prop)

    try:
        inferred = ir.serde.deserialize_model(_c_api_utils.call_onnx_api(infer, model))
    except Exception as e:  # noqa: BLE001 - inference rejects the model: keep it as is
        logger.debug("infer-shapes: ONNX shape inference failed (%s); model unchanged", e)
        return 0
    updated = 0
    for graph, inferred_graph in zip(model.graphs(), inferred.graphs(), strict=False):
        updated += _merge_graph(graph, inferred_graph)
    return updated


def _merge_graph(graph: ir.Graph, inferred: ir.Graph) -> int:
    found = ir.convenience.create_value_mapping(inferred)
    inputs = set(graph.inputs)
    updated = 0
    for name, value in ir.convenience.create_value_mapping(graph).items():
        other = found.get(name)
        if other is None or value in inputs or other.type is None:
            continue
        changed = False
        if value.type is None:
            value.type = other.type
            changed = True
        elif value.type != other.type:
            continue  # inference disagrees with a declared type: trust the declaration
        shape = _refine(value.shape, other.shape)
        if shape is not None:
            value.shape = shape
            changed = True
        updated += changed
    return updated


def _refine(known: ir.Shape | None, inferred: ir.Shape | None) -> ir.Shape | None:
    """``known`` with unknown dims taken from ``inferred``; None when nothing improves."""
    if inferred is None:
        return None
    if known is None:
        return inferred
    if len(known) != len(inferred):
        return None
    dims = []
    improved = False
    for mine, theirs in zip(known, inferred, strict=True):
        if isinstance(mine, int) or mine == theirs:
            dims.append(mine)
        elif isinstance(theirs, int) or (mine.value is None and theirs.value is not None):
            dims.append(theirs)
            improved = True
        else:
            dims.append(mine)
    return ir.Shape(dims) if improved else None
