"""The training road: distill a compressed ONNX student from its teacher, with the graph run as a torch module."""

from __future__ import annotations

from typing import Any

from edgeopt.training.distill import DistillConfig, DistillResult, Score, distill, distill_file
from edgeopt.training.losses import Objective, choose_objective

__all__ = [
    "DistillConfig",
    "DistillResult",
    "Objective",
    "OnnxModule",
    "Score",
    "choose_objective",
    "distill",
    "distill_file",
    "supported_ops",
    "write_back",
]

_LAZY = {"OnnxModule": "interpreter", "supported_ops": "interpreter", "write_back": "writeback"}


def __getattr__(name: str) -> Any:
    """The torch-backed names load torch only when asked for."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"edgeopt.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'edgeopt.training' has no attribute {name!r}")
