"""Knowledge distillation: train an ONNX student to match an ONNX teacher on unlabeled samples.

The teacher runs in ONNX Runtime one batch at a time (nothing is cached); the student
runs as an :class:`~edgeopt.training.interpreter.OnnxModule` trained with Adam on a
warm-up + cosine learning-rate schedule. A fixed, evenly spread share of the samples
is held out: it decides early stopping (the best evaluation's weights are kept) and
gives the before/after fidelity, measured in ONNX Runtime. The trained weights go
back into the student's own graph (:func:`~edgeopt.training.writeback.write_back`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx_ir as ir

from edgeopt.core.errors import CalibrationDataError, ModelLoadError, PassOptionError
from edgeopt.core.model_checks import check_model
from edgeopt.core.model_io import load_model, save_model
from edgeopt.core.runtime import CalibrationReader, Feeds, create_session, model_inputs
from edgeopt.data.readers import open_reader
from edgeopt.training.augment import Augmentation, image_layout, parse_augment
from edgeopt.training.clusters import clustered_weights, decode_constants
from edgeopt.training.config import DistillConfig, OnEval
from edgeopt.training.data import HeldOut, labelled, split_stream
from edgeopt.training.features import match_channels, shared_features, with_outputs
from edgeopt.training.losses import Objective, agreement, choose_objective

if TYPE_CHECKING:
    from edgeopt.training.blockwise import BlockReport
    from edgeopt.training.interpreter import OnnxModule
    from edgeopt.training.qat import QatPlan

logger = logging.getLogger(__name__)

__all__ = ["DistillConfig", "DistillResult", "Score", "distill", "distill_file"]

_NO_SPIN = {"session.intra_op.allow_spinning": "0"}
"""ORT's worker threads otherwise spin between runs, taking the cores torch trains on (5x slower steps)."""

@dataclass(frozen=True)
class Score:
    """The student's agreement with the teacher on the held-out samples."""

    metric: float
    loss: float
    samples: int


@dataclass
class DistillResult:
    """What :func:`distill` did; ``before``/``after`` are measured in ONNX Runtime."""

    objective: Objective
    before: Score
    after: Score
    steps: int
    best_step: int
    seconds: float
    train_samples_seen: int
    stopped: str
    changed_initializers: int = 0
    history: list[tuple[int, float, float]] = field(default_factory=list)
    output: Path | None = None
    features: list[str] = field(default_factory=list)
    """Intermediate tensors matched besides the output."""
    augment: list[str] = field(default_factory=list)
    """The views trained on (``--augment``)."""
    blocks: list[tuple[str, int, float, float]] = field(default_factory=list)
    """Block-wise reconstruction (``--blockwise``): per block, its end, steps, relative error before and after."""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["objective"] = {**asdict(self.objective), "metric": self.objective.metric}
        data["output"] = None if self.output is None else str(self.output)
        return data


def distill_file(student: str | os.PathLike[str], teacher: str | os.PathLike[str], data: str | CalibrationReader,
                 output: str | os.PathLike[str], config: DistillConfig | None = None, *, in_place: bool = False,
                 on_eval: OnEval | None = None) -> DistillResult:
    """Distill the model at ``student`` from ``teacher`` on ``data`` (a reader or a CLI data spec) into ``output``."""
    student_model, teacher_model = load_model(student), load_model(teacher)
    check_model(student_model)
    check_model(teacher_model)
    readable = labelled(student_model, config.labels) if config and config.labels else student_model
    reader = open_reader(data, readable) if isinstance(data, str | os.PathLike) else data
    trained, result = distill(student_model, teacher_model, reader, config, on_eval=on_eval)
    result.output = save_model(trained, output, overwrite_input=in_place)
    return result


