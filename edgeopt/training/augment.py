"""Augmented views of image batches for distillation: teacher and student see the same view.

"Patient and consistent" distillation (Beyer et al., 2022): on few unlabeled samples the
student learns the teacher's function best when every step shows both models the same
fresh view of a sample, so the teacher runs on each view (never a cached output).
Views come from random resized crops and horizontal flips, done for a whole batch in one
``grid_sample`` (bilinear), and optionally mixup (a sample blended with another).

An input counts as an image batch when it is float, rank 4, with 1, 3 or 4 channels on
axis 1 (NCHW) or axis 3 (NHWC) and at least 16 pixels a side; other inputs (token ids,
masks, features) pass through untouched, and a model with no image input gets no views.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Literal

import numpy as np

from edgeopt.core.errors import PassOptionError
from edgeopt.core.runtime import Feeds

__all__ = ["Augmentation", "AUGMENTATIONS", "parse_augment", "image_layout", "augmented"]

Augmentation = Literal["flip", "crop", "mixup"]
AUGMENTATIONS: tuple[Augmentation, ...] = ("flip", "crop", "mixup")
_CHANNELS = (1, 3, 4)


def parse_augment(spec: str) -> frozenset[Augmentation]:
    """``"none"``, or a comma list of ``flip``, ``crop``, ``mixup`` (``"auto"`` is resolved by the caller)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["none"]:
        return frozenset()
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown or not names:
        raise PassOptionError(f"--augment '{spec}': expected 'auto', 'none' or a comma list of "
                              f"{', '.join(AUGMENTATIONS)}.")
    return frozenset(n for n in AUGMENTATIONS if n in names)


def image_layout(array: np.ndarray) -> Literal["NCHW", "NHWC"] | None:
    """Whether ``array`` is a batch of images, and its layout."""
    if array.ndim != 4 or array.dtype.kind != "f":
        return None
    if array.shape[1] in _CHANNELS and min(array.shape[2:]) >= 16:
        return "NCHW"
    if array.shape[3] in _CHANNELS and min(array.shape[1:3]) >= 16:
        return "NHWC"
    return None


def augmented(feeds: Feeds, kinds: Collection[Augmentation], rng: np.random.Generator, *,
              min_area: float = 0.25) -> Feeds:
    """``feeds`` with every image input replaced by a random view (the same view for all of them).

    Args:
        feeds: One batch.
        kinds: Which augmentations to draw.
        rng: The random source (one draw per sample).
        min_area: Smallest share of the image a crop keeps.
    """
    import torch
    import torch.nn.functional as F

    images = {k: layout for k, v in feeds.items() if (layout := image_layout(v)) is not None}
    if not images or not kinds:
        return feeds
    rows = len(next(iter(feeds.values())))
    theta = _affine(rows, kinds, rng, min_area)
    mix = rng.uniform(0, 1, rows).astype(np.float32) if "mixup" in kinds else None
    partner = rng.permutation(rows)
    out = dict(feeds)
    for name, layout in images.items():
        x = torch.from_numpy(np.ascontiguousarray(feeds[name]))
        if layout == "NHWC":
            x = x.permute(0, 3, 1, 2)
        if theta is not None:
            grid = F.affine_grid(torch.from_numpy(theta), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if mix is not None:
            lam = torch.from_numpy(mix).reshape(-1, 1, 1, 1)
            x = lam * x + (1 - lam) * x[torch.from_numpy(partner)]
        if layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        out[name] = np.ascontiguousarray(x.numpy(), dtype=feeds[name].dtype)
    return out


def _affine(rows: int, kinds: Collection[Augmentation], rng: np.random.Generator,
            min_area: float) -> np.ndarray | None:
    """Per-sample 2x3 affine maps (output -> input coordinates in [-1, 1]): crop boxes, mirrored or not."""
    if "crop" not in kinds and "flip" not in kinds:
        return None
    theta = np.zeros((rows, 2, 3), np.float32)
    sx = sy = np.ones(rows)
    if "crop" in kinds:
        area = rng.uniform(min_area, 1.0, rows)
        aspect = np.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3), rows))
        sx, sy = np.minimum(np.sqrt(area * aspect), 1.0), np.minimum(np.sqrt(area / aspect), 1.0)
        theta[:, 0, 2] = rng.uniform(-1, 1, rows) * (1 - sx)
        theta[:, 1, 2] = rng.uniform(-1, 1, rows) * (1 - sy)
    flip = np.where(rng.random(rows) < 0.5, -1.0, 1.0) if "flip" in kinds else np.ones(rows)
    theta[:, 0, 0] = sx * flip
    theta[:, 1, 1] = sy
    return theta
