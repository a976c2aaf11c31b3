"""Export a torch source (file, factory or Hugging Face folder) to an ONNX file, checked against torch.

This is what ``edgeopt export`` and a recipe's ``export:`` section run: load the
source, build example inputs, export with :func:`edgeopt.exporting.export`, and
write the file only if the max abs error is within ``atol`` (when given).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from edgeopt.core.errors import ExportError
from edgeopt.core.model_io import save_model
from edgeopt.exporting import huggingface
from edgeopt.exporting.inputs import (
    InputSpec,
    dynamic_axes,
    load_examples,
    parse_input_spec,
    random_inputs,
)
from edgeopt.exporting.sources import SourceKind, TorchSource, load_source
from edgeopt.exporting.torch_export import DEFAULT_OPSET, ExportReport, export

logger = logging.getLogger(__name__)

SCRIPT_MODULE_REASON = "a TorchScript module (torch.jit) exports only with the TorchScript exporter"


@dataclass(frozen=True)
class SourceExportConfig:
    """How to export a source; the ``edgeopt export`` options."""

    inputs: tuple[str, ...] = ()
    """``NAME:DIMS[:DTYPE]`` specs (see :mod:`edgeopt.exporting.inputs`)."""
    example: Path | None = None
    """An ``.npz`` of example inputs, one array per input name (instead of ``inputs``)."""
    dynamic: tuple[str, ...] = ()
    """``NAME:AXIS[:LABEL]`` dynamic axes, besides the labelled dims of ``inputs``."""
    opset: int = DEFAULT_OPSET
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto"
    atol: float | None = None
    """Fail, writing nothing, when the max abs error against torch exceeds this."""
    optimize: bool = True


@dataclass(frozen=True)
class SourceExport:
    """What :func:`export_source` wrote and how close it is to torch."""

    kind: SourceKind
    location: str
    output: Path
    report: ExportReport
    output_errors: dict[str, float]
    """Graph output -> max abs error against torch over every check."""
    inputs: dict[str, list[int | str]]
    """Graph input -> shape (labels for dynamic axes)."""
    nodes: int
    size: int
    """Bytes written (model file and external data)."""


def export_source(
    source: str, output: str | os.PathLike[str], config: SourceExportConfig | None = None
) -> SourceExport:
    """Load ``source``, export it to ``output`` and check it against torch.

    Raises:
        ModelLoadError: the source is missing or cannot be loaded.
        BackendNotInstalledError: a Hugging Face folder without transformers.
        ExportError: bad inputs, both exporters failed, or the error exceeds ``atol``
            (then nothing is written).
    """
    config = config or SourceExportConfig()
    if config.exporter not in ("auto", "dynamo", "torchscript"):
        raise ExportError(f"unknown exporter {config.exporter!r}; use auto, dynamo or torchscript.")
    dest = Path(output).resolve()
    if str(dest) == source or dest == Path(source).resolve():
        raise ExportError(f"{dest}: the output is the source; write to another path.")
    loaded = load_source(source)
    feeds, specs = _examples(loaded, config)
    names = list(feeds)
    axes = dynamic_axes(specs, config.dynamic, names)
    for name, dims in axes.items():
        if any(axis >= feeds[name].dim() for axis in dims):
            raise ExportError(f"--dynamic {name}: axis {max(dims)} is out of range for its "
                              f"{feeds[name].dim()}-d example {list(feeds[name].shape)}.")
    module = loaded.module_for(names)
    exporter, reason = _exporter(loaded, config.exporter)
    outputs = huggingface.output_names(loaded.module, feeds) if loaded.kind == "huggingface" else None
    # atol=inf: the library's check only raises on structural mismatches; the atol below decides.
    result = export(module, tuple(feeds.values()), input_names=names, output_names=outputs,
                    dynamic_axes=dict(axes) or None, opset=config.opset, exporter=exporter,
                    rtol=0.0, atol=math.inf, optimize=config.optimize)
    report = dataclasses.replace(result.report, fallback_reason=reason) if reason else result.report
    errors: dict[str, float] = {}
    for check in report.checks:
        for name, value in check.outputs:
            errors[name] = max(errors.get(name, 0.0), value)
    if config.atol is not None and not report.max_abs <= config.atol:
        worst = ", ".join(f"{n} {e:.3g}" for n, e in errors.items() if not e <= config.atol)
        raise ExportError(f"{loaded.location}: the {report.exporter} export's max abs error {report.max_abs:.3g} "
                          f"exceeds atol {config.atol:g} ({worst}); nothing was written to {dest}.")
    path = save_model(result.model, dest)
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    shapes = {v.name or "": [d if isinstance(d, int) else str(d) for d in (v.shape or [])]
              for v in result.model.graph.inputs}
    return SourceExport(loaded.kind, loaded.location, path, report, errors, shapes,
                        len(result.model.graph), size)


def _exporter(loaded: TorchSource, asked: str) -> tuple[Literal["auto", "dynamo", "torchscript"], str | None]:
    if not isinstance(loaded.module, torch.jit.ScriptModule):
        return asked, None  # type: ignore[return-value]
    if asked == "dynamo":
        raise ExportError(f"{loaded.location}: {SCRIPT_MODULE_REASON}; use exporter auto or torchscript.")
    return "torchscript", SCRIPT_MODULE_REASON if asked == "auto" else None


def _examples(loaded: TorchSource, config: SourceExportConfig) -> tuple[dict[str, torch.Tensor], list[InputSpec]]:
    """Example tensors in ``forward``'s order, and the specs they came from (for dynamic axes)."""
    if config.inputs and config.example is not None:
        raise ExportError("give example inputs either as --input specs or as --example FILE.npz, not both.")
    specs: list[InputSpec] = []
    if config.example is not None:
        feeds = load_examples(config.example)
    elif config.inputs:
        specs = [parse_input_spec(s) for s in config.inputs]
        feeds = random_inputs(specs, int_ranges=loaded.int_ranges)
    elif loaded.examples is not None:
        feeds = dict(loaded.examples)
    elif loaded.default_inputs is not None:
        specs = [_spec(name, shape, dtype) for name, (shape, dtype) in loaded.default_inputs.items()]
        feeds = random_inputs(specs, int_ranges=loaded.int_ranges)
    else:
        raise ExportError(f"{loaded.location}: a {loaded.kind} source carries no example inputs; give them: "
                          "--input NAME:DIMS:DTYPE (repeatable) or --example FILE.npz.")
    return _ordered(loaded, feeds), specs


def _spec(name: str, shape: Sequence[int | str], dtype: torch.dtype) -> InputSpec:
    dynamic = {axis: dim for axis, dim in enumerate(shape) if isinstance(dim, str)}
    return InputSpec(name, tuple(huggingface.example_size(d) for d in shape), dtype, dynamic)


def _ordered(loaded: TorchSource, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``feeds`` in ``forward``'s parameter order; they must be its first parameters."""
    params = loaded.forward_names
    if params is None or loaded.adapter is not None:  # unknown order, or passed by keyword
        return dict(feeds)
    unknown = [n for n in feeds if n not in params]
    if unknown:
        raise ExportError(f"{loaded.location}: forward() has no input {', '.join(map(repr, unknown))}; "
                          f"it takes {', '.join(params) or 'none'}.")
    ordered = [n for n in params if n in feeds]
    if ordered != list(params[:len(ordered)]):
        missing = [n for n in params[:len(ordered)] if n not in feeds]
        raise ExportError(f"{loaded.location}: inputs are passed in order to forward({', '.join(params)}); "
                          f"give {', '.join(map(repr, missing))} too.")
    return {n: feeds[n] for n in ordered}
