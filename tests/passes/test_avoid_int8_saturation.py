"""avoid-int8-saturation: int8 weights stored so that x86 CPUs without VNNI compute what the graph means.

Each test holds on every CPU. The kernel path (a default ONNX Runtime session) of a
model built for ``x86-avx2`` must equal its QDQ simulation (graph optimizations off)
whatever CPU runs it; the same model built for ``x86-vnni`` must differ from it by
many steps where this CPU's kernels saturate (``ort_u8s8_saturates()``), and equal
it where they do not: one of the two branches runs, and it asserts something.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from edgeopt.core.cpu import ort_u8s8_saturates
from edgeopt.core.runtime import Feeds, create_session, run_model, run_session
from edgeopt.passes import AvoidInt8SaturationPass, QuantizeDynamicPass, QuantizeStaticPass
from edgeopt.passes.avoid_int8_saturation import may_saturate
from edgeopt.testing.saturating_models import large_positive_feeds, saturating_conv, saturating_matmul


def _kernels(model: ir.Model, feeds: Feeds) -> np.ndarray:
    return run_session(create_session(model, optimize=True), feeds)["y"]


def _simulation(model: ir.Model, feeds: Feeds) -> np.ndarray:
    return run_model(model, feeds)["y"]


def _output_step(model: ir.Model) -> float:
    """The scale of the QuantizeLinear on the graph output (one uint8 step of ``y``)."""
    for node in model.graph:
        if node.op_type == "QuantizeLinear" and node.inputs[0] is not None and node.inputs[0].name.startswith("y"):
            return float(node.inputs[1].const_value.numpy())  # type: ignore[union-attr]
    raise AssertionError("no output QuantizeLinear")


def _weight_dq(model: ir.Model) -> ir.Node:
    return next(n for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].is_initializer())


@pytest.mark.parametrize("build", [saturating_conv, saturating_matmul], ids=["conv", "matmul"])
def test_x86_avx2_qdq_kernels_compute_the_simulation_on_every_cpu(build) -> None:
    feeds = large_positive_feeds(build())
    plain, guarded = build(), build()
    QuantizeStaticPass(calibration=feeds, cpu="x86-vnni")(plain)
    QuantizeStaticPass(calibration=feeds, cpu="x86-avx2")(guarded)

    # Structure: the same integer values, now uint8 with the zero point moved by 128.
    before, after = _weight_dq(plain), _weight_dq(guarded)
    assert before.inputs[0].dtype == ir.DataType.INT8 and after.inputs[0].dtype == ir.DataType.UINT8
    zero_point = after.inputs[2].const_value.numpy()  # type: ignore[union-attr]
    assert (zero_point == 128).all()
    np.testing.assert_array_equal(after.inputs[0].const_value.numpy().astype(np.int16) - 128,  # type: ignore[union-attr]
                                  before.inputs[0].const_value.numpy())  # type: ignore[union-attr]

    step = _output_step(guarded)
    for batch in feeds:
        simulated = _simulation(plain, batch)
        np.testing.assert_array_equal(_simulation(guarded, batch), simulated)  # the graph means the same
        assert np.abs(_kernels(guarded, batch) - simulated).max() <= 1.01 * step  # requantization rounding only
        plain_gap = np.abs(_kernels(plain, batch) - simulated).max()
        if ort_u8s8_saturates():
            assert plain_gap > 10 * step, "this CPU saturates, yet the full-range int8 weights did not"
        else:
            assert plain_gap <= 1.01 * step


def test_qoperator_conv_weights_become_uint8_with_one_zero_point() -> None:
    feeds = large_positive_feeds(saturating_conv())
    qdq, qop = saturating_conv(), saturating_conv()
    QuantizeStaticPass(calibration=feeds, cpu="x86-vnni")(qdq)
    QuantizeStaticPass(calibration=feeds, format="qoperator", cpu="x86-avx2")(qop)

    conv = next(n for n in qop.graph if n.op_type == "QLinearConv")
    assert conv.inputs[3].dtype == ir.DataType.UINT8
    assert np.unique(conv.inputs[5].const_value.numpy()).tolist() == [128]  # type: ignore[union-attr]
    step = _output_step(qdq)
    for batch in feeds:  # QLinearConv runs the integer kernel even unoptimized: it must match the QDQ meaning
        assert np.abs(_kernels(qop, batch) - _simulation(qdq, batch)).max() <= 1.01 * step


def test_dynamic_matmul_is_as_accurate_as_the_float_model_allows_on_every_cpu() -> None:
    model = saturating_matmul()
    feeds = large_positive_feeds(model)
    guarded = model.clone()
    QuantizeDynamicPass(cpu="x86-avx2")(guarded)

    integer = next(n for n in guarded.graph if n.op_type == "MatMulInteger")
    assert integer.inputs[1].dtype == ir.DataType.UINT8 and integer.inputs[3] is not None
    for batch in feeds:
        expected = _simulation(model, batch)
        error = np.linalg.norm(_kernels(guarded, batch) - expected) / np.linalg.norm(expected)
        assert error < 0.01, error  # ~0.3 % of 8-bit rounding; a saturated sum is off by tens of %


def test_int8_activations_get_7_bit_weights() -> None:
    feeds = large_positive_feeds(saturating_matmul())
    model = saturating_matmul()
    QuantizeStaticPass(calibration=feeds, activation_type="int8", symmetric_activations=True, cpu=None)(model)
    before = _weight_dq(model).inputs[1].const_value.numpy().copy()  # type: ignore[union-attr]
    guard = AvoidInt8SaturationPass(cpu="x86-avx2")
    guard(model)

    dq = _weight_dq(model)
    weights = dq.inputs[0].const_value.numpy()  # type: ignore[union-attr]
    assert (guard.widened, guard.narrowed) == (0, 1)
    assert weights.dtype == np.int8 and np.abs(weights).max() == 63 and not may_saturate(weights)
    np.testing.assert_allclose(dq.inputs[1].const_value.numpy(), before * 127 / 63, rtol=1e-6)  # type: ignore[union-attr]
    for batch in feeds:
        expected = _simulation(saturating_matmul(), batch)
        error = np.linalg.norm(_kernels(model, batch) - expected) / np.linalg.norm(expected)
        assert error < 0.03, error


@pytest.mark.parametrize("cpu", ["x86-vnni", "arm64"])
def test_other_families_are_left_alone(cpu: str) -> None:
    model = saturating_conv()
    QuantizeStaticPass(calibration=large_positive_feeds(model), cpu=None)(model)
    assert not AvoidInt8SaturationPass(cpu=cpu)(model).modified
    assert _weight_dq(model).inputs[0].dtype == ir.DataType.INT8


def test_weights_that_cannot_overflow_stay_int8() -> None:
    model = saturating_conv()
    QuantizeStaticPass(calibration=large_positive_feeds(model), per_channel=False, cpu=None)(model)
    dq = _weight_dq(model)
    small = np.zeros_like(dq.inputs[0].const_value.numpy())  # type: ignore[union-attr]
    small.flat[0], small.flat[1], small.flat[2] = 127, 1, -127  # pairs add up to 128 at most
    dq.inputs[0].const_value = ir.tensor(small)  # type: ignore[union-attr]
    assert not AvoidInt8SaturationPass(cpu="x86-avx2")(model).modified


@pytest.mark.parametrize(("values", "expected"), [
    ([127, 1, -127, -1], False),   # same-sign pairs reach 128 at most: 255 * 128 fits an int16
    ([127, 2], True),              # 255 * 129 does not
    ([-64, -65], True),
    ([127, -127, 1], False),       # opposite signs never add up
    ([100], False),
])
def test_may_saturate(values: list[int], expected: bool) -> None:
    assert may_saturate(np.array(values, np.int8)) is expected
