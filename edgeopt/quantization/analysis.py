"""Where quantization hurts, and keeping those nodes in float until a budget is met.

``sensitivity`` streams sample data through the float model and its quantized
version (one ONNX Runtime session each, for the whole pass over the data) and
accumulates, per node output, the SQNR and cosine of the quantized tensor
against the float one. A node's *introduced* error is its output SQNR's drop
below its worst input's: the error that node adds, not the error it inherits,
which is what ranks nodes for fallback.

``fallback`` then keeps the most sensitive nodes in float, greedily (1, 2, 4, ...
nodes, then a bisection), re-emitting the quantized graph from the same
calibrated ranges, until a metric's drop is within budget or the evaluation
budget is spent.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from edgeopt.core.runtime import Feeds, create_session, run_session

logger = logging.getLogger(__name__)

Metric = Callable[[ir.Model], float]
"""A model -> a score, higher is better (e.g. agreement with the float model)."""


@dataclass(frozen=True)
class NodeError:
    """How far one node's quantized output is from float."""

    node: str
    op: str
    tensor: str
    sqnr_db: float
    cosine: float
    introduced_db: float
    fused: tuple[str, ...] = ()
    """Nodes before this one whose outputs the quantized graph fused away (e.g. a Conv
    absorbed into its Relu): the error shown here is theirs too; fallback floats them together."""
    """SQNR lost at this node: worst input SQNR minus output SQNR (capped at 100 dB; an input
    the quantized graph fused away counts as the worst SQNR measured upstream of it)."""


class _Accumulator:
    def __init__(self) -> None:
        self.signal = self.noise = self.dot = self.quant = 0.0

    def update(self, ref: np.ndarray, got: np.ndarray) -> None:
        r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
        self.signal += float(r @ r)
        self.noise += float((r - g) @ (r - g))
        self.dot += float(r @ g)
        self.quant += float(g @ g)

    def sqnr(self) -> float:
        if self.noise == 0:
            return math.inf
        return 10 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf

    def cosine(self) -> float:
        norm = math.sqrt(self.signal * self.quant)
        return self.dot / norm if norm > 0 else (1.0 if self.noise == 0 else 0.0)


def _float_tensors(model: ir.Model) -> list[ir.Value]:
    values = [v for v in model.graph.inputs if not v.is_initializer()]
    values += [o for node in model.graph for o in node.outputs]
    return [v for v in values if v.name and v.dtype is not None and v.dtype.is_floating_point()]


def _expose(model: ir.Model, names: Sequence[str]) -> ir.Model:
    """A copy of ``model`` with ``names`` added as graph outputs."""
    exposed = model.clone()
    values = {v.name: v for v in _float_tensors(exposed)}
    values.update({o.name: o for node in exposed.graph for o in node.outputs if o.name})
    outputs = set(exposed.graph.outputs)
    for name in names:
        value = values.get(name)
        if value is not None and value not in outputs:
            exposed.graph.outputs.append(value)
            outputs.add(value)
    return exposed


def sensitivity(
    float_model: ir.Model,
    quant_model: ir.Model,
    batches: Iterable[Feeds],
    *,
    on_batch: Callable[[int], None] | None = None,
) -> list[NodeError]:
    """Per-node error of ``quant_model`` vs ``float_model``, most error introduced first.

    ``quant_model`` must come from ``float_model`` by a QDQ/QOperator rewrite that
    keeps node output names (ORT's quantizers do); a tensor's quantized value is
    its ``<name>_DequantizeLinear_Output`` when the quantizer added one.
    """
    tensors = _float_tensors(float_model)
    quant_names = {o.name for node in quant_model.graph for o in node.outputs}
    quant_names |= {v.name for v in quant_model.graph.inputs}
    pairs: dict[str, str] = {}
    for value in tensors:
        assert value.name is not None
        dq = f"{value.name}_DequantizeLinear_Output"
        pairs[value.name] = dq if dq in quant_names else value.name
    pairs = {f: q for f, q in pairs.items() if q in quant_names}
    float_session = create_session(_expose(float_model, list(pairs)))
    quant_session = create_session(_expose(quant_model, list(pairs.values())))
    acc = {name: _Accumulator() for name in pairs}
    seen = 0
    for feeds in batches:
        ref = run_session(float_session, feeds)
        got = run_session(quant_session, feeds)
        for name, quant_name in pairs.items():
            acc[name].update(np.asarray(ref[name]), np.asarray(got[quant_name]))
        seen += len(next(iter(feeds.values())))
        if on_batch is not None:
            on_batch(seen)
    return _rank(float_model, acc)


