"""edgeopt: ONNX graph-level optimizer and edge export toolchain."""

from __future__ import annotations

from edgeopt.errors import EdgeoptError
from edgeopt.model_io import load_model, save_model
from edgeopt.pipeline import Pipeline, PipelineResult, run_passes

__version__ = "0.1.0"

__all__ = [
    "EdgeoptError",
    "Pipeline",
    "PipelineResult",
    "__version__",
    "load_model",
    "run_passes",
    "save_model",
]
