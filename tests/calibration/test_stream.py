"""Tests for edgeopt.calibration.stream: streaming calibration in ONNX Runtime against numpy."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import pytest

from edgeopt.calibration.observers import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    make_observer_factory,
)
from edgeopt.calibration.stream import calibrate
from edgeopt.core.errors import CalibrationDataError, PassOptionError
from edgeopt.core.runtime import Feeds

RELU = """
<ir_version: 10, opset_import: ["" : 18]>
relu (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }
"""

MUL = """
<ir_version: 10, opset_import: ["" : 18]>
mul (float[N, 4] x) => (float[N, 4] y)
<float c = {2.0}>
{ y = Mul(x, c) }
"""

THREE_NODES = """
<ir_version: 10, opset_import: ["" : 18]>
three (float[N, 4] x) => (float[N, 4] y)
<float[4] c = {1.0, -2.0, 0.5, 3.0}>
{
    a = Mul(x, c)
    b = Relu(a)
    y = Add(b, x)
}
"""

MIXED_TYPES = """
<ir_version: 10, opset_import: ["" : 18]>
mixed (float[N, 4] x) => (float16[N, 4] r, int64[2] s)
{
    h = Cast<to = 10>(x)
    r = Relu(h)
    s = Shape(r)
}
"""

C = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)


def _batches(data: np.ndarray, sizes: list[int]) -> list[Feeds]:
    assert sum(sizes) == len(data)
    return [{"x": part} for part in np.split(data, np.cumsum(sizes)[:-1])]


def _data(rows: int = 600, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)


def _recording(
    factory: functools.partial[HistogramObserver],
) -> tuple[list[HistogramObserver], Callable[[], HistogramObserver]]:
    made: list[HistogramObserver] = []

    def make() -> HistogramObserver:
        made.append(factory())
        return made[-1]

    return made, make


def test_minmax_matches_numpy_on_all_data() -> None:
    data = _data()
    model = ir.from_onnx_text(RELU)
    result = calibrate(model, _batches(data, [100, 250, 50, 200]))
    assert result.ranges == {"x": (data.min(), data.max()), "y": (0.0, data.max())}
    assert (result.samples, result.batches) == (600, 4) and result.seconds > 0
    assert len(model.graph.outputs) == 1  # the caller's model is untouched


def test_moving_average_matches_numpy() -> None:
    data = _data()
    batches = _batches(data, [100, 250, 50, 200])
    result = calibrate(ir.from_onnx_text(MUL), batches, observer=functools.partial(MovingAverageMinMaxObserver,
                                                                                   momentum=0.25))
    low, high = float(2 * batches[0]["x"].min()), float(2 * batches[0]["x"].max())
    for batch in batches[1:]:
        low += 0.25 * (2 * float(batch["x"].min()) - low)
        high += 0.25 * (2 * float(batch["x"].max()) - high)
    assert result.ranges["y"] == pytest.approx((low, high), rel=1e-6)
    assert set(result.ranges) == {"x", "y"}  # the initializer c is not calibrated


def test_percentile_within_one_bin_of_numpy() -> None:
    data = np.random.default_rng(1).standard_t(3, size=(50_000, 4)).astype(np.float32)
    made, factory = _recording(functools.partial(HistogramObserver, method="percentile", percentile=99.9))
    result = calibrate(ir.from_onnx_text(MUL), _batches(data, [10_000] * 5), observer=factory)
    widths = {id(o): o.width for o in made}
    assert len(widths) == 2
    for name, values in [("x", data), ("y", 2 * data)]:
        low, high = result.ranges[name]
        width = max(widths.values())
        assert abs(low - np.percentile(values, 0.05)) <= width
        assert abs(high - np.percentile(values, 99.95)) <= width


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_entropy_and_mse_ignore_a_few_huge_outliers(method: str) -> None:
    data = _data(100_000, seed=2)
    data[[5, 50_000, 99_000], [0, 1, 2]] = [40.0, -38.0, 35.0]
    result = calibrate(ir.from_onnx_text(MUL), _batches(data, [25_000] * 4), observer=make_observer_factory(method))
    for name, values in [("x", data), ("y", 2 * data)]:
        low, high = result.ranges[name]
        assert high - low < 0.6 * (values.max() - values.min())
        assert low < np.percentile(values, 0.5) and high > np.percentile(values, 99.5)


def test_mse_keeps_the_full_range_of_uniform_data() -> None:
    data = np.random.default_rng(3).uniform(-1, 1, size=(50_000, 4)).astype(np.float32)
    result = calibrate(ir.from_onnx_text(RELU), _batches(data, [20_000, 30_000]), observer=make_observer_factory("mse"))
    assert result.ranges["x"] == pytest.approx((-1.0, 1.0), abs=0.02)
    assert result.ranges["y"] == pytest.approx((0.0, 1.0), abs=0.02)


def test_all_tensors_of_a_three_node_model() -> None:
    data = _data()
    result = calibrate(ir.from_onnx_text(THREE_NODES), _batches(data, [300, 300]))
    a = data * C
    expected = {"x": data, "a": a, "b": np.maximum(a, 0), "y": np.maximum(a, 0) + data}
    assert list(result.ranges) == list(expected)
    for name, values in expected.items():
        assert result.ranges[name] == pytest.approx((values.min(), values.max()), rel=1e-6), name


def test_float16_calibrated_other_types_skipped() -> None:
    data = _data()
    result = calibrate(ir.from_onnx_text(MIXED_TYPES), _batches(data, [600]))
    assert set(result.ranges) == {"x", "h", "r"}
    assert result.ranges["r"] == pytest.approx((0.0, data.max()), rel=1e-3)  # float16 rounding


def test_named_tensors(caplog: pytest.LogCaptureFixture) -> None:
    data = _data()
    model = ir.from_onnx_text(MIXED_TYPES)
    with caplog.at_level(logging.WARNING, logger="edgeopt.calibration.stream"):
        result = calibrate(model, _batches(data, [600]), tensors=["r", "s"])
    assert list(result.ranges) == ["r"]
    assert "skipping 's'" in caplog.text
    result = calibrate(ir.from_onnx_text(THREE_NODES), _batches(data, [600]), tensors=["c", "y"])
    assert result.ranges["c"] == (-2.0, 3.0)
    with pytest.raises(CalibrationDataError, match="no tensor named 'bb'.*did you mean 'b'"):
        calibrate(ir.from_onnx_text(THREE_NODES), _batches(data, [600]), tensors=["bb"])


def test_on_batch_gets_cumulative_samples() -> None:
    seen: list[int] = []
    result = calibrate(ir.from_onnx_text(RELU), _batches(_data(12), [4, 3, 5]), on_batch=seen.append)
    assert seen == [4, 7, 12] and result.samples == 12 and result.batches == 3


def test_errors() -> None:
    model = ir.from_onnx_text(RELU)
    with pytest.raises(PassOptionError, match="observer instance.*pass the class"):
        calibrate(model, _batches(_data(4), [4]), observer=MinMaxObserver())  # type: ignore[arg-type]
    with pytest.raises(CalibrationDataError, match="no batches"):
        calibrate(model, [])
    with pytest.raises(CalibrationDataError, match="no array for input\\(s\\) 'x'; it has 'z'"):
        calibrate(model, [{"z": _data(4)}])
    with pytest.raises(CalibrationDataError, match="batch 1: ONNX Runtime failed"):
        calibrate(model, [{"x": _data(4)}, {"x": np.zeros((2, 4), dtype=np.int64)}])


LOG = """
<ir_version: 10, opset_import: ["" : 18]>
log (float[N, 4] x) => (float[N, 4] y)
<float c = {2.0}>
{
    a = Log(x)
    y = Mul(a, c)
}
"""


def test_minmax_extents_in_graph_equal_fetched_extents_and_skip_nonfinite() -> None:
    """ReduceMin/Max in the graph give the same ranges as fetching whole tensors; a batch with
    -inf/NaN (log of 0 and of negatives) falls back to the whole tensor, whose finite values count."""
    rng = np.random.default_rng(3)
    clean = rng.uniform(0.5, 4.0, size=(40, 4)).astype(np.float32)
    dirty = clean.copy()
    dirty[0, 0], dirty[1, 1] = 0.0, -1.0  # log: -inf and NaN
    batches = [{"x": clean[:20]}, {"x": dirty[20:]}, {"x": dirty[:20]}]
    model = ir.from_onnx_text(LOG)
    in_graph = calibrate(model, batches).ranges
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(np.concatenate([clean, dirty[20:], dirty[:20]]))
    finite = logs[np.isfinite(logs)]
    assert in_graph["a"] == pytest.approx((finite.min(), finite.max()), rel=1e-6)
    assert in_graph["y"] == pytest.approx((2 * finite.min(), 2 * finite.max()), rel=1e-6)

    class WholeTensors:  # not a MinMaxObserver: gets whole tensors, the path the extents must agree with
        def __init__(self) -> None:
            self.inner = MinMaxObserver()

        def update(self, x: np.ndarray) -> None:
            self.inner.update(x)

        def compute(self) -> tuple[float, float]:
            return self.inner.compute()

    assert calibrate(model, batches, observer=WholeTensors).ranges == in_graph
    assert len(model.graph) == 2  # the caller's model is untouched


def test_minmax_in_graph_handles_an_empty_tensor() -> None:
    data = _data(8)
    result = calibrate(ir.from_onnx_text(RELU), [{"x": data[:0]}, {"x": data}])
    assert result.ranges["y"] == (0.0, data.max())
