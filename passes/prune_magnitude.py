"""Unstructured magnitude pruning: set the smallest weights to zero, in place.

Dense runtimes get no speed from it; the gain is in the compressed (zipped) file
size and in sparse kernels where a backend has them. Weights are the constant
weight inputs of Conv, ConvTranspose, Gemm and MatMul (input 1, or the constant
operand of a MatMul); biases and normalization parameters are never touched.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Literal

import numpy as np
import onnx_ir as ir

from edgeopt.core.errors import PassOptionError
from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.rewire import write_constant

logger = logging.getLogger(__name__)

_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class PruneMagnitudePass(EdgeoptPass):
    """Zero the ``sparsity`` fraction of smallest-magnitude weights (per layer or globally).

    ``scope="layer"`` zeros the same fraction of every weight tensor; ``global`` one
    threshold over all of them. Weights shared by several layers are pruned once.
    Only the main graph is visited. Idempotent: a second run finds the zeros already
    there. ``self.zeroed`` and ``self.total`` count weights after a run.

    Args:
        sparsity: Fraction of weights to set to zero, in [0, 1).
        scope: ``layer`` or ``global``.
        min_elements: Leave weights with fewer elements alone (tiny tensors matter most).
        exclude: Node-name patterns (fnmatch) whose weights are left alone.
    """

    name = "prune-magnitude"
    preserves_semantics = False

    def __init__(self, *, sparsity: float = 0.5, scope: Literal["layer", "global"] = "layer",
                 min_elements: int = 64, exclude: tuple[str, ...] = ()) -> None:
        super().__init__()
        if not 0.0 <= sparsity < 1.0:
            raise PassOptionError(f"prune-magnitude: sparsity must be in [0, 1), got {sparsity}.")
        if scope not in ("layer", "global"):
            raise PassOptionError(f"prune-magnitude: scope must be layer or global, got {scope!r}.")
        self.sparsity, self.scope, self.min_elements, self.exclude = sparsity, scope, min_elements, exclude
        self.zeroed = 0
        self.total = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        weights = self._weights(model)
        arrays = {v: a for v in weights if (a := _const(v)) is not None}
        if self.scope == "global" and arrays:
            magnitudes = np.concatenate([np.abs(a).reshape(-1) for a in arrays.values()])
            cut = int(np.floor(self.sparsity * magnitudes.size))
            order = np.argsort(magnitudes, kind="stable")[:cut]
            mask = np.ones(magnitudes.size, dtype=bool)
            mask[order] = False
            masks, start = {}, 0
            for value, array in arrays.items():
                masks[value] = mask[start:start + array.size].reshape(array.shape)
                start += array.size
        else:
            masks = {v: _layer_mask(a, self.sparsity) for v, a in arrays.items()}
        changed = 0
        for value, array in arrays.items():
            pruned = np.where(masks[value], array, np.zeros((), dtype=array.dtype))
            if np.count_nonzero(pruned) != np.count_nonzero(array):
                write_constant(value, pruned)
                changed += 1
        self.total = int(sum(a.size for a in arrays.values()))
        self.zeroed = int(sum(a.size - np.count_nonzero(masks[v] & (a != 0)) for v, a in arrays.items()))
        logger.info("prune-magnitude: %d of %d weights are zero, %d tensor(s) changed", self.zeroed, self.total,
                    changed)
        return ir.passes.PassResult(model, modified=changed > 0)

    def _weights(self, model: ir.Model) -> list[ir.Value]:
        found: dict[ir.Value, None] = {}
        for node in model.graph:
            if node.op_type not in _LAYERS or node.domain not in ("", "ai.onnx"):
                continue
            if any(fnmatch.fnmatchcase(node.name or "", p) for p in self.exclude):
                continue
            for value in node.inputs[:2] if node.op_type == "MatMul" else node.inputs[1:2]:
                array = _const(value) if value is not None else None
                if (array is not None and array.dtype.kind == "f" and array.ndim >= 2
                        and array.size >= self.min_elements and not value.is_graph_input()):  # type: ignore[union-attr]
                    found[value] = None  # type: ignore[index]
        return list(found)


def _const(value: ir.Value) -> np.ndarray | None:
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except Exception:  # noqa: BLE001 - unreadable external data: not pruned
        return None
    return None if tensor is None else tensor.numpy()


def _layer_mask(array: np.ndarray, sparsity: float) -> np.ndarray:
    cut = int(np.floor(sparsity * array.size))
    mask = np.ones(array.size, dtype=bool)
    mask[np.argsort(np.abs(array).reshape(-1), kind="stable")[:cut]] = False
    return mask.reshape(array.shape)
