"""``edgeopt drop-layers``, in-process: --plan, --count, --max-drop, --json and the error lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from edgeopt import cli
from edgeopt.core.model_io import load_model
from edgeopt.core.runtime import run_model
from edgeopt.testing.residual_models import residual_mlp


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(residual_mlp(4, identity=(1,)), path)
    return path


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.savez(folder / f"{i}.npz", x=rng.standard_normal((16, 16)).astype(np.float32))
    return folder


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(cli.app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_plan_lists_blocks_and_writes_nothing(model_path: Path, tmp_path: Path) -> None:
    before = model_path.read_bytes()
    text = _invoke("drop-layers", str(model_path), "--plan")
    assert all(f"layer{i}" in text for i in range(4))
    plan = json.loads(_invoke("drop-layers", str(model_path), "--plan", "--granularity", "block", "--json"))
    assert [(b["name"], b["start"], b["end"], b["droppable"]) for b in plan] == [
        (f"block{i}", "x" if i == 0 else f"x{i}", f"x{i + 1}", True) for i in range(4)]
    assert model_path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx"]


def test_count_drops_the_identity_block(model_path: Path, calib: Path, tmp_path: Path) -> None:
    out = tmp_path / "dropped.onnx"
    before = model_path.read_bytes()
    payload = json.loads(_invoke("drop-layers", str(model_path), "-o", str(out), "--count", "1",
                                 "--calib", str(calib), "--metric", "agreement", "--json"))
    assert payload["dropped"] == ["layer1"] and payload["score"] == 1.0
    assert payload["ranking"][0]["name"] == "layer1" and payload["ranking"][0]["impact"] == 0.0
    assert payload["after"]["parameters"] == payload["before"]["parameters"] - 2 * 16 * 16
    assert model_path.read_bytes() == before
    feeds = {"x": np.load(calib / "0.npz")["x"]}
    np.testing.assert_array_equal(run_model(load_model(out), feeds)["logits"],
                                  run_model(load_model(model_path), feeds)["logits"])
    table = _invoke("drop-layers", str(model_path), "-o", str(tmp_path / "t.onnx"), "--count", "1",
                    "--calib", str(calib), "--report")
    assert "most droppable first" in table and "wrote" in table


def test_max_drop_and_repair(model_path: Path, calib: Path, tmp_path: Path) -> None:
    out = tmp_path / "budget.onnx"
    strict = json.loads(_invoke("drop-layers", str(model_path), "-o", str(out), "--max-drop", "0",
                                "--calib", str(calib), "--json"))
    assert strict["dropped"] == ["layer1"] and strict["score"] >= 1.0 - 1e-9  # only the identity is free
    loose = json.loads(_invoke("drop-layers", str(model_path), "-o", str(out), "--max-drop", "1",
                               "--calib", str(calib), "--repair", "--json"))
    assert len(loose["dropped"]) == 4 and 0 < len(loose["steps"]) <= 10  # a cosine can drop at most 2


def test_rescore_lists_the_greedy_picks(model_path: Path, calib: Path, tmp_path: Path) -> None:
    out = tmp_path / "greedy.onnx"
    payload = json.loads(_invoke("drop-layers", str(model_path), "-o", str(out), "--count", "2", "--rescore", "3",
                                 "--calib", str(calib), "--no-repair", "--json"))  # the picks' own cosines
    picks = [p["name"] for p in payload["greedy"]]
    assert picks[0] == "layer1" and len(picks) == 2 and sorted(picks) == payload["dropped"]
    assert payload["greedy"][1]["output_cosine"] == pytest.approx(payload["score"])
    table = _invoke("drop-layers", str(model_path), "-o", str(out), "--count", "2", "--rescore", "1",
                    "--calib", str(calib))
    assert "greedy pick 2" in table


@pytest.mark.parametrize(("args", "message"), [
    (["--count", "1", "--metric", "top5"], "--metric must be cosine or agreement"),
    (["--count", "1", "--max-drop", "0.1"], "exactly one of --count K and --max-drop X"),
    (["--count", "9"], "--count 9, but 4 layer(s) can be dropped"),
    (["--max-drop", "0.1", "--rescore", "2"], "--rescore 2 needs --count K"),
])
def test_errors_are_one_line(model_path: Path, calib: Path, tmp_path: Path, args: list[str], message: str,
                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["edgeopt", "drop-layers", str(model_path), "-o", str(tmp_path / "o.onnx"), "--calib", str(calib), *args]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "o.onnx").exists()
