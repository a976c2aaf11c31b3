"""The prune road of the CLI: load, prune (structured or magnitude), save, summarize.

Structured pruning shrinks the tensors, so parameters, MACs and latency drop;
magnitude pruning only writes zeros, so the report gives the zipped file size,
where the zeros pay off.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgeopt.channels.importance import Criterion
from edgeopt.channels.plan import Kinds, PrunePlan, Rounding, Scope
from edgeopt.core.inspect_model import ModelSummary, summarize
from edgeopt.core.model_checks import check_model
from edgeopt.core.model_io import load_model, save_model
from edgeopt.core.output_fidelity import OutputFidelity, output_fidelity
from edgeopt.data.readers import batches, open_reader
from edgeopt.passes import PruneChannelsPass, PruneMagnitudePass
from edgeopt.pipeline import cleanup


@dataclass(frozen=True)
class PruneConfig:
    """What ``edgeopt prune`` does; the fields are the options of ``prune-channels``
    (or, with ``unstructured``, ``ratio`` is the sparsity of ``prune-magnitude``)."""

    ratio: float = 0.3
    criterion: Literal["auto", Criterion] = "auto"
    """``auto``: ``reconstruction`` with calibration data (measured best, docs/pruning.md), else ``l1``."""
    scope: Scope = "uniform"
    round_to: int = 8
    max_ratio: float = 0.9
    rounding: Rounding = "up"
    exclude: tuple[str, ...] = ()
    kinds: Kinds = "all"
    samples: int | None = None
    repair: bool | None = None
    """Refit the next layers by least squares; None: whenever calibration data is given."""
    reestimate_bn: bool = False
    unstructured: bool = False
    cleanup: bool = True
    """Run the ``cleanup`` preset first (a raw export's computed pads block channel groups)."""
    eval_samples: int = 256
    """Calibration samples the result's fidelity is measured on."""


@dataclass
class PruneResult:
    """The plan (structured) or sparsity (magnitude), and the model before/after."""

    before: ModelSummary
    plan: PrunePlan | None = None
    after: ModelSummary | None = None
    output: Path | None = None
    sparsity: float | None = None
    zipped_before: int | None = None
    zipped_after: int | None = None
    fidelity: OutputFidelity | None = None
    """The first output vs the original's on the calibration data (None without data)."""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"output": str(self.output) if self.output else None,
                "plan": self.plan.as_dict() if self.plan else None,
                "before": asdict(self.before), "after": asdict(self.after) if self.after else None,
                "sparsity": self.sparsity, "zipped_before": self.zipped_before, "zipped_after": self.zipped_after,
                "fidelity": asdict(self.fidelity) if self.fidelity else None, "notes": self.notes}


def zipped_size(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> int:
    """Bytes of the file once deflated (zip level 6), streamed chunk by chunk."""
    compressor = zlib.compressobj(6)
    total = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            total += len(compressor.compress(block))
    return total + len(compressor.flush())


def prune_file(
    model_path: str | os.PathLike[str], output: str | os.PathLike[str] | None, config: PruneConfig, *,
    calibration: str | None = None, plan_only: bool = False, in_place: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> PruneResult:
    """Prune ``model_path`` into ``output`` (never over the input unless ``in_place``).

    With ``plan_only`` nothing is written: the result holds the groups, their sizes
    and why any are left alone.
    """
    model = load_model(model_path)
    check_model(model)
    result = PruneResult(before=summarize(model))
    criterion = resolve_criterion(config.criterion, calibration)
    reference = model.clone() if calibration is not None and not plan_only else None  # for the fidelity
    if config.cleanup and criterion == "bn":  # the clean-up folds the BatchNorms this criterion reads
        result.notes.append("cleanup skipped: --criterion bn reads the BatchNorms it would fold.")
    elif config.cleanup:
        cleanup()(model)
    if config.unstructured:
        magnitude = PruneMagnitudePass(sparsity=config.ratio, exclude=config.exclude,
                                       scope="global" if config.scope == "global" else "layer")
        if plan_only:
            return result
        magnitude(model)
        result.sparsity = magnitude.zeroed / magnitude.total if magnitude.total else 0.0
    else:
        channels = PruneChannelsPass(
            ratio=config.ratio, criterion=criterion, scope=config.scope, round_to=config.round_to,
            max_ratio=config.max_ratio, rounding=config.rounding, exclude=config.exclude, kinds=config.kinds,
            calibration=calibration, samples=config.samples, repair=_repair(config, calibration) and not plan_only,
            reestimate_bn=config.reestimate_bn and not plan_only, plan_only=plan_only, on_batch=on_batch)
        channels(model)
        result.plan = channels.plan
        if plan_only:
            return result
    assert output is not None, "an output path is needed unless plan_only"
    result.output = save_model(model, output, overwrite_input=in_place)
    result.after = summarize(load_model(result.output))
    result.zipped_before, result.zipped_after = zipped_size(model_path), zipped_size(result.output)
    if calibration is None:
        result.notes.append("accuracy not checked: no calibration data. Rerun with --calib DATA (a folder of "
                            ".npy/.npz or images) to measure the output against the original and to repair "
                            "the layers after the pruned channels.")
    else:
        assert reference is not None
        evaluation = batches(open_reader(calibration, reference), reference, limit=config.eval_samples)
        result.fidelity = output_fidelity(reference, model, evaluation)
    return result


def resolve_criterion(criterion: Literal["auto", Criterion], calibration: str | None) -> Criterion:
    """``auto`` -> ``reconstruction`` with calibration data, else ``l1``."""
    if criterion != "auto":
        return criterion
    return "reconstruction" if calibration is not None else "l1"


def _repair(config: PruneConfig, calibration: str | None) -> bool:
    return config.repair if config.repair is not None else calibration is not None
