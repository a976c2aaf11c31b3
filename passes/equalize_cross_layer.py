"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction"), exact in float.

For two layers ``y = W2 f(W1 x + b1) + b2`` where ``f`` is positive-homogeneous per
channel (``f(s z) = s f(z)`` for ``s > 0``), any positive ``s_i`` per channel ``i`` of
the intermediate gives the same output with

    W1[i] /= s_i,   b1[i] /= s_i,   W2[:, i] *= s_i.

Choosing ``s_i = sqrt(r1_i * r2_i) / r2_i`` with ``r1_i = max |W1[i]|`` (output channel
``i`` of the first layer) and ``r2_i = max |W2[:, i]|`` (input channel ``i`` of the
second) makes both ranges ``sqrt(r1_i * r2_i)``: channels of one weight tensor end up
with similar ranges, which is what per-tensor int8 weights need (depthwise-separable
CNNs, whose folded BatchNorms spread channel ranges over orders of magnitude, collapse
without it). A layer in a chain is the second layer of one pair and the first of the
next; sweeps over all pairs are repeated until the scales settle.

Positive-homogeneous ops accepted between the layers: ``Relu``, ``LeakyRelu``,
``PRelu``, ``Clip`` with min 0 and no max (a ReLU), and ``MaxPool`` (Conv pairs); none
at all is fine too. ``Relu6`` (``Clip(0, 6)``) is not homogeneous and ends a pair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeopt.core.errors import PassOptionError
from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.rewire import ConstantWriter, const_array, is_default_domain

logger = logging.getLogger(__name__)

_FLOAT_TYPES = (np.float16, np.float32, np.float64)
_HOMOGENEOUS = frozenset({"Relu", "LeakyRelu", "PRelu", "Clip", "MaxPool"})


class EqualizeCrossLayerPass(EdgeoptPass):
    """Equalize the weight ranges of consecutive Conv or Gemm/MatMul layers per channel.

    Pairs are ``Conv -> [act] -> Conv`` (grouped and depthwise convolutions included)
    and ``Gemm|MatMul[+Add] -> [act] -> Gemm|MatMul``. A pair is skipped (DEBUG log)
    when the intermediate has another consumer or is a graph output, a weight or bias
    is not a float constant, the channel counts or groups don't line up, or an op in
    between is not positive-homogeneous. Run it after ``fold-batchnorm`` (a BatchNorm
    between the layers ends the pair). Weights only this layer uses are rewritten in
    place; shared ones are copied. Graph inputs and outputs are unchanged. Subgraphs
    are visited; model-local functions are not.

    Args:
        iterations: At most this many sweeps over all pairs; sweeping stops once no
            scale differs from 1 by more than ``tolerance``. Sweeps converge linearly
            (chains of 3 to 5 layers settle within 1e-3 in 10 to 20 sweeps, a 27-layer
            MobileNetV1-like chain needs about 250); a run that stops before that
            leaves work for the next one, which then reports ``modified=True``.
        tolerance: Scales within this of 1 count as no change; when the first sweep
            changes nothing beyond it the model is left untouched (``modified=False``).
    """

    name = "equalize-cross-layer"

    def __init__(self, *, iterations: int = 100, tolerance: float = 1e-3) -> None:
        super().__init__()
        if isinstance(iterations, bool) or iterations < 1:
            raise PassOptionError(f"equalize-cross-layer: iterations must be >= 1, got {iterations!r}.")
        if not tolerance >= 0:
            raise PassOptionError(f"equalize-cross-layer: tolerance must be >= 0, got {tolerance!r}.")
        self.iterations = iterations
        self.tolerance = tolerance

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        layers: dict[ir.Node, _Layer] = {}
        pairs: list[tuple[_Layer, _Layer]] = []
        for graph in model.graphs():
            for node in graph:
                first = _layer(node, layers)
                if first is None:
                    continue
                second = _follow(first, layers)
                if second is not None:
                    pairs.append((first, second))
        first_change = change = 0.0
        sweeps = 0
        while sweeps < self.iterations:
            change = max((_equalize(a, b) for a, b in pairs), default=0.0)
            first_change = change if sweeps == 0 else first_change
            sweeps += 1
            if change <= self.tolerance:
                break
        modified = first_change > self.tolerance
        if modified:
            writer = ConstantWriter(model)
            for layer in {id(x): x for pair in pairs for x in pair}.values():
                layer.write(writer)
        if change > self.tolerance:
            logger.info("equalize-cross-layer: %d pair(s), stopped after %d sweep(s) with scales still moving "
                        "by %.3g; another run (or more iterations) continues", len(pairs), sweeps, change)
        else:
            logger.info("equalize-cross-layer: %d pair(s), %s", len(pairs),
                        f"{sweeps} sweep(s)" if modified else "already equalized")
        return ir.passes.PassResult(model, modified=modified)


