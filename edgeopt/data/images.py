"""Calibration data from a folder of images: decode, resize, crop, normalize.

Pillow decodes and resizes; the rest is numpy, so a test can redo it by hand:
``(pixels * scale - mean) / std`` per channel, then the layout and the dtype.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn

import numpy as np
import onnx_ir as ir

from edgeopt.core.errors import CalibrationDataError
from edgeopt.core.runtime import Feeds, model_inputs

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
"""File name endings (lower case) that :class:`ImageFolderReader` reads."""

Resample = Literal["nearest", "bilinear", "bicubic", "lanczos"]


@dataclass(frozen=True)
class ImagePreprocess:
    """How one image file becomes one sample of a model input.

    Steps, in order: convert to RGB (or to one grey channel), resize, center-crop,
    ``(pixels * scale - mean) / std`` per channel, transpose to ``layout``, cast.

    Args:
        resize: An int resizes the shorter side to it, keeping the aspect ratio
            (the longer side is truncated, as in torchvision); ``(height, width)``
            resizes exactly; None keeps the size.
        center_crop: ``(height, width)`` cut from the centre after resizing.
        scale: Multiplies the raw 0..255 pixel values.
        mean: Subtracted per channel; one value (or equal values) applies to all.
        std: Divides per channel, like ``mean``.
        layout: Axis order of the batch the reader yields.
        dtype: numpy dtype name of the result.
        grayscale: One channel (Pillow mode ``L``) instead of RGB.
        resample: Pillow filter used by the resize.
    """

    resize: int | tuple[int, int] | None = None
    center_crop: tuple[int, int] | None = None
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: str = "float32"
    grayscale: bool = False
    resample: Resample = "bilinear"

    def __post_init__(self) -> None:
        sizes = [self.resize] if isinstance(self.resize, int) else list(self.resize or ())
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes + list(self.center_crop or ())):
            _bad(f"resize and center_crop take positive integers, got resize={self.resize!r}, "
                 f"center_crop={self.center_crop!r}")
        if self.layout not in ("NCHW", "NHWC"):
            _bad(f"layout must be 'NCHW' or 'NHWC', got {self.layout!r}")
        if self.resample not in ("nearest", "bilinear", "bicubic", "lanczos"):
            _bad(f"resample must be nearest, bilinear, bicubic or lanczos, got {self.resample!r}")
        try:
            np.dtype(self.dtype)
        except TypeError as e:
            _bad(f"dtype {self.dtype!r} is not a numpy dtype name (e.g. 'float32')", e)
        if any(s == 0 for s in self.std):
            _bad(f"std {self.std} contains 0")
        self.channel_stats()  # validates the mean/std lengths

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """``mean`` and ``std`` as float32 arrays of length :attr:`channels`."""
        return self._per_channel("mean", self.mean), self._per_channel("std", self.std)

    def _per_channel(self, field: str, values: tuple[float, ...]) -> np.ndarray:
        if len(values) != self.channels and len(set(values)) != 1:
            _bad(f"{field} has {len(values)} values for {self.channels} channel(s) (grayscale={self.grayscale}); "
                 f"give {self.channels} value(s) or one")
        if len(values) != self.channels:
            values = values[:1] * self.channels
        return np.asarray(values, dtype=np.float32)


def _bad(problem: str, cause: Exception | None = None) -> NoReturn:
    raise CalibrationDataError(f"ImagePreprocess: {problem}. Fix the preprocessing settings.") from cause


def load_image(path: str | os.PathLike[str], preprocess: ImagePreprocess) -> np.ndarray:
    """One preprocessed sample, ``(C, H, W)`` or ``(H, W, C)`` as ``preprocess.layout`` says."""
    from PIL import Image

    path = Path(path).resolve()
    try:
        with Image.open(path) as file:
            image = _resize(file.convert("L" if preprocess.grayscale else "RGB"), preprocess)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise CalibrationDataError(f"{path}: cannot read image ({e}). Re-save or remove the file.") from e
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if preprocess.center_crop is not None:
        pixels = _center_crop(pixels, preprocess.center_crop, path)
    mean, std = preprocess.channel_stats()
    x = (pixels * np.float32(preprocess.scale) - mean) / std
    if preprocess.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x.astype(preprocess.dtype))


def _resize(image: Image.Image, preprocess: ImagePreprocess) -> Image.Image:
    from PIL import Image

    if preprocess.resize is None:
        return image
    width, height = image.size
    if isinstance(preprocess.resize, int):
        short = preprocess.resize
        size = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
    else:
        size = (preprocess.resize[1], preprocess.resize[0])
    return image.resize(size, Image.Resampling[preprocess.resample.upper()])


def _center_crop(pixels: np.ndarray, crop: tuple[int, int], path: Path) -> np.ndarray:
    height, width = pixels.shape[:2]
    if crop[0] > height or crop[1] > width:
        raise CalibrationDataError(
            f"{path}: image is {height}x{width} after resizing, smaller than center_crop {crop[0]}x{crop[1]}. "
            "Resize to at least the crop size."
        )
    top, left = round((height - crop[0]) / 2), round((width - crop[1]) / 2)
    return pixels[top : top + crop[0], left : left + crop[1]]


def data_files(path: Path, suffixes: frozenset[str], *, recursive: bool, hint: str) -> list[Path]:
    """Files under ``path`` whose name ends in one of ``suffixes`` (sorted), or ``[path]`` for one such file."""
    kinds = "/".join(sorted(suffixes))
    if not path.exists():
        raise CalibrationDataError(f"{path}: calibration data not found. Check the path.")
    if path.is_file():
        if path.suffix.lower() not in suffixes:
            raise CalibrationDataError(f"{path}: not a {kinds} file. {hint}")
        return [path]
    found = path.rglob("*") if recursive else path.iterdir()
    files = sorted(p for p in found if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        below = " or below" if recursive else ""
        raise CalibrationDataError(f"{path}: no {kinds} files in this folder{below}. {hint}")
    return files


class ImageFolderReader:
    """Images under a folder (recursive, sorted by path) or one image, preprocessed and batched.

    Files are decoded one at a time; the last batch may be smaller.

    Args:
        path: A folder of images, or one image file.
        input_name: The model input the images feed.
        preprocess: How each file becomes a sample.
        batch_size: Samples per yielded feed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        input_name: str,
        preprocess: ImagePreprocess,
        batch_size: int = 1,
    ) -> None:
        if isinstance(batch_size, bool) or batch_size < 1:
            raise CalibrationDataError(f"ImageFolderReader: batch_size must be a positive integer, got {batch_size!r}.")
        self.path = Path(path).resolve()
        self.input_name = input_name
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.files = data_files(self.path, IMAGE_SUFFIXES, recursive=True, hint="Add image files (.png, .jpg, ...).")

    def __len__(self) -> int:
        return math.ceil(len(self.files) / self.batch_size)

    def __iter__(self) -> Iterator[Feeds]:
        for start in range(0, len(self.files), self.batch_size):
            files = self.files[start : start + self.batch_size]
            samples = [load_image(file, self.preprocess) for file in files]
            for file, sample in zip(files, samples, strict=True):
                if sample.shape != samples[0].shape:
                    raise CalibrationDataError(
                        f"{file}: preprocessed to shape {list(sample.shape)}, but {files[0]} gives "
                        f"{list(samples[0].shape)}. Set resize and center_crop so every image gets the same size."
                    )
            yield {self.input_name: np.stack(samples)}


