"""``edgeopt search``: the smallest (or fastest) artifact for a target within a metric budget."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from edgeopt.cli import console
from edgeopt.cli.console import JsonFlag

if TYPE_CHECKING:  # the road (and optuna) is imported when the command runs, not at the CLI's start
    from edgeopt.search.records import TrialRecord
    from edgeopt.search.run import OnTrial, SearchResult


def register(app: typer.Typer) -> None:
    """Add the ``search`` command to ``app``."""

    @app.command()
    def search(
        model: Annotated[Path, typer.Argument(help="The original ONNX model (never overwritten).")],
        calib: Annotated[str, typer.Option(help="Calibration data: folder of .npy/.npz or images, or random:N.")],
        data: Annotated[str, typer.Option(help="Validation data the candidates are scored on (.npz/.npy "
                                          "file or folder, images).")],
        target: Annotated[str, typer.Option("-t", "--target", help="The target every candidate is compiled "
                                            "for and run on (edgeopt compile's names, e.g. ort-cpu).")],
        max_drop: Annotated[float, typer.Option(help="Largest allowed drop of the metric (accuracy with "
                                                "--labels, else top-1 agreement or cosine).")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Output folder: trials, Pareto front, "
                                             "the winner as a compile folder (best/).")],
        objective: Annotated[str, typer.Option(help="size | latency | macs: minimized among candidates "
                                               "within --max-drop; several, comma-separated (size,latency), "
                                               "searched jointly with NSGA-II.")] = "size",
        labels: Annotated[str | None, typer.Option(help="Labels' key in the .npz data (or a .npy file): score "
                                                   "task accuracy.")] = None,
        trials: Annotated[int, typer.Option(help="Trials in all (a resumed search counts earlier ones).")] = 40,
        time_limit: Annotated[float | None, typer.Option(help="Start no trial after this many seconds.")] = None,
        patience: Annotated[int, typer.Option(help="Stop once the budget is met and this many trials after "
                                              "the seeds improved nothing (0: never stop early).")] = 10,
        seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
        stages: Annotated[str | None, typer.Option(help="Comma-separated stages to search (default: all): "
                                                   "prune, drop-layers, low-rank, share-weights, distill, "
                                                   "quantize, float16.")] = None,
        limit: Annotated[int | None, typer.Option(help="Validation samples to use (default: all).")] = None,
        metric: Annotated[str, typer.Option(help="auto (accuracy with --labels, else top-1 agreement, else "
                                            "cosine) | accuracy | agreement | cosine (embeddings).")] = "auto",
        resume: Annotated[bool, typer.Option("--resume", help="Continue the search in OUTPUT.")] = False,
        workers: Annotated[int, typer.Option(help="Candidates evaluated at once; above 1, as tasks of a local "
                                             "Ray (pip install 'edgeopt[distributed]').")] = 1,
        ray_address: Annotated[str | None, typer.Option(help="Send the tasks to this running Ray cluster "
                                                        "(the model and data travel through its object "
                                                        "store).")] = None,
        screen: Annotated[bool, typer.Option(help="Stop a candidate after any stage whose model (scored in "
                                             "ONNX Runtime) already drops the metric by more than "
                                             "2 x --max-drop + 0.01.")] = True,
        as_json: JsonFlag = False,
    ) -> None:
        """Search pass combinations (prune, drop layers, low rank, weight sharing, quantize) for the best
        artifact of TARGET whose metric drops by at most --max-drop."""
        from edgeopt.search.run import SearchConfig, search

        config = console.checked_config(
            SearchConfig, target=target, max_drop=max_drop, objective=objective, trials=trials,
            time_limit=time_limit, patience=patience, seed=seed, labels=labels, metric=metric, limit=limit,
            resume=resume,
            workers=workers, ray_address=ray_address, screen=screen,
            stages=tuple(s.strip() for s in stages.split(",") if s.strip()) if stages else ())
        with trial_progress(console.err, (*config.objectives, "size")[0], disable=as_json) as on_trial:
            result = search(model, output, calibration=calib, data=data, config=config, on_trial=on_trial)
        if as_json:
            console.emit_json(result.as_dict())
            return
        console.out.print(search_tables(result))
        console.out.print(summary_line(result), markup=False)


@contextmanager
def trial_progress(err: Console, objective: str, *, disable: bool = False) -> Iterator[OnTrial]:
    """A live bar: trials done of wanted, the best so far, elapsed and remaining time."""
    columns = (TextColumn("search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[best]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, disable=disable, transient=True) as progress:
        task = progress.add_task("search", total=None, best="best: -")

        def update(record: TrialRecord, best: TrialRecord | None, done: int, total: int) -> None:
            shown = f"best: {_objective(best, objective)} ({best.stages})" if best else "best: none feasible yet"
            progress.update(task, completed=done, total=total, best=shown)

        yield update


def _objective(record: TrialRecord | None, objective: str) -> str:
    from edgeopt.cli.render import human_bytes

    if record is None:
        return "-"
    if objective == "size":
        return human_bytes(record.size_bytes)
    if objective == "latency":
        return "-" if record.latency_ms is None else f"{record.latency_ms:.3f} ms"
    return "-" if record.macs is None else f"{record.macs:,} MACs"


def search_tables(result: SearchResult) -> Group:
    """The Pareto front (metric drop vs the objective), the int8 seed marked."""
    metric = next((r.metric_name for r in result.front if r.metric_name), "metric")
    front = Table(title=f"Pareto front: {metric} drop vs {', '.join(result.objectives)} (feasible trials, "
                        f"--max-drop {result.max_drop:g})")
    for column in ("trial", "stages", metric, "drop", "size", "p50 ms", "MACs", ""):
        front.add_column(column, justify="left" if column in ("stages", "") else "right",
                         no_wrap=column not in ("stages", ""), min_width=24 if column == "stages" else None,
                         overflow="fold")
    rows: list[TrialRecord] = list(result.front)
    if result.baseline is not None and result.baseline not in rows and result.baseline.feasible:
        rows.append(result.baseline)
    for r in rows:
        marks = [m for m, on in (("winner", r is result.best), ("int8 seed", r.seed == "quantize")) if on]
        front.add_row(*_cells(r), ", ".join(marks))
    return Group(front)


def _cells(r: TrialRecord) -> list[str]:
    from edgeopt.cli.render import human_bytes

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    return [str(r.number), r.stages, fmt(r.metric, ".4f"), fmt(r.drop, "+.4f"),
            human_bytes(r.size_bytes), fmt(r.latency_ms, ".3f"), fmt(r.macs, ",")]


def summary_line(result: SearchResult) -> str:
    """One paragraph: trials, the winner against the int8 seed, the cache and where things are."""
    failed = sum(r.state == "failed" for r in result.trials)
    head = (f"{len(result.trials)} trial(s) ({failed} failed), {result.computed} computed, "
            f"{result.cache_hits} from the cache, {result.seconds:.1f} s; stopped: {result.stopped}.")
    if result.best is None:
        return head + (f"\nno candidate met --max-drop {result.max_drop:g}: raise it, or add trials. "
                       f"Trials: {result.out_dir / 'trials.csv'}")
    best, base = result.best, result.baseline
    line = f"\nwinner: trial {best.number}, {best.stages}: {_objective(best, result.objective)}"
    if base is not None and base.feasible and base is not best:
        value, seed_value = best.objective(result.objective), base.objective(result.objective)
        times = f"{seed_value / value:.2f}x" if value else "-"
        line += f" ({times} better than static int8 alone: {_objective(base, result.objective)})"
    return head + line + (f"\nwrote {result.out_dir / 'report.html'}, {result.out_dir / 'best'} (compile folder), "
                          "trials.json, trials.csv, pareto.json")
