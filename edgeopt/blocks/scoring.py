"""Score droppable blocks on calibration data, batch by batch.

Two scores per block (see :mod:`edgeopt.blocks.residual`):

- *impact*: ``1 - cosine`` between the model's output with the block bypassed and
  the original output (mean over samples), plus top-1 agreement when the output
  looks like class scores. What dropping this block alone costs.
- *influence*: ``1 - cosine`` between the block's input and output (mean over
  samples), as in block-influence scoring (ShortGPT): cheap, one pass for all blocks.

Blocks are ranked by impact (lowest first), then influence. Every pass over the
data holds one batch and running sums only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_ir as ir

from edgeopt.blocks.bypass import drop_blocks
from edgeopt.blocks.residual import Block
from edgeopt.core.errors import CalibrationDataError
from edgeopt.core.runtime import Feeds, create_session, run_session

logger = logging.getLogger(__name__)

Batches = Callable[[], Iterator[Feeds]]
"""Starts a new pass over the calibration data (e.g. ``lambda: batches(reader, model)``)."""
Metric = Callable[[ir.Model], float]
"""A model -> a score, higher is better; the original model scores 1.0 for ours."""
MetricName = Literal["agreement", "cosine"]


@dataclass(frozen=True)
class BlockScore:
    """How much the model changes when one block is bypassed."""

    name: str
    impact: float
    """``1 - output cosine`` with the block bypassed: 0 means the block changes nothing."""
    output_cosine: float
    agreement: float | None
    """Top-1 agreement with the original when the output is class scores, else None."""
    influence: float
    """``1 - cosine(block input, block output)``."""
    parameters: int


class _Cosine:
    """Running mean over samples of the cosine of two batches flattened per sample."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        a = np.asarray(a, np.float64).reshape(len(a), -1)
        b = np.asarray(b, np.float64).reshape(len(b), -1)
        dot = (a * b).sum(1)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        same = np.all(a == b, axis=1)
        self.total += float(np.where(same, 1.0, dot / np.maximum(norms, 1e-30)).sum())
        self.count += len(a)

    def value(self) -> float:
        return self.total / self.count if self.count else 1.0


def influence(model: ir.Model, blocks: Sequence[Block], data: Batches) -> dict[str, float]:
    """``1 - cosine(input, output)`` of every block, in one pass over the data."""
    exposed = model.clone()
    values = {v.name: v for v in exposed.graph.inputs}
    values.update({o.name: o for node in exposed.graph for o in node.outputs})
    present = set(exposed.graph.outputs)
    for name in {n for b in blocks for n in (b.start, b.end)}:
        if values[name] not in present:
            exposed.graph.outputs.append(values[name])
            present.add(values[name])
    session = create_session(exposed)
    sums = {b.name: _Cosine() for b in blocks}
    for feeds in data():
        got = run_session(session, feeds)
        for b in blocks:
            sums[b.name].update(got[b.start], got[b.end])
    return {name: 1.0 - s.value() for name, s in sums.items()}


def compare(reference: ir.Model, candidate: ir.Model, data: Batches, *, output: str | None = None,
            ) -> tuple[float, float | None]:
    """Mean per-sample cosine of ``candidate``'s output vs ``reference``'s, and top-1
    agreement when that output is class scores (rank 2, more than one column)."""
    ref_session, got_session = create_session(reference, optimize=True), create_session(candidate, optimize=True)
    name = output or ref_session.get_outputs()[0].name
    cosine, agree, count, classes = _Cosine(), 0, 0, None
    for feeds in data():
        ref = np.asarray(run_session(ref_session, feeds)[name])
        got = np.asarray(run_session(got_session, feeds)[name])
        cosine.update(ref, got)
        classes = ref.ndim == 2 and ref.shape[1] > 1
        if classes:
            agree += int((ref.argmax(1) == got.argmax(1)).sum())
        count += len(ref)
    return cosine.value(), (agree / count if classes and count else None)


