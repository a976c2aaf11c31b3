"""Low-rank factorization: a weight W (m x n) becomes two factors of rank r (truncated SVD).

``W = U S V^T``; keeping the r largest singular values gives ``W_r = P Q`` with
``P = U_r sqrt(S_r)`` (m x r) and ``Q = sqrt(S_r) V_r^T`` (r x n), the best rank-r
approximation in Frobenius norm. ``X W`` becomes ``(X P) Q``: r (m + n) weights and
multiply-adds per output row instead of m n, so a factorization is only made when
``r < m n / (m + n)`` (it then saves both parameters and MACs).

- ``MatMul(X, W)`` with a constant 2-D ``W`` -> ``MatMul(MatMul(X, P), Q)``.
- ``Gemm(A, B, C)`` with constant ``B`` (``transB`` honoured, ``alpha`` folded into
  ``P``, ``transA = 0``) -> ``Gemm(MatMul(A, P), Q, C, beta)``.
- 1x1 ``Conv`` (group 1): ``W`` (out, in, 1, ...) -> ``Conv(Q^T)`` with the original
  strides and pads, then a plain 1x1 ``Conv(P^T, bias)``.

Rank choice: ``energy`` keeps the smallest r with ``sum_{i<=r} s_i^2 >= energy *
sum s_i^2`` per layer; ``params`` spends a budget (that fraction of the eligible
layers' weights) on the singular values worth most relative energy per parameter,
across layers. With calibration data, the SVD is taken of ``L^T W`` where
``L L^T = E[x x^T]`` of the layer's input rows on that data, so that the rank-r
factors minimise the error of the layer's *outputs* on the data, and ``energy`` /
``params`` weigh each layer by how much its outputs lose (data-aware SVD): ranks
follow each layer's sensitivity on the data. The Gram matrices (m x m per layer)
are accumulated batch by batch; no activation set is held.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from edgeopt.calibration.stream import stream_outputs
from edgeopt.core.errors import PassOptionError
from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.rewire import Constants, const_array, is_default_domain, value_names
from edgeopt.core.runtime import Feeds
from edgeopt.passes.cluster_weights import drop_unused_constant

logger = logging.getLogger(__name__)

_FLOATS = (np.float16, np.float32, np.float64)
FACTOR_KEY = "edgeopt.low_rank_factor"
"""Node ``metadata_props`` key on both factors of a factorized layer: never factorized again
(a factor is full rank r, so an energy below 1 would shrink it on every run)."""


@dataclass(frozen=True)
class Factorized:
    """One layer factorized: its shape, the rank kept and the energy that keeps."""

    node: str
    shape: tuple[int, int]
    rank: int
    params_before: int
    params_after: int
    energy: float


@dataclass
class _Layer:
    node: ir.Node
    matrix: np.ndarray  # (m, n): X (.., m) @ matrix -> (.., n)
    transform: np.ndarray | None  # L (m, m) for data-aware SVD
    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray


class FactorizeLowRankPass(EdgeoptPass):
    """Factorize MatMul, Gemm and 1x1 Conv weights into two rank-r factors (truncated SVD).

    Only constant float weights whose layer output is not also their weight, in the
    default domain; a weight shared by several layers is factorized for each.
    Exactly one of ``energy`` and ``params`` is set (``energy`` by default). Graph
    signature kept; subgraphs and functions are not visited (the main graph only).
    ``last_report`` lists the factorized layers.

    Args:
        energy: Keep this fraction of each weight's squared singular values (0 to 1].
        params: Instead, keep this fraction of the eligible weights' parameters, spent
            where it keeps the most energy.
        min_elements: Skip weights with fewer elements.
        calibration: Sample data (re-iterable of feeds, a folder or ``random:N``):
            factorize to minimise the layers' output error on it.
        samples: Use at most this many calibration samples.
        require_savings: Factorize only where ``r < m n / (m + n)``; off, every eligible
            layer is factorized (to check the rewrite at full rank).
    """

    name = "factorize-low-rank"
    preserves_semantics = False
    path_options: ClassVar[tuple[str, ...]] = ("calibration",)

    def __init__(
        self,
        *,
        energy: float | None = None,
        params: float | None = None,
        min_elements: int = 4096,
        calibration: str | Iterable[Feeds] | None = None,
        samples: int = 64,
        require_savings: bool = True,
    ) -> None:
        super().__init__()
        if energy is not None and params is not None:
            raise PassOptionError("factorize-low-rank: set energy or params, not both.")
        if energy is None and params is None:
            energy = 0.95
        for what, number in (("energy", energy), ("params", params)):
            if number is not None and not 0 < number <= 1:
                raise PassOptionError(f"factorize-low-rank: {what} must be in (0, 1], got {number}.")
        self.energy = energy
        self.params = params
        self.min_elements = min_elements
        self.calibration = calibration
        self.samples = samples
        self.require_savings = require_savings
        self.last_report: list[Factorized] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        nodes = [node for node in model.graph if _eligible(node, self.min_elements)]
        grams = input_grams(model, nodes, self.calibration, self.samples) if self.calibration is not None else {}
        layers = [self._layer(node, grams.get(node)) for node in nodes]
        ranks = self._ranks(layers)
        taken = value_names(model) | {node.name for node in model.graph if node.name}
        constants = Constants(model.graph, taken, model.ir_version < 4)
        self.last_report = []
        for layer, rank in zip(layers, ranks, strict=True):
            m, n = layer.matrix.shape
            if self.require_savings and rank >= m * n / (m + n):
                logger.debug("factorize-low-rank: kept %s: rank %d saves nothing", layer.node.name, rank)
                continue
            first, second = _factors(layer, rank)
            old = layer.node.inputs[1]
            _REWRITERS[layer.node.op_type](layer.node, first, second, constants)
            assert old is not None
            drop_unused_constant(model.graph, old)
            kept = float((layer.s[:rank] ** 2).sum() / max(float((layer.s ** 2).sum()), 1e-30))
            self.last_report.append(Factorized(layer.node.name or layer.node.op_type, (m, n), rank,
                                               m * n, rank * (m + n), kept))
        logger.info("factorize-low-rank: factorized %d of %d eligible layer(s)", len(self.last_report), len(layers))
        return ir.passes.PassResult(model, modified=bool(self.last_report))

    def _layer(self, node: ir.Node, gram: np.ndarray | None) -> _Layer:
        matrix = _weight_matrix(node)
        assert matrix is not None
        transform = None if gram is None else _gram_root(gram)
        target = matrix.astype(np.float64)
        if transform is not None:
            target = transform.T @ target
        u, s, vt = np.linalg.svd(target, full_matrices=False)
        return _Layer(node, matrix, transform, u, s, vt)

    def _ranks(self, layers: list[_Layer]) -> list[int]:
        if self.energy is not None:
            return [_energy_rank(layer.s, self.energy) for layer in layers]
        assert self.params is not None
        budget = self.params * sum(layer.matrix.size for layer in layers)
        budget -= sum(sum(layer.matrix.shape) for layer in layers)  # every layer keeps rank >= 1
        # (relative energy per parameter, layer, cost) of each further singular value
        gains: list[tuple[float, int, int]] = []
        for index, layer in enumerate(layers):
            cost = sum(layer.matrix.shape)
            total = max(float((layer.s ** 2).sum()), 1e-30)
            gains.extend((float(v ** 2) / total / cost, index, cost) for v in layer.s[1:])
        ranks = [1] * len(layers)
        for _, index, cost in sorted(gains, key=lambda g: -g[0]):
            if cost <= budget:
                budget -= cost
                ranks[index] += 1
        return ranks


def _eligible(node: ir.Node, min_elements: int) -> bool:
    if FACTOR_KEY in node.metadata_props:
        return False
    matrix = _weight_matrix(node)
    return matrix is not None and matrix.size >= min_elements


def input_grams(
    model: ir.Model, nodes: list[ir.Node], calibration: str | Iterable[Feeds], samples: int
) -> dict[ir.Node, np.ndarray]:
    """``E[x x^T]`` of each node's input rows (features on the last axis; channels for Conv)."""
    work = model.clone()
    wanted = {value.name: node for node in nodes if (value := node.inputs[0]) is not None and value.name}
    outputs = {v.name for v in work.graph.outputs}
    for value in {v for node in work.graph for v in node.outputs}:
        if value.name in wanted and value.name not in outputs:
            work.graph.outputs.append(value)
    graph_inputs = {v.name for v in model.graph.inputs}
    names = [n for n in wanted if n in outputs or n not in graph_inputs]
    names = names or [str(next(iter(outputs)))]  # fetch something: ORT returns every output for []
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    for batch in stream_outputs(work, names, calibration, model=model, samples=samples):
        for name in wanted:
            x = np.asarray(batch[name], np.float64)
            x = np.moveaxis(x, 1, -1) if wanted[name].op_type == "Conv" else x
            x = x.reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0) + x.T @ x
            rows[name] = rows.get(name, 0) + x.shape[0]
    return {wanted[name]: sums[name] / max(rows[name], 1) for name in sums}


