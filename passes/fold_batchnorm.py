"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm before it.

BatchNormalization computes ``y = s * (x - mean) + beta`` with
``s = scale / sqrt(var + epsilon)`` per channel (axis 1). When ``x`` is the
output of a layer that is linear per output channel, ``x = W * a + b``, then
``y = (s * W) * a + (s * (b - mean) + beta)``: the layer's weights are scaled
along their output-channel axis and its bias absorbs the shift.

For Gemm ``y = alpha * A @ B + beta_c * C``, the columns of ``B`` (rows when
``transB``) are scaled and ``C`` becomes ``s * (beta_c * C - mean) + beta`` with
``beta_c`` set to 1.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.rewire import Constants, bypass, const_array, is_default_domain, value_names

logger = logging.getLogger(__name__)

_FLOAT_TYPES = (np.float16, np.float32, np.float64)


class FoldBatchNormPass(EdgeoptPass):
    """Fold ``BatchNormalization`` into a preceding Conv, ConvTranspose or Gemm.

    Folds only when the BatchNorm is in inference mode with constant parameters,
    the layer's weights (and bias) are constants, and the layer's output feeds
    nothing but the BatchNorm. Weights shared with other nodes are copied, never
    changed in place. The new weights are initializers, or ``Constant`` nodes in
    models with IR < 4 (where every initializer must also be a graph input).
    Graph output names are kept. Subgraphs are visited; model-local functions
    are not. The opset range applies only to models that have a BatchNormalization.
    """

    name = "fold-batchnorm"
    min_opset = 7

    def requires(self, model: ir.Model) -> None:
        if any(_is_batchnorm(node) for node in ir.traversal.RecursiveGraphIterator(model.graph)):
            super().requires(model)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = 0
        taken = value_names(model)
        as_nodes = model.ir_version < 4
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if _is_batchnorm(node):
                folded += _try_fold(node, taken, as_nodes)
        logger.info("fold-batchnorm: folded %d BatchNormalization node(s)", folded)
        return ir.passes.PassResult(model, modified=folded > 0)


def _is_batchnorm(node: ir.Node) -> bool:
    return node.op_type == "BatchNormalization" and is_default_domain(node)


def _try_fold(bn: ir.Node, taken: set[str], as_nodes: bool) -> bool:
    reason = _unfoldable_reason(bn)
    if reason:
        logger.debug("fold-batchnorm: kept %s: %s", bn.name, reason)
        return False
    x = bn.inputs[0]
    assert x is not None and bn.graph is not None
    layer = x.producer()
    assert layer is not None
    scale, beta, mean, var = (const_array(v).astype(np.float64) for v in bn.inputs[1:5])  # type: ignore[union-attr]
    epsilon = bn.attributes.get_float("epsilon", 1e-5)
    s = scale / np.sqrt(var + epsilon)
    folded = _FOLDERS[layer.op_type](layer, s, beta - s * mean, Constants(bn.graph, taken, as_nodes))
    if not folded:
        logger.debug("fold-batchnorm: kept %s: %s weights have an unsupported layout",
                     bn.name, layer.op_type)
        return False
    if not bypass(bn.outputs[0], x):
        raise AssertionError("bypass must succeed: x is produced by a node of the same graph")
    bn.graph.remove(bn, safe=True)
    return True


def _unfoldable_reason(bn: ir.Node) -> str | None:
    if len(bn.inputs) != 5 or any(v is None for v in bn.inputs):
        return "not 5 inputs"
    if bn.attributes.get_int("training_mode", 0) != 0 or bn.attributes.get_int("spatial", 1) != 1:
        return "training mode or spatial=0"
    if any(v.uses() or v.is_graph_output() for v in bn.outputs[1:]):
        return "training outputs are used"
    if any(const_array(v) is None for v in bn.inputs[1:]):
        return "parameters are not constants"
    x = bn.inputs[0]
    assert x is not None
    layer = x.producer()
    if layer is None or layer.op_type not in _FOLDERS or not is_default_domain(layer):
        return "not preceded by Conv, ConvTranspose or Gemm"
    if layer.graph is not bn.graph or len(x.uses()) != 1 or x.is_graph_output():
        return "the layer's output has other consumers"
    weight = const_array(layer.inputs[1]) if len(layer.inputs) > 1 else None
    if weight is None or weight.dtype.type not in _FLOAT_TYPES:
        return "layer weights are not float constants"
    if len(layer.inputs) > 2 and layer.inputs[2] is not None and const_array(layer.inputs[2]) is None:
        return "layer bias is not a constant"
    return None


