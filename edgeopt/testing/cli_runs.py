"""Run the ``edgeopt`` command line in-process the way a user's shell would, for tests."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich.console import Console

from edgeopt import cli
from edgeopt.cli import console

if TYPE_CHECKING:
    import pytest


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
             argv: list[str]) -> tuple[int, str, str]:
    """``edgeopt ARGV`` through ``cli.main`` (its error handling included), with wide consoles:
    the exit code, stdout and stderr."""
    monkeypatch.setattr(console, "out", Console(width=300))
    monkeypatch.setattr(console, "err", Console(stderr=True, width=300))
    monkeypatch.setattr(sys, "argv", ["edgeopt", *argv])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


__all__ = ["run_main"]
