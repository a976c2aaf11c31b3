"""The ``compile:`` section of a recipe: emit per-target artifacts from the optimized model.

```yaml
compile:
  output: out/compiled          # required: folder for artifacts and manifest.json
  devices: [cpu, gpu, npu]      # optional (default: all)
  runtimes: [ort, tflite]       # optional (default: both)
  targets: [ort-cpu]            # optional: exact target names instead of devices/runtimes
  calibration: calibration/     # optional: for int8 targets (or random:N)
  cpu: x86-avx2                 # optional: CPU family of int8 CPU artifacts (default: auto, this machine)
```

Relative paths are relative to the recipe file, like every other path in it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeopt.core.cpu import CPU_CHOICES
from edgeopt.core.errors import EdgeoptError, ExportError, RecipeError
from edgeopt.deploy.compile import DEVICES, CompileResult, compile_model, select_targets

_KEYS = ("output", "devices", "runtimes", "targets", "calibration", "cpu")


@dataclass(frozen=True)
class CompileSpec:
    output: Path
    targets: tuple[str, ...]
    calibration: str | None = None
    cpu: str = "auto"


def parse_compile(fail: Callable[[str, str], RecipeError], raw: Any, base: Path) -> CompileSpec:
    """Validate a recipe's ``compile:`` mapping; ``fail(key, message)`` builds the error."""
    if not isinstance(raw, Mapping):
        raise fail("compile", f"expects a mapping with keys {', '.join(_KEYS)}, got {raw!r}.")
    for key in raw:
        if key not in _KEYS:
            raise fail(f"compile.{key}", f"unknown key. Known keys: {', '.join(_KEYS)}.")
    if not isinstance(raw.get("output"), str) or not raw["output"]:
        raise fail("compile.output", f"expects a folder path, got {raw.get('output')!r}.")
    lists = {}
    for key, default in (("devices", list(DEVICES)), ("runtimes", ["ort", "tflite"]), ("targets", [])):
        value = raw.get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(f"compile.{key}", f"expects a list of names, got {value!r}.")
        lists[key] = value
    try:
        names = select_targets(lists["devices"], lists["runtimes"], lists["targets"])
    except EdgeoptError as e:
        raise fail("compile", str(e)) from e
    calibration = raw.get("calibration")
    if calibration is not None and (not isinstance(calibration, str) or not calibration):
        raise fail("compile.calibration", f"expects a path or random:N, got {calibration!r}.")
    if calibration is not None and not calibration.startswith("random:"):
        calibration = str((base / calibration).resolve())
    cpu = raw.get("cpu", "auto")
    if cpu not in CPU_CHOICES:
        raise fail("compile.cpu", f"expects one of {', '.join(CPU_CHOICES)}, got {cpu!r}.")
    return CompileSpec((base / raw["output"]).resolve(), tuple(names), calibration, cpu)


def run_compile(spec: CompileSpec, model: Path) -> CompileResult:
    """Compile ``model`` as the section says.

    Raises:
        ExportError: after writing the manifest, if any target failed (listing them).
    """
    result = compile_model(model, spec.output, targets=spec.targets, calibration=spec.calibration,
                           cpu=spec.cpu)
    failed = result.manifest.failed
    if failed:
        listed = ", ".join(f"{a.target} ({a.error}: {a.message})" for a in failed)
        raise ExportError(f"compile: {len(failed)} target(s) failed: {listed}. See {result.manifest_path}.")
    return result
