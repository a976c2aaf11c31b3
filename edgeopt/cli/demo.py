"""``edgeopt demo``: the whole road on the shipped digits CNN, measured, not stored.

export (checked against torch) -> cleanup (verified after every pass) -> ORT CPU
artifact and static int8 -> weights shared to 4 values per tensor, then distilled from
the cleaned-up model on the (unlabeled) training digits to win back what sharing lost ->
accuracy, agreement with the PyTorch model, size, ops and latency of each stage on the
held-out digits -> every registered target's artifact (``compiled/``, ONNX Runtime and
TFLite for CPU, GPU and NPU, calibrated on the same digits) validated in its own runtime;
artifacts, ``summary.json`` and the validation
report go to ``out_dir``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeopt.cli import demo_model
from edgeopt.core.inspect_model import file_size, summarize
from edgeopt.core.measure import Fidelity, fidelity, median_latency_ms
from edgeopt.core.model_io import load_model, save_model
from edgeopt.core.runtime import create_session
from edgeopt.core.target import Target
from edgeopt.deploy.manifest import Manifest
from edgeopt.deploy.target_registry import get_target
from edgeopt.deploy.validation import ValidationReport
from edgeopt.exporting.torch_export import ExportReport, export
from edgeopt.pipeline.runner import Pipeline, StepResult
from edgeopt.workflow.optimize import export_target

logger = logging.getLogger(__name__)

TARGETS = ("ort-cpu",)
SHARED_CLUSTERS = 4
DISTILL_STEPS = 400
SHARED_STAGE = f"shared weights ({SHARED_CLUSTERS} values)"
DISTILLED_STAGE = "shared + distilled"


@dataclass(frozen=True)
class StageRow:
    """One line of the demo's table."""

    stage: str
    runtime: str
    path: str | None
    size_bytes: int | None
    nodes: int | None
    accuracy: float
    top1_agreement: float
    max_abs_diff: float
    sqnr_db: float
    latency_ms: float
    """Median latency of one image (batch 1)."""


@dataclass
class DemoResult:
    out_dir: Path
    export: ExportReport
    passes: list[StepResult]
    eval_samples: int
    rows: list[StageRow] = field(default_factory=list)
    manifest: Manifest | None = None
    """What ``compile`` emitted for every registered target (``out_dir/compiled``)."""
    validation: ValidationReport | None = None
    """Every compiled artifact run in its own runtime on the held-out digits."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "export": asdict(self.export),
            "passes": [asdict(s) for s in self.passes],
            "stages": [asdict(r) for r in self.rows],
            "compiled": self.manifest.as_dict() if self.manifest else None,
            "validation": self.validation.as_dict() if self.validation else None,
        }


def run_demo(
    out_dir: str | os.PathLike[str], *, on_stage: Callable[[str], None] | None = None
) -> DemoResult:
    """Run the demo, writing artifacts and ``summary.json`` into ``out_dir``."""
    say = on_stage or (lambda _: None)
    out = Path(out_dir).resolve()
    data = demo_model.load_data()
    module = demo_model.load_model()

    say("export to ONNX and check against PyTorch")
    exported = export(
        module, (torch.from_numpy(data.x_val[:1]),), out / "digits_cnn.onnx",
        input_names=[demo_model.INPUT_NAME], output_names=[demo_model.OUTPUT_NAME],
        dynamic_axes={demo_model.INPUT_NAME: {0: "batch"}, demo_model.OUTPUT_NAME: {0: "batch"}},
        optimize=False,  # the raw graph, so that edgeopt's own clean-up does the work
    )
    say("clean up (verified after every pass)")
    model = load_model(out / "digits_cnn.onnx")
    feeds = {demo_model.INPUT_NAME: data.x_train[:64]}
    cleaned = Pipeline(["cleanup"], verify=True, feeds=feeds).run(model)
    optimized = save_model(cleaned.model, out / "digits_cnn.optimized.onnx")

    artifacts: dict[str, Path] = {}
    for name in TARGETS:
        say(f"emit the {name} artifact")
        artifacts[name] = export_target(load_model(optimized), name, out / name)

    say("calibrate on the training digits and quantize to static int8")
    calibration = _write_calibration(data, out / "calibration")
    int8 = _quantize_int8(optimized, calibration, out / "int8" / "model.onnx")

    say("share weights (4 values per tensor) and distill from the cleaned-up model")
    shared, distilled = _share_and_distill(optimized, calibration, out / "shared")

    say("measure every stage on the held-out digits")
    result = DemoResult(out, exported.report, cleaned.steps, len(data.y_val))
    result.rows = _measure(module, data, out / "digits_cnn.onnx", optimized,
                           {**artifacts, "int8": int8}, {SHARED_STAGE: shared, DISTILLED_STAGE: distilled})

    result.manifest, result.validation = _compile_and_validate(optimized, calibration, data, out, say)
    _write_json(out / "summary.json", result.as_dict())
    return result


def _compile_and_validate(
    optimized: Path, calibration: Path, data: demo_model.DigitsData, out: Path, say: Callable[[str], None],
) -> tuple[Manifest, ValidationReport]:
    """Every registered target's artifact (CPU, GPU, NPU; ONNX Runtime and TFLite), validated."""
    from edgeopt.deploy.compile import compile_model
    from edgeopt.deploy.report import write_report
    from edgeopt.deploy.target_registry import list_targets
    from edgeopt.deploy.validation import validate

    compiled = compile_model(optimized, out / "compiled", targets=list_targets(), calibration=str(calibration),
                             on_target=lambda name, entry: say(f"compile: {name}") if entry is None else None)
    held_out = out / "validation.npz"
    arrays: dict[str, Any] = {demo_model.INPUT_NAME: data.x_val, "label": data.y_val.astype(np.int64)}
    np.savez(held_out, **arrays)
    say("validate every artifact in its own runtime")
    report = validate(out / "compiled", data=held_out, reference=optimized, labels="label")
    write_report(report, out / "compiled")
    return compiled.manifest, report


