"""Codebooks for weight clustering: 1-D k-means, bit-plane index packing and the decode graph.

**k-means.** Clustering scalars is 1-D k-means. On sorted values every cluster is a
contiguous run, bounded by the midpoints between neighbouring centroids, so one
Lloyd iteration is a ``searchsorted`` of the K-1 midpoints plus prefix sums:
O(K log n) after one O(n log n) sort, against O(nK) for a general k-means such as
scikit-learn's ``KMeans`` (which is also only a test dependency here). It is exact
Lloyd; initialisation is deterministic. The default, ``optimal``, starts from the
exact optimum of the values summarised in at most 1,024 bins (dynamic programming,
as in Ckmeans.1d.dp, O(K B^2) vectorized), so Lloyd cannot get stuck in the poor
local minima that quantile or linear starts reach on heavy-tailed weights.

**Packing.** Indices of ``b = ceil(log2 K)`` bits are stored as ``b`` bit planes,
each plane packed 8 elements per byte (``numpy.packbits``), a ``(b, ceil(n/8))``
uint8 tensor: exactly ``b`` bits per weight. Decoding needs no per-element position
tensor, only broadcasts with 8- and b-element constants::

    planes (b, M) uint8 -Reshape([-1])- Cast(float) -Reshape(b, M, 1)-> /[128..1] -Floor- Mod 2
    -Reshape(b, 8M)-> MatMul([1, 2, 4, ...]) -> (1, 8M) -Reshape(-1)- Slice[:n] -Reshape(shape)-
    Cast(int64) -(+ channel offsets)- Gather(codebook)

Every decode node carries ``DECODE_KEY`` in its metadata and ``fold-constants`` never
evaluates such a node; the first ``Reshape`` also takes its target shape ``[-1]`` from a
``ConstantOfShape`` node, which onnxscript's own folder leaves alone. So nothing
downstream has a known value and no cleanup expands the codebook back into a dense
tensor in the file; ONNX Runtime does fold the whole chain when it loads the
model (graph optimizations on, its default), so inference runs on dense weights at
fp32 speed. (A ``DequantizeLinear`` start would also stop the folder, but ONNX Runtime
leaves DequantizeLinear unfolded too, and then decodes at every run: measured 170 ms
per 1 M weights.) Every op exists at opset 10. With 256 clusters the indices are stored one per byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_ir as ir

from edgeopt.core.codebook_format import DECODE_KEY, pack_planes
from edgeopt.core.rewire import Constants

Init = Literal["optimal", "quantile", "linear"]
_BINS = 1024


def kmeans_1d(
    values: np.ndarray, k: int, *, init: Init = "optimal", iterations: int = 300, bins: int = _BINS,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the scalars of ``values`` into at most ``k`` clusters (Lloyd's algorithm).

    Returns ``(centroids, labels)``: sorted float64 centroids (empty clusters dropped)
    and an int64 label per element of ``values.ravel()``. With ``k`` or fewer distinct
    values the centroids are those values: lossless. ``weights`` (non-negative, one per
    element, broadcastable to ``values``) makes it weighted k-means: minimizes
    ``sum w (x - c)^2``, each centroid the weighted mean of its cluster; a value of weight
    0 (an input channel the data never drives) takes the nearest centroid, and all-zero
    weights count every element once.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if uniq.size <= k:
        return uniq, inverse.astype(np.int64)
    if weights is not None:
        element = np.broadcast_to(np.asarray(weights, np.float64), np.shape(values)).ravel()
        weighted = np.bincount(inverse.ravel(), weights=element, minlength=uniq.size)
        if weighted.sum() > 0:
            counts = weighted
    total = np.concatenate([[0.0], np.cumsum(uniq * counts)])
    number = np.concatenate([[0], np.cumsum(counts)])  # element count (or weight) before each value
    centroids = _initial(uniq, number, k, init, bins)
    for _ in range(iterations):
        edges = _edges(uniq, centroids)
        sizes = number[edges[1:]] - number[edges[:-1]]
        sums = total[edges[1:]] - total[edges[:-1]]
        new = np.where(sizes > 0, sums / np.where(sizes > 0, sizes, 1), centroids)
        new.sort()
        if np.array_equal(new, centroids):
            break
        centroids = new
    sizes = np.diff(number[_edges(uniq, centroids)])
    centroids = centroids[sizes > 0]
    labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, uniq, side="left")
    return centroids, labels[inverse.ravel()].astype(np.int64)


def _edges(uniq: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Start of each cluster in ``uniq`` (and the end): a value on a midpoint goes left."""
    cuts = np.searchsorted(uniq, (centroids[1:] + centroids[:-1]) / 2, side="right")
    return np.concatenate([[0], cuts, [uniq.size]])


