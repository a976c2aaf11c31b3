"""Run the ``cleanup`` preset over every ONNX backend conformance model.

    python bench/backend_sweep.py [--limit N] [--only SUBSTR] [--json OUT] [--cache-dir DIR]

Prints ``backend suite (cleanup): R runnable of T, O ok, B broken, C crashed``, then
each broken or crashed case with its detail, and writes every case's outcome as
JSON. Exits 1 when anything broke or crashed. ONNX Runtime's own error log (models
it refuses) goes to ``<json>.ort.log`` instead of the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import onnx
import onnxruntime as ort
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgeopt.testing.backend_suite import CaseOutcome, check_case, cleanup_transform, collect_cases

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "backend_sweep.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="run only the first N cases")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="per-case outcomes")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the node cases are generated (default: ~/.cache/edgeopt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    console = Console()

    cases = collect_cases(args.cache_dir)
    total = len(cases)
    if args.only:
        cases = [c for c in cases if args.only in c.name]
    if args.limit is not None:
        cases = cases[: args.limit]

    args.json.parent.mkdir(parents=True, exist_ok=True)
    ort_log = args.json.with_name(args.json.stem + ".ort.log")
    outcomes: list[CaseOutcome] = []
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[case]}"))
    with Progress(*columns, console=console) as progress, _stderr_to(ort_log):
        task = progress.add_task("cleanup", total=len(cases), case="")
        for case in cases:
            progress.update(task, case=case.name)
            outcomes.append(check_case(case, cleanup_transform))
            progress.advance(task)
    seconds = time.perf_counter() - start

    counts = Counter(o.status for o in outcomes)
    runnable = len(outcomes) - counts["not-runnable"]
    of = len(outcomes) if len(outcomes) == total else f"{len(outcomes)} (a subset of {total})"
    print(f"backend suite (cleanup): {runnable} runnable of {of}, {counts['ok']} ok, "
          f"{counts['broken']} broken, {counts['crashed']} crashed")
    ok = [o for o in outcomes if o.status == "ok"]
    simplified = [o for o in ok if o.nodes_after < o.nodes_before]
    removed = sum(o.nodes_before - o.nodes_after for o in ok)
    print(f"  of the ok cases, cleanup removed nodes from {len(simplified)} "
          f"({removed} nodes of {sum(o.nodes_before for o in ok)} in all)")
    for outcome in outcomes:
        if outcome.status in ("broken", "crashed"):
            print(f"  {outcome.status:8} {outcome.name}: {outcome.detail}")

    report = {
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "cases_total": total,
        "cases_run": len(outcomes),
        "seconds": round(seconds, 2),
        "counts": {"runnable": runnable, **{s: counts[s] for s in
                                            ("ok", "broken", "crashed", "not-runnable")}},
        "outcomes": [{**asdict(o), "seconds": round(o.seconds, 4)} for o in outcomes],
    }
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    console.print(f"[dim]{len(outcomes)} cases in {seconds:.1f}s; outcomes in {args.json}, "
                  f"ONNX Runtime's log in {ort_log}[/dim]")
    return 1 if counts["broken"] or counts["crashed"] else 0


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 (where ORT's C++ logger writes) to ``path`` for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


if __name__ == "__main__":
    sys.exit(main())
