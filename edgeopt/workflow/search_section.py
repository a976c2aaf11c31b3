"""The ``search:`` section of a recipe: ``edgeopt search`` on the optimized model, with the same options.

```yaml
search:
  output: out/search            # required: trials, Pareto front, report.html, best/ (a compile folder)
  calibration: calibration/     # required: folder of .npy/.npz or images, or random:N
  data: val.npz                 # required: the validation data candidates are scored on
  target: ort-cpu               # required: every candidate is compiled for and run on it
  max_drop: 0.03                # required: largest allowed drop of the metric
  objective: size               # optional: size | latency | macs, or a list ([size, latency]: NSGA-II)
  labels: label                 # optional: labels' key in the .npz data (score task accuracy)
  metric: auto                  # optional: auto | accuracy | agreement | cosine
  trials: 40                    # optional (default 40)
  time_limit: 600               # optional: seconds
  patience: 10                  # optional: stop rule (0: never stop early)
  seed: 0                       # optional
  stages: [prune, quantize]     # optional (default: every stage that applies)
  limit: 500                    # optional: validation samples
  samples: 128                  # optional: calibration samples per stage
  workers: 1                    # optional: above 1, trials run on a local Ray
  ray_address: auto             # optional: a running Ray cluster
  resume: false                 # optional: continue the search in output
  screen: true                  # optional: stop a candidate whose model misses the budget by far
```

Relative paths are relative to the recipe file, like every other path in it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgeopt.core.errors import RecipeError
from edgeopt.search.records import OBJECTIVES
from edgeopt.search.run import SearchConfig, SearchResult, search
from edgeopt.search.stages import STAGE_NAMES

_REQUIRED = ("output", "calibration", "data", "target", "max_drop")
_TYPES: dict[str, tuple[type, ...]] = {"labels": (str,), "trials": (int,), "time_limit": (int, float),
                                       "patience": (int,), "seed": (int,), "limit": (int,), "samples": (int,),
                                       "workers": (int,), "ray_address": (str,), "resume": (bool,), "screen": (bool,),
                                       "metric": (str,),
                                       "max_drop": (int, float), "target": (str,)}
_KEYS = (*_REQUIRED, "objective", "stages", *(k for k in _TYPES if k not in _REQUIRED))


@dataclass(frozen=True)
class SearchSpec:
    output: Path
    calibration: str
    data: str
    config: SearchConfig


def parse_search(fail: Callable[[str, str], RecipeError], raw: Any, base: Path) -> SearchSpec:
    """Validate a recipe's ``search:`` mapping; ``fail(key, message)`` builds the error."""
    if not isinstance(raw, Mapping):
        raise fail("search", f"expects a mapping with keys {', '.join(_KEYS)}, got {raw!r}.")
    for key in raw:
        if key not in _KEYS:
            raise fail(f"search.{key}", f"unknown key. Known keys: {', '.join(_KEYS)}.")
    for key in _REQUIRED:
        if key not in raw:
            raise fail(f"search.{key}", "missing; it is required.")
    for key in ("output", "calibration", "data"):
        if not isinstance(raw[key], str) or not raw[key]:
            raise fail(f"search.{key}", f"expects a path, got {raw[key]!r}.")
    values: dict[str, Any] = {}
    for key, kinds in _TYPES.items():
        if key in raw:
            value = raw[key]
            if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
                raise fail(f"search.{key}", f"expects {' or '.join(k.__name__ for k in kinds)}, got {value!r}.")
            values[key] = value
    for key, low, high in (("max_drop", 0, 1), ("trials", 1, None), ("workers", 1, None), ("patience", 0, None),
                           ("samples", 1, None), ("limit", 1, None), ("time_limit", 0, None)):
        if key in values and (values[key] < low or (high is not None and values[key] > high)):
            allowed = f"{low} to {high}" if high is not None else f"{low} or more"
            raise fail(f"search.{key}", f"expects {allowed}, got {values[key]!r}.")
    if str(values.get("labels", "")).endswith(".npy"):
        values["labels"] = _path(base, values["labels"])
    values["objective"] = _names(fail, "objective", raw.get("objective", "size"), OBJECTIVES)
    values["stages"] = tuple(_names(fail, "stages", raw.get("stages", []), STAGE_NAMES).split(",")) \
        if raw.get("stages") else ()
    known = {f.name for f in fields(SearchConfig)}
    try:
        config = SearchConfig(**{k: v for k, v in values.items() if k in known})
    except (TypeError, ValueError) as e:
        raise fail("search", str(e)) from e
    return SearchSpec((base / raw["output"]).resolve(), _path(base, raw["calibration"]), _path(base, raw["data"]),
                      config)


def _names(fail: Callable[[str, str], RecipeError], key: str, value: Any, known: tuple[str, ...]) -> str:
    """A name or a list of names, each one of ``known``, as one comma-separated string."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise fail(f"search.{key}", f"expects a name or a list of names ({', '.join(known)}), got {value!r}.")
    wrong = [n for n in names if n not in known]
    if wrong:
        raise fail(f"search.{key}", f"unknown {', '.join(wrong)}; choose from {', '.join(known)}.")
    return ",".join(names)


def _path(base: Path, spec: str) -> str:
    return spec if spec.startswith("random:") else str((base / spec).resolve())


def run_search(spec: SearchSpec, model: Path) -> SearchResult:
    """Search from ``model`` (the recipe's optimized output) as the section says.

    Raises:
        EdgeoptError: bad data or options, the search's own one-line errors.
    """
    return search(model, spec.output, calibration=spec.calibration, data=spec.data, config=spec.config)
