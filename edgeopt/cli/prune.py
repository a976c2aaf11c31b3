"""``edgeopt prune``: structured channel pruning (or magnitude pruning) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group
from rich.table import Table

from edgeopt.cli import console
from edgeopt.cli.console import JsonFlag

if TYPE_CHECKING:  # the road is imported when a command runs, not at the CLI's start
    from edgeopt.channels.plan import PrunePlan
    from edgeopt.pruning.prune import PruneResult


def register(app: typer.Typer) -> None:
    """Add the ``prune`` command to ``app``."""

    @app.command()
    def prune(
        model: Annotated[Path, typer.Argument(help="Input ONNX model (never overwritten).")],
        output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the result.")] = None,
        ratio: Annotated[float, typer.Option(help="Fraction of channels to remove (sparsity with "
                                             "--unstructured).")] = 0.3,
        criterion: Annotated[str, typer.Option(help="auto | l1 | l2 | bn | activation | reconstruction (the "
                                               "last two need --calib); auto: reconstruction with --calib, "
                                               "else l1")] = "auto",
        scope: Annotated[str, typer.Option(help="uniform (same ratio per group) | global (one ranking)")] = "uniform",
        calib: Annotated[str | None, typer.Option(help="Sample data for activation/--repair: folder of "
                                                  ".npy/.npz or images, or random:N.")] = None,
        samples: Annotated[int | None, typer.Option(help="Calibration samples to use.")] = None,
        round_to: Annotated[int, typer.Option(help="Round kept channel counts to a multiple of this.")] = 8,
        rounding: Annotated[str, typer.Option(help="up (prune less than asked) | down (as Torch-Pruning)")] = "up",
        max_ratio: Annotated[float, typer.Option(help="Never remove more than this fraction of a group.")] = 0.9,
        exclude: Annotated[list[str], typer.Option(help="Node-name pattern whose channels stay (repeatable).")] = [],  # noqa: B006
        kinds: Annotated[str, typer.Option(help="all | channels | heads: which groups to prune (heads: whole "
                                           "attention heads, Q/K/V/O together).")] = "all",
        repair: Annotated[bool | None, typer.Option("--repair/--no-repair", help="Refit the next layers by "
                                                    "least squares on --calib data (default: on with "
                                                    "--calib).", show_default=False)] = None,
        cleanup: Annotated[bool, typer.Option("--cleanup/--no-cleanup", help="Run the cleanup preset "
                                              "first.")] = True,
        reestimate_bn: Annotated[bool, typer.Option("--reestimate-bn", help="Recompute the statistics of the "
                                                    "BatchNorms left in the graph on --calib data.")] = False,
        unstructured: Annotated[bool, typer.Option("--unstructured", help="Zero the smallest weights instead "
                                                   "(no speed-up; smaller zipped file).")] = False,
        plan: Annotated[bool, typer.Option("--plan", help="Print the channel groups; write nothing.")] = False,
        in_place: Annotated[bool, typer.Option("--in-place", help="Allow writing over MODEL.")] = False,
        as_json: JsonFlag = False,
    ) -> None:
        """Remove the least important channels of MODEL's coupled-channel groups (or zero weights)."""
        from edgeopt.cli.render import samples_progress
        from edgeopt.pruning.prune import PruneConfig, prune_file

        if output is None and not plan:
            raise typer.BadParameter("give -o OUTPUT, or --plan to only print the groups.", param_hint="--output")
        config = console.checked_config(
            PruneConfig, ratio=ratio, criterion=criterion, scope=scope, round_to=round_to, rounding=rounding,
            max_ratio=max_ratio, exclude=tuple(exclude), kinds=kinds, samples=samples, repair=repair,
            reestimate_bn=reestimate_bn, unstructured=unstructured, cleanup=cleanup)
        with samples_progress(console.err, disable=as_json) as progress:
            result = prune_file(model, output, config, calibration=calib, plan_only=plan, in_place=in_place,
                                on_batch=lambda n: progress("calibration", n))
        if as_json:
            console.emit_json(result.as_dict())
            return
        console.out.print(prune_tables(result, show_plan=plan or result.plan is not None))
        for note in result.notes:
            console.out.print(f"note: {note}", markup=False)
        if result.output is not None:
            console.out.print(f"wrote {result.output}")


def plan_table(plan: PrunePlan) -> Table:
    """One row per group: sources, channels (or attention heads of D features) kept, sinks, and
    why a group is left alone."""
    before, after = plan.channels
    table = Table(title=f"channel groups ({plan.criterion}, {plan.scope}, ratio {plan.ratio:g}): "
                        f"{before} -> {after} channels")
    for column in ("group", "produced by", "channels", "read by", "status"):
        table.add_column(column, justify="right" if column in ("group", "channels") else "left")
    for g in plan.groups:
        status = g.reason or ("pruned" if g.keep < g.size else "kept (rounding or cap)")
        size = f"{g.size} -> {g.keep}" + (f" heads ({g.head_dim})" if g.head_dim else "")
        table.add_row(str(g.id), _names(g.sources), size, _names(g.sinks), status)
    return table


def _names(names: list[str], limit: int = 2) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" +{len(names) - limit}" if len(names) > limit else "") if names else "-"


def prune_tables(result: PruneResult, *, show_plan: bool) -> Group:
    from edgeopt.cli.render import human_bytes, summary_table

    parts: list[Any] = []
    if show_plan and result.plan is not None:
        parts.append(plan_table(result.plan))
    if result.after is not None:
        parts.append(summary_table(result.before, result.after))
    if result.zipped_after is not None:
        zipped = Table(title="compressed size (zip)", show_header=False)
        zipped.add_column()
        zipped.add_column(justify="right")
        zipped.add_row("before", human_bytes(result.zipped_before))
        zipped.add_row("after", human_bytes(result.zipped_after))
        if result.sparsity is not None:
            zipped.add_row("weight sparsity", f"{result.sparsity:.1%}")
        parts.append(zipped)
    if result.fidelity is not None:
        parts.append(fidelity_table(result))
    return Group(*parts)


def fidelity_table(result: PruneResult) -> Table:
    """The pruned model's first output vs the original's on the calibration data."""
    fidelity = result.fidelity
    assert fidelity is not None
    table = Table(title=f"fidelity vs the original ({fidelity.output}, {fidelity.samples} samples)",
                  show_header=False)
    table.add_column()
    table.add_column(justify="right")
    if fidelity.top1_agreement is not None:
        table.add_row("top-1 agreement", f"{fidelity.top1_agreement:.3f}")
    table.add_row("cosine (mean)", f"{fidelity.cosine_mean:.4f}")
    table.add_row("SQNR", f"{fidelity.sqnr_db:.1f} dB")
    return table
