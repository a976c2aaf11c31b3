"""Block-wise reconstruction (--blockwise): blocks found at the tensors student and teacher share, each trained
to reproduce the teacher's tensor at its end, checked through ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgeopt.core.errors import PassOptionError
from edgeopt.core.runtime import run_model
from edgeopt.testing.residual_models import residual_cnn
from edgeopt.training import DistillConfig, choose_objective, distill, write_back
from edgeopt.training.blockwise import blockwise_stage, find_blocks
from edgeopt.training.interpreter import OnnxModule


def _damaged(teacher: ir.Model, scale: float, seed: int = 5) -> ir.Model:
    """A copy of ``teacher`` whose convolution weights carry noise of ``scale`` times their spread."""
    student = teacher.clone()
    rng = np.random.default_rng(seed)
    for name, value in student.graph.initializers.items():
        array = value.const_value.numpy()  # type: ignore[union-attr]
        if array.ndim == 4:
            noise = rng.standard_normal(array.shape).astype(np.float32) * array.std() * scale
            value.const_value = ir.tensor(array + noise, name=name)
    return student


def _error(model: ir.Model, teacher: ir.Model, feeds: dict[str, np.ndarray]) -> float:
    got, want = run_model(model, feeds)["logits"], run_model(teacher, feeds)["logits"]
    return float(np.square(got - want).mean() / np.square(want).mean())


def test_blocks_end_where_the_graph_narrows_to_one_shared_tensor() -> None:
    model = ir.serde.deserialize_model(residual_cnn(blocks=3, channels=4, seed=0))
    module = OnnxModule(model)
    shared = {name: None for name in ("r0", "x1", "x2", "x3", "pooled")}

    blocks = find_blocks(module, shared, "logits", min_layers=2)  # two convolutions a residual block

    assert [(b.inputs, b.output) for b in blocks] == [
        (("x",), "x1"), (("x1",), "x2"), (("x2",), "x3"), (("x3",), "logits")]  # not r0 (x is still read after it)
    assert [b.stop - b.start for b in blocks] == [5, 5, 5, 3] and blocks[-1].stop == len(module.nodes)
    merged = find_blocks(module, shared, "logits", min_layers=3)
    assert [b.output for b in merged] == ["x2", "logits"]  # the head's Gemm completes the last block


def _residual_cnn_and_data() -> tuple[ir.Model, list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    teacher = ir.serde.deserialize_model(residual_cnn(blocks=4, channels=16, seed=1))
    rng = np.random.default_rng(0)
    train = [{"x": rng.standard_normal((64, 16, 6, 6)).astype(np.float32)} for _ in range(16)]
    return teacher, train, {"x": rng.standard_normal((1000, 16, 6, 6)).astype(np.float32)}


def test_each_block_learns_the_teachers_tensor_at_its_end() -> None:
    teacher, train, unseen = _residual_cnn_and_data()
    student = _damaged(teacher, 0.5)
    module = OnnxModule(student)
    first = train[0]
    objective = choose_objective("logits", run_model(teacher, first)["logits"])

    report = blockwise_stage(module, student, teacher, first, lambda: iter(train), objective, seconds=60, lr=1e-2,
                             steps=150)

    assert [(name, steps) for name, steps, _, _ in report.blocks] == [("s1", 150), ("s3", 150), ("logits", 150)]
    errors = [(before, after) for _, _, before, after in report.blocks]  # measured: 0.75 -> 0.032, 0.70 -> 0.049
    assert all(after < 0.1 * before for before, after in errors[:-1]) and errors[-1][1] < errors[-1][0], errors
    trained = student.clone()
    write_back(module, trained)
    before, after = _error(student, teacher, unseen), _error(trained, teacher, unseen)
    assert after < 0.02 * before, (before, after)  # measured: 0.37 -> 0.0012 on unseen samples, in ORT


def test_distill_reconstructs_blocks_first_within_its_time_limit() -> None:
    teacher, train, unseen = _residual_cnn_and_data()
    student = _damaged(teacher, 0.5)

    trained, result = distill(student, teacher, train, DistillConfig(
        time_limit=4, blockwise=2, steps=5, block_lr=1e-2, eval_every=1000, threads=1))

    assert [b[0] for b in result.blocks] == ["s1", "s3", "logits"]  # blocks of 3 convolutions (4 with the head)
    assert result.steps == 5 and result.seconds < 30  # the time limit covers both stages (5 s of slack: load)
    assert _error(trained, teacher, unseen) < _error(student, teacher, unseen)
    onnx.checker.check_model(ir.serde.serialize_model(trained), full_check=True)
    assert [n.op_type for n in trained.graph] == [n.op_type for n in student.graph]


def test_blockwise_must_leave_time_for_end_to_end_training() -> None:
    with pytest.raises(PassOptionError, match="--blockwise 60 leaves no time of --time-limit 60"):
        DistillConfig(time_limit=60, blockwise=60)
    with pytest.raises(PassOptionError, match="--blockwise must be 0 or more seconds"):
        DistillConfig(blockwise=-1)


def test_a_block_whose_loss_blows_up_keeps_its_weights() -> None:
    """A learning rate far too large: each block's error grows, so each goes back to its start and the model
    written is the student as it was (not weights of 1e12)."""
    teacher, train, unseen = _residual_cnn_and_data()
    student = _damaged(teacher, 0.5)
    module = OnnxModule(student)
    objective = choose_objective("logits", run_model(teacher, train[0])["logits"])

    report = blockwise_stage(module, student, teacher, train[0], lambda: iter(train), objective, seconds=60,
                             lr=1e12, steps=50)

    assert all(after == before for _, _, before, after in report.blocks)  # every block kept its start
    trained = student.clone()
    write_back(module, trained)
    got = run_model(trained, unseen)["logits"]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, run_model(student, unseen)["logits"], rtol=1e-4, atol=1e-4)  # the start
