"""Distillation losses and agreement metrics, chosen by what the teacher's output is.

Logits (rank 2, not normalized rows, a name that does not say embedding) get the KL
divergence of temperature-softened distributions (Hinton et al.), scaled by T², and
top-1 agreement as the metric. Embeddings (L2-normalized rows, or a name like
``embedding``/``pooled``) get 1 - cosine along the last axis, and other tensors
(hidden states, feature maps) a mean squared error relative to the teacher's mean
square; both use the mean cosine along the last axis as the metric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["LossName", "OutputKind", "Objective", "choose_objective", "agreement", "relative_mse"]

LossName = Literal["auto", "kl", "cosine", "mse"]
OutputKind = Literal["logits", "embedding"]
_EMBEDDING_NAME = re.compile(r"embed|pool|hidden|feature|vector|encod", re.I)


@dataclass(frozen=True)
class Objective:
    """What the student is trained on and how its agreement with the teacher is measured."""

    output: str
    kind: OutputKind
    loss: Literal["kl", "cosine", "mse"]
    temperature: float = 2.0

    @property
    def metric(self) -> str:
        return "top-1 agreement" if self.kind == "logits" else "cosine"

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The loss of one batch (a scalar)."""
        import torch.nn.functional as F

        if self.loss == "kl":
            t = self.temperature
            log_p = F.log_softmax(student.flatten(1) / t, dim=-1)
            log_q = F.log_softmax(teacher.flatten(1) / t, dim=-1)
            return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * t * t
        if self.loss == "cosine":
            return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
        return relative_mse(student, teacher)


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error relative to the teacher's mean square (scale-free: tensors of any size compare)."""
    import torch.nn.functional as F

    return F.mse_loss(student, teacher) / teacher.pow(2).mean().clamp_min(1e-12)


def choose_objective(name: str, teacher_batch: np.ndarray, loss: LossName = "auto", *,
                     temperature: float = 2.0) -> Objective:
    """The objective for output ``name``, from a batch of the teacher's values and ``loss``.

    ``auto``: KL for logits, cosine for embeddings, MSE for anything else; an explicit
    ``loss`` is used as given (``kl`` makes the output count as logits).
    """
    rows = teacher_batch.reshape(-1, teacher_batch.shape[-1]) if teacher_batch.ndim else teacher_batch.reshape(1, 1)
    normalized = bool(np.allclose(np.linalg.norm(rows.astype(np.float64), axis=-1), 1.0, atol=1e-3))
    embedding = normalized or bool(_EMBEDDING_NAME.search(name))
    logits = teacher_batch.ndim == 2 and teacher_batch.shape[-1] > 1 and not embedding
    if loss == "auto":
        loss = "kl" if logits else "cosine" if embedding else "mse"
    kind: OutputKind = "logits" if loss == "kl" or (logits and loss != "cosine") else "embedding"
    return Objective(name, kind, loss, temperature)


def agreement(kind: OutputKind, student: np.ndarray, teacher: np.ndarray) -> tuple[float, int]:
    """The sum of per-sample agreement over a batch and the number of samples it covers.

    Logits: 1 where the argmax matches; otherwise the cosine along the last axis.
    """
    if kind == "logits":
        s, t = student.reshape(len(student), -1), teacher.reshape(len(teacher), -1)
        return float((s.argmax(-1) == t.argmax(-1)).sum()), len(s)
    s = student.reshape(-1, student.shape[-1]).astype(np.float64)
    t = teacher.reshape(-1, teacher.shape[-1]).astype(np.float64)
    cos = (s * t).sum(-1) / np.maximum(np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1), 1e-12)
    return float(cos.sum()), len(cos)
