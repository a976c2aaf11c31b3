"""CLI commands ``compile``, ``validate`` and ``bundle``: from a model to checked per-target artifacts."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from edgeopt.cli import console
from edgeopt.cli.console import JsonFlag
from edgeopt.core.errors import PassOptionError

_Data = Annotated[str | None, typer.Option("--data", help="Validation inputs: .npz/.npy file or folder, "
                                           "images, or random:N.")]
_Labels = Annotated[str | None, typer.Option("--labels", help="Labels: a .npy file, or their key in the .npz data.")]
_Metric = Annotated[str, typer.Option("--metric", help="top1 | top5 | cosine | custom")]
_Custom = Annotated[str | None, typer.Option("--custom-metric", help="FILE.py:FUNCTION for --metric custom; "
                                             "gets (outputs, labels), returns one score per sample.")]
_Reference = Annotated[Path | None, typer.Option("--reference", help="fp32 ONNX model to compare with "
                                                 "(default: the model compile started from).")]
_Batch = Annotated[int, typer.Option("--batch-size", min=1, help="Samples per run (latency is per run).")]
_Only = Annotated[list[str], typer.Option("--target", "-t", help="Only this target (repeatable).")]


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(app: typer.Typer) -> None:
    """Add ``compile``, ``validate`` and ``bundle`` to ``app``."""
    @app.command("compile")
    def compile_(
        model: Annotated[Path, typer.Argument(help="ONNX model (never modified).")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Folder for artifacts and manifest.json.")],
        targets: Annotated[str, typer.Option("--targets", help="Devices: cpu,gpu,npu.")] = "cpu,gpu,npu",
        runtimes: Annotated[str, typer.Option("--runtimes", help="Runtimes: ort,tflite.")] = "ort,tflite",
        only: _Only = [],  # noqa: B006
        calib: Annotated[str | None, typer.Option(help="Calibration data for int8 targets: folder/file of "
                                                  ".npz/.npy, images, or random:N.")] = None,
        cleanup: Annotated[bool, typer.Option("--cleanup/--no-cleanup", help="Run the cleanup preset first.")] = True,
        cpu: Annotated[str, typer.Option(help="CPU family of int8 CPU artifacts: auto (this machine), x86-avx2 "
                                         "(x86 without VNNI), x86-vnni or arm64.")] = "auto",
        as_json: JsonFlag = False,
    ) -> None:
        """Emit every selected target's artifact from MODEL into OUTPUT, with a manifest (exit 1 if any failed)."""
        from edgeopt.cli.deploy_render import compile_table
        from edgeopt.deploy.compile import compile_model, select_targets

        names = select_targets(_split(targets), _split(runtimes), only)
        with console.err.status("compiling", spinner="dots") as status:
            def on_target(name: str, entry: object) -> None:
                if entry is None and not as_json:
                    status.update(f"compiling {name}")

            result = compile_model(model, output, targets=names, calibration=calib, cleanup=cleanup,
                                   cpu=cpu, on_target=on_target)
        if as_json:
            console.emit_json(result.manifest.as_dict())
        else:
            console.out.print(compile_table(result.manifest))
            console.out.print(f"wrote {result.manifest_path}")
        failed = result.manifest.failed
        if failed:
            listed = ", ".join(f"{a.target} ({a.error})" for a in failed)
            console.err.print(f"[bold red]error:[/] {len(failed)} target(s) failed: {listed}. See the messages above.",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(1)

    @app.command()
    def validate(
        folder: Annotated[Path, typer.Argument(help="A compile output folder, or a bundle folder.")],
        data: _Data = None,
        reference: _Reference = None,
        labels: _Labels = None,
        metric: _Metric = "top1",
        custom_metric: _Custom = None,
        batch_size: _Batch = 1,
        limit: Annotated[int | None, typer.Option(min=1, help="Use at most this many samples.")] = None,
        warmup: Annotated[int, typer.Option(min=0, help="Untimed runs before timing.")] = 3,
        per_layer: Annotated[str, typer.Option(help="auto | always | never")] = "auto",
        kernel_check: Annotated[bool, typer.Option("--kernel-check/--no-kernel-check", help="Also run int8 "
                                                   "artifacts on the runtime's reference path and report kernel "
                                                   "saturation on this CPU.")] = True,
        only: _Only = [],  # noqa: B006
        device: Annotated[str | None, typer.Option(help="Run as a bundle on local, ssh://USER@HOST:PORT "
                                                   "(user and port optional) or adb:SERIAL.")] = None,
        python: Annotated[str | None, typer.Option(help="Python on the device (default: this one for "
                                                   "local, python3 elsewhere).")] = None,
        identity: Annotated[str | None, typer.Option(help="ssh: private key file.")] = None,
        ssh_option: Annotated[list[str], typer.Option(help="ssh: extra argument (repeatable), e.g. "
                                                      "--ssh-option=-oStrictHostKeyChecking=accept-new")] = [],  # noqa: B006
        results: Annotated[Path | None, typer.Option(help="Bundle only: score outputs already brought back "
                                                     "from a device (run_bundle.py --out DIR).")] = None,
        report_dir: Annotated[Path | None, typer.Option(help="Where report.* go (default: FOLDER).")] = None,
        as_json: JsonFlag = False,
    ) -> None:
        """Run every artifact in its own runtime on DATA; score it vs the fp32 reference; write report.*"""
        from edgeopt.cli.deploy_render import validation_tables
        from edgeopt.cli.render import samples_progress
        from edgeopt.core.scoring import load_custom_metric
        from edgeopt.deploy.bundle import read_bundle, run_on_device, score_bundle, write_bundle
        from edgeopt.deploy.devices import parse_device
        from edgeopt.deploy.manifest import read_manifest
        from edgeopt.deploy.report import write_report
        from edgeopt.deploy.validation import validate as run_validation

        if per_layer not in ("auto", "always", "never"):
            raise PassOptionError(f"--per-layer must be auto, always or never, got {per_layer!r}.")
        custom = load_custom_metric(custom_metric) if custom_metric else None
        is_bundle = (folder / "bundle.json").is_file()
        if is_bundle and device is None and results is None:
            raise PassOptionError(f"{folder.resolve()} is a bundle: give --device (local, ssh://host or adb:SERIAL), "
                                  "or --results DIR with outputs run_bundle.py wrote.")
        if not is_bundle and data is None:
            raise PassOptionError("validate needs --data (validation inputs), e.g. --data val.npz.")
        ref = reference or (None if is_bundle else Path(read_manifest(folder, verify=False).source))
        with samples_progress(console.err, disable=as_json) as progress:
            def on_progress(stage: str, samples: int) -> None:
                progress(f"host: {stage}", samples)

            if results is not None:
                report = score_bundle(folder, results, where=f"results in {results.resolve()}", custom=custom)
            elif device is None:
                report = run_validation(folder, data=str(data), reference=str(ref), labels=labels, metric=metric,
                                        custom=custom, batch_size=batch_size, limit=limit, warmup=warmup,
                                        per_layer=per_layer, kernel_check=kernel_check, targets=tuple(only),
                                        on_progress=on_progress)
            else:
                target_device = parse_device(device, python=python, identity=identity, ssh_options=ssh_option)
                with tempfile.TemporaryDirectory(prefix="edgeopt-bundle-") as tmp:
                    bundle = folder
                    if not is_bundle:
                        bundle = write_bundle(folder, Path(tmp) / "bundle", data=str(data), reference=str(ref),
                                              labels=labels, metric=metric, custom=custom, batch_size=batch_size,
                                              limit=limit, warmup=warmup, targets=tuple(only),
                                              on_progress=on_progress).path
                    read_bundle(bundle)
                    progress(f"running on {device}", 0)
                    report = run_on_device(bundle, target_device, custom=custom)
        written = write_report(report, report_dir or folder)
        if as_json:
            console.emit_json(report.as_dict())
        else:
            console.out.print(validation_tables(report))
            console.out.print(f"wrote {written['json']}, {written['md'].name}, {written['html'].name}")
        failed = [a for a in report.failed if a.status == "run-failed"]  # compile failures were reported then
        if failed:
            listed = ", ".join(f"{a.target} ({a.error})" for a in failed)
            console.err.print(f"[bold red]error:[/] {len(failed)} artifact(s) failed to run: {listed}.",
                                      highlight=False, soft_wrap=True)
            raise typer.Exit(1)

    @app.command()
    def bundle(
        folder: Annotated[Path, typer.Argument(help="A compile output folder.")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Bundle folder to write.")],
        data: _Data = None,
        reference: _Reference = None,
        labels: _Labels = None,
        metric: _Metric = "top1",
        batch_size: _Batch = 1,
        limit: Annotated[int, typer.Option(min=1, help="Samples the bundle carries.")] = 64,
        warmup: Annotated[int, typer.Option(min=0, help="Untimed runs on the device before timing.")] = 3,
        only: _Only = [],  # noqa: B006
        as_json: JsonFlag = False,
    ) -> None:
        """Write a self-contained folder that runs every artifact with numpy + its runtime only."""
        from edgeopt.cli.render import samples_progress
        from edgeopt.deploy.bundle import write_bundle
        from edgeopt.deploy.manifest import read_manifest

        if data is None:
            raise PassOptionError("bundle needs --data (the inputs it carries), e.g. --data val.npz.")
        ref = reference or Path(read_manifest(folder, verify=False).source)
        with samples_progress(console.err, disable=as_json) as progress:
            result = write_bundle(folder, output, data=data, reference=str(ref), labels=labels, metric=metric,
                                  batch_size=batch_size, limit=limit, warmup=warmup, targets=tuple(only),
                                  on_progress=lambda stage, n: progress(f"host: {stage}", n))
        if as_json:
            console.emit_json({"bundle": str(result.path), "host": result.host.as_dict()})
        else:
            console.out.print(f"wrote {result.path}: run it with python run_bundle.py . --out outputs "
                              f"(or edgeopt validate {output} --device ...)")
