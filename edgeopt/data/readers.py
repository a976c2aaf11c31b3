"""Calibration data: readers that stream sample feeds, and checks against a model.

A calibration reader is any re-iterable of feeds: each ``iter()`` starts over, so
a list works in tests and a quantizer may take several passes. The readers here
load lazily, one file at a time. :func:`batches` checks the feeds against the
model, re-batches them along axis 0 and stops after a number of samples without
ever holding the whole data set.
"""

from __future__ import annotations

import difflib
import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeopt.core.errors import CalibrationDataError
from edgeopt.core.runtime import CalibrationReader, Feeds, model_inputs, random_feeds
from edgeopt.data.images import IMAGE_SUFFIXES, ImageFolderReader, ImagePreprocess, data_files, default_preprocess

logger = logging.getLogger(__name__)

ARRAY_SUFFIXES = frozenset({".npz", ".npy"})
_SAVE_HINT = "Save each batch with numpy.savez(file, <input_name>=array), or numpy.save for one input."
_ACCEPTED = "Accepted: a folder (or file) of .npz/.npy arrays, a folder of images (.png, .jpg, ...), or random:N."


def check_feeds(
    model: ir.Model, feeds: Mapping[str, np.ndarray], *, source: str = "calibration data", check_axis0: bool = True
) -> None:
    """Check one feed against the model inputs: names, dtypes, ranks and static dims.

    Symbolic dims accept any size; so does axis 0 without ``check_axis0`` (data to be re-batched).

    Raises:
        CalibrationDataError: one line naming the input, what was expected and what came.
    """
    _check_feeds(model, feeds, source, check_axis0=check_axis0)


def _check_feeds(model: ir.Model, feeds: Mapping[str, Any], source: str, *, check_axis0: bool) -> None:
    if not isinstance(feeds, Mapping):
        raise CalibrationDataError(
            f"{source}: each item must map input names to arrays, got {type(feeds).__name__}. "
            "Yield dicts like {'input_name': array}."
        )
    inputs = {value.name or "": value for value in model_inputs(model)}
    for name in feeds:
        if name not in inputs:
            close = difflib.get_close_matches(name, list(inputs), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise CalibrationDataError(
                f"{source}: unexpected input '{name}'{hint}; the model's inputs are {_listed(inputs)}. "
                "Name the arrays after the model's inputs."
            )
    for name, value in inputs.items():
        if name not in feeds:
            raise CalibrationDataError(
                f"{source}: no data for input '{name}' ({_describe(value)}); got {_listed(feeds)}. "
                "Provide an array for every model input."
            )
        _check_array(name, value, feeds[name], source, check_axis0)


def _check_array(name: str, value: ir.Value, array: object, source: str, check_axis0: bool) -> None:
    if not isinstance(array, np.ndarray):
        raise CalibrationDataError(
            f"{source}: input '{name}' expects {_describe(value)}, got {type(array).__name__}. "
            "Convert it to a numpy array."
        )
    if value.type is not None and not isinstance(value.type, ir.TensorType):
        return  # sequences, maps, optionals: left to the runtime
    problems = []
    expected = _numpy_dtype(value.dtype)
    if expected is not None and not (array.dtype == expected or expected.kind == "O" and array.dtype.kind in "OUS"):
        problems.append(f"dtype {array.dtype}")
    if value.shape is not None and len(value.shape) != array.ndim:
        problems.append(f"rank {array.ndim}")
    elif value.shape is not None:
        problems += [
            f"dim {axis} is {size}, expected {dim}"
            for axis, (dim, size) in enumerate(zip(value.shape.dims, array.shape, strict=True))
            if isinstance(dim, int) and dim != size and (axis or check_axis0)
        ]
    if problems:
        got = f"{array.dtype}[{','.join(map(str, array.shape))}]"
        raise CalibrationDataError(
            f"{source}: input '{name}' expects {_describe(value)}, got {got} ({', '.join(problems)}). "
            "Reshape/cast the data to match the model."
        )


def _numpy_dtype(dtype: ir.DataType | None) -> np.dtype | None:
    try:
        return None if dtype is None else np.dtype(dtype.numpy())
    except (TypeError, ValueError):  # a dtype numpy cannot name: not checked
        return None


def _describe(value: ir.Value) -> str:
    dtype = _numpy_dtype(value.dtype)
    name = dtype.name if dtype is not None and dtype.kind != "O" else str(value.dtype).lower()
    if value.shape is None:
        return f"{name} of any shape"
    dims = (str(d) if isinstance(d, int) else str(d.value or "?") for d in value.shape.dims)
    return f"{name}[{','.join(dims)}]"


def _listed(names: Iterable[str]) -> str:
    return ", ".join(f"'{n}'" for n in names) or "nothing"


def batches(
    reader: CalibrationReader, model: ir.Model, *, batch_size: int | None = None, limit: int | None = None
) -> Iterator[Feeds]:
    """Stream checked feeds from ``reader``, optionally re-batched and limited.

    Every feed is checked against the model (the first as "calibration data",
    later ones by index). Samples are rows along axis 0. With ``batch_size``, feeds
    are concatenated and split lazily, holding about one batch; if an input has a
    static batch dim, trailing samples that do not fill it are dropped (WARNING).

    Args:
        reader: Any re-iterable of feeds.
        model: The model the feeds are for.
        batch_size: Rows per yielded feed; None keeps the reader's feeds as they come.
        limit: Stop after this many samples in total; the reader is not read further.

    Raises:
        CalibrationDataError: bad arguments, an empty reader, or a feed that does not fit.
    """
    for what, number in (("batch_size", batch_size), ("limit", limit)):
        if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 1):
            raise CalibrationDataError(f"calibration data: {what} must be a positive integer, got {number!r}.")
    static = {v.name or "": v.shape[0] for v in model_inputs(model) if v.shape and isinstance(v.shape[0], int)}
    for name, size in static.items():
        if batch_size is not None and size != batch_size:
            raise CalibrationDataError(
                f"calibration data: batch_size {batch_size} does not fit input '{name}', whose batch dim is "
                f"fixed to {size}. Use batch_size={size}, or export the model with a dynamic batch axis."
            )
    stream = _checked(reader, model, check_axis0=batch_size is None)
    if limit is not None:
        stream = _limited(stream, limit)
    if batch_size is not None:
        stream = _rebatched(stream, batch_size, drop_last=bool(static))
    return stream


