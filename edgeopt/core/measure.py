"""Measure a model on data: accuracy, agreement with a reference, latency.

Data is streamed in batches; only the logits of the current batch are held.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RunFn = Callable[[np.ndarray], np.ndarray]
"""One batch of inputs -> one batch of logits."""


@dataclass(frozen=True)
class Fidelity:
    """A classifier's accuracy and its agreement with a reference classifier."""

    accuracy: float
    top1_agreement: float
    max_abs_diff: float
    sqnr_db: float
    """Signal-to-quantization-noise ratio of the logits vs the reference, in dB."""


def fidelity(
    run: RunFn, reference: RunFn, x: np.ndarray, labels: np.ndarray, *, batch_size: int = 256
) -> Fidelity:
    """Accuracy of ``run`` on ``(x, labels)`` and how closely it tracks ``reference``."""
    correct = agree = 0
    max_abs = signal = noise = 0.0
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        got, ref = np.asarray(run(batch), np.float64), np.asarray(reference(batch), np.float64)
        correct += int((got.argmax(1) == labels[start:start + batch_size]).sum())
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        max_abs = max(max_abs, float(np.abs(got - ref).max()))
        signal += float((ref**2).sum())
        noise += float(((got - ref) ** 2).sum())
    sqnr = float("inf") if noise == 0 else 10 * np.log10(signal / noise)
    return Fidelity(correct / len(x), agree / len(x), max_abs, sqnr)


def median_latency_ms(run: Callable[[], object], *, warmup: int = 5, repeat: int = 50) -> float:
    """Median wall time of ``run()`` in milliseconds."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
