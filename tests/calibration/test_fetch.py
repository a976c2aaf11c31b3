"""Fetching activations within a byte budget: the same numbers through ONNX Runtime, in smaller groups."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.calibration import rounding
from edgeopt.calibration.fetch import estimated_bytes
from edgeopt.calibration.observers import make_observer_factory
from edgeopt.calibration.rounding import input_hessians, weight_layers
from edgeopt.calibration.stream import calibrate, stream_output_groups
from edgeopt.core.runtime import Feeds
from edgeopt.core.shapes import infer_shapes


def _cnn() -> ir.Model:
    """conv -> depthwise -> 1x1, a side 1x1 conv on the first activation, pool, Gemm: five weight layers
    whose inputs are x, r1, r2, r1 again (not next to the first) and the pooled features."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> TensorProto:
        return nh.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="depthwise", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "W3"], ["c3"], name="pointwise"),
        helper.make_node("Conv", ["r1", "W4"], ["c4"], name="side"),
        helper.make_node("Add", ["c3", "c4"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "W5"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [weight("W1", 8, 3, 3, 3), weight("W2", 8, 1, 3, 3), weight("W3", 4, 8, 1, 1), weight("W4", 4, 8, 1, 1),
         weight("W5", 5, 4)])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    infer_shapes(model)
    return model


def _data(batches: int = 3, rows: int = 4) -> list[Feeds]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((rows, 3, 16, 16)).astype(np.float32)} for _ in range(batches)]


ACTIVATION = 4 * 8 * 16 * 16 * 4
"""Bytes of r1 (and c1, c2, r2) for a batch of 4."""


def test_estimated_bytes_bind_symbolic_dims_to_the_feeds() -> None:
    model = _cnn()
    flat = next(v for node in model.graph for v in node.outputs if v.name == "f")
    assert flat.shape == ir.Shape(["N", 4])
    sizes = estimated_bytes(model, ["r1", "c3", "f"], _data()[0])
    assert sizes == {"r1": ACTIVATION, "c3": ACTIVATION // 2, "f": 4 * 4 * 4}
    flat.shape = None
    assert estimated_bytes(model, ["r1", "f"], _data()[0])["f"] == ACTIVATION  # unknown: the largest known


@pytest.mark.parametrize("budget", [1, ACTIVATION, 2 * ACTIVATION])
def test_groups_stay_within_the_budget_and_fetch_the_same_arrays(budget: int) -> None:
    model = _cnn()
    names = ["x", "c1", "r1", "c2", "r2", "c3", "c4", "s", "r1", "y"]
    work = model.clone()
    values = {v.name: v for node in work.graph for v in node.outputs}
    work.graph.outputs.extend(values[n] for n in dict.fromkeys(names) if n not in ("x", "y"))

    def fetched(max_bytes: int | None) -> list[list[tuple[range, dict[str, np.ndarray]]]]:
        per_batch: list[list[tuple[range, dict[str, np.ndarray]]]] = []
        for span, batch in stream_output_groups(work, names, _data(), model=model, max_bytes=max_bytes):
            if span.start == 0:
                per_batch.append([])
            per_batch[-1].append((span, {n: batch[n].copy() for n in names[span.start:span.stop]}))
        return per_batch

    whole, grouped = fetched(None), fetched(budget)
    assert len(whole) == len(grouped) == 3 and all(len(groups) == 1 for groups in whole)
    for (_, everything), groups in zip((g[0] for g in whole), grouped, strict=True):
        spans = [span for span, _ in groups]
        assert [i for span in spans for i in span] == list(range(len(names)))  # consecutive, in order
        assert len(groups) > 1
        for span, arrays in groups:
            fetched_bytes = sum(a.nbytes for n, a in arrays.items() if n != "x")  # x is a feed
            assert fetched_bytes <= budget or len(set(names[span.start:span.stop]) - {"x"}) == 1
            for name, array in arrays.items():
                np.testing.assert_array_equal(array, everything[name])


def test_hessians_do_not_depend_on_the_fetch_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each layer draws its rows in the same order however its input is fetched: the same ``H``."""
    monkeypatch.setattr(rounding, "ROWS_PER_BATCH", 300)  # 1024 positions a batch: rows are drawn at random
    model = _cnn()
    layers = weight_layers(model)
    assert [layer.input for layer in layers] == ["x", "r1", "r2", "r1", "f"]
    one_run = input_hessians(model, layers, _data(), max_bytes=None)
    for budget in (1, ACTIVATION, 3 * ACTIVATION):
        grouped = input_hessians(model, layers, _data(), max_bytes=budget)
        for layer in layers:
            np.testing.assert_allclose(grouped[layer.node], one_run[layer.node], rtol=1e-6, atol=0)
    assert one_run["depthwise"].shape == (8, 9, 9) and one_run["fc"].shape == (1, 4, 4)


def test_calibration_ranges_do_not_depend_on_the_fetch_budget() -> None:
    """Histogram-based ``auto`` candidates see every tensor whole, in as many groups as the budget makes."""
    model = _cnn()
    factory = make_observer_factory("auto")
    whole = calibrate(model, _data(), observer=factory, max_bytes=None)
    grouped = calibrate(model, _data(), observer=factory, max_bytes=ACTIVATION)
    assert whole.ranges.keys() == grouped.ranges.keys() and len(whole.ranges) == 11
    assert whole.ranges == grouped.ranges
    for name, observer in whole.observers.items():
        assert observer.candidates() == grouped.observers[name].candidates()  # type: ignore[attr-defined]
