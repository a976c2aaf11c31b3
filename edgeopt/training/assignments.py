"""Learned cluster assignments: clustered weights train as float shadows whose forward is the nearest centroid.

Cluster-preserving training (:mod:`edgeopt.training.clusters`) moves only the K centroids
of a tensor; which centroid each weight takes stays as clustering chose it. Here the
assignments learn too (DKM-lite / cluster-QAT): each clustered tensor holds a float
shadow ``W`` (starting at its clustered values) and its K centroids ``C``; the forward
pass uses ``C[nearest(W)] + W - stop_grad(W)``, exactly the clustered tensor, and the
gradient reaches ``W`` straight through and each centroid summed over its cluster.
At the end every weight takes its nearest centroid again, so each tensor keeps exactly
K values (a centroid left with no weight takes the one nearest to it), and the result is
written back in the student's own form: the codebook and packed indices of
``share-weights``' codebook form, or the dense values of its compressible form.

Per-tensor codebooks are learned this way; per-channel codebooks and channel scales (a
channel's few values are its own, in either form) keep the centroid-only training.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from edgeopt.core.codebook_format import DECODE_KEY, pack_planes, unpack_planes
from edgeopt.training.interpreter import OnnxModule, Positive

logger = logging.getLogger(__name__)

__all__ = ["AssignModule", "learned_tensors"]


@dataclass(frozen=True)
class _Decoded:
    """A per-tensor codebook decode chain of the student: where its codebook and indices live."""

    dense: str
    codebook: str
    stored: str
    shape: tuple[int, ...]


def learned_tensors(student: ir.Model) -> tuple[ir.Model, list[_Decoded]]:
    """A copy of ``student`` whose per-tensor codebook weights are dense initializers, and where they came from."""
    graph = student.clone()
    found = []
    for node in list(graph.graph):
        decoded = _per_tensor_chain(node)
        if decoded is None:
            continue
        name = node.metadata_props[DECODE_KEY]
        chain = [n for n in graph.graph if n.metadata_props.get(DECODE_KEY) == name]
        dense = _dense(node, decoded.shape)
        output = node.outputs[0]
        value = ir.Value(name=f"{decoded.dense}_shadowed", shape=ir.Shape(decoded.shape), type=output.type,
                         const_value=ir.tensor(dense, name=f"{decoded.dense}_shadowed"))
        graph.graph.register_initializer(value)
        output.replace_all_uses_with(value)
        graph.graph.remove(chain, safe=False)
        found.append(_Decoded(value.name or "", decoded.codebook, decoded.stored, decoded.shape))
    for name in [n for n, v in graph.graph.initializers.items() if not v.uses() and not v.is_graph_output()]:
        del graph.graph.initializers[name]
    return graph, found


def _per_tensor_chain(node: ir.Node) -> _Decoded | None:
    """The chain ending in ``node`` when it is a per-tensor codebook's Gather (no channel offsets or scales)."""
    if node.op_type != "Gather" or DECODE_KEY not in node.metadata_props:
        return None
    codebook, index = node.inputs[0], node.inputs[1]
    if codebook is None or index is None or codebook.const_value is None or codebook.name is None:
        return None
    producer = index.producer()
    if producer is None or producer.op_type != "Cast" or len(codebook.const_value.shape) != 1:
        return None  # per channel: the index is offset by an Add
    if any(user.op_type == "Mul" and DECODE_KEY in user.metadata_props for user, _ in node.outputs[0].uses()):
        return None  # channel scales follow
    stored = _stored(node)
    shape = node.outputs[0].shape
    if stored is None or shape is None or not shape.is_static():
        return None
    return _Decoded(node.outputs[0].name or "", codebook.name, stored, tuple(int(d) for d in shape.numpy()))


