"""The prune road of the CLI: load, prune (structured or magnitude), save, summarize.

Structured pruning shrinks the tensors, so parameters, MACs and latency drop;
magnitude pruning only writes zeros, so the report gives the zipped file size,
where the zeros pay off.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeopt.channels.importance import Criterion
from edgeopt.channels.plan import Kinds, PrunePlan, Rounding, Scope
from edgeopt.core.inspect_model import ModelSummary, summarize
from edgeopt.core.model_checks import check_model
from edgeopt.core.model_io import load_model, save_model
from edgeopt.passes import PruneChannelsPass, PruneMagnitudePass


@dataclass(frozen=True)
class PruneConfig:
    """What ``edgeopt prune`` does; the fields are the options of ``prune-channels``
    (or, with ``unstructured``, ``ratio`` is the sparsity of ``prune-magnitude``)."""

    ratio: float = 0.3
    criterion: Criterion = "l1"
    scope: Scope = "uniform"
    round_to: int = 8
    max_ratio: float = 0.9
    rounding: Rounding = "up"
    exclude: tuple[str, ...] = ()
    kinds: Kinds = "all"
    samples: int | None = None
    repair: bool = False
    reestimate_bn: bool = False
    unstructured: bool = False


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

    def as_dict(self) -> dict[str, Any]:
        return {"output": str(self.output) if self.output else None,
                "plan": self.plan.as_dict() if self.plan else None,
                "before": asdict(self.before), "after": asdict(self.after) if self.after else None,
                "sparsity": self.sparsity, "zipped_before": self.zipped_before, "zipped_after": self.zipped_after}


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
    if config.unstructured:
        magnitude = PruneMagnitudePass(sparsity=config.ratio, exclude=config.exclude,
                                       scope="global" if config.scope == "global" else "layer")
        if plan_only:
            return result
        magnitude(model)
        result.sparsity = magnitude.zeroed / magnitude.total if magnitude.total else 0.0
    else:
        channels = PruneChannelsPass(
            ratio=config.ratio, criterion=config.criterion, scope=config.scope, round_to=config.round_to,
            max_ratio=config.max_ratio, rounding=config.rounding, exclude=config.exclude, kinds=config.kinds,
            calibration=calibration, samples=config.samples, repair=config.repair and not plan_only,
            reestimate_bn=config.reestimate_bn and not plan_only, plan_only=plan_only, on_batch=on_batch)
        channels(model)
        result.plan = channels.plan
        if plan_only:
            return result
    assert output is not None, "an output path is needed unless plan_only"
    result.output = save_model(model, output, overwrite_input=in_place)
    result.after = summarize(load_model(result.output))
    result.zipped_before, result.zipped_after = zipped_size(model_path), zipped_size(result.output)
    return result
