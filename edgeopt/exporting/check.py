"""Check an ONNX export against the torch module it came from, in ONNX Runtime."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch

from edgeopt.core.errors import ExportError
from edgeopt.core.runtime import compare_outputs, create_session, run_session

ExporterName = Literal["dynamo", "torchscript"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class ExportCheck:
    """One comparison of ONNX Runtime against torch."""

    inputs: Literal["example", "random"]
    max_abs: float
    max_rel: float
    outputs: tuple[tuple[str, float], ...] = ()
    """Max abs error of each graph output, in output order."""


class ExportRequest(Protocol):
    """What the check needs to know about an export."""

    @property
    def module(self) -> torch.nn.Module: ...
    @property
    def args(self) -> tuple[torch.Tensor, ...]: ...
    @property
    def names(self) -> list[str]: ...
    @property
    def input_axes(self) -> dict[str, dict[int, str | None]]: ...


def root_reason(error: BaseException) -> str:
    """The first line of the innermost cause (the outer torch.onnx error is generic)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0].rstrip('.')}" if lines else type(error).__name__


def check_numerics(
    request: ExportRequest, model: ir.Model, used: ExporterName,
    rtol: float, atol: float, random_checks: int, seed: int,
) -> list[ExportCheck]:
    try:
        session = create_session(model)
    except Exception as e:  # onnxruntime raises its own unrelated types
        raise ExportError(
            f"ONNX Runtime cannot load the {used} export ({root_reason(e)}). "
            "Try the other exporter or another opset."
        ) from e
    generator = torch.Generator().manual_seed(seed)
    checks = [_check_once(request, session, used, "example", request.args, rtol, atol)]
    for k in range(random_checks):  # each set grows every dynamic axis by k + 1
        inputs = tuple(
            _random_like(a, _grown_shape(a, request.input_axes.get(n, {}), k + 1), generator)
            for a, n in zip(request.args, request.names, strict=True)
        )
        checks.append(_check_once(request, session, used, f"random #{k + 1}", inputs, rtol, atol))
    return checks


def _check_once(
    request: ExportRequest, session: ort.InferenceSession, used: ExporterName, label: str,
    inputs: tuple[torch.Tensor, ...], rtol: float, atol: float,
) -> ExportCheck:
    expected = {i.name for i in session.get_inputs()}  # an unused input may have been dropped
    feeds = {n: _to_numpy(t) for n, t in zip(request.names, inputs, strict=True) if n in expected}
    shapes = ", ".join(f"{n}{list(t.shape)}" for n, t in zip(request.names, inputs, strict=True))
    try:
        with torch.no_grad():
            output = request.module(*(t.clone() for t in inputs))
    except Exception as e:
        raise ExportError(
            f"the module itself fails on {label} inputs ({shapes}): {root_reason(e)}. "
            "Remove axes that cannot vary from dynamic_axes, or set random_checks=0."
        ) from e
    reference = _flatten(output)
    output_names = [o.name for o in session.get_outputs()]
    if len(reference) != len(output_names):
        raise ExportError(
            f"the {used} export has {len(output_names)} output(s) but the module returned "
            f"{len(reference)} tensor(s) on {label} inputs. Try the other exporter."
        )
    try:
        actual = run_session(session, feeds)
    except Exception as e:
        raise ExportError(
            f"ONNX Runtime fails on {label} inputs ({shapes}) of the {used} export: "
            f"{root_reason(e)}. List axes that vary in dynamic_axes, or try the other exporter."
        ) from e
    ref = {n: _to_numpy(t) for n, t in zip(output_names, reference, strict=True)}
    deviation = compare_outputs(ref, actual, rtol=rtol, atol=atol)
    if not deviation.ok:
        raise ExportError(
            f"the {used} export differs from torch on {label} inputs: max abs error "
            f"{deviation.max_abs:.3g}, max rel error {deviation.max_rel:.3g} (tolerance "
            f"rtol={rtol:g}, atol={atol:g}; {'; '.join(deviation.mismatches[:3])}). Try "
            f"exporter='{'dynamo' if used == 'torchscript' else 'torchscript'}', and check "
            "forward() for randomness (torch.rand, dropout), train-mode-only behaviour, or "
            "Python control flow on tensor values, which tracing bakes in."
        )
    kind: Literal["example", "random"] = "example" if label == "example" else "random"
    per_output = tuple((n, compare_outputs({n: ref[n]}, {n: actual[n]}, rtol=rtol, atol=atol).max_abs)
                       for n in output_names if n in actual)
    return ExportCheck(kind, deviation.max_abs, deviation.max_rel, per_output)


def _grown_shape(arg: torch.Tensor, axes: Mapping[int, str | None], grow: int) -> list[int]:
    return [size + grow if axis in axes else size for axis, size in enumerate(arg.shape)]


def _random_like(arg: torch.Tensor, shape: list[int], generator: torch.Generator) -> torch.Tensor:
    """Random values of ``arg``'s dtype; integers lie in ``[0, max(arg) + 1)``."""
    if arg.dtype == torch.bool:
        value = torch.randint(0, 2, shape, generator=generator).bool()
    elif arg.is_floating_point():
        value = torch.randn(shape, generator=generator).to(arg.dtype)
    else:
        high = max(int(arg.max()) + 1, 1) if arg.numel() else 1
        value = torch.randint(0, high, shape, generator=generator, dtype=arg.dtype)
    return value.to(arg.device)


def _flatten(output: object) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, tuple | list):
        return [t for item in output for t in _flatten(item)]
    raise ExportError(
        f"the module returned a {type(output).__name__}; only tensors and (nested) tuples or "
        "lists of tensors can be checked. Wrap the module so that forward() returns tensors."
    )


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()
