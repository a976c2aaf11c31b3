"""Weight-only block-wise quantization of MatMul weights (int4 / int8, ORT's MatMulNBits).

Each block of ``block_size`` weights along the input dimension gets its own
scale (and zero point unless symmetric): ``w ~ scale_b * (q - zp_b)``. Methods:
``rtn`` (round to nearest), ``hqq`` (half-quadratic optimization of scales and
zero points, 4-bit) and ``gptq`` (second-order error compensation with
calibration data, 4-bit). Activations stay float; the MatMulNBits kernel
dequantizes on the fly, so the weights shrink ~8x (int4) or ~4x (int8).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal

import onnx_ir as ir

from edgeopt.errors import CalibrationDataError, PassOptionError
from edgeopt.pass_base import EdgeoptPass, adopt
from edgeopt.passes.quantize_common import OrtReader, import_quietly, ir_from_ort, prepare_for_quantization
from edgeopt.runtime import Feeds

logger = logging.getLogger(__name__)


class QuantizeWeightsPass(EdgeoptPass):
    """Quantize MatMul weights block-wise to 4 or 8 bits (activations stay float).

    Args:
        bits: 4 or 8.
        block_size: Weights per scale along the input dimension (16 to 256, power of 2).
        method: ``rtn``, ``hqq`` (4-bit) or ``gptq`` (4-bit, needs ``calibration``).
        symmetric: No zero points (slightly smaller, usually less accurate).
        accuracy_level: ORT's compute type for MatMulNBits (4 = int8 compute, faster on CPU).
        exclude: Node names that stay float.
        calibration: Sample data for ``gptq`` (a re-iterable of feeds or a path/spec).
    """

    name = "quantize-weights"
    preserves_semantics = False

    def __init__(
        self,
        *,
        bits: Literal[4, 8] = 4,
        block_size: int = 32,
        method: Literal["rtn", "hqq", "gptq"] = "rtn",
        symmetric: bool = False,
        accuracy_level: int | None = None,
        exclude: tuple[str, ...] = (),
        calibration: str | Iterable[Feeds] | None = None,
    ) -> None:
        super().__init__()
        if block_size < 16 or block_size & (block_size - 1):
            raise PassOptionError(f"quantize-weights: block_size must be a power of 2 >= 16, got {block_size}.")
        if method in ("hqq", "gptq") and bits != 4:
            raise PassOptionError(f"quantize-weights: method '{method}' supports 4 bits only; use method='rtn'.")
        if method == "gptq" and calibration is None:
            raise CalibrationDataError("quantize-weights with method 'gptq' needs calibration data (--calib DATA).")
        self.bits = bits
        self.block_size = block_size
        self.method = method
        self.symmetric = symmetric
        self.accuracy_level = accuracy_level
        self.exclude = exclude
        self.calibration = calibration

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nbits = import_quietly("onnxruntime.quantization.matmul_nbits_quantizer")
        prepare_for_quantization(model)
        proto = ir.serde.serialize_model(model)
        quantizer = nbits.MatMulNBitsQuantizer(
            proto, bits=self.bits, block_size=self.block_size, is_symmetric=self.symmetric,
            accuracy_level=self.accuracy_level, nodes_to_exclude=list(self.exclude),
            algo_config=self._algo_config(model),
        )
        quantizer.process()
        quantized = quantizer.model.model if hasattr(quantizer.model, "model") else quantizer.model
        adopt(model, ir_from_ort(quantized))
        count = sum(1 for n in model.graph if n.op_type == "MatMulNBits")
        logger.info("quantize-weights: %d MatMul(s) to %d-bit %s, block %d", count, self.bits,
                    self.method, self.block_size)
        return ir.passes.PassResult(model, modified=count > 0)

    def _algo_config(self, model: ir.Model) -> Any:
        nbits = import_quietly("onnxruntime.quantization.matmul_nbits_quantizer")
        if self.method == "hqq":
            return nbits.HQQWeightOnlyQuantConfig(block_size=self.block_size, bits=self.bits)
        if self.method == "gptq":
            from edgeopt.calib_data import batches, open_reader

            assert self.calibration is not None
            reader = (open_reader(self.calibration, model) if isinstance(self.calibration, str)
                      else self.calibration)
            return nbits.GPTQWeightOnlyQuantConfig(
                calibration_data_reader=OrtReader(list(batches(reader, model))),
                block_size=self.block_size,
            )
        return nbits.DefaultWeightOnlyQuantConfig(
            block_size=self.block_size, is_symmetric=self.symmetric, bits=self.bits,
            accuracy_level=self.accuracy_level,
        )
