"""Shipping a search's model and data to Ray workers that share no folder with it.

:func:`pack` reads the original model and every file the calibration, validation
and labels specs name into one :class:`Bundle` (bytes by relative path), which the
search puts once into Ray's object store. On a worker, :func:`unpack` writes the
bundle into a local folder (once per worker process and bundle) and returns the
evaluator rebased there, with a worker-local cache. The cache keys stay the ones
the search computed from the same bytes, so outcomes mean the same everywhere;
the winner's model, which lives in a worker's cache, is rebuilt from its
parameters by the search (:func:`edgeopt.search.run.search`).
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgeopt.core.errors import EdgeoptError
from edgeopt.core.model_io import SOURCE_FILES_KEY, load_model
from edgeopt.search.cache import Cache
from edgeopt.search.evaluate import Evaluator
from edgeopt.search.screen import Screen


@dataclass(frozen=True)
class Bundle:
    """The files a search reads, by relative path, and how each spec maps onto them."""

    files: dict[str, bytes]
    specs: dict[str, str | None]
    """``model``, ``calibration``, ``data``, ``labels``: a relative path in ``files``, or the spec as given
    (``random:N``, a labels key, None)."""
    digest: str = field(default="")


MAX_BUNDLE_BYTES = 2 << 30
"""A bundle is held in memory by the search and each worker: larger inputs want a shared path."""


def pack(evaluator: Evaluator) -> Bundle:
    """The model (with its external data), calibration, validation data and labels ``evaluator`` reads, as bytes.

    Raises:
        EdgeoptError: the files come to more than :data:`MAX_BUNDLE_BYTES`.
    """
    files: dict[str, bytes] = {}
    specs: dict[str, str | None] = {}
    model = Path(evaluator.model)
    for extra in load_model(model).meta[SOURCE_FILES_KEY][1:]:  # external data, beside the model file
        _add(files, "model", os.fspath(extra), relative_to=model.parent)
    for name, spec in (("model", os.fspath(model)), ("calibration", evaluator.context.calibration),
                       ("data", evaluator.data), ("labels", evaluator.labels)):
        specs[name] = _add(files, name, spec)
    size = sum(len(content) for content in files.values())
    if size > MAX_BUNDLE_BYTES:
        raise EdgeoptError(f"search --ray-address: the model and data come to {size / 2**30:.1f} GiB, too much to "
                           "ship through Ray's object store; put them on a path every node of the cluster sees.")
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(rel.encode())
        digest.update(hashlib.sha256(files[rel]).digest())
    return Bundle(files, specs, digest.hexdigest())


def _add(files: dict[str, bytes], name: str, spec: str | None, *,
         relative_to: Path | None = None) -> str | None:
    path = None if spec is None or spec.startswith("random:") else Path(spec)
    if path is None or not path.exists():  # random:N, a labels key: travels as written
        return spec
    if path.is_file():
        rel = path.relative_to(relative_to).as_posix() if relative_to is not None else path.name
        files[f"{name}/{rel}"] = path.read_bytes()
        return f"{name}/{rel}"
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        files[f"{name}/{file.relative_to(path)}"] = file.read_bytes()
    return name


_UNPACKED: dict[str, Path] = {}
"""Bundles already written on this worker process (digest -> folder)."""
_LOCAL: dict[str, Evaluator] = {}
"""Evaluators already rebased on this worker process (digest -> evaluator): the screen's reference outputs
and the counted MACs are kept between tasks."""


def local_evaluator(evaluator: Evaluator, digest: str, fetch: Callable[[], Bundle]) -> Evaluator:
    """The rebased evaluator of bundle ``digest`` on this process; ``fetch`` gets the bundle the first time."""
    if digest not in _LOCAL:
        _LOCAL[digest] = unpack(evaluator, fetch())
    return _LOCAL[digest]


def unpack(evaluator: Evaluator, bundle: Bundle, root: str | os.PathLike[str] | None = None) -> Evaluator:
    """``evaluator`` reading ``bundle``'s files from a local folder (written once per process, removed when
    the process exits), with a cache of its own there."""
    folder = _UNPACKED.get(bundle.digest)
    if folder is None or not folder.is_dir():
        folder = Path(tempfile.mkdtemp(prefix="edgeopt-search-", dir=root))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        for rel, content in bundle.files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(content)
        _UNPACKED[bundle.digest] = folder

    def local(name: str) -> str | None:
        spec = bundle.specs[name]
        if spec is None or not (spec in bundle.files or any(r.startswith(f"{spec}/") for r in bundle.files)):
            return spec
        return str(folder / spec)

    model, calibration, data, labels = (local(n) for n in ("model", "calibration", "data", "labels"))
    assert model is not None and calibration is not None and data is not None
    moved = copy.copy(evaluator)  # the cache keys (computed from the same bytes) stay as they are
    moved.model = Path(model)
    moved.context = replace(evaluator.context, calibration=calibration, original=moved.model)  # distill's teacher
    moved.data, moved.labels = data, labels
    moved.cache = Cache(folder / "cache")
    moved.screen = Screen(moved.model, data=data, labels=labels, limit=evaluator.limit, metric=evaluator.metric)
    moved._macs = {}  # noqa: SLF001 - paths of the driver's machine mean nothing here
    return moved
