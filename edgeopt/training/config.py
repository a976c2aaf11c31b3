"""The options of a distillation run (:class:`DistillConfig`) and its progress callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgeopt.core.errors import PassOptionError
from edgeopt.training.augment import parse_augment
from edgeopt.training.losses import LossName

__all__ = ["DistillConfig", "OnEval"]

OnEval = Callable[[int, int | None, float, float], None]
"""Progress: (step, total steps or None, mean training loss since the last evaluation, held-out metric)."""


@dataclass(frozen=True)
class DistillConfig:
    """How long and how to train. With none of steps/epochs/time_limit, 5 epochs.

    Args:
        steps: Optimizer steps. epochs: Passes over the training share. time_limit: Seconds.
            The first limit reached ends training; the schedule follows the tightest one.
        lr: Peak learning rate of Adam. batch_size: Samples per step (a fixed batch dim wins).
        loss: ``auto`` (KL for logits, cosine for embeddings, MSE otherwise) or one of them.
        temperature: Softening of the KL loss. holdout: Share of samples held out.
        samples: Use at most this many samples. eval_every: Steps between held-out evaluations.
        patience: Evaluations without improvement before stopping. output: Which graph output
            to match (default: the student's first). device: torch device.
        qat: Quantization-aware training of a QDQ student (:mod:`edgeopt.training.qat`); None: on
            when the student has quantized weights (nothing else in such a model trains).
        learn_scales: QAT: train the Q/DQ scales too (LSQ-style), not only the weights.
        scale_lr: QAT: peak learning rate of the (log) scales; None: ``lr``.
        keep_clusters: Train clustered weights tied (:mod:`edgeopt.training.clusters`): each
            tensor keeps its distinct values, the centroids move.
        learn_assignments: With ``keep_clusters``: which centroid each weight takes trains too
            (:mod:`edgeopt.training.assignments`); still K values per tensor.
        labels: Name of an array in the data holding class labels: mixes a cross-entropy task
            loss into the distillation loss (logits only). alpha: Its share, 0 to 1.
        features: Also match this many intermediate tensors the student kept from the teacher
            (:mod:`edgeopt.training.features`). feature_weight: Their loss's weight.
        ema: Decay of an exponential moving average of the weights (0: off); evaluations score,
            and the result keeps, the average.
        blockwise: Seconds (out of ``time_limit``) of block-wise reconstruction before end-to-end
            training (:mod:`edgeopt.training.blockwise`): each block of the student learns the
            teacher's tensor at its end, in order; 0: off.
        block_lr: Peak learning rate of each block's reconstruction; None: ``lr``.
        augment: Fresh views of image inputs each step, seen by teacher and student alike
            (:mod:`edgeopt.training.augment`): ``none`` (the default: on pruned EfficientNet-Lite0
            views lost, 0.76 vs 0.795 unseen agreement in 20 minutes), ``auto`` (crop and flip when
            an input is an image batch), or a comma list of ``flip``, ``crop``, ``mixup``.
        threads: torch's CPU threads while training; None: 1 for students under a million
            weights (small ops lose more to thread hand-offs than they gain: 4-10x measured on
            2 busy cores), otherwise torch's default less the cores the load average says are busy.
    """

    steps: int | None = None
    epochs: float | None = None
    time_limit: float | None = None
    lr: float = 1e-3
    batch_size: int = 32
    loss: LossName = "auto"
    temperature: float = 2.0
    holdout: float = 0.1
    samples: int | None = None
    eval_every: int = 25
    patience: int = 5
    output: str | None = None
    seed: int = 0
    device: str = "cpu"
    qat: bool | None = None
    learn_scales: bool = True
    scale_lr: float | None = None
    keep_clusters: bool = True
    learn_assignments: bool = True
    labels: str | None = None
    alpha: float = 0.5
    features: int = 0
    feature_weight: float = 1.0
    threads: int | None = None
    augment: str = "none"
    ema: float = 0.0
    blockwise: float = 0.0
    block_lr: float | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "samples", "eval_every", "patience", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise PassOptionError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.")
        for name in ("epochs", "time_limit", "lr", "temperature", "scale_lr", "block_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise PassOptionError(f"--{name.replace('_', '-')} must be positive, got {value!r}.")
        if not 0 <= self.alpha <= 1:
            raise PassOptionError(f"--alpha must be between 0 and 1, got {self.alpha!r}.")
        if isinstance(self.features, bool) or not isinstance(self.features, int) or self.features < 0:
            raise PassOptionError(f"--features must be a count (0 or more), got {self.features!r}.")
        if not self.feature_weight >= 0:
            raise PassOptionError(f"--feature-weight must be 0 or more, got {self.feature_weight!r}.")
        if not self.blockwise >= 0:
            raise PassOptionError(f"--blockwise must be 0 or more seconds, got {self.blockwise!r}.")
        if self.time_limit is not None and self.blockwise >= self.time_limit:
            raise PassOptionError(f"--blockwise {self.blockwise:g} leaves no time of --time-limit "
                                  f"{self.time_limit:g} for end-to-end training; give it less.")
        if not 0 <= self.ema < 1:
            raise PassOptionError(f"--ema must be a decay in [0, 1), got {self.ema!r}.")
        if self.augment != "auto":
            parse_augment(self.augment)
        if not 0 < self.holdout < 1:
            raise PassOptionError(f"--holdout must be a fraction between 0 and 1, got {self.holdout!r}.")
