"""What every road uses: model I/O, errors, pass base, runtime, graph edits, inspection, scoring, target interface."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeopt.core.dead_code import Removed, remove_unused
    from edgeopt.core.errors import (
        BackendNotInstalledError,
        CalibrationDataError,
        ConversionError,
        DeviceError,
        EdgeoptError,
        ExportError,
        ModelLoadError,
        ModelSaveError,
        NonFiniteWeightsError,
        PassOptionError,
        RecipeError,
        UnsupportedOpError,
        UnsupportedOpsetError,
        VerificationError,
    )
    from edgeopt.core.inspect_model import ModelSummary, TensorInfo, sample_dims, summarize
    from edgeopt.core.least_squares import NormalEquations
    from edgeopt.core.measure import Fidelity, fidelity, median_latency_ms
    from edgeopt.core.model_checks import Problem, check_model, model_problems
    from edgeopt.core.model_io import load_model, save_model
    from edgeopt.core.pass_base import EdgeoptPass
    from edgeopt.core.runtime import (
        CalibrationReader,
        Deviation,
        Feeds,
        compare_outputs,
        create_session,
        model_inputs,
        random_feeds,
        run_model,
        run_session,
    )
    from edgeopt.core.scoring import Scorer, Scores
    from edgeopt.core.shapes import infer_shapes
    from edgeopt.core.target import Issue, Signature, Target, TensorSpec, raise_for_issues

_HOMES: dict[str, tuple[str, ...]] = {
    "dead_code": ("Removed", "remove_unused"),
    "errors": ("BackendNotInstalledError", "CalibrationDataError", "ConversionError", "DeviceError", "EdgeoptError",
               "ExportError", "ModelLoadError", "ModelSaveError", "NonFiniteWeightsError", "PassOptionError",
               "RecipeError", "UnsupportedOpError", "UnsupportedOpsetError", "VerificationError"),
    "inspect_model": ("ModelSummary", "TensorInfo", "sample_dims", "summarize"),
    "least_squares": ("NormalEquations",),
    "measure": ("Fidelity", "fidelity", "median_latency_ms"),
    "model_checks": ("Problem", "check_model", "model_problems"),
    "model_io": ("load_model", "save_model"),
    "pass_base": ("EdgeoptPass",),
    "runtime": ("CalibrationReader", "Deviation", "Feeds", "compare_outputs", "create_session", "model_inputs",
                "random_feeds", "run_model", "run_session"),
    "scoring": ("Scorer", "Scores"),
    "shapes": ("infer_shapes",),
    "target": ("Issue", "Signature", "Target", "TensorSpec", "raise_for_issues"),
}
"""Module (under ``edgeopt.core``) -> the public names it defines. They are imported on first use, so that
importing a light module of core (``errors``) does not load onnx and ONNX Runtime: the CLI starts fast."""

_HOME = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"edgeopt.core.{_HOME[name]}"), name)
    raise AttributeError(f"module 'edgeopt.core' has no attribute {name!r}")


__all__ = [
    "BackendNotInstalledError",
    "CalibrationDataError",
    "CalibrationReader",
    "ConversionError",
    "Deviation",
    "DeviceError",
    "EdgeoptError",
    "EdgeoptPass",
    "ExportError",
    "Feeds",
    "Fidelity",
    "Issue",
    "ModelLoadError",
    "ModelSaveError",
    "ModelSummary",
    "NonFiniteWeightsError",
    "NormalEquations",
    "PassOptionError",
    "Problem",
    "RecipeError",
    "Removed",
    "Scorer",
    "Scores",
    "Signature",
    "Target",
    "TensorInfo",
    "TensorSpec",
    "UnsupportedOpError",
    "UnsupportedOpsetError",
    "VerificationError",
    "check_model",
    "compare_outputs",
    "create_session",
    "fidelity",
    "infer_shapes",
    "load_model",
    "median_latency_ms",
    "model_inputs",
    "model_problems",
    "raise_for_issues",
    "random_feeds",
    "remove_unused",
    "run_model",
    "run_session",
    "sample_dims",
    "save_model",
    "summarize",
]
