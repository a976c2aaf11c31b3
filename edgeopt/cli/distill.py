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
        qat: Annotated[bool | None, typer.Option("--qat/--no-qat", help="Quantization-aware training of a QDQ "
                                                 "student (default: on when it has int8 weights).")] = None,
        learn_scales: Annotated[bool, typer.Option("--learn-scales/--fixed-scales", help="QAT: train the "
                                                   "quantization scales too.")] = True,
        scale_lr: Annotated[float | None, typer.Option(help="QAT: peak learning rate of the scales (default: "
                                                       "--lr).")] = None,
        keep_clusters: Annotated[bool, typer.Option("--keep-clusters/--free-clusters", help="Clustered weights "
                                                    "keep their values tied: centroids train.")] = True,
        learn_assignments: Annotated[bool, typer.Option(
            "--learn-assignments/--fixed-assignments", help="Clustered weights: which centroid each weight "
            "takes trains too (still K values per tensor).")] = True,
        labels: Annotated[str | None, typer.Option(help="Name of an int array of class labels in the data: mixes "
                                                   "a cross-entropy task loss in.")] = None,
        alpha: Annotated[float, typer.Option(help="With --labels: the task loss's share (0-1).")] = 0.5,
        features: Annotated[int, typer.Option(help="Also match this many intermediate tensors the student kept "
                                              "from the teacher (found by name).")] = 0,
        feature_weight: Annotated[float, typer.Option(help="Weight of the feature-matching loss.")] = 1.0,
        augment: Annotated[str, typer.Option(help="none | auto | a comma list of flip, crop, mixup: fresh views "
                                             "of image inputs each step, seen by teacher and student alike "
                                             "(auto: crop and flip for image inputs).")] = "none",
        ema: Annotated[float, typer.Option(help="Decay of a moving average of the weights that is evaluated "
                                           "and kept (0: off).")] = 0.0,
        blockwise: Annotated[float, typer.Option(help="Seconds (out of --time-limit) of block-wise "
                                                 "reconstruction first: each block learns the teacher's tensor "
                                                 "at its end (0: off).")] = 0.0,
        block_lr: Annotated[float | None, typer.Option(help="Peak learning rate of --blockwise (default: "
                                                       "--lr).")] = None,
        in_place: Annotated[bool, typer.Option("--in-place", help="Allow writing over STUDENT.")] = False,
        as_json: JsonFlag = False,
    ) -> None:
        """Train STUDENT (pruned, layers dropped, clustered, int8 QDQ, ...) to match TEACHER on unlabeled DATA."""
        from edgeopt.training.distill import DistillConfig, distill_file

        config = console.checked_config(
            DistillConfig, steps=steps, epochs=epochs, time_limit=time_limit, lr=lr, batch_size=batch_size,
            loss=loss, temperature=temperature, holdout=holdout, samples=samples, eval_every=eval_every,
            patience=patience, output=match, device=device, qat=qat, learn_scales=learn_scales, scale_lr=scale_lr,
            keep_clusters=keep_clusters, labels=labels, alpha=alpha, features=features,
            feature_weight=feature_weight, augment=augment, ema=ema, learn_assignments=learn_assignments,
            blockwise=blockwise, block_lr=block_lr)
        with _progress(disable=as_json) as on_eval:
            result = distill_file(student, teacher, data, output, config, in_place=in_place, on_eval=on_eval)
        if as_json:
            console.emit_json(result.as_dict())
            return
        show(result)


def show(result: DistillResult) -> None:
    """The fidelity table, the run's length and the written file."""
    console.out.print(fidelity_table(result))
    console.out.print(f"{result.steps} steps in {result.seconds:.1f} s ({result.stopped}); kept the weights "
                      f"of step {result.best_step}", markup=False)
    console.out.print(f"wrote {result.output}", markup=False)


def check_qat(mode: str, data: str | None) -> None:
    """``quantize --qat``'s options, checked before anything is written."""
    from edgeopt.core.errors import PassOptionError

    if mode != "static":
        raise PassOptionError(f"--qat trains static int8 (QDQ) models, not --mode {mode}; drop --qat or use "
                              "--mode static.")
    if data is None:
        raise PassOptionError("quantize --qat trains on sample data: give --data DIR (or --calib DIR).")


def qat_after_quantize(model: Path, quantized: Path, data: str, *, as_json: bool) -> DistillResult:
    """``quantize --qat``: train the int8 model just written against the float ``model``, in place."""
    from edgeopt.training.distill import DistillConfig, distill_file

    with _progress(disable=as_json) as on_eval:
        result = distill_file(quantized, model, data, quantized, DistillConfig(qat=True), in_place=True,
                              on_eval=on_eval)
    if not as_json:
        show(result)
    return result


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
