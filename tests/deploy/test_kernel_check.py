"""validate's kernel check: int8 artifacts on the host's kernels against the runtime's reference path.

A Conv built to saturate x86 kernels without VNNI is compiled twice, for ``x86-vnni``
(full-range int8 weights) and ``x86-avx2`` (uint8 weights). On every CPU the
``x86-avx2`` artifact passes the check; the ``x86-vnni`` one is reported as
saturated exactly where this CPU's kernels saturate (``ort_u8s8_saturates()``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from edgeopt.cli import app, console
from edgeopt.core.cpu import detect_host_cpu, ort_u8s8_saturates
from edgeopt.core.model_io import save_model
from edgeopt.core.scoring import Scorer
from edgeopt.deploy.compile import compile_model
from edgeopt.deploy.kernel_check import GAP_DB, KernelChecker
from edgeopt.deploy.manifest import read_manifest
from edgeopt.deploy.report import write_report
from edgeopt.deploy.target_registry import get_target
from edgeopt.deploy.validation import validate
from edgeopt.testing.saturating_models import large_positive_feeds, saturating_conv


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kernel_check")
    model = saturating_conv()
    save_model(model, root / "model.onnx")
    feeds = large_positive_feeds(model, batches=6, rows=4)
    np.savez(root / "calib.npz", x=np.concatenate([f["x"] for f in feeds[:4]]))
    np.savez(root / "val.npz", x=np.concatenate([f["x"] for f in feeds[4:]]))
    for cpu in ("x86-vnni", "x86-avx2"):
        compile_model(root / "model.onnx", root / cpu, targets=["ort-cpu-int8"], calibration=root / "calib.npz",
                      cpu=cpu)
    return {"root": root, "x86-vnni": root / "x86-vnni", "x86-avx2": root / "x86-avx2"}


def _validate(folder: Path, root: Path):  # noqa: ANN202 - a ValidationReport
    return validate(folder, data=root / "val.npz", reference=root / "model.onnx", metric="cosine", warmup=0)


def test_manifest_and_artifact_record_the_cpu_family(folders: dict[str, Path]) -> None:
    for cpu in ("x86-vnni", "x86-avx2"):
        entry = read_manifest(folders[cpu]).artifacts[0]
        assert entry.cpu == cpu
        proto = onnx.load(str(folders[cpu] / entry.file))  # type: ignore[operator]
        assert {p.key: p.value for p in proto.metadata_props}["edgeopt.cpu"] == cpu
        weights = {i.name: i.data_type for i in proto.graph.initializer if i.name in ("W_quantized", "W_quantized_u8")}
        expected = onnx.TensorProto.UINT8 if cpu == "x86-avx2" else onnx.TensorProto.INT8
        assert list(weights.values()) == [expected], weights
        assert any(cpu in note for note in entry.notes)


def test_x86_avx2_artifact_passes_the_check_on_every_cpu(folders: dict[str, Path]) -> None:
    row = _validate(folders["x86-avx2"], folders["root"]).artifacts[0]
    check = row.kernel_check
    assert check is not None and check.reference == "QDQ simulation (graph optimizations off)"
    assert not check.saturated and abs(check.gap_db) < GAP_DB
    assert check.kernel_sqnr_db == pytest.approx(row.scores.sqnr_db)  # type: ignore[union-attr]
    assert check.reference_sqnr_db > 30  # 8-bit weights and activations on one Conv


def test_full_range_int8_artifact_is_reported_where_the_cpu_saturates(folders: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    report = _validate(folders["x86-vnni"], folders["root"])
    check = report.artifacts[0].kernel_check
    assert check is not None
    assert check.saturated is ort_u8s8_saturates()
    if check.saturated:
        assert check.gap_db > 10
        assert f"recompile with --cpu {detect_host_cpu().family}" in check.message
    else:
        assert abs(check.gap_db) < GAP_DB and "match" in check.message
    written = write_report(report, tmp_path)
    saved = json.loads(written["json"].read_text())["artifacts"][0]["kernel_check"]
    assert saved["saturated"] is check.saturated and saved["gap_db"] == pytest.approx(check.gap_db)
    assert ("SATURATE" in written["md"].read_text()) is check.saturated


def test_a_kernel_that_loses_precision_is_reported(folders: dict[str, Path]) -> None:
    """What saturation does to outputs (a wrong value clipped into range), fed to the checker as the
    kernels' result: the real reference path runs, and the gap is reported with its fix."""
    folder = folders["x86-avx2"]
    entry = read_manifest(folder).artifacts[0]
    target = get_target(entry.target)
    path = folder / entry.file  # type: ignore[operator]
    checker = KernelChecker(entry, target, path)
    kernels = Scorer("top1")
    for batch in large_positive_feeds(saturating_conv(), batches=2, seed=3):
        expected = target.run(path, batch)  # close to fp32; the checker only needs a fixed reference here
        reference_model_out = {"y": expected["y"]}
        wrong = {"y": np.clip(expected["y"], -0.5 * np.abs(expected["y"]).max(), None)}
        checker.update(reference_model_out, batch, wrong)
        kernels.update(reference_model_out, wrong, None)
    check = checker.result(kernels.result())
    assert check.saturated and check.gap_db > 10
    assert "kernel saturation on this CPU" in check.message and "Fix:" in check.message


def test_no_kernel_check_when_switched_off(folders: dict[str, Path]) -> None:
    report = validate(folders["x86-avx2"], data=folders["root"] / "val.npz", reference=folders["root"] / "model.onnx",
                      metric="cosine", warmup=0, kernel_check=False)
    assert report.artifacts[0].kernel_check is None


def test_cli_reports_the_check(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "out", Console(width=200))
    args = ["validate", str(folders["x86-vnni"]), "--data", str(folders["root"] / "val.npz"), "--metric", "cosine"]
    payload = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    check = payload["artifacts"][0]["kernel_check"]
    assert check["saturated"] is ort_u8s8_saturates()
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0, table.output
    assert ("kernel saturation on this CPU" in table.stdout) is check["saturated"]


def test_an_artifact_for_another_family_says_so(folders: dict[str, Path]) -> None:
    host = detect_host_cpu().family
    for cpu in ("x86-vnni", "x86-avx2"):
        notes = _validate(folders[cpu], folders["root"]).artifacts[0].notes
        mismatch = [n for n in notes if n.startswith(f"built for {cpu}, measured on {host}")]
        assert len(mismatch) == (cpu != host), notes
