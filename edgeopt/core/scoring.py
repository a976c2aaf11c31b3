"""Streaming scores of an artifact's outputs: task metric, agreement with a reference, latency.

Everything accumulates batch by batch (sums and counts), so no outputs are held.
The primary output (the first one) carries the task metric and the top-1
agreement; cosine, SQNR and max abs error cover every float output.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from edgeopt.core.errors import PassOptionError
from edgeopt.core.runtime import Feeds

MetricName = Literal["top1", "top5", "cosine", "custom"]
METRICS: tuple[str, ...] = ("top1", "top5", "cosine", "custom")
CustomMetric = Callable[[Feeds, "np.ndarray | None"], np.ndarray]
"""(ONNX-convention outputs of a batch, its labels or None) -> one score per sample; the mean is reported."""


@dataclass(frozen=True)
class Scores:
    samples: int
    metric: str
    metric_value: float | None  # None: the metric needs labels and there were none
    top1_agreement: float | None  # None: the primary output is not a score vector
    cosine: float
    sqnr_db: float
    max_abs: float


class Scorer:
    """Accumulates one artifact's scores against the reference, batch by batch."""

    def __init__(self, metric: str = "top1", custom: CustomMetric | None = None) -> None:
        if metric not in METRICS:
            raise PassOptionError(f"unknown metric '{metric}'. Use one of {', '.join(METRICS)}.")
        if metric == "custom" and custom is None:
            raise PassOptionError("--metric custom needs a function: --custom-metric FILE.py:FUNCTION.")
        self.metric, self.custom = metric, custom
        self.samples = self.metric_sum = self.agree = 0.0
        self.metric_count = 0
        self.cos_sum = self.signal = self.noise = self.max_abs = 0.0
        self.has_scores = True

    def update(self, reference: Feeds, outputs: Feeds, labels: np.ndarray | None) -> None:
        names = list(reference)
        primary_ref = np.asarray(reference[names[0]], np.float64)
        primary = np.asarray(outputs[names[0]], np.float64)
        rows = primary_ref.shape[0] if primary_ref.ndim else 1
        self.samples += rows
        for name in names:
            ref, got = np.asarray(reference[name]), np.asarray(outputs[name])
            if ref.dtype.kind != "f":
                continue
            r, g = ref.astype(np.float64), got.astype(np.float64)
            self.signal += float((r * r).sum())
            self.noise += float(((r - g) ** 2).sum())
            if r.size:  # np.maximum keeps a NaN (Python's max would drop it and hide a broken output)
                self.max_abs = float(np.maximum(self.max_abs, np.abs(r - g).max()))
        r2, g2 = primary_ref.reshape(rows, -1), primary.reshape(rows, -1)
        norms = np.linalg.norm(r2, axis=1) * np.linalg.norm(g2, axis=1)
        same = np.all(r2 == g2, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.cos_sum += float(np.where(same, 1.0, (r2 * g2).sum(1) / np.where(norms > 0, norms, 1.0)).sum())
        self.has_scores = self.has_scores and primary.ndim == 2 and primary.shape[1] > 1
        if self.has_scores:
            self.agree += int((primary.argmax(1) == primary_ref.argmax(1)).sum())
        self._task(outputs, primary, labels)

    def _task(self, outputs: Feeds, primary: np.ndarray, labels: np.ndarray | None) -> None:
        if self.metric == "custom":
            assert self.custom is not None
            values = np.asarray(self.custom(outputs, labels), np.float64).ravel()
            self.metric_sum += float(values.sum())
            self.metric_count += values.size
        elif self.metric in ("top1", "top5") and labels is not None and primary.ndim == 2:
            k = 1 if self.metric == "top1" else min(5, primary.shape[1])
            top = np.argsort(-primary, axis=1, kind="stable")[:, :k]
            self.metric_sum += int((top == np.asarray(labels).reshape(-1, 1)).any(1).sum())
            self.metric_count += len(labels)

    def result(self) -> Scores:
        n = max(self.samples, 1)
        if self.metric == "cosine":
            value: float | None = self.cos_sum / n
        else:
            value = self.metric_sum / self.metric_count if self.metric_count else None
        sqnr = math.inf if self.noise == 0 else -math.inf
        if self.noise and self.signal:
            sqnr = 10 * math.log10(self.signal / self.noise)
        return Scores(int(self.samples), self.metric, value, self.agree / n if self.has_scores else None,
                      self.cos_sum / n, sqnr, self.max_abs)


def percentiles_ms(seconds: list[float]) -> tuple[float | None, float | None]:
    """p50 and p90 of per-call times, in milliseconds (None when nothing was timed)."""
    if not seconds:
        return None, None
    p50, p90 = np.percentile(np.asarray(seconds) * 1e3, [50, 90])
    return float(p50), float(p90)


def load_custom_metric(spec: str) -> CustomMetric:
    """``FILE.py:FUNCTION`` or ``module:function`` -> the function.

    Raises:
        PassOptionError: the spec is malformed, or the file, module or function is missing.
    """
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise PassOptionError(f"custom metric '{spec}': expected FILE.py:FUNCTION or module:function.")
    try:
        if where.endswith(".py"):
            path = Path(where).resolve()
            loader = importlib.util.spec_from_file_location(path.stem, path)
            if loader is None or loader.loader is None or not path.is_file():
                raise PassOptionError(f"custom metric: {path} does not exist. Check the path.")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as e:
        raise PassOptionError(f"custom metric: cannot import '{where}' ({e}). Check the module name.") from e
    function = getattr(module, name, None)
    if not callable(function):
        raise PassOptionError(f"custom metric: '{where}' has no function '{name}'. Check the name.")
    return function  # type: ignore[no-any-return]
