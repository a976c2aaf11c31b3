"""Where candidates run: in this process, or as Ray tasks (a local Ray started for the search, or a cluster).

Ray is optional (``pip install 'edgeopt[distributed]'``) and imported only when
``workers > 1`` or an address is given. The evaluator travels once through Ray's
object store; each task evaluates one candidate and returns its outcome. With
a cluster (``address``), the model and data travel through the object store too
and each worker keeps a cache of its own (:mod:`edgeopt.search.ship`); a local
Ray reads them from their paths and shares the search's cache. A task whose
worker dies is retried by Ray, and one that still fails becomes a failed trial.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from edgeopt.core.errors import BackendNotInstalledError
from edgeopt.search.evaluate import Evaluator, Outcome
from edgeopt.search.space import Candidate

logger = logging.getLogger(__name__)


class Runner(Protocol):
    """Evaluates a batch of candidates, outcomes in the same order."""

    width: int

    def __call__(self, candidates: Sequence[Candidate]) -> list[Outcome]: ...


class InProcess:
    """One candidate at a time, here."""

    width = 1

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator

    def __call__(self, candidates: Sequence[Candidate]) -> list[Outcome]:
        return [self.evaluator.evaluate(c) for c in candidates]


class RayTasks:
    """``width`` candidates at a time, one Ray task each; with ``ship``, the model and data travel through
    Ray's object store (:mod:`edgeopt.search.ship`) instead of shared paths."""

    def __init__(self, evaluator: Evaluator, width: int, ray: Any, ship: bool = False) -> None:
        self.width, self.ray = width, ray
        self.evaluator = ray.put(evaluator)
        self.shipped: tuple[str, list[Any]] | None = None
        if ship:
            from edgeopt.search.ship import pack

            bundle = pack(evaluator)
            self.shipped = (bundle.digest, [ray.put(bundle)])  # in a list: a worker fetches it only once
        self.task = ray.remote(_evaluate).options(num_cpus=1, max_retries=2)

    def __call__(self, candidates: Sequence[Candidate]) -> list[Outcome]:
        futures = [self.task.remote(self.evaluator, c, self.shipped) for c in candidates]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(self.ray.get(future))
            except Exception as e:  # noqa: BLE001 - a lost worker loses only its trial
                said = " ".join(str(e).split())[:300]
                outcomes.append(Outcome(None, f"ray task failed: {type(e).__name__}: {said}", 0.0, False))
        return outcomes


def _evaluate(evaluator: Evaluator, candidate: Candidate, shipped: tuple[str, list[Any]] | None = None) -> Outcome:
    if shipped is not None:
        import ray

        from edgeopt.search.ship import local_evaluator

        digest, refs = shipped
        evaluator = local_evaluator(evaluator, digest, lambda: ray.get(refs[0]))
    return evaluator.evaluate(candidate)


@contextmanager
def runner(evaluator: Evaluator, workers: int = 1, address: str | None = None,
           ship: bool | None = None) -> Iterator[Runner]:
    """In-process for one worker and no address; else Ray (started here and shut down after, unless the
    search joined a running cluster at ``address``). ``ship`` (default: with an address) sends the model
    and data through Ray's object store."""
    if workers <= 1 and address is None:
        yield InProcess(evaluator)
        return
    try:
        import ray
    except ImportError as e:
        raise BackendNotInstalledError("search: --workers above 1 and --ray-address need Ray: "
                                       "pip install 'edgeopt[distributed]'") from e
    # importing Ray gives its logger its own handler at INFO; it speaks when edgeopt does (-v), else only errors
    logging.getLogger("ray").setLevel(logging.INFO if logger.isEnabledFor(logging.INFO) else logging.ERROR)
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    logger.info("search: %d Ray worker(s) (%s)", workers, address or "local")
    try:
        yield RayTasks(evaluator, max(workers, 1), ray, address is not None if ship is None else ship)
    finally:
        if started:
            ray.shutdown()
