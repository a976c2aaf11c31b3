"""The ONNX backend conformance models as test cases: where they are, and their inputs.

The onnx wheel ships ``onnx/backend/test/data/{pytorch-converted,pytorch-operator,
simple,light}`` with test data but not ``data/node``; the node cases are generated
once from the generators it does ship (``onnx.backend.test.case.node``) into a cache
folder, in a child process with fixed seeds so that every run writes the same files.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

logger = logging.getLogger(__name__)

SHIPPED_SUITES = ("light", "pytorch-converted", "pytorch-operator", "simple")
"""Folders of ``onnx/backend/test/data`` that come with the wheel."""

_GENERATE_NODE_CASES = """
import argparse, sys
import numpy as np
import onnx.backend.test.case.node as node_cases
from onnx.backend.test import cmd_tools
np.random.seed(0)  # many generators draw from the global numpy RNG
cmd_tools.model_test.collect_testcases = node_cases.collect_testcases
cmd_tools.generate_data(argparse.Namespace(output=sys.argv[1]))
"""


@dataclass(frozen=True)
class BackendCase:
    """One conformance model with its input sets (read from disk when asked for).

    Args:
        name: ``"<suite>/<case>"``, e.g. ``"node/test_add"``.
        model_path: The ``.onnx`` file.
        data_dirs: The ``test_data_set_*`` folders, sorted. Empty for ``light``
            models, which ship no inputs: onnx's runner feeds ``arange(n) / n``.
    """

    name: str
    model_path: Path
    data_dirs: tuple[Path, ...] = ()

    @property
    def suite(self) -> str:
        return self.name.split("/", 1)[0]

    def input_sets(self) -> Iterator[dict[str, Any]]:
        """Yield one feed dict per data set: arrays, lists of arrays (sequences),
        ``None`` or a value (optionals), dicts (maps)."""
        model = onnx.load(os.fspath(self.model_path), load_external_data=False)
        inputs = _feedable_inputs(model.graph)
        if not self.data_dirs:
            yield {value.name: _dummy_input(value) for value in inputs}
            return
        for data_dir in self.data_dirs:
            files = sorted(data_dir.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
            if len(files) > len(inputs):
                raise ValueError(f"{data_dir}: {len(files)} input files for {len(inputs)} inputs")
            pairs = zip(files, inputs, strict=False)  # trailing optional inputs may be omitted
            yield {value.name: _read_input(file, value) for file, value in pairs}


def collect_cases(cache_dir: Path | None = None) -> list[BackendCase]:
    """Every backend conformance case: the wheel's shipped suites plus ``node``.

    Args:
        cache_dir: Where the node cases are generated (once, then reused).
            Defaults to ``$XDG_CACHE_HOME/edgeopt/onnx-node-<onnx version>-<pillow version>``
            (``~/.cache`` when unset).
    """
    data_root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    cases: list[BackendCase] = []
    for suite in SHIPPED_SUITES:
        cases.extend(_suite_cases(suite, data_root / suite))
    cases.extend(_suite_cases("node", node_cases_dir(cache_dir)))
    return sorted(cases, key=lambda c: c.name)


def _generator_deps() -> str:
    """Versions that change generated data: some cases encode images with Pillow when present."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"pillow-{version('pillow')}"
    except PackageNotFoundError:
        return "no-pillow"


def node_cases_dir(cache_dir: Path | None = None) -> Path:
    """The folder holding one sub-folder per node case, generated if missing."""
    if cache_dir is None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        cache_dir = base / "edgeopt" / f"onnx-node-{onnx.__version__}-{_generator_deps()}"
    target = Path(cache_dir) / "node"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".node-", dir=target.parent))
    try:
        logger.info("generating the onnx node test cases into %s", target)
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(
            [sys.executable, "-c", _GENERATE_NODE_CASES, os.fspath(staging)],
            env=env, capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"generating the onnx node test cases into {staging} failed "
                f"(exit {done.returncode}): {done.stderr.strip()[-2000:]}"
            )
        try:
            os.rename(staging / "node", target)  # atomic: a reader sees all or nothing
        except OSError:
            if not target.is_dir():  # else another process got there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _suite_cases(suite: str, folder: Path) -> list[BackendCase]:
    if suite == "light":  # flat files: light_<name>.onnx and its expected outputs
        return [BackendCase(f"light/{p.stem}", p) for p in sorted(folder.glob("light_*.onnx"))]
    cases = []
    for case_dir in sorted(p for p in folder.iterdir() if (p / "model.onnx").is_file()):
        data_dirs = sorted(case_dir.glob("test_data_set_*"), key=_data_set_index)
        cases.append(
            BackendCase(f"{suite}/{case_dir.name}", case_dir / "model.onnx", tuple(data_dirs))
        )
    return cases


def _data_set_index(path: Path) -> int:
    return int(path.name.rsplit("_", 1)[-1])


def _feedable_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (IR < 4 lists initializers as inputs too)."""
    initializers = {t.name for t in graph.initializer}
    return [v for v in graph.input if v.name not in initializers]


def _dummy_input(value: onnx.ValueInfoProto) -> np.ndarray:
    """What onnx's runner feeds ``light`` models: ``arange(n) / n`` in float32."""
    dims = value.type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in dims)
    n = int(np.prod(shape))
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def _read_input(file: Path, value: onnx.ValueInfoProto) -> Any:
    """Parse ``input_<j>.pb`` as the type of the ``j``-th feedable input (the
    generator writes them in that order; the protos' own names are often empty)."""
    data = file.read_bytes()
    kind = value.type.WhichOneof("value")
    if kind == "sequence_type":
        return numpy_helper.to_list(onnx.SequenceProto.FromString(data))
    if kind == "optional_type":
        return numpy_helper.to_optional(onnx.OptionalProto.FromString(data))
    if kind == "map_type":
        return numpy_helper.to_dict(onnx.MapProto.FromString(data))
    return numpy_helper.to_array(onnx.TensorProto.FromString(data))
