"""Sample data for calibration and validation: arrays, images, callables, loaders, checked against the model."""

from edgeopt.data.images import ImageFolderReader, ImagePreprocess, default_preprocess, load_image
from edgeopt.data.readers import (
    CallableReader,
    NpzDirReader,
    RandomReader,
    TorchLoaderReader,
    batches,
    check_feeds,
    open_reader,
)
from edgeopt.data.validation import labelled_batches

__all__ = [
    "CallableReader",
    "ImageFolderReader",
    "ImagePreprocess",
    "NpzDirReader",
    "RandomReader",
    "TorchLoaderReader",
    "batches",
    "check_feeds",
    "default_preprocess",
    "labelled_batches",
    "load_image",
    "open_reader",
]
