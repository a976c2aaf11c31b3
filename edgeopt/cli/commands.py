"""The ``edgeopt`` command line. It owns the terminal: tables, progress bars, ``--json``."""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape

from edgeopt.cli import compress, console, deploy, distill, drop, export, prune, search
from edgeopt.cli.console import JsonFlag
from edgeopt.cli.render import (
    demo_table,
    inspect_table,
    issues_table,
    passes_table,
    quantize_json,
    quantize_tables,
    samples_progress,
    steps_progress,
    steps_table,
    summary_table,
)
from edgeopt.core.errors import EdgeoptError, PassOptionError

app = typer.Typer(
    name="edgeopt",
    help="ONNX graph optimizer and edge export toolchain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log what each pass does.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not (verbose or debug):  # their internal fallbacks are not the user's concern
        for noisy in ("onnxscript", "torch.onnx", "onnx_ir"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    console.state["debug"] = debug


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")], as_json: JsonFlag = False
) -> None:
    """Opsets, signature, op histogram, parameters, weight bytes and MACs of a model, and what is wrong with it."""
    from edgeopt.core.inspect_model import summarize
    from edgeopt.core.model_checks import model_problems
    from edgeopt.core.model_io import load_model

    loaded = load_model(model)
    summary = summarize(loaded)
    problems = [p.message for p in model_problems(loaded)]  # noted, not fatal: inspect only reads
    if as_json:
        console.emit_json({**summary.as_dict(), "problems": problems})
        return
    console.out.print(inspect_table(summary))
    for message in problems:
        console.out.print(f"[bold yellow]note:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _parse_options(specs: list[str]) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for spec in specs:
        key, sep, raw = spec.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot:
            raise typer.BadParameter(f"'{spec}': expected PASS.OPTION=VALUE, "
                                     "e.g. fold-constants.input_size_limit=4096.", param_hint="--option")
        try:
            options.setdefault(name, {})[option] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise typer.BadParameter(f"'{spec}': the value is not valid YAML ({str(e).splitlines()[0]}).",
                                     param_hint="--option") from e
    return options


def _steps_with_options(
    names: list[str], options: dict[str, dict[str, Any]]
) -> list[tuple[str, dict[str, Any]]]:
    """Attach each ``-O PASS.OPTION=VALUE`` to PASS, or to the preset that contains it."""
    from edgeopt.pipeline import registry  # here, not at the top: it imports every pass (the CLI starts fast)

    steps: list[tuple[str, dict[str, Any]]] = [(n, {}) for n in names]
    for pass_name, values in options.items():
        for step_name, step_options in steps:
            if step_name == pass_name:
                step_options.update(values)
                break
            if pass_name in registry.expand([step_name]) and step_name != pass_name:
                step_options.setdefault(pass_name, {}).update(values)
                break
        else:
            raise PassOptionError(
                f"--option for '{pass_name}', which is not in --passes {','.join(names)}."
            )
    return steps


@app.command()
def optimize(
    model: Annotated[Path, typer.Argument(help="Input ONNX model (never overwritten).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the result.")],
    passes: Annotated[str, typer.Option("--passes", "-p", help="Comma-separated passes/presets.")] = "cleanup",
    option: Annotated[list[str], typer.Option("--option", "-O", help="PASS.OPTION=VALUE")] = [],  # noqa: B006
    verify: Annotated[bool, typer.Option(help="Check outputs in ONNX Runtime after every pass.")] = False,
    target: Annotated[list[str], typer.Option("--target", "-t", help="Also emit this target's artifact.")] = [],  # noqa: B006
    in_place: Annotated[bool, typer.Option("--in-place", help="Allow writing over MODEL's files.")] = False,
    external_data: Annotated[
        bool | None,
        typer.Option("--external-data/--no-external-data",
                     help="Store tensors in OUTPUT.data (default: only above 2 GB)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run passes on MODEL and write OUTPUT (and target artifacts beside it)."""
    from edgeopt.pipeline import registry
    from edgeopt.workflow.optimize import optimize_file

    names = [n.strip() for n in passes.split(",") if n.strip()]
    if not names:
        raise typer.BadParameter("no pass given; e.g. --passes cleanup.", param_hint="--passes")
    steps = _steps_with_options(names, _parse_options(option))
    with steps_progress(console.err, len(registry.expand(names)), disable=as_json) as advance:
        result = optimize_file(model, output, steps, verify=verify, targets=target,
                               in_place=in_place, external_data=external_data, on_step=advance)
    _show_optimize_result(result, as_json)


def _show_optimize_result(result: Any, as_json: bool) -> None:
    """What `optimize` and `run` print: passes, before/after, written files (or JSON)."""
    if as_json:
        console.emit_json({"output": str(result.output), "before": result.before.as_dict(),
                           "after": result.after.as_dict(), "steps": [asdict(s) for s in result.pipeline.steps],
                           "artifacts": {k: str(v) for k, v in result.artifacts.items()}})
        return
    console.out.print(steps_table(result.pipeline.steps))
    console.out.print(summary_table(result.before, result.after))
    console.out.print(f"wrote {result.output}")
    for name, path in result.artifacts.items():
        console.out.print(f"wrote {name} artifact {path}")


@app.command()
def quantize(
    model: Annotated[Path, typer.Argument(help="Float ONNX model (never overwritten).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the quantized model.")],
    mode: Annotated[str, typer.Option(help="static | dynamic | weight-only")] = "static",
    calib: Annotated[str | None, typer.Option(help="Sample data: folder of .npy/.npz or images, or random:N.")] = None,
    method: Annotated[str, typer.Option(help="Static calibration: auto (each range, MinMax, percentile or MSE, "
                                        "by its consumers' error) | minmax | mse | moving-average | "
                                        "percentile | entropy")] = "auto",
    percentile: Annotated[float, typer.Option(help="For --method percentile.")] = 99.999,
    per_channel: Annotated[bool, typer.Option("--per-channel/--per-tensor", help="Weight scales.")] = True,
    fmt: Annotated[str, typer.Option("--format", help="qdq | qoperator")] = "qdq",
    activation_type: Annotated[str, typer.Option(help="uint8 | int8 | uint16 | int16")] = "uint8",
    bits: Annotated[int, typer.Option(help="Weight-only: 4 or 8.")] = 4,
    block_size: Annotated[int, typer.Option(help="Weight-only: weights per scale.")] = 32,
    weight_method: Annotated[str, typer.Option(help="Weight-only: rtn | hqq")] = "rtn",
    embedding_bits: Annotated[int, typer.Option(help="Weight-only: also quantize embedding tables "
                                                "(Gather) to 8 or 4 bits; 0 keeps them float.")] = 0,
    exclude: Annotated[list[str], typer.Option(help="Node name to keep in float (repeatable).")] = [],  # noqa: B006
    op_types: Annotated[str, typer.Option(help="Comma-separated op types to quantize (static default: all, but only "
                                                 "MatMul,Gemm,Gather in transformers; 'all' forces every op).")] = "",
    samples: Annotated[int | None, typer.Option(help="Calibration samples to use.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Re-batch calibration data.")] = None,
    max_drop: Annotated[float | None, typer.Option(help="Keep sensitive nodes float until agreement "
                                                   "with fp32 drops at most this much.")] = None,
    time_limit: Annotated[float | None, typer.Option(help="--max-drop: seconds after which the fallback tries "
                                                     "nothing new and keeps the best model found.")] = None,
    report: Annotated[bool, typer.Option("--report", help="Show the per-node sensitivity table.")] = False,
    prepasses: Annotated[str, typer.Option(help="Static mode, comma-separated: equalize-cross-layer, "
                                           "correct-bias, smooth-quant.")] = "",
    budget: Annotated[float, typer.Option(min=0.0, max=1.0, help="Static: share of the MACs that may lose int8 "
                                          "kernels for 16-bit activations around the most sensitive nodes.")] = 0.0,
    smooth: Annotated[bool, typer.Option("--smooth/--no-smooth", help="Dynamic with --calib, and static for "
                                         "transformers: SmoothQuant first (activation outliers moved into the "
                                         "weights).")] = True,
    rounding: Annotated[str, typer.Option(help="Static: learned (int8 weight codes fitted on the calibration "
                                          "data) | nearest.")] = "learned",
    cpu: Annotated[str, typer.Option(help="CPU family the int8 model is for: auto (this machine), x86-avx2 "
                                     "(x86 without VNNI), x86-vnni or arm64.")] = "auto",
    cleanup: Annotated[bool, typer.Option("--cleanup/--no-cleanup", help="Run the cleanup preset first.")] = True,
    qat: Annotated[bool, typer.Option("--qat", help="Static: then train the int8 model to match MODEL "
                                      "(quantization-aware training; see `edgeopt distill`).")] = False,
    data: Annotated[str | None, typer.Option(help="--qat: training samples (default: --calib).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Quantize MODEL (static int8 with calibration, dynamic, or weight-only int4/int8)."""
    from edgeopt.quantization.quantize import QuantizeConfig, quantize_file

    if qat:
        distill.check_qat(mode, data or calib)
    config = console.checked_config(QuantizeConfig, mode=mode, method=method, percentile=percentile,
                                    per_channel=per_channel, format=fmt, activation_type=activation_type,
                                    bits=bits, block_size=block_size, weight_method=weight_method,
                                    embedding_bits=embedding_bits,
                                    exclude=tuple(exclude),
                                    op_types=tuple(t for t in op_types.split(",") if t),
                                    samples=samples, batch_size=batch_size, max_drop=max_drop,
                                    time_limit=time_limit,
                                    prepasses=tuple(p for p in prepasses.split(",") if p), rounding=rounding,
                                    smooth=smooth, budget=budget, cpu=cpu, cleanup=cleanup)
    with samples_progress(console.err, disable=as_json) as progress:
        result = quantize_file(model, output, config, calibration=calib, report=report,
                               progress=progress)
    if not as_json:
        console.out.print(quantize_tables(result, show_report=report))
    trained = distill.qat_after_quantize(model, output, data or calib or "", as_json=as_json) if qat else None
    if as_json:
        console.emit_json({**quantize_json(result), **({"qat": trained.as_dict()} if trained else {})})


@app.command()
def analyze(
    model: Annotated[Path, typer.Argument(help="Float ONNX model.")],
    calib: Annotated[str, typer.Option(help="Sample data: folder of .npy/.npz or images, or random:N.")],
    method: Annotated[str, typer.Option(help="Calibration method (as quantize --method).")] = "auto",
    per_channel: Annotated[bool, typer.Option("--per-channel/--per-tensor")] = True,
    activation_type: Annotated[str, typer.Option(help="uint8 | int8 | uint16 | int16")] = "uint8",
    samples: Annotated[int | None, typer.Option(help="Calibration samples to use.")] = None,
    limit: Annotated[int, typer.Option(help="Rows of the table.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Rank nodes by the error static int8 quantization introduces (SQNR, cosine); writes nothing."""
    import tempfile

    from edgeopt.cli.render import sensitivity_table
    from edgeopt.quantization.quantize import QuantizeConfig, quantize_file

    config = console.checked_config(QuantizeConfig, method=method, per_channel=per_channel,
                                    activation_type=activation_type, samples=samples)
    with tempfile.TemporaryDirectory() as tmp, samples_progress(console.err, disable=as_json) as progress:
        result = quantize_file(model, Path(tmp) / "quantized.onnx", config, calibration=calib,
                               report=True, progress=progress)
    assert result.report is not None
    if as_json:
        console.emit_json([asdict(e) for e in result.report])
    else:
        console.out.print(sensitivity_table(result.report, limit=limit))


@app.command("convert-opset")
def convert_opset(
    model: Annotated[Path, typer.Argument(help="Input ONNX model.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the result.")],
    to: Annotated[int, typer.Option("--to", help="Target default-domain opset.")] = 17,
) -> None:
    """Convert MODEL's default-domain opset."""
    from edgeopt.workflow.optimize import optimize_file

    result = optimize_file(model, output, [("convert-opset", {"target_version": to})])
    console.out.print(f"wrote {result.output} (opset {result.after.opsets.get('ai.onnx')})")


@app.command("list-passes")
def list_passes(as_json: JsonFlag = False) -> None:
    """Every registered pass with its options, and the presets."""
    from edgeopt.pipeline import registry

    infos = registry.list_passes()
    if as_json:
        console.emit_json({
            "passes": [{"name": i.name, "summary": i.summary,
                        "options": {o.name: {"type": o.type_name, "default": o.default}
                                    for o in i.options().values()}} for i in infos],
            "presets": {k: list(v) for k, v in registry.list_presets().items()},
        })
        return
    console.out.print(passes_table(infos, registry.list_presets()))


@app.command()
def check(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target name.")] = "ort-cpu",
    as_json: JsonFlag = False,
) -> None:
    """List everything in MODEL that TARGET cannot run (exit 1 if anything)."""
    from edgeopt.core.model_io import load_model
    from edgeopt.deploy.target_registry import get_target

    issues = get_target(target).check(load_model(model))
    if as_json:
        console.emit_json([asdict(i) for i in issues])
    elif issues:
        console.out.print(issues_table(target, issues))
    else:
        console.out.print(f"{model}: every node runs on {target}")
    if issues:
        raise typer.Exit(1)


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")], as_json: JsonFlag = False
) -> None:
    """Execute a recipe (model, passes with options, verify, targets)."""
    from edgeopt.pipeline import registry
    from edgeopt.workflow.optimize import run_recipe
    from edgeopt.workflow.recipe import load_recipe

    parsed = load_recipe(recipe)
    if parsed.export is not None:
        _quiet_torch()
    total = len(registry.expand([name for name, _ in parsed.passes]))
    with steps_progress(console.err, total, disable=as_json) as advance:
        result = run_recipe(parsed, on_step=advance)
    _show_optimize_result(result, as_json)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for artifacts.")] = Path("edgeopt-demo"),
    as_json: JsonFlag = False,
) -> None:
    """Export, clean up, emit and measure the shipped digits CNN (no download)."""
    _quiet_torch()
    from edgeopt.cli.demo import run_demo

    with console.err.status("starting", spinner="dots") as status:
        result = run_demo(out_dir, on_stage=lambda s: status.update(s) if not as_json else None)
    if as_json:
        console.emit_json(result.as_dict())
        return
    console.out.print(demo_table(result))
    console.out.print(f"artifacts and summary.json in {result.out_dir}; every target's artifact, manifest.json and "
                      f"report.html in {result.out_dir / 'compiled'}")


def _quiet_torch() -> None:
    """Hide torch's import-time notices (no torchvision, deprecations) unless -v/--debug."""
    if logging.getLogger().level <= logging.INFO:
        return
    import warnings

    import torch  # noqa: F401 - torch configures its loggers on import; adjust them after

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|copyreg)")


# Commands that live in their own modules, one area each: each module's
# ``register(app)`` adds its commands.
for _area in (compress, deploy, distill, drop, export, prune, search):
    _area.register(app)


def main() -> None:
    """Entry point: one-line errors (exit 1) unless --debug; usage errors exit 2."""
    try:
        app()
    except EdgeoptError as e:
        if console.state["debug"]:
            raise
        console.err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - the safety net: a bug still answers in one line
        if console.state["debug"]:
            raise
        verb = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "edgeopt")
        said = next(iter(str(e).strip().splitlines()), "")
        console.err.print(f"[bold red]error:[/] internal error in {escape(verb)}: {type(e).__name__}: "
                          f"{escape(said)}; rerun with --debug and report it.", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
