"""Pass registry: kebab-case names to pass classes with typed options.

The list itself lives in ``edgeopt.passes`` (an explicit dict, no import-time
self-registration); this module, one floor above the passes, reads it, validates
options against each pass's keyword-only ``__init__`` signature, and expands
presets such as ``cleanup``.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from edgeopt.core.errors import PassOptionError
from edgeopt.passes import PASSES, PRESETS


@dataclass(frozen=True)
class OptionInfo:
    """One keyword option of a pass."""

    name: str
    annotation: Any
    default: Any

    @property
    def type_name(self) -> str:
        return _type_name(self.annotation)


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: its name, class and what the registry knows about it."""

    name: str
    cls: type[ir.passes.PassBase]

    @property
    def summary(self) -> str:
        doc = inspect.cleandoc(self.cls.__doc__ or "")  # not the base class's docstring
        return doc.splitlines()[0].replace("``", "") if doc else ""

    @property
    def preserves_semantics(self) -> bool:
        """False for passes whose job is to change outputs (quantization, pruning)."""
        return bool(getattr(self.cls, "preserves_semantics", True))

    def options(self) -> dict[str, OptionInfo]:
        hints = typing.get_type_hints(self.cls.__init__)
        params = inspect.signature(self.cls.__init__).parameters.values()
        return {
            p.name: OptionInfo(p.name, hints.get(p.name, Any), p.default)
            for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    def create(self, options: Mapping[str, Any] | None = None) -> ir.passes.PassBase:
        """Instantiate the pass after checking every option's name and type."""
        known = self.options()
        checked: dict[str, Any] = {}
        for key, value in (options or {}).items():
            if key not in known:
                raise PassOptionError(
                    f"pass '{self.name}' has no option '{key}'{_suggest(key, known)}. "
                    f"Its options: {', '.join(known) or 'none'}."
                )
            checked[key] = _check_value(self.name, known[key], value)
        return self.cls(**checked)


def list_passes() -> list[PassInfo]:
    """Every registered pass, sorted by name."""
    return [PassInfo(name, cls) for name, cls in sorted(PASSES.items())]


def list_pass_names() -> list[str]:
    """Registered pass names (presets excluded)."""
    return sorted(PASSES)


def list_presets() -> dict[str, tuple[str, ...]]:
    """Preset name -> the pass names it expands to."""
    return dict(PRESETS)


def get_pass(name: str) -> PassInfo:
    """Look up a pass by its kebab-case name, suggesting close matches when unknown."""
    if name not in PASSES:
        candidates = [*PASSES, *PRESETS]
        raise PassOptionError(
            f"unknown pass '{name}'{_suggest(name, candidates)}. "
            "Run 'edgeopt list-passes' to see them all."
        )
    return PassInfo(name, PASSES[name])


def expand(names: Sequence[str]) -> list[str]:
    """Replace preset names by the passes they stand for; check every name exists."""
    out: list[str] = []
    for name in names:
        if name in PRESETS:
            out.extend(PRESETS[name])
        else:
            get_pass(name)
            out.append(name)
    return out


def _suggest(word: str, candidates: Sequence[str] | Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is None and hasattr(annotation, "__name__"):
        return str(annotation.__name__)
    return str(annotation).replace("typing.", "")  # generics: tuple[str, ...], int | None


def _check_value(pass_name: str, option: OptionInfo, value: Any) -> Any:
    ok, coerced = _matches(option.annotation, value)
    if not ok:
        raise PassOptionError(
            f"pass '{pass_name}' option '{option.name}' expects {option.type_name}, "
            f"got {value!r} ({type(value).__name__})."
        )
    return coerced


def _matches(annotation: Any, value: Any) -> tuple[bool, Any]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True, value
    if origin is typing.Literal:
        # Compare types too: True == 1 and 1.0 == 1, but neither is the choice 1.
        return any(value == a and type(value) is type(a) for a in args), value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, coerced = _matches(arg, value)
            if ok:
                return True, coerced
        return False, value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if annotation is str:
        return isinstance(value, str), value
    if origin in (tuple, list, Sequence) or annotation in (tuple, list):
        if not isinstance(value, list | tuple):
            return False, value
        item = args[0] if args else Any
        results = [_matches(item, v) for v in value]
        return all(ok for ok, _ in results), tuple(v for _, v in results)
    if origin is not None:  # other generics (Iterable[...], Callable[...], Mapping[...])
        return isinstance(value, origin), value
    return isinstance(value, annotation), value
