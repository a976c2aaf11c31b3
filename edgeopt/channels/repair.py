"""Repair after channel pruning, without training: refit each sink layer by least squares.

A sink (Conv, Gemm, MatMul) that lost input channels is refit so that, fed the
*original* model's activations restricted to the kept channels, it reproduces the
original model's output: ``min ‖X_kept W + b − Y‖²`` with ``X`` the layer's input
(im2col patches for a Conv) and ``Y`` its output, both from the unpruned model
(the formulation of He et al., "Channel Pruning for Accelerating Very Deep Neural
Networks", 2017). Every sink is fit from one streaming pass: ``XᵀX`` and ``XᵀY``
accumulate in :class:`edgeopt.core.least_squares.NormalEquations`, and at most
``rows_per_batch`` random rows (pixels/tokens) per batch are used, so memory stays
bounded. Since every refit layer reproduces the original outputs, the next
layer's inputs stay close to the original too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from numpy.lib.stride_tricks import sliding_window_view

from edgeopt.calibration.stream import stream_outputs
from edgeopt.core.least_squares import NormalEquations
from edgeopt.core.runtime import Feeds

logger = logging.getLogger(__name__)

MAX_FEATURES = 8192
"""Sinks with more (kept) input features are not refit: ``XᵀX`` would pass 512 MB."""


@dataclass
class SinkFit:
    """A layer to refit: its weight, the input axis of that weight and the kept positions on it."""

    node: ir.Node
    weight: np.ndarray
    in_axis: int
    kept: np.ndarray
    bias_add: ir.Value | None = None
    """For a MatMul: the constant of the ``Add`` after it, which absorbs the refit bias (None: no bias)."""


def bias_add(node: ir.Node) -> ir.Value | None:
    """The constant ``(N,)`` operand of the only consumer of a MatMul, when that is an ``Add``."""
    uses = list(node.outputs[0].uses())
    if len(uses) != 1 or node.outputs[0].is_graph_output():
        return None
    add = uses[0][0]
    if add.op_type != "Add" or len(add.inputs) != 2:
        return None
    other = add.inputs[1 - uses[0][1]]
    tensor = ir.convenience.get_const_tensor(other) if other is not None and not other.is_graph_input() else None
    if tensor is None or tensor.numpy().ndim != 1 or len(other.uses()) != 1:  # type: ignore[union-attr]
        return None
    return other


def fittable(node: ir.Node, weight: np.ndarray) -> str | None:
    """Why ``node`` cannot be refit (None: it can)."""
    if node.op_type == "Conv":
        if node.attributes.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return "auto_pad SAME_* is not supported by the refit"
        if node.attributes.get_int("group", 1) != 1:
            return "grouped Conv"
    elif node.op_type == "Gemm" and node.attributes.get_int("transA", 0) != 0:
        return "transA Gemm"
    return None


def fit_sinks(
    model: ir.Model, fits: list[SinkFit], calibration: str | Iterable[Feeds], *,
    samples: int | None = None, rows_per_batch: int = 4096, seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """New ``(weight, bias)`` per fit (same order), in the layer's own layout, for all its outputs.

    ``model`` is the unpruned model (not modified). Conv weights come back as
    ``(C_out, kept C_in, k...)``, Gemm's as its ``B`` (honouring ``transB``, with
    alpha = beta = 1 expected), MatMul's as ``(kept K, N)`` with a bias only when ``bias_add`` is set.
    """
    work = model.clone()
    produced = {v.name: v for node in work.graph for v in node.outputs}
    names: list[str] = []
    for fit in fits:
        names += [str(fit.node.inputs[0].name), str(fit.node.outputs[0].name)]  # type: ignore[union-attr]
    names = list(dict.fromkeys(names))
    present = {v.name for v in work.graph.outputs}
    work.graph.outputs.extend(produced[n] for n in names if n not in present and n in produced)
    equations = [_equations(fit) for fit in fits]
    rng = np.random.default_rng(seed)
    seen = 0
    for batch in stream_outputs(work, names, calibration, model=model, samples=samples):
        for fit, equation in zip(fits, equations, strict=True):
            x = np.asarray(batch[str(fit.node.inputs[0].name)])  # type: ignore[union-attr]
            y = np.asarray(batch[str(fit.node.outputs[0].name)])
            features, target = _rows(fit, x, y, rng, rows_per_batch)
            equation.add(features, target)
        seen += len(next(iter(batch.values())))
        if on_batch is not None:
            on_batch(seen)
    return [_solution(fit, equation) for fit, equation in zip(fits, equations, strict=True)]


def _equations(fit: SinkFit) -> NormalEquations:
    spatial = math.prod(fit.weight.shape[2:]) if fit.node.op_type == "Conv" else 1
    outputs = _out_size(fit)
    return NormalEquations(fit.kept.size * spatial, outputs,
                           bias=fit.node.op_type != "MatMul" or fit.bias_add is not None)


def _out_size(fit: SinkFit) -> int:
    if fit.node.op_type == "Gemm":
        return int(fit.weight.shape[0 if fit.node.attributes.get_int("transB", 0) else 1])
    return int(fit.weight.shape[0] if fit.node.op_type == "Conv" else fit.weight.shape[1])


def _rows(fit: SinkFit, x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
          limit: int) -> tuple[np.ndarray, np.ndarray]:
    if fit.node.op_type != "Conv":
        x = x.reshape(-1, x.shape[-1])[:, fit.kept]
        y = y.reshape(-1, y.shape[-1])
        pick = rng.choice(x.shape[0], size=min(limit, x.shape[0]), replace=False)
        return x[pick], y[pick]
    return _conv_rows(fit, x[:, fit.kept], y, rng, limit)


def _conv_rows(fit: SinkFit, x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
               limit: int) -> tuple[np.ndarray, np.ndarray]:
    """im2col patches at random output positions, and the outputs there."""
    node, kernel = fit.node, fit.weight.shape[2:]
    s = len(kernel)
    strides = list(node.attributes.get_ints("strides", [1] * s))
    dilations = list(node.attributes.get_ints("dilations", [1] * s))
    pads = list(node.attributes.get_ints("pads", [0] * 2 * s))
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + s]) for i in range(s)])
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    windows = sliding_window_view(padded, span, axis=tuple(range(2, 2 + s)))
    windows = windows[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in strides)
                      + tuple(slice(None, None, d) for d in dilations)]
    grid = (y.shape[0], *y.shape[2:])
    total = math.prod(grid)
    flat = rng.choice(total, size=min(limit, total), replace=False)
    index = np.unravel_index(flat, grid)
    patches = windows[(index[0], slice(None), *index[1:])]  # (rows, C_kept, k...)
    outputs = y[(index[0], slice(None), *index[1:])]  # (rows, C_out)
    return patches.reshape(patches.shape[0], -1), outputs


def _solution(fit: SinkFit, equations: NormalEquations) -> tuple[np.ndarray, np.ndarray | None]:
    w, b = equations.solve()
    dtype = fit.weight.dtype
    if fit.node.op_type == "Conv":
        shape = (w.shape[1], fit.kept.size, *fit.weight.shape[2:])
        return w.T.reshape(shape).astype(dtype), None if b is None else b.astype(dtype)
    if fit.node.op_type == "Gemm" and fit.node.attributes.get_int("transB", 0) != 0:
        w = w.T
    return w.astype(dtype), None if b is None else b.astype(dtype)
