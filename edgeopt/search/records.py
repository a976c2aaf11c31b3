"""The trial table and the Pareto front: one record per trial, written as JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Objective = Literal["size", "latency", "macs"]
OBJECTIVES: tuple[str, ...] = ("size", "latency", "macs")
COLUMNS = ("number", "state", "seed", "stages", "params", "metric_name", "metric", "drop", "size_bytes",
           "latency_ms", "macs", "feasible", "seconds", "cached", "error")


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
    macs: int | None = None
    feasible: bool = False
    seconds: float = 0.0
    cached: bool = False
    error: str | None = None
    model: str | None = None
    """The candidate's ONNX model in the cache."""

    def objective(self, objective: Objective) -> float:
        value = {"size": self.size_bytes, "latency": self.latency_ms, "macs": self.macs}[objective]
        return float("inf") if value is None else float(value)


def pareto_front(records: list[TrialRecord], objective: Objective) -> list[TrialRecord]:
    """Feasible trials no other feasible trial beats on both the metric drop and the objective,
    by objective (one per distinct point)."""
    feasible = [r for r in records if r.feasible and r.drop is not None]
    front: dict[tuple[float, float], TrialRecord] = {}
    for r in feasible:
        assert r.drop is not None
        point = (r.drop, r.objective(objective))
        dominated = any((o.drop or 0.0) <= point[0] and o.objective(objective) <= point[1]
                        and ((o.drop or 0.0), o.objective(objective)) != point for o in feasible)
        if not dominated and point not in front:
            front[point] = r
    return sorted(front.values(), key=lambda r: (r.objective(objective), r.drop))


def best(records: list[TrialRecord], objective: Objective) -> TrialRecord | None:
    """The feasible trial with the lowest objective (ties: the smaller drop, then the earlier trial)."""
    feasible = [r for r in records if r.feasible]
    return min(feasible, key=lambda r: (r.objective(objective), r.drop, r.number), default=None)


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