def _checked(reader: CalibrationReader, model: ir.Model, *, check_axis0: bool) -> Iterator[Feeds]:
    count = 0
    for count, feeds in enumerate(reader, start=1):
        source = "calibration data" if count == 1 else f"calibration data item {count - 1}"
        _check_feeds(model, feeds, source, check_axis0=check_axis0)
        yield dict(feeds)
    if count == 0:
        raise CalibrationDataError("calibration data: the reader yielded nothing. Give it at least one sample.")


def _rows(feeds: Feeds) -> int:
    sizes = {name: array.shape[0] if array.ndim else None for name, array in feeds.items()}
    if None in sizes.values() or len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name}: {size if size is not None else 'scalar'}" for name, size in sizes.items())
        raise CalibrationDataError(
            f"calibration data: inputs disagree on the number of samples along axis 0 ({listed}). "
            "Re-batching and limits need axis 0 to be the sample axis of every input."
        )
    return next(iter(sizes.values()), 0) or 0


def _limited(stream: Iterator[Feeds], limit: int) -> Iterator[Feeds]:
    left = limit
    for feeds in stream:
        rows = _rows(feeds)
        if rows >= left:
            yield {name: array[:left] for name, array in feeds.items()} if rows > left else feeds
            return  # the reader is not advanced further
        left -= rows
        yield feeds


def _rebatched(stream: Iterator[Feeds], batch_size: int, *, drop_last: bool) -> Iterator[Feeds]:
    pending: list[Feeds] = []
    rows = 0
    for feeds in stream:
        pending.append(feeds)
        rows += _rows(feeds)
        while rows >= batch_size:
            merged = _concat(pending)
            yield {name: array[:batch_size] for name, array in merged.items()}
            pending = [{name: array[batch_size:] for name, array in merged.items()}]
            rows -= batch_size
    if rows and drop_last:
        logger.warning("calibration data: dropped the last %d sample(s), which do not fill a batch of the "
                       "model's fixed batch size %d", rows, batch_size)
    elif rows:
        yield _concat(pending)


