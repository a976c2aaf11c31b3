"""Fill in missing value types and shapes with ONNX shape inference (conservatively).

The ``infer-shapes`` pass (:mod:`edgeopt.passes.infer_shapes`) wraps
:func:`infer_shapes`; the core and the engines call the function directly.
"""

from __future__ import annotations

import dataclasses
import logging

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

from edgeopt.core.rewire import producers_within

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
    plain = _infer(model, None, data_prop=False)
    if plain is None:
        return 0
    if not data_prop:
        return len(_merge(model, plain))
    # Data propagation resolves shapes computed from shapes (int tensors). Constant float
    # chains (a codebook's bit unpacking) add nothing to it but cost 40x the plain pass
    # (MiniLM-L6 at 16 clusters: 4.4 s vs 0.1 s): they are left out of it, their results
    # declared as inputs of the shapes the plain pass found, and their own values take
    # the plain pass's shapes.
    chains = _ConstantFloatChains.of(model.graph, plain.graph)
    propagated = _infer(model, chains, data_prop=True)
    updated = _merge(model, propagated) if propagated is not None else set()
    return len(updated | _merge(model, plain, only=chains.values))


def _infer(model: ir.Model, cut: _ConstantFloatChains | None, *, data_prop: bool) -> ir.Model | None:
    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        if cut is not None:
            cut.leave_out(proto.graph)
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=data_prop)

    try:
        return ir.serde.deserialize_model(_c_api_utils.call_onnx_api(infer, model))
    except Exception as e:  # noqa: BLE001 - inference rejects the model: keep it as is
        logger.debug("infer-shapes: ONNX shape inference failed (%s); model unchanged", e)
        return None


def _merge(model: ir.Model, inferred: ir.Model, *, only: frozenset[str] | None = None) -> set[ir.Value]:
    updated: set[ir.Value] = set()
    for graph, inferred_graph in zip(model.graphs(), inferred.graphs(), strict=False):
        updated |= _merge_graph(graph, inferred_graph, only)
    return updated


@dataclasses.dataclass(frozen=True)
class _ConstantFloatChains:
    """Nodes of the main graph that compute only from constants and whose results outside
    the chain are float values of known rank: what data propagation can do without."""

    outputs: frozenset[str]  # the first output of each node to leave out
    values: frozenset[str]  # every value those nodes compute
    results: tuple[onnx.ValueInfoProto, ...]  # what the rest of the graph reads from them

    @classmethod
    def of(cls, graph: ir.Graph, inferred: ir.Graph) -> _ConstantFloatChains:
        """The chains of ``graph``, typed by ``inferred`` (the same graph after plain inference)."""
        typed = ir.convenience.create_value_mapping(inferred)
        constant: set[ir.Value] = set(graph.initializers.values())
        chain: list[ir.Node] = []
        for node in graph:
            if node.domain in ("", "ai.onnx") and node.outputs and not _has_subgraphs(node) \
                    and all(v is None or v in constant for v in node.inputs):
                constant.update(node.outputs)
                chain.append(node)
        members = set(chain)
        graph_outputs = set(graph.outputs)
        read_outside = {v for node in chain for v in node.outputs
                        if v in graph_outputs or any(user not in members for user, _ in v.uses())}
        keep: set[ir.Node] = set()
        for value in read_outside:
            if value in graph_outputs or not _float_of_known_rank(typed.get(value.name or "")):
                keep |= producers_within(value.producer(), members)
        left_out = [node for node in chain if node not in keep]
        results = tuple(ir.serde.serialize_value(typed[v.name or ""]) for node in left_out for v in node.outputs
                        if v in read_outside)
        return cls(frozenset(node.outputs[0].name or "" for node in left_out),
                   frozenset(v.name or "" for node in left_out for v in node.outputs), results)

    def leave_out(self, graph: onnx.GraphProto) -> None:
        """Remove the chains from ``graph`` (a copy made for inference) and declare their results."""
        if not self.outputs:
            return
        kept = [node for node in graph.node if not (node.output and node.output[0] in self.outputs)]
        del graph.node[:]
        graph.node.extend(kept)
        graph.input.extend(self.results)


def _float_of_known_rank(value: ir.Value | None) -> bool:
    return value is not None and value.dtype is not None and value.dtype.is_floating_point() and value.shape is not None


def _merge_graph(graph: ir.Graph, inferred: ir.Graph, only: frozenset[str] | None) -> set[ir.Value]:
    found = ir.convenience.create_value_mapping(inferred)
    inputs = set(graph.inputs)
    updated: set[ir.Value] = set()
    for name, value in ir.convenience.create_value_mapping(graph).items():
        other = found.get(name)
        if other is None or value in inputs or other.type is None or (only is not None and name not in only):
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
        if changed:
            updated.add(value)
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


def _has_subgraphs(node: ir.Node) -> bool:
    return any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values())
