"""Targets by name: the one place the library reads ``edgeopt.targets.TARGETS``."""

from __future__ import annotations

import difflib

from edgeopt.core.errors import PassOptionError
from edgeopt.core.target import Target
from edgeopt.targets import TARGETS


def get_target(name: str) -> Target:
    """Look up a target by name (``edgeopt.targets.TARGETS``)."""
    if name not in TARGETS:
        close = difflib.get_close_matches(name, list(TARGETS), n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise PassOptionError(
            f"unknown target '{name}'{hint}. Known targets: {', '.join(sorted(TARGETS))}."
        )
    return TARGETS[name]()


def list_targets() -> list[str]:
    return sorted(TARGETS)
