"""What every command shares: the two consoles, the ``--json`` flag, JSON output and option checks.

Commands reach the consoles as ``console.out`` / ``console.err`` at call time,
so a test can swap them in one place.
"""

from __future__ import annotations

import json
import typing
from typing import Annotated, Any

import typer
from rich.console import Console

from edgeopt.core.errors import PassOptionError

out = Console(soft_wrap=True)  # paths and messages are never broken mid-word
err = Console(stderr=True)
state = {"debug": False}

# typer reads a command's annotations by name from the module that defines it:
# each command module imports this name at module level.
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]


def emit_json(payload: Any) -> None:
    out.print_json(json.dumps(payload, default=str))


def checked_config(cls: Any, **values: Any) -> Any:
    """Build the config, turning a bad choice into a one-line PassOptionError."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        choices = typing.get_args(hints[key]) if typing.get_origin(hints[key]) is typing.Literal else ()
        if choices and value not in choices:
            raise PassOptionError(f"--{key.replace('_', '-')} must be one of "
                                  f"{', '.join(map(str, choices))}, got {value!r}.")
    return cls(**values)
