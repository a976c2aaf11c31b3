"""Recover by training: distill the model from its teacher (a recipe step after prune, drop-layers, ...).

The pass runs :func:`edgeopt.training.distill` (``edgeopt distill``) on the model it is
given: the teacher is ``teacher`` or, by default, the file the model was loaded from, so in
a recipe it is the recipe's input model, before any compression step::

    passes:
      - prune-channels: {ratio: 0.3, calibration: calib/, repair: true}
      - distill: {data: calib/, time_limit: 300, lr: 1.0e-4}
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import ClassVar

import onnx_ir as ir

from edgeopt.core.errors import PassOptionError
from edgeopt.core.model_io import SOURCE_PATH_KEY, load_model
from edgeopt.core.pass_base import EdgeoptPass, adopt
from edgeopt.core.runtime import Feeds
from edgeopt.data.readers import open_reader
from edgeopt.training import DistillConfig, DistillResult, distill
from edgeopt.training.data import labelled
from edgeopt.training.losses import LossName

logger = logging.getLogger(__name__)

__all__ = ["DistillPass"]


class DistillPass(EdgeoptPass):
    """Train the model's weights to match a teacher's outputs on unlabeled data (knowledge distillation).

    Int8 QDQ models get quantization-aware training and clustered weights keep their
    clusters (see docs/distillation.md). The graph's nodes and signature stay as they
    are; only initializer values change. Not idempotent by nature: a second run
    trains further. ``last_result`` holds the last run's before/after fidelity.

    Args:
        data: Training samples: a folder of .npy/.npz or images, ``random:N``, or a re-iterable of feeds.
        teacher: The model to match (a path); default: the file the model was loaded from.
        Other options: as ``edgeopt distill``'s (:class:`edgeopt.training.DistillConfig`).
    """

    name = "distill"
    preserves_semantics = False
    path_options: ClassVar[tuple[str, ...]] = ("data", "teacher")
    """Options holding paths; a recipe resolves them relative to itself."""

    def __init__(
        self, *, data: str | Iterable[Feeds] | None = None, teacher: str | None = None,
        steps: int | None = None, epochs: float | None = None, time_limit: float | None = None, lr: float = 1e-3,
        batch_size: int = 32, loss: LossName = "auto", temperature: float = 2.0, holdout: float = 0.1,
        samples: int | None = None, eval_every: int = 25, patience: int = 5, output: str | None = None,
        device: str = "cpu", qat: bool | None = None, learn_scales: bool = True, scale_lr: float | None = None,
        keep_clusters: bool = True, labels: str | None = None, alpha: float = 0.5, features: int = 0,
        feature_weight: float = 1.0, learn_assignments: bool = True, augment: str = "none", ema: float = 0.0,
        blockwise: float = 0.0, block_lr: float | None = None,
    ) -> None:
        super().__init__()
        self.data, self.teacher = data, teacher
        self.steps, self.epochs, self.time_limit, self.lr = steps, epochs, time_limit, lr
        self.batch_size, self.loss, self.temperature, self.holdout = batch_size, loss, temperature, holdout
        self.samples, self.eval_every, self.patience, self.output = samples, eval_every, patience, output
        self.device, self.qat, self.learn_scales, self.scale_lr = device, qat, learn_scales, scale_lr
        self.keep_clusters, self.labels, self.alpha = keep_clusters, labels, alpha
        self.features, self.feature_weight, self.learn_assignments = features, feature_weight, learn_assignments
        self.augment, self.ema, self.blockwise, self.block_lr = augment, ema, blockwise, block_lr
        self.config = DistillConfig(
            steps=steps, epochs=epochs, time_limit=time_limit, lr=lr, batch_size=batch_size, loss=loss,
            temperature=temperature, holdout=holdout, samples=samples, eval_every=eval_every, patience=patience,
            output=output, device=device, qat=qat, learn_scales=learn_scales, scale_lr=scale_lr,
            keep_clusters=keep_clusters, labels=labels, alpha=alpha, features=features,
            feature_weight=feature_weight, learn_assignments=learn_assignments, augment=augment,
            ema=ema, blockwise=blockwise, block_lr=block_lr)  # checks every option now, before any step runs
        self.last_result: DistillResult | None = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.data is None:
            raise PassOptionError("distill: needs data: training samples (a folder of .npy/.npz or images, or "
                                  "random:N), e.g. the calibration folder.")
        teacher_path = self.teacher or model.meta.get(SOURCE_PATH_KEY)
        if not teacher_path:
            raise PassOptionError("distill: the model was not loaded from a file, so there is no default teacher; "
                                  "give teacher: PATH (the model before compression).")
        teacher = load_model(teacher_path)
        readable = labelled(model, self.labels) if self.labels else model
        reader = open_reader(self.data, readable) if isinstance(self.data, str) else self.data
        trained, self.last_result = distill(model, teacher, reader, self.config)
        logger.info("distill: %s %.4f -> %.4f vs %s", self.last_result.objective.metric,
                    self.last_result.before.metric, self.last_result.after.metric, teacher_path)
        adopt(model, trained)
        return ir.passes.PassResult(model, modified=self.last_result.changed_initializers > 0)
