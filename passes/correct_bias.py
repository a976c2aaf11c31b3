"""Empirical bias correction (Nagel et al. 2019; Banner et al. 2019) for quantized weights.

A layer ``y = L(x; W) + b`` (Conv, Gemm, MatMul followed by a bias Add) is linear in
its weights, so quantizing them to ``Wq`` shifts its output by

    y - yq = L(x; W) - L(x; Wq) = L(x; W - Wq).

Rounding does not average out per output channel: a channel whose weights are all
small next to the tensor's largest (per-tensor int8) rounds them mostly to zero, and
with inputs of non-zero mean (after a ReLU) its output is off by a constant. The pass
measures ``e_c = E[L(x; W - Wq)]_c`` per output channel ``c`` on calibration data and
sets ``b' = b + e`` (for Gemm, ``C' = C + e / beta``), so that ``L(x; Wq) + b'`` equals
the float layer on average.

``Wq`` is computed in float (fake quantization) as ``quantize-static`` will: int8
symmetric (``scale = max|w| / 127``, levels -127..127) or uint8 asymmetric, per output
channel (Conv axis 0, MatMul axis 1, Gemm axis 0 with ``transB`` else 1) or per tensor.
The weights stay float in the output; only biases change. Inputs ``x`` come from the
float model (the per-layer, float-input variant), so one pass over the data corrects
every layer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import onnx_ir as ir

from edgeopt.calibration.stream import stream_outputs
from edgeopt.core.errors import CalibrationDataError, PassOptionError
from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.rewire import ConstantWriter, const_array, is_default_domain, value_names
from edgeopt.core.runtime import Feeds

logger = logging.getLogger(__name__)

CORRECTED_KEY = "edgeopt.correct_bias"
"""Node metadata set on corrected layers, so that a second run leaves them alone."""


class CorrectBiasPass(EdgeoptPass):
    """Correct the biases of Conv, Gemm and MatMul+Add layers for weight-quantization error.

    Layers need float32 constant weights (and a constant bias, which is added to a
    Conv or Gemm that has none); a MatMul needs a following ``Add`` of a constant
    whose last dim is 1 or the channel count. Others are skipped (DEBUG log). Only
    the main graph is visited. Corrected layers are marked in their node metadata
    (``edgeopt.correct_bias``) and skipped by later runs, since correcting twice would
    double the shift. Graph inputs and outputs are unchanged; the float outputs
    change (by design), so ``preserves_semantics`` is False.

    Args:
        calibration: Sample data: a re-iterable of feeds, or a spec for
            :func:`edgeopt.data.readers.open_reader` (folder of .npy/.npz or images, ``random:N``).
        per_channel: Weights will be quantized per output channel (else per tensor),
            as ``quantize-static --per-channel``.
        weight_type: ``int8`` (symmetric, quantize-static's default) or ``uint8``.
        samples: Use at most this many calibration samples.
        batch_size: Re-batch the calibration data to this size.
    """

    name = "correct-bias"
    preserves_semantics = False
    path_options: ClassVar[tuple[str, ...]] = ("calibration",)

    def __init__(
        self,
        *,
        calibration: str | Iterable[Feeds] | None = None,
        per_channel: bool = True,
        weight_type: Literal["int8", "uint8"] = "int8",
        samples: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if calibration is None:
            raise CalibrationDataError("correct-bias needs calibration data (--calib DATA).")
        if weight_type not in ("int8", "uint8"):
            raise PassOptionError(f"correct-bias: weight_type must be 'int8' or 'uint8', got {weight_type!r}.")
        self.calibration = calibration
        self.per_channel = per_channel
        self.weight_type = weight_type
        self.samples = samples
        self.batch_size = batch_size

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        layers = [layer for node in model.graph if (layer := _layer(node)) is not None]
        if not layers:
            logger.info("correct-bias: no layer to correct")
            return ir.passes.PassResult(model, modified=False)
        errors = self._mean_errors(model, layers)
        writer = ConstantWriter(model)
        for layer, error in zip(layers, errors, strict=True):
            layer.correct(error, writer)
        logger.info("correct-bias: corrected %d layer(s); largest mean shift %.3g", len(layers),
                    max(float(np.abs(e).max()) for e in errors))
        return ir.passes.PassResult(model, modified=True)

    def _mean_errors(self, model: ir.Model, layers: list[_Layer]) -> list[np.ndarray]:
        """``E[L(x; W - Wq)]`` per layer and output channel, streamed from one session."""
        work = model.clone()
        taken = value_names(work)
        index = {node: i for i, node in enumerate(model.graph)}
        work_nodes = list(work.graph)
        names = []
        for k, layer in enumerate(layers):
            delta = layer.weight - fake_quantize(layer.weight, layer.out_axis if self.per_channel else None,
                                                 self.weight_type)
            names.append(_add_delta_layer(work, work_nodes[index[layer.node]], delta.astype(np.float32),
                                          f"correct_bias_{k}", taken))
        sums = [np.zeros(layer.channels) for layer in layers]
        counts = [0] * len(layers)
        for outputs in stream_outputs(work, names, self.calibration, model=model, samples=self.samples,
                                      batch_size=self.batch_size):
            for k, layer in enumerate(layers):
                d = outputs[names[k]]
                per_channel = np.moveaxis(d, layer.channel_axis, -1).reshape(-1, layer.channels)
                sums[k] += per_channel.sum(axis=0, dtype=np.float64)
                counts[k] += per_channel.shape[0]
        return [s / max(n, 1) for s, n in zip(sums, counts, strict=True)]


@dataclass(eq=False)
class _Layer:
    node: ir.Node
    weight: np.ndarray  # float32
    out_axis: int  # of the weight
    channel_axis: int  # of the output: 1 for Conv, -1 for Gemm and MatMul
    channels: int
    bias_at: tuple[ir.Node, int]  # the node and input that hold (or will hold) the bias
    bias_divisor: float = 1.0  # Gemm's beta

    def correct(self, error: np.ndarray, writer: ConstantWriter) -> None:
        node, index = self.bias_at
        old = const_array(node.inputs[index]) if index < len(node.inputs) else None
        bias = np.zeros(self.channels) if old is None else old.astype(np.float64)
        writer.set(node, index, (bias + error / self.bias_divisor).astype(np.float32), "bias_corrected")
        self.node.metadata_props[CORRECTED_KEY] = "true"


def _layer(node: ir.Node) -> _Layer | None:
    if node.op_type not in ("Conv", "Gemm", "MatMul") or not is_default_domain(node) or len(node.inputs) < 2:
        return None
    if node.metadata_props.get(CORRECTED_KEY):
        logger.debug("correct-bias: skipped %s: already corrected", node.name)
        return None
    weight = const_array(node.inputs[1])
    if weight is None or weight.dtype != np.float32:
        logger.debug("correct-bias: skipped %s: weights are not float32 constants", node.name)
        return None
    if node.op_type == "Conv":
        if weight.ndim < 3 or not _bias_ok(node, 2, weight.shape[0]):
            return None
        return _Layer(node, weight, 0, 1, weight.shape[0], (node, 2))
    if weight.ndim != 2:
        logger.debug("correct-bias: skipped %s: weights are not a matrix", node.name)
        return None
    out_axis = 0 if node.op_type == "Gemm" and node.attributes.get_int("transB", 0) != 0 else 1
    channels = weight.shape[out_axis]
    if node.op_type == "Gemm":
        beta = node.attributes.get_float("beta", 1.0)
        if beta == 0.0 or not _bias_ok(node, 2, channels):
            logger.debug("correct-bias: skipped %s: beta is 0 or C is not a constant", node.name)
            return None
        return _Layer(node, weight, out_axis, -1, channels, (node, 2), beta)
    out = node.outputs[0]
    add = out.consumers()[0] if len(out.uses()) == 1 and not out.is_graph_output() else None
    if add is None or add.op_type != "Add" or not is_default_domain(add):
        logger.debug("correct-bias: skipped %s: a MatMul needs a bias Add after it", node.name)
        return None
    index = 1 if add.inputs[0] is out else 0
    if not _bias_ok(add, index, channels, required=True):
        return None
    return _Layer(node, weight, out_axis, -1, channels, (add, index))


def _bias_ok(node: ir.Node, index: int, channels: int, *, required: bool = False) -> bool:
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None:
        return not required
    bias = const_array(value)
    if bias is None or bias.dtype != np.float32 or (bias.ndim and bias.shape[-1] not in (1, channels)):
        logger.debug("correct-bias: skipped %s: its bias is not a float32 constant per channel", node.name)
        return False
    return True


def fake_quantize(weight: np.ndarray, axis: int | None, weight_type: str = "int8") -> np.ndarray:
    """``weight`` quantized and dequantized as ORT quantizes weights (float32 scales).

    ``axis``: per-channel along this axis, or per tensor when None. int8 is symmetric
    over -127..127; uint8 is asymmetric over 0..255 with the range widened to include 0.
    """
    w = weight.astype(np.float64)
    others = tuple(i for i in range(w.ndim) if axis is None or i != axis % w.ndim)
    low = np.minimum(w.min(axis=others, keepdims=True), 0.0)
    high = np.maximum(w.max(axis=others, keepdims=True), 0.0)
    if weight_type == "int8":
        high = np.maximum(-low, high)
        low, qmin, qmax = -high, -127, 127
    else:
        qmin, qmax = 0, 255
    scale = ((high - low) / (qmax - qmin)).astype(np.float32).astype(np.float64)
    scale = np.where(scale < np.finfo(np.float32).tiny, 1.0, scale)
    zero = np.zeros_like(scale) if weight_type == "int8" else np.clip(np.round(qmin - low / scale), qmin, qmax)
    q = np.clip(np.round(w / scale) + zero, qmin, qmax)
    return ((q - zero) * scale).astype(weight.dtype)


def _add_delta_layer(work: ir.Model, node: ir.Node, delta: np.ndarray, name: str, taken: set[str]) -> str:
    """Add ``L(x; delta)`` next to ``node`` in ``work`` as a graph output; return its name."""
    weight_name, out_name = _unique(f"{name}_weight", taken), _unique(name, taken)
    weight = ir.Value(name=weight_name, const_value=ir.tensor(delta, name=weight_name))
    weight.shape, weight.dtype = ir.Shape(delta.shape), ir.DataType.FLOAT
    work.graph.register_initializer(weight)
    attributes = [attr for key, attr in node.attributes.items() if key != "beta"]
    twin = ir.Node(node.domain, node.op_type, [node.inputs[0], weight], attributes=attributes, name=out_name)
    twin.outputs[0].name = out_name
    work.graph.append(twin)
    work.graph.outputs.append(twin.outputs[0])
    return out_name


def _unique(name: str, taken: set[str]) -> str:
    unique, n = name, 0
    while unique in taken:
        n += 1
        unique = f"{name}_{n}"
    taken.add(unique)
    return unique
