"""``--device cuda``: the same training on a GPU, where one is present (skipped otherwise)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

from edgeopt.core.runtime import run_model
from edgeopt.testing import prune_models
from edgeopt.training import DistillConfig, OnnxModule, distill

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_the_module_runs_on_the_gpu_as_in_onnx_runtime() -> None:
    model = prune_models.attention()
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    name = model.graph.inputs[0].name or ""
    got = OnnxModule(model).to("cuda").run({name: torch.from_numpy(x).cuda()})
    for key, want in run_model(model, {name: x}).items():
        np.testing.assert_allclose(got[key].detach().cpu().numpy(), want, rtol=1e-4, atol=1e-4)


def test_distillation_on_the_gpu_improves_the_student() -> None:
    teacher = prune_models.transformer_block(seed=0)
    student = prune_models.transformer_block(seed=0)
    rng = np.random.default_rng(1)
    value = student.graph.initializers["w1"]
    noisy = value.const_value.numpy() + rng.standard_normal(value.shape.numpy()).astype(np.float32) * 0.3  # type: ignore[union-attr]
    value.const_value = ir.tensor(noisy, name="w1")
    train = [{"x": rng.standard_normal((64, 6, 16)).astype(np.float32)} for _ in range(16)]
    _, result = distill(student, teacher, train, DistillConfig(steps=100, lr=3e-3, device="cuda"))
    assert 1 - result.after.metric < 0.5 * (1 - result.before.metric), (result.before, result.after)
