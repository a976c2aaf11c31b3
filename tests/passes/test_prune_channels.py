"""Tests for prune-channels: coupled groups sliced consistently, checked in ONNX Runtime."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import pytest

from edgeopt.core.errors import CalibrationDataError, PassOptionError
from edgeopt.core.runtime import random_feeds, run_model
from edgeopt.passes import FoldBatchNormPass, PruneChannelsPass
from edgeopt.testing import prune_models

ApplyPass = Callable[..., ir.passes.PassResult]


def _shapes(model: ir.Model) -> dict[str, tuple[int, ...]]:
    return {name: tuple(v.const_value.numpy().shape) for name, v in model.graph.initializers.items()
            if v.const_value is not None}


def _feeds(model: ir.Model, batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    return random_feeds(model, seed=seed, dims={"N": batch})


def test_ratio_zero_changes_nothing(apply_pass: ApplyPass) -> None:
    model = prune_models.residual_cnn()
    before = _shapes(model)
    result = apply_pass(PruneChannelsPass(ratio=0.0), model, _feeds(model), rtol=0, atol=0)
    assert not result.modified and _shapes(model) == before


def test_pruning_all_zero_channels_leaves_outputs_unchanged(apply_pass: ApplyPass) -> None:
    """Zero channels through a residual Add, a depthwise Conv, a Concat and a Flatten into a Gemm:
    only a rewrite that cuts every member at the right offset keeps the outputs."""
    model = prune_models.residual_cnn(zero=([1, 5, 6, 12], [0, 7]))
    pass_ = PruneChannelsPass(ratio=0.25, round_to=1)
    result = apply_pass(pass_, model, _feeds(model))
    assert result.modified
    assert pass_.plan is not None
    assert [g.removed for g in pass_.plan.groups if g.removed] == [[1, 5, 6, 12], [0, 7]]
    shapes = _shapes(model)
    assert shapes["w1"] == (12, 3, 3, 3) and shapes["wd"] == (12, 1, 3, 3) and shapes["w2"] == (12, 12, 1, 1)
    assert shapes["w3"] == (6, 12, 1, 1) and shapes["wf"] == (4, 18 * 16)


def test_residual_and_concat_groups_are_pruned_consistently(checker: Callable[[ir.Model], None]) -> None:
    model = prune_models.residual_cnn(seed=3)
    feeds = _feeds(model)
    PruneChannelsPass(ratio=0.5, round_to=4)(model)
    checker(model)
    shapes = _shapes(model)
    assert shapes["w1"][0] == shapes["w2"][0] == shapes["wd"][0] == shapes["w2"][1] == shapes["w3"][1] == 8
    assert shapes["w3"][0] == 4 and shapes["wf"] == (4, (8 + 4) * 16)
    out = run_model(model, feeds)["y"]
    assert out.shape == (4, 4) and np.isfinite(out).all()


def test_transformer_ffn_neurons_and_heads_are_pruned(checker: Callable[[ir.Model], None]) -> None:
    model = prune_models.transformer_block()
    feeds = _feeds(model)
    expected = run_model(model, feeds)["y"]
    pass_ = PruneChannelsPass(ratio=0.5, round_to=8)
    pass_(model)
    checker(model)
    shapes = _shapes(model)
    assert shapes["w1"] == (16, 16) and shapes["b1"] == (16,) and shapes["w2"] == (16, 16)
    assert shapes["wq"] == (16, 8) and shapes["wo"] == (8, 16)  # one head of 8 features left
    join = model.graph.initializers["join"].const_value
    assert join is not None and join.numpy().tolist() == [0, 0, 8]
    got = run_model(model, feeds)["y"]
    assert got.shape == expected.shape and not np.allclose(got, expected)  # lossy, but runs


def test_unsupported_op_keeps_its_group_and_the_model_runs(checker: Callable[[ir.Model], None]) -> None:
    rng = np.random.default_rng(0)
    model = prune_models.build("""
    net (float[N,3,8,8] x) => (float[N,8,8,8] y) {
        a = Conv<pads=[1,1,1,1]>(x, w1)
        n = LpNormalization<axis=1>(a)
        b = Conv<pads=[1,1,1,1]>(n, w2)
        r = Relu(b)
        y = Conv<pads=[1,1,1,1]>(r, w3)
    }""", {"w1": rng.standard_normal((16, 3, 3, 3)), "w2": rng.standard_normal((16, 16, 3, 3)),
           "w3": rng.standard_normal((8, 16, 3, 3))})
    pass_ = PruneChannelsPass(ratio=0.5)
    pass_(model)
    checker(model)
    assert pass_.plan is not None
    assert pass_.plan.groups[0].reason == "LpNormalization 'LpNormalization' has no channel rule"
    assert _shapes(model)["w1"] == (16, 3, 3, 3) and _shapes(model)["w2"] == (8, 16, 3, 3)
    assert run_model(model, _feeds(model))["y"].shape == (4, 8, 8, 8)


def test_bn_criterion_removes_smallest_gamma_and_needs_batchnorm() -> None:
    rng = np.random.default_rng(0)
    gamma = rng.uniform(1.0, 2.0, 16)
    gamma[[2, 9, 11, 14]] = 0.01
    text = """
    net (float[N,3,8,8] x) => (float[N,8,8,8] y) {
        a = Conv<pads=[1,1,1,1]>(x, w1)
        n = BatchNormalization(a, gamma, beta, mean, var)
        r = Relu(n)
        y = Conv<pads=[1,1,1,1]>(r, w2)
    }"""
    weights = {"w1": rng.standard_normal((16, 3, 3, 3)), "gamma": gamma, "beta": rng.standard_normal(16),
               "mean": rng.standard_normal(16), "var": rng.uniform(0.5, 1.5, 16),
               "w2": rng.standard_normal((8, 16, 3, 3))}
    pass_ = PruneChannelsPass(ratio=0.25, criterion="bn", round_to=1, plan_only=True)
    pass_(prune_models.build(text, weights))
    assert pass_.plan is not None and pass_.plan.groups[0].removed == [2, 9, 11, 14]
    folded = prune_models.build(text, weights)
    FoldBatchNormPass()(folded)
    pass_(folded)
    assert pass_.plan.groups[0].reason is not None and "no BatchNorm" in pass_.plan.groups[0].reason


def _dead_channel_model() -> tuple[ir.Model, list[int]]:
    """Channels 3 and 8 have the largest weights but a bias that keeps them below zero (dead ReLU)."""
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((16, 3, 3, 3)) * 0.1
    b1 = np.zeros(16)
    dead = [3, 8]
    w1[dead] *= 5
    b1[dead] = -100.0
    model = prune_models.build("""
    net (float[N,3,8,8] x) => (float[N,8,8,8] y) {
        a = Conv<pads=[1,1,1,1]>(x, w1, b1)
        r = Relu(a)
        y = Conv<pads=[1,1,1,1]>(r, w2)
    }""", {"w1": w1, "b1": b1, "w2": rng.standard_normal((8, 16, 3, 3))})
    return model, dead


def test_activation_criterion_finds_dead_channels(apply_pass: ApplyPass) -> None:
    model, dead = _dead_channel_model()
    calibration = [_feeds(model, 8, seed) for seed in range(3)]
    weight_plan = PruneChannelsPass(ratio=2 / 16, round_to=1, plan_only=True)
    weight_plan(model)
    assert weight_plan.plan is not None and weight_plan.plan.groups[0].removed != dead
    pass_ = PruneChannelsPass(ratio=2 / 16, round_to=1, criterion="activation", calibration=calibration)
    apply_pass(pass_, model, _feeds(model))  # dead channels: the outputs do not change
    assert pass_.plan is not None and pass_.plan.groups[0].removed == dead


def test_repair_recovers_most_of_the_error(checker: Callable[[ir.Model], None]) -> None:
    calibration = [_feeds(prune_models.residual_cnn(), 16, seed) for seed in range(4)]
    test = _feeds(prune_models.residual_cnn(), 32, seed=99)
    reference = run_model(prune_models.residual_cnn(), test)["y"]
    errors = {}
    for repair in (False, True):
        model = prune_models.residual_cnn()
        PruneChannelsPass(ratio=0.5, round_to=1, repair=repair, calibration=calibration)(model)
        checker(model)
        errors[repair] = float(np.mean((run_model(model, test)["y"] - reference) ** 2))
    assert errors[True] < 0.5 * errors[False]


def test_global_scope_exclude_and_cap() -> None:
    model = prune_models.residual_cnn()
    pass_ = PruneChannelsPass(ratio=0.5, scope="global", round_to=1, max_ratio=0.6, plan_only=True)
    pass_(model)
    assert pass_.plan is not None
    before, after = pass_.plan.channels
    prunable = [g for g in pass_.plan.groups if g.reason is None]
    assert all(g.keep >= 0.4 * g.size for g in prunable)
    assert sum(g.size - g.keep for g in prunable) <= 0.5 * sum(g.size for g in prunable)
    excluded = PruneChannelsPass(ratio=0.5, exclude=("c3*",), plan_only=True)
    model.graph.node(6).name = "c3_conv"
    excluded(model)
    assert excluded.plan is not None and excluded.plan.groups[1].reason == "excluded (c3_conv)"


def test_options_are_checked() -> None:
    with pytest.raises(PassOptionError, match="ratio and max_ratio must be in"):
        PruneChannelsPass(ratio=1.5)
    with pytest.raises(CalibrationDataError, match="need calibration data"):
        PruneChannelsPass(criterion="activation")


def test_repair_of_transformer_ffn_refits_projection_and_bias(checker: Callable[[ir.Model], None]) -> None:
    calibration = [_feeds(prune_models.transformer_block(), 32, seed) for seed in range(3)]
    test = _feeds(prune_models.transformer_block(), 16, seed=99)
    reference = run_model(prune_models.transformer_block(), test)["y"]
    errors, b2 = {}, {}
    for repair in (False, True):
        model = prune_models.transformer_block()
        PruneChannelsPass(ratio=0.5, round_to=1, repair=repair, calibration=calibration)(model)
        checker(model)
        errors[repair] = float(np.mean((run_model(model, test)["y"] - reference) ** 2))
        b2[repair] = model.graph.initializers["b2"].const_value.numpy()  # type: ignore[union-attr]
    assert errors[True] < 0.5 * errors[False]
    assert not np.allclose(b2[True], b2[False])  # the refit bias went into the Add after the MatMul


@pytest.mark.parametrize(("size", "ratio", "rounding", "keep"), [
    (16, 0.3, "up", 16), (16, 0.3, "down", 8), (64, 0.3, "up", 48), (64, 0.3, "down", 40),
    (256, 0.3, "down", 176), (8, 0.9, "down", 8), (10, 0.5, "up", 8),
])
def test_keep_count_rounding(size: int, ratio: float, rounding: str, keep: int) -> None:
    from edgeopt.channels.plan import keep_count

    assert keep_count(size, size * (1 - ratio), round_to=8, max_ratio=0.9, rounding=rounding) == keep  # type: ignore[arg-type]


def test_dynamic_flatten_target_built_by_concat_is_rewritten(apply_pass: ApplyPass) -> None:
    """torch's dynamo exports ``x.view(batch, -1)`` as Reshape(x, Concat(batch, [C*H*W]))."""
    rng = np.random.default_rng(0)
    w1, wf = rng.standard_normal((8, 4, 1, 1)), rng.standard_normal((3, 8 * 16))
    w1[[2, 5]] = 0
    wf.reshape(3, 8, 16)[:, [2, 5]] = 0
    model = prune_models.build("""
    net (float[N,4,4,4] x) => (float[N,3] y) {
        c = Conv(x, w1)
        s = Shape(x)
        b = Slice(s, zero, one)
        t = Concat<axis=0>(b, width)
        f = Reshape(c, t)
        y = Gemm<transB=1>(f, wf)
    }""", {"w1": w1, "wf": wf, "zero": np.array([0]), "one": np.array([1]), "width": np.array([128])})
    pass_ = PruneChannelsPass(ratio=0.25, round_to=1)
    apply_pass(pass_, model, _feeds(model))
    assert pass_.plan is not None and pass_.plan.groups[0].removed == [2, 5]
    assert model.graph.initializers["width"].const_value.numpy().tolist() == [6 * 16]  # type: ignore[union-attr]


