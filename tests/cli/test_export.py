"""``edgeopt export``, in-process: the three file/factory sources, --json, --atol and the error lines."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from edgeopt import cli
from edgeopt.cli import console
from edgeopt.core.runtime import run_model
from edgeopt.exporting.sources import load_source

FACTORY = """
import torch


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).softmax(-1)


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    return Net().eval()
"""


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CliRunner whose rich consoles are wide enough that no line wraps."""
    monkeypatch.setattr(console, "out", Console(width=300))
    monkeypatch.setattr(console, "err", Console(stderr=True, width=300))
    return CliRunner()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A current folder holding the package ``clinets`` (a factory is imported from the current folder)."""
    (tmp_path / "clinets").mkdir()
    (tmp_path / "clinets" / "__init__.py").write_text("")
    (tmp_path / "clinets" / "mlp.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.chdir(tmp_path)
    for name in ("clinets", "clinets.mlp"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    return tmp_path


def _module() -> torch.nn.Module:
    return load_source("clinets.mlp:build").module  # imported from the current folder


def _invoke(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(cli.app, ["export", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _check(path: Path, module: torch.nn.Module, x: torch.Tensor) -> None:
    onnx.checker.check_model(onnx.load(path), full_check=True)
    name = onnx.load(path).graph.input[0].name
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(next(iter(run_model(path, {name: x.numpy()}).values())), expected,
                               rtol=1e-4, atol=1e-6)


def test_factory_from_current_folder(runner: CliRunner, workdir: Path) -> None:
    text = _invoke(runner, "clinets.mlp:build", "-o", "out/mlp.onnx", "--input", "x:batchx16:float32")
    assert "with dynamo, opset 18" in text and "inputs: x[batch,16]" in text and "fallback" not in text
    error = re.search(r"max abs error vs torch \(3 input sets\): \S+ (\S+)", text)
    assert error is not None and float(error.group(1)) < 1e-5
    assert re.search(r"nodes: \d+, size: [\d.]+ KB", text)
    _check(workdir / "out" / "mlp.onnx", _module(), torch.randn(7, 16))


def test_torchscript_file_prints_the_fallback_reason(runner: CliRunner, workdir: Path) -> None:
    module = _module()
    torch.jit.save(torch.jit.trace(module, torch.randn(2, 16)), workdir / "mlp.ts")
    text = _invoke(runner, "mlp.ts", "-o", "mlp.onnx", "--input", "x:2x16", "--dynamic", "x:0:batch",
                   "--opset", "17")
    assert "(torchscript) with torchscript, opset 17" in text
    assert "fallback: a TorchScript module (torch.jit) exports only with the TorchScript exporter" in text
    _check(workdir / "mlp.onnx", module, torch.randn(5, 16))


def test_exported_program_json(runner: CliRunner, workdir: Path) -> None:
    module = _module()
    torch.export.save(torch.export.export(module, (torch.randn(3, 16),)), workdir / "mlp.pt2")
    payload = json.loads(_invoke(runner, "mlp.pt2", "-o", "mlp.onnx", "--json"))
    assert (payload["kind"], payload["exporter"], payload["fallback_reason"]) == ("exported-program", "dynamo", None)
    assert payload["inputs"] == {"x": [3, 16]} and payload["checks"] == 3
    assert 0 < payload["max_abs"] < 1e-5 and list(payload["output_errors"].values()) == [payload["max_abs"]]
    assert payload["size"] == (workdir / "mlp.onnx").stat().st_size
    _check(workdir / "mlp.onnx", module, torch.randn(3, 16))


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    monkeypatch.setattr(console, "err", Console(stderr=True, width=300))
    monkeypatch.setattr(sys, "argv", ["edgeopt", "export", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_atol_fails_and_leaves_no_output(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         workdir: Path) -> None:
    code, err = _main(monkeypatch, capsys, "clinets.mlp:build", "-o", "mlp.onnx", "--input", "x:4x16",
                      "--atol", "1e-15")
    assert code == 1 and "exceeds atol 1e-15" in err and "nothing was written" in err
    assert len(err.strip().splitlines()) == 1 and not (workdir / "mlp.onnx").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["missing.pt2"], "missing.pt2: does not exist. SOURCE is"),
    (["clinets.mlp:build", "--input", "x:4by16"], "--input 'x:4by16': dimension 0 is '4by16'"),
    (["clinets.mlp:nothing"], "clinets.mlp:nothing: module 'clinets.mlp'"),
    (["nopkg.models:build"], "cannot import 'nopkg.models' (ModuleNotFoundError: No module named 'nopkg')"),
    (["clinets.mlp:build"], "carries no example inputs; give them: --input NAME:DIMS:DTYPE"),
    (["clinets.mlp:build", "--input", "x:2x16", "--dynamic", "y:0"], "--dynamic 'y:0': no input named 'y'"),
    (["clinets.mlp:build", "--input", "x:2x16", "--exporter", "jit"], "unknown exporter 'jit'"),
])
def test_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], workdir: Path,
                             args: list[str], message: str) -> None:
    code, err = _main(monkeypatch, capsys, args[0], "-o", "o.onnx", *args[1:])
    assert code == 1 and message in " ".join(err.split()), err
    assert len(err.strip().splitlines()) == 1 and not (workdir / "o.onnx").exists()


def test_huggingface_folder_needs_the_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                            workdir: Path) -> None:
    (workdir / "bert").mkdir()
    (workdir / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    monkeypatch.setitem(sys.modules, "transformers", None)
    code, err = _main(monkeypatch, capsys, "bert", "-o", "o.onnx")
    assert code == 1 and "needs transformers. Install it: pip install 'edgeopt[hf]'" in err
