"""Artifacts timed side by side: every compile folder's artifact runs the same samples in turns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.core.errors import ModelLoadError
from edgeopt.deploy.compile import compile_model
from edgeopt.deploy.timing import time_side_by_side


def _model(path: Path, layers: int) -> Path:
    """x [batch, 64, 256] through ``layers`` 256x256 MatMuls (0: one Relu)."""
    rng = np.random.default_rng(layers)
    weights = [numpy_helper.from_array((rng.standard_normal((256, 256)) / 16).astype(np.float32), f"w{i}")
               for i in range(layers)]
    names = ["x", *[f"h{i}" for i in range(layers)]]
    nodes = [helper.make_node("MatMul", [names[i], f"w{i}"], [names[i + 1]], name=f"mm{i}") for i in range(layers)]
    nodes.append(helper.make_node("Relu", [names[-1]], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64, 256])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path, Path]:
    root = tmp_path_factory.mktemp("timing")
    np.savez(root / "data.npz", x=np.random.default_rng(0).standard_normal((8, 64, 256)).astype(np.float32))
    compiled = {}
    for name, layers in (("light", 0), ("heavy", 16)):  # 0 vs 67 M MACs a sample
        model = _model(root / f"{name}.onnx", layers)
        compile_model(model, root / name, targets=["ort-cpu"])
        compiled[name] = root / name
    return compiled, root / "data.npz", root / "light.onnx"


def test_each_artifact_gets_its_p50_and_work_shows_in_it(folders: tuple[dict[str, Path], Path, Path]) -> None:
    compiled, data, reference = folders
    p50 = time_side_by_side(compiled, data=data, reference=reference, rounds=3, limit=8)
    assert set(p50) == {"light", "heavy"}
    assert all(np.isfinite(v) and v > 0 for v in p50.values())
    assert p50["heavy"] > 5 * p50["light"]  # 16 MatMuls of 64x256x256 against one Relu: a gap no load closes


def test_a_folder_without_a_compiled_artifact_and_too_few_rounds_are_refused(
        folders: tuple[dict[str, Path], Path, Path], tmp_path: Path) -> None:
    compiled, data, reference = folders
    with pytest.raises(ValueError, match="rounds must be 2 or more"):
        time_side_by_side(compiled, data=data, reference=reference, rounds=1)
    with pytest.raises(ModelLoadError, match="manifest"):
        time_side_by_side({"none": tmp_path}, data=data, reference=reference)
