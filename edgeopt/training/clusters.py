"""Cluster-preserving training: which weights of a student are clustered, and what must not train.

Two forms come out of ``edgeopt share-weights`` / ``cluster-weights``:

- **codebook**: ``Gather(codebook, decoded indices)``. The interpreter runs the index
  decoding once (its inputs are constants), so only the codebook trains; torch's
  ``Gather`` gradient sums each cluster's gradients into its centroid. The decode
  chain's own float constants (bit divisors, plane weights) are kept fixed.
- **compressible**: a dense float tensor with few distinct values. It is trained
  *tied* (:class:`~edgeopt.training.interpreter.OnnxModule`'s ``tied``): one parameter
  per distinct value, so the tensor keeps exactly its number of distinct values.

A dense weight (rank >= 2, at least 64 elements) counts as clustered when it has from 2
to a quarter as many distinct values as elements, and at most 256 of them or a sixteenth
of its size (per-channel clustering keeps K per channel); trained weights have about as
many distinct values as elements.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgeopt.core.codebook_format import DECODE_KEY

__all__ = ["DECODE_KEY", "clustered_weights", "decode_constants"]



def clustered_weights(model: ir.Model, *, min_elements: int = 64) -> set[str]:
    """Float weights (rank >= 2) of ``model`` that look clustered (few distinct values), outside decode chains."""
    decode_inputs = {v.name for node in model.graph if DECODE_KEY in node.metadata_props
                     for v in node.inputs if v is not None}
    found = set()
    for name, value in model.graph.initializers.items():
        if name in decode_inputs or value.const_value is None:
            continue
        array = value.const_value.numpy()
        if array.dtype.kind != "f" or array.size < min_elements or array.ndim < 2:
            continue
        distinct = np.unique(array).size
        if 2 <= distinct <= array.size // 4 and (distinct <= 256 or distinct <= array.size // 16):
            found.add(name)
    return found


def decode_constants(model: ir.Model) -> set[str]:
    """Float initializers that only a codebook decode chain reads, other than the codebook and channel scales."""
    fixed = set()
    for name, value in model.graph.initializers.items():
        uses = value.uses()
        if uses and all(DECODE_KEY in node.metadata_props for node, _ in uses) \
                and not any((node.op_type, slot) in (("Gather", 0), ("Mul", 1)) for node, slot in uses):
            fixed.add(name)
    return fixed