def _rank(model: ir.Model, acc: dict[str, _Accumulator]) -> list[NodeError]:
    sqnr = {name: a.sqnr() for name, a in acc.items()}
    inherited: dict[str, float] = {}

    def input_sqnr(value: ir.Value) -> float:
        """The value's SQNR, or, where the quantized graph has no such tensor (ORT fused
        it away), the worst measured SQNR upstream of it."""
        name = value.name or ""
        if name in sqnr:
            return min(sqnr[name], 100.0)
        if name not in inherited:
            inherited[name] = 100.0  # guards cycles through subgraph references
            producer = value.producer()
            upstream = [input_sqnr(v) for v in producer.inputs
                        if v is not None and not v.is_initializer()] if producer else []
            inherited[name] = min(upstream, default=100.0)
        return inherited[name]

    def fused_producers(node: ir.Node) -> list[str]:
        """Producers of ``node``'s unmeasured inputs, transitively: fused into ``node``."""
        found: list[str] = []
        stack = [v for v in node.inputs if v is not None and not v.is_initializer()]
        while stack:
            value = stack.pop()
            producer = value.producer()
            is_float = value.dtype is not None and value.dtype.is_floating_point()
            if not is_float or (value.name or "") in sqnr or producer is None or producer.name in found:
                continue
            found.append(producer.name or "")
            stack.extend(v for v in producer.inputs if v is not None and not v.is_initializer())
        return [name for name in found if name]

    errors = []
    for node in model.graph:
        out = node.outputs[0] if node.outputs else None
        if out is None or out.name not in acc:
            continue
        inputs = [input_sqnr(v) for v in node.inputs if v is not None and not v.is_initializer()]
        worst_in = min(inputs, default=100.0)
        out_sqnr = min(sqnr[out.name], 100.0)
        errors.append(NodeError(node.name or out.name, node.op_type, out.name, sqnr[out.name],
                                acc[out.name].cosine(), worst_in - out_sqnr,
                                tuple(fused_producers(node))))
    return sorted(errors, key=lambda e: e.introduced_db, reverse=True)


@dataclass(frozen=True)
class FallbackStep:
    """One evaluation: which nodes were float and what the metric said."""

    float_nodes: tuple[str, ...]
    score: float
    drop: float


@dataclass
class FallbackResult:
    model: ir.Model
    float_score: float
    score: float
    float_nodes: tuple[str, ...]
    steps: list[FallbackStep] = field(default_factory=list)

    @property
    def drop(self) -> float:
        return self.float_score - self.score


def fallback(
    quantize: Callable[[Sequence[str]], ir.Model],
    ranked_nodes: Sequence[str],
    metric: Metric,
    *,
    float_score: float,
    max_drop: float,
    max_evaluations: int = 10,
    time_limit: float | None = None,
) -> FallbackResult:
    """Keep the fewest top-ranked nodes in float so that ``float_score - metric <= max_drop``.

    Args:
        quantize: Node names to keep float -> a quantized model.
        ranked_nodes: Candidates, most sensitive first (from :func:`sensitivity`).
        metric: Scores a model; the float model scores ``float_score``.
        max_drop: Allowed drop of the metric.
        max_evaluations: Upper bound on quantize + metric evaluations.
        time_limit: Seconds after which no new evaluation starts (the first always runs); the best
            model found by then is returned.
    """
    deadline = math.inf if time_limit is None else time.monotonic() + time_limit
    steps: list[FallbackStep] = []

    def more() -> bool:
        return len(steps) < max_evaluations and (not steps or time.monotonic() < deadline)

    cache: dict[int, tuple[ir.Model, float]] = {}

    def evaluate(count: int) -> float:
        if count not in cache:
            model = quantize(list(ranked_nodes[:count]))
            score = metric(model)
            cache[count] = (model, score)
            steps.append(FallbackStep(tuple(ranked_nodes[:count]), score, float_score - score))
            logger.info("fallback: %d node(s) in float -> score %.4f (drop %.4f)", count, score,
                        float_score - score)
        return cache[count][1]

    def ok(count: int) -> bool:
        return float_score - evaluate(count) <= max_drop

    low, high = -1, None  # largest count known to fail, smallest known to pass
    count = 0
    while more():
        if ok(count):
            high = count
            break
        low = count
        if count >= len(ranked_nodes):
            break
        count = min(max(1, count * 2), len(ranked_nodes))
    while high is not None and high - low > 1 and more():
        middle = (low + high) // 2
        if ok(middle):
            high = middle
        else:
            low = middle
    best = high if high is not None else max(cache, key=lambda c: cache[c][1])
    model, score = cache[best]
    return FallbackResult(model, float_score, score, tuple(ranked_nodes[:best]), steps)


def agreement_metric(float_model: ir.Model, batches: Iterable[Feeds]) -> Metric:
    """Agreement with ``float_model`` on ``batches``: top-1 agreement when the first
    output looks like class scores (rank 2, more than one column), else the mean
    cosine similarity per sample. The float model scores 1.0."""
    float_session = create_session(float_model, optimize=True)
    name = float_session.get_outputs()[0].name

    def score(model: ir.Model) -> float:
        session = create_session(model, optimize=True)
        total = count = 0.0
        for feeds in batches:
            ref = np.asarray(run_session(float_session, feeds)[name], np.float64)
            got = np.asarray(run_session(session, feeds)[name], np.float64)
            if ref.ndim == 2 and ref.shape[1] > 1:
                total += float((ref.argmax(1) == got.argmax(1)).sum())
            else:
                r, g = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
                norms = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
                total += float(((r * g).sum(1) / np.maximum(norms, 1e-12)).sum())
            count += len(ref)
        return total / max(count, 1)

    return score


def accuracy_metric(
    batches: Sequence[Feeds], labels: Sequence[np.ndarray], *, output: str | None = None
) -> Metric:
    """Top-1 accuracy against ``labels`` (one array of class ids per batch), for
    ``--max-drop`` measured on the task instead of agreement with the float model."""
    if len(batches) != len(labels):
        raise ValueError(f"{len(batches)} batches but {len(labels)} label arrays; give one per batch.")

    def score(model: ir.Model) -> float:
        session = create_session(model, optimize=True)
        name = output or session.get_outputs()[0].name
        correct = total = 0
        for feeds, truth in zip(batches, labels, strict=True):
            predicted = np.asarray(run_session(session, feeds)[name]).argmax(axis=-1)
            correct += int((predicted == np.asarray(truth)).sum())
            total += len(truth)
        return correct / max(total, 1)

    return score
