"""Tests for edgeopt.calibration.observers: streaming observers, factories and quantization parameters."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from edgeopt.calibration.observers import (
    OBSERVERS,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    Observer,
    check_factory,
    make_observer_factory,
    per_channel_weight_qparams,
    qparams_from_range,
)
from edgeopt.core.errors import CalibrationDataError, PassOptionError


def _feed(observer: Observer, data: np.ndarray, parts: int = 7) -> tuple[float, float]:
    for chunk in np.array_split(data, parts):
        observer.update(chunk)
    return observer.compute()


def _normal_with_outliers(n: int = 400_000, seed: int = 0) -> np.ndarray:
    data = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    data[[10, n // 2, n - 7]] = [40.0, -38.0, 35.0]  # three huge outliers among many samples
    return data


def test_minmax_exact_and_ignores_non_finite() -> None:
    data = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    data[5], data[7] = np.nan, np.inf
    assert _feed(MinMaxObserver(), data) == (np.nanmin(data[np.isfinite(data)]), data[np.isfinite(data)].max())


def test_moving_average_matches_numpy() -> None:
    batches = [np.random.default_rng(i).normal(i, 1 + i, size=(8, 5)).astype(np.float32) for i in range(6)]
    observer = MovingAverageMinMaxObserver(momentum=0.3)
    for batch in batches:
        observer.update(batch)
    low, high = float(batches[0].min()), float(batches[0].max())
    for batch in batches[1:]:
        low += 0.3 * (float(batch.min()) - low)
        high += 0.3 * (float(batch.max()) - high)
    assert observer.compute() == pytest.approx((low, high), rel=1e-12)


def test_no_data_is_an_error_and_all_zeros_is_a_zero_range() -> None:
    for observer in (MinMaxObserver(), MovingAverageMinMaxObserver(), HistogramObserver()):
        observer.update(np.array([np.nan], dtype=np.float32))
        with pytest.raises(CalibrationDataError, match="no finite values"):
            observer.compute()
    zeros = HistogramObserver(method="mse")
    zeros.update(np.zeros(10, np.float32))
    assert zeros.compute() == (0.0, 0.0)


@pytest.mark.parametrize("symmetric", [False, True])
def test_percentile_within_one_bin_of_numpy(symmetric: bool) -> None:
    data = np.random.default_rng(1).gamma(2.0, size=200_000).astype(np.float32) - 1.5
    observer = HistogramObserver(method="percentile", percentile=99.9, symmetric=symmetric)
    low, high = _feed(observer, data)
    if symmetric:
        expected = np.percentile(np.abs(data), 99.9)
        assert low == -high
    else:
        expected_low = np.percentile(data, 0.05)
        assert abs(low - expected_low) <= observer.width
        expected = np.percentile(data, 99.95)
    assert abs(high - expected) <= observer.width


def test_range_growth_matches_all_at_once() -> None:
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal(20_000).astype(np.float32) * scale for scale in (0.01, 0.5, 3.0, 40.0)]
    grown = HistogramObserver(method="percentile", percentile=99.0)
    for batch in batches:
        grown.update(batch)
        assert grown.hist.shape == (2048,)
    everything = np.concatenate(batches)
    assert grown.hist.sum() == everything.size  # nothing lost while merging bins
    once = HistogramObserver(method="percentile", percentile=99.0)
    once.update(everything)
    expected = np.percentile(everything, [0.5, 99.5])
    for got, single, want in zip(grown.compute(), once.compute(), expected, strict=True):
        assert abs(got - want) <= grown.width
        assert abs(got - single) <= grown.width


def test_histogram_memory_does_not_grow_with_samples() -> None:
    observer = HistogramObserver(method="entropy")
    rng = np.random.default_rng(3)
    for i in range(20):
        observer.update(rng.standard_normal(10_000).astype(np.float32) * (1 + i))
        assert observer.hist.nbytes == 2048 * 8
    assert observer.hist.sum() == 200_000
    assert {k: type(v) for k, v in vars(observer).items() if isinstance(v, np.ndarray)} == {"hist": np.ndarray}


@pytest.mark.parametrize("method", ["entropy", "mse"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_outliers_give_a_much_tighter_range_that_covers_the_bulk(method: str, symmetric: bool) -> None:
    data = _normal_with_outliers()
    low, high = _feed(HistogramObserver(method=method, symmetric=symmetric), data)  # type: ignore[arg-type]
    assert high - low < 0.6 * (data.max() - data.min())
    assert low < np.percentile(data, 0.5) and high > np.percentile(data, 99.5)


@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_keeps_about_the_full_range_of_uniform_data(symmetric: bool) -> None:
    data = np.random.default_rng(4).uniform(-1.0, 1.0, 200_000)
    low, high = _feed(HistogramObserver(method="mse", symmetric=symmetric), data)
    assert low == pytest.approx(-1.0, abs=0.02) and high == pytest.approx(1.0, abs=0.02)


def test_entropy_is_not_minmax_and_relu_zeros_do_not_matter() -> None:
    data = np.random.default_rng(5).laplace(size=300_000).astype(np.float32)
    relu = np.maximum(data, 0)
    low, high = _feed(HistogramObserver(method="entropy"), relu)
    assert low == 0.0 and np.percentile(relu, 99) < high < 0.9 * relu.max()


def test_mse_search_is_near_the_brute_force_optimum() -> None:
    data = _normal_with_outliers(200_000)
    observer = HistogramObserver(method="mse", symmetric=True)
    _, t = _feed(observer, data)

    def mse(threshold: float) -> float:
        step = threshold / 127
        return float(np.mean((np.clip(np.round(data / step), -127, 127) * step - data) ** 2))

    brute = min(np.linspace(1.0, 40.0, 400), key=mse)
    assert mse(t) <= 1.05 * mse(brute)


def test_histogram_options_are_checked() -> None:
    with pytest.raises(PassOptionError, match="did you mean 'entropy'"):
        HistogramObserver(method="entropi")  # type: ignore[arg-type]
    with pytest.raises(PassOptionError, match="bins must be an integer >= 512"):
        HistogramObserver(method="entropy", bins=128)
    with pytest.raises(PassOptionError, match="percentile must be"):
        HistogramObserver(percentile=0)
    with pytest.raises(PassOptionError, match="momentum"):
        MovingAverageMinMaxObserver(momentum=2.0)


def test_factories() -> None:
    assert set(OBSERVERS) == {"minmax", "moving-average", "percentile", "entropy", "mse", "auto"}
    assert all(isinstance(factory(), Observer) for factory in OBSERVERS.values())
    observer = make_observer_factory("percentile", percentile=99.0, bins=512)()
    assert isinstance(observer, HistogramObserver)
    assert (observer.method, observer.percentile, observer.bins) == ("percentile", 99.0, 512)
    assert make_observer_factory("minmax") is MinMaxObserver
    with pytest.raises(PassOptionError, match="unknown calibration method 'entropi' \\(did you mean 'entropy'"):
        make_observer_factory("entropi")
    with pytest.raises(PassOptionError, match="has no option 'percentil' \\(did you mean 'percentile'"):
        make_observer_factory("percentile", percentil=99.0)
    with pytest.raises(PassOptionError, match="has no option 'method'"):
        make_observer_factory("mse", method="entropy")
    with pytest.raises(PassOptionError, match="quant_bits"):
        make_observer_factory("mse", quant_bits=40)
    sixteen = make_observer_factory("entropy", quant_bits=16)()  # as quantize-static asks for 16-bit activations
    sixteen.update(np.linspace(-1, 1, 1000))
    assert -1.01 <= sixteen.compute()[0] < 0 < sixteen.compute()[1] <= 1.01


def test_check_factory_rejects_instances() -> None:
    assert check_factory(MinMaxObserver) is MinMaxObserver
    partial = functools.partial(HistogramObserver, method="mse")
    assert check_factory(partial) is partial
    with pytest.raises(PassOptionError, match=r"instance \(HistogramObserver\).*pass the class.*functools.partial"):
        check_factory(HistogramObserver())
    with pytest.raises(PassOptionError, match="must be a class or functools.partial"):
        check_factory("minmax")


def test_qparams_int8_symmetric_and_uint8_asymmetric_by_hand() -> None:
    q = qparams_from_range(-2.0, 1.27, dtype="int8", symmetric=True)
    assert q.scale == np.float32(2.0 / 127) and q.zero_point == 0
    assert q.scale.dtype == np.float32 and q.zero_point.dtype == np.int8 and q.dtype == "int8"
    q = qparams_from_range(-1.0, 3.0, dtype="uint8", symmetric=False)
    assert q.scale == np.float32(4.0 / 255) and q.zero_point == 64  # round(0 - (-1) / (4/255)) = round(63.75)
    assert q.zero_point.dtype == np.uint8
    q = qparams_from_range(0.5, 2.55, dtype="uint8", symmetric=False)  # widened to include 0
    assert q.scale == np.float32(0.01) and q.zero_point == 0
    q = qparams_from_range(-1.0, 1.0, dtype="uint8", symmetric=True)
    assert q.scale == np.float32(2.0 / 255) and q.zero_point == 128
    q = qparams_from_range(-3.0, 1.0, dtype="int16", symmetric=True)
    assert q.scale == np.float32(3.0 / 32767) and q.zero_point == 0 and q.zero_point.dtype == np.int16


def test_qparams_zero_range_and_bad_input() -> None:
    for dtype, symmetric, zero_point in [("int8", True, 0), ("uint8", False, 0), ("int8", False, -128)]:
        q = qparams_from_range(0.0, 0.0, dtype=dtype, symmetric=symmetric)  # type: ignore[arg-type]
        assert q.scale == 1.0 and q.zero_point == zero_point
    with pytest.raises(PassOptionError, match="unknown quantized dtype 'int4'.*did you mean"):
        qparams_from_range(-1, 1, dtype="int4", symmetric=True)  # type: ignore[arg-type]
    with pytest.raises(CalibrationDataError, match="not finite"):
        qparams_from_range(-np.inf, 1, dtype="int8", symmetric=True)


def test_per_channel_weight_qparams() -> None:
    w = np.random.default_rng(6).normal(size=(4, 3, 2, 2)).astype(np.float32)
    w[2] = 0.0
    q = per_channel_weight_qparams(w, axis=0)
    expected = np.abs(w).max(axis=(1, 2, 3)) / 127
    expected[2] = 1.0  # zero channel guarded
    np.testing.assert_allclose(q.scale, expected, rtol=1e-6)
    assert q.scale.shape == (4,) and q.zero_point.shape == (4,) and not q.zero_point.any()
    q = per_channel_weight_qparams(w, axis=-3)
    np.testing.assert_allclose(q.scale, np.abs(w).max(axis=(0, 2, 3)) / 127, rtol=1e-6)
    with pytest.raises(PassOptionError, match="axis 4 is out of range"):
        per_channel_weight_qparams(w, axis=4)