def default_preprocess(model: ir.Model) -> ImagePreprocess:
    """Preprocessing guessed from the model's single 4-D input.

    The channel axis is where a 1 or a 3 sits (axis 1: NCHW, else axis 3: NHWC),
    static height and width become an exact resize, one channel means grayscale.
    Float inputs get ``scale=1/255``; integer inputs (uint8) get the raw pixels.
    """
    inputs = model_inputs(model)
    value = inputs[0] if len(inputs) == 1 else None
    dims = list(value.shape.dims) if value is not None and value.shape is not None else []
    dtype = value.dtype if value is not None else None
    layout: Literal["NCHW", "NHWC"] | None = None
    if len(dims) == 4 and dtype is not None and (dtype.is_floating_point() or dtype.is_integer()):
        layout = "NCHW" if dims[1] in (1, 3) else "NHWC" if dims[3] in (1, 3) else None
    if value is None or layout is None:
        got = ", ".join(f"'{v.name}' {v.dtype}{v.shape}" for v in inputs)
        raise CalibrationDataError(
            f"cannot derive image preprocessing: it needs one 4-D input with 1 or 3 channels, the model has {got}. "
            "Pass an explicit ImagePreprocess, or provide .npz/.npy files instead."
        )
    assert dtype is not None
    channels, height, width = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    resize = (height, width) if isinstance(height, int) and isinstance(width, int) else None
    return ImagePreprocess(
        resize=resize,
        scale=1 / 255 if dtype.is_floating_point() else 1.0,
        layout=layout,
        dtype=np.dtype(dtype.numpy()).name,
        grayscale=channels == 1,
    )
