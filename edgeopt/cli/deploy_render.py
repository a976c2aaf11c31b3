"""Rich tables for ``edgeopt compile``, ``validate`` and ``bundle``."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from edgeopt.deploy.manifest import Manifest
from edgeopt.deploy.report import COLUMNS, cells
from edgeopt.deploy.validation import ValidationReport


def compile_table(manifest: Manifest) -> Group:
    table = Table(title=f"artifacts of {manifest.source}")
    for column in ("target", "runtime", "precision", "result", "size KiB"):
        table.add_column(column, justify="right" if column == "size KiB" else "left",
                         overflow="fold" if column == "result" else "ellipsis")
    for a in manifest.artifacts:
        result = a.file or "" if a.ok else f"[red]{a.error}[/]: {a.message}"
        size = f"{a.size_bytes / 1024:.1f}" if a.size_bytes is not None else "-"
        table.add_row(a.target, a.runtime, a.precision, result, size)
    notes = [f"- {a.target}: {note}" for a in manifest.artifacts for note in a.notes]
    return Group(table, *([Text("notes:\n" + "\n".join(notes))] if notes else []))


def validation_tables(report: ValidationReport) -> Group:
    ref = report.reference_scores
    value = "-" if ref is None or ref.metric_value is None else f"{ref.metric_value:.4f}"
    title = (f"{report.samples} samples on {report.where}; fp32 reference {report.metric}: {value}")
    # The terminal gets the columns that fit 80 characters; report.md/.html have every one.
    # Kernel saturation (int8 kernels vs the reference path) shows as a red SQNR and a line below the table.
    shown = ["target", "precision", "metric", "top-1 agree", "cosine", "SQNR dB", "p50 ms", "size KiB"]
    device_run = any(row.matches_host is not None for row in report.artifacts)
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False, collapse_padding=True)
    for column in shown + (["= host"] if device_run else []):
        table.add_column(column.replace(" ", "\n", 1) if column not in ("target", "precision") else column,
                         justify="left" if column in ("target", "precision") else "right", no_wrap=True)
    for row in report.artifacts:
        values = dict(zip(COLUMNS, cells(row, digits=3), strict=True))
        if row.status != "ok":
            values["target"] = f"{row.target} [red]{row.status}: {row.error}[/]"
        if row.kernel_check is not None and row.kernel_check.saturated:
            values["SQNR dB"] = f"[red]{values['SQNR dB']}![/]"
        extra = [] if not device_run else ["yes" if row.matches_host else "[red]no[/]"]
        table.add_row(*(values[c] for c in shown), *extra)
    parts: list[Table | Text] = [table]
    for row in report.artifacts:
        if row.kernel_check is not None and row.kernel_check.saturated:
            parts.append(Text(f"{row.target}: {row.kernel_check.message}", style="red"))
    for row in report.artifacts:
        if row.per_layer:
            layers = Table(title=f"{row.target}: nodes that introduce the most error")
            for column in ("node", "op", "SQNR dB", "introduced dB"):
                layers.add_column(column)
            for node in row.per_layer:
                layers.add_row(node["node"], node["op"], f"{node['sqnr_db']:.1f}", f"{node['introduced_db']:.1f}")
            parts.append(layers)
    return Group(*parts)
