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

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeopt.deploy.compile import compile_model
from edgeopt.deploy.manifest import MANIFEST
from edgeopt.deploy.timing import time_side_by_side
from edgeopt.search.records import TrialRecord

logger = logging.getLogger(__name__)

CONFIRMED = 6
"""The fastest feasible candidates timed again (the baseline and the fastest single pass come on top)."""


def confirm_latency(records: Sequence[TrialRecord], *, data: str, reference: str | os.PathLike[str],
                    target: str, calibration: str, model_of: Callable[[TrialRecord], Path],
                    baseline: TrialRecord | None = None, count: int = CONFIRMED, rounds: int = 5,
                    limit: int | None = 32) -> list[TrialRecord]:
    """Time the ``count`` fastest feasible candidates, the fastest feasible single pass and ``baseline`` (the
    static int8 seed the report compares with) again, in turns; their ``latency_ms`` becomes the side-by-side
    p50. Returns the records timed (none when fewer than two candidates could be: the trial p50s stand).

    Trials that repeat a candidate (a cache hit) are timed once and all get its p50. A trial's compile folder
    is reused when this machine has it; otherwise its model (``model_of``) is compiled again for ``target``
    (Ray workers on other machines kept theirs). A candidate that cannot be compiled or loaded is left out
    with a warning; the search still ends with its tables and report.
    """
    timed = sorted((r for r in records if r.feasible and r.latency_ms is not None),
                   key=lambda r: (float(r.latency_ms or 0.0), r.number))
    groups: dict[str, list[TrialRecord]] = {}
    for record in timed:
        groups.setdefault(record.compiled or record.stages, []).append(record)
    keys = list(groups)[:count]
    alone = next((k for k, g in groups.items() if g[0].stages != "original" and " -> " not in g[0].stages), None)
    base = baseline.compiled or baseline.stages if baseline is not None and baseline.feasible else None
    keys += [k for k in (alone, base) if k is not None and k in groups and k not in keys]
    if len(keys) < 2:
        return []
    scratch = Path(tempfile.mkdtemp(prefix="edgeopt-latency-"))
    try:
        folders = {}
        for index, key in enumerate(keys):
            try:
                folders[key] = _compiled(groups[key][0], scratch / str(index), target, calibration, model_of)
            except Exception as e:  # noqa: BLE001 - one candidate that no longer compiles is left out
                logger.warning("latency check: trial %d left out (%s)", groups[key][0].number, e)
        if len(folders) < 2:
            return []
        p50 = time_side_by_side(folders, data=data, reference=reference, rounds=rounds, limit=limit)
    except Exception as e:  # noqa: BLE001 - a failed check must not cost the search its tables and report
        logger.warning("latency check skipped, the trials' own p50s stand: %s", e)
        return []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    confirmed = []
    for key, value in p50.items():
        for record in groups[key]:
            record.latency_trial_ms, record.latency_ms = record.latency_ms, round(value, 4)
            confirmed.append(record)
    return confirmed


def _compiled(record: TrialRecord, scratch: Path, target: str, calibration: str,
              model_of: Callable[[TrialRecord], Path]) -> Path:
    """The trial's compile folder on this machine, compiled again into ``scratch`` if it is not here."""
    if record.compiled and (Path(record.compiled) / MANIFEST).is_file():
        return Path(record.compiled)
    compile_model(model_of(record), scratch, targets=[target], calibration=calibration)
    return scratch
