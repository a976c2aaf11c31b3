"""Distillation recovers what compression lost, measured in ONNX Runtime on samples it never trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgeopt.blocks.bypass import drop_blocks
from edgeopt.blocks.residual import find_blocks
from edgeopt.cli.demo_model import DATA, ONNX_MODEL, preprocess
from edgeopt.core.errors import CalibrationDataError, ModelLoadError, PassOptionError
from edgeopt.core.runtime import run_model
from edgeopt.pruning.prune import PruneConfig, prune_file
from edgeopt.testing import prune_models
from edgeopt.testing.residual_models import residual_mlp
from edgeopt.training import DistillConfig, distill, distill_file


def _agreement(student: ir.Model | str, teacher: ir.Model | str, feeds: dict[str, np.ndarray]) -> float:
    s, t = next(iter(run_model(student, feeds).values())), next(iter(run_model(teacher, feeds).values()))
    return float((s.argmax(-1) == t.argmax(-1)).mean())


def _batches(x: np.ndarray, name: str, size: int = 128) -> list[dict[str, np.ndarray]]:
    return [{name: x[i:i + size]} for i in range(0, len(x), size)]


@pytest.fixture(scope="module")
def pruned_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pruned") / "pruned.onnx"
    prune_file(ONNX_MODEL, out, PruneConfig(ratio=0.5, repair=False))
    return out


def test_a_pruned_cnn_recovers_most_of_its_agreement(pruned_digits: Path, tmp_path: Path) -> None:
    data = np.load(DATA)
    train, unseen = preprocess(data["x_train"]), {"image": preprocess(data["x_val"])}
    before = _agreement(str(pruned_digits), str(ONNX_MODEL), unseen)

    result = distill_file(pruned_digits, ONNX_MODEL, _batches(train, "image"), tmp_path / "out.onnx",
                          DistillConfig(steps=300, lr=2e-3))

    after = _agreement(str(result.output), str(ONNX_MODEL), unseen)
    assert before < 0.8 and after - before > 0.1 and after - before >= 0.5 * (1 - before), (before, after)
    assert result.objective.kind == "logits" and result.objective.loss == "kl"
    assert result.after.metric > result.before.metric and result.after.samples == 143  # every 10th of 1437
    assert result.steps <= 300 and result.changed_initializers == 6
    trained, original = onnx.load(result.output), onnx.load(pruned_digits)
    onnx.checker.check_model(trained, full_check=True)
    assert [n.op_type for n in trained.graph.node] == [n.op_type for n in original.graph.node]
    assert trained.graph.input == original.graph.input and trained.graph.output == original.graph.output


def test_a_model_with_a_layer_dropped_recovers() -> None:
    teacher = ir.serde.deserialize_model(residual_mlp(blocks=3, width=16, seed=1))
    student = ir.serde.deserialize_model(residual_mlp(blocks=3, width=16, seed=1))
    assert drop_blocks(student, [find_blocks(student)[1]]) == 1
    rng = np.random.default_rng(0)
    train = _batches(rng.standard_normal((2048, 16)).astype(np.float32), "x")
    unseen = {"x": rng.standard_normal((1000, 16)).astype(np.float32)}
    before = _agreement(student, teacher, unseen)
    weights = {k: v.const_value.numpy().copy() for k, v in student.graph.initializers.items()}

    trained, result = distill(student, teacher, train, DistillConfig(steps=300, lr=3e-3))

    assert all(np.array_equal(v.const_value.numpy(), weights[k]) for k, v in student.graph.initializers.items())

    after = _agreement(trained, teacher, unseen)
    assert after - before > 0.1 and after - before >= 0.5 * (1 - before), (before, after)
    assert len(list(trained.graph)) == len(list(student.graph))


def test_a_hidden_state_output_trains_with_mse_and_is_scored_by_cosine() -> None:
    teacher = prune_models.transformer_block(seed=0)
    student = prune_models.transformer_block(seed=0)
    rng = np.random.default_rng(1)
    for name in ("w1", "w2"):
        value = student.graph.initializers[name]
        noisy = value.const_value.numpy() + rng.standard_normal(value.shape.numpy()).astype(np.float32) * 0.3
        value.const_value = ir.tensor(noisy, name=name)
    train = _batches(rng.standard_normal((1024, 6, 16)).astype(np.float32), "x")

    _, result = distill(student, teacher, train, DistillConfig(steps=200, lr=3e-3))

    assert result.objective.loss == "mse" and result.objective.metric == "cosine"
    assert 1 - result.after.metric < 0.5 * (1 - result.before.metric), (result.before, result.after)


def test_time_limit_and_epochs_end_training() -> None:
    teacher = ir.serde.deserialize_model(residual_mlp(blocks=2, seed=2))
    train = _batches(np.random.default_rng(0).standard_normal((256, 16)).astype(np.float32), "x", 32)
    _, timed = distill(teacher, teacher, train, DistillConfig(time_limit=0.2, eval_every=1000))
    _, one_epoch = distill(teacher, teacher, train, DistillConfig(epochs=1, patience=1000))
    assert "time limit" in timed.stopped
    assert one_epoch.steps == 8 and one_epoch.train_samples_seen == 256 - 25  # samples 9, 19, ..., 249 held out


def test_mismatched_teacher_is_one_line(pruned_digits: Path, tmp_path: Path) -> None:
    other = tmp_path / "attention.onnx"
    ir.save(prune_models.attention(), other)
    with pytest.raises(ModelLoadError, match=r"student and teacher take different inputs: student \{'image'"):
        distill_file(pruned_digits, other, "random:8", tmp_path / "out.onnx")


def test_missing_or_too_little_data_is_one_line(pruned_digits: Path, tmp_path: Path) -> None:
    with pytest.raises(CalibrationDataError, match="calibration data not found"):
        distill_file(pruned_digits, ONNX_MODEL, str(tmp_path / "nowhere"), tmp_path / "out.onnx")
    with pytest.raises(CalibrationDataError, match="too few samples to hold out 10%"):
        distill_file(pruned_digits, ONNX_MODEL, "random:1", tmp_path / "out.onnx")


@pytest.mark.parametrize(("option", "value"), [("steps", 0), ("lr", -1.0), ("holdout", 1.0), ("batch_size", 2.5)])
def test_bad_options_are_rejected(option: str, value: float) -> None:
    with pytest.raises(PassOptionError, match=f"--{option.replace('_', '-')} must be"):
        DistillConfig(**{option: value})  # type: ignore[arg-type]


def test_outputs_of_different_shapes_are_one_line() -> None:
    student = ir.serde.deserialize_model(residual_mlp(blocks=1, classes=10))
    teacher = ir.serde.deserialize_model(residual_mlp(blocks=1, classes=5))
    train = _batches(np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32), "x")
    with pytest.raises(ModelLoadError, match=r"output 'logits': the student gives shape \[\d+, 10\], the teacher"):
        distill(student, teacher, train)
