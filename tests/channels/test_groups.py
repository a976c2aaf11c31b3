"""Tests for the coupled-channel groups: who is cut with whom, and why a group is left alone."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgeopt.channels.builder import ChannelGroup
from edgeopt.channels.groups import build_groups
from edgeopt.passes.infer_shapes import InferShapesPass
from edgeopt.testing import prune_models


def _groups(model: ir.Model) -> list[ChannelGroup]:
    InferShapesPass()(model)
    return build_groups(model).groups


def _members(group: ChannelGroup) -> set[tuple[str, int, int, int, str]]:
    return {(str(m.value.name), m.axis, m.offset, m.block, m.role) for m in group.members}


def test_residual_add_merges_branches_with_depthwise_concat_and_flatten() -> None:
    groups = _groups(prune_models.residual_cnn())
    residual, side, head = groups
    assert residual.size == 16 and len(residual.sources) == 2 and residual.prunable
    assert _members(residual) == {
        ("w1", 0, 0, 1, "out"), ("b1", 0, 0, 1, "bias"), ("wd", 0, 0, 1, "out"), ("bd", 0, 0, 1, "bias"),
        ("w2", 0, 0, 1, "out"), ("b2", 0, 0, 1, "bias"), ("w2", 1, 0, 1, "in"), ("w3", 1, 0, 1, "in"),
        ("wf", 1, 0, 16, "in"),  # the Concat puts these channels first; Flatten: 4x4 features each
    }
    assert ("wf", 1, 16 * 16, 16, "in") in _members(side)  # after the residual's 16 channels
    assert head.reason == "reaches graph output 'y'"


def test_transformer_ffn_is_a_group_and_heads_are_one_group_each() -> None:
    groups = _groups(prune_models.transformer_block())
    by_size = {g.size: g for g in groups if g.prunable}
    assert sorted(by_size) == [2, 32]  # 2 heads of 8 features, the FFN's 32 intermediate neurons
    assert _members(by_size[32]) == {("w1", 1, 0, 1, "out"), ("b1", 0, 0, 1, "param"), ("w2", 0, 0, 1, "in")}
    assert by_size[2].head_dim == 8 and _members(by_size[2]) == {("wq", 1, 0, 8, "out"), ("wo", 0, 0, 8, "in")}
    assert by_size[32].head_dim is None
    reasons = [g.reason for g in groups if not g.prunable]
    assert any(r and "operand 'x' spans the channels" in r for r in reasons)  # residual from a graph input


def test_reshape_that_moves_the_channels_is_refused() -> None:
    model = prune_models.build("""
    net (float[N,6,16] x) => (float[N,16] y) {
        q = MatMul(x, wq)
        r = Reshape(q, shape)
        y = MatMul(r, wo)
    }""", {"wq": np.ones((16, 16)), "wo": np.ones((96, 16)), "shape": np.array([0, 96], np.int64)})
    first = _groups(model)[0]
    assert first.reason is not None and first.reason.endswith("splits or moves the channels")


def test_op_without_rule_blocks_its_group_with_the_reason() -> None:
    model = prune_models.build("""
    net (float[N,3,8,8] x) => (float[N,8,8,8] y) {
        a = Conv<pads=[1,1,1,1]>(x, w1)
        n = LpNormalization<axis=1>(a)
        y = Conv<pads=[1,1,1,1]>(n, w2)
    }""", {"w1": np.ones((8, 3, 3, 3)), "w2": np.ones((8, 8, 3, 3))})
    first = _groups(model)[0]
    assert first.reason == "LpNormalization 'LpNormalization' has no channel rule"


def test_grouped_conv_and_shared_weights_are_unprunable() -> None:
    grouped = prune_models.build("""
    net (float[N,4,8,8] x) => (float[N,4,8,8] y) {
        a = Conv(x, w1)
        g = Conv<group=2>(a, wg)
        y = Conv(g, w2)
    }""", {"w1": np.ones((4, 4, 1, 1)), "wg": np.ones((4, 2, 1, 1)), "w2": np.ones((4, 4, 1, 1))})
    assert _groups(grouped)[0].reason == "grouped Conv '' (group=2) is not depthwise"
    shared = prune_models.build("""
    net (float[N,4,8,8] x) => (float[N,4,8,8] y) {
        a = Conv(x, w1)
        b = Conv(x, w1)
        s = Add(a, b)
        y = Conv(s, w2)
    }""", {"w1": np.ones((4, 4, 1, 1)), "w2": np.ones((4, 4, 1, 1))})
    assert _groups(shared)[0].reason == "constant 'w1' is shared by 2 nodes"


def test_split_at_group_boundaries_carries_and_inside_a_group_blocks() -> None:
    weights = {"wa": np.ones((8, 3, 1, 1)), "wb": np.ones((8, 3, 1, 1)), "wy": np.ones((4, 8, 1, 1))}
    aligned = _groups(prune_models.build("""
    net (float[N,3,8,8] x) => (float[N,4,8,8] y) {
        a = Conv(x, wa)
        b = Conv(x, wb)
        c = Concat<axis=1>(a, b)
        p, q = Split<axis=1>(c, sizes)
        s = Add(p, q)
        y = Conv(s, wy)
    }""", {**weights, "sizes": np.array([8, 8])}))
    assert aligned[0].prunable and len(aligned[0].sources) == 2  # the Add after the Split merged a and b
    inside = _groups(prune_models.build("""
    net (float[N,3,8,8] x) => (float[N,4,8,8] y) {
        a = Conv(x, wa)
        b = Conv(x, wb)
        c = Concat<axis=1>(a, b)
        p, q = Split<axis=1>(c, sizes)
        y = Conv(p, wy)
    }""", {**weights, "sizes": np.array([4, 12]), "wy": np.ones((4, 4, 1, 1))}))
    assert inside[0].reason == "Split '' cuts through a channel group"
