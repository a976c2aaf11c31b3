"""Validation data with optional labels, streamed in fixed-size batches.

Data is any calibration-data spec (:func:`edgeopt.data.readers.open_reader`).
Labels are a ``.npy`` file (row ``i`` labels sample ``i``, memory-mapped) or the
name of an array stored beside the inputs in each ``.npz`` file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir

from edgeopt.core.errors import CalibrationDataError
from edgeopt.core.runtime import Feeds, model_inputs
from edgeopt.data.readers import NpzDirReader, batches, check_feeds, open_reader

Batch = tuple[Feeds, "np.ndarray | None"]


def labelled_batches(
    data: str | os.PathLike[str], model: ir.Model, *, labels: str | None = None,
    batch_size: int = 1, limit: int | None = None,
) -> Iterator[Batch]:
    """Yield ``(feeds, labels or None)`` of ``batch_size`` rows (the last may be short).

    Raises:
        CalibrationDataError: the data does not fit the model, or the labels are missing or too few.
    """
    if labels is None:
        for feeds in batches(open_reader(data, model), model, batch_size=batch_size, limit=limit):
            yield feeds, None
        return
    if labels.endswith(".npy"):
        yield from _with_label_file(data, model, Path(labels).resolve(), batch_size, limit)
    else:
        yield from _with_label_key(data, model, labels, batch_size, limit)


def _with_label_file(data: str | os.PathLike[str], model: ir.Model, path: Path, batch_size: int,
                     limit: int | None) -> Iterator[Batch]:
    if not path.is_file():
        raise CalibrationDataError(f"{path}: labels file not found. Give a .npy file, or the labels' key in the .npz.")
    table = np.load(path, mmap_mode="r", allow_pickle=False)
    start = 0
    for feeds in batches(open_reader(data, model), model, batch_size=batch_size, limit=limit):
        rows = len(next(iter(feeds.values())))
        if start + rows > len(table):
            raise CalibrationDataError(
                f"{path}: {len(table)} labels for at least {start + rows} samples. Give one label per sample."
            )
        yield feeds, np.asarray(table[start:start + rows])
        start += rows


def _with_label_key(data: str | os.PathLike[str], model: ir.Model, key: str, batch_size: int,
                    limit: int | None) -> Iterator[Batch]:
    names = [v.name or "" for v in model_inputs(model)]
    reader = NpzDirReader(data)  # every array: the inputs and the labels
    pending: list[Batch] = []
    rows = seen = 0
    for index, item in enumerate(reader):
        if key not in item:
            raise CalibrationDataError(
                f"{reader.files[index]}: no array '{key}' (it holds {', '.join(item)}). "
                "Name the labels' key with --labels, or give a .npy file."
            )
        feeds = {name: item[name] for name in names if name in item}
        check_feeds(model, feeds, source=str(reader.files[index]))
        rows_here = {len(a) for a in feeds.values() if np.ndim(a)}
        if np.ndim(item[key]) == 0 or rows_here != {len(item[key])}:
            raise CalibrationDataError(
                f"{reader.files[index]}: '{key}' holds {np.shape(item[key])} labels for inputs of "
                f"{sorted(rows_here)} rows. Store one label per sample (as many rows as the inputs)."
            )
        pending.append((feeds, item[key]))
        rows += len(item[key])
        while rows >= batch_size or (limit is not None and seen + rows >= limit):
            take = min(batch_size, limit - seen) if limit is not None else batch_size
            merged = _concat(pending)
            yield {n: a[:take] for n, a in merged[0].items()}, merged[1][:take]
            seen += take
            if limit is not None and seen >= limit:
                return
            pending = [({n: a[take:] for n, a in merged[0].items()}, merged[1][take:])]
            rows -= take
    if rows:
        yield _concat(pending)


def _concat(pending: list[Batch]) -> tuple[Feeds, np.ndarray]:
    if len(pending) == 1:
        feeds, labels = pending[0]
        assert labels is not None
        return feeds, labels
    names = list(pending[0][0])
    return ({n: np.concatenate([f[n] for f, _ in pending]) for n in names},
            np.concatenate([lab for _, lab in pending if lab is not None]))
