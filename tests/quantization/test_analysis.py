"""Tests for edgeopt.quantization.analysis: per-node sensitivity and accuracy-aware fallback.

The outlier model has two parallel layers feeding an Add: ``mm_clean`` reads an
ordinary N(0, 1) input, ``mm_outlier`` reads one whose channels 0, 5 and 9 are
1000x larger (LLM-style activation outliers; its weight rows for them are 1000x
smaller, so both layers contribute alike). Activations get one scale per tensor,
so the outliers stretch ``b``'s range and its ordinary channels round to zero:
``b`` itself keeps a high SQNR (the outliers dominate its energy) while
``mm_outlier``'s output loses nearly everything. That node introduces the error.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.calibration.stream import calibrate
from edgeopt.core.runtime import Feeds, run_model
from edgeopt.passes.quantize_common import prepare_for_quantization
from edgeopt.passes.quantize_static import quantize_with_ranges
from edgeopt.quantization.analysis import FallbackResult, agreement_metric, fallback, sensitivity

OUTLIER_CHANNELS = [0, 5, 9]


def _vi(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _outlier_model() -> ir.Model:
    """y[N, 10] = a @ W1 + b @ W2: class scores, from a clean input and an outlier one."""
    rng = np.random.default_rng(0)
    w2 = rng.standard_normal((16, 10))
    w2[OUTLIER_CHANNELS] /= 1000
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "W1"], ["p"], name="mm_clean"),
         helper.make_node("MatMul", ["b", "W2"], ["q"], name="mm_outlier"),
         helper.make_node("Add", ["p", "q"], ["y"], name="add")],
        "outliers", [_vi("a", ["N", 16]), _vi("b", ["N", 16])], [_vi("y", ["N", 10])],
        [nh.from_array(rng.standard_normal((16, 10)).astype(np.float32), "W1"),
         nh.from_array(w2.astype(np.float32), "W2")])
    return _prepared(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _chain_model() -> ir.Model:
    """x -> MatMul -> Relu -> MatMul: ORT's QDQ emitter fuses the Relu into the first MatMul."""
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")],
        "chain", [_vi("x", ["N", 16])], [_vi("y", ["N", 8])],
        [nh.from_array(rng.standard_normal((16, 32)).astype(np.float32), "W1"),
         nh.from_array(rng.standard_normal((32, 8)).astype(np.float32), "W2")])
    return _prepared(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _prepared(proto: onnx.ModelProto) -> ir.Model:
    onnx.checker.check_model(proto, full_check=True)
    model = ir.from_proto(proto)
    prepare_for_quantization(model)
    return model


def _outlier_data(batches: int = 4, rows: int = 64) -> list[Feeds]:
    rng = np.random.default_rng(0)
    data = []
    for _ in range(batches):
        b = rng.standard_normal((rows, 16)).astype(np.float32)
        b[:, OUTLIER_CHANNELS] *= 1000
        data.append({"a": rng.standard_normal((rows, 16)).astype(np.float32), "b": b})
    return data


def _chain_data() -> list[Feeds]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((64, 16)).astype(np.float32)} for _ in range(4)]


class _Emitter:
    """Quantizes a model from fixed calibrated ranges, keeping given nodes float."""

    def __init__(self, model: ir.Model, data: list[Feeds]) -> None:
        self.model = model
        self.ranges = calibrate(model, data).ranges
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, float_nodes: Sequence[str] = ()) -> ir.Model:
        self.calls.append(tuple(float_nodes))
        return _quantized(self.model, self.ranges, exclude=list(float_nodes))


def _quantized(model: ir.Model, ranges: dict[str, tuple[float, float]], **options: object) -> ir.Model:
    """``quantize_with_ranges``, with the ONNX checker on what it returns."""
    quantized = quantize_with_ranges(model, ranges, **options)  # type: ignore[arg-type]
    onnx.checker.check_model(ir.serde.serialize_model(quantized), full_check=True)
    return quantized


# --- sensitivity --------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel-weights", "per-tensor-weights"])
def test_node_fed_by_outliers_ranks_first(per_channel: bool) -> None:
    model, data = _outlier_model(), _outlier_data()
    quantized = _quantized(model, calibrate(model, data).ranges, per_channel=per_channel)

    errors = sensitivity(model, quantized, data)

    assert [e.node for e in errors][0] == "mm_outlier"
    assert {e.node for e in errors} == {"mm_clean", "mm_outlier", "add"}
    by_node = {e.node: e for e in errors}
    assert errors[0].introduced_db > by_node["mm_clean"].introduced_db + 20
    assert by_node["mm_clean"].sqnr_db > 30 and by_node["mm_clean"].cosine > 0.999
    assert by_node["mm_outlier"].cosine < 0.5
    introduced = [e.introduced_db for e in errors]
    assert introduced == sorted(introduced, reverse=True)


def test_sqnr_and_cosine_match_numpy() -> None:
    model, data = _chain_model(), _chain_data()
    quantized = _quantized(model, calibrate(model, data).ranges)

    (final,) = [e for e in sensitivity(model, quantized, data) if e.tensor == "y"]

    ref = np.concatenate([run_model(model, f)["y"] for f in data]).astype(np.float64).ravel()
    got = np.concatenate([run_model(quantized, f)["y"] for f in data]).astype(np.float64).ravel()
    assert final.sqnr_db == pytest.approx(10 * np.log10((ref @ ref) / ((ref - got) @ (ref - got))), rel=1e-6)
    assert final.cosine == pytest.approx(ref @ got / np.linalg.norm(ref) / np.linalg.norm(got), rel=1e-9)
    assert final.op == "MatMul" and final.node == "mm2"


