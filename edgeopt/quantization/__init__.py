"""The quantization road: static, dynamic and weight-only quantization, sensitivity and accuracy fallback."""

from edgeopt.quantization.analysis import (
    FallbackResult,
    NodeError,
    accuracy_metric,
    agreement_metric,
    fallback,
    sensitivity,
)
from edgeopt.quantization.quantize import QuantizeConfig, QuantizeResult, quantize_file

__all__ = [
    "FallbackResult",
    "NodeError",
    "QuantizeConfig",
    "QuantizeResult",
    "accuracy_metric",
    "agreement_metric",
    "fallback",
    "quantize_file",
    "sensitivity",
]