def distill(student: ir.Model, teacher: ir.Model, reader: CalibrationReader, config: DistillConfig | None = None,
            *, on_eval: OnEval | None = None) -> tuple[ir.Model, DistillResult]:
    """Train a copy of ``student`` to match ``teacher`` on ``reader``'s samples; return it and the result."""
    import torch

    from edgeopt.training.assignments import AssignModule
    from edgeopt.training.loop import Loop, set_layout
    from edgeopt.training.qat import finish_qat
    from edgeopt.training.writeback import write_back

    config = config or DistillConfig()
    name = _check_signatures(student, teacher, config.output)
    features = shared_features(student, teacher, config.features)
    teacher_session = create_session(with_outputs(teacher, features), config=_NO_SPIN)
    readable = labelled(student, config.labels) if config.labels else student
    if config.labels:
        raw = next(iter(reader), None)
        if raw is not None and config.labels not in raw:
            raise CalibrationDataError(f"--labels '{config.labels}': the data has no array '{config.labels}'; "
                                       f"it has {sorted(raw)}. Save the labels next to the inputs, or drop --labels.")
    inputs = [v.name or "" for v in model_inputs(student)]
    holdout = HeldOut(_Stream(reader, readable, "holdout", config), teacher_session, name, inputs=inputs)
    first = next(holdout(), None)
    if first is None:
        raise CalibrationDataError(f"distillation data: too few samples to hold out {config.holdout:.0%} of them; "
                                   "give more samples or a larger --holdout.")
    maps = match_channels(student, features, teacher_session, first[0])
    features = [f for f in features if f in maps]
    objective = choose_objective(name, first[1], config.loss, temperature=config.temperature)
    logger.info("distill: matching output '%s' (%s) with %s loss", name, objective.kind, objective.loss)
    train = _Stream(reader, readable, "train", config)
    if config.labels:
        _check_labels(next(train(), {}), config.labels, objective)
    before = _score_ort(create_session(student, config=_NO_SPIN), holdout(), objective)
    torch.manual_seed(config.seed)
    module, plan = _student_module(student, config)
    views = _augmentations(config.augment, first[0])
    if config.labels and "mixup" in views:
        raise PassOptionError(f"--augment mixup blends samples, so '{config.labels}' no longer names the class of "
                              "a blended one: drop mixup from --augment or drop --labels.")
    threads = torch.get_num_threads()
    weights = sum(p.numel() for p in module.parameters())
    torch.set_num_threads(config.threads or (1 if weights < 1_000_000 else _idle_cores(threads)))
    try:
        blocks, config = _blockwise(module, student, teacher, first[0], train, objective, config)
        loop = Loop(module, teacher_session, objective, config, train, holdout, on_eval, features=maps, augment=views)
        loop.run()
    finally:
        torch.set_num_threads(threads)
    module.load_state_dict(loop.best_state)
    set_layout(module, torch.contiguous_format)  # the loop may have trained NHWC; write-back reads rows
    if plan is not None:
        trained, changed = finish_qat(module, student, plan), len(plan.tensors) + len(plan.scales)
    else:
        trained = student.clone()  # new values and nodes; write_back replaces (never edits) tensors
        changed = write_back(module, trained)
        if isinstance(module, AssignModule):  # learned assignments: codebooks and indices
            changed += module.finish(trained)
    after = _score_ort(create_session(trained, config=_NO_SPIN), holdout(), objective)
    seconds = loop.seconds + (blocks.seconds if blocks else 0.0)
    result = DistillResult(objective, before, after, loop.step, loop.best_step, seconds, loop.seen,
                           loop.stopped, changed, loop.history, features=features, augment=sorted(views),
                           blocks=blocks.blocks if blocks else [])
    logger.info("distill: %s %.4f -> %.4f on %d held-out samples in %d steps (%.1f s)", objective.metric,
                before.metric, after.metric, after.samples, loop.step, loop.seconds)
    return trained, result


def _blockwise(module: OnnxModule, student: ir.Model, teacher: ir.Model, first: Feeds, train: _Stream,
               objective: Objective, config: DistillConfig) -> tuple[BlockReport | None, DistillConfig]:
    """Block-wise reconstruction first (``config.blockwise`` seconds); the config for the time left."""
    if not config.blockwise:
        return None, config
    from edgeopt.training.blockwise import blockwise_stage

    report = blockwise_stage(module, student, teacher, first, train, objective, seconds=config.blockwise,
                             lr=config.block_lr or config.lr, device=config.device, seed=config.seed)
    left = None if config.time_limit is None else max(1.0, config.time_limit - report.seconds)
    return report, replace(config, time_limit=left, blockwise=0.0)


def _augmentations(spec: str, feeds: Feeds) -> frozenset[Augmentation]:
    """The views to train on: ``auto`` is crop and flip when an input is an image batch."""
    images = any(image_layout(v) is not None for v in feeds.values())
    if spec != "auto":
        kinds = parse_augment(spec)
        if kinds and not images:
            raise PassOptionError(f"--augment {spec}: no input is a batch of images (float, rank 4, 1, 3 or 4 "
                                  "channels, 16 or more pixels a side); drop --augment or use --augment none.")
        return kinds
    if images:
        logger.info("distill: image input: training on random crops and flips (--augment none to stop)")
    return frozenset(("crop", "flip")) if images else frozenset()


def _check_labels(feeds: Feeds, key: str, objective: Objective) -> None:
    labels = feeds.get(key)
    if objective.kind != "logits":
        raise PassOptionError(f"--labels: a task loss needs class scores, but '{objective.output}' is an "
                              f"{objective.kind}; drop --labels or match a logits output.")
    if labels is None or labels.dtype.kind not in "iu" or labels.ndim != 1:
        got = "nothing" if labels is None else f"{labels.dtype} of shape {list(labels.shape)}"
        raise CalibrationDataError(f"--labels '{key}': expected integer class indices, one per sample, "
                                   f"got {got}. Save them as an int array '{key}' next to the inputs.")


