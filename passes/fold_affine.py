"""Fold a constant per-channel ``Mul`` or ``Add`` after a Conv, ConvTranspose, Gemm or MatMul into it.

Layer scales (``x * gamma`` after a block's last projection, as in ConvNeXt,
PoolFormer or EfficientFormer), a normalization's affine split off as Mul/Add, and a
bias added as its own node are ``y = s * layer(x) + shift`` with ``s`` and ``shift``
per output channel: the layer's weights are scaled along their output-channel axis
and the bias absorbs the shift, as ``fold-batchnorm`` does for a BatchNorm. MatMul
has no bias input, so only a Mul folds into it (its constant weight's columns scaled).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.rewire import Constants, bypass, const_array, is_default_domain, value_names
from edgeopt.passes.fold_batchnorm import LAYER_FOLDERS

logger = logging.getLogger(__name__)

_FLOAT_TYPES = (np.float16, np.float32, np.float64)


class FoldAffinePass(EdgeoptPass):
    """Fold a constant per-output-channel (or scalar) ``Mul``/``Add`` into the layer before it.

    Folds only when the layer's weights (and bias) are float constants, its output
    feeds nothing but the Mul/Add, and the constant varies along the output-channel
    axis at most (axis 1 of a Conv's output, the last axis of a Gemm's or MatMul's), so
    the result keeps the layer's shape. Shared weights are copied. Graph output names
    are kept. Subgraphs are visited; model-local functions are not.
    """

    name = "fold-affine"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = 0
        taken = value_names(model)
        as_nodes = model.ir_version < 4
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if node.op_type in ("Mul", "Add") and is_default_domain(node) and node.graph is not None:
                folded += _try_fold(node, Constants(node.graph, taken, as_nodes))
        logger.info("fold-affine: folded %d Mul/Add node(s)", folded)
        return ir.passes.PassResult(model, modified=folded > 0)


def _try_fold(node: ir.Node, new: Constants) -> bool:
    for x, other in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
        if x is None or other is None:
            continue
        layer = x.producer()
        constant = const_array(other)
        if layer is None or constant is None or not _foldable(layer, x, node):
            continue
        per_channel = _per_channel(constant, layer, x)
        if per_channel is None:
            continue
        ones, zeros = np.ones_like(per_channel), np.zeros_like(per_channel)
        s, shift = (per_channel, zeros) if node.op_type == "Mul" else (ones, per_channel)
        fold = LAYER_FOLDERS.get(layer.op_type) or (_fold_matmul if layer.op_type == "MatMul" else None)
        if fold is None or not fold(layer, s, shift, new):
            continue
        if not bypass(node.outputs[0], x):
            raise AssertionError("bypass must succeed: x is produced by a node of the same graph")
        assert node.graph is not None
        node.graph.remove(node, safe=True)
        return True
    return False


def _foldable(layer: ir.Node, x: ir.Value, node: ir.Node) -> bool:
    if layer.op_type not in (*LAYER_FOLDERS, "MatMul") or not is_default_domain(layer):
        return False
    if layer.graph is not node.graph or len(x.uses()) != 1 or x.is_graph_output():
        return False
    if x.dtype is None or node.outputs[0].dtype != x.dtype:
        return False
    weight = const_array(layer.inputs[1]) if len(layer.inputs) > 1 else None
    if weight is None or weight.dtype.type not in _FLOAT_TYPES:
        return False
    bias = layer.inputs[2] if len(layer.inputs) > 2 else None
    return bias is None or const_array(bias) is not None


def _per_channel(constant: np.ndarray, layer: ir.Node, x: ir.Value) -> np.ndarray | None:
    """The constant as one float64 value per output channel, or None if it varies along
    another axis or would broadcast the layer's output to a larger shape."""
    if x.shape is None or constant.dtype.type not in _FLOAT_TYPES:
        return None
    rank = len(x.shape)
    axis = 1 if layer.op_type in ("Conv", "ConvTranspose") else rank - 1
    channels = x.shape[axis]
    if constant.ndim > rank or not isinstance(channels, int):
        return None
    if constant.size == 1:
        return np.full(channels, float(constant.reshape(-1)[0]))
    aligned = (1,) * (rank - constant.ndim) + constant.shape
    if aligned[axis] != channels or any(d != 1 for i, d in enumerate(aligned) if i != axis):
        return None
    return constant.reshape(-1).astype(np.float64)


def _fold_matmul(layer: ir.Node, s: np.ndarray, shift: np.ndarray, new: Constants) -> bool:
    """``MatMul(a, W) * s`` -> ``MatMul(a, W * s)`` for a constant 2-D ``W``; no bias to take a shift."""
    old = layer.inputs[1]
    weight = const_array(old)
    if weight is None or old is None or weight.ndim != 2 or weight.shape[1] != s.size or np.any(shift):
        return False
    layer.replace_input_with(1, new.add(f"{old.name}_scaled", (weight * s[None, :]).astype(weight.dtype)))
    return True
