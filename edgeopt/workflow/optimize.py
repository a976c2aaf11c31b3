"""The optimize road shared by the CLI, recipes and the demo: load, run passes, save, emit."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx_ir as ir

from edgeopt.core.inspect_model import ModelSummary, summarize
from edgeopt.core.model_checks import check_model
from edgeopt.core.model_io import load_model, save_model
from edgeopt.core.runtime import Feeds
from edgeopt.deploy.target_registry import get_target
from edgeopt.pipeline.runner import Pipeline, PipelineResult, StepResult, StepSpec
from edgeopt.workflow.compile_section import run_compile
from edgeopt.workflow.export_section import run_export
from edgeopt.workflow.recipe import Recipe
from edgeopt.workflow.search_section import run_search

logger = logging.getLogger(__name__)


@dataclass
class OptimizeResult:
    model: ir.Model
    pipeline: PipelineResult
    output: Path
    before: ModelSummary
    after: ModelSummary
    artifacts: dict[str, Path] = field(default_factory=dict)


def optimize_file(
    model_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    steps: Sequence[StepSpec],
    *,
    verify: bool = False,
    feeds: Feeds | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    targets: Sequence[str] = (),
    in_place: bool = False,
    external_data: bool | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> OptimizeResult:
    """Load ``model_path``, run ``steps``, save to ``output`` and emit target artifacts.

    Target artifacts go to ``<output folder>/<target name>/``. The input file is
    never overwritten unless ``in_place`` is set. ``external_data`` as in
    :func:`edgeopt.core.model_io.save_model` (``None``: only above 2 GB).
    """
    pipeline = Pipeline(steps, verify=verify, feeds=feeds, rtol=rtol, atol=atol)
    for name in targets:
        get_target(name)  # an unknown target fails before any work is done
    model = load_model(model_path)
    converts = any((spec if isinstance(spec, str) else spec[0] if isinstance(spec, tuple) else None)
                   == "convert-opset" for spec in steps)
    check_model(model, opsets=not converts)
    before = summarize(model)
    result = pipeline.run(model, on_step=on_step)
    out = save_model(result.model, output, overwrite_input=in_place, external_data=external_data)
    optimized = load_model(out)
    artifacts = {
        name: export_target(optimized, name, out.parent / name) for name in targets
    }
    return OptimizeResult(result.model, result, out, before, summarize(optimized), artifacts)


def export_target(model: ir.Model, target_name: str, out_dir: Path) -> Path:
    """Prepare a copy of ``model`` for the target and write its artifact into ``out_dir``."""
    target = get_target(target_name)
    prepared = model.clone()
    target.prepare()(prepared)
    return target.export(prepared, out_dir)


def run_recipe(
    recipe: Recipe, *, on_step: Callable[[StepResult], None] | None = None
) -> OptimizeResult:
    """Execute a validated recipe: its ``export:`` section, the passes, its ``compile:`` and ``search:`` sections."""
    if recipe.export is not None:
        run_export(recipe.export)
    result = optimize_file(
        recipe.model, recipe.output, recipe.passes, verify=recipe.verify,
        rtol=recipe.rtol, atol=recipe.atol, targets=recipe.targets, on_step=on_step,
    )
    if recipe.compile is not None:
        compiled = run_compile(recipe.compile, result.output)
        result.artifacts.update({f"compile/{a.target}": compiled.out_dir / str(a.file)
                                 for a in compiled.manifest.artifacts})
        result.artifacts["compile/manifest"] = compiled.manifest_path
    if recipe.search is not None:
        searched = run_search(recipe.search, result.output)
        result.artifacts.update({f"search/{name}": path for name, path in searched.files.items()})
    return result
