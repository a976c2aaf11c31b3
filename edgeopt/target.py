"""What a target backend is: the interface every entry of ``edgeopt.targets`` implements."""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import onnx_ir as ir

from edgeopt.calib_data import CalibrationReader
from edgeopt.errors import PassOptionError, UnsupportedOpError
from edgeopt.runtime import Feeds


@dataclass(frozen=True)
class Issue:
    """One thing in a model that a target cannot run."""

    node: str
    op: str
    message: str
    hint: str

    def __str__(self) -> str:
        return f"node '{self.node}' ({self.op}): {self.message}. {self.hint}"


class Target(Protocol):
    """A runtime + device pair that edgeopt emits and validates artifacts for."""

    name: ClassVar[str]
    description: ClassVar[str]

    def check(self, model: ir.Model) -> list[Issue]:
        """Every unsupported op / dtype in ``model``, all at once; never raises."""
        ...

    def prepare(self) -> ir.passes.PassBase:
        """The passes that make a model ready for this target."""
        ...

    def export(
        self, model: ir.Model, out_dir: Path, *, calibration: CalibrationReader | None = None
    ) -> Path:
        """Write the artifact into ``out_dir`` and return its path."""
        ...

    def run(self, artifact: Path, feeds: Feeds) -> Feeds:
        """Run the artifact in the runtime that will execute it."""
        ...


def get_target(name: str) -> Target:
    """Look up a target by name (``edgeopt.targets.TARGETS``)."""
    known = _targets()
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise PassOptionError(
            f"unknown target '{name}'{hint}. Known targets: {', '.join(sorted(known))}."
        )
    return known[name]()


def list_targets() -> list[str]:
    return sorted(_targets())


def _targets() -> dict[str, type[Target]]:
    # The one place the core imports the targets package.
    return dict(importlib.import_module("edgeopt.targets").TARGETS)


def raise_for_issues(target: str, issues: list[Issue]) -> None:
    """Raise one :class:`UnsupportedOpError` that lists every issue."""
    if issues:
        listed = "; ".join(str(i) for i in issues[:10])
        more = f"; and {len(issues) - 10} more" if len(issues) > 10 else ""
        raise UnsupportedOpError(
            f"target '{target}' cannot run {len(issues)} node(s): {listed}{more}"
        )

