"""Dynamic int8 quantization: int8 weights, activations quantized at run time.

For MatMul/Gemm-heavy models (transformers), where activation ranges vary per
input. The graph comes from ONNX Runtime's own quantizer (IntegerOps mode:
MatMulInteger / DynamicQuantizeLinear), after our pre-processing.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import onnx_ir as ir

from edgeopt.core.model_io import serialize_with_data
from edgeopt.core.pass_base import EdgeoptPass, adopt
from edgeopt.passes.avoid_int8_saturation import AvoidInt8SaturationPass
from edgeopt.passes.quantize_common import ir_from_ort, ort_type, prepare_for_quantization, quiet_root_logging

logger = logging.getLogger(__name__)


_QUANTIZED_OPS = {"DynamicQuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger"}


class QuantizeDynamicPass(EdgeoptPass):
    """Quantize MatMul/Gemm (and the other IntegerOps ORT supports) weights to int8.

    No calibration data is needed. Graph input/output names and dtypes are kept.

    Args:
        per_channel: Per-output-channel weight scales (more accurate, same size).
        weight_type: ``int8`` (symmetric) or ``uint8``.
        op_types: Only these op types (default: ``MatMul``, ``Gemm``, ``Attention``, ...).
        exclude: Node names that stay float.
        cpu: The CPU family the model is for (:mod:`edgeopt.core.cpu`; ``auto``: this machine): on
            ``x86-avx2`` weights that could saturate ORT's int8 kernels are stored as uint8
            (``avoid-int8-saturation``). None leaves the weights as emitted.
    """

    name = "quantize-dynamic"
    preserves_semantics = False

    def __init__(
        self,
        *,
        per_channel: bool = True,
        weight_type: Literal["int8", "uint8"] = "int8",
        op_types: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
        cpu: str | None = "auto",
    ) -> None:
        super().__init__()
        self.cpu = cpu
        self.per_channel = per_channel
        self.weight_type = weight_type
        self.op_types = op_types
        self.exclude = exclude

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
        from onnxruntime.quantization.quant_utils import QuantizationMode, QuantType, update_opset_version
        from onnxruntime.quantization.registry import IntegerOpsRegistry

        prepare_for_quantization(model)
        weight = ort_type(self.weight_type)
        with quiet_root_logging():
            proto = update_opset_version(serialize_with_data(model), weight)
        extra: dict[str, Any] = {"MatMulConstBOnly": True, "WeightSymmetric": self.weight_type == "int8"}
        quantizer = ONNXQuantizer(
            proto, self.per_channel, False, QuantizationMode.IntegerOps, False, weight,
            QuantType.QUInt8, None, [], [*self.exclude, *_computed_weight_convs(model)],
            list(self.op_types) or list(IntegerOpsRegistry), extra,
        )
        with quiet_root_logging():
            quantizer.quantize_model()
        quantized = ir_from_ort(quantizer.model.model)
        # Gather-only quantization adds DequantizeLinear after the lookup, no DynamicQuantizeLinear
        count = sum(1 for n in quantized.graph if n.op_type in _QUANTIZED_OPS)
        if count:
            adopt(model, quantized)
            if self.cpu is not None:
                AvoidInt8SaturationPass(cpu=self.cpu)(model)
        logger.info("quantize-dynamic: %d quantized node(s), %s weights%s", count,
                    self.weight_type, ", per channel" if self.per_channel else "")
        return ir.passes.PassResult(model, modified=count > 0)


def _computed_weight_convs(model: ir.Model) -> list[str]:
    """Conv nodes whose weight is computed (a codebook's decode chain): ORT's ConvInteger
    quantizer needs an initializer, so they stay float (MatMul's ``MatMulConstBOnly`` does the same)."""
    return [node.name for node in model.graph
            if node.op_type == "Conv" and node.name and len(node.inputs) > 1 and node.inputs[1] is not None
            and not node.inputs[1].is_initializer()]
