"""Store int8 weights so that x86 CPUs without VNNI compute exactly what the quantized graph means.

On x86 without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights
with ``VPMADDUBSW``, which adds each pair of products in a saturating int16
(:mod:`edgeopt.core.cpu`). Two same-sign weights whose magnitudes add up to 129
or more overflow it once the activations are large: full-range per-channel int8
weights (|w| = 127 in every channel) nearly always do. ORT's uint8 x uint8
kernels widen to int16 before multiplying and are exact.

So, for each int8 weight tensor that can overflow (two same-sign values with
|a| + |b| >= 129) and that an integer kernel reads:

- next to uint8 activations, the weight is stored as uint8 with its zero point
  moved by 128: ``(w + 128) - (zp + 128) == w - zp``, the same values bit for bit,
  now run by the exact u8 x u8 kernel (what ORT's own ``session.x64quantprecision``
  option does at load time, but in the file, so a default session is right);
- next to int8 activations (no u8 x u8 kernel), symmetric weights are re-rounded
  to 7 bits (|w| <= 63, scale x 127/63), which cannot overflow.

Tensors that cannot overflow, and 16-bit or float consumers, are left alone.
Handles QDQ (DequantizeLinear into Conv/ConvTranspose/MatMul/Gemm), QOperator
(QLinearConv, QLinearMatMul, QGemm) and dynamic (MatMulInteger, ConvInteger,
DynamicQuantizeMatMul, MatMulIntegerToFloat) graphs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from edgeopt.core.cpu import resolve_cpu, saturation_possible
from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.rewire import is_default_domain

logger = logging.getLogger(__name__)

PAIR_LIMIT = 128
"""Largest |w_a| + |w_b| of a same-sign pair that cannot overflow: 255 * 128 = 32,640 <= 32,767."""

SEVEN_BIT_MAX = 63

_QDQ_CONSUMERS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
# op -> (activation input, weight input, weight scale input or None, weight zero point input)
_INTEGER_OPS: dict[tuple[str, str], tuple[int, int, int | None, int]] = {
    ("", "QLinearConv"): (0, 3, 4, 5),
    ("", "QLinearMatMul"): (0, 3, 4, 5),
    ("com.microsoft", "QGemm"): (0, 3, 4, 5),
    ("", "MatMulInteger"): (0, 1, None, 3),
    ("", "ConvInteger"): (0, 1, None, 3),
    ("com.microsoft", "DynamicQuantizeMatMul"): (-1, 1, 2, 3),  # -1: quantized to uint8 inside
    ("com.microsoft", "MatMulIntegerToFloat"): (0, 1, 3, 5),
}


def may_saturate(weight: np.ndarray) -> bool:
    """Whether two same-sign values of ``weight`` (int8) add up to more than :data:`PAIR_LIMIT` in
    magnitude: the kernel pairs neighbours along the reduction axis, which this does not assume."""
    values = weight.astype(np.int32).ravel()
    for side in (values[values > 0], -values[values < 0]):
        if side.size >= 2 and int(np.partition(side, side.size - 2)[-2:].sum()) > PAIR_LIMIT:
            return True
    return False


@dataclass
class _Site:
    """Where a weight enters an integer kernel: ``node``'s inputs at these positions."""

    node: ir.Node
    weight: int
    scale: int | None
    zero_point: int
    activations: set[ir.DataType | None]  # None: a float (or unknown) activation


class AvoidInt8SaturationPass(EdgeoptPass):
    """Rewrite int8 weights that could overflow ORT's u8 x s8 kernels on x86 without VNNI.

    Args:
        cpu: The CPU family the model is for (``auto``: this machine). Only ``x86-avx2``
            changes anything; other families are exact already.
    """

    name: ClassVar[str] = "avoid-int8-saturation"
    preserves_semantics: ClassVar[bool] = False  # the 7-bit path re-rounds; the uint8 path is exact

    def __init__(self, *, cpu: str = "auto") -> None:
        super().__init__()
        self.cpu = cpu
        self.widened = 0
        """After a run: weight tensors stored as uint8 (exact)."""
        self.narrowed = 0
        """After a run: weight tensors re-rounded to 7 bits."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.widened = self.narrowed = 0
        family = resolve_cpu(self.cpu)
        if not saturation_possible(family):
            return ir.passes.PassResult(model, modified=False)
        for site in _sites(model.graph):
            weight = _constant(site.node, site.weight)
            if weight is None or weight.dtype != np.int8 or not may_saturate(weight):
                continue
            if ir.DataType.INT8 in site.activations:  # no u8 x u8 kernel next to int8 activations
                self.narrowed += _requantize_to_7_bits(model.graph, site, weight)
            elif ir.DataType.UINT8 in site.activations:  # float readers of a shared DQ see the same values
                self.widened += _store_as_uint8(model.graph, site, weight)
        if self.widened or self.narrowed:
            logger.info("avoid-int8-saturation (%s): %d weight tensor(s) stored as uint8, %d re-rounded to 7 bits",
                        family, self.widened, self.narrowed)
        return ir.passes.PassResult(model, modified=bool(self.widened or self.narrowed))


def _sites(graph: ir.Graph) -> list[_Site]:
    sites = []
    for node in graph:
        domain = "" if is_default_domain(node) else node.domain
        layout = _INTEGER_OPS.get((domain, node.op_type))
        if layout is not None:
            act, weight, scale, zero_point = layout
            activations: set[ir.DataType | None] = {ir.DataType.UINT8 if act < 0 else _dtype(node.inputs[act])}
            if len(node.inputs) > weight and node.inputs[weight] is not None:
                sites.append(_Site(node, weight, scale, zero_point, activations))
        elif node.op_type == "DequantizeLinear" and domain in ("", "com.microsoft"):
            consumers = [(user, index) for user, index in node.outputs[0].uses()
                         if user.op_type in _QDQ_CONSUMERS and is_default_domain(user) and index == 1]
            if consumers and len(consumers) == len(node.outputs[0].uses()):
                activations = {_activation_dtype(user.inputs[0]) for user, _ in consumers}
                sites.append(_Site(node, 0, 1, 2, activations))
    return sites


def _dtype(value: ir.Value | None) -> ir.DataType | None:
    """An integer tensor's type, from its producer where shape inference left it unset."""
    if value is None or value.dtype is not None:
        return value.dtype if value is not None else None
    producer = value.producer()
    if producer is None:
        return None
    if producer.op_type == "DynamicQuantizeLinear":
        return ir.DataType.UINT8
    if producer.op_type == "QuantizeLinear":
        zero_point = producer.inputs[2] if len(producer.inputs) > 2 else None
        if zero_point is not None and zero_point.dtype is not None:
            return zero_point.dtype
        output_dtype = producer.attributes.get_int("output_dtype", 0)
        return ir.DataType(output_dtype) if output_dtype else ir.DataType.UINT8
    return None