@dataclass(eq=False)
class _Layer:
    """A Conv, Gemm or MatMul with constant weights, worked on in float64."""

    node: ir.Node
    weight: np.ndarray
    out_axis: int
    in_axis: int
    group: int
    kind: str  # "conv" or "dense": which layers can pair
    output: ir.Value  # what the next op consumes: the layer's output, or its bias Add's
    bias: np.ndarray | None = None
    bias_at: tuple[ir.Node, int] | None = None  # (node, input index) holding the bias

    @property
    def out_channels(self) -> int:
        return self.weight.shape[self.out_axis]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[self.in_axis] * self.group

    def out_absmax(self) -> np.ndarray:
        moved = np.moveaxis(np.abs(self.weight), self.out_axis, 0)
        return moved.reshape(moved.shape[0], -1).max(axis=1)

    def _grouped_in(self) -> np.ndarray:
        """Weights as (group, rows of a group, input channels of a group, rest)."""
        moved = np.moveaxis(self.weight, (self.out_axis, self.in_axis), (0, 1))
        return moved.reshape((self.group, moved.shape[0] // self.group) + moved.shape[1:2] + (-1,))

    def in_absmax(self) -> np.ndarray:
        return np.abs(self._grouped_in()).max(axis=(1, 3)).reshape(-1)

    def scale_out(self, factor: np.ndarray) -> None:
        shape = [1] * self.weight.ndim
        shape[self.out_axis] = -1
        self.weight = self.weight * factor.reshape(shape)
        if self.bias is not None:
            self.bias = self.bias * factor

    def scale_in(self, factor: np.ndarray) -> None:
        grouped = self._grouped_in() * factor.reshape(self.group, 1, -1, 1)
        moved = np.moveaxis(self.weight, (self.out_axis, self.in_axis), (0, 1))
        self.weight = np.moveaxis(grouped.reshape(moved.shape), (0, 1), (self.out_axis, self.in_axis))

    def write(self, writer: ConstantWriter) -> None:
        old = const_array(self.node.inputs[1])
        assert old is not None
        writer.set(self.node, 1, self.weight.astype(old.dtype), "cle")
        if self.bias is not None and self.bias_at is not None:
            node, index = self.bias_at
            held = const_array(node.inputs[index])
            shape = held.shape if held is not None and held.size == self.bias.size else self.bias.shape
            writer.set(node, index, self.bias.reshape(shape).astype(old.dtype), "cle")


def _layer(node: ir.Node, cache: dict[ir.Node, _Layer]) -> _Layer | None:
    """The node as a layer, or None (with the reason at DEBUG) when it can't be one."""
    if node in cache:
        return cache[node]
    if node.op_type not in ("Conv", "Gemm", "MatMul") or not is_default_domain(node) or len(node.inputs) < 2:
        return None
    weight = const_array(node.inputs[1])
    if weight is None or weight.dtype.type not in _FLOAT_TYPES:
        logger.debug("equalize-cross-layer: skipped %s: weights are not float constants", node.name)
        return None
    layer = _conv(node, weight) if node.op_type == "Conv" else _dense(node, weight)
    if layer is not None:
        cache[node] = layer
    return layer


def _conv(node: ir.Node, weight: np.ndarray) -> _Layer | None:
    group = node.attributes.get_int("group", 1)
    if weight.ndim < 3 or weight.shape[0] % group:
        return None
    layer = _Layer(node, weight.astype(np.float64), 0, 1, group, "conv", node.outputs[0])
    return _with_bias(layer, node, 2)


def _dense(node: ir.Node, weight: np.ndarray) -> _Layer | None:
    if weight.ndim != 2:
        logger.debug("equalize-cross-layer: skipped %s: weights are not a matrix", node.name)
        return None
    trans_b = node.op_type == "Gemm" and node.attributes.get_int("transB", 0) != 0
    layer = _Layer(node, weight.astype(np.float64), 0 if trans_b else 1, 1 if trans_b else 0, 1, "dense",
                   node.outputs[0])
    if node.op_type == "Gemm":
        return _with_bias(layer, node, 2)
    out = node.outputs[0]
    add = out.consumers()[0] if len(out.uses()) == 1 and not out.is_graph_output() else None
    if add is None or add.op_type != "Add" or not is_default_domain(add):
        return layer
    index = 1 if add.inputs[0] is out else 0
    bias = const_array(add.inputs[index])
    if bias is None or bias.ndim < 1 or bias.shape[-1] != layer.out_channels or any(d != 1 for d in bias.shape[:-1]):
        return layer  # not a per-channel bias: the Add ends the pair instead
    layer.bias, layer.bias_at, layer.output = bias.reshape(-1).astype(np.float64), (add, index), add.outputs[0]
    return layer


def _with_bias(layer: _Layer, node: ir.Node, index: int) -> _Layer | None:
    value = node.inputs[index] if len(node.inputs) > index else None
    if value is None:
        return layer
    bias = const_array(value)
    channels = layer.out_channels
    if bias is None or bias.size not in (1, channels) or (bias.size == channels and bias.shape[-1] != channels):
        logger.debug("equalize-cross-layer: skipped %s: bias is not a per-channel constant", node.name)
        return None
    layer.bias = np.broadcast_to(bias.reshape(-1), (channels,)).astype(np.float64)
    layer.bias_at = (node, index)
    return layer


def _follow(first: _Layer, cache: dict[ir.Node, _Layer]) -> _Layer | None:
    """The layer ``first`` pairs with through positive-homogeneous ops, or None."""
    value = first.output
    while True:
        if value.is_graph_output() or len(value.uses()) != 1:
            logger.debug("equalize-cross-layer: %s: %s is a graph output or has %d consumers",
                         first.node.name, value.name, len(value.uses()))
            return None
        node, index = next(iter(value.uses()))
        if index == 0 and node.op_type in _HOMOGENEOUS and is_default_domain(node):
            if not _homogeneous(node, first.kind):
                logger.debug("equalize-cross-layer: %s: %s %s is not positive-homogeneous",
                             first.node.name, node.op_type, node.name)
                return None
            value = node.outputs[0]
            continue
        break
    second = _layer(node, cache) if index == 0 else None
    if second is None or node is first.node:
        logger.debug("equalize-cross-layer: %s: next is %s %s, not a layer with constant weights",
                     first.node.name, node.op_type, node.name)
        return None
    if second.kind != first.kind or second.in_channels != first.out_channels:
        logger.debug("equalize-cross-layer: %s -> %s: channels or layouts don't line up",
                     first.node.name, node.name)
        return None
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0) != 0:
        logger.debug("equalize-cross-layer: %s: transA", node.name)
        return None
    return second


def _homogeneous(node: ir.Node, kind: str) -> bool:
    if node.op_type == "MaxPool":
        return kind == "conv" and not any(v.uses() or v.is_graph_output() for v in node.outputs[1:])
    if node.op_type != "Clip":
        return True
    if len(node.inputs) > 1 or "min" not in node.attributes:  # opset >= 11: inputs
        low = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        high = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if low is None or (len(node.inputs) > 2 and node.inputs[2] is not None and high is None):
            return False
        return _scalar(low) == 0.0 and (high is None or _scalar(high) == np.inf)
    return (node.attributes.get_float("min", -np.inf) == 0.0
            and node.attributes.get_float("max", np.inf) == np.inf)


def _scalar(array: np.ndarray) -> float | None:
    return float(array.reshape(-1)[0]) if array.size == 1 else None


def _equalize(first: _Layer, second: _Layer) -> float:
    """Equalize one pair in memory; return the largest ``|s_i - 1|``."""
    r1, r2 = first.out_absmax(), second.in_absmax()
    ok = (r1 > 0) & (r2 > 0)
    s = np.ones_like(r1)
    s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
    first.scale_out(1.0 / s)
    second.scale_in(s)
    return float(np.abs(s - 1.0).max()) if s.size else 0.0
