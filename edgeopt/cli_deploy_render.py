"""Rich tables for ``edgeopt compile``, ``validate`` and ``bundle``."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from edgeopt.manifest import Manifest
from edgeopt.validate import ValidationReport
from edgeopt.validation_report import COLUMNS, cells


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
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("target", "precision", "status") else "right")
    for row in report.artifacts:
        table.add_row(*cells(row))
    parts: list[Table | Text] = [table]
    for row in report.artifacts:
        if row.per_layer:
            layers = Table(title=f"{row.target}: nodes that introduce the most error")
            for column in ("node", "op", "SQNR dB", "introduced dB"):
                layers.add_column(column)
            for node in row.per_layer:
                layers.add_row(node["node"], node["op"], f"{node['sqnr_db']:.1f}", f"{node['introduced_db']:.1f}")
            parts.append(layers)
    return Group(*parts)
