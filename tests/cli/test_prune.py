"""Tests for ``edgeopt prune`` on the shipped digits CNN (trained, so accuracy can be measured)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from edgeopt import cli
from edgeopt.cli import console
from edgeopt.cli.demo_model import DATA, ONNX_MODEL, preprocess
from edgeopt.core.runtime import run_model


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CliRunner whose rich consoles are wide enough that no cell wraps."""
    monkeypatch.setattr(console, "out", Console(width=300))
    monkeypatch.setattr(console, "err", Console(stderr=True, width=300))
    return CliRunner()


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A folder of calibration batches (training images) and the validation split."""
    data = np.load(DATA)
    folder = tmp_path_factory.mktemp("calib")
    train = preprocess(data["x_train"])
    for i in range(0, 512, 128):
        np.savez(folder / f"batch_{i:04d}.npz", image=train[i:i + 128])
    return folder, preprocess(data["x_val"]), data["y_val"]


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    return float((run_model(str(path), {"image": x})["logits"].argmax(1) == y).mean())


def test_plan_prints_groups_and_writes_nothing(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["prune", str(ONNX_MODEL), "--plan", "--ratio", "0.5"])
    assert result.exit_code == 0, result.output
    assert "16 -> 8" in result.output and "32 -> 16" in result.output
    assert "reaches graph output 'logits'" in result.output
    assert list(tmp_path.iterdir()) == []


def test_prune_with_repair_recovers_accuracy(runner: CliRunner, tmp_path: Path,
                                             digits: tuple[Path, np.ndarray, np.ndarray]) -> None:
    calib, x, y = digits
    accuracy = {"original": _accuracy(ONNX_MODEL, x, y)}
    for name, extra in (("pruned", []), ("repaired", ["--repair", "--calib", str(calib)])):
        out = tmp_path / f"{name}.onnx"
        result = runner.invoke(cli.app, ["prune", str(ONNX_MODEL), "-o", str(out), "--ratio", "0.5", *extra])
        assert result.exit_code == 0, result.output
        onnx.checker.check_model(str(out), full_check=True)
        accuracy[name] = _accuracy(out, x, y)
    shapes = {t.name: tuple(t.dims) for t in onnx.load(str(tmp_path / "repaired.onnx")).graph.initializer}
    assert shapes["features.0.weight"] == (8, 1, 3, 3) and shapes["classifier.2.weight"] == (10, 256)
    lost = accuracy["original"] - accuracy["pruned"]
    assert lost > 0.05, accuracy  # at 50% this small CNN does lose accuracy...
    assert accuracy["original"] - accuracy["repaired"] < lost / 2, accuracy  # ...and repair wins back over half


def test_json_and_unstructured(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "sparse.onnx"
    result = runner.invoke(cli.app, ["prune", str(ONNX_MODEL), "-o", str(out), "--unstructured", "--ratio", "0.6",
                                     "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["sparsity"] == pytest.approx(0.6, abs=0.02)
    assert payload["zipped_after"] < 0.8 * payload["zipped_before"]
    assert payload["after"]["parameters"] == payload["before"]["parameters"]


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    monkeypatch.setattr(console, "err", Console(stderr=True, width=300))
    monkeypatch.setattr(sys, "argv", ["edgeopt", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                             tmp_path: Path) -> None:
    code, message = _main(monkeypatch, capsys, "prune", str(ONNX_MODEL), "-o", str(tmp_path / "o.onnx"),
                          "--criterion", "activation")
    assert code == 1 and "pass --calib DATA" in message and len(message.strip().splitlines()) == 1
    code, message = _main(monkeypatch, capsys, "prune", str(ONNX_MODEL), "--criterion", "l3", "-o", "x.onnx")
    assert code == 1 and "--criterion must be one of auto, l1, l2, bn, activation" in message
    code, _ = _main(monkeypatch, capsys, "prune", str(ONNX_MODEL))
    assert code == 2


def test_plan_lists_attention_heads_and_kinds_heads_prunes_them(runner: CliRunner, tmp_path: Path) -> None:
    from edgeopt.core.model_io import save_model
    from edgeopt.testing.prune_models import attention

    path = save_model(attention(zero=(0, 1)), tmp_path / "attn.onnx")
    planned = runner.invoke(cli.app, ["prune", str(path), "--plan", "--ratio", "0.5"])
    assert planned.exit_code == 0, planned.output
    assert "4 -> 2 heads (4)" in planned.output
    result = runner.invoke(cli.app, ["prune", str(path), "-o", str(tmp_path / "out.onnx"), "--ratio", "0.5",
                                     "--kinds", "heads", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["plan"]["groups"]
    assert [(r["size"], r["keep"], r["head_dim"]) for r in rows if r["head_dim"]] == [(4, 2, 4)]
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 16)).astype(np.float32)}
    np.testing.assert_allclose(run_model(str(tmp_path / "out.onnx"), feeds)["y"], run_model(str(path), feeds)["y"],
                               rtol=1e-5, atol=1e-5)
    weights = {t.name: list(t.dims) for t in onnx.load(tmp_path / "out.onnx").graph.initializer}
    assert weights["wq"] == [16, 8] and weights["wo"] == [8, 16]
