"""The search's report page: ``report.html`` (self-contained, opens offline) and ``pareto.png``.

The page shows the Pareto front (the metric vs each objective, every trial a
point, the front joined and labelled by trial number, the budget as a line), size
and latency bars of the front and the int8 seed, the per-layer SQNR of a quantized
winner, the sortable table of every trial and the notes (why it stopped, what failed).
"""

from __future__ import annotations

import base64
import io
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgeopt.deploy.report import write_bytes, write_text
from edgeopt.deploy.report_html import COLOURS, Point, bars, notes, page, png, scatter, section, table
from edgeopt.search.records import Objective, SearchResult, TrialRecord

if TYPE_CHECKING:
    from edgeopt.deploy.validation import ValidationReport

UNITS = {"size": ("size (KiB)", 1 / 1024), "latency": ("latency p50 (ms)", 1.0), "macs": ("MACs (M)", 1e-6)}
COLUMNS = ("trial", "seed", "stages", "metric", "drop", "size KiB", "p50 ms", "MMACs", "feasible", "seconds",
           "cached", "error")
STOPPED = {"trials": "all --trials ran", "time-limit": "--time-limit passed",
           "resumed-complete": "the resumed study had all its trials already",
           "no-improvement": "the budget was met and the best feasible objective had not improved for "
                             "--patience trials after the seeds"}


def html_page(result: SearchResult, winner: ValidationReport | None = None, plot: str | None = None) -> str:
    """The whole page; ``winner``: the best artifact's validation (its per-layer rows are charted)."""
    metric = next((r.metric_name for r in result.trials if r.metric_name), "metric")
    sections = [section(f"Pareto front: {metric} vs the objective", _fronts(result, metric), ident="front")]
    shown = _shown(result)
    if shown:
        size = bars([(_name(r, result), (r.size_bytes or 0) / 1024) for r in shown if r.size_bytes], unit="KiB",
                    title=f"size on {_target(result)} (front and int8 seed)", colours=_colours(shown, result))
        timed = [r for r in shown if r.latency_ms is not None]
        latency = bars([(_name(r, result), float(r.latency_ms or 0)) for r in timed], unit="ms",
                       title=f"latency p50 on {_target(result)}, this machine", colours=_colours(timed, result))
        sections.append(section("Size and latency", f"<div class='figs'>{size}{latency}</div>", ident="bars"))
    layers = _layers(winner)
    if layers:
        sections.append(section("Per-layer error of the winner (SQNR vs fp32 per node, lower is worse)", layers,
                                ident="layers"))
    rows = sorted(result.trials, key=lambda r: r.number)
    classes = ["hl" if result.best is not None and r.number == result.best.number else
               "bad" if r.state == "failed" else "" for r in rows]
    sections.append(section("Every trial", table(COLUMNS, [_cells(r) for r in rows], keys=[_keys(r) for r in rows],
                                                 classes=classes, ident="trials"), ident="table"))
    sections.append(section("Notes", notes(_notes(result)), ident="notes"))
    if plot:
        sections.append(section("Figure (also pareto.png)", png(plot, "Pareto front")))
    return page("edgeopt search report", _header(result, metric), sections)


def _target(result: SearchResult) -> str:
    return result.target or "the target"


def _header(result: SearchResult, metric: str) -> list[str]:
    failed = sum(r.state == "failed" for r in result.trials)
    feasible = sum(r.feasible for r in result.trials)
    lines = [f"objective: {', '.join(result.objectives)} (minimized) on {_target(result)}; budget: {metric} drop "
             f"<= {result.max_drop:g}",
             f"{len(result.trials)} trial(s): {feasible} within the budget, {failed} failed; {result.computed} "
             f"computed, {result.cache_hits} from the cache, {result.seconds:.1f} s; stopped: {result.stopped}"]
    best, base = result.best, result.baseline
    if best is None:
        lines.append("no trial met the budget")
    else:
        line = f"winner: trial {best.number}, {best.stages}"
        if base is not None and base.feasible and base is not best and best.objective(result.objective) > 0:
            ratio = base.objective(result.objective) / best.objective(result.objective)
            line += f" ({ratio:.2f}x better {result.objective} than static int8 alone)"
        lines.append(line)
    return lines


def _fronts(result: SearchResult, metric: str) -> str:
    done = [r for r in result.trials if r.state == "complete" and r.metric is not None]
    on_front = {r.number for r in result.front}
    charts = []
    for objective in result.objectives:
        unit, factor = UNITS[objective]
        kept = [r for r in done if math.isfinite(r.objective(objective))]
        points = [Point(r.objective(objective) * factor, float(r.metric or 0), _label(r, result, on_front),
                        _colour(r, result, on_front), strong=result.best is not None and r is result.best,
                        tip=f"#{r.number} {r.stages}: {metric} {r.metric:.4f}") for r in kept]
        budget = next(((r.metric or 0) + (r.drop or 0) - result.max_drop for r in kept), None)
        best_metric = max((float(r.metric or 0) for r in kept), default=0.0)
        feasible = budget is not None and any(r.feasible for r in kept)
        floor = budget - max(best_metric - budget, 1e-3) * 1.5 if feasible and budget is not None else None
        charts.append(scatter(points, x_label=unit, y_label=metric, title=f"{metric} vs {unit}",
                              front=[i for i, r in enumerate(kept) if r.number in on_front],
                              hline=None if budget is None else (budget, f"budget (drop {result.max_drop:g})"),
                              y_min=floor, width=560 if len(result.objectives) > 1 else 1100,
                              height=360 if len(result.objectives) > 1 else 420))
    legend = ("<p>Every trial is a point: <b style='color:#3468c0'>Pareto front</b> (labelled by trial), "
              "<b style='color:#9db5e0'>other trials within the budget</b>, <b style='color:#aaa'>over the "
              "budget</b>, <b style='color:#e08a1e'>static int8 alone</b>; the winner is ringed; open triangles on "
              "the bottom edge are trials far below the budget. Hover a point for its passes.</p>")
    return legend + f"<div class='figs'>{''.join(charts)}</div>"


