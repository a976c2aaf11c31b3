"""A quick look at an intermediate or final ONNX model: its metric in ONNX Runtime on the validation data.

A candidate runs its stages one after another (prune -> ... -> quantize), and
none of them gives accuracy back: when the model after a stage already misses
the budget by far, the stages after it, the compile and the target's own
validation cannot make it feasible. :class:`Screen` scores a model file
against the reference outputs (computed once per search, only the first output
kept) on the full validation set, so the search can stop such a candidate early.
The reference's outputs are kept in memory up to ``max_bytes`` (256 MB; past it
the reference runs again beside each screened model); the inputs are streamed
from the data again for each model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx_ir as ir

from edgeopt.core.model_io import load_model
from edgeopt.core.runtime import PRECISE_INT8_KEY, create_session, run_session
from edgeopt.core.scoring import Scorer
from edgeopt.data.validation import labelled_batches


class Screen:
    """Scores ONNX models against ``reference`` on ``data`` (the search's metric, ONNX Runtime on this CPU).

    Args:
        reference: The original model.
        data: The validation data spec.
        labels: The labels' key (accuracy), or None.
        limit: Samples to use (None: all).
        metric: ``auto`` (accuracy with labels, else top-1 agreement for score vectors, else cosine),
            ``accuracy``, ``agreement`` or ``cosine``.
        max_bytes: Memory for the reference's outputs; batches past it run the reference again.
    """

    def __init__(self, reference: str | os.PathLike[str], *, data: str, labels: str | None = None,
                 limit: int | None = None, metric: str = "auto", max_bytes: int = 256 << 20) -> None:
        self.reference, self.data, self.labels, self.limit, self.metric = Path(reference), data, labels, limit, metric
        self.max_bytes = max_bytes
        self._expected: list[np.ndarray] | None = None
        self._base: tuple[str, float] | None = None
        self._reference_model: ir.Model | None = None

    def score(self, model: str | os.PathLike[str]) -> tuple[str, float, float]:
        """(metric name, the model's value, the reference's value) on the validation data."""
        if self._expected is None:
            self._expected, self._base = self._reference()
        assert self._base is not None
        session = create_session(model, optimize=True, config={PRECISE_INT8_KEY: "1"})
        reference = None  # a session of the reference, for the batches past the kept outputs
        name = self._base[0]
        scorer = Scorer("top1")
        for i, (feeds, batch_labels) in enumerate(self._batches()):
            if i < len(self._expected):
                expected = self._expected[i]
            else:
                reference = reference or create_session(self.reference, optimize=True)
                expected = next(iter(run_session(reference, feeds).values()))
            first = next(iter(run_session(session, feeds).values()))
            scorer.update({"y": expected}, {"y": first}, batch_labels)
        return name, _value(scorer, name), self._base[1]

    def _batches(self):  # type: ignore[no-untyped-def]
        if self._reference_model is None:
            self._reference_model = load_model(self.reference)
        return labelled_batches(self.data, self._reference_model, labels=self.labels, batch_size=1,
                                limit=self.limit)

    def _reference(self) -> tuple[list[np.ndarray], tuple[str, float]]:
        session = create_session(self.reference, optimize=True)
        expected: list[np.ndarray] = []
        kept, full, scorer = 0, False, Scorer("top1")
        for feeds, batch_labels in self._batches():
            first = next(iter(run_session(session, feeds).values()))
            kept += first.nbytes
            full = full or kept > self.max_bytes  # the outputs kept are always the first ones
            if not full:
                expected.append(first)
            scorer.update({"y": first}, {"y": first}, batch_labels)
        name = self._name(scorer)
        return expected, (name, _value(scorer, name))

    def _name(self, scorer: Scorer) -> str:
        result = scorer.result()
        if self.metric != "auto":
            return self.metric
        if self.labels is not None and result.metric_value is not None:
            return "accuracy"
        return "agreement" if result.top1_agreement is not None else "cosine"


def _value(scorer: Scorer, name: str) -> float:
    result = scorer.result()
    value = {"accuracy": result.metric_value, "agreement": result.top1_agreement, "cosine": result.cosine}[name]
    return float("nan") if value is None else float(value)
