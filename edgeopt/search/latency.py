"""The fastest trials timed again side by side before a latency search picks its winner.

Each trial's p50 is measured when the trial runs, minutes apart from the others and
under whatever load the machine had then: on a shared 2-core machine a MiniLM search
read a 2.13x speed-up that was 0.81x when the same artifacts ran in turns. So the
latency search confirms: the few fastest feasible trials, and the fastest feasible
single pass (the result to beat), run the same samples in turns
(:func:`edgeopt.deploy.timing.time_side_by_side`), and those p50s replace their trial
p50s (kept as ``latency_trial_ms``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeopt.deploy.compile import compile_model
from edgeopt.deploy.manifest import MANIFEST
from edgeopt.deploy.timing import time_side_by_side
from edgeopt.search.records import TrialRecord

CONFIRMED = 6
"""The fastest feasible trials timed again (the fastest single pass comes on top if it is not among them)."""


def confirm_latency(records: Sequence[TrialRecord], *, data: str, reference: str | os.PathLike[str],
                    target: str, calibration: str, model_of: Callable[[TrialRecord], Path],
                    count: int = CONFIRMED, rounds: int = 4, limit: int | None = 32) -> list[TrialRecord]:
    """Time the ``count`` fastest feasible trials and the fastest feasible single pass again, in turns;
    their ``latency_ms`` becomes the side-by-side p50. Returns the records timed (none if fewer than two).

    A trial's compile folder is reused when this machine has it (it ran here); otherwise its model
    (``model_of``) is compiled again for ``target``, since Ray workers on other machines kept theirs.
    """
    timed = sorted((r for r in records if r.feasible and r.latency_ms is not None),
                   key=lambda r: (float(r.latency_ms or 0.0), r.number))
    chosen = timed[:count]
    alone = next((r for r in timed if r.stages != "original" and " -> " not in r.stages), None)
    if alone is not None and alone not in chosen:
        chosen.append(alone)
    if len(chosen) < 2:
        return []
    scratch = Path(tempfile.mkdtemp(prefix="edgeopt-latency-"))
    try:
        folders = {}
        for record in chosen:
            folder = Path(record.compiled) if record.compiled else None
            if folder is None or not (folder / MANIFEST).is_file():
                folder = scratch / str(record.number)
                compile_model(model_of(record), folder, targets=[target], calibration=calibration)
            folders[str(record.number)] = folder
        p50 = time_side_by_side(folders, data=data, reference=reference, rounds=rounds, limit=limit)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for record in chosen:
        record.latency_trial_ms, record.latency_ms = record.latency_ms, round(p50[str(record.number)], 4)
    return chosen
