"""Rich tables and progress bars for the CLI (the library itself never prints)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeopt.inspect_model import ModelSummary
from edgeopt.pipeline import StepResult
from edgeopt.registry import PassInfo
from edgeopt.target import Issue

if TYPE_CHECKING:
    from edgeopt.demo import DemoResult


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
    head.add_row("MACs (batch 1)", macs)
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
    table = Table(title="digits CNN on 360 held-out images")
    for column in ("stage", "size", "nodes", "accuracy", "top-1 agree", "SQNR dB", "latency (b=1)"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for r in result.rows:
        sqnr = "inf" if math.isinf(r.sqnr_db) else f"{r.sqnr_db:.1f}"
        table.add_row(r.stage, human_bytes(r.size_bytes), str(r.nodes or "-"),
                      f"{r.accuracy:.2%}", f"{r.top1_agreement:.2%}", sqnr, f"{r.latency_ms:.3f} ms")
    return Group(export_line, steps_table(result.passes), table)
