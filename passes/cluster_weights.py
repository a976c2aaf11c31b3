"""k-means weight clustering: each weight keeps only K distinct values (Deep Compression).

A weight ``W`` becomes ``codebook[index]`` with K codebook entries per tensor (or
per output channel), found by 1-D k-means (see :mod:`edgeopt.passes.codebook`).

- ``form="codebook"``: the file stores the indices, bit-packed to ``ceil(log2 K)``
  bits (or one byte each with ``pack=False``), and the codebook; a small decode
  chain ending in ``Gather`` rebuilds the dense weight at run time. 32 clusters
  store 5 bits per weight instead of 32: 6.4x smaller tensors, raw, unzipped.
- ``form="compressible"``: the weight stays a dense float tensor, now with K
  distinct values, for runtimes that cannot decode; it only shrinks when zipped
  (TFMOT's form). Its values equal what the codebook form decodes, bit for bit.

With ``calibration`` data the clusters are chosen for each layer's outputs on the data
rather than for the weights (:mod:`edgeopt.passes.codebook_data`: weighted k-means, then
GPTQ-style error-compensating assignment and a least-squares codebook refit); still
exactly K values per tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import onnx_ir as ir

from edgeopt.core.errors import NonFiniteWeightsError, PassOptionError
from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.rewire import Constants, const_array, is_default_domain, value_names
from edgeopt.core.runtime import Feeds
from edgeopt.passes.codebook import DECODE_KEY, Codebook, Init, cluster, decode_nodes
from edgeopt.passes.codebook_data import LayerData, collect_layer_data, data_aware_cluster

logger = logging.getLogger(__name__)

# op type -> input slots that hold a weight
_WEIGHT_SLOTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1), "Gather": (0,)}
_FLOATS = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class ClusteredTensor:
    """One clustered weight: where it was, its size before and after, its error."""

    name: str
    shape: tuple[int, ...]
    clusters: int
    bytes_before: int
    bytes_after: int
    rel_error: float
    """``||W - W_clustered|| / ||W||``."""


class ClusterWeightsPass(EdgeoptPass):
    """Cluster constant weights of Conv, ConvTranspose, Gemm, MatMul and Gather to K values.

    A weight qualifies when it is a float constant (initializer or ``Constant``
    node) of rank >= 2 with at least ``min_elements`` elements, is not a graph
    input or output, and every use is a weight slot of one of ``op_types``. A
    tensor with K or fewer distinct values is clustered losslessly. Per channel,
    the channel axis is the output channel: axis 0 for Conv, Gather and Gemm with
    ``transB``, axis 1 for ConvTranspose, the last axis for MatMul and plain Gemm
    (a weight used in two roles is clustered per tensor). Graph signature kept;
    each graph, subgraphs included, is processed on its own; functions are not.
    ``last_report`` lists the clustered tensors of the last run.

    Args:
        clusters: K, from 2 to 256.
        form: ``codebook`` (Gather of a codebook, smaller file) or ``compressible``
            (dense weights with K distinct values, smaller zipped).
        per_channel: One codebook per output channel.
        channel_scale: One codebook for the tensor, times a scale per output channel (each
            channel clustered after dividing by its RMS): near per-channel error at
            per-tensor size; for weights whose channels differ in scale (CNNs).
        pack: Codebook form: pack indices to ``ceil(log2 K)`` bits; else one byte each.
        min_elements: Skip smaller tensors (biases, norms).
        init: k-means initialisation: ``optimal`` (exact on a 1,024-bin summary), ``quantile``
            or ``linear``.
        op_types: Ops whose weights may be clustered.
        calibration: Sample data (re-iterable of feeds or a folder): cluster for the layers'
            outputs on it (data-aware), not for the weights alone. ``random:N`` says nothing
            about the layers' inputs: it is ignored (with a warning).
        samples: Use at most this many calibration samples.
    """

    name = "cluster-weights"
    path_options: ClassVar[tuple[str, ...]] = ("calibration",)
    min_opset = 10  # Mod (the decode chain's bit extraction)
    preserves_semantics = False

    def __init__(
        self,
        *,
        clusters: int = 16,
        form: Literal["codebook", "compressible"] = "codebook",
        per_channel: bool = False,
        channel_scale: bool = False,
        pack: bool = True,
        min_elements: int = 1024,
        init: Init = "optimal",
        op_types: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather"),
        calibration: str | Iterable[Feeds] | None = None,
        samples: int = 256,
    ) -> None:
        super().__init__()
        if not 2 <= clusters <= 256:
            raise PassOptionError(f"cluster-weights: clusters must be 2 to 256, got {clusters}.")
        if form not in ("codebook", "compressible"):
            raise PassOptionError(f"cluster-weights: unknown form {form!r}; use 'codebook' or 'compressible'.")
        if init not in ("optimal", "quantile", "linear"):
            raise PassOptionError(f"cluster-weights: unknown init {init!r}; use 'optimal', 'quantile' or 'linear'.")
        if per_channel and channel_scale:
            raise PassOptionError("cluster-weights: per_channel and channel_scale exclude each other; pick one.")
        unknown = sorted(set(op_types) - set(_WEIGHT_SLOTS))
        if unknown:
            raise PassOptionError(f"cluster-weights: cannot cluster weights of {unknown}; "
                                  f"choose from {sorted(_WEIGHT_SLOTS)}.")
        self.clusters = clusters
        self.form = form
        self.per_channel = per_channel
        self.channel_scale = channel_scale
        self.pack = pack
        self.min_elements = min_elements
        self.init = init
        self.op_types = op_types
        if isinstance(calibration, str) and calibration.startswith("random:"):
            logger.warning("cluster-weights: %s is not sample data; clustering for the weights alone", calibration)
            calibration = None
        self.calibration = calibration
        self.samples = samples
        self.last_report: list[ClusteredTensor] = []

    def requires(self, model: ir.Model) -> None:
        if self.form == "codebook":
            super().requires(model)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.last_report = []
        taken = value_names(model)
        data: dict[str, LayerData] = {}
        if self.calibration is not None:  # main graph only: subgraph values are not model outputs
            candidates = [value for value, _ in self._candidates(model.graph)]
            data = collect_layer_data(model, candidates, self.calibration, self.samples)
        for graph in model.graphs():
            constants = Constants(graph, taken, model.ir_version < 4)
            for value, axis in self._candidates(graph):
                layer = data.get(value.name or "") if graph is model.graph else None
                self._cluster(graph, value, axis, constants, layer)
        logger.info("cluster-weights: clustered %d tensor(s) to %d values (%s form)",
                    len(self.last_report), self.clusters, self.form)
        return ir.passes.PassResult(model, modified=bool(self.last_report))

    def _candidates(self, graph: ir.Graph) -> list[tuple[ir.Value, int | None]]:
        seen: dict[ir.Value, int | None] = {}
        for node in graph:
            for value in node.inputs:
                if value is None or value in seen or value.is_graph_input() or value.is_graph_output():
                    continue
                axis = self._axis(value)
                if axis is not False:
                    seen[value] = axis  # type: ignore[assignment]
        return list(seen.items())

    def _axis(self, value: ir.Value) -> int | None | Literal[False]:
        """The channel axis to cluster ``value`` along (None per tensor), or False to skip it."""
        array = const_array(value)
        if array is None or array.dtype.type not in _FLOATS or array.ndim < 2 or array.size < self.min_elements:
            return False
        axes = set()
        for node, slot in value.uses():
            if node.op_type not in self.op_types or not is_default_domain(node) \
                    or slot not in _WEIGHT_SLOTS[node.op_type] or node.graph is None \
                    or DECODE_KEY in node.metadata_props:  # a decode chain's own constant
                return False
            axes.add(_channel_axis(node, slot, array.ndim))
        axis = axes.pop() if (self.per_channel or self.channel_scale) and len(axes) == 1 else None
        if self.form == "compressible" and _distinct(array, axis) <= self.clusters:
            return False  # already clustered: nothing to do (keeps the pass idempotent)
        return axis

    def _cluster(self, graph: ir.Graph, value: ir.Value, axis: int | None, constants: Constants,
                 data: LayerData | None) -> None:
        array = const_array(value)
        assert array is not None
        if data is not None:
            book = data_aware_cluster(array, self.clusters, data, axis=axis, init=self.init,
                                      channel_scale=self.channel_scale)
        else:
            book = cluster(array, self.clusters, axis=axis, init=self.init, channel_scale=self.channel_scale)
        dense = book.dense()
        name = value.name or "weight"
        if not np.isfinite(dense).all() and np.isfinite(array).all():  # a finite weight must stay finite
            raise NonFiniteWeightsError(f"cluster-weights: the codebook of {name} came out non-finite (an edgeopt "
                                        "bug: please report it with the model); meanwhile try another cluster "
                                        "count, or clustering with calibration data switched (--calib on or off).")
        if self.form == "compressible" and value.is_initializer():
            value.const_value = ir.tensor(dense, name=value.name)  # same name, same uses
            self._record(name, array, dense, book, dense.nbytes)
            return
        if self.form == "compressible":
            new = constants.add(f"{name}_clustered", dense)
            after = dense.nbytes
        else:
            nodes, new = decode_nodes(book, name, constants, pack=self.pack)
            first = next(iter(graph), None)
            if first is None:
                graph.extend(nodes)
            else:
                graph.insert_before(first, nodes)
            new.name = f"{name}_decoded"
            after = book.stored_bytes(pack=self.pack)
        new.dtype, new.shape = ir.DataType.from_numpy(array.dtype), ir.Shape(array.shape)
        value.replace_all_uses_with(new)
        drop_unused_constant(graph, value)
        self._record(name, array, dense, book, after)

    def _record(self, name: str, array: np.ndarray, dense: np.ndarray, book: Codebook, after: int) -> None:
        error = float(np.linalg.norm(dense - array) / max(float(np.linalg.norm(array)), 1e-30))
        self.last_report.append(ClusteredTensor(name, tuple(array.shape), book.codebook.shape[1],
                                                array.nbytes, after, error))
        logger.debug("cluster-weights: %s %s -> %d values, rel error %.3g", name, array.shape,
                     book.codebook.shape[1], error)


def _channel_axis(node: ir.Node, slot: int, ndim: int) -> int:
    if node.op_type in ("Conv", "Gather"):
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm" and slot == 1:
        return 0 if node.attributes.get_int("transB", 0) else 1
    if node.op_type == "Gemm":
        return 1 if node.attributes.get_int("transA", 0) else 0
    return ndim - 1 if slot == 1 else ndim - 2


def _distinct(array: np.ndarray, axis: int | None) -> int:
    """The most distinct values in the tensor (``axis=None``) or in one of its channels."""
    if axis is None:
        return int(np.unique(array).size)
    return max(int(np.unique(row).size) for row in np.moveaxis(array, axis, 0))


def drop_unused_constant(graph: ir.Graph, value: ir.Value) -> None:
    """Remove the now unused initializer or Constant node behind ``value``."""
    if value.uses():
        return
    if value.is_initializer() and value.name is not None and value.name in graph.initializers:
        del graph.initializers[value.name]
        return
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.graph is graph:
        graph.remove(producer, safe=True)


__all__ = ["ClusterWeightsPass", "ClusteredTensor", "Codebook"]
