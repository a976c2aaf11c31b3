"""Tests for edgeopt.core.measure: fidelity against a reference, and latency."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import pytest

from edgeopt.core.measure import Fidelity, fidelity, median_latency_ms
from edgeopt.core.runtime import create_session

# Reference logits for four samples (x is the sample index), and a run that differs
# from it only on sample 2, by (-sqrt 2, +sqrt 2), which flips that sample's argmax.
REFERENCE = np.array([[3.0, 1.0], [1.0, 3.0], [3.0, 1.0], [1.0, 3.0]])
PERTURBED = REFERENCE.copy()
PERTURBED[2] += [-math.sqrt(2), math.sqrt(2)]
LABELS = np.array([0, 1, 0, 0])
X = np.arange(4)


def _lookup(table: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    return lambda batch: table[batch]


def test_reference_against_itself() -> None:
    result = fidelity(_lookup(REFERENCE), _lookup(REFERENCE), X, LABELS)

    # argmax of REFERENCE is [0, 1, 0, 1]: 3 of the 4 labels
    assert result == Fidelity(accuracy=0.75, top1_agreement=1.0, max_abs_diff=0.0,
                              sqnr_db=math.inf)


def test_perturbed_run_known_values() -> None:
    result = fidelity(_lookup(PERTURBED), _lookup(REFERENCE), X, LABELS)

    # argmax of PERTURBED is [0, 1, 1, 1]: right on samples 0 and 1 only.
    assert result.accuracy == 0.5
    # agrees with the reference's [0, 1, 0, 1] everywhere but sample 2
    assert result.top1_agreement == 0.75
    assert result.max_abs_diff == pytest.approx(math.sqrt(2))
    # signal = 4 * (9 + 1) = 40, noise = 2 + 2 = 4 -> 10 * log10(10) = 10 dB
    assert result.sqnr_db == pytest.approx(10.0)


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_batching_does_not_change_results(batch_size: int) -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((50, 10))
    run = reference + 0.3 * rng.standard_normal((50, 10))
    labels = rng.integers(0, 10, 50)
    whole = fidelity(_lookup(run), _lookup(reference), np.arange(50), labels, batch_size=50)
    seen: list[int] = []

    def recording(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return run[batch]

    result = fidelity(recording, _lookup(reference), np.arange(50), labels, batch_size=batch_size)

    assert seen == [min(batch_size, 50 - s) for s in range(0, 50, batch_size)]
    assert result.accuracy == whole.accuracy
    assert result.top1_agreement == whole.top1_agreement
    assert 0.0 < whole.top1_agreement < 1.0  # the noise flips some predictions
    assert result.max_abs_diff == whole.max_abs_diff
    assert result.sqnr_db == pytest.approx(whole.sqnr_db, rel=1e-12)
    expected_sqnr = 10 * np.log10((reference**2).sum() / ((run - reference) ** 2).sum())
    assert whole.sqnr_db == pytest.approx(expected_sqnr, rel=1e-12)


def test_onnxruntime_model_against_numpy_reference() -> None:
    model = onnx.parser.parse_model("""
    <ir_version: 10, opset_import: ["" : 17]>
    linear (float[N, 4] x) => (float[N, 3] y) { y = MatMul(x, W) }
    """)
    weight = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    model.graph.initializer.append(onnx.numpy_helper.from_array(weight, "W"))
    session = create_session(model)
    x = np.random.default_rng(1).standard_normal((20, 4)).astype(np.float32)
    reference = x.astype(np.float64) @ weight.astype(np.float64)
    labels = reference.argmax(1)

    result = fidelity(lambda b: session.run(None, {"x": b})[0], lambda b: b.astype(np.float64)
                      @ weight.astype(np.float64), x, labels, batch_size=7)

    assert result.accuracy == 1.0 and result.top1_agreement == 1.0
    assert result.max_abs_diff < 1e-5
    assert result.sqnr_db > 100  # float32 rounding only


def test_median_latency_ms() -> None:
    calls = 0

    def sleepy() -> None:
        nonlocal calls
        calls += 1
        time.sleep(0.002)

    latency = median_latency_ms(sleepy, warmup=2, repeat=5)

    assert calls == 7
    assert 2.0 <= latency < 1000.0
