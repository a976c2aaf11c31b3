"""Recipes: a YAML file naming the model, the passes with options, and the targets.

```yaml
model: model.onnx              # relative paths are relative to the recipe file
output: out/model.optimized.onnx
passes:
  - cleanup                    # a pass or preset name
  - fold-constants:            # a pass with options
      input_size_limit: 4096
verify: true                   # optional: check outputs after every pass
tolerance: {rtol: 1.0e-4, atol: 1.0e-5}   # optional
targets: [ort-cpu]             # optional: artifacts go to <output folder>/<target>/
compile: {output: out/compiled, devices: [cpu]}   # optional: see edgeopt.workflow.compile_section
search: {output: out/search, calibration: calib/, data: val.npz, target: ort-cpu, max_drop: 0.03}
                               # optional: see edgeopt.workflow.search_section
```

Instead of ``model:``, ``export: {source: ..., inputs: [...]}`` starts from a torch
source (see edgeopt.workflow.export_section).

Every key is validated; an error names the file and the exact key path.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgeopt.core.errors import PassOptionError, RecipeError
from edgeopt.deploy.target_registry import list_targets
from edgeopt.pipeline import registry
from edgeopt.pipeline.runner import resolve
from edgeopt.workflow.compile_section import CompileSpec, parse_compile
from edgeopt.workflow.export_section import ExportSpec, parse_export
from edgeopt.workflow.search_section import SearchSpec, parse_search

_KEYS = {"model", "export", "output", "passes", "verify", "tolerance", "targets", "compile", "search"}
_REQUIRED = ("output", "passes")


@dataclass(frozen=True)
class Recipe:
    path: Path
    model: Path
    output: Path
    passes: list[tuple[str, dict[str, Any]]]
    verify: bool = False
    rtol: float = 1e-4
    atol: float = 1e-5
    targets: list[str] = field(default_factory=list)
    compile: CompileSpec | None = None
    export: ExportSpec | None = None
    """With an ``export:`` section, ``model`` is the file it writes."""
    search: SearchSpec | None = None
    """A ``search:`` section: ``edgeopt search`` from the optimized model."""


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file.

    Raises:
        RecipeError: missing file, bad YAML, unknown or ill-typed key, unknown pass
            or target; the message names the key path (e.g. ``passes[1].fold-constants``).
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file does not exist. Check the path.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}). Save it as UTF-8.") from e
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}: {getattr(e, 'problem', '')}"
        raise RecipeError(
            f"{path}: not valid YAML ({str(e).splitlines()[0]}{where}). Fix the syntax."
        ) from e
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{path}: a recipe is a mapping with keys {', '.join(sorted(_KEYS))}.")
    return _parse(path, raw)


def _parse(path: Path, raw: Mapping[str, Any]) -> Recipe:
    def fail(key: str, message: str) -> RecipeError:
        return RecipeError(f"{path}: {key}: {message}")

    for key in raw:
        if key not in _KEYS:
            close = difflib.get_close_matches(str(key), sorted(_KEYS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise fail(str(key), f"unknown key{hint}. Known keys: {', '.join(sorted(_KEYS))}.")
    if ("model" in raw) == ("export" in raw):
        raise fail("model", "give either model: (an ONNX file) or export: (a torch source), one of them.")
    for key in _REQUIRED:
        if key not in raw:
            raise fail(key, "missing; it is required.")
    for key in ("model", "output") if "model" in raw else ("output",):
        if not isinstance(raw[key], str) or not raw[key]:
            raise fail(key, f"expects a file path, got {raw[key]!r}.")
    if not isinstance(raw["passes"], list) or not raw["passes"]:
        raise fail("passes", "expects a non-empty list of pass names.")
    passes = [_resolve_paths(_parse_pass(fail, i, entry), path.parent)
              for i, entry in enumerate(raw["passes"])]
    verify = raw.get("verify", False)
    if not isinstance(verify, bool):
        raise fail("verify", f"expects true or false, got {verify!r}.")
    rtol, atol = _parse_tolerance(fail, raw.get("tolerance", {}))
    targets = raw.get("targets", [])
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise fail("targets", f"expects a list of target names, got {targets!r}.")
    for i, name in enumerate(targets):
        if name not in list_targets():
            raise fail(f"targets[{i}]", f"unknown target '{name}'. Known: {', '.join(list_targets())}.")
    base = path.parent
    output = (base / raw["output"]).resolve()
    exported = parse_export(fail, raw["export"], base, output) if "export" in raw else None
    model = exported.output if exported else (base / raw["model"]).resolve()
    if model == output:
        raise fail("output", "is the input model; write the result to another path.")
    compiled = parse_compile(fail, raw["compile"], base) if "compile" in raw else None
    searched = parse_search(fail, raw["search"], base) if "search" in raw else None
    return Recipe(path, model, output, passes, verify, rtol, atol, list(targets), compiled, exported, searched)


def _parse_pass(fail: Any, index: int, entry: Any) -> tuple[str, dict[str, Any]]:
    where = f"passes[{index}]"
    options: Any
    if isinstance(entry, str):
        name, options = entry, {}
    elif isinstance(entry, Mapping) and len(entry) == 1:
        name, options = next(iter(entry.items()))
        options = {} if options is None else options
        if not isinstance(options, Mapping):
            raise fail(f"{where}.{name}", f"options must be a mapping, got {options!r}.")
    else:
        raise fail(where, f"expects a pass name or {{name: {{option: value}}}}, got {entry!r}.")
    if not isinstance(name, str):
        raise fail(where, f"a pass name must be a string, got {name!r}.")
    try:
        for each, each_options, _ in resolve(name, options):
            registry.get_pass(each).create(dict(each_options))
    except PassOptionError as e:
        raise fail(f"{where}.{name}" if options else where, str(e)) from e
    return str(name), dict(options)


def _resolve_paths(step: tuple[str, dict[str, Any]], base: Path) -> tuple[str, dict[str, Any]]:
    """Make the pass's path-valued options (``path_options``) relative to the recipe file."""
    name, options = step
    info = registry.get_pass(name) if name in registry.list_pass_names() else None
    keys = getattr(info.cls, "path_options", ()) if info else ()
    resolved = {
        key: str(base / value) if key in keys and isinstance(value, str) and ":" not in value else value
        for key, value in options.items()
    }
    return name, resolved


def _parse_tolerance(fail: Any, raw: Any) -> tuple[float, float]:
    if not isinstance(raw, Mapping):
        raise fail("tolerance", f"expects {{rtol: float, atol: float}}, got {raw!r}.")
    values = {"rtol": 1e-4, "atol": 1e-5}
    for key, value in raw.items():
        if key not in values:
            raise fail(f"tolerance.{key}", "unknown key. Known keys: atol, rtol.")
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0 \
                or math.isinf(value):
            raise fail(f"tolerance.{key}", f"expects a finite non-negative number, got {value!r}.")
        values[key] = float(value)
    return values["rtol"], values["atol"]

