"""Distillation extras: a labelled task loss mixed in (--labels/--alpha) and matched intermediate tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from edgeopt.blocks.bypass import drop_blocks
from edgeopt.blocks.residual import find_blocks
from edgeopt.cli.demo_model import DATA, ONNX_MODEL, preprocess
from edgeopt.core.errors import CalibrationDataError, PassOptionError
from edgeopt.core.runtime import create_session, run_model
from edgeopt.pruning.prune import PruneConfig, prune_file
from edgeopt.testing import prune_models
from edgeopt.testing.residual_models import residual_mlp
from edgeopt.training import DistillConfig, distill, distill_file
from edgeopt.training.features import channel_maps, match_channels, shared_features, with_outputs


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A pruned digits CNN and a folder of .npz batches holding images and their labels."""
    root = tmp_path_factory.mktemp("labels")
    prune_file(ONNX_MODEL, root / "pruned.onnx", PruneConfig(ratio=0.5, repair=False))
    data = np.load(DATA)
    (root / "data").mkdir()
    images, labels = preprocess(data["x_train"]), data["y_train"].astype(np.int64)
    for i in range(0, len(images), 256):
        np.savez(root / "data" / f"batch_{i:04d}.npz", image=images[i:i + 256], label=labels[i:i + 256])
    return root / "pruned.onnx", root / "data"


def test_labels_mix_a_task_loss_in(digits: tuple[Path, Path], tmp_path: Path) -> None:
    student, data = digits
    val = np.load(DATA)
    x, y = preprocess(val["x_val"]), val["y_val"]

    result = distill_file(student, ONNX_MODEL, str(data), tmp_path / "out.onnx",
                          DistillConfig(steps=200, lr=2e-3, labels="label", alpha=0.5))

    before = float((run_model(str(student), {"image": x})["logits"].argmax(1) == y).mean())
    after = float((run_model(str(result.output), {"image": x})["logits"].argmax(1) == y).mean())
    assert after - before > 0.15 and after > 0.9, (before, after)  # measured: 0.70 -> 0.97
    assert result.objective.metric == "top-1 agreement" and result.after.metric > result.before.metric


def test_labels_must_be_class_indices_of_a_logits_output(digits: tuple[Path, Path], tmp_path: Path) -> None:
    student, data = digits
    missing = r"--labels 'targets': the data has no array 'targets'; it has \['image', 'label'\]"
    with pytest.raises(CalibrationDataError, match=missing):
        distill_file(student, ONNX_MODEL, str(data), tmp_path / "o.onnx", DistillConfig(steps=1, labels="targets"))
    block = prune_models.transformer_block(seed=0)
    x = np.random.default_rng(0).standard_normal((64, 6, 16)).astype(np.float32)
    with pytest.raises(PassOptionError, match="--labels: a task loss needs class scores"):
        distill(block, block, [{"x": x, "y": np.zeros(64, np.int64)}], DistillConfig(steps=1, labels="y"))
    with pytest.raises(CalibrationDataError, match="--labels 'label': expected integer class indices"):
        distill(ir.load(student), ir.load(ONNX_MODEL),
                [{"image": preprocess(np.load(DATA)["x_val"]), "label": np.zeros(143 * 2 + 74, np.float32)}],
                DistillConfig(steps=1, labels="label"))


def test_features_are_found_by_name_and_matched() -> None:
    teacher = ir.serde.deserialize_model(residual_mlp(blocks=3, width=16, seed=1))
    student = ir.serde.deserialize_model(residual_mlp(blocks=3, width=16, seed=1))
    drop_blocks(student, [find_blocks(student)[1]])
    assert shared_features(student, teacher, 10) == ["h0", "r0", "f0", "x1", "h2", "r2", "f2", "x3", "z"]
    assert shared_features(student, teacher, 1) == ["z"]
    rng = np.random.default_rng(0)
    train = [{"x": rng.standard_normal((128, 16)).astype(np.float32)} for _ in range(16)]
    unseen = {"x": rng.standard_normal((1000, 16)).astype(np.float32)}

    def error(model: ir.Model) -> float:
        got, want = (run_model(with_outputs(m, ["z"]), unseen)["z"] for m in (model, teacher))
        return float(np.square(got - want).mean() / np.square(want).mean())

    plain, _ = distill(student, teacher, train, DistillConfig(steps=300, lr=3e-3))
    matched, result = distill(student, teacher, train, DistillConfig(steps=300, lr=3e-3, features=1))

    assert result.features == ["z"]
    assert error(matched) < 0.7 * error(plain) < 0.7 * error(student), (error(student), error(plain), error(matched))
    assert [v.name for v in matched.graph.outputs] == ["logits"]  # the matched tensor is not a new output


def test_pruned_tensors_are_matched_on_the_channels_they_kept(digits: tuple[Path, Path]) -> None:
    student, teacher = ir.load(digits[0]), ir.load(ONNX_MODEL)
    found = shared_features(student, teacher, 100)
    assert {"relu", "relu_1"} <= set(found)  # 16 -> 8 and 32 -> 16 channels after pruning
    feeds = {"image": preprocess(np.load(DATA)["x_val"][:64])}
    session = create_session(with_outputs(teacher, found))

    maps = match_channels(student, found, session, feeds)

    first_conv = next(n for n in student.graph if n.op_type == "Conv").inputs[1].name
    mine, theirs = (m.graph.initializers[first_conv].const_value.numpy() for m in (student, teacher))
    kept = [int(np.argmin(np.abs(theirs - row).reshape(len(theirs), -1).sum(1))) for row in mine]
    relu = maps["relu"]
    assert relu is not None and relu[0] == 1 and relu[1].tolist() == kept  # read from data, as the weights say
    relu_1 = maps["relu_1"]
    assert relu_1 is not None and len(relu_1[1]) == 16 and (np.diff(relu_1[1]) > 0).all() and relu_1[1][-1] < 32


def test_a_tensor_unrelated_to_the_teacher_s_is_not_matched() -> None:
    rng = np.random.default_rng(0)
    teacher = rng.standard_normal((32, 12, 5, 5)).astype(np.float32)
    kept = np.array([0, 3, 4, 7, 11])
    near = teacher[:, kept] + 0.1 * rng.standard_normal((32, 5, 5, 5)).astype(np.float32)
    maps = channel_maps({"a": near, "b": rng.standard_normal((32, 5, 5, 5)).astype(np.float32)},
                        {"a": teacher, "b": teacher})
    found = maps["a"]
    assert found is not None and found[0] == 1 and found[1].tolist() == kept.tolist() and "b" not in maps