def _initial(uniq: np.ndarray, number: np.ndarray, k: int, init: Init, bins: int) -> np.ndarray:
    if init == "optimal":
        return _binned_optimum(uniq, np.diff(number), k, bins)
    if init == "linear":
        return np.linspace(uniq[0], uniq[-1], k)
    # weighted quantiles: the value at the middle of each 1/k of the mass
    targets = (np.arange(k) + 0.5) / k * number[-1]
    return uniq[np.searchsorted(number[1:], targets, side="right").clip(0, uniq.size - 1)].astype(np.float64)


def _binned_optimum(uniq: np.ndarray, counts: np.ndarray, k: int, bins: int) -> np.ndarray:
    """Optimal k-means centroids of ``uniq`` (with ``counts``) grouped into at most ``bins``
    bins (half equal-count, half equal-width edges), by dynamic programming."""
    half = bins // 2
    cuts = np.searchsorted(np.cumsum(counts), np.linspace(0, counts.sum(), half + 1)[1:-1])
    cuts = np.concatenate([cuts, np.searchsorted(uniq, np.linspace(uniq[0], uniq[-1], half + 1)[1:-1])])
    starts = np.unique(np.concatenate([[0], cuts]))
    starts = starts[starts < uniq.size]
    weight = np.add.reduceat(counts.astype(np.float64), starts)
    driven = weight > 0  # bins of weight-0 values only would divide 0 by 0
    mean = np.add.reduceat(uniq * counts, starts)[driven] / weight[driven]
    weight = weight[driven]
    if mean.size <= k:
        return np.concatenate([mean, np.full(k - mean.size, mean[-1])])
    w = np.concatenate([[0.0], np.cumsum(weight)])
    s1 = np.concatenate([[0.0], np.cumsum(weight * mean)])
    s2 = np.concatenate([[0.0], np.cumsum(weight * mean ** 2)])
    n = mean.size
    j, i = np.triu_indices(n + 1, 1)  # segment of bins j .. i-1
    cost = np.full((n + 1, n + 1), np.inf)
    cost[j, i] = s2[i] - s2[j] - (s1[i] - s1[j]) ** 2 / (w[i] - w[j])
    best = cost[0].copy()  # best[i]: one cluster over bins 0 .. i-1
    choice = np.zeros((k, n + 1), dtype=np.int64)
    for level in range(1, k):
        total = best[:, None] + cost
        choice[level] = total.argmin(axis=0)
        best = total[choice[level], np.arange(n + 1)]
    ends, end = [], n
    for level in range(k - 1, 0, -1):
        start = choice[level, end]
        ends.append((start, end))
        end = start
    ends.append((0, end))
    return np.array(sorted((s1[b] - s1[a]) / (w[b] - w[a]) for a, b in ends))


def index_bits(clusters: int) -> int:
    """Bits per index for ``clusters`` codebook entries (at least 1)."""
    return max(1, math.ceil(math.log2(max(clusters, 2))))


@dataclass
class Codebook:
    """A clustered tensor: ``dense = codebook[labels + K * channel]`` reshaped to ``shape``.

    ``codebook`` is ``(channels, K)`` (one row for per-tensor clustering) and ``axis``
    the channel axis of ``shape`` (``None`` per tensor). With ``scales`` (broadcastable
    to ``shape``), one shared codebook is multiplied by a scale per channel.
    """

    codebook: np.ndarray
    labels: np.ndarray
    shape: tuple[int, ...]
    axis: int | None
    scales: np.ndarray | None = None

    def dense(self) -> np.ndarray:
        dense = self.codebook.reshape(-1)[self.flat_index()].reshape(self.shape)
        return dense if self.scales is None else dense * self.scales

    def flat_index(self) -> np.ndarray:
        if self.axis is None:
            return self.labels
        offsets = _channel_offsets(self.shape, self.axis, self.codebook.shape[1])
        return (self.labels.reshape(self.shape) + offsets).reshape(-1)

    def stored_bytes(self, *, pack: bool) -> int:
        bits = index_bits(self.codebook.shape[1]) if pack else 8
        scales = 0 if self.scales is None else self.scales.nbytes
        return bits * math.ceil(self.labels.size / 8) + self.codebook.nbytes + scales


def _channel_offsets(shape: tuple[int, ...], axis: int, k: int) -> np.ndarray:
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return (np.arange(shape[axis], dtype=np.int64) * k).reshape(view)


