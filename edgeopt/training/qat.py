"""Quantization-aware training of a QDQ model: float shadow weights, learnable scales, integer write-back.

:func:`prepare_qat` turns a QDQ graph into one that trains: every ``DequantizeLinear`` of a
constant integer tensor (a weight or bias) reads ``QuantizeLinear(float weight)`` instead,
where the float weight starts at the dequantized value. The interpreter runs Q/DQ as fake
quantization (rounding passes gradients straight through), so the float weights learn
while the forward pass sees exactly the integer grid. Weight codes are clamped to the
range the quantizer gave them (symmetric int8: [-127, 127], or [-63, 63] when
``avoid-int8-saturation`` stored 7-bit weights), zero points never change, and a bias
scale that was ``activation scale x weight scale`` stays that product (ORT's integer
kernels need it).

Scales train in the spirit of LSQ (Esser et al., 2020): the gradient of
``scale * clamp(round(x / scale))`` with respect to the scale flows through the fake
quantization; each scale is stored as its logarithm, so it stays positive, and a scale
that is a power of two stays one (its base-2 log is rounded in the forward pass).

:func:`finish_qat` writes the result into the original QDQ model: integer codes
computed with the same arithmetic as the training graph, and the trained scales, so
ONNX Runtime's simulation of the file (graph optimizations off) gives what training saw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from edgeopt.core.rewire import is_default_domain

if TYPE_CHECKING:
    from edgeopt.training.interpreter import OnnxModule, Positive

logger = logging.getLogger(__name__)

__all__ = ["QatPlan", "QuantizedTensor", "finish_qat", "prepare_qat"]

_BIAS_CONSUMERS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


@dataclass(frozen=True)
class QuantizedTensor:
    """One integer tensor of the QDQ model and its float shadow in the training graph."""

    codes: str
    weight: str
    scale: str
    zero_point: str | None
    axis: int | None
    low: int
    high: int
    product_of: tuple[str, str] | None = None
    """For a bias: the (activation, weight) scales whose product is its scale."""


@dataclass
class QatPlan:
    """The training graph and how it maps back onto the QDQ model."""

    graph: ir.Model
    tensors: list[QuantizedTensor] = field(default_factory=list)
    scales: dict[str, Positive] = field(default_factory=dict)
    """Scale initializers that train, and how (``log`` or ``pow2``)."""


def prepare_qat(model: ir.Model, *, learn_scales: bool = True) -> QatPlan:
    """The training graph of QDQ ``model`` (a copy; ``model`` is not changed)."""
    graph_model = model.clone()
    graph = graph_model.graph
    plan = QatPlan(graph_model)
    done: dict[str, ir.Node] = {}  # codes -> the first DequantizeLinear that reads them
    for node in list(graph):
        if node.op_type != "DequantizeLinear" or not is_default_domain(node) or "block_size" in node.attributes:
            continue
        codes = node.inputs[0]
        if codes is None or not codes.is_initializer() or codes.const_value is None \
                or codes.const_value.numpy().dtype.kind not in "iu" or not _constant(node.inputs[1]):
            continue
        first = done.get(codes.name or "")
        if first is not None:  # a weight shared by two nodes: one float copy when the scales are the same
            if list(first.inputs[1:]) == list(node.inputs[1:]) and first.attributes == node.attributes:
                node.replace_input_with(0, first.inputs[0])
            continue
        done[codes.name or ""] = node
        plan.tensors.append(_shadow(graph, node))
    if learn_scales:
        fed = {node.inputs[1].name for node in graph if node.op_type in ("QuantizeLinear", "DequantizeLinear")
               and is_default_domain(node) and node.inputs[1] is not None and _constant(node.inputs[1])}
        for name in sorted(n for n in fed if n):
            array = graph.initializers[name].const_value.numpy()  # type: ignore[union-attr]
            if array.dtype.kind != "f" or not (array > 0).all():
                continue
            plan.scales[name] = "pow2" if np.array_equal(np.exp2(np.round(np.log2(array))), array) else "log"
    logger.info("qat: %d quantized tensor(s) get float weights, %d scale(s) train", len(plan.tensors),
                len(plan.scales))
    return plan


def _constant(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer() and value.const_value is not None


def _shadow(graph: ir.Graph, dq: ir.Node) -> QuantizedTensor:
    """Make ``dq`` read ``QuantizeLinear`` of a float copy of its integer input."""
    codes_value, scale_value = dq.inputs[0], dq.inputs[1]
    assert codes_value is not None and scale_value is not None and codes_value.const_value is not None
    codes = codes_value.const_value.numpy()
    zp_value = dq.inputs[2] if len(dq.inputs) > 2 else None
    zp = zp_value.const_value.numpy() if zp_value is not None and zp_value.const_value is not None \
        else np.zeros((), codes.dtype)
    scale = scale_value.const_value.numpy()  # type: ignore[union-attr]
    axis = dq.attributes.get_int("axis", 1) if scale.size > 1 else None
    view = [1] * codes.ndim
    if axis is not None:
        view[axis % codes.ndim] = -1
    centred = codes.astype(np.int64) - zp.astype(np.int64).reshape(view if zp.size > 1 else ())
    weight = (centred.astype(np.float32) * scale.reshape(view if scale.size > 1 else ())).astype(scale.dtype)
    name = codes_value.name or "weight"
    float_value = ir.Value(name=f"{name}__qat_float", shape=ir.Shape(codes.shape),
                           type=ir.TensorType(ir.DataType.from_numpy(weight.dtype)),
                           const_value=ir.tensor(weight, name=f"{name}__qat_float"))
    graph.register_initializer(float_value)
    if zp_value is None:
        zp_value = ir.Value(name=f"{name}__qat_zero", const_value=ir.tensor(zp, name=f"{name}__qat_zero"))
        graph.register_initializer(zp_value)
    low, high = _code_range(codes, zp, centred)
    product = _product_of(dq, scale)
    if product is not None:
        scale_value = _product_node(graph, dq, product, scale.shape, name)
    attrs = [ir.AttrInt64s("qat_range", [low, high])]
    if axis is not None:
        attrs.append(ir.AttrInt64("axis", axis))
    quantize = ir.Node("", "QuantizeLinear", [float_value, scale_value, zp_value], attributes=attrs,
                       name=f"{name}__qat_quantize")
    graph.insert_before(dq, quantize)
    dq.replace_input_with(0, quantize.outputs[0])
    if product is not None:
        dq.replace_input_with(1, scale_value)
    return QuantizedTensor(name, float_value.name or "", "" if product is not None else scale_value.name or "",
                           zp_value.name, axis, low, high, product)


def _code_range(codes: np.ndarray, zp: np.ndarray, centred: np.ndarray) -> tuple[int, int]:
    """The clamp for a tensor's codes: symmetric around a 0/128 zero point, else the dtype's range."""
    info = np.iinfo(codes.dtype)
    if codes.dtype.itemsize == 1 and np.isin(zp, (0, 128)).all() and np.unique(zp).size == 1:
        limit = 63 if np.abs(centred).max(initial=0) <= 63 else 127
        middle = int(zp.reshape(-1)[0])
        return max(int(info.min), middle - limit), min(int(info.max), middle + limit)
    return int(info.min), int(info.max)


def _product_of(dq: ir.Node, scale: np.ndarray) -> tuple[str, str] | None:
    """(activation scale, weight scale) when ``dq`` is a Conv/Gemm bias whose scale is their product."""
    for consumer, slot in dq.outputs[0].uses():
        if _BIAS_CONSUMERS.get(consumer.op_type) != slot:
            return None
        parts: list[ir.Value] = []
        for value in consumer.inputs[:2]:
            producer = value.producer() if value is not None else None
            if producer is None or producer.op_type != "DequantizeLinear" or not _constant(producer.inputs[1]):
                return None
            parts.append(producer.inputs[1])  # type: ignore[arg-type]  # _constant checked it
        x_scale, w_scale = (p.const_value.numpy() for p in parts)  # type: ignore[union-attr]
        if np.allclose((x_scale * w_scale).reshape(-1), scale.reshape(-1), rtol=1e-6, atol=0):
            return parts[0].name or "", parts[1].name or ""
    return None


def _product_node(graph: ir.Graph, dq: ir.Node, product: tuple[str, str], shape: tuple[int, ...],
                  name: str) -> ir.Value:
    x_scale, w_scale = graph.initializers[product[0]], graph.initializers[product[1]]
    target = ir.Value(name=f"{name}__qat_scale_shape",
                      const_value=ir.tensor(np.array(shape, np.int64), name=f"{name}__qat_scale_shape"))
    graph.register_initializer(target)
    mul = ir.Node("", "Mul", [x_scale, w_scale], name=f"{name}__qat_scale")
    reshape = ir.Node("", "Reshape", [mul.outputs[0], target], name=f"{name}__qat_scale_reshape")
    graph.insert_before(dq, [mul, reshape])
    return reshape.outputs[0]


def finish_qat(module: OnnxModule, original: ir.Model, plan: QatPlan) -> ir.Model:
    """A copy of QDQ ``original`` with the trained scales and integer codes of ``module`` (built from ``plan``)."""
    import torch

    from edgeopt.training.shape_ops import OPS
    from edgeopt.training.writeback import write_back

    trained = original.clone()
    write_back(module, trained)  # the scales and the float weights that are not quantized
    inits = trained.graph.initializers
    with torch.no_grad():
        for t in plan.tensors:
            if t.product_of is not None:
                scale = module.value_of(t.product_of[0]) * module.value_of(t.product_of[1])
                scale_name = _scale_name(original, t.codes)
                old = inits[scale_name].const_value.numpy()  # type: ignore[union-attr]
                scale = scale.reshape(old.shape)
                inits[scale_name].const_value = ir.tensor(scale.cpu().numpy().astype(old.dtype), name=scale_name)
            else:
                scale = module.value_of(t.scale)
            zero = module.value_of(t.zero_point) if t.zero_point else None
            attrs = {"qat_range": [t.low, t.high], **({"axis": t.axis} if t.axis is not None else {})}
            (codes,) = OPS["QuantizeLinear"]([module.value_of(t.weight), scale, zero], attrs)
            old = inits[t.codes].const_value.numpy()  # type: ignore[union-attr]
            inits[t.codes].const_value = ir.tensor(codes.cpu().numpy().astype(old.dtype), name=t.codes)
    return trained


def _scale_name(model: ir.Model, codes: str) -> str:
    value = model.graph.initializers[codes]
    dq = next(node for node, slot in value.uses() if slot == 0 and node.op_type == "DequantizeLinear")
    assert dq.inputs[1] is not None
    return dq.inputs[1].name or ""
