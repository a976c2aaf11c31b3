"""Device bundles: a self-contained folder that runs every artifact with numpy + its runtime only.

Layout::

    bundle.json            what to run: per artifact its file and sha256, native I/O names, calls
    run_bundle.py          the runner (a copy of edgeopt/deploy/bundle_runner.py)
    README.md              how to run it by hand
    host_report.json       the scores of the same calls run on the host
    reference/B_K.npy      fp32 reference output K of batch B (ONNX convention)
    labels/B.npy           labels of batch B, if any
    <target>/<artifact>    the artifact
    <target>/inputs/C_K.npy    native input K of call C (encoded: renamed, NHWC, quantized)
    <target>/expected/C_K.npy  native output K of call C on the host

:func:`write_bundle` fills it from the very validation loop that scores on the
host; :func:`score_bundle` scores outputs that came back from a device with the
same scorer, so equal outputs give equal numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.core.errors import ModelLoadError, ModelSaveError
from edgeopt.core.runtime import Feeds
from edgeopt.core.scoring import CustomMetric, Scorer, percentiles_ms
from edgeopt.deploy.devices import Device
from edgeopt.deploy.manifest import sha256
from edgeopt.deploy.target_registry import get_target
from edgeopt.deploy.validation import ArtifactResult, OnProgress, ValidationReport, providers, validate

BUNDLE_FORMAT = 1
_README = """# edgeopt device bundle

Runs every artifact on this machine with numpy and the artifact's runtime only
(onnxruntime for .onnx/.ort, ai_edge_litert or tflite_runtime for .tflite):

    python run_bundle.py . --out outputs

