"""Ranges chosen by the error at the consumers' outputs (calibration method ``auto``)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from edgeopt.calibration.observers import RangeCandidatesObserver, make_observer_factory, qparams_from_range
from edgeopt.calibration.range_choice import choose_ranges
from edgeopt.calibration.stream import calibrate
from edgeopt.core.runtime import create_session, run_session
from edgeopt.passes import QuantizeStaticPass

D = 32


def _two_layers(w2_outlier: float) -> ir.Model:
    """x -> MatMul(W1) -> h -> MatMul(W2) -> y. h has a long tail in its channel 0; W2 amplifies that
    channel by ``w2_outlier``, so whether clipping h's tail pays depends on its consumer."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32)
    w1[:, 0] *= 6  # channel 0 of h: rare large values
    w2 = (rng.standard_normal((D, D)) / np.sqrt(D)).astype(np.float32)
    w2[0, :] *= w2_outlier
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"], name="first"),
         helper.make_node("MatMul", ["h", "W2"], ["y"], name="second")], "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", D])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return model


def _feeds(seed: int, n: int = 8) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((64, D)).astype(np.float32)} for _ in range(n)]


def _consumer_error(model: ir.Model, feeds: list[dict[str, np.ndarray]], low: float, high: float) -> float:
    """numpy reference: relative squared error of y when h alone is fake-quantized to uint8 on [low, high]."""
    weights = {v.name: v.const_value.numpy() for v in model.graph.initializers.values()}  # type: ignore[union-attr]
    params = qparams_from_range(low, high, dtype="uint8", symmetric=False)
    scale, zero = float(params.scale), float(params.zero_point)
    error = signal = 0.0
    for f in feeds:
        h = f["x"].astype(np.float64) @ weights["W1"]
        hq = (np.clip(np.round(h / scale) + zero, 0, 255) - zero) * scale
        y, yq = h @ weights["W2"], hq @ weights["W2"]
        error += float(((yq - y) ** 2).sum())
        signal += float((y**2).sum())
    return error / signal


def test_the_choice_is_the_candidate_of_least_consumer_error_computed_in_numpy() -> None:
    for outlier in (1.0, 40.0):
        model = _two_layers(outlier)
        feeds = _feeds(1)
        result = calibrate(model, feeds, tensors=["h"], observer=RangeCandidatesObserver)
        observer = result.observers["h"]
        assert isinstance(observer, RangeCandidatesObserver)
        candidates = observer.candidates()
        assert set(candidates) == {"minmax", "percentile", "mse"}
        low, high = candidates["minmax"]
        h = np.concatenate([f["x"] @ model.graph.initializers["W1"].const_value.numpy() for f in feeds])  # type: ignore[union-attr]
        assert np.isclose(low, h.min()) and np.isclose(high, h.max())
        choice = choose_ranges(model, {"h": candidates}, feeds, consumer_types={"MatMul"})
        reference = {kind: _consumer_error(model, feeds, *r) for kind, r in candidates.items()}
        assert choice.chosen["h"] == min(reference, key=reference.__getitem__), (outlier, reference)
        assert choice.ranges["h"] == candidates[choice.chosen["h"]]


def test_auto_quantizes_better_than_each_single_method_on_held_out_data() -> None:
    """Two tensors that want different methods: h (its tail amplified by W2) and the input x (t-distributed)."""
    model = _two_layers(40.0)
    calib, held_out = _feeds(2, n=32), _feeds(3, n=8)
    reference = create_session(model)
    sqnr = {}
    for method in ("minmax", "mse", "auto"):
        quantized = QuantizeStaticPass(calibration=calib, method=method, rounding="nearest", cpu=None)(
            model.clone()).model
        assert {"x", "h"} <= {n.inputs[0].name for n in quantized.graph if n.op_type == "QuantizeLinear"}
        session = create_session(quantized)
        signal = noise = 0.0
        for f in held_out:
            ref, got = run_session(reference, f)["y"], run_session(session, f)["y"]
            signal += float((ref**2).sum())
            noise += float(((ref - got) ** 2).sum())
        sqnr[method] = 10 * np.log10(signal / noise)
    assert sqnr["auto"] >= max(sqnr["minmax"], sqnr["mse"]) - 0.1, sqnr


def test_auto_is_a_known_method_with_the_histogram_options() -> None:
    factory = make_observer_factory("auto", symmetric=True, quant_bits=8)
    observer = factory()
    observer.update(np.array([-3.0, 1.0, 2.0], np.float32))
    assert observer.compute() == (-3.0, 3.0)  # symmetric MinMax
