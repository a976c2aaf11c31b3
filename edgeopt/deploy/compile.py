"""``edgeopt compile``: one cleaned-up model -> every selected target's artifact + a manifest.

Each target gets its own copy of the model, runs its ``prepare()`` passes, is
checked, and exports into ``OUT/<target>/`` (staged in a temporary folder and
moved into place, so a failed export leaves nothing half-written); the artifact
then runs once in its own runtime (on the first calibration sample, else on random
inputs) before it counts as built. A target
that fails is recorded in the manifest with its error class and message, its
folder (say, from an earlier compile) is removed, and the others go on.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx_ir as ir

from edgeopt.core.cpu import resolve_cpu
from edgeopt.core.errors import CalibrationDataError, ConversionError, EdgeoptError, ModelSaveError, PassOptionError
from edgeopt.core.model_checks import check_model
from edgeopt.core.model_io import load_model
from edgeopt.core.runtime import Feeds, model_inputs, random_feeds
from edgeopt.core.target import Target, raise_for_issues
from edgeopt.data.readers import CalibrationReader, batches, check_feeds, open_reader
from edgeopt.deploy.manifest import ArtifactEntry, Manifest, sha256, write_manifest
from edgeopt.deploy.target_registry import get_target, list_targets
from edgeopt.pipeline.runner import Pipeline

logger = logging.getLogger(__name__)

RUNTIMES = {"ort": "onnxruntime", "onnxruntime": "onnxruntime", "tflite": "litert", "litert": "litert"}
DEVICES = ("cpu", "gpu", "npu")

OnTarget = Callable[[str, ArtifactEntry | None], None]
"""Called with (target name, None) before a target starts and (name, entry) when it ends."""


@dataclass(frozen=True)
class CompileResult:
    out_dir: Path
    manifest_path: Path
    manifest: Manifest


def select_targets(
    devices: Sequence[str] = DEVICES, runtimes: Sequence[str] = ("ort", "tflite"), names: Sequence[str] = ()
) -> list[str]:
    """Registered targets whose ``device`` and ``runtime`` are listed, or exactly ``names`` if given.

    Raises:
        PassOptionError: an unknown device, runtime or target name, or nothing selected.
    """
    if names:
        for name in names:
            get_target(name)  # unknown names fail with close matches
        return list(dict.fromkeys(names))
    for device in devices:
        if device not in DEVICES:
            raise PassOptionError(f"unknown device '{device}'. Use a comma-separated list of {', '.join(DEVICES)}.")
    wanted = set()
    for runtime in runtimes:
        if runtime not in RUNTIMES:
            raise PassOptionError(f"unknown runtime '{runtime}'. Use a comma-separated list of ort, tflite.")
        wanted.add(RUNTIMES[runtime])
    chosen = [n for n in list_targets() if (t := get_target(n)).device in devices and t.runtime in wanted]
    if not chosen:
        raise PassOptionError(
            f"no registered target runs on {','.join(devices)} with {','.join(runtimes)}. "
            f"Registered: {', '.join(list_targets())}."
        )
    return chosen


def compile_model(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    targets: Sequence[str],
    calibration: str | os.PathLike[str] | CalibrationReader | None = None,
    cleanup: bool = True,
    cpu: str = "auto",
    on_target: OnTarget | None = None,
) -> CompileResult:
    """Emit each target's artifact from ``model_path`` into ``out_dir`` and write ``manifest.json``.

    Args:
        model_path: The source ONNX model (never modified).
        out_dir: Output folder; each target writes ``out_dir/<target>/``.
        targets: Target names (see :func:`select_targets`).
        calibration: A calibration spec for :func:`edgeopt.data.readers.open_reader`, or a reader;
            targets that need calibration fail with ``CalibrationDataError`` without it.
        cleanup: Run the ``cleanup`` preset once before the targets' own preparation.
        cpu: The CPU family int8 CPU targets are built for: ``auto`` (this machine), ``x86-avx2``,
            ``x86-vnni`` or ``arm64`` (:mod:`edgeopt.core.cpu`); recorded in the manifest.
        on_target: Progress callback.
    """
    resolve_cpu(cpu)  # an unknown family fails before any work
    chosen = [get_target(name, cpu=cpu) for name in targets]
    source = Path(model_path).resolve()
    out = Path(out_dir).resolve()
    model = load_model(source)
    check_model(model)
    if cleanup:
        model = Pipeline(["cleanup"]).run(model).model
    reader, described = _reader(calibration, model)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()  # writable, before any target runs
    except OSError as e:
        raise ModelSaveError(f"{out}: cannot create the output folder ({e}). Check the path is writable.") from e
    smoke = _smoke_feeds(model, reader)
    entries = []
    for target in chosen:
        if on_target:
            on_target(target.name, None)
        entry = _compile_one(target, model, out, reader, smoke)
        entries.append(entry)
        if on_target:
            on_target(target.name, entry)
    manifest = Manifest(str(source), sha256(source), described, tuple(entries))
    return CompileResult(out, write_manifest(manifest, out), manifest)


def _reader(
    calibration: str | os.PathLike[str] | CalibrationReader | None, model: ir.Model
) -> tuple[CalibrationReader | None, str | None]:
    if calibration is None:
        return None, None
    if isinstance(calibration, str | os.PathLike):
        spec = os.fspath(calibration)
        described = spec if spec.startswith("random:") else str(Path(spec).resolve())
        reader = open_reader(calibration, model)
        first = next(iter(reader), None)  # data that does not fit fails before any target
        if first is None:
            raise CalibrationDataError(f"{described}: the calibration data holds no sample. Give at least one.")
        check_feeds(model, first, check_axis0=False)  # the targets re-batch it
        return reader, described
    return calibration, f"{type(calibration).__name__} (in-process reader)"


def _smoke_feeds(model: ir.Model, reader: CalibrationReader | None) -> Feeds | None:
    """One batch to run each artifact once (the model's fixed batch size, else 1): from ``reader``, else
    random; None (logged) if neither can be made."""
    static = {v.shape[0] for v in model_inputs(model) if v.shape and isinstance(v.shape[0], int)}
    try:
        first = None if reader is None else \
            next(iter(batches(reader, model, batch_size=static.pop() if len(static) == 1 else 1)), None)
        if first is not None:
            return first
    except CalibrationDataError as e:  # data the targets read their own way (no sample axis): random instead
        logger.debug("compile: random inputs for the run after export: %s", e)
    try:
        return random_feeds(model)
    except CalibrationDataError as e:
        logger.warning("compile: artifacts are not run once after export: %s", e)
        return None


def _run_once(target: Target, artifact: Path, feeds: Feeds | None) -> None:
    """Run ``artifact`` in its runtime once, so that one it cannot load or run is never recorded as built."""
    if feeds is None:
        return
    try:
        target.run(artifact, feeds)
    except Exception as e:  # noqa: BLE001 - every runtime raises its own classes
        first = next(iter(str(e).strip().splitlines()), type(e).__name__)
        raise ConversionError(f"the {target.runtime} artifact was written but does not run ({first}). "
                              f"List what {target.name} cannot run with edgeopt check MODEL -t {target.name}, "
                              "or report it.") from e


def _compile_one(
    target: Target, model: ir.Model, out: Path, reader: CalibrationReader | None, smoke: Feeds | None
) -> ArtifactEntry:
    start = time.perf_counter()
    base = (target.name, target.runtime, target.device, target.precision)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=out))
    try:
        prepared = model.clone()
        target.prepare()(prepared)
        raise_for_issues(target.name, target.check(prepared))
        produced = Path(target.export(prepared, staging, calibration=reader)).resolve()
        relative = produced.relative_to(staging)
        final_dir = out / target.name
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(staging, final_dir)
        artifact = final_dir / relative
        _run_once(target, artifact, smoke)
        signature = target.signature(artifact)
        notes = tuple(getattr(target, "notes", lambda _: [])(artifact))
        logger.info("compile: %s -> %s", target.name, artifact)
        return ArtifactEntry(*base, file=str(artifact.relative_to(out)), size_bytes=artifact.stat().st_size,
                             sha256=sha256(artifact), inputs=signature.inputs, outputs=signature.outputs,
                             notes=notes, seconds=round(time.perf_counter() - start, 3),
                             cpu=getattr(target, "cpu_family", None))
    except Exception as e:  # noqa: BLE001 - one target's failure is recorded; the others go on
        if not isinstance(e, EdgeoptError):
            logger.debug("target %s failed unexpectedly", target.name, exc_info=True)
        message = " ".join(str(e).split()) or type(e).__name__
        # no artifact may sit beside a manifest that says the target failed (an earlier run's, or this one's)
        shutil.rmtree(out / target.name, ignore_errors=True)
        return ArtifactEntry(*base, error=type(e).__name__, message=message,
                             seconds=round(time.perf_counter() - start, 3))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
