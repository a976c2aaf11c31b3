"""Export a PyTorch module to ONNX and check the result against torch.

``exporter="auto"`` tries the ``torch.export``-based exporter and falls back to the
TorchScript one when it raises. ONNX Runtime then runs the result on the example
inputs and on random ones (dynamic axes grown) and must match the module's outputs,
so a silently wrong export never leaves this function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import onnx_ir as ir
import torch

from edgeopt.core.errors import ExportError
from edgeopt.core.model_io import SOURCE_FILES_KEY, SOURCE_PATH_KEY, load_model, save_model
from edgeopt.exporting.check import ExportCheck, ExporterName, check_numerics, root_reason

logger = logging.getLogger(__name__)

DynamicAxes = Mapping[str, Mapping[int, str] | Sequence[int]]
DEFAULT_OPSET = 18
"""The ``ai.onnx`` opset :func:`export` targets unless told otherwise."""


@dataclass(frozen=True)
class ExportReport:
    """How a module was exported and how closely the result matches torch."""

    exporter: ExporterName
    fallback_reason: str | None
    """Why the dynamo exporter was not used (its root error, one line); ``None`` if it was."""
    checks: tuple[ExportCheck, ...]
    max_abs: float
    max_rel: float
    opset: int


@dataclass
class ExportResult:
    """The exported model (tensors in memory) and its report."""

    model: ir.Model
    report: ExportReport


class _ExporterFailedError(Exception):
    """A torch exporter raised; the message is its root error on one line."""


@dataclass(frozen=True)
class _Request:
    """What to export, as normalized from :func:`export`'s arguments."""

    module: torch.nn.Module
    args: tuple[torch.Tensor, ...]
    names: list[str]
    output_names: Sequence[str] | None
    dynamic_axes: dict[str, Mapping[int, str] | Sequence[int]]
    input_axes: dict[str, dict[int, str | None]]  # input -> {axis: name or None}
    opset: int
    optimize: bool = True


def export(
    module: torch.nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    path: str | os.PathLike[str] | None = None,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: DynamicAxes | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto",
    rtol: float = 1e-3,
    atol: float = 1e-4,
    random_checks: int = 2,
    seed: int = 0,
    optimize: bool = True,
) -> ExportResult:
    """Export ``module`` to ONNX and check that ONNX Runtime reproduces its outputs.

    The module runs in eval mode during export and checks; each submodule's
    previous mode is restored afterwards.

    Args:
        module: The module to export.
        example_inputs: One tensor, or a tuple of positional tensors for ``forward``.
        path: If given, the model is also saved there (atomically).
        input_names: Graph input names; default: ``forward``'s parameter names.
        output_names: Graph output names; default: whatever the exporter picks.
        dynamic_axes: Input or output name -> axes known only at run time, as
            ``{axis: name}`` or ``[axis, ...]``. Translated to ``dynamic_shapes``
            for the dynamo exporter, which infers the output axes itself.
        opset: The ``ai.onnx`` opset to target.
        exporter: ``"auto"`` (dynamo, falling back to TorchScript), ``"dynamo"``
            or ``"torchscript"``.
        rtol: Relative tolerance of the numerical checks.
        atol: Absolute tolerance of the numerical checks.
        random_checks: How many random input sets to check besides the examples.
        seed: Seed of the random inputs.
        optimize: Let the exporter simplify the graph (dynamo: onnxscript's optimizer;
            TorchScript: constant folding). ``False`` gives the raw graph, for edgeopt's
            own passes to clean up.

    Raises:
        ExportError: an argument is invalid, the exporter(s) failed, ONNX Runtime
            cannot run the result, or its outputs differ beyond tolerance.
    """
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ExportError(f"unknown exporter {exporter!r}; use 'auto', 'dynamo' or 'torchscript'.")
    request = _make_request(module, example_inputs, input_names, output_names, dynamic_axes, opset)
    request = dataclasses.replace(request, optimize=optimize)
    with _eval_mode(module):
        model, used, reason = _export_with_fallback(request, exporter)
        checks = check_numerics(request, model, used, rtol, atol, random_checks, seed)
    actual_opset = model.opset_imports.get("", opset)
    if actual_opset != opset:
        logger.warning("asked for opset %d, the %s exporter wrote %d", opset, used, actual_opset)
    worst = max(c.max_abs for c in checks), max(c.max_rel for c in checks)
    report = ExportReport(used, reason, tuple(checks), *worst, opset=actual_opset)
    logger.info("exported with %s (opset %d): %d check(s), max abs error %.3g",
                used, actual_opset, len(checks), report.max_abs)
    if path is not None:
        save_model(model, path)
    return ExportResult(model, report)


