"""Tests for prune-magnitude: the smallest weights become zeros, biases stay."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from edgeopt.core.runtime import random_feeds, run_model
from edgeopt.passes import PruneMagnitudePass
from edgeopt.testing import prune_models


def _array(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()  # type: ignore[union-attr]


def test_layer_scope_zeros_the_smallest_and_is_idempotent(checker: Callable[[ir.Model], None]) -> None:
    model = prune_models.residual_cnn()
    original = {n: _array(model, n).copy() for n in ("w1", "w2", "wf", "b1")}
    pass_ = PruneMagnitudePass(sparsity=0.5, min_elements=200)
    assert pass_(model).modified
    checker(model)
    for name in ("w1", "w2", "wf"):
        pruned, before = _array(model, name), original[name]
        zeros = pruned == 0
        assert zeros.sum() == before.size // 2
        assert np.abs(before[zeros]).max() <= np.abs(before[~zeros]).min()  # the smallest went
        np.testing.assert_array_equal(pruned[~zeros], before[~zeros])
    np.testing.assert_array_equal(_array(model, "b1"), original["b1"])  # biases are never pruned
    assert _array(model, "wd").size < 200 and np.count_nonzero(_array(model, "wd")) == _array(model, "wd").size
    assert not PruneMagnitudePass(sparsity=0.5, min_elements=200)(model).modified


def test_zero_sparsity_keeps_outputs(apply_pass: Callable[..., ir.passes.PassResult]) -> None:
    model = prune_models.residual_cnn()
    assert not apply_pass(PruneMagnitudePass(sparsity=0.0), model, rtol=0, atol=0).modified


def test_global_scope_uses_one_threshold() -> None:
    model = prune_models.residual_cnn()
    feeds = random_feeds(model, dims={"N": 2})
    before = {n: _array(model, n).copy() for n in ("w1", "w2", "wf")}
    pass_ = PruneMagnitudePass(sparsity=0.3, scope="global", min_elements=200)
    pass_(model)
    magnitudes = np.concatenate([np.abs(a).ravel() for a in before.values()])
    threshold = np.sort(magnitudes)[int(0.3 * magnitudes.size) - 1]
    for name, array in before.items():
        np.testing.assert_array_equal(_array(model, name) == 0, np.abs(array) <= threshold)
    assert pass_.zeroed == int(0.3 * magnitudes.size) and pass_.total == magnitudes.size
    assert run_model(model, feeds)["y"].shape == (2, 4)