def _write_calibration(data: demo_model.DigitsData, folder: Path, *, batch: int = 64) -> Path:
    """Training images as .npz batches keyed by the input name (``edgeopt quantize --calib``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(data.x_train), batch):
        arrays: dict[str, Any] = {demo_model.INPUT_NAME: data.x_train[i:i + batch]}
        np.savez(folder / f"batch_{i // batch:03d}.npz", **arrays)
    return folder


def _quantize_int8(model_path: Path, calibration: Path, output: Path) -> Path:
    from edgeopt.passes import QuantizeStaticPass

    model = load_model(model_path)
    QuantizeStaticPass(calibration=str(calibration))(model)
    return save_model(model, output)


def _share_and_distill(model_path: Path, calibration: Path, folder: Path) -> tuple[Path, Path]:
    """Codebook weights (``share-weights --clusters 4``), then cluster-preserving distillation (``distill``):
    2-bit weights that lose ~1 point of accuracy, won back in a few seconds of training."""
    from edgeopt.sharing.compress import share_weights_file
    from edgeopt.training import DistillConfig, distill_file

    shared = share_weights_file(model_path, folder / "model.onnx", clusters=SHARED_CLUSTERS,
                                min_elements=256).output
    distilled = distill_file(shared, model_path, str(calibration), folder / "distilled.onnx",
                             DistillConfig(steps=DISTILL_STEPS))
    assert distilled.output is not None
    return shared, distilled.output


def _measure(
    module: torch.nn.Module, data: demo_model.DigitsData, exported: Path, optimized: Path,
    artifacts: dict[str, Path], compressed: dict[str, Path],
) -> list[StageRow]:
    def torch_run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    one = data.x_val[:1]
    rows = [_row("pytorch (source)", "torch", None, torch_run, torch_run, data,
                 functools.partial(torch_run, one))]
    stages = [("exported", "onnxruntime", exported), ("cleaned up", "onnxruntime", optimized)]
    for stage, _, path in stages:
        session = create_session(path, optimize=True)
        run = _session_fn(session)
        rows.append(_row(stage, "onnxruntime", path, run, torch_run, data, functools.partial(run, one)))
    for name, path in artifacts.items():
        session_run = _session_fn(create_session(path, optimize=True))
        if name == "int8":
            rows.append(_row("int8 (static QDQ)", "onnxruntime", path, session_run, torch_run,
                             data, functools.partial(session_run, one)))
            continue
        target = get_target(name)

        def run_target(x: np.ndarray, t: Target = target, p: Path = path) -> np.ndarray:
            return t.run(p, {demo_model.INPUT_NAME: x})[demo_model.OUTPUT_NAME]

        rows.append(_row(f"{name} artifact", target.description, path, run_target, torch_run,
                         data, functools.partial(session_run, one)))
    for stage, path in compressed.items():
        run = _session_fn(create_session(path, optimize=True))
        rows.append(_row(stage, "onnxruntime", path, run, torch_run, data, functools.partial(run, one)))
    return rows


def _session_fn(session: Any) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        return session.run([demo_model.OUTPUT_NAME], {demo_model.INPUT_NAME: x})[0]

    return run


def _row(
    stage: str, runtime: str, path: Path | None, run: Callable[[np.ndarray], np.ndarray],
    reference: Callable[[np.ndarray], np.ndarray], data: demo_model.DigitsData,
    single: Callable[[], object],
) -> StageRow:
    fid: Fidelity = fidelity(run, reference, data.x_val, data.y_val)
    nodes = summarize(load_model(path)).nodes if path else None
    return StageRow(
        stage=stage, runtime=runtime, path=str(path) if path else None,
        size_bytes=file_size(path) if path else None, nodes=nodes,
        accuracy=fid.accuracy, top1_agreement=fid.top1_agreement,
        max_abs_diff=fid.max_abs_diff, sqnr_db=fid.sqnr_db,
        latency_ms=median_latency_ms(single),
    )


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)