def _activation_dtype(value: ir.Value | None) -> ir.DataType | None:
    """The integer type a QDQ consumer's activation has before its DequantizeLinear (None: float)."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    return _dtype(producer.inputs[0])


def _constant(node: ir.Node, index: int) -> np.ndarray | None:
    value = node.inputs[index] if index < len(node.inputs) else None
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _zero_point(node: ir.Node, index: int, weight: np.ndarray) -> np.ndarray:
    found = _constant(node, index)
    return found if found is not None else np.zeros((), weight.dtype)


def _name(node: ir.Node, index: int, default: str) -> str:
    value = node.inputs[index] if index < len(node.inputs) else None
    return value.name if value is not None and value.name else default


def _set_input(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, name: str) -> None:
    """Make ``node``'s input ``index`` the constant ``array``: in place (same name) where nothing else
    reads the old initializer, else as a new initializer named ``name``."""
    tensor = ir.tensor(array)
    old = node.inputs[index] if index < len(node.inputs) else None
    if old is not None and old.is_initializer() and len(old.uses()) == 1 and not old.is_graph_output():
        old.const_value = ir.tensor(array, name=old.name)
        old.type, old.shape = ir.TensorType(tensor.dtype), ir.Shape(array.shape)
        return
    value = ir.Value(name=_unique(graph, name), type=ir.TensorType(tensor.dtype), shape=ir.Shape(array.shape),
                     const_value=tensor)
    graph.register_initializer(value)
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
    if old is not None and old.name is not None and old.is_initializer() and not old.uses() \
            and not old.is_graph_output() and old.name in graph.initializers:
        graph.initializers.pop(old.name)


def _unique(graph: ir.Graph, name: str) -> str:
    candidate, counter = name, 1
    while candidate in graph.initializers:
        candidate, counter = f"{name}_{counter}", counter + 1
    return candidate


def _store_as_uint8(graph: ir.Graph, site: _Site, weight: np.ndarray) -> int:
    zero_point = _zero_point(site.node, site.zero_point, weight)
    if zero_point.dtype != np.int8:
        return 0
    _set_input(graph, site.node, site.weight, (weight.astype(np.int16) + 128).astype(np.uint8),
               f"{_name(site.node, site.weight, 'weight')}_u8")
    _set_input(graph, site.node, site.zero_point, (zero_point.astype(np.int16) + 128).astype(np.uint8),
               f"{_name(site.node, site.zero_point, 'weight_zero_point')}_u8")
    return 1


def _requantize_to_7_bits(graph: ir.Graph, site: _Site, weight: np.ndarray) -> int:
    zero_point = _zero_point(site.node, site.zero_point, weight)
    scale = _constant(site.node, site.scale) if site.scale is not None else None
    if site.scale is None or scale is None or zero_point.any():
        logger.info("avoid-int8-saturation: %s: asymmetric or unscaled weight next to int8 activations "
                    "left as it is", site.node.name)
        return 0
    ratio = 127.0 / SEVEN_BIT_MAX
    narrowed = np.clip(np.round(weight.astype(np.float64) / ratio), -SEVEN_BIT_MAX, SEVEN_BIT_MAX).astype(np.int8)
    _set_input(graph, site.node, site.weight, narrowed, f"{_name(site.node, site.weight, 'weight')}_7bit")
    _set_input(graph, site.node, site.scale, (scale * ratio).astype(scale.dtype),
               f"{_name(site.node, site.scale, 'weight_scale')}_7bit")
    return 1
