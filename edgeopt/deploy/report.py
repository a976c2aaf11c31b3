"""Write a validation report as ``report.json``, ``report.md``, ``report.html`` and ``report_plots.png``.

The HTML page is self-contained (:mod:`edgeopt.deploy.report_html`: it opens
offline): a sortable artifact table, the metric vs size and vs latency with
labelled points, size and latency bars per target, per-layer SQNR bars of the
quantized artifacts and the notes. The matplotlib figure (Agg backend) puts every
artifact on the metric and SQNR vs size and latency; it is embedded and also
written as a PNG.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import tempfile
from pathlib import Path

from edgeopt.core.errors import ModelSaveError
from edgeopt.deploy.report_html import COLOURS, Point, bars, notes, page, png, scatter, section, table
from edgeopt.deploy.validation import ArtifactResult, ValidationReport

COLUMNS = ("target", "precision", "status", "metric", "top-1 agree", "cosine", "SQNR dB", "max abs",
           "p50 ms", "p90 ms", "size KiB", "kernels")


def write_report(report: ValidationReport, folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the three report files into ``folder`` (each atomically); return their paths."""
    dest = Path(folder).resolve()
    plot = plot_png(report)
    written = {
        "json": write_text(dest / "report.json", json.dumps(report.as_dict(), indent=2, default=str)),
        "md": write_text(dest / "report.md", markdown(report)),
        "html": write_text(dest / "report.html", html_page(report, plot)),
    }
    if plot:
        written["png"] = write_bytes(dest / "report_plots.png", base64.b64decode(plot))
    return written


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; a failure is a :class:`ModelSaveError`."""
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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


def html_page(report: ValidationReport, plot: str | None = None) -> str:
    """The self-contained page: the sortable artifact table, metric vs size and latency, size and latency
    bars per target, per-layer SQNR of int8 artifacts, the notes and the matplotlib figure (``plot``)."""
    rows = report.artifacts
    keys = [_sort_keys(r) for r in rows]
    classes = ["bad" if r.status != "ok" else "" for r in rows]
    sections = [section("Artifacts", table(COLUMNS, [cells(r) for r in rows], keys=keys, classes=classes,
                                           ident="artifacts"), ident="table")]
    figures = _figures(report)
    if figures:
        sections.append(section("Accuracy, size and latency", f"<div class='figs'>{figures}</div>",
                                ident="figures"))
    layers = "".join(_layer_chart(r) for r in rows if r.per_layer)
    if layers:
        sections.append(section("Per-layer error of the quantized artifacts (SQNR vs fp32 per node, lower is "
                                "worse)", f"<div class='figs'>{layers}</div>", ident="layers"))
    lines = [(r.target, n) for r in rows for n in [r.message or "", *r.notes] if n]
    if lines:
        sections.append(section("Notes", notes(lines), ident="notes"))
    if plot:
        sections.append(section("Figure (also report_plots.png)", png(plot, "agreement vs size and latency")))
    return page("edgeopt validation report", _header(report), sections)


def _sort_keys(row: ArtifactResult) -> list[float | None]:
    s = row.scores
    size = None if row.size_bytes is None else row.size_bytes / 1024
    values = [s.metric_value if s else None, s.top1_agreement if s else None, s.cosine if s else None,
              s.sqnr_db if s else None, s.max_abs if s else None, row.latency_p50_ms, row.latency_p90_ms, size]
    return [None, None, None, *values, None]


def _figures(report: ValidationReport) -> str:
    rows = [r for r in report.artifacts if r.status == "ok" and r.scores is not None]
    if not rows:
        return ""
    key, name = _metric_key(report, rows)
    colours = {runtime: COLOURS[i % len(COLOURS)] for i, runtime in enumerate(dict.fromkeys(r.runtime for r in rows))}
    legend = ", ".join(f"{runtime}" for runtime in colours)
    charts = []
    for x_name, x_of in (("size (KiB)", lambda r: (r.size_bytes or 0) / 1024),
                         ("latency p50 (ms)", lambda r: float(r.latency_p50_ms or 0))):
        points = [Point(x_of(r), _y(r, key), r.target, colours[r.runtime]) for r in rows
                  if math.isfinite(_y(r, key))]
        charts.append(scatter(points, x_label=x_name, y_label=name, title=f"{name} vs {x_name} ({legend})"))
    charts.append(bars([(r.target, (r.size_bytes or 0) / 1024) for r in rows if r.size_bytes], unit="KiB",
                       title="size per target", colours=[colours[r.runtime] for r in rows if r.size_bytes]))
    timed = [r for r in rows if r.latency_p50_ms is not None]
    charts.append(bars([(r.target, float(r.latency_p50_ms or 0)) for r in timed], unit="ms",
                       title="latency p50 per target (this machine)", colours=[colours[r.runtime] for r in timed]))
    return "".join(charts)


def _metric_key(report: ValidationReport, rows: list[ArtifactResult]) -> tuple[str, str]:
    names = {"metric_value": report.metric, "top1_agreement": "top-1 agreement", "cosine": "cosine vs fp32"}
    key = next((k for k in ("metric_value", "top1_agreement") if all(getattr(r.scores, k) is not None for r in rows)),
               "cosine")
    return key, names[key]


def _layer_chart(row: ArtifactResult) -> str:
    layers = row.per_layer or []
    items = [(f"{n['node']} ({n['op']})", float(n["sqnr_db"])) for n in layers
             if n.get("sqnr_db") is not None and math.isfinite(float(n["sqnr_db"]))]
    worst = [COLOURS[3] if v < 20 else COLOURS[1] if v < 30 else COLOURS[2] for _, v in items]
    return bars(items, unit="dB", title=f"{row.target}: SQNR per node (most error introduced first)",
                colours=worst)


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
