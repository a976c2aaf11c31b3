"""The examples in README.md and docs/ run as written.

Each ``edgeopt ...`` line of a ``bash`` block (after the two set-up commands)
runs as a real command, each ``yaml`` block whose first line is ``# <file>`` is
written to that file, and each ``python`` block is executed; all in a scratch
folder where ``edgeopt/assets`` points at the shipped assets.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from edgeopt.cli.demo_model import ASSETS

ROOT = Path(__file__).resolve().parents[2]
EDGEOPT = Path(sys.executable).with_name("edgeopt")
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _blocks(path: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(path.read_text())]


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "edgeopt").mkdir()
    (tmp_path / "edgeopt" / "assets").symlink_to(ASSETS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_blocks(blocks: list[tuple[str, str]], cwd: Path) -> int:
    namespace: dict[str, object] = {"__name__": "docs_example"}
    ran = 0
    for language, text in blocks:
        if language == "yaml" and text.startswith("# "):
            (cwd / text.splitlines()[0][2:].strip()).write_text(text)
        elif language == "bash":
            for line in text.splitlines():
                if line.startswith("edgeopt "):
                    args = shlex.split(line)[1:]
                    done = subprocess.run([str(EDGEOPT), *args], cwd=cwd, capture_output=True,
                                          text=True, timeout=300)
                    assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
                    ran += 1
        elif language == "python":
            exec(compile(text, "<docs>", "exec"), namespace)  # noqa: S102 - the docs' own code
            ran += 1
    return ran


def test_readme_opens_with_the_two_commands() -> None:
    blocks = _blocks(ROOT / "README.md")
    assert blocks[0][1].strip().endswith(
        "pip install -e \".[all]\" && pip install --no-deps onnx2tf==1.29.24 && edgeopt demo")
    assert "pytest" in blocks[1][1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1][1].strip().split("&& ", 1)[1] in ci, "CI must run the README's test command"


def test_readme_examples_run(scratch: Path) -> None:
    blocks = _blocks(ROOT / "README.md")[2:]  # the set-up and test commands run in CI itself
    assert _run_blocks(blocks, scratch) >= 10
    assert (scratch / "out" / "recipe" / "ort-cpu" / "model.onnx").is_file()
    assert (scratch / "out" / "api.optimized.onnx").is_file()


@pytest.mark.parametrize("doc", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_docs_examples_run(doc: Path, scratch: Path) -> None:
    assert _run_blocks(_blocks(doc), scratch) >= 1
