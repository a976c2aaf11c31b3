"""Test helpers: ONNX backend conformance cases, small residual models, the import graph (``import_graph``)."""

from edgeopt.testing.backend_cases import BackendCase, collect_cases
from edgeopt.testing.backend_suite import CaseOutcome, check_case, cleanup_transform, compare_structured
from edgeopt.testing.residual_models import residual_cnn, residual_mlp

__all__ = [
    "BackendCase",
    "CaseOutcome",
    "check_case",
    "cleanup_transform",
    "collect_cases",
    "compare_structured",
    "residual_cnn",
    "residual_mlp",
]
