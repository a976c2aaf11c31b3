"""The trial table and the Pareto front: one record per trial, written as JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from edgeopt.deploy.compile import CompileResult

Objective = Literal["size", "latency", "macs"]
OBJECTIVES: tuple[str, ...] = ("size", "latency", "macs")
COLUMNS = ("number", "state", "seed", "stages", "params", "metric_name", "metric", "drop", "size_bytes",
           "latency_ms", "latency_trial_ms", "macs", "feasible", "seconds", "cached", "error", "cut")


@dataclass
class TrialRecord:
    """One trial: what ran, what it measured, whether it met the budget."""

    number: int
    state: str
    """``complete`` or ``failed``."""
    stages: str
    """The candidate in words (:func:`edgeopt.search.space.describe`)."""
    params: dict[str, Any] = field(default_factory=dict)
    seed: str | None = None
    """The starting point this trial was (a stage name), if any."""
    metric_name: str | None = None
    metric: float | None = None
    drop: float | None = None
    size_bytes: int | None = None
    latency_ms: float | None = None
    latency_trial_ms: float | None = None
    """The trial's own p50 when ``latency_ms`` was measured again side by side with the other fastest
    trials at the end of the search (:mod:`edgeopt.search.latency`); None: ``latency_ms`` is the trial's."""
    macs: int | None = None
    feasible: bool = False
    seconds: float = 0.0
    cached: bool = False
    error: str | None = None
    model: str | None = None
    """The candidate's ONNX model in the cache."""
    compiled: str | None = None
    """The candidate's compile folder in the cache (on the machine that ran it)."""
    cut: str | None = None
    """Stopped after this stage: its model already missed the budget by far (metric and size are that
    model's, in ONNX Runtime; no compile, no latency)."""

    def objective(self, objective: Objective) -> float:
        value = {"size": self.size_bytes, "latency": self.latency_ms, "macs": self.macs}[objective]
        return float("inf") if value is None else float(value)


@dataclass
class SearchResult:
    out_dir: Path
    objective: Objective
    max_drop: float
    trials: list[TrialRecord]
    best: TrialRecord | None
    front: list[TrialRecord]
    baseline: TrialRecord | None
    """The static-int8-alone seed, the result to beat."""
    computed: int
    """Stage runs and evaluations this run did (cache misses)."""
    cache_hits: int
    seconds: float
    stopped: str
    """``trials``, ``time-limit``, ``no-improvement`` (the stop rule) or ``resumed-complete``."""
    compiled: CompileResult | None = None
    files: dict[str, Path] = field(default_factory=dict)
    target: str = ""
    objectives: tuple[Objective, ...] = ()
    """Every objective searched (``objective`` is the first, which picks the winner)."""

    def as_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "objective": self.objective, "objectives": list(self.objectives),
                "target": self.target, "max_drop": self.max_drop,
                "best": asdict(self.best) if self.best else None,
                "baseline": asdict(self.baseline) if self.baseline else None,
                "front": [asdict(r) for r in self.front], "trials": len(self.trials),
                "computed": self.computed, "cache_hits": self.cache_hits, "seconds": round(self.seconds, 3),
                "stopped": self.stopped, "files": {k: str(v) for k, v in self.files.items()}}


def pareto_front(records: list[TrialRecord], objectives: Objective | Sequence[Objective]) -> list[TrialRecord]:
    """Feasible trials no other feasible trial beats on the metric drop and every objective at once,
    sorted by the first objective (one per distinct point)."""
    names: tuple[Objective, ...] = (objectives,) if isinstance(objectives, str) else tuple(objectives)
    feasible = [r for r in records if r.feasible and r.drop is not None]
    points = {r.number: (r.drop or 0.0, *(r.objective(o) for o in names)) for r in feasible}
    front: dict[tuple[float, ...], TrialRecord] = {}
    for r in feasible:
        point = points[r.number]
        dominated = any(all(a <= b for a, b in zip(other, point, strict=True)) and other != point
                        for other in points.values())
        if not dominated and point not in front:
            front[point] = r
    return sorted(front.values(), key=lambda r: (*(r.objective(o) for o in names), r.drop))


def best(records: list[TrialRecord], objective: Objective) -> TrialRecord | None:
    """The feasible trial with the lowest objective (ties: the smaller drop, then the earlier trial)."""
    feasible = [r for r in records if r.feasible]
    return min(feasible, key=lambda r: (r.objective(objective), r.drop, r.number), default=None)


def stalled(records: list[TrialRecord], objectives: Sequence[Objective], *, after: int, patience: int,
            gain: float = 0.01) -> bool:
    """The stop rule: the budget is met and the last ``patience`` trials past the first ``after`` (the
    seeds) brought no improvement.

    With one objective, an improvement is a feasible trial at least ``gain`` (1 %) better than the best
    before it; with several, a trial that joins the Pareto front. ``patience`` 0 never stops.
    """
    ordered = sorted(records, key=lambda r: r.number)
    if patience <= 0 or len(ordered) < after + patience or best(ordered, objectives[0]) is None:
        return False
    last = max((i for i in range(after, len(ordered)) if _improves(ordered[:i], ordered[i], objectives, gain)),
               default=after - 1)
    return len(ordered) - 1 - last >= patience


def _improves(before: list[TrialRecord], trial: TrialRecord, objectives: Sequence[Objective], gain: float) -> bool:
    if not trial.feasible:
        return False
    if len(objectives) == 1:
        incumbent = best(before, objectives[0])
        return incumbent is None or trial.objective(objectives[0]) < incumbent.objective(objectives[0]) * (1 - gain)
    return trial in pareto_front([*before, trial], objectives)


def write_tables(records: list[TrialRecord], front: list[TrialRecord], out: Path,
                 summary: dict[str, Any]) -> dict[str, Path]:
    """``trials.json`` (with ``summary``), ``trials.csv`` and ``pareto.json`` in ``out``, each atomically."""
    rows = [asdict(r) for r in records]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "params": json.dumps(row["params"], sort_keys=True)})
    return {
        "trials.json": _write(out / "trials.json", json.dumps({**summary, "trials": rows}, indent=1, default=str)),
        "trials.csv": _write(out / "trials.csv", buffer.getvalue()),
        "pareto.json": _write(out / "pareto.json", json.dumps(
            {"objective": summary.get("objective"), "front": [asdict(r) for r in front]}, indent=1, default=str)),
    }


def _write(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)
    return path
