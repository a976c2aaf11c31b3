"""How closely a changed model's first output tracks the original's, streamed over sample data."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeopt.core.runtime import Feeds, create_session, run_session


@dataclass(frozen=True)
class OutputFidelity:
    """How closely a compressed model's first output tracks the original's on sample data."""

    output: str
    samples: int
    cosine_mean: float
    """Cosine similarity per sample (flattened output), averaged."""
    cosine_min: float
    top1_agreement: float | None
    """Share of samples with the same argmax, when the output looks like class scores (rank 2)."""
    sqnr_db: float


def output_fidelity(reference: ir.Model, candidate: ir.Model, batches: Iterable[Feeds]) -> OutputFidelity:
    """Compare the first output of ``candidate`` with ``reference``'s, batch by batch."""
    ref_session = create_session(reference, optimize=True)
    got_session = create_session(candidate, optimize=True)
    name = ref_session.get_outputs()[0].name
    cosines: list[np.ndarray] = []
    agree = count = 0
    signal = noise = 0.0
    classes = True
    for feeds in batches:
        ref = np.asarray(run_session(ref_session, feeds)[name], np.float64)
        got = np.asarray(run_session(got_session, feeds)[name], np.float64)
        classes = classes and ref.ndim == 2 and ref.shape[1] > 1
        if classes:
            agree += int((ref.argmax(1) == got.argmax(1)).sum())
        r, g = ref.reshape(max(len(ref), 1), -1), got.reshape(max(len(got), 1), -1)
        norms = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
        cosines.append((r * g).sum(1) / np.maximum(norms, 1e-30))
        count += len(r)
        signal += float((r ** 2).sum())
        noise += float(((r - g) ** 2).sum())
    cosine = np.concatenate(cosines) if cosines else np.ones(1)
    sqnr = float("inf") if noise == 0 else float(10 * np.log10(max(signal, 1e-30) / noise))
    return OutputFidelity(name, count, float(cosine.mean()), float(cosine.min()),
                          agree / max(count, 1) if classes else None, sqnr)
