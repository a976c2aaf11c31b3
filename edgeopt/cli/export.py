"""``edgeopt export``: a torch source (TorchScript, ExportedProgram, factory, Hugging Face folder) to ONNX."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgeopt.cli import console
from edgeopt.cli.console import JsonFlag

if TYPE_CHECKING:
    from edgeopt.exporting.from_source import SourceExport


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to ``app``."""
    @app.command("export")
    def export(
        source: Annotated[str, typer.Argument(help="TorchScript file (torch.jit.save), ExportedProgram "
                                              "(torch.export.save, .pt2), factory package.module:callable "
                                              "returning an nn.Module, or Hugging Face model folder.")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the ONNX model.")],
        inputs: Annotated[list[str] | None, typer.Option(
            "--input", help="NAME:DIMS[:DTYPE], e.g. image:batchx3x224x224:float32 (repeatable); a named "
                            "dim is a dynamic axis.")] = None,
        example: Annotated[Path | None, typer.Option(help="An .npz of example inputs, one array per input.")] = None,
        dynamic: Annotated[list[str] | None, typer.Option(
            help="NAME:AXIS[:LABEL]: another dynamic axis (repeatable).")] = None,
        opset: Annotated[int | None, typer.Option(help="ai.onnx opset (default 18).")] = None,
        exporter: Annotated[str, typer.Option(help="auto (dynamo, falling back to TorchScript) | dynamo | "
                                              "torchscript")] = "auto",
        atol: Annotated[float | None, typer.Option(help="Fail, writing nothing, if the max abs error "
                                                   "against torch exceeds this.")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Export SOURCE to ONNX, checked in ONNX Runtime against torch (max abs error per output)."""
        _quiet()
        from edgeopt.exporting.from_source import SourceExportConfig, export_source

        fields: dict[str, Any] = {"inputs": tuple(inputs or ()), "example": example,
                                  "dynamic": tuple(dynamic or ()), "exporter": exporter, "atol": atol}
        if opset is not None:
            fields["opset"] = opset
        with console.err.status("exporting", spinner="dots") if not as_json else contextlib.nullcontext():
            result = export_source(source, output, SourceExportConfig(**fields))
        if as_json:
            console.emit_json(_as_json(result))
        else:
            _show(result)


def _show(result: SourceExport) -> None:
    from rich.markup import escape

    from edgeopt.cli.render import human_bytes

    report = result.report
    out = console.out
    out.print(f"exported {result.location} ({result.kind}) with {report.exporter}, opset {report.opset} "
              f"-> {result.output}", highlight=False, markup=False)
    if report.fallback_reason:
        out.print(f"[yellow]fallback:[/] {escape(report.fallback_reason)}", highlight=False)
    signature = ", ".join(f"{n}[{','.join(map(str, shape))}]" for n, shape in result.inputs.items())
    out.print(f"inputs: {signature}", highlight=False, markup=False)
    checks = len(report.checks)
    out.print(f"max abs error vs torch ({checks} input set{'s' if checks != 1 else ''}): "
              + ", ".join(f"{n} {e:.3g}" for n, e in result.output_errors.items()), highlight=False, markup=False)
    out.print(f"nodes: {result.nodes}, size: {human_bytes(result.size)}", highlight=False)


def _as_json(result: SourceExport) -> dict[str, Any]:
    report = result.report
    return {"source": result.location, "kind": result.kind, "output": str(result.output),
            "exporter": report.exporter, "fallback_reason": report.fallback_reason, "opset": report.opset,
            "max_abs": report.max_abs, "output_errors": result.output_errors, "checks": len(report.checks),
            "inputs": result.inputs, "nodes": result.nodes, "size": result.size}


def _quiet() -> None:
    """Hide torch's and transformers' tracing notices and warnings unless -v/--debug."""
    if logging.getLogger().level <= logging.INFO:
        return
    import warnings

    import torch  # noqa: F401 - torch configures its loggers on import; adjust them after

    for name in ("torch.onnx", "torch.export", "torch._dynamo", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(torch|transformers|copyreg|onnxscript)")
