"""``edgeopt search``: sample candidates with Optuna, evaluate them, keep the best that meets the budget.

The study lives in ``OUT/study.journal`` (Optuna's journal file), so ``resume``
continues a stopped search where it ended; candidates are evaluated through the
content-addressed cache (:mod:`edgeopt.search.cache`), so a repeated or resumed
search recomputes nothing it has already measured. The first trials are the
stages' seeds (static int8 alone, then each other stage alone at a moderate
setting); TPE, constrained to the metric budget, proposes the rest.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeopt.core.errors import ConversionError, PassOptionError
from edgeopt.core.model_checks import check_model
from edgeopt.core.model_io import load_model
from edgeopt.data.readers import open_reader
from edgeopt.deploy.compile import CompileResult, compile_model
from edgeopt.deploy.report import write_report
from edgeopt.deploy.target_registry import get_target
from edgeopt.deploy.validation import ValidationReport, validate
from edgeopt.search.cache import Cache
from edgeopt.search.evaluate import Evaluator, Outcome
from edgeopt.search.latency import confirm_latency
from edgeopt.search.parallel import runner
from edgeopt.search.records import (
    OBJECTIVES,
    Objective,
    SearchResult,
    TrialRecord,
    best,
    pareto_front,
    stalled,
    write_tables,
)
from edgeopt.search.report import write_search_report
from edgeopt.search.space import Stage, describe, seed_points, seeds, select, suggest
from edgeopt.search.stages import STAGES

logger = logging.getLogger(__name__)

STUDY = "study.journal"
METRICS = ("auto", "accuracy", "agreement", "cosine")
ABANDONED = "abandoned"
OnTrial = Callable[[TrialRecord, "TrialRecord | None", int, int], None]
"""Called after each trial with (its record, the best so far, trials done, trials wanted)."""


@dataclass(frozen=True)
class SearchConfig:
    """What ``edgeopt search`` can be told."""

    target: str
    max_drop: float
    objective: str = "size"
    """``size``, ``latency`` or ``macs``; several, comma-separated (``size,latency``), search them jointly
    with NSGA-II (the first picks the winner)."""
    trials: int = 40
    """Total trials of the study (a resumed search counts the earlier ones)."""
    time_limit: float | None = None
    """Seconds this run may start new trials for."""
    patience: int = 10
    """Stop once the budget is met and this many trials after the seeds brought no improvement (0: never;
    :func:`edgeopt.search.records.stalled`)."""
    seed: int = 0
    stages: tuple[str, ...] = ()
    """Stages to search (empty: all that apply to the model), always run in their fixed order."""
    labels: str | None = None
    metric: str = "auto"
    """``auto`` (accuracy with labels, else top-1 agreement, else cosine), ``accuracy``, ``agreement`` or
    ``cosine`` (embeddings: argmax agreement means nothing there)."""
    limit: int | None = None
    """Validation samples to use (None: all)."""
    samples: int = 128
    """Calibration samples each stage reads."""
    resume: bool = False
    workers: int = 1
    """Candidates evaluated at once; above 1 they run as tasks of a local Ray started for the search."""
    ray_address: str | None = None
    """A running Ray cluster to send the tasks to (the model and data travel through its object store; each
    worker keeps a cache of its own)."""
    screen: bool = True
    """Score the model after each stage in ONNX Runtime and stop a candidate whose drop already exceeds
    ``2 * max_drop + 0.01`` (later stages, compile and validation cannot bring it back within the budget)."""

    @property
    def cut_drop(self) -> float | None:
        return 2 * self.max_drop + 0.01 if self.screen else None

    @property
    def objectives(self) -> tuple[Objective, ...]:
        return tuple(o.strip() for o in self.objective.split(",") if o.strip())  # type: ignore[misc]


def search(model: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, calibration: str, data: str,
           config: SearchConfig, cache: Cache | None = None, on_trial: OnTrial | None = None) -> SearchResult:
    """Search ``config``'s stages for the artifact that minimizes the objective within ``max_drop``.

    Args:
        model: The original ONNX model (never modified).
        out_dir: Gets ``study.journal``, ``trials.json``, ``trials.csv``, ``pareto.json``, the report
            (``report.html``, ``pareto.png``) and the winner as a compile folder ``best/`` (manifest,
            artifact, report).
        calibration: Calibration data spec (folder of .npy/.npz or images, or ``random:N``).
        data: Validation data spec the candidates are scored on.
        config: The target, budget, objective and stopping rules.
        cache: Where candidates are stored (default: under ``EDGEOPT_CACHE_DIR``).
        on_trial: Progress callback.
    """
    started = time.perf_counter()
    stages, source = _check(model, calibration, config)
    out = Path(out_dir).resolve()
    study = _study(out, config, stages)
    evaluator = Evaluator(source, stages=stages, calibration=calibration, data=data, target=config.target,
                          labels=config.labels, limit=config.limit, samples=config.samples, cache=cache,
                          metric=config.metric, cut_drop=config.cut_drop)
    records = [_from_attrs(t) for t in _finished(study)]
    objectives, first = config.objectives, config.objectives[0]
    stopped = "resumed-complete" if len(records) >= config.trials else "trials"
    tally = [0, 0]  # cache misses (work done) and hits, as the outcomes report them (Ray workers included)
    after = len(seeds(stages))
    with runner(evaluator, config.workers, config.ray_address) as run:
        while len(records) < config.trials:
            if config.time_limit is not None and time.perf_counter() - started >= config.time_limit:
                stopped = "time-limit"
                break
            if stalled(records, objectives, after=after, patience=config.patience):
                stopped = "no-improvement"
                break
            asked = [ask_trial(study, config.seed) for _ in range(min(run.width, config.trials - len(records)))]
            candidates = [suggest(trial, stages) for trial in asked]
            for trial, candidate, outcome in zip(asked, candidates, run(candidates), strict=True):
                records.append(_tell(study, trial, describe(candidate), outcome, config))
                tally[0], tally[1] = tally[0] + outcome.computed, tally[1] + outcome.hits
                if on_trial:
                    on_trial(records[-1], best(records, first), len(records), config.trials)
    records.sort(key=lambda r: r.number)
    baseline = next((r for r in records if r.seed == "quantize"), None)
    confirmed = []
    if "latency" in objectives:  # trial p50s came minutes apart, under other loads
        confirmed = confirm_latency(records, data=data, reference=source, target=config.target,
                                    calibration=calibration, baseline=baseline,
                                    model_of=lambda record: _model_of(record, stages, evaluator, tally))
    # a latency winner is one of the trials timed side by side, never a trial p50 from a quieter minute
    winner = best(confirmed if first == "latency" and confirmed else records, first)
    front = pareto_front(records, objectives)
    result = SearchResult(out, first, config.max_drop, records, winner, front, baseline, 0, 0, 0.0, stopped,
                          target=config.target, objectives=objectives)
    validation = None
    if winner is not None:
        result.compiled, validation = _write_best(_model_of(winner, stages, evaluator, tally), source, out,
                                                  calibration, data, config)
    result.computed, result.cache_hits = tally
    result.seconds = time.perf_counter() - started
    summary = {k: v for k, v in result.as_dict().items() if k not in ("front", "files")}
    result.files = write_tables(records, front, out, summary)
    result.files.update(write_search_report(result, out, validation))
    if result.compiled is not None:
        result.files["best"] = result.compiled.out_dir
    return result


def _check(model: str | os.PathLike[str], calibration: str, config: SearchConfig) -> tuple[list[Stage], Path]:
    wrong = [o for o in config.objectives if o not in OBJECTIVES]
    if wrong or not config.objectives or len(set(config.objectives)) != len(config.objectives):
        raise PassOptionError(f"search: --objective must be one of {', '.join(OBJECTIVES)}, or several "
                              f"comma-separated (size,latency); got {config.objective!r}.")
    if config.metric not in METRICS:
        raise PassOptionError(f"search: --metric must be one of {', '.join(METRICS)}, got {config.metric!r}.")
    if config.metric == "accuracy" and config.labels is None:
        raise PassOptionError("search: --metric accuracy needs --labels (the labels' key or .npy file).")
    if config.patience < 0:
        raise PassOptionError(f"search: --patience must be 0 (never stop early) or more, got {config.patience}.")
    if not 0 <= config.max_drop <= 1:
        raise PassOptionError(f"search: --max-drop is a drop of the metric, 0 to 1; got {config.max_drop}.")
    if config.trials < 1:
        raise PassOptionError(f"search: --trials must be 1 or more, got {config.trials}.")
    if config.workers < 1:
        raise PassOptionError(f"search: --workers must be 1 or more, got {config.workers}.")
    get_target(config.target)  # an unknown name fails with close matches
    source = Path(model).resolve()
    loaded = load_model(source)
    check_model(loaded)
    next(iter(open_reader(calibration, loaded)), None)  # data that does not fit fails before any trial
    return select(STAGES, config.stages, loaded), source


def _study(out: Path, config: SearchConfig, stages: list[Stage]) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = out / STUDY
    if journal.exists() and not config.resume:
        raise PassOptionError(f"{journal}: {out} holds a search already. Add --resume to continue it, or "
                              "choose another -o folder.")
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    several = len(config.objectives) > 1
    sampler = (optuna.samplers.NSGAIISampler(seed=config.seed, population_size=max(8, 2 * len(stages)))
               if several else optuna.samplers.TPESampler(seed=config.seed))
    study = optuna.create_study(study_name="edgeopt-search", directions=["minimize"] * len(config.objectives),
                                sampler=sampler, storage=JournalStorage(JournalFileBackend(str(journal))),
                                load_if_exists=True)
    settings = {"objective": config.objective, "target": config.target, "max_drop": config.max_drop,
                **({} if config.metric == "auto" else {"metric": config.metric}),
                "stages": [s.name for s in stages]}
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
    elif stored != settings:
        changed = ", ".join(f"{k} {stored[k]} -> {settings[k]}" for k in settings if stored.get(k) != settings[k])
        raise PassOptionError(f"{journal}: --resume with other settings ({changed}). Resume with the same "
                              "ones, or start a new search in another -o folder.")
    _requeue_abandoned(study)
    for name, point in seed_points(stages):
        study.enqueue_trial(point, user_attrs={"seed": name}, skip_if_exists=True)
    return study


def _requeue_abandoned(study: Any) -> None:
    """Trials left running by a search that was killed: marked failed and ``abandoned`` (left out of the
    table), their parameters queued again ahead of the trials still waiting (the seeds not yet run), so the
    resumed search runs them first, as the killed one would have finished them."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for trial in [*running, *waiting]:
        study._storage.set_trial_user_attr(trial._trial_id, ABANDONED, True)  # noqa: SLF001 - no public way
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
    for trial in [*running, *waiting]:
        attrs = {k: v for k, v in trial.user_attrs.items() if k == "seed"}
        params = trial.params if trial.state == TrialState.RUNNING else trial.system_attrs.get("fixed_params", {})
        study.enqueue_trial(params, user_attrs=attrs or None)


