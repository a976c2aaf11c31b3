"""``edgeopt validate``: run every artifact of a compile folder in its own runtime and score it.

Validation data streams in batches of ``batch_size`` samples. Each batch goes
once through the fp32 reference (ONNX Runtime, graph optimizations off) and
through every artifact as the target runs it (``encode_inputs`` -> the native
runtime -> ``decode_outputs``), split into the artifact's static batch size if it
has one. Scores accumulate per batch (:mod:`edgeopt.core.scoring`); latency is the
per-call time of the native run alone, after ``warmup`` untimed calls.

The same loop writes device bundles (:mod:`edgeopt.deploy.bundle`) through a
:class:`Recorder`, so a bundle holds exactly the calls the host made.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeopt.core.cpu import detect_host_cpu
from edgeopt.core.errors import CalibrationDataError, EdgeoptError, ModelLoadError
from edgeopt.core.model_checks import check_model
from edgeopt.core.model_io import load_model
from edgeopt.core.runtime import Feeds, run_session
from edgeopt.core.scoring import CustomMetric, Scorer, Scores, percentiles_ms
from edgeopt.core.target import Target
from edgeopt.data.validation import labelled_batches
from edgeopt.deploy import bundle_runner
from edgeopt.deploy.kernel_check import KernelCheck, KernelChecker, wants_kernel_check
from edgeopt.deploy.manifest import ArtifactEntry, artifact_path, read_manifest, sha256
from edgeopt.deploy.target_registry import get_target

logger = logging.getLogger(__name__)

OnProgress = Callable[[str, int], None]
"""Called with (what is running: "reference" or a target name, samples it has done)."""


@dataclass
class ArtifactResult:
    """One artifact's line of the validation report."""

    target: str
    runtime: str
    device: str
    precision: str
    file: str | None
    size_bytes: int | None
    status: str = "ok"  # "ok" | "compile-failed" | "run-failed"
    error: str | None = None
    message: str | None = None
    scores: Scores | None = None
    latency_p50_ms: float | None = None
    latency_p90_ms: float | None = None
    calls: int = 0
    notes: list[str] = field(default_factory=list)
    per_layer: list[dict[str, Any]] | None = None
    matches_host: bool | None = None  # device runs: every score equals the host run's
    kernel_check: KernelCheck | None = None  # int8 artifacts: the kernels against the runtime's reference path


