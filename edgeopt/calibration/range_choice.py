"""Each activation's range chosen by the error it causes at its consumers' outputs.

One calibration method for every tensor is a compromise: MinMax keeps the rare large values a
residual stream needs, MSE and percentile clip the long tails that waste codes elsewhere, and
which matters depends on what reads the tensor. ``auto`` calibration keeps a histogram and the
exact extent of each tensor (:class:`~edgeopt.calibration.observers.RangeCandidatesObserver`: candidate ranges MinMax,
percentile 99.99 % and MSE-optimal), then scores every candidate where it counts: one extra
ONNX Runtime graph runs, beside each quantized consumer of the tensor, a copy of that consumer
fed the tensor through ``QuantizeLinear``/``DequantizeLinear`` with the candidate's parameters,
and sums its squared error against the float consumer (relative to the consumer's output energy);
a graph output is scored on its own error.
The scores stream batch by batch (scalars leave ORT, never activations), and each tensor keeps
the candidate of least error. Ties keep MinMax.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import onnx_ir as ir

from edgeopt.calibration.observers import QuantDtype, qparams_from_range
from edgeopt.core.rewire import Constants, value_names
from edgeopt.core.runtime import Feeds, create_session, model_inputs

logger = logging.getLogger(__name__)


@dataclass
class RangeChoice:
    """The chosen ranges and why."""

    ranges: dict[str, tuple[float, float]]
    chosen: dict[str, str] = field(default_factory=dict)
    """Tensor -> the candidate kept, for the tensors that had a choice."""
    seconds: float = 0.0


def choose_ranges(
    model: ir.Model,
    candidates: Mapping[str, Mapping[str, tuple[float, float]]],
    batches: Iterable[Feeds],
    *,
    consumer_types: Collection[str] | None = None,
    dtype: QuantDtype = "uint8",
    symmetric: bool = False,
) -> RangeChoice:
    """For each tensor, the candidate range of least error at the outputs of its consumers.

    Args:
        model: The float model the ranges were calibrated on (not modified).
        candidates: Tensor -> candidate name -> range (``RangeCandidatesObserver.candidates()``).
        batches: Feeds to score on (a few dozen samples are enough).
        consumer_types: Op types that will read the quantized tensor (None: any op).
        dtype: The activation type the ranges are for.
        symmetric: Symmetric activations.
    """
    started = time.perf_counter()
    ranges = {name: dict(c).get("minmax", next(iter(c.values()))) for name, c in candidates.items() if c}
    work = model.clone()
    scored = _add_scores(work, candidates, consumer_types, dtype, symmetric)
    if not scored:
        return RangeChoice(ranges, {}, time.perf_counter() - started)
    session = create_session(work, low_memory=True)
    names = [o.name for o in session.get_outputs()]
    inputs = [str(v.name) for v in model_inputs(model)]
    totals = dict.fromkeys(names, 0.0)
    for feeds in batches:
        for name, value in zip(names, session.run(names, {k: feeds[k] for k in inputs}), strict=True):
            totals[name] += float(value)
    chosen = {}
    for tensor, per_candidate in scored.items():
        errors = {kind: sum(totals[err] / max(totals[signal], 1e-30) for err, signal in outputs)
                  for kind, outputs in per_candidate.items()}
        best = min(errors, key=lambda kind: (errors[kind], kind != "minmax"))
        chosen[tensor] = best
        ranges[tensor] = candidates[tensor][best]
    seconds = time.perf_counter() - started
    logger.info("calibrate: ranges chosen by consumer error for %d tensors in %.1fs: %s", len(chosen), seconds,
                {k: sum(1 for v in chosen.values() if v == k) for k in set(chosen.values())})
    return RangeChoice(ranges, chosen, seconds)


def _add_scores(
    work: ir.Model, candidates: Mapping[str, Mapping[str, tuple[float, float]]],
    consumer_types: Collection[str] | None, dtype: QuantDtype, symmetric: bool,
) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """Add the scoring nodes; tensor -> candidate -> [(error output, signal output)].

    A tensor's scoring nodes go right after its last reader, so that a session run in
    ``PRIORITY_BASED`` order scores each tensor as soon as it can and frees its copies
    before the next layer, instead of keeping every activation for scoring at the end.
    """
    graph = work.graph
    position = {id(node): i for i, node in enumerate(graph)}
    values = {v.name: v for node in graph for v in node.outputs}
    values.update({v.name: v for v in graph.inputs})
    outputs = {v.name for v in graph.outputs}  # scored on their own error: nothing reads them
    for output in list(graph.outputs):
        graph.outputs.remove(output)
    readers_of = {name: [(node, index) for node, index in value.uses()
                         if (consumer_types is None or node.op_type in consumer_types) and _copyable(node)]
                  for name, value in values.items() if name in candidates}  # before any scoring node reads them
    constants = Constants(graph, value_names(work), as_nodes=False)
    signals: dict[int, str] = {}
    scored: dict[str, dict[str, list[tuple[str, str]]]] = {}
    counter = iter(range(10**9))
    for tensor, options in candidates.items():
        value = values.get(tensor)
        if len(options) < 2 or value is None or value.dtype not in (ir.DataType.FLOAT, None):
            continue
        readers = readers_of.get(tensor, [])
        if not readers and tensor not in outputs:
            continue
        per_candidate: dict[str, list[tuple[str, str]]] = {}
        added: list[ir.Node] = []
        for kind, (low, high) in options.items():
            params = qparams_from_range(low, high, dtype=dtype, symmetric=symmetric)
            i = next(counter)
            scale = constants.add(f"_choice_scale_{i}", params.scale)
            zero = constants.add(f"_choice_zero_{i}", params.zero_point)
            q = _append(added, "QuantizeLinear", [value, scale, zero], f"_choice_q_{i}")
            dq = _append(added, "DequantizeLinear", [q.outputs[0], scale, zero], f"_choice_dq_{i}")
            pairs = []
            for node, index in readers:
                inputs = list(node.inputs)
                inputs[index] = dq.outputs[0]
                copy = _append(added, node.op_type, inputs, f"_choice_copy_{i}_{next(counter)}", like=node)
                diff = _append(added, "Sub", [copy.outputs[0], node.outputs[0]], f"_choice_diff_{next(counter)}")
                error = _reduce(added, graph, diff.outputs[0], f"_choice_error_{next(counter)}")
                if id(node) not in signals:
                    signals[id(node)] = _reduce(added, graph, node.outputs[0], f"_choice_signal_{next(counter)}")
                pairs.append((error, signals[id(node)]))
            if tensor in outputs:
                diff = _append(added, "Sub", [dq.outputs[0], value], f"_choice_diff_{next(counter)}")
                if id(value) not in signals:
                    signals[id(value)] = _reduce(added, graph, value, f"_choice_signal_{next(counter)}")
                error = _reduce(added, graph, diff.outputs[0], f"_choice_error_{next(counter)}")
                pairs.append((error, signals[id(value)]))
            per_candidate[kind] = pairs
        anchors = [node for node in (value.producer(), *(node for node, _ in readers))
                   if node is not None and id(node) in position]
        if anchors:
            graph.insert_after(max(anchors, key=lambda node: position[id(node)]), added)
        else:
            graph.extend(added)
        scored[tensor] = per_candidate
    return scored


def _copyable(node: ir.Node) -> bool:
    """A default-domain node with a float (or unknown) first output and no subgraphs: it can run twice."""
    return (node.outputs[0].dtype in (ir.DataType.FLOAT, None) and node.domain in ("", "ai.onnx")
            and not any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()))


def _append(added: list[ir.Node], op: str, inputs: list[ir.Value | None], name: str,
            like: ir.Node | None = None) -> ir.Node:
    attributes = list(like.attributes.values()) if like is not None else []
    node = ir.Node("", op, inputs, attributes=attributes, num_outputs=len(like.outputs) if like else 1, name=name)
    for j, output in enumerate(node.outputs):
        output.name = f"{name}_out{j}"
    added.append(node)
    return node


def _reduce(added: list[ir.Node], graph: ir.Graph, value: ir.Value, name: str) -> str:
    node = ir.Node("", "ReduceSumSquare", [value], attributes=[ir.AttrInt64("keepdims", 0)], name=name)
    out = node.outputs[0]
    out.name, out.dtype, out.shape = name, ir.DataType.FLOAT, ir.Shape([])
    added.append(node)
    graph.outputs.append(out)
    return name
