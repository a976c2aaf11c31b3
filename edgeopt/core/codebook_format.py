"""How codebook-clustered weights are stored: the decode chain's marker and the bit planes of indices.

``cluster-weights`` (``edgeopt.passes.codebook``) writes this form and distillation
(``edgeopt.training``) reads and rewrites it; both sit above the core, so the format lives here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DECODE_KEY", "pack_planes", "unpack_planes"]

DECODE_KEY = "edgeopt.codebook_decode"
"""Node ``metadata_props`` key marking the decode chain (its constants are never weights to cluster)."""


def pack_planes(labels: np.ndarray, bits: int) -> np.ndarray:
    """``labels`` (n,) as ``bits`` bit planes packed 8 per byte: uint8 ``(bits, ceil(n/8))``."""
    planes = (labels[None, :] >> np.arange(bits)[:, None]) & 1
    return np.packbits(planes.astype(np.uint8), axis=1)


def unpack_planes(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`pack_planes`: the first ``count`` labels, int64 (what the decode graph computes)."""
    planes = np.unpackbits(packed, axis=1)[:, :count].astype(np.int64)
    return (planes << np.arange(packed.shape[0])[:, None]).sum(axis=0)
