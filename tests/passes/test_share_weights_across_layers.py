"""Tests for share-weights-across-layers: near-identical weights share one initializer."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.core.errors import PassOptionError
from edgeopt.passes import ShareWeightsAcrossLayersPass


def _blocks(weights: list[np.ndarray]) -> ir.Model:
    """x[2, 32] -> MatMul(W0) -> Relu -> MatMul(W1) -> Relu ... -> y: repeated layers."""
    nodes, value = [], "x"
    for i in range(len(weights)):
        nodes += [helper.make_node("MatMul", [value, f"W{i}"], [f"m{i}"], name=f"fc{i}"),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}")]
        value = f"r{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 32])],
                              [nh.from_array(w, f"W{i}") for i, w in enumerate(weights)])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _weight(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((32, 32)) / 6).astype(np.float32)


def test_identical_layers_share_one_initializer_and_outputs_are_unchanged(apply_pass, op_counts):
    w = _weight(0)
    model = _blocks([w, w.copy(), _weight(1)])
    pass_ = ShareWeightsAcrossLayersPass(tolerance=0.0, min_elements=16)
    assert apply_pass(pass_, model).modified
    assert sorted(model.graph.initializers) == ["W0", "W2"]
    fc0, fc1 = (n for n in model.graph if n.name in ("fc0", "fc1"))
    assert fc0.inputs[1] is fc1.inputs[1] is model.graph.initializers["W0"]
    assert [(s.name, s.shared_with, s.rel_error) for s in pass_.last_report] == [("W0", "W0", 0.0), ("W1", "W0", 0.0)]
    assert op_counts(model) == {"MatMul": 3, "Relu": 3}
    assert not ShareWeightsAcrossLayersPass(tolerance=0.0, min_elements=16)(model).modified


def test_near_identical_layers_share_their_mean_within_tolerance(apply_pass):
    w = _weight(0)
    noise = np.random.default_rng(5).standard_normal(w.shape).astype(np.float32)
    near = [w + 0.01 * np.abs(w).mean() * noise * k for k in (0.5, 1.0, 2.0)]
    model = _blocks([*near, _weight(1)])
    pass_ = ShareWeightsAcrossLayersPass(tolerance=0.05, min_elements=16)
    apply_pass(pass_, model, rtol=0.05, atol=0.01)  # each weight moved by under 5 % (checked below)
    shared = model.graph.initializers["W0"].const_value.numpy()
    assert sorted(model.graph.initializers) == ["W0", "W3"]
    np.testing.assert_allclose(shared, np.mean(near, axis=0), rtol=1e-6, atol=1e-7)
    for share, original in zip(pass_.last_report, near, strict=True):
        expected = np.linalg.norm(original - shared) / np.linalg.norm(original)
        assert share.shared_with == "W0" and share.rel_error == pytest.approx(expected, rel=1e-5)
        assert share.rel_error <= 0.05


def test_tolerance_below_the_difference_shares_nothing(apply_pass):
    w = _weight(0)
    model = _blocks([w, w * 1.1])  # 10 % apart
    pass_ = ShareWeightsAcrossLayersPass(tolerance=0.05, min_elements=16)
    assert not apply_pass(pass_, model).modified
    assert sorted(model.graph.initializers) == ["W0", "W1"] and pass_.last_report == []


def test_graph_outputs_other_shapes_and_small_tensors_are_left_alone(apply_pass):
    w = _weight(0)
    model = _blocks([w, w.copy()])
    model.graph.outputs.append(model.graph.initializers["W1"])
    assert not apply_pass(ShareWeightsAcrossLayersPass(tolerance=0.0, min_elements=16), model).modified
    model = _blocks([w, w.copy()])
    assert not apply_pass(ShareWeightsAcrossLayersPass(tolerance=0.0, min_elements=2048), model).modified


def test_bad_tolerance_is_refused():
    with pytest.raises(PassOptionError, match="tolerance must be in \\[0, 1\\)"):
        ShareWeightsAcrossLayersPass(tolerance=1.5)


def test_second_run_does_not_share_the_mean_again(tmp_path):
    """W2 is too far from the leader W0 but close to the mean of W0 and W1: a second run must not
    pull it in (W0's error would grow past what the first run reported)."""
    from edgeopt.core.model_io import load_model, save_model
    from edgeopt.passes.share_weights_across_layers import SHARED_KEY

    w = _weight(0).astype(np.float64)
    rng = np.random.default_rng(1)
    e1, e2 = rng.standard_normal(w.shape), rng.standard_normal(w.shape)
    e2 -= (e2 * e1).sum() / (e1 * e1).sum() * e1  # orthogonal to e1
    e1, e2 = (0.1 * np.linalg.norm(w) / np.linalg.norm(e) * e for e in (e1, e2))
    weights = [w, w + e1, w + e1 + e2]  # W1 - W0: 0.10, W2 - W0: 0.14, W2 - mean(W0, W1): 0.11 (relative)
    model = _blocks([a.astype(np.float32) for a in weights])
    first = ShareWeightsAcrossLayersPass(tolerance=0.12, min_elements=16)
    assert first(model).modified
    assert [(s.name, s.shared_with) for s in first.last_report] == [("W0", "W0"), ("W1", "W0")]
    assert model.metadata_props[SHARED_KEY] == "W0"
    shared = model.graph.initializers["W0"].const_value.numpy()  # type: ignore[union-attr]
    again = ShareWeightsAcrossLayersPass(tolerance=0.12, min_elements=16)
    assert not again(model).modified and again.last_report == []
    reloaded = load_model(save_model(model, tmp_path / "shared.onnx"))
    assert not ShareWeightsAcrossLayersPass(tolerance=0.12, min_elements=16)(reloaded).modified
    np.testing.assert_array_equal(reloaded.graph.initializers["W0"].const_value.numpy(), shared)  # type: ignore[union-attr]
    assert sorted(reloaded.graph.initializers) == ["W0", "W2"]