def ask_trial(study: Any, seed: int) -> Any:
    """``study.ask()`` with the sampler's random state set from (seed, trials so far): a resumed search
    proposes what the uninterrupted one would have (its sampler restarts with a fresh state otherwise)."""
    number = sum(not t.user_attrs.get(ABANDONED) for t in study.get_trials(deepcopy=False))
    for sampler in (study.sampler, getattr(study.sampler, "_random_sampler", None)):
        state = getattr(sampler, "_rng", None)  # optuna's LazyRandomState; its .rng is a numpy RandomState
        if state is not None:
            state.rng.seed((seed * 1_000_003 + number) % 2**32)
    return study.ask()


def _finished(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.FAIL) and not t.user_attrs.get(ABANDONED)]


def _tell(study: Any, trial: Any, stages: str, outcome: Outcome, config: SearchConfig) -> TrialRecord:
    record = _record(trial.number, trial.user_attrs.get("seed"), dict(trial.params), stages, outcome,
                     config.max_drop)
    trial.set_user_attr("record", asdict(record))
    # TPE ranks infeasible trials by how far they miss the budget (<= 0: feasible). A failed candidate counts
    # as missing it by the whole metric, so the sampler learns to leave that corner (a FAIL would be ignored).
    drop = 1.0 if outcome.scored is None else outcome.scored.drop
    trial.set_constraint("max_drop", drop - config.max_drop)
    values = [record.objective(o) for o in config.objectives]
    study.tell(trial, values if len(values) > 1 else values[0])
    return record