def score_blocks(
    model: ir.Model,
    blocks: Sequence[Block],
    data: Batches,
    *,
    output: str | None = None,
    on_block: Callable[[int], None] | None = None,
) -> list[BlockScore]:
    """Score every droppable block of ``blocks``; most droppable (lowest impact) first.

    Args:
        model: The original model (unchanged).
        blocks: From :func:`edgeopt.blocks.residual.find_blocks`; undroppable ones are skipped.
        data: Starts a pass over the calibration data; called once per block, plus once.
        output: The graph output compared (default: the first).
        on_block: Called with the number of blocks scored so far (progress bars).
    """
    _check_output(model, output)
    candidates = [b for b in blocks if b.droppable]
    influences = influence(model, candidates, data) if candidates else {}
    scores = []
    for i, block in enumerate(candidates, start=1):
        dropped = model.clone()
        drop_blocks(dropped, [block])
        cosine, agreement = compare(model, dropped, data, output=output)
        scores.append(BlockScore(block.name, 1.0 - cosine, cosine, agreement, influences[block.name],
                                 block.parameters))
        logger.debug("%s: output cosine %.5f, influence %.5f", block.name, cosine, influences[block.name])
        if on_block is not None:
            on_block(i)
    logger.info("scored %d block(s)", len(scores))
    return sorted(scores, key=lambda s: (s.impact, s.influence))


def _check_output(model: ir.Model, output: str | None) -> None:
    names = [v.name for v in model.graph.outputs]
    if output is not None and output not in names:
        raise CalibrationDataError(
            f"output '{output}' is not a graph output; the model's outputs are {', '.join(map(str, names))}. "
            "Pass one of them."
        )


def fidelity_metric(reference: ir.Model, data: Batches, kind: MetricName = "cosine", *,
                    output: str | None = None) -> Metric:
    """A :data:`Metric` against ``reference``: top-1 ``agreement`` or mean ``cosine`` of ``output``."""
    if kind not in ("agreement", "cosine"):
        raise ValueError(f"metric must be 'agreement' or 'cosine', got {kind!r}")
    _check_output(reference, output)

    def metric(candidate: ir.Model) -> float:
        cosine, agreement = compare(reference, candidate, data, output=output)
        if kind == "cosine":
            return cosine
        if agreement is None:
            raise CalibrationDataError(
                "metric 'agreement' needs class scores (a rank-2 output with several columns); "
                "use --metric cosine for this model."
            )
        return agreement

    return metric


def reiterable(make: Callable[[], Iterable[Feeds]]) -> Batches:
    """Wrap a factory of feed iterables as :data:`Batches`."""
    return lambda: iter(make())


def greedy_pick(
    model: ir.Model,
    blocks: Sequence[Block],
    scores: Sequence[BlockScore],
    data: Batches,
    count: int,
    *,
    width: int,
    output: str | None = None,
    on_block: Callable[[int], None] | None = None,
) -> list[BlockScore]:
    """Pick ``count`` blocks one at a time, re-scoring after each pick; ``model`` is unchanged.

    The first pick is the head of ``scores`` (the one-shot ranking of :func:`score_blocks`).
    After each pick, the ``width`` best remaining blocks of the last ranking are re-scored by
    the output cosine vs ``model`` of ``model`` with the picks so far *and* that block
    dropped, and the best becomes the next pick: at most ``(count - 1) * width`` evaluations,
    each one pass over ``data``. Blocks dropped together can interact (a later layer can
    undo or compound an earlier one's absence), which a one-shot ranking misses.

    Returns:
        The picks in the order chosen; ``impact``/``output_cosine``/``agreement`` are those
        of the model with that pick and all earlier ones dropped.
    """
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    by_name = {b.name: b for b in blocks}
    order = {b.name: i for i, b in enumerate(blocks)}
    ranking = list(scores)
    picks: list[BlockScore] = []
    evaluated = 0
    while len(picks) < count and ranking:
        if picks:
            rescored = []
            for s in ranking[:width]:
                chosen = sorted([by_name[p.name] for p in picks] + [by_name[s.name]], key=lambda b: order[b.name])
                dropped = model.clone()
                drop_blocks(dropped, chosen)
                cosine, agreement = compare(model, dropped, data, output=output)
                rescored.append(BlockScore(s.name, 1.0 - cosine, cosine, agreement, s.influence, s.parameters))
                evaluated += 1
                if on_block is not None:
                    on_block(evaluated)
            ranking = sorted(rescored, key=lambda r: (r.impact, r.influence)) + ranking[width:]
        picks.append(ranking.pop(0))
        logger.debug("greedy pick %d: %s, output cosine %.5f", len(picks), picks[-1].name, picks[-1].output_cosine)
    return picks
