"""One candidate, start to finish: run its stages (cached by prefix), compile for the target, score.

Scores come from the target's own runtime on the validation data
(:func:`edgeopt.deploy.validation.validate`): the metric (``auto``) is task accuracy
with labels, else top-1 agreement with the original model for score vectors, else
the cosine of the outputs (or the one ``metric`` names); plus the artifact's size, the p50 latency per sample on
this machine and the MACs of one sample of the candidate's ONNX model (before quantization, which changes
how the operations run, not how many there are; symbolic dimensions as the data has them).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeopt.core.cpu import resolve_cpu
from edgeopt.core.errors import ConversionError, EdgeoptError, PassOptionError
from edgeopt.core.inspect_model import sample_dims, summarize
from edgeopt.core.model_io import load_model
from edgeopt.data.validation import labelled_batches
from edgeopt.deploy.compile import compile_model
from edgeopt.deploy.validation import validate
from edgeopt.search.cache import FORMAT, Cache, data_digest, file_digest, key
from edgeopt.search.screen import Screen
from edgeopt.search.space import Candidate, Context, Options, Stage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """What a candidate measured (the cache stores it; ``feasible`` is the search's to decide)."""

    metric_name: str
    metric: float
    base: float
    """The original model's value of the metric (1.0 for agreement and cosine)."""
    size_bytes: int
    latency_ms: float | None
    macs: int

    @property
    def drop(self) -> float:
        return self.base - self.metric


@dataclass(frozen=True)
class Outcome:
    """A candidate's scores, or why it failed; how long it took and whether the cache had it all."""

    scored: Scored | None
    error: str | None
    seconds: float
    cached: bool
    model: Path | None = None
    """The candidate's ONNX model (in the cache)."""
    computed: int = 0
    """Stage runs and evaluations done for it (cache misses)."""
    hits: int = 0
    compiled: Path | None = None
    """The candidate's compile folder (in the cache); None when it was cut or failed."""
    cut: str | None = None
    """The stage after which the candidate was stopped (its model already missed the budget by far, scored by
    :class:`~edgeopt.search.screen.Screen`: size is that model's file, no latency); None: fully measured."""


class Evaluator:
    """Runs candidates of one search: the model, data, target and cache are fixed."""

    def __init__(self, model: str | os.PathLike[str], *, stages: Sequence[Stage], calibration: str,
                 data: str, target: str, labels: str | None = None, limit: int | None = None,
                 samples: int = 128, cache: Cache | None = None, metric: str = "auto",
                 cut_drop: float | None = None) -> None:
        self.model = Path(model).resolve()
        self.stages = {stage.name: stage for stage in stages}
        self.context = Context(calibration, samples, self.model)
        self.data, self.target, self.labels, self.limit, self.metric = data, target, labels, limit, metric
        self.cache = cache or Cache()
        self._root = key(FORMAT, file_digest(self.model), data_digest(calibration), samples, resolve_cpu("auto"))
        self._scoring = key(target, data_digest(data), labels, limit, *([] if metric == "auto" else [metric]))
        self.cut_drop = cut_drop
        """Stop a candidate after any stage whose model drops the metric by more than this (None: never)."""
        self.screen = Screen(self.model, data=data, labels=labels, limit=limit, metric=metric)
        self._macs: dict[Path, int] = {}

    def evaluate(self, candidate: Candidate) -> Outcome:
        """Run ``candidate``; a stage, compile or run that fails gives an outcome with the error, never raises
        an :class:`EdgeoptError`."""
        start = time.perf_counter()
        misses, hits = self.cache.misses, self.cache.hits
        cut, compiled = None, None
        try:
            self._check(candidate)
            model, counted, entry, cut_scored, cut = self._stages(candidate)
            if cut_scored is not None:
                scored = cut_scored
            else:
                scoring = key(entry, self._scoring)
                stored, _ = self.cache.candidate(scoring, lambda folder: self._score(model, counted, folder))
                scored, compiled = Scored(**stored), self.cache.candidate_folder(scoring) / "compiled"
        except Exception as e:  # noqa: BLE001 - a candidate that fails is a failed trial, not a failed search
            error = " ".join(str(e).split()) or type(e).__name__
            if not isinstance(e, EdgeoptError):  # a bug outside any stage or compile (a cached failure is one)
                error = f"{type(e).__name__}: {error}"
                logger.debug("search: candidate failed unexpectedly", exc_info=True)
            logger.info("search: %s", error)
            return Outcome(None, error, time.perf_counter() - start, self.cache.misses == misses,
                           computed=self.cache.misses - misses, hits=self.cache.hits - hits)
        return Outcome(scored, None, time.perf_counter() - start, self.cache.misses == misses, model,
                       self.cache.misses - misses, self.cache.hits - hits, compiled, cut)

    def _check(self, candidate: Candidate) -> None:
        """Raise the reason a stage gives for refusing ``candidate`` (before anything runs)."""
        for name, _ in candidate:
            refuse = self.stages[name].refuse
            reason = refuse(candidate) if refuse is not None else None
            if reason:
                raise PassOptionError(reason)

    def _sample_dims(self) -> dict[str, int]:
        """Symbolic input dimensions (sequence length, image size) as one validation sample has them."""
        original = load_model(self.model)
        feeds, _ = next(labelled_batches(self.data, original, labels=self.labels, batch_size=1, limit=1))
        return sample_dims(original, feeds)

    def _stages(self, candidate: Candidate) -> tuple[Path, Path, str, Scored | None, str | None]:
        """The candidate's model, the model its MACs are counted on, its cache key, and (when a stage's model
        already missed the budget by more than ``cut_drop``) that model's screened scores and the stage."""
        model, entry = self.model, self._root
        counted = model
        for index, (name, options) in enumerate(candidate):
            stage, source = self.stages[name], model
            entry = key(entry, name, options)
            model, _ = self.cache.stage(entry, functools.partial(self._run, stage, source, options))
            counted = counted if stage.keeps_macs else model
            recovering = any(self.stages[later].recovers for later, _ in candidate[index + 1:])
            if self.cut_drop is not None and not recovering:  # a training stage later may give it back
                metric_name, value, base = self.screen.score(model)
                if not base - value <= self.cut_drop:  # NaN (a broken model) is cut too
                    scored = Scored(metric_name, value, base, model.stat().st_size, None, self.macs(counted))
                    return model, counted, entry, scored, name
        return model, counted, entry, None, None

    def macs(self, model: Path) -> int:
        """MACs of a model file at the validation data's shapes (remembered: a prefix is counted once)."""
        if model not in self._macs:
            self._macs[model] = summarize(load_model(model), self._sample_dims()).macs
        return self._macs[model]

    def _run(self, stage: Stage, source: Path, options: Options, output: Path) -> dict[str, Any]:
        return stage.run(source, output, options, self.context)

    def _score(self, model: Path, counted: Path, folder: Path) -> dict[str, Any]:
        compiled = compile_model(model, folder / "compiled", targets=[self.target],
                                 calibration=self.context.calibration)
        entry = compiled.manifest.artifacts[0]
        if not entry.ok:
            raise ConversionError(f"compile for {self.target} failed: {entry.message}")
        report = validate(folder / "compiled", data=self.data, reference=self.model, labels=self.labels,
                          limit=self.limit, per_layer="never", kernel_check=False)
        row, reference = report.artifacts[0], report.reference_scores
        if row.status != "ok" or row.scores is None or reference is None:
            raise ConversionError(f"the {self.target} artifact did not run: {row.message}")
        available = {"accuracy": (row.scores.metric_value, reference.metric_value) if self.labels else (None, None),
                     "agreement": (row.scores.top1_agreement, 1.0), "cosine": (row.scores.cosine, 1.0)}
        order = ("accuracy", "agreement", "cosine") if self.metric == "auto" else (self.metric,)
        name = next((m for m in order if available[m][0] is not None and available[m][1] is not None), None)
        if name is None:
            raise ConversionError(f"the {self.target} artifact has no {self.metric} score on this data "
                                  "(accuracy needs --labels; agreement, score vectors)")
        value, base = available[name]
        assert value is not None and base is not None and entry.size_bytes is not None
        scored = Scored(name, float(value), float(base), entry.size_bytes, row.latency_p50_ms, self.macs(counted))
        return asdict(scored)
