"""The layer-dropping road: find blocks, score them, drop ``count`` or as many as a budget allows.

Shared by ``edgeopt drop-layers``, the benchmark and the docs. ``--max-drop`` is the
same greedy search as quantization's fallback (:func:`edgeopt.quantization.analysis.fallback`):
blocks are kept in order of impact, most harmful first, and the fewest kept (so the
most dropped) whose metric stays within budget wins, in a bounded number of evaluations.
``--count K --rescore N`` picks the K blocks greedily instead of from the one-shot ranking:
after each pick, the N best remaining blocks are re-scored on the model with the picks so
far dropped (:func:`edgeopt.blocks.scoring.greedy_pick`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx_ir as ir

from edgeopt.blocks.bypass import DROPPED_KEY, drop_blocks
from edgeopt.blocks.refit import repair as refit
from edgeopt.blocks.residual import Block, Granularity, find_blocks
from edgeopt.blocks.scoring import Batches, BlockScore, Metric, MetricName, fidelity_metric, greedy_pick, score_blocks
from edgeopt.core.errors import PassOptionError
from edgeopt.core.inspect_model import ModelSummary, summarize
from edgeopt.core.model_checks import check_model
from edgeopt.core.model_io import load_model, save_model
from edgeopt.core.runtime import Feeds
from edgeopt.data.readers import batches, open_reader
from edgeopt.pipeline import cleanup
from edgeopt.quantization.analysis import FallbackStep, fallback

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DropConfig:
    """What ``edgeopt drop-layers`` can be told. Exactly one of ``count`` and ``max_drop``."""

    count: int | None = None
    max_drop: float | None = None
    metric: MetricName = "cosine"
    granularity: Granularity = "layer"
    output: str | None = None
    """Graph output that scoring and the metric compare (default: the first)."""
    repair: bool = True
    """Refit the projection after each dropped block by least squares (measured better: docs/layer_dropping.md)."""
    cleanup: bool = True
    """``drop_layers_file``: run the ``cleanup`` preset first."""
    samples: int | None = None
    batch_size: int | None = None
    max_evaluations: int = 10
    rescore: int = 0
    """With ``count``: after each pick, re-score this many of the best remaining blocks on the
    model with the picks so far dropped, and pick the best (0: the one-shot ranking)."""


@dataclass
class DropResult:
    model: ir.Model
    blocks: list[Block]
    scores: list[BlockScore]
    """Droppable blocks, most droppable first."""
    dropped: tuple[str, ...]
    score: float
    """The metric of the result vs the original model (1.0 = unchanged)."""
    metric: MetricName | str
    repaired: list[str] = field(default_factory=list)
    steps: list[FallbackStep] = field(default_factory=list)
    """``--max-drop`` evaluations; ``float_nodes`` lists the blocks *kept*."""
    greedy: list[BlockScore] = field(default_factory=list)
    """``rescore``: the picks in order, each scored with all earlier picks dropped too."""


@dataclass
class DropFileResult:
    output: Path
    before: ModelSummary
    after: ModelSummary
    result: DropResult


def plan(model: ir.Model, granularity: Granularity = "layer") -> list[Block]:
    """Every block of ``model`` at ``granularity``, droppable or not (with the reason)."""
    return find_blocks(model, granularity)


def drop_layers(
    model: ir.Model,
    data: Batches,
    config: DropConfig,
    *,
    metric: Metric | None = None,
    scores: Sequence[BlockScore] | None = None,
    on_block: Callable[[int], None] | None = None,
) -> DropResult:
    """Score the blocks of ``model`` on ``data`` and drop some; ``model`` is unchanged.

    Args:
        model: The model.
        data: Starts a pass over the calibration data.
        config: What to drop and how.
        metric: Scores a model for ``max_drop`` (higher is better, the original scores
            1.0); default: ``config.metric`` against ``model`` on ``data``.
        scores: A ranking from an earlier call on the same model (``result.scores``), to skip scoring.
        on_block: Progress: the number of blocks scored so far.
    """
    if (config.count is None) == (config.max_drop is None):
        raise PassOptionError("drop-layers: give exactly one of --count K and --max-drop X.")
    if config.rescore < 0 or (config.rescore and config.count is None):
        raise PassOptionError(f"drop-layers: --rescore {config.rescore} needs --count K and must be 0 or more.")
    blocks = find_blocks(model, config.granularity)
    if scores is None:
        scores = score_blocks(model, blocks, data, output=config.output, on_block=on_block)
    scores = list(scores)
    by_name = {b.name: b for b in blocks}
    name = config.metric if metric is None else getattr(metric, "__name__", "custom")
    metric = metric or fidelity_metric(model, data, config.metric, output=config.output)

    def build(kept: Sequence[str]) -> tuple[ir.Model, list[str]]:
        chosen = [by_name[s.name] for s in scores if s.name not in kept]
        chosen.sort(key=lambda b: blocks.index(b))
        result, repaired = _apply(model, chosen, data, config.repair)
        if repaired:  # the refit stays only where it helps: after a block that changed nothing it only adds noise
            plain, _ = _apply(model, chosen, data, False)
            if metric(plain) >= metric(result):
                return plain, []
        return result, repaired

    if config.count is not None:
        if not 0 <= config.count <= len(scores):
            raise PassOptionError(f"drop-layers: --count {config.count}, but {len(scores)} "
                                  f"{config.granularity}(s) can be dropped. Use 0 to {len(scores)}.")
        greedy: list[BlockScore] = []
        if config.rescore and config.count > 1:
            done = len(scores)
            greedy = greedy_pick(model, blocks, scores, data, config.count, width=config.rescore,
                                 output=config.output, on_block=None if on_block is None else
                                 lambda i: on_block(done + i))
            picked = {s.name for s in greedy}
            kept = [s.name for s in scores if s.name not in picked]
        else:
            kept = [s.name for s in scores[config.count:]]
        result, repaired = build(kept)
        return DropResult(result, blocks, scores, _dropped(blocks, kept, scores), metric(result), name, repaired,
                          greedy=greedy)
    assert config.max_drop is not None
    repaired_by_model: dict[int, list[str]] = {}

    def emit(kept: Sequence[str]) -> ir.Model:
        result, repaired = build(kept)
        repaired_by_model[id(result)] = repaired
        return result

    ranked = [s.name for s in reversed(scores)]  # most harmful first: kept first
    found = fallback(emit, ranked, metric, float_score=1.0, max_drop=config.max_drop,
                     max_evaluations=config.max_evaluations)
    return DropResult(found.model, blocks, scores, _dropped(blocks, list(found.float_nodes), scores),
                      found.score, name, repaired_by_model.get(id(found.model), []), found.steps)


def _dropped(blocks: list[Block], kept: Sequence[str], scores: list[BlockScore]) -> tuple[str, ...]:
    scored = {s.name for s in scores}
    return tuple(b.name for b in blocks if b.name in scored and b.name not in kept)


def _apply(model: ir.Model, chosen: list[Block], data: Batches, repair: bool) -> tuple[ir.Model, list[str]]:
    result = model.clone()
    drop_blocks(result, chosen)
    repaired: list[str] = []
    if repair and chosen:
        repaired = refit(model, result, chosen, data)
    result.metadata_props[DROPPED_KEY] = ",".join(b.name for b in chosen)
    return result, repaired


def drop_layers_file(
    model_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: DropConfig,
    *,
    calibration: str | Iterable[Feeds],
    metric: Metric | None = None,
    on_block: Callable[[int], None] | None = None,
) -> DropFileResult:
    """Drop layers of the model at ``model_path`` and write ``output`` (never the input)."""
    model = load_model(model_path)
    check_model(model)
    if config.cleanup:
        cleanup()(model)
    result = drop_layers(model, calibration_batches(model, calibration, config), config, metric=metric,
                         on_block=on_block)
    out = save_model(result.model, output)
    return DropFileResult(out, summarize(model), summarize(load_model(out)), result)


def calibration_batches(model: ir.Model, calibration: str | os.PathLike[str] | Iterable[Feeds],
                        config: DropConfig) -> Batches:
    """:data:`Batches` over ``calibration`` (a reader or a spec for ``open_reader``), checked and limited."""
    reader = open_reader(calibration, model) if isinstance(calibration, str | os.PathLike) else calibration
    first = batches(reader, model, batch_size=config.batch_size, limit=config.samples)
    next(iter(first), None)  # fails early on data that does not fit the model

    def start() -> Iterator[Feeds]:
        return batches(reader, model, batch_size=config.batch_size, limit=config.samples)

    return start