Outputs land in outputs/<target>/<call>_<k>.npy with per-call timings in
outputs/<target>/timings.json (an artifact that cannot run here, e.g. with its
runtime missing, gets outputs/<target>/error.txt instead and the others still
run); bring the outputs folder back and score it with
`edgeopt validate BUNDLE --results outputs`, or let `edgeopt validate BUNDLE --device ...`
do all of it. expected/ holds what the host computed for the same inputs.
"""


@dataclass
class _Writer:
    """A :class:`edgeopt.deploy.validation.Recorder` that stores batches and calls as .npy files."""

    root: Path
    batch_index: int = -1
    reference_names: list[str] = field(default_factory=list)
    has_labels: bool = False
    calls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    names: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)

    def batch(self, index: int, reference: Feeds, labels: np.ndarray | None) -> None:
        self.batch_index = index
        self.reference_names = list(reference)
        for k, array in enumerate(reference.values()):
            _save(self.root / "reference" / f"{index:06d}_{k}.npy", array)
        if labels is not None:
            self.has_labels = True
            _save(self.root / "labels" / f"{index:06d}.npy", np.asarray(labels))

    def call(self, target: str, batch: int, index: int, rows: tuple[int, int], native_in: Feeds,
             native_out: Feeds) -> None:
        self.names.setdefault(target, (list(native_in), list(native_out)))
        files: dict[str, Any] = {"batch": batch, "rows": list(rows), "inputs": [], "expected": []}
        for kind, arrays in (("inputs", native_in), ("expected", native_out)):
            for k, array in enumerate(arrays.values()):
                relative = f"{target}/{kind}/{index:06d}_{k}.npy"
                _save(self.root / relative, np.asarray(array))
                files[kind].append(relative)
        self.calls.setdefault(target, []).append(files)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array, allow_pickle=False)


@dataclass(frozen=True)
class BundleResult:
    path: Path
    host: ValidationReport


def write_bundle(
    out_dir: str | os.PathLike[str],
    bundle_dir: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    labels: str | None = None,
    metric: str = "top1",
    custom: CustomMetric | None = None,
    batch_size: int = 1,
    limit: int | None = 64,
    warmup: int = 3,
    targets: tuple[str, ...] = (),
    on_progress: OnProgress | None = None,
) -> BundleResult:
    """Validate ``out_dir`` on the host and write what each call ran into a bundle folder.

    The bundle is staged beside ``bundle_dir`` and moved into place at the end.
    ``limit`` bounds the samples (a bundle carries its inputs; default 64).
    """
    dest = Path(bundle_dir).resolve()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    except OSError as e:
        raise ModelSaveError(f"{dest}: cannot create the bundle folder ({e}). Check the path is writable.") from e
    try:
        writer = _Writer(staging)
        host = validate(out_dir, data=data, reference=reference, labels=labels, metric=metric, custom=custom,
                        batch_size=batch_size, limit=limit, warmup=warmup, per_layer="never", kernel_check=False,
                        targets=targets,
                        on_progress=on_progress, recorder=writer)
        artifacts = []
        for row in host.artifacts:
            if row.status != "ok" or row.target not in writer.calls:
                continue
            assert row.file is not None
            source = Path(host.out_dir) / row.file
            file = f"{row.target}/{source.name}"
            for extra in (source, source.with_name(source.name + ".data")):
                if extra.exists():
                    shutil.copy2(extra, staging / row.target / extra.name)
            inputs, outputs = writer.names[row.target]
            artifacts.append({"target": row.target, "file": file, "sha256": sha256(staging / file),
                              "inputs": inputs, "outputs": outputs,
                              "providers": list(providers(row.device)), "runs": writer.calls[row.target]})
        spec = {"format": BUNDLE_FORMAT, "warmup": warmup, "metric": metric, "batches": writer.batch_index + 1,
                "reference_outputs": writer.reference_names, "labels": writer.has_labels, "artifacts": artifacts}
        (staging / "bundle.json").write_text(json.dumps(spec, indent=1))
        (staging / "host_report.json").write_text(json.dumps(host.as_dict(), indent=1, default=str))
        (staging / "README.md").write_text(_README)
        runner = resources.files("edgeopt.deploy") / "bundle_runner.py"
        (staging / "run_bundle.py").write_text(runner.read_text(encoding="utf-8"))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except OSError as e:
        raise ModelSaveError(f"{dest}: cannot write the bundle ({e}). Check the folder is writable.") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BundleResult(dest, host)


def read_bundle(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(bundle_dir).resolve() / "bundle.json"
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a bundle. Write one with edgeopt bundle OUT --data VAL -o BUNDLE.")
    try:
        spec: dict[str, Any] = json.loads(path.read_text())
        spec["artifacts"], spec["batches"], spec["reference_outputs"]  # noqa: B018 - the keys every reader needs
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{path}: not a readable bundle ({type(e).__name__}: {e}). Write it again with "
                             "edgeopt bundle.") from e
    return spec


def score_bundle(
    bundle_dir: str | os.PathLike[str], results: str | os.PathLike[str], *, where: str,
    custom: CustomMetric | None = None,
) -> ValidationReport:
    """Score outputs a device wrote for a bundle, exactly as the host run scored its own.

    Raises:
        ModelLoadError: the bundle or the outputs are incomplete or unreadable.
    """
    root, got = Path(bundle_dir).resolve(), Path(results).resolve()
    spec = read_bundle(root)
    try:
        return _score(root, got, spec, where, custom)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{root}: cannot score the outputs in {got} ({type(e).__name__}: "
                             f"{' '.join(str(e).split())}). Run run_bundle.py again, or write the bundle again.") from e


def _score(root: Path, got: Path, spec: dict[str, Any], where: str, custom: CustomMetric | None) -> ValidationReport:
    host = json.loads((root / "host_report.json").read_text())
    report = ValidationReport(host["out_dir"], host["reference"], host["data"], host["labels"], spec["metric"],
                              where, host["batch_size"], host["samples"])
    host_rows = {row["target"]: row for row in host["artifacts"]}
    reference_scorer = Scorer(spec["metric"], custom)
    scorers = {a["target"]: Scorer(spec["metric"], custom) for a in spec["artifacts"]}
    missing = {a["target"] for a in spec["artifacts"] if not (got / a["target"] / "timings.json").is_file()}
    for batch in range(spec["batches"]):
        expected = {name: np.load(root / "reference" / f"{batch:06d}_{k}.npy")
                    for k, name in enumerate(spec["reference_outputs"])}
        labels = np.load(root / "labels" / f"{batch:06d}.npy") if spec["labels"] else None
        reference_scorer.update(expected, expected, labels)
        for entry in spec["artifacts"]:
            if entry["target"] not in missing:
                _score_calls(root, got, entry, batch, expected, labels, scorers[entry["target"]])
    report.reference_scores = reference_scorer.result()
    for name, row in host_rows.items():
        result = ArtifactResult(**{k: v for k, v in row.items() if k not in ("scores", "per_layer", "kernel_check")})
        result.scores, result.latency_p50_ms, result.latency_p90_ms, result.matches_host = None, None, None, None
        if name in scorers and name not in missing:
            seconds = json.loads((got / name / "timings.json").read_text())["seconds"]
            result.scores, result.calls = scorers[name].result(), len(seconds)
            result.latency_p50_ms, result.latency_p90_ms = percentiles_ms(seconds)
            result.matches_host = row["scores"] is not None and _same_scores(asdict(result.scores), row["scores"])
        elif name in scorers:
            error = got / name / "error.txt"
            reason = error.read_text().strip() if error.is_file() else ""
            result.status, result.error = "run-failed", reason.partition(":")[0] if reason else "NoOutputs"
            result.message = (f"on {where}: {reason}" if reason
                              else f"no outputs came back from {where} for {name}; see the runner's log above.")
        report.artifacts.append(result)
    return report


def _same_scores(got: dict[str, Any], host: dict[str, Any]) -> bool:
    """Equal scores, NaN included (a NaN score is the same result on both sides, and JSON keeps it)."""
    return json.dumps(got, sort_keys=True) == json.dumps(host, sort_keys=True)


def _score_calls(root: Path, got: Path, entry: dict[str, Any], batch: int, expected: Feeds,
                 labels: np.ndarray | None, scorer: Scorer) -> None:
    target = get_target(entry["target"])
    artifact = root / entry["file"]
    for index, call in enumerate(entry["runs"]):
        if call["batch"] != batch:
            continue
        start, stop = call["rows"]
        native = {name: np.load(got / entry["target"] / f"{index:06d}_{k}.npy")
                  for k, name in enumerate(entry["outputs"])}
        decoded = target.decode_outputs(artifact, native)
        scorer.update({n: a[start:stop] for n, a in expected.items()}, decoded,
                      None if labels is None else labels[start:stop])


def run_on_device(bundle_dir: str | os.PathLike[str], device: Device, *,
                  custom: CustomMetric | None = None) -> ValidationReport:
    """Push a bundle to ``device``, run it there, pull the outputs back and score them."""
    root = Path(bundle_dir).resolve()
    read_bundle(root)
    with tempfile.TemporaryDirectory(prefix="edgeopt-results-") as tmp:
        results = Path(tmp) / "outputs"
        device.run_bundle(root, results)
        return score_bundle(root, results, where=device.spec, custom=custom)
