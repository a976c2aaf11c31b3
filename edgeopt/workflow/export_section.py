"""The ``export:`` section of a recipe: start from a torch source instead of an ONNX file.

```yaml
export:
  source: edgeopt.cli.demo_model:load_model   # required: a file, a model folder or package.module:callable
  inputs: ["image:batchx1x8x8:float32"]       # optional: NAME:DIMS[:DTYPE] specs
  example: examples.npz                        # optional: an .npz of example inputs instead
  dynamic: ["image:0:batch"]                   # optional: more dynamic axes, NAME:AXIS[:LABEL]
  opset: 18                                    # optional
  exporter: auto                               # optional: auto | dynamo | torchscript
  atol: 1.0e-4                                 # optional: fail if the max abs error exceeds it
  output: out/model.exported.onnx              # optional (default: <output>'s stem + .exported.onnx)
```

A recipe has either ``model:`` or ``export:``; with ``export:`` the passes run on
the exported file. Relative paths (a source file, ``example``, ``output``) are
relative to the recipe file; a factory is imported from the current folder or
``PYTHONPATH``, as on the command line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt.core.errors import EdgeoptError, RecipeError

if TYPE_CHECKING:
    from edgeopt.exporting.from_source import SourceExport

_KEYS = ("source", "inputs", "example", "dynamic", "opset", "exporter", "atol", "output")


@dataclass(frozen=True)
class ExportSpec:
    source: str
    output: Path
    inputs: tuple[str, ...] = ()
    example: Path | None = None
    dynamic: tuple[str, ...] = ()
    opset: int | None = None
    exporter: str = "auto"
    atol: float | None = None


def parse_export(fail: Callable[[str, str], RecipeError], raw: Any, base: Path, output: Path) -> ExportSpec:
    """Validate a recipe's ``export:`` mapping; ``output`` is the recipe's final output (for the default)."""
    if not isinstance(raw, Mapping):
        raise fail("export", f"expects a mapping with keys {', '.join(_KEYS)}, got {raw!r}.")
    for key in raw:
        if key not in _KEYS:
            raise fail(f"export.{key}", f"unknown key. Known keys: {', '.join(_KEYS)}.")
    source = raw.get("source")
    if not isinstance(source, str) or not source:
        raise fail("export.source", f"expects a file, a model folder or package.module:callable, got {source!r}.")
    if (base / source).exists():
        source = str((base / source).resolve())
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("inputs", "dynamic"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(f"export.{key}", f"expects a list of strings, got {value!r}.")
        lists[key] = tuple(value)
    _check_specs(fail, lists)
    paths: dict[str, Path | None] = {}
    for key in ("example", "output"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise fail(f"export.{key}", f"expects a file path, got {value!r}.")
        paths[key] = (base / value).resolve() if value else None
    opset = raw.get("opset")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise fail("export.opset", f"expects an opset number (e.g. 18), got {opset!r}.")
    exporter = raw.get("exporter", "auto")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise fail("export.exporter", f"expects auto, dynamo or torchscript, got {exporter!r}.")
    atol = raw.get("atol")
    if atol is not None and (isinstance(atol, bool) or not isinstance(atol, int | float) or not atol >= 0
                             or math.isinf(atol)):
        raise fail("export.atol", f"expects a finite non-negative number, got {atol!r}.")
    exported = paths["output"] or output.with_name(f"{output.stem}.exported.onnx")
    if exported == output:
        raise fail("export.output", "is the recipe's output; the exported model needs its own file.")
    return ExportSpec(source, exported, lists["inputs"], paths["example"], lists["dynamic"], opset,
                      exporter, None if atol is None else float(atol))


def _check_specs(fail: Callable[[str, str], RecipeError], lists: Mapping[str, tuple[str, ...]]) -> None:
    if not lists["inputs"] and not lists["dynamic"]:
        return  # keeps torch unimported for recipes that need no parsing
    from edgeopt.exporting.inputs import parse_dynamic, parse_input_spec

    for key, parse in (("inputs", parse_input_spec), ("dynamic", parse_dynamic)):
        for i, spec in enumerate(lists[key]):
            try:
                parse(spec)  # type: ignore[operator]
            except EdgeoptError as e:
                raise fail(f"export.{key}[{i}]", str(e)) from e


def run_export(spec: ExportSpec) -> SourceExport:
    """Export the section's source to ``spec.output``, checked against torch."""
    from edgeopt.exporting.from_source import SourceExportConfig, export_source

    fields: dict[str, Any] = {"inputs": spec.inputs, "example": spec.example, "dynamic": spec.dynamic,
                              "exporter": spec.exporter, "atol": spec.atol}
    if spec.opset is not None:
        fields["opset"] = spec.opset
    return export_source(spec.source, spec.output, SourceExportConfig(**fields))
