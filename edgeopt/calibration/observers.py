"""Calibration observers: streaming statistics that become a ``(low, high)`` range.

An observer sees one tensor batch by batch (``update``) and turns what it kept
into a clipping range (``compute``); :func:`qparams_from_range` then makes scale
and zero point. Observers keep O(1) or O(bins) state, never the activations
(ONNX Runtime's percentile calibrator keeps them all and runs out of memory).
Configs hold observer *factories* (a class or ``functools.partial``), so that
each tensor gets a fresh observer; :func:`check_factory` rejects instances.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np

from edgeopt.core.errors import CalibrationDataError, PassOptionError

HistogramMethod = Literal["percentile", "entropy", "mse"]
QuantDtype = Literal["int8", "uint8", "int16", "uint16"]


@runtime_checkable
class Observer(Protocol):
    """Collects statistics of one tensor and computes its calibrated range."""

    def update(self, x: np.ndarray) -> None: ...

    def compute(self) -> tuple[float, float]: ...


class MinMaxObserver:
    """The smallest and largest value seen (NaN and infinities are ignored).

    It needs only each batch's finite extent, so :func:`edgeopt.calibration.stream.calibrate`
    computes that inside the ONNX Runtime graph (ReduceMin/ReduceMax) and calls
    :meth:`update_extent` instead of fetching the whole tensor.
    """

    def __init__(self) -> None:
        self.low, self.high = math.inf, -math.inf

    def update(self, x: np.ndarray) -> None:
        if (extent := _extent(x)) is not None:
            self.update_extent(extent[1], extent[2])

    def update_extent(self, low: float, high: float) -> None:
        """One batch's finite minimum and maximum."""
        self.low, self.high = min(self.low, low), max(self.high, high)

    def compute(self) -> tuple[float, float]:
        if self.low > self.high:
            raise CalibrationDataError(f"{type(self).__name__} saw no finite values; it has no range.")
        return self.low, self.high


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of each batch's min and max.

    The first batch sets the range; each later one moves it by ``momentum`` times
    the difference (ORT's ``averaging_constant``; PyTorch's observer of this name).
    """

    def __init__(self, *, momentum: float = 0.01) -> None:
        _require(_is_number(momentum) and 0 < momentum <= 1, "momentum", momentum, "a number in (0, 1]")
        super().__init__()
        self.momentum = float(momentum)

    def update_extent(self, low: float, high: float) -> None:
        if self.low > self.high:  # the first batch
            self.low, self.high = low, high
        else:
            self.low += self.momentum * (low - self.low)
            self.high += self.momentum * (high - self.high)


class HistogramObserver:
    """A histogram with a fixed number of bins whose range grows with the data.

    Bins lie on the grid ``i * width``: 0 is always an edge and inside the window.
    When a batch falls outside the window, ``width`` grows by the smallest integer
    factor that fits everything and old bins merge exactly into new ones, so memory
    is O(bins) however many samples arrive (resolution drops at most to what one
    batch's extent at ``bins`` bins gives). With ``symmetric`` the histogram is of
    ``|x|`` and the range is ``(-t, t)``.

    Args:
        bins: Number of histogram bins.
        method: ``percentile`` keeps ``percentile`` % of the values, cutting half
            of the rest from each tail (of ``|x|`` when symmetric). ``entropy`` is
            TensorRT's KL-divergence threshold search. ``mse`` minimizes the
            expected squared error (rounding plus clipping) of the quantizer.
        percentile: Percentage of values inside the range, for ``percentile``.
        symmetric: Calibrate a symmetric range (for int8 with zero point 0).
        quant_bits: Bits of the target quantizer, for ``entropy`` and ``mse``.
    """

    def __init__(self, *, bins: int = 2048, method: HistogramMethod = "percentile", percentile: float = 99.999,
                 symmetric: bool = False, quant_bits: int = 8) -> None:
        methods = get_args(HistogramMethod)
        _require(method in methods, "method", method, f"one of {', '.join(methods)}{_suggest(str(method), methods)}")
        _require(_is_number(quant_bits, integer=True) and 2 <= quant_bits <= 16, "quant_bits", quant_bits,
                 "an integer in [2, 16]")
        levels = 2 ** (quant_bits - 1) if symmetric else 2**quant_bits
        least = 2 * min(levels, 256) if method == "entropy" else 16  # entropy merges >= `levels` bins into `levels`
        _require(_is_number(bins, integer=True) and bins >= least, "bins", bins,
                 f"an integer >= {least} for {method} at {quant_bits} bits")
        _require(_is_number(percentile) and 0 < percentile <= 100, "percentile", percentile, "in (0, 100]")
        self.bins, self.method, self.percentile = bins, method, float(percentile)
        self.symmetric, self.quant_bits, self.levels = bool(symmetric), quant_bits, levels
        # Above 8 bits KL can't merge `levels` groups out of `bins` bins; merging pairs
        # leaves mostly the clipping term, which is what matters at that precision.
        self.kl_levels = min(levels, bins // 2)
        self.hist = np.zeros(bins, dtype=np.float64)
        self.width = 0.0  # bin width; 0 until a nonzero value arrives
        self.start = 0  # grid index of the first bin
        self.zeros = 0  # exact zeros, not in `hist`

    @property
    def edges(self) -> np.ndarray:
        return (self.start + np.arange(self.bins + 1)) * self.width

    def update(self, x: np.ndarray) -> None:
        extent = _extent(np.abs(x) if self.symmetric else x)
        if extent is None:
            return
        self._saw(extent[1], extent[2])
        x, low, high = extent[0], min(extent[1], 0.0), max(extent[2], 0.0)
        zeros = x.size - int(np.count_nonzero(x))
        self.zeros += zeros
        if low == high:
            return
        if self.width == 0.0:  # grid bin 0, [0, width), must lie inside the window
            self.width = (high - low) / (self.bins - 2)
            self.start = max(math.floor(low / self.width), 1 - self.bins)
        while low < self.start * self.width or high > (self.start + self.bins) * self.width:
            self._grow(low, high)
        window = (self.start * self.width, (self.start + self.bins) * self.width)
        counts = np.histogram(x, self.bins, range=window)[0]
        if zeros:  # exact zeros are kept apart: the quantizer represents them without error
            counts -= zeros * np.histogram(np.zeros(1), self.bins, range=window)[0]
        self.hist += counts

    def _saw(self, low: float, high: float) -> None:
        """A batch's exact finite extent (of ``|x|`` when symmetric), for subclasses that keep it."""

    def _grow(self, low: float, high: float) -> None:
        a = min(self.start, math.floor(low / self.width))  # grid bin indices to cover
        b = max(self.start + self.bins - 1, math.floor(high / self.width))
        k = max(2, -(-(b - a + 1) // self.bins))
        while b // k - a // k + 1 > self.bins:
            k += 1
        index = np.arange(self.start, self.start + self.bins) // k - a // k
        self.hist = np.bincount(index, weights=self.hist, minlength=self.bins).astype(np.float64)
        self.start, self.width = a // k, self.width * k

    def compute(self) -> tuple[float, float]:
        """The range by ``method``; entropy and mse leave exact zeros out, as they quantize exactly."""
        if self.width == 0.0:
            if self.zeros:
                return 0.0, 0.0
            raise CalibrationDataError("HistogramObserver saw no finite values; it has no range.")
        hist, edges = self.hist, self.edges
        if self.method == "percentile":
            if self.symmetric:
                high = self._quantile(self.percentile / 100)
                return -high, high
            cut = (100 - self.percentile) / 200
            return self._quantile(cut), self._quantile(1 - cut)
        if self.method == "entropy":
            def cost(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
                return np.array([_kl(hist, i, j, self.kl_levels) for i, j in zip(lo, hi, strict=True)])
        else:  # symmetric: the grid is k * t / (levels - 1) on [-t, t]; else levels - 1 steps span the range
            steps = 2 * (self.levels - 1) if self.symmetric else self.levels - 1

            def cost(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
                return _mse(hist, edges, lo, hi, -edges[hi] if self.symmetric else edges[lo], edges[hi], steps)
        a, b = self._search(hist, cost, min_bins=self.kl_levels if self.method == "entropy" else 1)
        return (-float(edges[b]), float(edges[b])) if self.symmetric else (float(edges[a]), float(edges[b]))

    def _quantile(self, q: float) -> float:
        """The value below which a fraction ``q`` of the data lies (uniform within a bin; zeros at 0)."""
        zero, edges = -self.start, self.edges
        mass = np.insert(self.hist, zero, self.zeros)  # exact zeros: a bin of width 0 at edge `zero`
        left = np.insert(edges[:-1], zero, 0.0)
        width = np.insert(np.full(self.bins, self.width), zero, 0.0)
        cdf = np.cumsum(mass)
        target = min(max(q, 0.0), 1.0) * cdf[-1]
        i = int(np.searchsorted(cdf, target)) if target > 0 else int(np.flatnonzero(mass)[0])
        return float(left[i] + (target - cdf[i] + mass[i]) / mass[i] * width[i])

    def _search(self, hist: np.ndarray, cost: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                min_bins: int) -> tuple[int, int]:
        """Edge indices ``a <= zero <= b``, at least ``min_bins`` apart, of least ``cost``.

        Two-sided: shrink both ends in proportion first, then move each end alone.
        """
        nonzero, zero = np.flatnonzero(hist), -self.start
        lowest, highest = min(int(nonzero[0]), zero), max(int(nonzero[-1]) + 1, zero)
        a, b = lowest, highest
        if not self.symmetric and lowest < zero < highest and highest - lowest > min_bins:
            widths = np.arange(min_bins, highest - lowest + 1)
            starts = zero - np.round(widths * ((zero - lowest) / (highest - lowest))).astype(np.int64)
            width = _argmin(lambda n: cost(starts[n - min_bins], starts[n - min_bins] + n), widths)
            a, b = int(starts[width - min_bins]), int(starts[width - min_bins]) + width
        highs = np.arange(max(zero, a + min_bins), highest + 1)
        if highs.size:
            b = _argmin(lambda h: cost(np.full_like(h, a), h), highs)
        lows = np.arange(lowest, min(zero, b - min_bins) + 1)
        if lows.size and not self.symmetric:
            a = _argmin(lambda lo: cost(lo, np.full_like(lo, b)), lows)
        return a, b


CANDIDATE_PERCENTILE = 99.99


class RangeCandidatesObserver(HistogramObserver):
    """A histogram observer that also keeps the exact extent; its range is MinMax's.

    :meth:`candidates` gives the ranges :func:`edgeopt.calibration.range_choice.choose_ranges` scores
    (calibration method ``auto``).
    """

    def __init__(self, *, bins: int = 2048, symmetric: bool = False, quant_bits: int = 8) -> None:
        super().__init__(bins=bins, method="mse", symmetric=symmetric, quant_bits=quant_bits)
        self.low, self.high = math.inf, -math.inf

    def _saw(self, low: float, high: float) -> None:
        self.low, self.high = min(self.low, low), max(self.high, high)

    def compute(self) -> tuple[float, float]:
        if self.low > self.high:
            return super().compute()  # raises: no finite values
        if self.symmetric:  # the extent of |x|
            return -self.high, self.high
        return self.low, self.high

    def candidates(self) -> dict[str, tuple[float, float]]:
        """``minmax``, ``percentile`` and ``mse`` ranges (duplicates of MinMax left out)."""
        found = {"minmax": self.compute()}
        if self.width == 0.0:
            return found
        percentile = self.percentile
        self.method, self.percentile = "percentile", CANDIDATE_PERCENTILE
        found["percentile"] = super().compute()
        self.method, self.percentile = "mse", percentile
        found["mse"] = super().compute()
        low, high = found["minmax"]
        return {name: r for name, r in found.items()
                if name == "minmax" or not (math.isclose(r[0], low) and math.isclose(r[1], high))}


def _extent(x: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """Finite values of ``x`` (flat, float32 or wider) with their min and max; None if none."""
    x = np.asarray(x).ravel()
    x = x.astype(np.float32) if x.dtype.kind != "f" or x.dtype.itemsize < 4 else x
    if x.size and not (math.isfinite(float(x.min())) and math.isfinite(float(x.max()))):  # NaN, inf reach them
        x = x[np.isfinite(x)]
    return (x, float(x.min()), float(x.max())) if x.size else None


def _argmin(cost: Callable[[np.ndarray], np.ndarray], candidates: np.ndarray, coarse: int = 128) -> int:
    """Candidate of least cost: a strided pass, then every candidate around the best one."""
    stride = max(1, math.ceil(candidates.size / coarse))
    best = int(np.argmin(cost(candidates[::stride]))) * stride
    near = candidates[max(0, best - stride + 1): best + stride]
    return int(near[np.argmin(cost(near))])


def _kl(hist: np.ndarray, a: int, b: int, levels: int) -> float:
    """TensorRT's KL(P || Q): P is ``hist[a:b]`` with the tails added to its end bins; Q merges
    ``hist[a:b]`` into ``levels`` groups and spreads each evenly over P's nonzero bins."""
    sliced, starts = hist[a:b], np.arange(levels) * (b - a) // levels
    p = sliced.copy()
    p[0], p[-1] = p[0] + hist[:a].sum(), p[-1] + hist[b:].sum()
    nonzero = p > 0
    counts, sums = np.add.reduceat(nonzero.astype(np.float64), starts), np.add.reduceat(sliced, starts)
    per_bin = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    q = np.repeat(per_bin, np.diff(np.append(starts, b - a)))[nonzero]
    if q.sum() <= 0:
        return math.inf
    p, q = p[nonzero] / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / np.maximum(q, 1e-12))))


def _mse(hist: np.ndarray, edges: np.ndarray, a: np.ndarray, b: np.ndarray, low: np.ndarray, high: np.ndarray,
         steps: int) -> np.ndarray:
    """Expected squared error of a uniform quantizer for each candidate range ``[low, high]``.

    Bins ``< a`` clip to ``low`` and bins ``>= b`` to ``high`` (prefix sums of moments);
    bins in between round to the grid ``k * step`` (0 is exact), integrated exactly
    with the density uniform within each bin.
    """
    width = edges[1] - edges[0]
    centers = (edges[:-1] + edges[1:]) / 2
    moments = np.zeros((3, hist.size + 1))
    np.cumsum([hist, hist * centers, hist * centers**2], axis=1, out=moments[:, 1:])
    below, above = moments[:, a], moments[:, -1:] - moments[:, b]
    clipped = (below[0] * low**2 - 2 * low * below[1] + below[2] + above[0] * high**2 - 2 * high * above[1]
               + above[2] + (below[0] + above[0]) * width**2 / 12)
    used = np.flatnonzero(hist)
    first, last = used[0], used[-1] + 1
    step = ((high - low) / steps)[:, None]
    error = np.zeros((a.size, last - first + 1))
    np.cumsum(np.diff(step**3 * _rounding(edges[first:last + 1] / step), axis=1) * (hist[first:last] / width),
              axis=1, out=error[:, 1:])
    rows = np.arange(a.size)
    inside = error[rows, np.clip(b, first, last) - first] - error[rows, np.clip(a, first, last) - first]
    return np.asarray(clipped + inside)


def _rounding(u: np.ndarray) -> np.ndarray:
    """Antiderivative of ``(u - round(u))**2``, zero at -1/2."""
    k = np.floor(u + 0.5)
    r = u - k
    return np.asarray(k / 12 + (r * r * r + 0.125) / 3)  # r * r * r: much faster than r**3


OBSERVERS: dict[str, Callable[[], Observer]] = {
    "minmax": MinMaxObserver,
    "moving-average": MovingAverageMinMaxObserver,
    "percentile": functools.partial(HistogramObserver, method="percentile"),
    "entropy": functools.partial(HistogramObserver, method="entropy"),
    "mse": functools.partial(HistogramObserver, method="mse"),
    "auto": RangeCandidatesObserver,
}
"""Calibration method name -> observer factory."""


def make_observer_factory(method: str, /, **options: Any) -> Callable[[], Observer]:
    """The factory for ``method`` (a key of :data:`OBSERVERS`) with ``options`` bound.

    Raises:
        PassOptionError: an unknown method or option, or an invalid option value.
    """
    base = OBSERVERS.get(method)
    if base is None:
        raise PassOptionError(f"unknown calibration method {method!r}{_suggest(method, OBSERVERS)}. "
                              f"Known methods: {', '.join(OBSERVERS)}.")
    if not options:
        return base
    cls, fixed = (base.func, base.keywords) if isinstance(base, functools.partial) else (base, {})
    known = [p.name for p in inspect.signature(cls).parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in fixed]
    for key in options:
        if key not in known:
            raise PassOptionError(f"calibration method {method!r} has no option {key!r}{_suggest(key, known)}. "
                                  f"Its options: {', '.join(known) or 'none'}.")
    factory = functools.partial(base, **options)
    factory()  # checks the values now rather than at the first tensor
    return factory


def check_factory(obj: object) -> Callable[[], Observer]:
    """Return ``obj`` if it can make observers; reject observer instances and non-callables."""
    if not isinstance(obj, type) and isinstance(obj, Observer):
        name = type(obj).__name__
        raise PassOptionError(
            f"got an observer instance ({name}) where a factory is expected: pass the class ({name}) or "
            f"functools.partial({name}, ...) instead, so that every tensor gets its own observer.")
    if not callable(obj):
        raise PassOptionError(f"observer factory must be a class or functools.partial, got {type(obj).__name__}.")
    return obj


def _suggest(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=2, cutoff=0.5)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _is_number(value: object, *, integer: bool = False) -> bool:
    return not isinstance(value, bool) and isinstance(value, int if integer else int | float)


def _require(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise PassOptionError(f"observer option {name} must be {expected}, got {value!r}.")


@dataclass(frozen=True, eq=False)  # array fields: a generated __eq__ would be ambiguous
class QuantParams:
    """Scale and zero point, per tensor (0-d arrays) or per channel (1-d)."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: QuantDtype


_QRANGE: dict[str, tuple[int, int, type[np.integer]]] = {
    "int8": (-128, 127, np.int8), "uint8": (0, 255, np.uint8),
    "int16": (-32768, 32767, np.int16), "uint16": (0, 65535, np.uint16),
}


def qparams_from_range(low: float, high: float, *, dtype: QuantDtype, symmetric: bool) -> QuantParams:
    """Affine parameters for ``[low, high]`` widened to include 0 (a zero range gets scale 1).

    As in ONNX Runtime, symmetric signed types use the restricted range (int8: scale
    ``max|x| / 127``, zero point 0) and symmetric unsigned ones center the zero point
    (uint8: 128); asymmetric ones map ``[low, high]`` onto the full integer range.
    """
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise CalibrationDataError(f"range ({low}, {high}) is not finite; no quantization parameters for it.")
    return QuantParams(*_affine(np.array(low), np.array(high), dtype, symmetric), dtype)


def per_channel_weight_qparams(w: np.ndarray, axis: int, dtype: QuantDtype = "int8") -> QuantParams:
    """Symmetric parameters for each slice of ``w`` along ``axis`` (int8: ``max|w_c| / 127``)."""
    w = np.asarray(w)
    if not -w.ndim <= axis < w.ndim:
        raise PassOptionError(f"axis {axis} is out of range for a weight of rank {w.ndim}.")
    others = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    absmax = np.abs(w).max(axis=others).astype(np.float64) if w.size else np.zeros(w.shape[axis])
    if not np.isfinite(absmax).all():
        raise CalibrationDataError("weight has non-finite values; no quantization parameters for it.")
    return QuantParams(*_affine(-absmax, absmax, dtype, True), dtype)


def _affine(low: np.ndarray, high: np.ndarray, dtype: str, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    if dtype not in _QRANGE:
        raise PassOptionError(f"unknown quantized dtype {dtype!r}{_suggest(dtype, _QRANGE)}; "
                              f"known: {', '.join(_QRANGE)}.")
    qmin, qmax, np_type = _QRANGE[dtype]
    if symmetric:
        high = np.maximum(-low, high)
        low, qmin = -high, (-qmax if qmin < 0 else qmin)
    scale = (high - low) / (qmax - qmin)
    scale = np.where(scale < np.finfo(np.float32).tiny, 1.0, scale)
    if symmetric:
        zero_point = np.full(np.shape(scale), (qmin + qmax + 1) // 2)
    else:
        zero_point = np.clip(np.round(qmin - low / scale), qmin, qmax)
    return scale.astype(np.float32), zero_point.astype(np_type)