def _fold_conv(layer: ir.Node, s: np.ndarray, shift: np.ndarray, new: Constants) -> bool:
    weight = const_array(layer.inputs[1])
    assert weight is not None
    if weight.ndim < 3 or weight.shape[0] != s.size:
        return False
    bias = _bias(layer, 2, s.size)
    if bias is None:
        return False
    factor = s.reshape((-1,) + (1,) * (weight.ndim - 1))
    _set_layer_params(layer, weight * factor, bias, s, shift, new)
    return True


def _fold_conv_transpose(layer: ir.Node, s: np.ndarray, shift: np.ndarray, new: Constants) -> bool:
    weight = const_array(layer.inputs[1])
    assert weight is not None
    group = layer.attributes.get_int("group", 1)
    if weight.ndim < 3 or weight.shape[0] % group or weight.shape[1] * group != s.size:
        return False
    # weight: (C_in, C_out / group, k...); output channel = g * (C_out / group) + j.
    grouped = weight.reshape((group, weight.shape[0] // group) + weight.shape[1:])
    factor = s.reshape((group, 1, weight.shape[1]) + (1,) * (weight.ndim - 2))
    new_weight = (grouped * factor).reshape(weight.shape)
    bias = _bias(layer, 2, s.size)
    if bias is None:
        return False
    _set_layer_params(layer, new_weight, bias, s, shift, new)
    return True


def _fold_gemm(layer: ir.Node, s: np.ndarray, shift: np.ndarray, new: Constants) -> bool:
    weight = const_array(layer.inputs[1])
    assert weight is not None
    trans_b = layer.attributes.get_int("transB", 0)
    if weight.ndim != 2 or weight.shape[0 if trans_b else 1] != s.size:
        return False
    bias = _bias(layer, 2, s.size)
    if bias is None:
        return False
    beta_c = layer.attributes.get_float("beta", 1.0)
    new_weight = weight * (s[:, None] if trans_b else s[None, :])
    _set_layer_params(layer, new_weight, beta_c * bias, s, shift, new)
    if "beta" in layer.attributes:
        layer.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    return True


def _bias(layer: ir.Node, index: int, channels: int) -> np.ndarray | None:
    """The layer's bias as a ``(channels,)`` float64 array, zeros when absent."""
    if len(layer.inputs) <= index or layer.inputs[index] is None:
        return np.zeros(channels)
    bias = const_array(layer.inputs[index])
    assert bias is not None
    if bias.size == 1:
        return np.full(channels, float(bias.reshape(-1)[0]))
    if bias.shape not in ((channels,), (1, channels)):
        return None
    return bias.reshape(-1).astype(np.float64)


def _set_layer_params(
    layer: ir.Node, weight: np.ndarray, bias: np.ndarray, s: np.ndarray,
    shift: np.ndarray, new: Constants,
) -> None:
    old_weight = layer.inputs[1]
    assert old_weight is not None
    dtype = const_array(old_weight).dtype  # type: ignore[union-attr]
    new_bias = (s * bias + shift).astype(dtype)
    layer.replace_input_with(1, new.add(f"{old_weight.name}_bnfold", weight.astype(dtype)))
    if len(layer.inputs) < 3:
        layer.resize_inputs(3)
    layer.replace_input_with(2, new.add(f"{layer.name or 'layer'}_bnfold_bias", new_bias))


_FOLDERS = {"Conv": _fold_conv, "ConvTranspose": _fold_conv_transpose, "Gemm": _fold_gemm}

#: Layer op -> folds ``y = s * layer(x) + shift`` (per output channel) into the layer's weights and
#: bias; False where the weights' layout does not allow it. Used by ``fold-affine`` too.
LAYER_FOLDERS = _FOLDERS
