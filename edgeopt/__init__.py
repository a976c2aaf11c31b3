"""edgeopt: ONNX graph-level optimizer and edge export toolchain."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeopt.core.errors import EdgeoptError
    from edgeopt.core.model_io import load_model, save_model
    from edgeopt.exporting.torch_export import export
    from edgeopt.pipeline.runner import Pipeline, PipelineResult, run_passes

__version__ = "0.1.0"

_LAZY = {"EdgeoptError": "edgeopt.core.errors", "load_model": "edgeopt.core.model_io",
         "save_model": "edgeopt.core.model_io", "Pipeline": "edgeopt.pipeline.runner",
         "PipelineResult": "edgeopt.pipeline.runner", "run_passes": "edgeopt.pipeline.runner",
         "export": "edgeopt.exporting.torch_export"}


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import edgeopt` (and the CLI's start) loads no onnx,
    # onnxscript or torch: the exporter alone imports torch.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
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
