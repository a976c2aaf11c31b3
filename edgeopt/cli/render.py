"""Rich tables and progress bars for the CLI (the library itself never prints)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:  # types only: importing them would load onnx and the passes at the CLI's start
    from edgeopt.cli.demo import DemoResult
    from edgeopt.core.inspect_model import ModelSummary
    from edgeopt.core.target import Issue
    from edgeopt.pipeline.registry import PassInfo
    from edgeopt.pipeline.runner import StepResult
    from edgeopt.quantization.analysis import NodeError
    from edgeopt.quantization.quantize import QuantizeResult


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


@contextlib.contextmanager
def steps_progress(
    console: Console, total: int, *, disable: bool = False
) -> Iterator[Callable[[StepResult], None]]:
    """A progress bar advanced once per finished pass."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=disable, transient=True) as progress:
        task = progress.add_task("passes", total=total)

        def advance(step: StepResult) -> None:
            progress.update(task, advance=1, description=step.name)

        yield advance


@contextlib.contextmanager
def samples_progress(console: Console, *, disable: bool = False) -> Iterator[Callable[[str, int], None]]:
    """A progress line per stage (calibrate, analyze), counting samples."""
    columns = (TextColumn("{task.description}"), TextColumn("{task.completed} samples"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=disable, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def update(stage: str, samples: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=None)
            progress.update(tasks[stage], completed=samples)

        yield update


def quantize_tables(result: QuantizeResult, *, show_report: bool) -> Group:
    parts: list[Any] = [summary_table(result.before, result.after)]
    fidelity = Table(title="fidelity vs the float model (evaluation data)", show_header=False)
    fidelity.add_column()
    fidelity.add_column(justify="right")
    fidelity.add_row("agreement (top-1 or cosine)", f"{result.score:.4f}")
    fidelity.add_row("output SQNR", "inf" if math.isinf(result.sqnr_db) else f"{result.sqnr_db:.1f} dB")
    if result.calibration_seconds is not None:
        fidelity.add_row("calibration time", f"{result.calibration_seconds:.2f} s")
    if result.op_types is not None:
        fidelity.add_row("op types quantized", ", ".join(result.op_types))
    if result.mixed_precision is not None:
        mixed = result.mixed_precision
        fidelity.add_row("16-bit activations", f"{len(mixed.tensors)} tensor(s) around {len(mixed.nodes)} node(s), "
                         f"{mixed.macs_share:.1%} of MACs off int8 kernels")
    if result.cpu is not None:
        guarded = f" ({result.guarded_weights} weight tensor(s) stored as uint8)" if result.guarded_weights else ""
        fidelity.add_row("built for CPU", result.cpu + guarded)
    parts.append(fidelity)
    if result.fallback is not None:
        fb = result.fallback
        table = Table(title=f"fallback: {len(fb.float_nodes)} node(s) kept in float, "
                            f"drop {fb.drop:.4f} (float {fb.float_score:.4f})")
        for column in ("evaluation", "float nodes", "score", "drop"):
            table.add_column(column)
        for i, step in enumerate(fb.steps, 1):
            table.add_row(str(i), ", ".join(step.float_nodes) or "-", f"{step.score:.4f}", f"{step.drop:.4f}")
        parts.append(table)
    if show_report and result.report:
        parts.append(sensitivity_table(result.report))
    parts.append(f"wrote {result.output}")
    return Group(*parts)


def sensitivity_table(errors: Sequence[NodeError], *, limit: int = 20) -> Table:
    table = Table(title=f"most sensitive nodes (of {len(errors)})")
    for column in ("node", "op", "introduced dB", "SQNR dB", "cosine"):
        table.add_column(column, justify="left" if column in ("node", "op") else "right")
    for e in errors[:limit]:
        sqnr = "inf" if math.isinf(e.sqnr_db) else f"{e.sqnr_db:.1f}"
        node = f"{e.node} (+ {', '.join(e.fused)})" if e.fused else e.node
        table.add_row(node, e.op, f"{e.introduced_db:.1f}", sqnr, f"{e.cosine:.5f}")
    return table


def quantize_json(result: QuantizeResult) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "output": str(result.output), "before": result.before.as_dict(), "after": result.after.as_dict(),
        "agreement": result.score, "sqnr_db": result.sqnr_db,
        "calibration_seconds": result.calibration_seconds,
        "op_types": result.op_types,
        "mixed_precision": asdict(result.mixed_precision) if result.mixed_precision else None,
        "cpu": result.cpu,
        "guarded_weights": result.guarded_weights,
    }
    if result.report is not None:
        payload["sensitivity"] = [asdict(e) for e in result.report]
    if result.fallback is not None:
        fb = result.fallback
        payload["fallback"] = {"float_nodes": list(fb.float_nodes), "float_score": fb.float_score,
                               "score": fb.score, "steps": [asdict(s) for s in fb.steps]}
    return payload


def steps_table(steps: Sequence[StepResult]) -> Table:
    table = Table(title="passes")
    for column in ("pass", "result", "nodes", "max abs dev", "time"):
        table.add_column(column, justify="left" if column in ("pass", "result") else "right")
    for s in steps:
        result = ("[red]failed, rolled back: " + s.error + "[/]" if s.error
                  else f"[yellow]skipped: {s.skipped}[/]" if s.skipped
                  else "modified" if s.modified else "unchanged")
        deviation = f"{s.deviation.max_abs:.2e}" if s.deviation else "-"
        table.add_row(s.name, result, f"{s.nodes_before} -> {s.nodes_after}", deviation,
                      f"{s.seconds * 1e3:.1f} ms")
    return table


def summary_table(before: ModelSummary, after: ModelSummary) -> Table:
    table = Table(title="before / after")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("file size", human_bytes(before.file_bytes), human_bytes(after.file_bytes))
    table.add_row("nodes", str(before.nodes), str(after.nodes))
    table.add_row("parameters", f"{before.parameters:,}", f"{after.parameters:,}")
    table.add_row("MACs", f"{before.macs:,}", f"{after.macs:,}")
    for op in sorted(set(before.ops) | set(after.ops)):
        b, a = before.ops.get(op, 0), after.ops.get(op, 0)
        if a != b:
            table.add_row(f"  {op}", str(b), str(a))
    return table


def inspect_table(s: ModelSummary) -> Group:
    head = Table(title=s.path or "model", show_header=False)
    head.add_column()
    head.add_column()
    head.add_row("file size", human_bytes(s.file_bytes))
    head.add_row("IR / producer", f"{s.ir_version} / {s.producer or '-'}")
    head.add_row("opsets", ", ".join(f"{d} {v}" for d, v in s.opsets.items()))
    for kind, values in (("input", s.inputs), ("output", s.outputs)):
        for v in values:
            head.add_row(kind, f"{v.name}: {v.dtype}{v.shape if v.shape is not None else '[?]'}")
    head.add_row("nodes", str(s.nodes))
    head.add_row("parameters", f"{s.parameters:,}")
    head.add_row("weights", ", ".join(f"{d} {human_bytes(b)}" for d, b in s.weight_bytes.items()) or "-")
    macs = f"{s.macs:,}" + (f" (+{len(s.macs_unknown)} node(s) of unknown shape)" if s.macs_unknown else "")
    at = ", ".join(f"{d}={n}" for d, n in s.macs_dims.items()) or "as shaped"
    head.add_row(f"MACs ({at})", macs)
    ops = Table(title="ops")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in s.ops.items():
        ops.add_row(op, str(count))
    return Group(head, ops)


def passes_table(infos: Sequence[PassInfo], presets: Mapping[str, Sequence[str]]) -> Group:
    table = Table(title="passes")
    table.add_column("name")
    table.add_column("what it does")
    table.add_column("options")
    for info in infos:
        options = ", ".join(f"{o.name}: {o.type_name} = {o.default!r}" for o in info.options().values())
        table.add_row(info.name, info.summary, options or "-")
    preset_table = Table(title="presets")
    preset_table.add_column("name")
    preset_table.add_column("passes")
    for name, names in presets.items():
        preset_table.add_row(name, ", ".join(names))
    return Group(table, preset_table)


def issues_table(target: str, issues: Sequence[Issue]) -> Table:
    table = Table(title=f"{len(issues)} node(s) that {target} cannot run")
    for column in ("node", "op", "problem", "what to do"):
        table.add_column(column)
    for i in issues:
        table.add_row(i.node, i.op, i.message, i.hint)
    return table


def demo_table(result: DemoResult) -> Group:
    report = result.export
    export_line = (f"export: {report.exporter} exporter, opset {report.opset}, max |onnx - torch| "
                   f"{report.max_abs:.2e} over {len(report.checks)} input sets")
    table = Table(title=f"digits CNN on {result.eval_samples} held-out images")
    for column in ("stage", "size", "nodes", "accuracy", "top-1 agree", "SQNR dB", "latency (b=1)"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for r in result.rows:
        sqnr = "inf" if math.isinf(r.sqnr_db) else f"{r.sqnr_db:.1f}"
        table.add_row(r.stage, human_bytes(r.size_bytes), str(r.nodes or "-"),
                      f"{r.accuracy:.2%}", f"{r.top1_agreement:.2%}", sqnr, f"{r.latency_ms:.3f} ms")
    parts: list[Any] = [export_line, steps_table(result.passes), table]
    if result.manifest is not None:
        from edgeopt.cli.deploy_render import compile_table, validation_tables

        parts.append(compile_table(result.manifest))
    if result.validation is not None:
        parts.append(validation_tables(result.validation))
    return Group(*parts)
