"""``edgeopt distill``: train a compressed student to match its teacher on unlabeled samples."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeopt.cli import console
from edgeopt.cli.console import JsonFlag

if TYPE_CHECKING:  # the road is imported when the command runs, not at the CLI's start
    from edgeopt.training.distill import DistillResult


def register(app: typer.Typer) -> None:
    """Add the ``distill`` command to ``app``."""

    @app.command()
    def distill(
        student: Annotated[Path, typer.Argument(help="The compressed ONNX model to train (never overwritten).")],
        teacher: Annotated[Path, typer.Option(help="The original ONNX model whose outputs the student learns.")],
        data: Annotated[str, typer.Option(help="Unlabeled samples: folder of .npy/.npz or images, or random:N.")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the trained student.")],
        steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
        epochs: Annotated[float | None, typer.Option(help="Passes over the training samples (default 5 when "
                                                     "no limit is given).")] = None,
        time_limit: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
        lr: Annotated[float, typer.Option(help="Peak learning rate (Adam, warm-up then cosine).")] = 1e-3,
        batch_size: Annotated[int, typer.Option(help="Samples per step.")] = 32,
        loss: Annotated[str, typer.Option(help="auto | kl | cosine | mse (auto: KL for logits, cosine for "
                                          "embeddings, MSE otherwise)")] = "auto",
        temperature: Annotated[float, typer.Option(help="Softening of the KL loss.")] = 2.0,
        holdout: Annotated[float, typer.Option(help="Share of samples held out for early stopping and "
                                               "the before/after fidelity.")] = 0.1,
        samples: Annotated[int | None, typer.Option(help="Use at most this many samples.")] = None,
        eval_every: Annotated[int, typer.Option(help="Steps between held-out evaluations.")] = 25,
        patience: Annotated[int, typer.Option(help="Evaluations without improvement before stopping.")] = 5,
        match: Annotated[str | None, typer.Option("--output-name", help="The graph output to match "
                                                  "(default: the student's first).")] = None,
        device: Annotated[str, typer.Option(help="torch device: cpu, cuda, ...")] = "cpu",
        in_place: Annotated[bool, typer.Option("--in-place", help="Allow writing over STUDENT.")] = False,
        as_json: JsonFlag = False,
    ) -> None:
        """Train STUDENT (pruned, layers dropped, ...) to reproduce TEACHER's outputs on unlabeled DATA."""
        from edgeopt.training.distill import DistillConfig, distill_file

        config = console.checked_config(
            DistillConfig, steps=steps, epochs=epochs, time_limit=time_limit, lr=lr, batch_size=batch_size,
            loss=loss, temperature=temperature, holdout=holdout, samples=samples, eval_every=eval_every,
            patience=patience, output=match, device=device)
        with _progress(disable=as_json) as on_eval:
            result = distill_file(student, teacher, data, output, config, in_place=in_place, on_eval=on_eval)
        if as_json:
            console.emit_json(result.as_dict())
            return
        console.out.print(fidelity_table(result))
        console.out.print(f"{result.steps} steps in {result.seconds:.1f} s ({result.stopped}); kept the weights "
                          f"of step {result.best_step}", markup=False)
        console.out.print(f"wrote {result.output}", markup=False)


@contextmanager
def _progress(*, disable: bool) -> Iterator[Callable[[int, int | None, float, float], None]]:
    columns = (TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console.err, disable=disable, transient=True) as progress:
        task = progress.add_task("distill: evaluating the student", total=None)

        def update(step: int, total: int | None, loss: float, metric: float) -> None:
            of = f"/{total}" if total else ""
            progress.update(task, description=f"distill: step {step}{of}, loss {loss:.4g}, held-out {metric:.4f}")

        yield update


def fidelity_table(result: DistillResult) -> Table:
    """The student's agreement with the teacher on the held-out samples, before and after."""
    objective = result.objective
    table = Table(title="fidelity vs the teacher", caption=f"'{objective.output}' on {result.after.samples} "
                  "held-out samples")
    for column in ("", "before", "after"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row(objective.metric, f"{result.before.metric:.4f}", f"{result.after.metric:.4f}")
    table.add_row(f"{objective.loss} loss", f"{result.before.loss:.4g}", f"{result.after.loss:.4g}")
    return table
