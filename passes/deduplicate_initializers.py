"""Make byte-identical initializers share one tensor (exact weight sharing)."""

from __future__ import annotations

import hashlib
import logging

import onnx_ir as ir

from edgeopt.core.pass_base import EdgeoptPass

logger = logging.getLogger(__name__)


class DeduplicateInitializersPass(EdgeoptPass):
    """Replace every initializer that is byte-identical to an earlier one by that one.

    Two tensors are identical when dtype, shape and raw bytes all match (so
    ``-0.0`` and ``0.0`` differ). Initializers that are graph inputs (IR < 4,
    overridable) or graph outputs are never merged. Each graph, subgraphs
    included, is deduplicated on its own; model-local functions have none.

    Args:
        min_bytes: Skip tensors smaller than this many bytes.
    """

    name = "deduplicate-initializers"

    def __init__(self, *, min_bytes: int = 0) -> None:
        super().__init__()
        self.min_bytes = min_bytes

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        merged = sum(self._deduplicate(graph) for graph in model.graphs())
        logger.info("deduplicate-initializers: merged %d initializer(s)", merged)
        return ir.passes.PassResult(model, modified=merged > 0)

    def _deduplicate(self, graph: ir.Graph) -> int:
        fixed = set(graph.inputs) | set(graph.outputs)
        first: dict[tuple[object, ...], ir.Value] = {}
        merged = 0
        for name, value in list(graph.initializers.items()):
            tensor = value.const_value
            if value in fixed or tensor is None or tensor.nbytes < self.min_bytes:
                continue
            try:
                data = tensor.tobytes()
            except Exception as e:  # noqa: BLE001 - unreadable data: leave it alone
                logger.debug("deduplicate-initializers: cannot read %s (%s)", name, e)
                continue
            key = (tensor.dtype, tuple(tensor.shape), hashlib.blake2b(data).digest())
            keeper = first.setdefault(key, value)
            if keeper is value or keeper.const_value.tobytes() != data:  # type: ignore[union-attr]
                continue
            value.replace_all_uses_with(keeper)
            del graph.initializers[name]
            merged += 1
            logger.debug("deduplicate-initializers: %s -> %s", name, keeper.name)
        return merged