def _concat(pending: list[Feeds]) -> Feeds:
    try:
        return pending[0] if len(pending) == 1 else {n: np.concatenate([f[n] for f in pending]) for n in pending[0]}
    except ValueError as e:
        shapes = "; ".join(", ".join(f"{n} {list(a.shape)}" for n, a in f.items()) for f in pending)
        raise CalibrationDataError(
            f"calibration data: cannot re-batch items of shapes {shapes}. "
            "Make every item the same shape except along axis 0."
        ) from e


class NpzDirReader:
    """``.npz`` and ``.npy`` files in a folder (sorted by name, not recursive), one feed per file.

    A ``.npz`` holds arrays keyed by input name; a ``.npy`` holds the one input of
    a single-input model, so it needs exactly one name in ``input_names``.

    Args:
        path: A folder, or a single ``.npz``/``.npy`` file.
        input_names: Arrays to take from each ``.npz`` (others, such as labels,
            are skipped; a lone unnamed ``arr_0`` maps to a single name). None
            takes every array.
    """

    def __init__(self, path: str | os.PathLike[str], *, input_names: Sequence[str] | None = None) -> None:
        self.path = Path(path).resolve()
        self.input_names = None if input_names is None else tuple(input_names)
        self.files = data_files(self.path, ARRAY_SUFFIXES, recursive=False, hint=_SAVE_HINT)
        for npy in (file for file in self.files if file.suffix.lower() == ".npy"):
            self._single_name(npy)  # fails early if .npy files cannot be named

    def _single_name(self, file: Path) -> str:
        if self.input_names is None or len(self.input_names) != 1:
            raise CalibrationDataError(
                f"{file}: a .npy file holds one unnamed array, so the reader needs exactly one input name "
                f"(got {self.input_names}). Pass input_names=['<input>'] or save .npz files keyed by input name."
            )
        return self.input_names[0]

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[Feeds]:
        return map(self._load, self.files)  # lazy: one file per next()

    def _load(self, file: Path) -> Feeds:
        try:
            loaded = np.load(file, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                return {self._single_name(file): loaded}
            with loaded:
                keys = self._keys(file, list(loaded.files))
                return {name: loaded[key] for name, key in keys.items()}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise CalibrationDataError(
                f"{file}: cannot read calibration file ({e}). Re-save it with numpy.savez or numpy.save."
            ) from e

    def _keys(self, file: Path, stored: list[str]) -> dict[str, str]:
        if self.input_names is None:
            return {key: key for key in stored}
        if len(self.input_names) == 1 and stored == ["arr_0"]:
            return {self.input_names[0]: "arr_0"}
        missing = [name for name in self.input_names if name not in stored]
        if missing:
            raise CalibrationDataError(
                f"{file}: no array named '{missing[0]}' (it holds {_listed(stored)}). "
                f"Save it with numpy.savez(path, {missing[0]}=array)."
            )
        return {name: name for name in self.input_names}


class CallableReader:
    """A reader that calls ``factory`` on each iteration, so a generator function is re-iterable."""

    def __init__(self, factory: Callable[[], Iterable[Feeds]]) -> None:
        self.factory = factory

    def __iter__(self) -> Iterator[Feeds]:
        return iter(self.factory())


class TorchLoaderReader:
    """Feeds from a torch ``DataLoader`` (or any iterable of tensors, tuples, lists or dicts).

    A tuple or list gives its first ``len(input_names)`` elements to the inputs in
    order (so ``(x, y)`` batches of a labelled dataset give ``x``); a dict is read
    by input name; a bare tensor feeds a single input. Tensors go to numpy on the CPU.

    Args:
        loader: Re-iterable source of batches.
        input_names: Model input names, in the order the batches hold them.
    """

    def __init__(self, loader: Iterable[Any], *, input_names: Sequence[str]) -> None:
        if isinstance(input_names, str) or not input_names:
            raise CalibrationDataError(f"TorchLoaderReader: input_names must be a non-empty list, got {input_names!r}.")
        self.loader = loader
        self.input_names = tuple(input_names)

    def __iter__(self) -> Iterator[Feeds]:
        for index, item in enumerate(self.loader):
            yield dict(zip(self.input_names, map(_to_numpy, self._inputs(index, item)), strict=True))

    def _inputs(self, index: int, item: Any) -> list[Any]:
        names = self.input_names
        if isinstance(item, Mapping):
            if all(name in item for name in names):
                return [item[name] for name in names]
            held = f"keys {_listed(map(str, item))}"
        elif isinstance(item, tuple | list):
            if len(item) >= len(names):
                return list(item[: len(names)])
            held = f"{len(item)} element(s)"
        elif len(names) == 1:
            return [item]
        else:
            held = f"a single {type(item).__name__}"
        raise CalibrationDataError(
            f"TorchLoaderReader: batch {index} holds {held} for inputs {_listed(names)}. "
            "Make the loader yield the inputs first, or dicts keyed by input name."
        )


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


class RandomReader:
    """``count`` feeds of random data shaped like the model inputs (see :func:`random_feeds`).

    Symbolic dims on axis 0 become ``batch_size``, other symbolic dims 1. Feed ``i``
    uses seed ``seed + i``, so every iteration yields the same data.
    """

    def __init__(self, model: ir.Model, *, count: int, batch_size: int = 1, seed: int = 0) -> None:
        for what, number in (("count", count), ("batch_size", batch_size)):
            if isinstance(number, bool) or number < 1:
                raise CalibrationDataError(f"RandomReader: {what} must be a positive integer, got {number!r}.")
        self.model, self.count, self.batch_size, self.seed = model, count, batch_size, seed
        inputs = model_inputs(model)
        self._dims = {str(v.shape[0].value): batch_size for v in inputs if v.shape and not isinstance(v.shape[0], int)}

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Feeds]:
        return (random_feeds(self.model, seed=self.seed + i, dims=self._dims) for i in range(self.count))