@dataclass
class ValidationReport:
    out_dir: str
    reference: str
    data: str
    labels: str | None
    metric: str
    where: str  # "host", or the device the bundle ran on
    batch_size: int
    samples: int = 0
    reference_scores: Scores | None = None
    artifacts: list[ArtifactResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def failed(self) -> list[ArtifactResult]:
        return [a for a in self.artifacts if a.status != "ok"]


class Recorder(Protocol):
    """Sees every batch and native call of a validation run (the bundle writer is one)."""

    def batch(self, index: int, reference: Feeds, labels: np.ndarray | None) -> None: ...

    def call(self, target: str, batch: int, index: int, rows: tuple[int, int], native_in: Feeds,
             native_out: Feeds) -> None: ...


@dataclass
class _Live:
    entry: ArtifactEntry
    target: Target
    path: Path
    result: ArtifactResult
    scorer: Scorer
    runner: bundle_runner.Runner | None = None
    seconds: list[float] = field(default_factory=list)
    check_kernels: bool = False
    checker: KernelChecker | None = None


def static_batch(entry: ArtifactEntry) -> int | None:
    """The artifact's fixed batch size (axis 0 of its first input), or None if dynamic."""
    dims = entry.inputs[0].shape if entry.inputs else ()
    return dims[0] if dims and isinstance(dims[0], int) else None


def result_row(entry: ArtifactEntry) -> ArtifactResult:
    failed = not entry.ok
    return ArtifactResult(entry.target, entry.runtime, entry.device, entry.precision, entry.file, entry.size_bytes,
                          status="compile-failed" if failed else "ok", error=entry.error, message=entry.message,
                          notes=list(entry.notes))


def validate(
    out_dir: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    labels: str | None = None,
    metric: str = "top1",
    custom: CustomMetric | None = None,
    batch_size: int = 1,
    limit: int | None = None,
    warmup: int = 3,
    per_layer: str = "auto",
    kernel_check: bool = True,
    targets: Sequence[str] = (),
    on_progress: OnProgress | None = None,
    recorder: Recorder | None = None,
) -> ValidationReport:
    """Score every artifact in ``out_dir`` (a compile folder) on ``data`` against ``reference``.

    Args:
        out_dir: Folder written by ``edgeopt compile`` (its manifest is checked against the files).
        data: Validation inputs: any calibration-data spec (folder/file of .npz/.npy, images, random:N).
        reference: The fp32 ONNX model the artifacts are compared with.
        labels: A ``.npy`` file or the labels' key in the ``.npz`` data; enables task accuracy.
        metric: ``top1``, ``top5``, ``cosine`` (vs the reference) or ``custom`` (with ``custom``).
        batch_size: Samples per batch (latency is per call at this batch size).
        limit: Use at most this many samples.
        warmup: Untimed calls before timing each artifact.
        per_layer: ``auto`` (quantized artifacts that diverge), ``always`` or ``never``.
        kernel_check: Also run each int8 artifact on its runtime's reference path and report kernel
            saturation (:mod:`edgeopt.deploy.kernel_check`).
        targets: Only these targets (default: every one in the manifest).
        on_progress: Called with the samples done after each batch.
        recorder: Sees every batch and call (used to write bundles).
    """
    folder = Path(out_dir).resolve()
    manifest = read_manifest(folder)
    reference_path = Path(reference).resolve()
    if reference_path == Path(manifest.source) and reference_path.is_file() \
            and sha256(reference_path) != manifest.source_sha256:
        raise ModelLoadError(f"{reference_path}: changed since edgeopt compile (its sha256 differs from the "
                             "manifest's), so it is not what the artifacts were built from. Re-run edgeopt "
                             "compile, or give --reference the model compile used.")
    reference_model = load_model(reference_path)
    check_model(reference_model)
    session = _reference_session(reference_path)
    report = ValidationReport(str(folder), str(reference_path), os.fspath(data), labels, metric, "host", batch_size)
    live = []
    for entry in manifest.artifacts:
        if targets and entry.target not in targets:
            continue
        row = result_row(entry)
        report.artifacts.append(row)
        if entry.ok:
            live.append(_Live(entry, get_target(entry.target), artifact_path(folder, entry), row,
                              Scorer(metric, custom), check_kernels=kernel_check and wants_kernel_check(entry)))
    reference_scorer = Scorer(metric, custom)
    # One pass over the data per artifact, so that only its runtime's threads are busy while it is timed
    # (interleaving sessions let one's spinning workers slow the next); the reference is recomputed.
    for art in [None, *live]:
        samples = 0
        for index, (feeds, batch_labels) in enumerate(
                labelled_batches(data, reference_model, labels=labels, batch_size=batch_size, limit=limit)):
            expected = run_session(session, feeds)
            samples += len(next(iter(feeds.values())))
            if art is None:
                reference_scorer.update(expected, expected, batch_labels)
                if recorder:
                    recorder.batch(index, expected, batch_labels)
            elif art.result.status == "ok":
                _run_batch(art, index, feeds, expected, batch_labels, warmup, recorder)
            if on_progress:
                on_progress("reference" if art is None else art.entry.target, samples)
        if art is None:
            report.samples = samples
            if not samples:
                raise CalibrationDataError(f"{data}: no validation samples. Give at least one.")
        else:
            _finish(art)
            art.runner = None  # release the session and its threads before the next artifact
    report.reference_scores = reference_scorer.result()
    for art in live:
        if art.result.status == "ok" and _wants_per_layer(art, per_layer):
            art.result.per_layer = _per_layer(art, live, reference_model, data, labels, batch_size)
    return report


def _reference_session(path: Path) -> Any:
    """ONNX Runtime, optimizations off (so it cannot hide a bad rewrite), and workers that do not spin
    after a run, so the reference never competes with the artifact being timed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_batch(art: _Live, batch: int, feeds: Feeds, expected: Feeds, labels: np.ndarray | None, warmup: int,
               recorder: Recorder | None) -> None:
    rows = len(next(iter(feeds.values())))
    step = static_batch(art.entry) or rows
    try:
        if art.runner is None:
            art.runner = native_runner(art.target, art.path)
            first = art.target.encode_inputs(art.path, {n: a[:step] for n, a in feeds.items()})
            for _ in range(warmup):
                art.runner(first)
        for start in range(0, rows - step + 1, step):
            piece = {n: a[start:start + step] for n, a in feeds.items()}
            native_in = art.target.encode_inputs(art.path, piece)
            began = time.perf_counter()
            native_out = art.runner(native_in)
            art.seconds.append(time.perf_counter() - began)
            if recorder:
                recorder.call(art.entry.target, batch, len(art.seconds) - 1, (start, start + step), native_in,
                              native_out)
            decoded = art.target.decode_outputs(art.path, native_out)
            expected_piece = {n: a[start:start + step] for n, a in expected.items()}
            art.scorer.update(expected_piece, decoded, None if labels is None else labels[start:start + step])
            _check_kernels(art, expected_piece, native_in, decoded)
        if rows % step:
            logger.warning("%s: skipped %d sample(s) that do not fill its fixed batch of %d",
                           art.entry.target, rows % step, step)
    except Exception as e:  # noqa: BLE001 - one artifact failing does not stop the others
        if not isinstance(e, EdgeoptError):
            logger.debug("%s failed while running", art.entry.target, exc_info=True)
        art.result.status, art.result.error = "run-failed", type(e).__name__
        art.result.message = " ".join(str(e).split()) or type(e).__name__


def _check_kernels(art: _Live, expected: Feeds, native_in: Feeds, decoded: Feeds) -> None:
    """Run the same call on the reference path; a failure there is a note, not a failed artifact."""
    if not art.check_kernels:
        return
    try:
        if art.checker is None:
            art.checker = KernelChecker(art.entry, art.target, art.path)
        art.checker.update(expected, native_in, decoded)
    except Exception as e:  # noqa: BLE001 - the check is a diagnosis; the artifact's own run succeeded
        art.check_kernels, art.checker = False, None
        art.result.notes.append(f"kernel check failed: {type(e).__name__}: {' '.join(str(e).split())}")


def native_runner(target: Target, artifact: Path) -> bundle_runner.Runner:
    """The target's own loaded runner if it offers one (optional ``load_native(artifact)``), else the
    bundle runner's (the code that runs on devices). Both load the artifact once, so latency is the
    runtime's, not session creation.
    """
    load = getattr(target, "load_native", None)
    if callable(load):
        return load(artifact)  # type: ignore[no-any-return]
    return bundle_runner.load(artifact, providers(target.device))


def providers(device: str) -> tuple[str, ...]:
    """ONNX Runtime providers to try for a target's device (GPU: CUDA first, as ``ort-gpu`` runs)."""
    return bundle_runner.GPU_PROVIDERS if device == "gpu" else ("CPUExecutionProvider",)


def _finish(art: _Live) -> None:
    art.result.calls = len(art.seconds)
    if art.result.status == "ok":
        art.result.scores = art.scorer.result()
        art.result.latency_p50_ms, art.result.latency_p90_ms = percentiles_ms(art.seconds)
        if art.checker is not None:
            check = art.result.kernel_check = art.checker.result(art.result.scores)
            art.result.notes.append(check.message)
            if check.saturated:
                logger.warning("%s: %s", art.entry.target, check.message)
        host = detect_host_cpu().family
        if art.entry.cpu is not None and art.entry.cpu != host:
            why = ("its uint8 weights run ORT's u8 x u8 kernels, which do not use VNNI: slower here than an "
                   "artifact built for this CPU" if art.entry.cpu == "x86-avx2" else
                   "its full-range int8 weights can saturate this CPU's kernels (see the kernel check)")
            art.result.notes.append(f"built for {art.entry.cpu}, measured on {host}: {why}; compile with "
                                    f"--cpu {host} for this machine")
    art.checker = None  # release the reference session


def _wants_per_layer(art: _Live, policy: str) -> bool:
    if policy == "never" or art.entry.precision in ("fp32", "fp16"):
        return False
    if policy == "always":
        return True
    scores = art.result.scores
    assert scores is not None
    return scores.cosine < 0.999 or (scores.top1_agreement is not None and scores.top1_agreement < 1.0)


def _per_layer(art: _Live, live: list[_Live], reference_model: Any, data: str | os.PathLike[str],
               labels: str | None, batch_size: int, samples: int = 32) -> list[dict[str, Any]] | None:
    """Nodes ranked by the error they introduce.

    ONNX artifacts are compared with the fp32 reference (:func:`edgeopt.quantization.analysis.sensitivity`);
    TFLite artifacts with the fp32 TFLite artifact of the same compile (:mod:`edgeopt.deploy.tflite_layers`).
    """
    step = static_batch(art.entry) or batch_size
    feeds = (f for f, _ in labelled_batches(data, reference_model, labels=labels, batch_size=step, limit=samples))
    try:
        if art.entry.runtime == "onnxruntime" and art.path.suffix == ".onnx":
            from edgeopt.quantization.analysis import sensitivity

            return [asdict(node) for node in sensitivity(reference_model, load_model(art.path), feeds)[:10]]
        floats = [a for a in live if a.entry.runtime == art.entry.runtime == "litert" and a.entry.precision == "fp32"
                  and a.result.status == "ok"]
        if not floats:
            art.result.notes.append("per-layer comparison needs the fp32 artifact of the same runtime: compile "
                                    "tflite-cpu too")
            return None
        from edgeopt.deploy.tflite_layers import compare_layers

        ref = floats[0]
        pairs = ((ref.target.encode_inputs(ref.path, f), art.target.encode_inputs(art.path, f)) for f in feeds)
        rows = compare_layers(ref.path, art.path, pairs)
        art.result.notes.append(f"per-layer comparison against {ref.entry.target} (same conversion)")
        return rows
    except Exception as e:  # noqa: BLE001 - a best-effort diagnosis must not fail the validation
        art.result.notes.append(f"per-layer comparison failed: {type(e).__name__}: {' '.join(str(e).split())}")
        return None