def _stored(node: ir.Node) -> str | None:
    """The uint8 initializer (bit planes or one byte per index) the chain starts from."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        for value in current.inputs:
            if value is None or value in seen:
                continue
            seen.add(value)
            if value.const_value is not None and value.const_value.dtype == ir.DataType.UINT8:
                return value.name
            producer = value.producer()
            if producer is not None and DECODE_KEY in producer.metadata_props:
                stack.append(producer)
    return None


def _labels(stored: np.ndarray, count: int) -> np.ndarray:
    if stored.ndim == 2:  # bit planes
        return unpack_planes(stored, count)
    return stored.astype(np.int64).reshape(-1)


def _dense(gather: ir.Node, shape: tuple[int, ...]) -> np.ndarray:
    codebook = gather.inputs[0].const_value.numpy()  # type: ignore[union-attr]
    stored = next(v for v in _chain_values(gather) if v.name == _stored(gather))
    labels = _labels(stored.const_value.numpy(), int(np.prod(shape)))  # type: ignore[union-attr]
    return codebook[labels].reshape(shape)


def _chain_values(node: ir.Node) -> list[ir.Value]:
    values, stack = [], [node]
    while stack:
        current = stack.pop()
        for value in current.inputs:
            if value is not None and value not in values:
                values.append(value)
                producer = value.producer()
                if producer is not None and DECODE_KEY in producer.metadata_props:
                    stack.append(producer)
    return values


class AssignModule(OnnxModule):
    """An :class:`OnnxModule` of ``student`` in which clustered weights learn their assignments too.

    ``tied`` (the compressible form's clustered weights) and the per-tensor codebooks found in
    ``student`` train as shadows and centroids; :meth:`finish` writes them into a copy of the
    student after :func:`~edgeopt.training.writeback.write_back`. The other arguments are
    :class:`OnnxModule`'s.
    """

    def __init__(self, student: ir.Model, *, trainable: bool = True, positive: Mapping[str, Positive] | None = None,
                 frozen: Collection[str] = (), tied: Collection[str] = ()) -> None:
        graph, self.decoded = learned_tensors(student)
        super().__init__(graph, trainable=trainable, positive=positive, frozen=frozen,
                         tied={*tied, *(d.dense for d in self.decoded)})
        initializers = graph.graph.initializers
        self.learned = [name for name in self.tied
                        if _one_codebook(initializers[name].const_value.numpy())]  # type: ignore[union-attr]
        for name in self.learned:
            values = self.weights[self.keys[name]].detach()
            shadow = values[getattr(self, self.tied[name])].clone()
            self.weights[f"{self.keys[name]}_shadow"] = nn.Parameter(shadow, requires_grad=trainable)
        logger.info("distill: %d clustered weight(s) learn their assignments", len(self.learned))

    def value_of(self, name: str) -> torch.Tensor:
        if name not in self.learned:
            return super().value_of(name)
        centroids, _ = torch.sort(self.weights[self.keys[name]])
        shadow = self.weights[f"{self.keys[name]}_shadow"]
        index = torch.searchsorted((centroids[1:] + centroids[:-1]) / 2, shadow.detach().contiguous())
        return centroids[index] + (shadow - shadow.detach())

    def assignment(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Sorted centroids and each element's label, every centroid used (when there are enough elements)."""
        with torch.no_grad():
            centroids = torch.sort(self.weights[self.keys[name]])[0].cpu().numpy()
            shadow = self.weights[f"{self.keys[name]}_shadow"].cpu().numpy()
        labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, shadow).reshape(-1)
        flat = shadow.reshape(-1)
        for empty in np.setdiff1d(np.arange(centroids.size), labels):
            free = np.flatnonzero(np.bincount(labels, minlength=centroids.size)[labels] > 1)
            if free.size:  # the nearest weight whose own cluster keeps another member
                labels[free[np.abs(flat[free] - centroids[empty]).argmin()]] = empty
        return centroids, labels

    def finish(self, model: ir.Model) -> int:
        """Write the learned centroids and assignments into ``model`` (a copy of the student), in place."""
        initializers = model.graph.initializers
        for name in self.learned:
            centroids, labels = self.assignment(name)
            decoded = next((d for d in self.decoded if d.dense == name), None)
            if decoded is None:  # compressible form: the dense weight itself
                old = initializers[name].const_value.numpy()  # type: ignore[union-attr]
                dense = centroids.astype(old.dtype)[labels].reshape(old.shape)
                initializers[name].const_value = ir.tensor(dense, name=name)
                continue
            book = initializers[decoded.codebook].const_value.numpy()  # type: ignore[union-attr]
            stored = initializers[decoded.stored].const_value.numpy()  # type: ignore[union-attr]
            initializers[decoded.codebook].const_value = ir.tensor(centroids.astype(book.dtype), name=decoded.codebook)
            if stored.ndim == 2:
                new = pack_planes(labels, stored.shape[0])
            else:
                new = labels.astype(np.uint8)
            initializers[decoded.stored].const_value = ir.tensor(new, name=decoded.stored)
        return len(self.learned)


def _one_codebook(array: np.ndarray) -> bool:
    """Whether ``array``'s few values are one codebook that every channel draws from.

    Per-channel codebooks (or one codebook scaled per channel) give each slice along the
    channel axis only its own handful of the tensor's values; a weight moved to another
    slice's value would leave its channel's codebook.
    """
    total = np.unique(array).size
    for axis in range(array.ndim):
        if array.shape[axis] < 2:
            continue
        slices = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
        if max(np.unique(row).size for row in slices) * 2 <= total:
            return False
    return True
