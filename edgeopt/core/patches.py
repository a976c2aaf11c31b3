"""Convolution input patches (im2col) on numpy arrays.

Written with numpy's ``sliding_window_view``: no library offers a strided, dilated,
grouped im2col on numpy arrays without a deep-learning framework. Used wherever a
Conv is treated as a linear map of its patches (least-squares refits, learned rounding).
"""

from __future__ import annotations

import numpy as np


def im2col(x: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, int], pads: tuple[int, int, int, int],
           dilations: tuple[int, int]) -> np.ndarray:
    """Patches of ``x`` (N, C, H, W) as ``(N, C, kh, kw, Ho, Wo)``, in ONNX Conv's pads order."""
    kh, kw = kernel
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span_h, span_w = dilations[0] * (kh - 1) + 1, dilations[1] * (kw - 1) + 1
    windows = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(2, 3))
    windows = windows[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]  # N, C, Ho, Wo, kh, kw
    return windows.transpose(0, 1, 4, 5, 2, 3)


def patches_at(x: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, int], pads: tuple[int, int, int, int],
               dilations: tuple[int, int], positions: np.ndarray | None = None) -> np.ndarray:
    """The patches of ``x`` at output ``positions`` (flat indices over N, Ho, Wo; None: all), ``(P, C, kh, kw)``.

    Only the chosen patches are copied: the full im2col of a large feature map is
    ``C*kh*kw`` times the size of its output positions.
    """
    cols = im2col(x, kernel, strides, pads, dilations)  # a view: N, C, kh, kw, Ho, Wo
    n, _, _, _, ho, wo = cols.shape
    chosen = np.arange(n * ho * wo) if positions is None else np.asarray(positions)
    return cols[chosen // (ho * wo), :, :, :, (chosen // wo) % ho, chosen % wo]
