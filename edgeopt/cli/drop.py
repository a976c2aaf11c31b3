"""``edgeopt drop-layers``: find, score and drop transformer layers and residual blocks."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from edgeopt.cli import console
from edgeopt.cli.console import JsonFlag
from edgeopt.core.errors import PassOptionError


def register(app: typer.Typer) -> None:
    """Add the ``drop-layers`` command to ``app``."""
    @app.command("drop-layers")
    def drop_layers(
        model: Annotated[Path, typer.Argument(help="Input ONNX model (never overwritten).")],
        output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the result.")] = None,
        count: Annotated[int | None, typer.Option(help="Drop this many blocks, least output change first.")] = None,
        max_drop: Annotated[float | None, typer.Option(help="Drop as many as keep the metric within this "
                                                       "drop from the original (1.0).")] = None,
        calib: Annotated[str | None, typer.Option(help="Sample data: folder of .npy/.npz or images, "
                                                  "or random:N.")] = None,
        metric: Annotated[str, typer.Option(help="cosine | agreement (top-1, for classifiers)")] = "cosine",
        granularity: Annotated[str, typer.Option(help="layer (transformer layer, residual block) | block "
                                                 "(attention and FFN separately)")] = "layer",
        compare: Annotated[str | None, typer.Option("--compare-output", help="Graph output to score "
                                                    "(default: the first).")] = None,
        rescore: Annotated[int, typer.Option(help="With --count: after each pick, re-score this many of the "
                                             "best remaining blocks with the picks so far dropped "
                                             "(0: rank once).")] = 0,
        repair: Annotated[bool, typer.Option("--repair/--no-repair", help="Refit the next projections by least "
                                             "squares.")] = True,
        cleanup: Annotated[bool, typer.Option("--cleanup/--no-cleanup", help="Run the cleanup preset "
                                              "first.")] = True,
        samples: Annotated[int | None, typer.Option(help="Calibration samples to use.")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Re-batch calibration data.")] = None,
        report: Annotated[bool, typer.Option("--report", help="Show the ranking of every block.")] = False,
        show_plan: Annotated[bool, typer.Option("--plan", help="List the blocks found; change nothing.")] = False,
        as_json: JsonFlag = False,
    ) -> None:
        """Drop transformer layers or residual blocks of MODEL, scored on calibration data."""
        from edgeopt.cli.drop_render import blocks_progress, drop_json, drop_tables, plan_table
        from edgeopt.core.model_io import load_model
        from edgeopt.layers.drop import DropConfig, drop_layers_file, plan

        if granularity not in ("layer", "block"):
            raise PassOptionError(f"drop-layers: --granularity must be layer or block, got {granularity!r}.")
        if show_plan:
            blocks = plan(load_model(model), granularity)  # type: ignore[arg-type]
            if as_json:
                console.emit_json([asdict(b) for b in blocks])
            else:
                console.out.print(plan_table(blocks))
            return
        if metric not in ("cosine", "agreement"):
            raise PassOptionError(f"drop-layers: --metric must be cosine or agreement, got {metric!r}.")
        if output is None or calib is None:
            raise typer.BadParameter("-o OUT and --calib DATA are required unless --plan is given.")
        config = DropConfig(count=count, max_drop=max_drop, metric=metric,  # type: ignore[arg-type]
                            granularity=granularity, output=compare, repair=repair, rescore=rescore, cleanup=cleanup,  # type: ignore[arg-type]
                            samples=samples, batch_size=batch_size)
        with blocks_progress(console.err, disable=as_json) as advance:
            result = drop_layers_file(model, output, config, calibration=calib, on_block=advance)
        if as_json:
            console.emit_json(drop_json(result))
        else:
            console.out.print(drop_tables(result, show_report=report))
