"""Learned rounding inside static quantization: the QDQ graph's int8 weight codes replaced by
codes fitted on each layer's real inputs (:mod:`edgeopt.calibration.rounding`).

ORT's emitter rounds weights to nearest; its scales (max |w| / 127 per channel) are
kept, so biases, zero points and every other tensor stay as emitted and only the
integers behind each weight DequantizeLinear change. On EfficientNet-Lite0 (100
calibration crops) weight-only int8 goes from 18.7 dB SQNR (nearest) to 28.1 dB.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import onnx_ir as ir

from edgeopt.calibration.rounding import WeightLayer, input_hessians, round_layer, weight_layers
from edgeopt.core.runtime import Feeds

logger = logging.getLogger(__name__)

ROUNDING_SAMPLES = 512
"""Calibration samples the input statistics are fitted on at most (GPTQ's own default is 128
sequences): enough for ``H``, and a bound on the extra pass over large calibration sets."""


def quantized_weight_nodes(quantized: ir.Model) -> list[str]:
    """Names of the nodes whose weight (input 1) is an int8 initializer behind a DequantizeLinear."""
    return [node.name for node in quantized.graph if node.name and _weight_dq(node) is not None]


def fit_rounding(
    prepared: ir.Model, nodes: Iterable[str], calibration: Iterable[Feeds], *, samples: int | None = None,
    batch_size: int | None = None,
) -> tuple[list[WeightLayer], dict[str, np.ndarray]]:
    """The layers among ``nodes`` of the float ``prepared`` model, and their input ``H``, in one pass."""
    layers = weight_layers(prepared, nodes)
    if not layers:
        return [], {}
    limit = ROUNDING_SAMPLES if samples is None else min(samples, ROUNDING_SAMPLES)
    return layers, input_hessians(prepared, layers, calibration, samples=limit, batch_size=batch_size)


def apply_learned_rounding(quantized: ir.Model, layers: list[WeightLayer], hessians: Mapping[str, np.ndarray]) -> int:
    """Write learned int8 codes into ``quantized``'s weight DequantizeLinear inputs; returns layers changed."""
    by_name = {node.name: node for node in quantized.graph if node.name}
    changed = 0
    for layer in layers:
        node = by_name.get(layer.node)
        dq = _weight_dq(node) if node is not None else None
        if dq is None or layer.node not in hessians:
            continue
        codes_value, scale_value = dq.inputs[0], dq.inputs[1]
        zero_point = _array(dq.inputs[2]) if len(dq.inputs) > 2 else None
        zero_point = np.zeros(1, np.int8) if zero_point is None else zero_point
        scale = _array(scale_value)
        current = _array(codes_value)
        if scale is None or current is None or zero_point.any() or current.shape != layer.weight.shape:
            continue
        if scale.size > 1 and dq.attributes.get_int("axis", 1) % layer.weight.ndim != layer.channel_axis:
            continue
        codes = round_layer(layer, scale, hessians[layer.node])
        codes_value.const_value = ir.tensor(codes.astype(np.int8), name=codes_value.name)  # type: ignore[union-attr]
        changed += 1
    logger.info("quantize-static: learned rounding of %d weight tensor(s)", changed)
    return changed


def _array(value: ir.Value | None) -> np.ndarray | None:
    return value.const_value.numpy() if value is not None and value.const_value is not None else None


def _weight_dq(node: ir.Node) -> ir.Node | None:
    if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    dq = node.inputs[1].producer()
    if dq is None or dq.op_type != "DequantizeLinear" or dq.inputs[0] is None:
        return None
    codes = dq.inputs[0]
    if codes.const_value is None or codes.const_value.dtype != ir.DataType.INT8 or len(codes.uses()) != 1:
        return None
    return dq