def _record(number: int, seed: str | None, params: dict[str, Any], stages: str, outcome: Outcome,
            max_drop: float) -> TrialRecord:
    record = TrialRecord(number, "failed" if outcome.scored is None else "complete", stages, params, seed,
                         seconds=round(outcome.seconds, 3), cached=outcome.cached, error=outcome.error,
                         model=str(outcome.model) if outcome.model else None,
                         compiled=str(outcome.compiled) if outcome.compiled else None, cut=outcome.cut)
    if outcome.scored is not None:
        s = outcome.scored
        record.metric_name, record.metric, record.drop = s.metric_name, s.metric, round(s.drop, 6)
        record.size_bytes, record.latency_ms, record.macs = s.size_bytes, s.latency_ms, s.macs
        record.feasible = s.drop <= max_drop + 1e-9
    return record


def _from_attrs(trial: Any) -> TrialRecord:
    stored = trial.user_attrs.get("record")
    if stored is None:  # a trial that ended without its record (killed between tell and the attribute)
        return TrialRecord(trial.number, "failed", "?", dict(trial.params), error="no record")
    return TrialRecord(**stored)


def _model_of(record: TrialRecord, stages: list[Stage], evaluator: Evaluator, tally: list[int]) -> Path:
    """A trial's ONNX model: from the cache, or run again from its parameters if the cache lost it."""
    if record.model is not None and Path(record.model).is_file():
        return Path(record.model)
    from optuna.trial import FixedTrial

    outcome = evaluator.evaluate(suggest(FixedTrial(record.params), stages))
    tally[0], tally[1] = tally[0] + outcome.computed, tally[1] + outcome.hits
    if outcome.model is None:
        raise ConversionError(f"search: trial {record.number} ({record.stages}) no longer runs: {outcome.error}")
    return outcome.model


def _write_best(winner: Path, source: Path, out: Path, calibration: str, data: str,
                config: SearchConfig) -> tuple[CompileResult, ValidationReport]:
    """The winner as a normal compile folder ``out/best`` (its ONNX model beside it), validated (per-layer
    error when it is quantized and diverges), with a report."""
    model = out / "best.onnx"
    shutil.copyfile(winner, model)
    compiled = compile_model(model, out / "best", targets=[config.target], calibration=calibration)
    report = validate(out / "best", data=data, reference=source, labels=config.labels, limit=config.limit,
                      per_layer="auto")
    write_report(report, out / "best")
    return compiled, report
