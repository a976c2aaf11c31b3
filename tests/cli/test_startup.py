"""The CLI starts light: ``--help`` loads no model library, ``inspect`` no torch, TensorFlow or onnxscript.

Each case runs in a fresh interpreter, since this test session has long imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ASSET = Path(__file__).parents[2] / "edgeopt" / "assets" / "digits_cnn.onnx"

NEVER = ("torch", "tensorflow", "onnxscript")
"""Heavy libraries that no start-up and no ``inspect`` may import (the verbs that use them import them)."""

_PROBE = """
import json, sys
from typer.testing import CliRunner
from edgeopt.cli.commands import app
result = CliRunner().invoke(app, sys.argv[1:])
assert result.exit_code == 0, result.output
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def _imported(*argv: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_help_imports_no_model_library() -> None:
    imported = _imported("--help")

    assert not imported & {*NEVER, "onnx", "onnx_ir", "onnxruntime", "numpy"}, sorted(imported)


@pytest.mark.parametrize("argv", [["inspect", str(ASSET)], ["inspect", str(ASSET), "--json"]])
def test_inspect_imports_no_torch_tensorflow_or_onnxscript(argv: list[str]) -> None:
    imported = _imported(*argv)

    assert "onnx_ir" in imported  # it did load the model
    assert not imported & set(NEVER), sorted(imported & set(NEVER))
