"""Streaming least squares: refit a linear layer so its output matches a reference.

Used by the repairs after pruning and layer dropping. Only ``XᵀX`` and ``XᵀY`` are
kept (features² + features·outputs floats), so memory does not grow with the number
of calibration samples.
"""

from __future__ import annotations

import numpy as np


class NormalEquations:
    """Accumulates ``XᵀX`` and ``XᵀY`` batch by batch for ``min ‖X W + b − Y‖²``.

    ``X`` rows are samples of the layer's (new) input features, ``Y`` rows the
    reference output the refitted layer should reproduce.
    """

    def __init__(self, features: int, outputs: int, *, bias: bool = True) -> None:
        self.bias = bias
        width = features + int(bias)
        self._xtx = np.zeros((width, width), dtype=np.float64)
        self._xty = np.zeros((width, outputs), dtype=np.float64)
        self.samples = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add rows: ``x`` is (n, features), ``y`` is (n, outputs)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
        y = np.asarray(y, dtype=np.float64).reshape(-1, y.shape[-1])
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        if self.bias:
            x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
        self._xtx += x.T @ x
        self._xty += x.T @ y
        self.samples += x.shape[0]

    def solve(self, *, ridge: float = 1e-4) -> tuple[np.ndarray, np.ndarray | None]:
        """``(W, b)`` with ``W`` of shape (features, outputs); ``b`` is None without bias.

        ``ridge`` is relative to the mean diagonal of ``XᵀX``: it keeps the solve stable
        when features are collinear or fewer samples than features were seen.
        """
        if self.samples == 0:
            raise ValueError("no samples were added")
        xtx = self._xtx.copy()
        scale = float(np.mean(np.diag(xtx))) or 1.0
        xtx[np.diag_indices_from(xtx)] += ridge * scale
        solution = np.linalg.solve(xtx, self._xty)
        if self.bias:
            return solution[:-1].astype(np.float32), solution[-1].astype(np.float32)
        return solution.astype(np.float32), None
