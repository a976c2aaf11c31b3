"""Least-squares refit of a 2-D ``Conv`` (grouped and depthwise included), for the repairs.

A convolution is a linear map of each input patch, so ``im2col`` turns it into rows of
``(Cin/groups)·kh·kw`` features per group; every group is its own
:class:`~edgeopt.core.least_squares.NormalEquations` (a depthwise Conv: one tiny system per
channel). The patches come from :func:`edgeopt.core.patches.im2col`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeopt.core.least_squares import NormalEquations
from edgeopt.core.patches import im2col
from edgeopt.core.rewire import ConstantWriter, const_array, is_default_domain


@dataclass
class ConvProjection:
    """A Conv whose weight (and bias) can be refitted: its input ``x`` and output ``y`` by name."""

    node: str
    x: str
    y: str
    weight: np.ndarray
    """``(Cout, Cin/groups, kh, kw)``."""
    group: int
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]

    def systems(self) -> list[NormalEquations]:
        cout, cin, kh, kw = self.weight.shape
        return [NormalEquations(cin * kh * kw, cout // self.group) for _ in range(self.group)]

    def add(self, systems: list[NormalEquations], x: np.ndarray, y: np.ndarray) -> None:
        cols = im2col(x, self.weight.shape[2:], self.strides, self.pads, self.dilations)  # N, C, kh, kw, Ho, Wo
        n, c, kh, kw, ho, wo = cols.shape
        per_in, per_out = c // self.group, y.shape[1] // self.group
        for g, system in enumerate(systems):
            rows = cols[:, g * per_in:(g + 1) * per_in].transpose(0, 4, 5, 1, 2, 3).reshape(-1, per_in * kh * kw)
            target = y[:, g * per_out:(g + 1) * per_out].transpose(0, 2, 3, 1).reshape(-1, per_out)
            system.add(rows, target)

    def write(self, node: ir.Node, writer: ConstantWriter, systems: list[NormalEquations], ridge: float) -> None:
        cout, cin, kh, kw = self.weight.shape
        weights, biases = [], []
        for system in systems:
            w, b = system.solve(ridge=ridge)  # w: (cin·kh·kw, cout/groups)
            weights.append(w.T.reshape(-1, cin, kh, kw))
            assert b is not None
            biases.append(b)
        dtype = self.weight.dtype
        writer.set(node, 1, np.concatenate(weights).astype(dtype), "repaired")
        writer.set(node, 2, np.concatenate(biases).astype(dtype), "repaired")


def conv_projection(node: ir.Node) -> ConvProjection | None:
    """``node`` as a refittable 2-D Conv (constant weight, explicit pads), or None."""
    if node.op_type != "Conv" or not is_default_domain(node) or len(node.inputs) < 2:
        return None
    x, weight = node.inputs[0], const_array(node.inputs[1])
    if x is None or not x.name or weight is None or weight.ndim != 4 or not node.outputs[0].name:
        return None
    if node.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
        return None
    if len(node.inputs) > 2 and node.inputs[2] is not None and const_array(node.inputs[2]) is None:
        return None
    strides = tuple(node.attributes.get_ints("strides", [1, 1]))
    pads = tuple(node.attributes.get_ints("pads", [0, 0, 0, 0]))
    dilations = tuple(node.attributes.get_ints("dilations", [1, 1]))
    if len(strides) != 2 or len(pads) != 4 or len(dilations) != 2:
        return None
    return ConvProjection(node.name or "", x.name, node.outputs[0].name, weight, node.attributes.get_int("group", 1),
                          strides, pads, dilations)  # type: ignore[arg-type]
