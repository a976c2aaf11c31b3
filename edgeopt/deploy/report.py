"""Write a validation report as ``report.json``, ``report.md`` and ``report.html`` (with plots).

The plot (matplotlib, Agg backend, embedded as a base64 PNG) puts every
artifact on agreement-with-fp32 vs size and vs latency, so the trade-off
between targets shows at a glance.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from pathlib import Path

from edgeopt.core.errors import ModelSaveError
from edgeopt.deploy.validation import ArtifactResult, ValidationReport

COLUMNS = ("target", "precision", "status", "metric", "top-1 agree", "cosine", "SQNR dB", "max abs",
           "p50 ms", "p90 ms", "size KiB", "kernels")


def write_report(report: ValidationReport, folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the three report files into ``folder`` (each atomically); return their paths."""
    dest = Path(folder).resolve()
    written = {
        "json": _write(dest / "report.json", json.dumps(report.as_dict(), indent=2, default=str)),
        "md": _write(dest / "report.md", markdown(report)),
        "html": _write(dest / "report.html", html_page(report)),
    }
    return written


def _write(path: Path, text: str) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        raise ModelSaveError(f"{path}: cannot write the report ({e}). Check the folder is writable.") from e
    return path


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def cells(row: ArtifactResult, *, digits: int = 4) -> list[str]:
    """One artifact's values, in :data:`COLUMNS` order, numbers to ``digits`` significant digits."""
    s = row.scores
    size = None if row.size_bytes is None else row.size_bytes / 1024
    status = row.status if row.status == "ok" else f"{row.status}: {row.error}"
    if row.matches_host is not None:
        status += " (= host)" if row.matches_host else " (differs from host)"
    return [row.target, row.precision, status, fmt(s.metric_value if s else None, digits),
            fmt(s.top1_agreement if s else None, digits), fmt(s.cosine if s else None, digits + 2),
            fmt(s.sqnr_db if s else None, digits), fmt(s.max_abs if s else None, digits),
            fmt(row.latency_p50_ms, digits), fmt(row.latency_p90_ms, digits), fmt(size, digits),
            kernel_cell(row)]


def kernel_cell(row: ArtifactResult) -> str:
    """``ok``, ``SATURATE -12.3 dB`` (the kernels against the reference path), or ``-`` (not checked)."""
    check = row.kernel_check
    if check is None:
        return "-"
    return f"SATURATE -{check.gap_db:.1f} dB" if check.saturated else "ok"


def _header(report: ValidationReport) -> list[str]:
    ref = report.reference_scores
    return [f"reference: {report.reference}", f"data: {report.data} ({report.samples} samples, batch "
            f"{report.batch_size}); labels: {report.labels or 'none'}; metric: {report.metric}",
            f"reference {report.metric}: {fmt(ref.metric_value if ref else None)}; ran on: {report.where}"]


def markdown(report: ValidationReport) -> str:
    lines = ["# edgeopt validation report", "", *(f"- {h}" for h in _header(report)), ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells(row)) + " |" for row in report.artifacts]
    for row in report.artifacts:
        if row.message or row.notes:
            lines += ["", f"## {row.target}", *(f"- {n}" for n in [row.message or "", *row.notes] if n)]
        if row.per_layer:
            lines += ["", f"Per-layer error of {row.target} (most introduced first):", "",
                      "| node | op | SQNR dB | cosine | introduced dB |", "|---|---|---|---|---|"]
            lines += [f"| {n['node']} | {n['op']} | {fmt(n['sqnr_db'])} | {fmt(n['cosine'], 6)} | "
                      f"{fmt(n['introduced_db'])} |" for n in row.per_layer]
    return "\n".join(lines) + "\n"


def html_page(report: ValidationReport) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells(row)) + "</tr>"
                   for row in report.artifacts)
    notes = "".join(f"<li><b>{html.escape(r.target)}</b>: {html.escape(n)}</li>"
                    for r in report.artifacts for n in [r.message or "", *r.notes] if n)
    plot = plot_png(report)
    image = f'<img alt="agreement vs size and latency" src="data:image/png;base64,{plot}">' if plot else ""
    header = "".join(f"<li>{html.escape(h)}</li>" for h in _header(report))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>edgeopt validation</title>"
            "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ddd}</style>"
            f"</head><body><h1>edgeopt validation report</h1><ul>{header}</ul>"
            f"<table><tr>{head}</tr>{body}</table>{image}<ul>{notes}</ul></body></html>\n")


def plot_png(report: ValidationReport) -> str | None:
    """Task metric (else top-1 agreement, else cosine) and SQNR vs fp32, each against size and p50 latency.

    One point per artifact, coloured by runtime; returned as a base64 PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = [r for r in report.artifacts if r.scores and r.size_bytes and r.latency_p50_ms is not None]
    if not rows:
        return None
    label = next((key for key in ("metric_value", "top1_agreement")
                  if all(getattr(r.scores, key) is not None for r in rows)), "cosine")
    names = {"metric_value": report.metric, "top1_agreement": "top-1 agreement", "cosine": "cosine vs fp32"}
    colours = {"onnxruntime": "tab:blue", "litert": "tab:orange"}
    figure = Figure(figsize=(10, 7), layout="constrained")
    axes = figure.subplots(2, 2, sharex="col", sharey="row")
    xs = ([(r.size_bytes or 0) / 1024 for r in rows], [float(r.latency_p50_ms or 0) for r in rows])
    ys = ([_y(r, label) for r in rows], [_y(r, "sqnr_db") for r in rows])
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
        ax = axes[i][j]
        ax.scatter(xs[j], ys[i], c=[colours.get(r.runtime, "tab:gray") for r in rows])
        for x, y, r in zip(xs[j], ys[i], rows, strict=True):
            ax.annotate(r.target, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.grid(alpha=0.3)
    axes[1][0].set_xlabel("size (KiB)")
    axes[1][1].set_xlabel("latency p50 (ms)")
    axes[0][0].set_ylabel(names[label])
    axes[1][0].set_ylabel("SQNR vs fp32 (dB)")
    figure.suptitle("blue: onnxruntime, orange: LiteRT", fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _y(row: ArtifactResult, key: str) -> float:
    assert row.scores is not None
    value = getattr(row.scores, key)
    return float(value) if value is not None and math.isfinite(value) else math.nan