def cluster(
    array: np.ndarray, k: int, *, axis: int | None, init: Init = "optimal", iterations: int = 300,
    channel_scale: bool = False, weights: np.ndarray | None = None,
) -> Codebook:
    """Cluster ``array`` per tensor (``axis=None``) or per slice along ``axis``.

    Per channel, each codebook row is padded with its last centroid to the largest
    cluster count, so that all rows have the same length. With ``channel_scale`` (and an
    ``axis``), each channel is divided by its RMS and one codebook serves them all.
    ``weights`` (non-negative, broadcastable to ``array``): the importance of each element
    (weighted k-means, see :func:`kmeans_1d`).
    """
    if weights is not None:
        weights = np.broadcast_to(np.asarray(weights, np.float64), array.shape)
    if axis is not None and channel_scale:
        others = tuple(i for i in range(array.ndim) if i != axis)
        rms = np.sqrt(np.mean(np.square(array, dtype=np.float64), axis=others, keepdims=True))
        scales = np.where(rms > 0, rms, 1.0).astype(array.dtype)
        # the error in W is the error in W / scale times the scale: weight by scale^2
        scaled = None if weights is None else weights * np.square(scales, dtype=np.float64)
        centroids, labels = kmeans_1d(array / scales, k, init=init, iterations=iterations, weights=scaled)
        return Codebook(centroids[None, :].astype(array.dtype), labels, array.shape, None, scales)
    if axis is None:
        centroids, labels = kmeans_1d(array, k, init=init, iterations=iterations, weights=weights)
        return Codebook(centroids[None, :].astype(array.dtype), labels, array.shape, None)
    moved = np.moveaxis(array, axis, 0)
    rows = [None] * len(moved) if weights is None else list(np.moveaxis(weights, axis, 0))
    # one k-means per channel: a coarser summary (8 bins per cluster) keeps the start cheap
    results = [kmeans_1d(row, k, init=init, iterations=iterations, bins=min(_BINS, 8 * k), weights=w)
               for row, w in zip(moved, rows, strict=True)]
    width = max(c.size for c, _ in results)
    book = np.stack([np.pad(c, (0, width - c.size), mode="edge") for c, _ in results])
    labels = np.moveaxis(np.stack([lab.reshape(moved.shape[1:]) for _, lab in results]), 0, axis)
    return Codebook(book.astype(array.dtype), labels.reshape(-1), array.shape, axis)


def decode_nodes(
    book: Codebook, name: str, constants: Constants, *, pack: bool
) -> tuple[list[ir.Node], ir.Value]:
    """The nodes that rebuild ``book.dense()`` from its stored indices, and their output."""
    k = book.codebook.shape[1]
    bits = index_bits(k) if pack else 8
    nodes: list[ir.Node] = []

    def add(op: str, *inputs: ir.Value, **attributes: int | float) -> ir.Value:
        node = ir.Node("", op, inputs, attributes=[_attr(key, v) for key, v in attributes.items()],
                       name=f"{name}_decode_{len(nodes)}_{op}")
        node.metadata_props[DECODE_KEY] = name
        nodes.append(node)
        return node.outputs[0]

    def const(suffix: str, array: np.ndarray) -> ir.Value:
        return constants.add(f"{name}_{suffix}", array)

    # Reshape to [-1] given by ConstantOfShape: a shape onnxscript's own folder never computes
    flat = add("ConstantOfShape", const("flat", np.array([1], np.int64)), value=-1)
    if bits == 8:
        stored = const("indices", book.labels.astype(np.uint8))
        first = add("Cast", add("Reshape", stored, flat), to=ir.DataType.FLOAT.value)
        levels = add("Reshape", first, const("shape", np.array(book.shape, np.int64)))
    else:
        packed = pack_planes(book.labels, bits)
        planes = add("Cast", add("Reshape", const("planes", packed), flat), to=ir.DataType.FLOAT.value)
        split = add("Reshape", planes, const("plane_shape", np.array([bits, packed.shape[1], 1], np.int64)))
        divided = add("Div", split, const("divisors", 2.0 ** np.arange(7, -1, -1, dtype=np.float32)))
        bit = add("Mod", add("Floor", divided), const("two", np.array(2.0, np.float32)), fmod=1)
        rows = add("Reshape", bit, const("rows_shape", np.array([bits, -1], np.int64)))
        weights = (2.0 ** np.arange(bits, dtype=np.float32))[None, :]
        summed = add("Reshape", add("MatMul", const("plane_weights", weights), rows),
                     const("to_vector", np.array([-1], np.int64)))
        first = add("Slice", summed, const("start", np.array([0], np.int64)),
                    const("stop", np.array([book.labels.size], np.int64)))
        levels = add("Reshape", first, const("shape", np.array(book.shape, np.int64)))
    index = add("Cast", levels, to=ir.DataType.INT64.value)
    if book.axis is not None:
        index = add("Add", index, const("offsets", _channel_offsets(book.shape, book.axis, k)))
    dense = add("Gather", const("codebook", book.codebook.reshape(-1)), index)
    if book.scales is not None:
        dense = add("Mul", dense, const("scales", book.scales))
    return nodes, dense


def _attr(key: str, value: int | float) -> ir.Attr:
    if key == "value":  # ConstantOfShape's fill value, an int64 tensor of one element
        return ir.AttrTensor(key, ir.tensor(np.array([value], np.int64)))
    return ir.AttrInt64(key, value) if isinstance(value, int) else ir.AttrFloat32(key, value)
