"""Learned rounding for converters that quantize weights themselves (TFLite's full-integer int8).

A converter such as TFLite's computes each output channel's int8 scale as max |w_c| / 127 and
rounds to nearest. This pass fits int8 codes on each Conv/Gemm/MatMul's real inputs
(:mod:`edgeopt.calibration.rounding`, the learned rounding of static int8) and writes the float
values those codes stand for back into the float model: the converter's scales come out the same
(each channel's largest weight keeps its code, +-127), so its nearest rounding lands on the learned
codes. The model stays float; only weight values move, each by less than one quantization step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from edgeopt.calibration.rounding import WeightLayer, input_hessians, round_layer, weight_layers
from edgeopt.core.errors import CalibrationDataError
from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.runtime import Feeds
from edgeopt.data.readers import open_reader
from edgeopt.passes.quantize_rounding import ROUNDING_SAMPLES

logger = logging.getLogger(__name__)


class RoundWeightsPass(EdgeoptPass):
    """Move float weights onto the int8 grid point learned rounding picks (per output channel).

    Args:
        calibration: Sample data (a re-iterable of feeds, or a path / ``random:N``).
        samples: At most this many samples for the input statistics (512 by default).
        batch_size: Re-batch the data to this size.
    """

    name = "round-weights"
    preserves_semantics = False
    path_options: ClassVar[tuple[str, ...]] = ("calibration",)

    def __init__(self, *, calibration: str | Iterable[Feeds] | None = None, samples: int | None = None,
                 batch_size: int | None = None) -> None:
        super().__init__()
        if calibration is None:
            raise CalibrationDataError("round-weights needs calibration data (--calib DATA).")
        self.calibration = calibration
        self.samples = samples
        self.batch_size = batch_size
        self.rounded = 0
        """Weight tensors moved by the last run."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        reader = open_reader(self.calibration, model) if isinstance(self.calibration, str) else self.calibration
        by_name = {node.name: node for node in model.graph if node.name}
        layers = [layer for layer in weight_layers(model) if _single_use(by_name[layer.node])]
        if not layers:
            return ir.passes.PassResult(model, modified=False)
        limit = ROUNDING_SAMPLES if self.samples is None else min(self.samples, ROUNDING_SAMPLES)
        hessians = input_hessians(model, layers, reader, samples=limit, batch_size=self.batch_size)
        self.rounded = 0
        for layer in layers:
            if layer.node not in hessians:
                continue
            weight = by_name[layer.node].inputs[1]
            assert weight is not None and weight.const_value is not None
            values = _learned_values(layer, hessians[layer.node])
            weight.const_value = ir.tensor(values, name=weight.const_value.name)
            self.rounded += 1
        logger.info("round-weights: %d weight tensor(s) on their learned int8 grid points", self.rounded)
        return ir.passes.PassResult(model, modified=self.rounded > 0)


def _learned_values(layer: WeightLayer, hessian: np.ndarray) -> np.ndarray:
    """The float values of ``layer``'s learned codes at per-channel scales max |w_c| / 127."""
    weight = layer.weight.astype(np.float64)
    axis = layer.channel_axis
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    peak = np.abs(moved).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    codes = np.moveaxis(round_layer(layer, scale, hessian), axis, 0).reshape(moved.shape).astype(np.float64)
    # each channel's largest weight keeps its code (+-127): the converter then finds the same scale
    top = np.abs(moved).argmax(axis=1)
    rows = np.arange(moved.shape[0])
    codes[rows, top] = np.sign(moved[rows, top]) * 127
    values = codes * scale[:, None]
    shape = (weight.shape[axis], *np.delete(weight.shape, axis))
    return np.moveaxis(values.reshape(shape), 0, axis).astype(layer.weight.dtype)


def _single_use(node: ir.Node) -> bool:
    """A weight only its own layer reads (a shared one would move under the other reader too)."""
    weight = node.inputs[1]
    return weight is not None and len(weight.uses()) == 1 and not weight.is_graph_input()
