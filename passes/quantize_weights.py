"""Weight-only block-wise quantization of MatMul weights (int4 / int8, ORT's MatMulNBits).

Each block of ``block_size`` weights along the input dimension gets its own
scale (and zero point unless symmetric): ``w ~ scale_b * (q - zp_b)``. Methods:
``rtn`` (round to nearest) and ``hqq`` (half-quadratic optimization of scales
and zero points, 4-bit). Activations stay float; the MatMulNBits kernel
dequantizes on the fly, so the weights shrink ~8x (int4) or ~4x (int8).

ORT's GPTQ port is not offered: measured here it returns exactly the RTN result
(its error compensation is never applied), emits a model without the
``com.microsoft`` opset import, ignores excluded nodes and prints to stdout.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import onnx_ir as ir

from edgeopt.core.errors import PassOptionError
from edgeopt.core.model_io import serialize_with_data
from edgeopt.core.pass_base import EdgeoptPass, adopt
from edgeopt.passes.quantize_common import import_quietly, ir_from_ort, prepare_for_quantization, quiet_root_logging
from edgeopt.passes.quantize_dynamic import QuantizeDynamicPass

logger = logging.getLogger(__name__)


class QuantizeWeightsPass(EdgeoptPass):
    """Quantize MatMul weights block-wise to 4 or 8 bits (activations stay float).

    Args:
        bits: 4 or 8.
        block_size: Weights per scale along the input dimension (16 to 256, power of 2).
        method: ``rtn`` or ``hqq`` (4-bit).
        symmetric: No zero points (slightly smaller, usually less accurate).
        accuracy_level: ORT's compute type for MatMulNBits: 4 (default) computes in int8,
            measured 0.65-0.8x fp32 latency on MiniLM; ``None`` computes in fp32, slightly
            more accurate but 3.4-3.8x slower than fp32 on CPU.
        exclude: Node names that stay float.
        embedding_bits: Also quantize constant 2-D Gather tables (word embeddings), which
            are often the biggest tensors of a transformer: 8 = int8 per row with a
            DequantizeLinear after the lookup, 4 = 4-bit blocks of 16 (GatherBlockQuantized),
            0 = leave them float.
    """

    name = "quantize-weights"
    preserves_semantics = False

    def __init__(
        self,
        *,
        bits: Literal[4, 8] = 4,
        block_size: int = 32,
        method: Literal["rtn", "hqq"] = "rtn",
        symmetric: bool = False,
        accuracy_level: int | None = 4,
        exclude: tuple[str, ...] = (),
        embedding_bits: Literal[0, 4, 8] = 0,
    ) -> None:
        super().__init__()
        if embedding_bits not in (0, 4, 8):
            raise PassOptionError(f"quantize-weights: embedding_bits must be 0, 4 or 8, got {embedding_bits!r}.")
        if not 16 <= block_size <= 256 or block_size & (block_size - 1):
            raise PassOptionError(
                f"quantize-weights: block_size must be a power of 2 from 16 to 256, got {block_size}.")
        if method not in ("rtn", "hqq"):
            raise PassOptionError(f"quantize-weights: unknown method {method!r}; use 'rtn' or 'hqq'.")
        if method == "hqq" and bits != 4:
            raise PassOptionError("quantize-weights: method 'hqq' supports 4 bits only; use method='rtn'.")
        self.bits = bits
        self.block_size = block_size
        self.method = method
        self.symmetric = symmetric
        self.accuracy_level = accuracy_level
        self.exclude = exclude
        self.embedding_bits = embedding_bits

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nbits = import_quietly("onnxruntime.quantization.matmul_nbits_quantizer")
        prepare_for_quantization(model)
        proto = serialize_with_data(model)
        quantizer = nbits.MatMulNBitsQuantizer(
            proto, bits=self.bits, block_size=self.block_size, is_symmetric=self.symmetric,
            accuracy_level=self.accuracy_level, nodes_to_exclude=list(self.exclude),
            algo_config=self._algo_config(),
        )
        with quiet_root_logging():
            quantizer.process()
        quantized = quantizer.model.model if hasattr(quantizer.model, "model") else quantizer.model
        adopt(model, ir_from_ort(quantized))
        if self.embedding_bits:
            self._quantize_embeddings(model)
        count = sum(1 for n in model.graph if n.op_type in ("MatMulNBits", "GatherBlockQuantized"))
        count += sum(1 for n in model.graph if n.op_type == "DequantizeLinear")
        logger.info("quantize-weights: %d MatMul(s) to %d-bit %s, block %d", count, self.bits,
                    self.method, self.block_size)
        return ir.passes.PassResult(model, modified=count > 0)

    def _quantize_embeddings(self, model: ir.Model) -> None:
        if self.embedding_bits == 8:
            QuantizeDynamicPass(op_types=("Gather",), per_channel=True, exclude=self.exclude)(model)
            return
        nbits = import_quietly("onnxruntime.quantization.matmul_nbits_quantizer")
        axes = (("Gather", 1),)
        config = nbits.DefaultWeightOnlyQuantConfig(block_size=16, is_symmetric=False, bits=4,
                                                    op_types_to_quantize=("Gather",), quant_axes=axes)
        quantizer = nbits.MatMulNBitsQuantizer(
            serialize_with_data(model), bits=4, block_size=16, algo_config=config,
            nodes_to_exclude=list(self.exclude), op_types_to_quantize=("Gather",), quant_axes=axes)
        with quiet_root_logging():
            quantizer.process()
        quantized = quantizer.model.model if hasattr(quantizer.model, "model") else quantizer.model
        adopt(model, ir_from_ort(quantized))

    def _algo_config(self) -> Any:
        nbits = import_quietly("onnxruntime.quantization.matmul_nbits_quantizer")
        if self.method == "hqq":
            return nbits.HQQWeightOnlyQuantConfig(block_size=self.block_size, bits=self.bits)
        return nbits.DefaultWeightOnlyQuantConfig(
            block_size=self.block_size, is_symmetric=self.symmetric, bits=self.bits,
            accuracy_level=self.accuracy_level,
        )
