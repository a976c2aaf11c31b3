"""A quick look at an intermediate or final ONNX model: its metric in ONNX Runtime on the validation data.

A candidate runs its stages one after another (prune -> ... -> quantize), and
none of them gives accuracy back: when the model after a stage already misses
the budget by far, the stages after it, the compile and the target's own
validation cannot make it feasible. :class:`Screen` scores a model file
against the reference outputs (computed once per search, only the first output
kept) on the full validation set, so the search can stop such a candidate early.
The reference's outputs are kept in memory (one row of the first output per
sample); the inputs are streamed from the data again for each model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

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
    """

    def __init__(self, reference: str | os.PathLike[str], *, data: str, labels: str | None = None,
                 limit: int | None = None, metric: str = "auto") -> None:
        self.reference, self.data, self.labels, self.limit, self.metric = Path(reference), data, labels, limit, metric
        self._expected: list[np.ndarray] | None = None
        self._base: tuple[str, float] | None = None

    def score(self, model: str | os.PathLike[str]) -> tuple[str, float, float]:
        """(metric name, the model's value, the reference's value) on the validation data."""
        if self._expected is None:
            self._expected, self._base = self._reference()
        assert self._base is not None
        session = create_session(model, optimize=True, config={PRECISE_INT8_KEY: "1"})
        name = self._base[0]
        scorer = Scorer("top1")
        for expected, (feeds, batch_labels) in zip(self._expected, self._batches(), strict=True):
            got = run_session(session, feeds)
            first = next(iter(got.values()))
            scorer.update({"y": expected}, {"y": first}, batch_labels)
        return name, _value(scorer, name), self._base[1]

    def _batches(self):  # type: ignore[no-untyped-def]
        return labelled_batches(self.data, load_model(self.reference), labels=self.labels, batch_size=1,
                                limit=self.limit)

    def _reference(self) -> tuple[list[np.ndarray], tuple[str, float]]:
        session = create_session(self.reference, optimize=True)
        expected, scorer = [], Scorer("top1")
        for feeds, batch_labels in self._batches():
            first = next(iter(run_session(session, feeds).values()))
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