def test_squeeze_excite_pad_resize_transpose_reduce_keep_outputs(apply_pass: ApplyPass) -> None:
    """An SE block's Mul merges the gate's channels with the feature's; Pad, Resize, a channels-last
    Transpose and a ReduceMean carry them to a Gemm. Zero channels: the outputs must not move."""
    rng = np.random.default_rng(0)
    w = {"wa": rng.standard_normal((8, 3, 3, 3)), "ba": rng.standard_normal(8),
         "ws1": rng.standard_normal((4, 8, 1, 1)), "bs1": rng.standard_normal(4),
         "ws2": rng.standard_normal((8, 4, 1, 1)), "bs2": rng.standard_normal(8),
         "wf": rng.standard_normal((2, 8)), "bf": rng.standard_normal(2),
         "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1]), "roi": np.zeros(0), "scales": np.array([1.0, 1.0, 2.0, 2.0])}
    z, zr = [3, 6], [1]
    w["wa"][z] = w["ba"][z] = w["ws1"][:, z] = w["ws2"][z] = w["wf"][:, z] = 0
    w["ws1"][zr] = w["bs1"][zr] = w["ws2"][:, zr] = 0
    model = prune_models.build("""
    net (float[N,3,8,8] x) => (float[N,2] y) {
        a = Conv<pads=[1,1,1,1]>(x, wa, ba)
        r = Relu(a)
        g = GlobalAveragePool(r)
        s1 = Conv(g, ws1, bs1)
        s2 = Relu(s1)
        s3 = Conv(s2, ws2, bs2)
        s4 = Sigmoid(s3)
        m = Mul(r, s4)
        p = Pad(m, pads)
        u = Resize<mode="nearest">(p, roi, scales)
        t = Transpose<perm=[0,2,3,1]>(u)
        v = ReduceMean<axes=[1,2], keepdims=0>(t)
        y = Gemm<transB=1>(v, wf, bf)
    }""", w)
    pass_ = PruneChannelsPass(ratio=0.25, round_to=1)
    apply_pass(pass_, model, _feeds(model))
    assert pass_.plan is not None
    assert [(g.size, g.removed) for g in pass_.plan.groups if g.removed] == [(8, z), (4, zr)]
    assert _shapes(model)["ws2"] == (6, 3, 1, 1) and _shapes(model)["wf"] == (2, 6)


def test_reconstruction_criterion_removes_the_channel_whose_removal_changes_the_output_least() -> None:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3)) * np.array([10.0, 1.0, 1.0])  # channel 0: large weights in, and activations
    w2 = rng.standard_normal((3, 2)) * np.array([[0.01], [1.0], [2.0]])  # ... but read with tiny weights
    text = """
    net (float[N,4] x) => (float[N,2] y) {
        h = MatMul(x, w1)
        y = MatMul(h, w2)
    }"""
    calibration = [{"x": rng.standard_normal((32, 4)).astype(np.float32)} for _ in range(3)]
    x = np.concatenate([feeds["x"] for feeds in calibration]).astype(np.float64)
    change = [np.mean((np.outer(x @ w1[:, c], w2[c])) ** 2) for c in range(3)]  # E||dy||^2 removing channel c

    def removed(criterion: str) -> list[int]:
        pass_ = PruneChannelsPass(ratio=0.34, criterion=criterion, round_to=1, plan_only=True,  # type: ignore[arg-type]
                                  calibration=calibration)
        pass_(prune_models.build(text, {"w1": w1, "w2": w2}))
        assert pass_.plan is not None
        return pass_.plan.groups[0].removed

    assert removed("reconstruction") == [int(np.argmin(change))]
    assert removed("l1") != removed("reconstruction")  # magnitude alone keeps the wrong channel
