"""``edgeopt share-weights`` and ``edgeopt low-rank``: commands and their tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from edgeopt.cli import console
from edgeopt.cli.console import JsonFlag

if TYPE_CHECKING:  # the road is imported when a command runs, not at the CLI's start
    from edgeopt.sharing.compress import CompressResult


def register(app: typer.Typer) -> None:
    """Add the compression commands to ``app``."""
    @app.command("share-weights")
    def share_weights(
        model: Annotated[Path, typer.Argument(help="ONNX model (never overwritten).")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the result.")],
        clusters: Annotated[int, typer.Option(help="k-means clusters per tensor (2-256; 0: none).")] = 16,
        form: Annotated[str, typer.Option(help="codebook (smaller file) | compressible (smaller zipped)")]
        = "codebook",
        per_channel: Annotated[bool, typer.Option("--per-channel", help="One codebook per output channel.")]
        = False,
        per_channel_scale: Annotated[bool, typer.Option(
            "--per-channel-scale", help="One codebook times a scale per output channel (CNNs).")] = False,
        across_layers: Annotated[float | None, typer.Option(
            help="First share same-shape weights within this relative error (e.g. 0.05).")] = None,
        min_elements: Annotated[int, typer.Option(help="Leave smaller tensors alone.")] = 1024,
        calib: Annotated[str | None, typer.Option(help="Sample data (folder of .npy/.npz or images): cluster "
                                                  "for the layers' outputs on it (data-aware) and check "
                                                  "fidelity; random:N only checks fidelity.")] = None,
        samples: Annotated[int, typer.Option(help="Samples for data-aware clustering and the fidelity "
                                             "check.")] = 64,
        cleanup: Annotated[bool, typer.Option("--cleanup/--no-cleanup", help="Run the cleanup preset "
                                              "first.")] = True,
        as_json: JsonFlag = False,
    ) -> None:
        """Cluster weights to K shared values (k-means) and/or share weights across layers."""
        from edgeopt.sharing.compress import share_weights_file

        if form not in ("codebook", "compressible"):
            raise typer.BadParameter(f"'{form}': use codebook or compressible.", param_hint="--form")
        with console.err.status("clustering weights", spinner="dots", refresh_per_second=4) if not as_json \
                else _nothing():
            result = share_weights_file(model, output, clusters=clusters, form=form,  # type: ignore[arg-type]
                                        per_channel=per_channel, channel_scale=per_channel_scale,
                                        across_layers=across_layers,
                                        min_elements=min_elements, calibration=calib, samples=samples,
                                        cleanup=cleanup)
        _show(result, as_json, console.out, console.emit_json)

    @app.command("low-rank")
    def low_rank(
        model: Annotated[Path, typer.Argument(help="ONNX model (never overwritten).")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the result.")],
        energy: Annotated[float | None, typer.Option(help="Keep this share of each weight's "
                                                     "singular-value energy (default 0.95).")] = None,
        params: Annotated[float | None, typer.Option(help="Instead: keep this fraction of the "
                                                     "factorizable weights' parameters.")] = None,
        calib: Annotated[str | None, typer.Option(help="Sample data: factorize to keep the layers' outputs "
                                                  "on it (data-aware), and measure fidelity.")] = None,
        samples: Annotated[int, typer.Option(help="Samples for calibration and the fidelity check.")] = 64,
        min_elements: Annotated[int, typer.Option(help="Leave smaller weights alone.")] = 4096,
        cleanup: Annotated[bool, typer.Option("--cleanup/--no-cleanup", help="Run the cleanup preset "
                                              "first.")] = True,
        as_json: JsonFlag = False,
    ) -> None:
        """Factorize MatMul, Gemm and 1x1 Conv weights into two rank-r factors (truncated SVD)."""
        from edgeopt.sharing.compress import low_rank_file

        with console.err.status("factorizing", spinner="dots", refresh_per_second=4) if not as_json else _nothing():
            result = low_rank_file(model, output, energy=energy, params=params, calibration=calib,
                                   samples=samples, min_elements=min_elements, cleanup=cleanup)
        _show(result, as_json, console.out, console.emit_json)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _show(result: CompressResult, as_json: bool, out: Any, emit: Any) -> None:
    if as_json:
        emit(result.as_dict())
        return
    console.out.print(changes_table(result))
    console.out.print(size_table(result))
    console.out.print(f"wrote {result.output}")


def size_table(result: CompressResult) -> Table:
    """File size raw and zipped, parameters and MACs before/after, and fidelity."""
    table = Table(title="before / after")
    for column in ("", "before", "after", "before / after"):
        table.add_column(column, justify="right" if column else "left")
    rows = [("file bytes", result.size_before.raw, result.size_after.raw),
            ("zipped bytes", result.size_before.zipped, result.size_after.zipped),
            ("parameters", result.before.parameters, result.after.parameters),
            ("MACs (batch 1)", result.before.macs, result.after.macs)]
    for label, before, after in rows:
        ratio = f"{before / after:.2f}x" if after else "-"
        table.add_row(label, f"{before:,}", f"{after:,}", ratio)
    f = result.fidelity
    table.add_row(f"cosine of '{f.output}' (mean / min, {f.samples} samples)", "1", f"{f.cosine_mean:.5f} / "
                  f"{f.cosine_min:.5f}", "")
    if f.top1_agreement is not None:
        table.add_row("top-1 agreement", "1", f"{f.top1_agreement:.4f}", "")
    table.add_row("SQNR vs original (dB)", "", f"{f.sqnr_db:.1f}", "")
    return table


def changes_table(result: CompressResult, limit: int = 12) -> Table:
    """The largest changes: clustered tensors, shared weights or factorized layers."""
    rows = sorted(result.changes, key=lambda r: -r.get("bytes_before", r.get("params_before", 0)))
    table = Table(title=f"{len(rows)} change(s)" + (f", largest {limit}" if len(rows) > limit else ""))
    keys = list(rows[0]) if rows else ["name"]
    for key in keys:
        table.add_column(key.replace("_", " "))
    for row in rows[:limit]:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    return table