def test_sensitivity_reports_progress_in_samples() -> None:
    model, data = _chain_model(), _chain_data()
    quantized = _quantized(model, calibrate(model, data).ranges)
    seen: list[int] = []

    sensitivity(model, quantized, data, on_batch=seen.append)

    assert seen == [64, 128, 192, 256]


def test_fused_node_is_not_charged_for_upstream_error() -> None:
    model, data = _chain_model(), _chain_data()
    quantized = _quantized(model, calibrate(model, data).ranges)

    errors = sensitivity(model, quantized, data)

    # 8-bit rounding of a layer costs a few dB; nothing in a clean MLP introduces 20.
    assert max(e.introduced_db for e in errors) < 20, errors
    # the Relu absorbed mm1 (its input 'h' is gone): the Relu's row names mm1 as fused into it
    relu = next(e for e in errors if e.node == "relu")
    assert relu.fused == ("mm1",)


# --- fallback -----------------------------------------------------------------------------


def _fallback(max_drop: float, max_evaluations: int) -> tuple[FallbackResult, _Emitter, float]:
    model, data = _outlier_model(), _outlier_data()
    emit = _Emitter(model, data)
    metric = agreement_metric(model, data)
    plain = metric(emit(()))
    ranked = [e.node for e in sensitivity(model, emit(()), data) if e.introduced_db > 0]
    emit.calls.clear()
    result = fallback(emit, ranked, metric, float_score=metric(model), max_drop=max_drop,
                      max_evaluations=max_evaluations)
    return result, emit, plain


def test_fallback_meets_a_budget_plain_int8_misses() -> None:
    result, emit, plain = _fallback(max_drop=0.02, max_evaluations=4)

    assert result.float_score == 1.0
    assert 1.0 - plain > 0.3  # plain int8 agrees on about half the samples
    assert result.drop <= 0.02
    assert result.float_nodes == ("mm_outlier",)
    assert len(result.steps) <= 4 and len(emit.calls) == len(result.steps)
    assert [s.float_nodes for s in result.steps] == [(), ("mm_outlier",)]
    # The returned model is the one scored: mm_outlier float (float weights), the rest int8.
    mm_outlier = next(n for n in result.model.graph if n.name == "mm_outlier")
    assert mm_outlier.inputs[1].name == "W2" and mm_outlier.inputs[1].dtype == ir.DataType.FLOAT
    assert "QuantizeLinear" in [n.op_type for n in result.model.graph]
    assert agreement_metric(_outlier_model(), _outlier_data())(result.model) == result.score


def test_fallback_returns_best_when_budget_cannot_be_met() -> None:
    result, _, _ = _fallback(max_drop=-0.5, max_evaluations=3)

    assert len(result.steps) <= 3
    best = max(result.steps, key=lambda s: s.score)
    assert (result.score, result.float_nodes) == (best.score, best.float_nodes)
    assert result.drop > -0.5


def test_fallback_is_done_when_int8_already_meets_the_budget() -> None:
    result, emit, _ = _fallback(max_drop=1.0, max_evaluations=4)

    assert result.float_nodes == () and emit.calls == [()]


class _Counted:
    """A stand-in quantizer and metric: the score drops 0.1 per missing node of the first 3."""

    def quantize(self, nodes: Sequence[str]) -> ir.Model:
        return tuple(nodes)  # type: ignore[return-value]

    def metric(self, model: ir.Model) -> float:
        return 1.0 - 0.1 * max(0, 3 - len(model))  # type: ignore[arg-type]


def test_fallback_doubles_then_bisects_to_the_fewest_nodes() -> None:
    counted = _Counted()
    nodes = [f"n{i}" for i in range(8)]

    result = fallback(counted.quantize, nodes, counted.metric, float_score=1.0, max_drop=0.0,
                      max_evaluations=10)

    assert [len(s.float_nodes) for s in result.steps] == [0, 1, 2, 4, 3]
    assert result.float_nodes == ("n0", "n1", "n2") and result.drop == 0.0


def test_fallback_stops_at_max_evaluations() -> None:
    counted = _Counted()

    result = fallback(counted.quantize, [f"n{i}" for i in range(8)], counted.metric, float_score=1.0,
                      max_drop=0.0, max_evaluations=4)

    assert len(result.steps) == 4
    assert result.float_nodes == ("n0", "n1", "n2", "n3")  # meets the budget, not yet minimal


def test_accuracy_metric_counts_correct_predictions() -> None:
    from edgeopt.quantization.analysis import accuracy_metric

    model = ir.from_onnx_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,3] x) => (float[N,3] y) { y = Identity(x) }
    """)
    batches = [{"x": np.eye(3, dtype=np.float32)}, {"x": np.eye(3, dtype=np.float32)[::-1].copy()}]
    labels = [np.array([0, 1, 2]), np.array([2, 0, 0])]  # second batch predicts [2, 1, 0]: 2 of 3
    assert accuracy_metric(batches, labels)(model) == 5 / 6
    with pytest.raises(ValueError, match="2 batches but 1 label arrays"):
        accuracy_metric(batches, labels[:1])


def test_fallback_starts_nothing_new_after_its_time_limit() -> None:
    counted = _Counted()

    def slow_metric(model: ir.Model) -> float:
        time.sleep(0.3)
        return counted.metric(model)

    started = time.monotonic()
    result = fallback(counted.quantize, [f"n{i}" for i in range(8)], slow_metric, float_score=1.0,
                      max_drop=0.0, max_evaluations=10, time_limit=0.5)

    assert [len(s.float_nodes) for s in result.steps] == [0, 1]  # the third would start after 0.6 s
    assert time.monotonic() - started < 1.5
    assert result.float_nodes == ("n0",) and result.score == max(s.score for s in result.steps)
