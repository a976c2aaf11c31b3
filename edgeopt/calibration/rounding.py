"""Learned rounding of int8 weights, fitted on each layer's real inputs (GPTQ-style).

Rounding every weight to the nearest step ignores that the errors add up at the
layer's output. With ``H = E[x xᵀ]`` of the layer's input (streamed over the
calibration data, per group of a grouped Conv), the output error of a weight
error ``Δ`` is ``Δᵀ H Δ`` per output channel. The weights are rounded one input
feature at a time, and the rounding error of each is compensated in the features
not rounded yet through ``H⁻¹`` (the optimal-brain-quantization update that GPTQ,
Frantar et al. 2023, made fast); the scales are kept, so only the integer codes
change. The same spirit as AdaRound's learned rounding, without its training loop:
one Cholesky factor and one pass over the features per layer.

Written here: ORT's quantizers round to nearest, NNCF and AIMET do learned
rounding only inside their own PyTorch/ONNX flows, and GPTQ libraries target
PyTorch LLM layers; this works on an ONNX graph's Conv/Gemm/MatMul with numpy.
Memory per layer is ``groups * K²`` floats (K = inputs per output), not per sample.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeopt.calibration.fetch import FETCH_BYTES
from edgeopt.calibration.stream import stream_output_groups
from edgeopt.core.patches import im2col, patches_at
from edgeopt.core.rewire import const_array, is_default_domain
from edgeopt.core.runtime import Feeds

logger = logging.getLogger(__name__)

ROWS_PER_BATCH = 4096
"""Input rows (samples x output positions) a layer adds to its ``H`` per batch, drawn at random
positions when there are more: bounds the work on large feature maps."""

DAMPING = 0.01
"""Added to ``H``'s diagonal, relative to its mean (GPTQ's default)."""


@dataclass
class WeightLayer:
    """A Conv/Gemm/MatMul with a constant weight, seen as ``groups`` matrices (rows: outputs)."""

    node: str
    input: str
    kind: str  # "conv" | "matmul" | "gemm"
    weight: np.ndarray  # as stored
    groups: int = 1
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    trans_b: bool = False

    @property
    def features(self) -> int:
        """Inputs per output (per group)."""
        if self.kind == "conv":
            return int(np.prod(self.weight.shape[1:]))
        return int(self.weight.shape[1] if self.kind == "gemm" and self.trans_b else self.weight.shape[0])

    def matrices(self, weight: np.ndarray) -> np.ndarray:
        """``weight`` (as stored) as ``(groups, outputs per group, features)``."""
        if self.kind == "conv":
            return weight.reshape(self.groups, weight.shape[0] // self.groups, -1)
        matrix = weight if self.kind == "gemm" and self.trans_b else weight.T
        return matrix[None]

    def stored(self, matrices: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`matrices`."""
        if self.kind == "conv":
            return matrices.reshape(self.weight.shape)
        return matrices[0] if self.kind == "gemm" and self.trans_b else matrices[0].T

    @property
    def channel_axis(self) -> int:
        """The axis of the stored weight that holds output channels (per-channel scales)."""
        return 0 if self.kind == "conv" or (self.kind == "gemm" and self.trans_b) else 1

    def rows(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Input rows ``(groups, n, features)`` from the layer's input ``x``, at most ROWS_PER_BATCH."""
        if self.kind != "conv":
            flat = x.reshape(-1, x.shape[-1]).astype(np.float32)
            if flat.shape[0] > ROWS_PER_BATCH:
                flat = flat[rng.choice(flat.shape[0], ROWS_PER_BATCH, replace=False)]
            return flat[None]
        cols = im2col(x, self.weight.shape[2:], self.strides, self.pads, self.dilations)  # a view: N, C, kh, kw, Ho, Wo
        n, c, kh, kw, ho, wo = cols.shape
        positions = n * ho * wo
        chosen = rng.choice(positions, ROWS_PER_BATCH, replace=False) if positions > ROWS_PER_BATCH else None
        patches = patches_at(x, self.weight.shape[2:], self.strides, self.pads, self.dilations, chosen)
        patches = patches.reshape(len(patches), self.groups, (c // self.groups) * kh * kw)
        return np.ascontiguousarray(patches.transpose(1, 0, 2), dtype=np.float32)


def weight_layers(model: ir.Model, nodes: Iterable[str] | None = None) -> list[WeightLayer]:
    """Conv (2-D, explicit pads), Gemm and MatMul nodes of the main graph with a constant 2-D/4-D weight."""
    wanted = set(nodes) if nodes is not None else None
    layers = []
    for node in model.graph:
        if not node.name or (wanted is not None and node.name not in wanted) or not is_default_domain(node):
            continue
        if len(node.inputs) < 2 or node.inputs[0] is None or not node.inputs[0].name:
            continue
        weight = const_array(node.inputs[1])
        if weight is None or weight.dtype != np.float32:
            continue
        layer = _layer(node, weight)
        if layer is not None:
            layers.append(layer)
    return layers


def _layer(node: ir.Node, weight: np.ndarray) -> WeightLayer | None:
    x = str(node.inputs[0].name)  # type: ignore[union-attr]
    if node.op_type == "Conv" and weight.ndim == 4 and node.attributes.get_string("auto_pad", "NOTSET") == "NOTSET":
        strides = tuple(node.attributes.get_ints("strides", [1, 1]))
        pads = tuple(node.attributes.get_ints("pads", [0, 0, 0, 0]))
        dilations = tuple(node.attributes.get_ints("dilations", [1, 1]))
        if len(strides) == 2 and len(pads) == 4 and len(dilations) == 2:
            return WeightLayer(node.name or "", x, "conv", weight, node.attributes.get_int("group", 1),
                               strides, pads, dilations)  # type: ignore[arg-type]
    if node.op_type == "Gemm" and weight.ndim == 2 and not node.attributes.get_int("transA", 0):
        return WeightLayer(node.name or "", x, "gemm", weight, trans_b=bool(node.attributes.get_int("transB", 0)))
    if node.op_type == "MatMul" and weight.ndim == 2:
        return WeightLayer(node.name or "", x, "matmul", weight)
    return None


def input_hessians(
    model: ir.Model, layers: list[WeightLayer], calibration: Iterable[Feeds], *,
    samples: int | None = None, batch_size: int | None = None, seed: int = 0, max_bytes: int | None = FETCH_BYTES,
) -> dict[str, np.ndarray]:
    """``E[x xᵀ]`` of each layer's input, ``(groups, K, K)``, streamed from ONNX Runtime.

    Each batch's layer inputs are fetched a group of consecutive layers at a time, within
    ``max_bytes`` (:func:`~edgeopt.calibration.stream.stream_output_groups`), and each layer adds
    its rows of that batch to its ``H`` at once; the layers draw their rows in the same order
    whatever the groups, so ``H`` does not depend on ``max_bytes``.
    """
    work = model.clone()
    produced = {v.name: v for node in work.graph for v in node.outputs if v.name}
    names = [layer.input for layer in layers]  # graph inputs come as feeds
    present = {v.name for v in work.graph.outputs}
    work.graph.outputs.extend(produced[n] for n in dict.fromkeys(names) if n in produced and n not in present)
    sums = {layer.node: np.zeros((layer.groups, layer.features, layer.features)) for layer in layers}
    counts = dict.fromkeys(sums, 0)
    rng = np.random.default_rng(seed)
    for span, batch in stream_output_groups(work, names, calibration, model=model, samples=samples,
                                            batch_size=batch_size, max_bytes=max_bytes):
        for layer in layers[span.start:span.stop]:
            rows = layer.rows(np.asarray(batch[layer.input]), rng)
            sums[layer.node] += np.matmul(rows.transpose(0, 2, 1), rows)  # BLAS in float32, summed in float64
            counts[layer.node] += rows.shape[1]
    return {name: total / max(counts[name], 1) for name, total in sums.items()}


def learned_codes(weight: np.ndarray, scale: np.ndarray, hessian: np.ndarray, *, qmin: int = -127,
                  qmax: int = 127) -> np.ndarray:
    """Integer codes for ``weight`` ``(outputs, K)`` with per-row ``scale`` ``(outputs,)`` that minimize
    the output error ``ΔᵀHΔ`` greedily, feature by feature (GPTQ), instead of rounding to nearest."""
    w = weight.astype(np.float64).copy()
    s = np.asarray(scale, np.float64).reshape(-1, 1) * np.ones((w.shape[0], 1))
    s[s == 0] = 1.0
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices_from(h)] += DAMPING * float(np.mean(np.diag(h)))
    try:
        upper = np.linalg.cholesky(np.linalg.inv(h)).T  # Hinv = Uᵀ U
    except np.linalg.LinAlgError:
        return np.clip(np.round(weight / s), qmin, qmax)
    codes = np.empty_like(w)
    for j in range(w.shape[1]):
        column = w[:, j]
        q = np.clip(np.round(column / s[:, 0]), qmin, qmax)
        codes[:, j] = q
        error = (column - q * s[:, 0]) / upper[j, j]
        w[:, j + 1:] -= np.outer(error, upper[j, j + 1:])
    return codes


def round_layer(layer: WeightLayer, scale: np.ndarray, hessian: np.ndarray, *, qmin: int = -127,
                qmax: int = 127) -> np.ndarray:
    """Learned int codes of ``layer``'s weight (as stored) for per-channel (or scalar) ``scale``."""
    per_channel = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (layer.weight.shape[layer.channel_axis],))
    matrices = layer.matrices(layer.weight)
    scales = per_channel.reshape(layer.groups, -1)
    codes = np.stack([learned_codes(matrices[g], scales[g], hessian[g], qmin=qmin, qmax=qmax)
                      for g in range(layer.groups)])
    return layer.stored(codes)