def _make_request(
    module: torch.nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    dynamic_axes: DynamicAxes | None,
    opset: int,
) -> _Request:
    args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise ExportError("example_inputs must be a tensor or a non-empty tuple of tensors.")
    names = list(input_names) if input_names is not None else _forward_names(module, len(args))
    if len(names) != len(args):
        raise ExportError(f"{len(names)} input_names given for {len(args)} example inputs.")
    input_axes: dict[str, dict[int, str | None]] = {}
    for key, axes in (dynamic_axes or {}).items():
        if key not in names and key not in (output_names or ()):
            raise ExportError(
                f"dynamic_axes names {key!r}, which is neither an input {names} nor an output "
                f"{list(output_names or [])}. Pass input_names/output_names that include it."
            )
        if key in names:
            input_axes[key] = dict(axes) if isinstance(axes, Mapping) else dict.fromkeys(axes)
    return _Request(module, args, names, output_names, dict(dynamic_axes or {}), input_axes, opset)


def _forward_names(module: torch.nn.Module, count: int) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    try:
        params = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in kinds]
    except (TypeError, ValueError):
        params = []
    return params[:count] if len(params) >= count else [f"input_{i}" for i in range(count)]


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _export_with_fallback(
    request: _Request, exporter: str
) -> tuple[ir.Model, ExporterName, str | None]:
    reason = None
    if exporter in ("auto", "dynamo"):
        shapes = [_dynamic_shape(request.input_axes.get(n)) for n in request.names]
        options: dict[str, Any] = {"dynamo": True, "verbose": False, "optimize": request.optimize,
                                   "dynamic_shapes": tuple(shapes) if request.input_axes else None}
        try:
            return _run_exporter(request, options), "dynamo", None
        except _ExporterFailedError as e:
            reason = str(e)
            if exporter == "dynamo":
                raise ExportError(
                    f"the dynamo exporter failed: {reason}. Try exporter='torchscript'."
                ) from e.__cause__
            logger.warning("dynamo exporter failed (%s); using the TorchScript exporter", reason)
    options = {"dynamo": False, "dynamic_axes": request.dynamic_axes or None,
               "do_constant_folding": request.optimize}
    try:
        return _run_exporter(request, options), "torchscript", reason
    except _ExporterFailedError as e:
        if reason is None:
            raise ExportError(
                f"the TorchScript exporter failed: {e}. Try exporter='dynamo'."
            ) from e.__cause__
        raise ExportError(
            f"both exporters failed. dynamo: {reason}; torchscript: {e}. Rewrite the "
            "unsupported part of forward() or register an ONNX translation for it."
        ) from e.__cause__


def _dynamic_shape(axes: dict[int, str | None] | None) -> dict[int, Any] | None:
    if not axes:
        return None
    # A named axis becomes a named Dim, so that axes sharing a name stay equal.
    dims = {n: torch.export.Dim(n) for n in set(axes.values()) if n and n.isidentifier()}
    return {axis: dims.get(name or "", torch.export.Dim.DYNAMIC) for axis, name in axes.items()}


def _run_exporter(request: _Request, options: dict[str, Any]) -> ir.Model:
    with tempfile.TemporaryDirectory(prefix="edgeopt-export-") as tmp:
        file = Path(tmp) / "model.onnx"
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
                torch.onnx.export(
                    request.module, request.args, file, input_names=request.names,
                    output_names=request.output_names, opset_version=request.opset, **options,
                )
        except Exception as e:  # the exporters raise many unrelated types
            raise _ExporterFailedError(root_reason(e)) from e
        model = load_model(file)  # reads external data (dynamo may write model.onnx.data)
        ir.external_data.load_to_model(model)  # while the folder still exists
    model.meta.pop(SOURCE_PATH_KEY, None)
    model.meta.pop(SOURCE_FILES_KEY, None)
    return model
