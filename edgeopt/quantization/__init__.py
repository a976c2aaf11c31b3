"""The quantization road: static, dynamic and weight-only quantization, sensitivity, mixed precision, fallback."""

from edgeopt.quantization.analysis import (
    FallbackResult,
    NodeError,
    accuracy_metric,
    agreement_metric,
    fallback,
    sensitivity,
)
from edgeopt.quantization.mixed_precision import MixedPrecision, choose_16bit_tensors
from edgeopt.quantization.quantize import QuantizeConfig, QuantizeResult, quantize_file

__all__ = [
    "FallbackResult",
    "MixedPrecision",
    "NodeError",
    "QuantizeConfig",
    "QuantizeResult",
    "accuracy_metric",
    "agreement_metric",
    "choose_16bit_tensors",
    "fallback",
    "quantize_file",
    "sensitivity",
]