def _energy_rank(s: np.ndarray, energy: float) -> int:
    cumulative = np.cumsum(s.astype(np.float64) ** 2)
    return int(np.searchsorted(cumulative, energy * cumulative[-1] * (1 - 1e-12)) + 1)


def _gram_root(gram: np.ndarray) -> np.ndarray:
    """``L`` with ``L L^T = gram`` (eigendecomposition; tiny eigenvalues clipped, so it inverts)."""
    values, vectors = np.linalg.eigh(gram.astype(np.float64))
    floor = max(float(values.max()), 1e-30) * 1e-8
    return vectors * np.sqrt(np.clip(values, floor, None))


def _factors(layer: _Layer, rank: int) -> tuple[np.ndarray, np.ndarray]:
    root = np.sqrt(layer.s[:rank])
    first = layer.u[:, :rank] * root
    if layer.transform is not None:
        first = np.linalg.solve(layer.transform.T, first)
    second = root[:, None] * layer.vt[:rank]
    dtype = layer.matrix.dtype
    return first.astype(dtype), second.astype(dtype)


def _weight_matrix(node: ir.Node) -> np.ndarray | None:
    """The weight as an (m, n) matrix with ``X @ matrix``, or None when the node is not eligible."""
    if not is_default_domain(node) or node.op_type not in _REWRITERS or len(node.inputs) < 2:
        return None
    weight = const_array(node.inputs[1])
    if weight is None or weight.dtype.type not in _FLOATS or node.inputs[1].is_graph_output():  # type: ignore[union-attr]
        return None
    if node.op_type == "MatMul":
        return weight if weight.ndim == 2 else None
    if node.op_type == "Gemm":
        if weight.ndim != 2 or node.attributes.get_int("transA", 0) != 0:
            return None
        matrix = weight.T if node.attributes.get_int("transB", 0) else weight
        return matrix * np.asarray(node.attributes.get_float("alpha", 1.0), dtype=weight.dtype)
    if weight.ndim < 3 or any(d != 1 for d in weight.shape[2:]) or node.attributes.get_int("group", 1) != 1:
        return None  # Conv: 1x1 kernels, no groups
    return weight.reshape(weight.shape[:2]).T


