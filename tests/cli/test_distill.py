"""``edgeopt distill`` end to end: a pruned digits CNN trained against the shipped one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from rich.console import Console
from typer.testing import CliRunner

from edgeopt import cli
from edgeopt.cli import console
from edgeopt.cli.demo_model import DATA, ONNX_MODEL, preprocess
from edgeopt.core.runtime import run_model
from edgeopt.testing import prune_models


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(console, "out", Console(width=300))
    monkeypatch.setattr(console, "err", Console(stderr=True, width=300))
    return CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A pruned student and a folder of training digits."""
    root = tmp_path_factory.mktemp("distill")
    result = CliRunner().invoke(cli.app, ["prune", str(ONNX_MODEL), "-o", str(root / "pruned.onnx"),
                                          "--ratio", "0.5", "--no-repair"])
    assert result.exit_code == 0, result.output
    train = preprocess(np.load(DATA)["x_train"])
    (root / "data").mkdir()
    for i in range(0, len(train), 256):
        np.savez(root / "data" / f"batch_{i:04d}.npz", image=train[i:i + 256])
    return root / "pruned.onnx", root / "data"


def test_distill_prints_before_and_after_and_writes_a_model(runner: CliRunner, setup: tuple[Path, Path],
                                                            tmp_path: Path) -> None:
    student, data = setup
    out = tmp_path / "distilled.onnx"
    result = runner.invoke(cli.app, ["distill", str(student), "--teacher", str(ONNX_MODEL), "--data", str(data),
                                     "-o", str(out), "--steps", "100"])
    assert result.exit_code == 0, result.output
    assert "fidelity vs the teacher" in result.output and "'logits' on 143 held-out samples" in result.output
    assert "top-1 agreement" in result.output and "kl loss" in result.output and f"wrote {out}" in result.output
    onnx.checker.check_model(onnx.load(out), full_check=True)
    x = preprocess(np.load(DATA)["x_val"])
    assert run_model(str(out), {"image": x})["logits"].shape == (len(x), 10)


def test_distill_json(runner: CliRunner, setup: tuple[Path, Path], tmp_path: Path) -> None:
    student, data = setup
    result = runner.invoke(cli.app, ["distill", str(student), "--teacher", str(ONNX_MODEL), "--data", str(data),
                                     "-o", str(tmp_path / "d.onnx"), "--steps", "50", "--ema", "0.9", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["objective"]["metric"] == "top-1 agreement" and report["steps"] <= 50
    assert report["after"]["metric"] > report["before"]["metric"]


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    monkeypatch.setattr(console, "err", Console(stderr=True, width=300))
    monkeypatch.setattr(sys, "argv", ["edgeopt", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(("teacher", "data", "message"), [
    ("digits", "random:4 --loss hinge", "--loss must be one of auto, kl, cosine, mse, got 'hinge'."),
    ("digits", "nowhere", "calibration data not found"),
    ("attention", "random:8", "student and teacher take different inputs"),
    ("digits", "random:1", "too few samples to hold out 10%"),
    ("digits", "random:8 --augment rotate", "--augment 'rotate': expected 'auto', 'none' or a comma list"),
    ("digits", "random:20 --augment crop", "--augment crop: no input is a batch of images"),
    ("digits", "random:8 --ema 1", "--ema must be a decay in [0, 1), got 1.0."),
])
def test_bad_input_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                               setup: tuple[Path, Path], tmp_path: Path, teacher: str, data: str, message: str) -> None:
    student, _ = setup
    teacher_path = ONNX_MODEL if teacher == "digits" else tmp_path / "attention.onnx"
    ir.save(prune_models.attention(), tmp_path / "attention.onnx")
    code, said = _main(monkeypatch, capsys, "distill", str(student), "--teacher", str(teacher_path),
                       "-o", str(tmp_path / "o.onnx"), "--data", *data.split())
    assert code == 1 and message in said and len(said.strip().splitlines()) == 1, said


def test_quantize_qat_trains_the_int8_model_in_place(runner: CliRunner, setup: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    _, data = setup
    out = tmp_path / "int8.onnx"
    result = runner.invoke(cli.app, ["quantize", str(ONNX_MODEL), "-o", str(out), "--calib", str(data),
                                     "--per-tensor", "--qat", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["qat"]["output"] == str(out) and report["qat"]["objective"]["metric"] == "top-1 agreement"
    assert report["qat"]["after"]["metric"] >= report["qat"]["before"]["metric"]
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    again = runner.invoke(cli.app, ["distill", str(out), "--teacher", str(ONNX_MODEL), "--data", str(data),
                                    "-o", str(tmp_path / "again.onnx"), "--steps", "20", "--qat"])
    assert again.exit_code == 0 and "fidelity vs the teacher" in again.output, again.output


@pytest.mark.parametrize(("options", "message"), [
    ("--mode dynamic --qat --data random:8", "--qat trains static int8 (QDQ) models, not --mode dynamic"),
    ("--qat", "quantize --qat trains on sample data: give --data DIR (or --calib DIR)."),
])
def test_quantize_qat_bad_options_write_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path, options: str, message: str) -> None:
    code, said = _main(monkeypatch, capsys, "quantize", str(ONNX_MODEL), "-o", str(tmp_path / "q.onnx"),
                       *options.split())
    assert code == 1 and message in said and len(said.strip().splitlines()) == 1, said
    assert not (tmp_path / "q.onnx").exists()


def test_distill_with_labels_and_features(runner: CliRunner, setup: tuple[Path, Path], tmp_path: Path) -> None:
    student, _ = setup
    data = tmp_path / "labelled"
    data.mkdir()
    digits = np.load(DATA)
    np.savez(data / "train.npz", image=preprocess(digits["x_train"]), label=digits["y_train"].astype(np.int64))
    result = runner.invoke(cli.app, ["distill", str(student), "--teacher", str(ONNX_MODEL), "--data", str(data),
                                     "-o", str(tmp_path / "d.onnx"), "--steps", "30", "--labels", "label",
                                     "--alpha", "0.3", "--features", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["steps"] == 30 and len(report["features"]) <= 2
