"""Artifacts timed side by side: every compile folder's artifact runs the same samples in turns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeopt.core.errors import ModelLoadError
from edgeopt.deploy.compile import compile_model
from edgeopt.deploy.timing import time_side_by_side
from edgeopt.testing.timing_models import matmul_chain


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path, Path]:
    root = tmp_path_factory.mktemp("timing")
    np.savez(root / "data.npz", x=np.random.default_rng(0).standard_normal((8, 64, 256)).astype(np.float32))
    compiled = {}
    for name, layers in (("light", 0), ("heavy", 16)):  # 0 vs 67 M MACs a sample
        model = matmul_chain(root / f"{name}.onnx", layers)
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


def test_a_fixed_batch_larger_than_the_samples_is_still_timed(tmp_path: Path) -> None:
    np.savez(tmp_path / "data.npz", x=np.ones((3, 64, 256), np.float32))
    compile_model(matmul_chain(tmp_path / "fixed.onnx", 2, batch=8), tmp_path / "fixed", targets=["ort-cpu"])
    reference = matmul_chain(tmp_path / "dynamic.onnx", 2)  # the original: any batch; its artifact: 8
    p50 = time_side_by_side({"fixed": tmp_path / "fixed"}, data=tmp_path / "data.npz", reference=reference,
                            rounds=2, limit=3)
    assert p50["fixed"] > 0  # 3 samples repeated into one batch of 8, not "no calls, 0 ms"
