"""Tests for factorize-low-rank: truncated SVD of MatMul, Gemm and 1x1 Conv weights."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.core.errors import PassOptionError
from edgeopt.core.runtime import run_model
from edgeopt.passes import FactorizeLowRankPass


def _params(model: ir.Model) -> int:
    return sum(v.const_value.size for v in model.graph.initializers.values())


def _layers(rank: int | None = None) -> ir.Model:
    """x[2, 24, 4, 4] -> 1x1 Conv (stride 2, pads) -> Flatten -> Gemm(transB, alpha, beta) -> MatMul -> y."""
    rng = np.random.default_rng(0)

    def matrix(m: int, n: int) -> np.ndarray:
        if rank is None:
            return (rng.standard_normal((m, n)) / np.sqrt(m)).astype(np.float32)
        return (rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n)) / np.sqrt(m * rank)).astype(np.float32)

    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "gw", "gc"], ["g"], name="gemm", transB=1, alpha=0.5, beta=2.0),
             helper.make_node("MatMul", ["g", "mw"], ["y"], name="matmul")]
    inits = [nh.from_array(matrix(32, 24).reshape(32, 24, 1, 1), "cw"),
             nh.from_array(rng.standard_normal(32).astype(np.float32), "cb"),
             nh.from_array(matrix(40, 288), "gw"),  # transB: (N, K) = (40, 32 * 3 * 3)
             nh.from_array(rng.standard_normal(40).astype(np.float32), "gc"),
             nh.from_array(matrix(40, 48), "mw")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 24, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 48])], inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_full_rank_reproduces_outputs(apply_pass, op_counts):
    model = _layers()
    pass_ = FactorizeLowRankPass(energy=1.0, min_elements=1, require_savings=False)
    # the factors multiply in another order: float32 rounding of sums over up to 288 terms
    apply_pass(pass_, model, rtol=1e-4, atol=1e-5)
    assert [(r.node, r.rank) for r in pass_.last_report] == [("conv", 24), ("gemm", 40), ("matmul", 40)]
    assert op_counts(model) == {"Conv": 2, "Flatten": 1, "Gemm": 1, "MatMul": 3}
    gemm = next(n for n in model.graph if n.op_type == "Gemm")
    assert "alpha" not in gemm.attributes and "transB" not in gemm.attributes
    assert gemm.attributes.get_float("beta") == 2.0


def test_exactly_low_rank_weights_shrink_without_changing_outputs(apply_pass):
    model = _layers(rank=4)
    before = _params(model)
    pass_ = FactorizeLowRankPass(energy=1.0, min_elements=1)
    apply_pass(pass_, model, rtol=1e-4, atol=1e-5)
    assert [r.rank for r in pass_.last_report] == [4, 4, 4]
    shapes = [(24, 32), (288, 40), (40, 48)]
    assert [r.shape for r in pass_.last_report] == shapes
    assert _params(model) == before - sum(m * n - 4 * (m + n) for m, n in shapes)


def test_energy_picks_the_rank_that_keeps_that_energy(apply_pass):
    model = _layers()
    weight = model.graph.initializers["mw"].const_value.numpy()
    s = np.linalg.svd(weight.astype(np.float64), compute_uv=False)
    expected = int(np.argmax(np.cumsum(s ** 2) / (s ** 2).sum() >= 0.8)) + 1
    before = _params(model)
    pass_ = FactorizeLowRankPass(energy=0.8, min_elements=1000)  # the MatMul and the Gemm
    apply_pass(pass_, model, rtol=1.0, atol=10.0)  # lossy: the kept energy is checked instead
    matmul = next(r for r in pass_.last_report if r.node == "matmul")
    assert matmul.rank == expected and matmul.energy >= 0.8
    assert _params(model) == before - sum(r.params_before - r.params_after for r in pass_.last_report)
    assert all(r.params_after < r.params_before for r in pass_.last_report)


def test_params_budget_is_respected_across_layers(apply_pass):
    model = _layers()
    pass_ = FactorizeLowRankPass(params=0.3, min_elements=1)
    weights = 32 * 24 + 288 * 40 + 40 * 48
    biases = _params(model) - weights
    apply_pass(pass_, model, rtol=10.0, atol=10.0)  # lossy: the budget is checked instead
    assert _params(model) - biases <= 0.3 * weights
    # relative energy per parameter is spent where it keeps most: here the big Gemm is cut
    assert [r.node for r in pass_.last_report] == ["gemm"]


def test_calibration_makes_the_factorization_data_aware():
    """On inputs with a few dominant directions, data-aware SVD loses far less output."""
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((32, 32)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
                              [nh.from_array(weight, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    scale = np.exp(-np.arange(32) / 4).astype(np.float32)
    data = [{"x": (rng.standard_normal((16, 32)) * scale).astype(np.float32)} for _ in range(4)]
    test = {"x": (rng.standard_normal((256, 32)) * scale).astype(np.float32)}
    expected = run_model(proto, test)["y"]
    errors = []
    for calibration in (None, data):
        model = ir.serde.deserialize_model(proto)
        FactorizeLowRankPass(params=0.4, min_elements=1, calibration=calibration)(model)
        got = run_model(model, test)["y"]
        errors.append(np.linalg.norm(got - expected) / np.linalg.norm(expected))
    assert errors[1] < 0.5 * errors[0]


def test_ineligible_layers_are_left_alone(apply_pass):
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "k3"], ["a"], name="conv3x3", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "dw"], ["b"], name="grouped", group=2),
             helper.make_node("Flatten", ["b"], ["f"]),
             helper.make_node("Gemm", ["f", "ta"], ["y"], name="trans_a_free", transA=0),
             helper.make_node("Gemm", ["ta_in", "ta"], ["z"], name="trans_a", transA=1)]
    inits = [nh.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "k3"),
             nh.from_array(rng.standard_normal((8, 4, 1, 1)).astype(np.float32), "dw"),
             nh.from_array(rng.standard_normal((128, 128)).astype(np.float32), "ta")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4]),
                                           helper.make_tensor_value_info("ta_in", TensorProto.FLOAT, [128, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 128])], inits)
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    pass_ = FactorizeLowRankPass(energy=0.5, min_elements=1)
    apply_pass(pass_, model, rtol=10.0, atol=100.0)
    assert [r.node for r in pass_.last_report] == ["trans_a_free"]  # not 3x3, grouped or transA


def test_bad_options_are_refused():
    with pytest.raises(PassOptionError, match="set energy or params, not both"):
        FactorizeLowRankPass(energy=0.9, params=0.5)
    with pytest.raises(PassOptionError, match="energy must be in \\(0, 1\\]"):
        FactorizeLowRankPass(energy=1.5)


def test_second_run_leaves_the_factors_alone_even_after_a_file_round_trip(tmp_path):
    """A factor is full rank r: re-factorizing it at energy < 1 would compound the error on every run."""
    from edgeopt.core.model_io import load_model, save_model

    model = _layers()
    first = FactorizeLowRankPass(energy=0.5, min_elements=256)
    assert first(model).modified and {r.node for r in first.last_report} == {"conv", "gemm", "matmul"}
    params, feeds = _params(model), {"x": np.random.default_rng(3).standard_normal((2, 24, 4, 4)).astype(np.float32)}
    expected = run_model(model, feeds)["y"]
    again = FactorizeLowRankPass(energy=0.5, min_elements=1)
    assert not again(model).modified and again.last_report == [] and _params(model) == params
    reloaded = load_model(save_model(model, tmp_path / "lr.onnx"))
    assert not FactorizeLowRankPass(energy=0.5, min_elements=1)(reloaded).modified
    np.testing.assert_array_equal(run_model(reloaded, feeds)["y"], expected)
