"""edgeopt: ONNX graph-level optimizer and edge export toolchain."""

from __future__ import annotations

from typing import Any

from edgeopt.core.errors import EdgeoptError
from edgeopt.core.model_io import load_model, save_model
from edgeopt.pipeline.runner import Pipeline, PipelineResult, run_passes

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # torch is heavy: import the exporter only when edgeopt.export is used.
    if name == "export":
        from edgeopt.exporting.torch_export import export

        return export
    raise AttributeError(f"module 'edgeopt' has no attribute {name!r}")


__all__ = [
    "EdgeoptError",
    "Pipeline",
    "PipelineResult",
    "__version__",
    "export",
    "load_model",
    "run_passes",
    "save_model",
]