def open_reader(
    spec: str | os.PathLike[str], model: ir.Model, *, preprocess: ImagePreprocess | None = None
) -> CalibrationReader:
    """The reader a CLI argument names.

    ``random:N`` gives N random feeds; a folder (or file) of ``.npz``/``.npy``
    gives an :class:`NpzDirReader` (``.npy`` feeds the input of a single-input
    model); a folder of images gives an :class:`ImageFolderReader`, with
    ``preprocess`` or else :func:`default_preprocess` of the model.

    Raises:
        CalibrationDataError: the spec is none of these.
    """
    text = os.fspath(spec)
    if isinstance(spec, str) and text.startswith("random:"):
        count = text.partition(":")[2]
        if not count.isdigit() or int(count) < 1:
            raise CalibrationDataError(f"calibration data '{text}': expected random:N with N >= 1, e.g. random:32.")
        return RandomReader(model, count=int(count))
    path = Path(text).resolve()
    if not path.exists():
        raise CalibrationDataError(f"{path}: calibration data not found. {_ACCEPTED}")
    names = [value.name or "" for value in model_inputs(model)]
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    has_arrays = any(p.suffix.lower() in ARRAY_SUFFIXES and path in (p, p.parent) for p in files)
    has_images = any(p.suffix.lower() in IMAGE_SUFFIXES for p in files)
    if has_arrays and has_images:
        raise CalibrationDataError(f"{path}: holds both .npz/.npy files and images. Put them in separate folders.")
    if has_arrays:
        if preprocess is not None:
            logger.warning("calibration data %s holds arrays; the image preprocessing is not used", path)
        return NpzDirReader(path, input_names=names if len(names) == 1 else None)
    if has_images:
        if len(names) != 1:
            raise CalibrationDataError(
                f"{path}: images can feed only a single-input model; this one has {_listed(names)}. "
                "Save .npz files keyed by input name instead."
            )
        return ImageFolderReader(path, input_name=names[0], preprocess=preprocess or default_preprocess(model))
    raise CalibrationDataError(f"{path}: no calibration data here. {_ACCEPTED}")