def _unique(base: str, new: Constants) -> str:
    name, n = base, 0
    while name in new.taken:
        n += 1
        name = f"{base}_{n}"
    new.taken.add(name)
    return name


def _rewrite_matmul(node: ir.Node, first: np.ndarray, second: np.ndarray, new: Constants) -> None:
    base = node.name or "matmul"
    inner = ir.Node("", "MatMul", [node.inputs[0], new.add(f"{base}_lowrank_p", first)],
                    name=_unique(f"{base}_lowrank", new))
    assert node.graph is not None
    node.graph.insert_before(node, inner)
    node.replace_input_with(0, inner.outputs[0])
    node.replace_input_with(1, new.add(f"{base}_lowrank_q", second))
    inner.metadata_props[FACTOR_KEY] = node.metadata_props[FACTOR_KEY] = "first,second"


def _rewrite_gemm(node: ir.Node, first: np.ndarray, second: np.ndarray, new: Constants) -> None:
    _rewrite_matmul(node, first, second, new)
    for name in ("alpha", "transB"):
        node.attributes.pop(name, None)


def _rewrite_conv(node: ir.Node, first: np.ndarray, second: np.ndarray, new: Constants) -> None:
    base = node.name or "conv"
    kernel = (1,) * (len(const_array(node.inputs[1]).shape) - 2)  # type: ignore[union-attr]
    reducer = new.add(f"{base}_lowrank_p", first.T.reshape(first.shape[::-1] + kernel))
    reduce = ir.Node("", "Conv", [node.inputs[0], reducer],
                     attributes=[a for a in node.attributes.values() if a.name != "kernel_shape"],
                     name=_unique(f"{base}_lowrank", new))
    assert node.graph is not None
    node.graph.insert_before(node, reduce)
    node.replace_input_with(0, reduce.outputs[0])
    node.replace_input_with(1, new.add(f"{base}_lowrank_q", second.T.reshape(second.shape[::-1] + kernel)))
    reduce.metadata_props[FACTOR_KEY] = node.metadata_props[FACTOR_KEY] = "first,second"
    for name in ("strides", "pads", "auto_pad", "dilations"):
        node.attributes.pop(name, None)


_REWRITERS = {"MatMul": _rewrite_matmul, "Gemm": _rewrite_gemm, "Conv": _rewrite_conv}