def _label(r: TrialRecord, result: SearchResult, on_front: set[int]) -> str:
    if result.best is not None and r is result.best:
        return f"#{r.number} winner"
    if r.seed == "quantize":
        return f"#{r.number} int8"
    return f"#{r.number}" if r.number in on_front else ""


def _colour(r: TrialRecord, result: SearchResult, on_front: set[int]) -> str:
    if r.seed == "quantize":
        return COLOURS[1]
    if r.number in on_front:
        return COLOURS[0]
    return "#9db5e0" if r.feasible else "#aaaaaa"


def _shown(result: SearchResult) -> list[TrialRecord]:
    rows = list(result.front)
    if result.baseline is not None and result.baseline.state == "complete" and result.baseline not in rows:
        rows.append(result.baseline)
    return rows


def _name(r: TrialRecord, result: SearchResult) -> str:
    return f"#{r.number} {r.stages}"


def _colours(rows: Sequence[TrialRecord], result: SearchResult) -> list[str]:
    return [COLOURS[2] if result.best is not None and r is result.best else COLOURS[1] if r.seed == "quantize"
            else COLOURS[0] for r in rows]


def _layers(winner: ValidationReport | None) -> str:
    if winner is None:
        return ""
    charts = []
    for row in winner.artifacts:
        items = [(f"{n['node']} ({n['op']})", float(n["sqnr_db"])) for n in row.per_layer or []
                 if n.get("sqnr_db") is not None and math.isfinite(float(n["sqnr_db"]))]
        colours = [COLOURS[3] if v < 20 else COLOURS[1] if v < 30 else COLOURS[2] for _, v in items]
        charts.append(bars(items, unit="dB", title=f"{row.target}: SQNR per node", colours=colours))
    return "".join(charts)


def _cells(r: TrialRecord) -> list[str]:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    return [str(r.number), r.seed or "", r.stages, fmt(r.metric, ".4f"), fmt(r.drop, "+.4f"),
            fmt(None if r.size_bytes is None else r.size_bytes / 1024, ".1f"), fmt(r.latency_ms, ".3f"),
            fmt(None if r.macs is None else r.macs / 1e6, ".3f"), "yes" if r.feasible else "no",
            f"{r.seconds:.1f}", "yes" if r.cached else "no", r.error or ""]


def _keys(r: TrialRecord) -> list[float | None]:
    return [float(r.number), None, None, r.metric, r.drop, None if r.size_bytes is None else r.size_bytes / 1024,
            r.latency_ms, None if r.macs is None else r.macs / 1e6, None, r.seconds, None, None]


def _notes(result: SearchResult) -> list[tuple[str, str]]:
    lines = [("stopped", STOPPED.get(result.stopped, result.stopped))]
    errors = Counter(r.error for r in result.trials if r.error)
    lines += [(f"{count} failed trial(s)", error) for error, count in errors.most_common(10)]
    lines.append(("files", "trials.json, trials.csv, pareto.json, pareto.png; the winner as a compile folder "
                  "best/ (manifest, artifact, report) and best.onnx"))
    return lines


def plot_png(result: SearchResult) -> str | None:
    """The metric vs the (first) objective, matplotlib, as a base64 PNG; None without a complete trial."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    objective: Objective = result.objective
    unit, factor = UNITS[objective]
    done = [r for r in result.trials if r.state == "complete" and r.metric is not None
            and math.isfinite(r.objective(objective))]
    if not done:
        return None
    on_front = {r.number for r in result.front}
    figure = Figure(figsize=(8, 5), layout="constrained")
    ax = figure.subplots()
    ax.scatter([r.objective(objective) * factor for r in done], [float(r.metric or 0) for r in done],
               c=[_colour(r, result, on_front) for r in done], s=24)
    front = sorted(result.front, key=lambda r: r.objective(objective))
    ax.plot([r.objective(objective) * factor for r in front], [float(r.metric or 0) for r in front], "--",
            color=COLOURS[0], alpha=0.6)
    for r in done:
        text = _label(r, result, on_front)
        if text:
            ax.annotate(text, (r.objective(objective) * factor, r.metric or 0), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
    ax.set_xlabel(unit)
    ax.set_ylabel(next((r.metric_name for r in done if r.metric_name), "metric"))
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_search_report(result: SearchResult, out: Path, winner: ValidationReport | None = None) -> dict[str, Path]:
    """``report.html`` and ``pareto.png`` in ``out`` (each atomically); their paths."""
    plot = plot_png(result)
    written = {"report.html": write_text(out / "report.html", html_page(result, winner, plot))}
    if plot:
        written["pareto.png"] = write_bytes(out / "pareto.png", base64.b64decode(plot))
    return written
