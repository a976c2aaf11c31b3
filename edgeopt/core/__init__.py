"""What every road uses: model I/O, errors, pass base, runtime, graph edits, inspection, scoring, target interface."""

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
    PassOptionError,
    RecipeError,
    UnsupportedOpError,
    UnsupportedOpsetError,
    VerificationError,
)
from edgeopt.core.inspect_model import ModelSummary, TensorInfo, summarize
from edgeopt.core.least_squares import NormalEquations
from edgeopt.core.measure import Fidelity, fidelity, median_latency_ms
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
    "NormalEquations",
    "PassOptionError",
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
    "compare_outputs",
    "create_session",
    "fidelity",
    "infer_shapes",
    "load_model",
    "median_latency_ms",
    "model_inputs",
    "raise_for_issues",
    "random_feeds",
    "remove_unused",
    "run_model",
    "run_session",
    "save_model",
    "summarize",
]
