"""Budgeted mixed precision: 16-bit activations around the nodes that lose the most, within a budget.

The sensitivity table ranks nodes by the SQNR they lose when quantized. The
activations around the top ones (a node's computed inputs and its outputs) go to
uint16 (A16W8; the weights stay int8), until the budget is spent. The budget is a
share of the model's multiply-accumulates: a Conv/Gemm/MatMul that reads or writes
a 16-bit tensor runs without ONNX Runtime's int8 kernels on a CPU (an NPU runs
A16W8 natively), so its MACs are what the precision costs. A node whose MACs
would overrun the budget is skipped for the next one that fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx_ir as ir

from edgeopt.core.inspect_model import node_macs
from edgeopt.quantization.analysis import NodeError


@dataclass(frozen=True)
class MixedPrecision:
    """What :func:`choose_16bit_tensors` picked."""

    tensors: tuple[str, ...]
    nodes: tuple[str, ...]
    macs_share: float  # of the model's MACs that run without int8 kernels because of them


def choose_16bit_tensors(model: ir.Model, ranked: Sequence[NodeError], budget: float) -> MixedPrecision:
    """The activations to quantize to 16 bits: around the most sensitive nodes, MACs within ``budget``
    (a share of the model's, 0 to 1). ``model`` is the float (pre-processed) model."""
    macs = {name: m or 0 for name, m in node_macs(model).items()}
    total = sum(macs.values()) or 1
    by_name = {node.name: node for node in model.graph if node.name}
    tensors: list[str] = []
    nodes: list[str] = []
    costly: set[str] = set()
    for error in ranked:
        node = by_name.get(error.node)
        if error.introduced_db <= 0 or node is None:
            continue
        around = [v for v in (*node.inputs, *node.outputs) if v is not None and v.name and v.const_value is None
                  and v.dtype is not None and v.dtype.is_floating_point()]
        touched = {n.name for v in around for n in (v.producer(), *(u for u, _ in v.uses())) if n is not None}
        extra = {n for n in touched if n and macs.get(n, 0) and n not in costly}
        if sum(macs[n] for n in costly | extra) > budget * total:
            continue
        costly |= extra
        nodes.append(error.node)
        tensors += [str(v.name) for v in around if v.name not in tensors]
    return MixedPrecision(tuple(tensors), tuple(nodes), sum(macs[n] for n in costly) / total)
