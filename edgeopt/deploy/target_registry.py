"""Targets by name: the one place the library reads ``edgeopt.targets.TARGETS``."""

from __future__ import annotations

import difflib
import inspect

from edgeopt.core.errors import PassOptionError
from edgeopt.core.target import Target
from edgeopt.targets import TARGETS


def get_target(name: str, *, cpu: str | None = None) -> Target:
    """Look up a target by name (``edgeopt.targets.TARGETS``).

    Args:
        cpu: The CPU family (``auto``, ``x86-avx2``, ...) for the targets built for one
            (``ort-cpu-int8``); the others take no such option and ignore it.
    """
    if name not in TARGETS:
        close = difflib.get_close_matches(name, list(TARGETS), n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise PassOptionError(
            f"unknown target '{name}'{hint}. Known targets: {', '.join(sorted(TARGETS))}."
        )
    cls = TARGETS[name]
    if cpu is not None and takes_cpu(name):
        return cls(cpu=cpu)  # type: ignore[call-arg]
    return cls()


def takes_cpu(name: str) -> bool:
    """Whether the target ``name`` is built for a CPU family (its constructor takes ``cpu``)."""
    return "cpu" in inspect.signature(TARGETS[name]).parameters


def list_targets() -> list[str]:
    return sorted(TARGETS)