def _student_module(student: ir.Model, config: DistillConfig) -> tuple[OnnxModule, QatPlan | None]:
    """The trainable module of ``student``: QAT for quantized weights, clustered weights tied."""
    from edgeopt.training.interpreter import OnnxModule
    from edgeopt.training.qat import prepare_qat

    qat = config.qat if config.qat is not None else has_quantized_weights(student)
    plan = prepare_qat(student, learn_scales=config.learn_scales) if qat else None
    graph = plan.graph if plan is not None else student
    shadows = {t.weight for t in plan.tensors} if plan is not None else set()  # on the int8 grid, not clusters
    tied = clustered_weights(graph) - shadows if config.keep_clusters else set()
    if tied:
        logger.info("distill: %d clustered weight(s) keep their values tied", len(tied))
    kind = OnnxModule
    if config.keep_clusters and config.learn_assignments and plan is None:
        from edgeopt.training.assignments import AssignModule as kind  # type: ignore[assignment]
    module = kind(graph, positive=plan.scales if plan else None, frozen=decode_constants(graph), tied=tied)
    return module.to(config.device), plan


def has_quantized_weights(model: ir.Model) -> bool:
    """Whether a DequantizeLinear of ``model`` reads a constant integer tensor (a QDQ weight)."""
    for node in model.graph:
        value = node.inputs[0] if node.op_type == "DequantizeLinear" and node.inputs else None
        if value is not None and value.const_value is not None and value.const_value.dtype.is_integer():
            return True
    return False


class _Stream:
    """A re-iterable view of one part of the samples."""

    def __init__(self, reader: CalibrationReader, model: ir.Model, part: Literal["train", "holdout"],
                 config: DistillConfig) -> None:
        self.reader, self.model, self.part, self.config = reader, model, part, config

    def __call__(self) -> Iterator[Feeds]:
        return split_stream(self.reader, self.model, self.part, fraction=self.config.holdout,
                            batch_size=self.config.batch_size, limit=self.config.samples)


def _idle_cores(threads: int) -> int:
    """torch's thread count, less the cores the 1-minute load average says are busy (at least 1).

    On 2 cores shared with other work, one EfficientNet-Lite0 step took 24 s with 2 threads, 4.5 s with 1.
    """
    try:
        busy = round(os.getloadavg()[0])
    except OSError:  # not on every platform
        return threads
    return max(1, min(threads, (os.cpu_count() or threads) - busy))


def _check_signatures(student: ir.Model, teacher: ir.Model, output: str | None) -> str:
    def described(model: ir.Model) -> dict[str, str]:
        return {v.name or "": str(v.dtype) for v in model_inputs(model)}

    mine, theirs = described(student), described(teacher)
    if mine != theirs:
        raise ModelLoadError(f"student and teacher take different inputs: student {mine}, teacher {theirs}. "
                             "Distill a student made from this teacher (same input names and types).")
    outputs = [v.name or "" for v in student.graph.outputs]
    name = output or outputs[0]
    if name not in outputs:
        raise PassOptionError(f"--output '{name}' is not an output of the student; it has {outputs}.")
    teacher_outputs = [v.name or "" for v in teacher.graph.outputs]
    if name not in teacher_outputs:
        raise ModelLoadError(f"the teacher has no output '{name}' (it has {teacher_outputs}). Name the output "
                             "to match with --output, one both models have.")
    return name


def _score_ort(student: Any, stream: Iterator[tuple[Feeds, np.ndarray]], objective: Objective) -> Score:
    """Agreement and loss of an ORT session with the teacher's outputs, averaged per sample."""
    import torch

    agree_sum = loss_sum = 0.0
    count = rows = 0
    for feeds, want in stream:
        got = student.run([objective.output], feeds)[0]
        _check_shapes(got, want, objective.output)
        agree, n = agreement(objective.kind, got, want)
        agree_sum, count = agree_sum + agree, count + n
        loss_sum += float(objective(torch.from_numpy(got), torch.from_numpy(want))) * len(got)
        rows += len(got)
    return Score(agree_sum / max(count, 1), loss_sum / max(rows, 1), rows)


def _check_shapes(student: np.ndarray, teacher: np.ndarray, name: str) -> None:
    if student.shape != teacher.shape:
        raise ModelLoadError(f"output '{name}': the student gives shape {list(student.shape)}, the teacher "
                             f"{list(teacher.shape)}; distillation matches outputs of the same shape.")
