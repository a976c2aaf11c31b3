"""Tests for quantize-static: calibrated QDQ / QOperator quantization, checked in ONNX Runtime.

Quantized outputs are compared with float in units of the output's quantization
step: ``scale = (high - low) / 255`` for uint8, where ``[low, high]`` is the range
the float model's output covers on the calibration data (widened to include 0,
as the quantizer does). The numpy reference for that range is computed here,
and the scale in the model must equal it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.core.errors import CalibrationDataError, PassOptionError
from edgeopt.core.runtime import Feeds, run_model
from edgeopt.passes import QuantizeStaticPass

# A uint8 output is rounded once (half a step); the rounding of the input (uint8)
# and the weights (int8) adds, through the dot product, about one more step on
# these small layers. Four steps leaves room without letting a wrong scale or a
# missing zero point pass (either is off by tens of steps).
STEPS = 4


def _vi(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _conv_relu(opset: int = 17) -> ir.Model:
    """Conv(3 -> 4, 3x3) on 8x8, then Relu."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", kernel_shape=[3, 3]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "conv_relu", [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 4, 6, 6])],
        [nh.from_array(weight, "W"), nh.from_array(bias, "B")])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _matmul(k: int = 16, n: int = 8) -> ir.Model:
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")],
        "matmul", [_vi("x", ["N", k])], [_vi("y", ["N", n])], [nh.from_array(weight, "W")])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _two_matmuls() -> ir.Model:
    rng = np.random.default_rng(2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
         helper.make_node("MatMul", ["h", "W2"], ["y"], name="mm2")],
        "two", [_vi("x", ["N", 16])], [_vi("y", ["N", 8])],
        [nh.from_array(rng.standard_normal((16, 32)).astype(np.float32), "W1"),
         nh.from_array(rng.standard_normal((32, 8)).astype(np.float32), "W2")])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _feeds(model: ir.Model, batches: int = 4, rows: int = 16) -> list[Feeds]:
    rng = np.random.default_rng(0)
    shape = [d if isinstance(d, int) else rows for d in model.graph.inputs[0].shape]
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(batches)]


def _outputs(model: ir.Model, feeds: list[Feeds]) -> np.ndarray:
    return np.concatenate([run_model(model, f)["y"] for f in feeds])


def _step(reference: np.ndarray, levels: int = 255) -> float:
    """The quantization step of a tensor calibrated (min/max) on ``reference``."""
    return (max(float(reference.max()), 0.0) - min(float(reference.min()), 0.0)) / levels


def _initializer(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy()


def _ops(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def _signature(model: ir.Model) -> list[tuple[str | None, ir.DataType | None]]:
    return [(v.name, v.dtype) for v in (*model.graph.inputs, *model.graph.outputs)]


def _check(model: ir.Model) -> None:
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


def _quantize(model: ir.Model, feeds: list[Feeds], **options: object) -> ir.Model:
    """Quantize with the int8 weights every quantizer emits (``cpu="x86-vnni"``) unless ``cpu`` is given:
    these tests compare through the simulation, where the family changes nothing; the uint8 weights of
    ``x86-avx2`` are tested in test_avoid_int8_saturation.py. Ranges are MinMax unless ``method`` is given
    (the scales below are checked against numpy's min/max; ``auto``, the default, in tests/calibration)."""
    signature = _signature(model)
    QuantizeStaticPass(calibration=feeds, **{"cpu": "x86-vnni", "method": "minmax", **options})(model)  # type: ignore[arg-type]
    _check(model)
    assert _signature(model) == signature, "graph input/output names or dtypes changed"
    return model


# --- QDQ ----------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [_conv_relu, _matmul], ids=["conv-relu", "matmul"])
def test_qdq_output_within_a_few_steps_of_float(build) -> None:
    model = build()
    feeds = _feeds(model)
    reference = _outputs(model, feeds)

    _quantize(model, feeds)

    ops = _ops(model)
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    step = _step(reference)
    # The output scale is the numpy min/max of the float output over the calibration data.
    np.testing.assert_allclose(_initializer(model, "y_scale"), step, rtol=1e-6)
    error = np.abs(_outputs(model, feeds) - reference).max()
    assert 0 < error <= STEPS * step, (error, step)


def test_conv_per_channel_weight_scales_are_max_abs_over_127() -> None:
    model = _conv_relu()
    weight = _initializer(model, "W")

    _quantize(model, _feeds(model), per_channel=True)

    dq = next(n for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[0].name == "W_quantized")
    scale = dq.inputs[1].const_value.numpy()
    np.testing.assert_allclose(scale, np.abs(weight).reshape(4, -1).max(1) / 127, rtol=1e-6)
    assert dq.attributes["axis"].as_int() == 0
    assert not _initializer(model, "W_zero_point").any()  # int8 weights: symmetric


def test_matmul_per_channel_scales_follow_output_columns() -> None:
    model = _matmul()
    weight = _initializer(model, "W")

    _quantize(model, _feeds(model), per_channel=True)

    np.testing.assert_allclose(_initializer(model, "W_scale"), np.abs(weight).max(0) / 127, rtol=1e-6)


@pytest.mark.parametrize("build", [_conv_relu, _matmul], ids=["conv-relu", "matmul"])
def test_per_tensor_gives_one_weight_scale(build) -> None:
    per_tensor, per_channel = build(), build()
    weight = _initializer(per_tensor, "W")

    _quantize(per_tensor, _feeds(per_tensor), per_channel=False)
    _quantize(per_channel, _feeds(per_channel), per_channel=True)

    assert _initializer(per_tensor, "W_scale").shape == ()
    np.testing.assert_allclose(_initializer(per_tensor, "W_scale"), np.abs(weight).max() / 127, rtol=1e-6)
    assert _initializer(per_channel, "W_scale").shape == (weight.shape[0 if weight.ndim == 4 else 1],)


def test_output_is_topologically_sorted() -> None:
    """ORT's emitter appends Q/DQ nodes after their consumers; the pass re-sorts."""
    model = _two_matmuls()
    QuantizeStaticPass(calibration=_feeds(model))(model)
    seen = {v.name for v in model.graph.inputs} | set(model.graph.initializers)
    for node in model.graph:
        assert all(v is None or v.name in seen for v in node.inputs), node.name
        seen |= {v.name for v in node.outputs}


# --- QOperator ----------------------------------------------------------------------------


@pytest.mark.parametrize(("build", "op"), [(_conv_relu, "QLinearConv"), (_matmul, "QLinearMatMul")],
                         ids=["conv-relu", "matmul"])
def test_qoperator_format(build, op: str) -> None:
    model = build()
    feeds = _feeds(model)
    reference = _outputs(model, feeds)

    _quantize(model, feeds, format="qoperator", cpu="auto")  # QLinear* runs integer kernels: built for this CPU

    ops = _ops(model)
    assert op in ops and "Conv" not in ops and "MatMul" not in ops
    error = np.abs(_outputs(model, feeds) - reference).max()
    assert error <= STEPS * _step(reference), (error, _step(reference))


# --- 16-bit activations -------------------------------------------------------------------


@pytest.fixture
def root_handlers() -> Iterator[list[logging.Handler]]:
    """The root logger's handlers before the test; restored after it, whatever ORT did."""
    root = logging.getLogger()
    saved = list(root.handlers)
    yield saved
    root.handlers[:] = saved


@pytest.mark.usefixtures("root_handlers")
def test_uint16_activations_are_16_bit_and_more_accurate() -> None:
    feeds = _feeds(_matmul())
    reference = _outputs(_matmul(), feeds)
    a8 = _quantize(_matmul(), feeds)
    a16 = _quantize(_matmul(), feeds, activation_type="uint16")

    opset = a16.opset_imports.get("", a16.opset_imports.get("ai.onnx"))
    for node in a16.graph:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.inputs[0].name != "W_quantized":
            # 16-bit Q/DQ are standard from opset 21; below it they live in com.microsoft.
            assert node.domain == ("" if opset >= 21 else "com.microsoft"), (node.name, node.domain, opset)
    assert _initializer(a16, "y_zero_point").dtype == np.uint16
    np.testing.assert_allclose(_initializer(a16, "y_scale"), _step(reference, 65535), rtol=1e-6)
    error8 = np.sqrt(((_outputs(a8, feeds) - reference) ** 2).mean())
    error16 = np.sqrt(((_outputs(a16, feeds) - reference) ** 2).mean())
    # The int8 weights still round, so 16-bit activations don't get 256x better (here ~2.3x).
    assert error16 < error8 / 2, (error16, error8)


def test_uint16_leaves_root_logging_alone(
    root_handlers: list[logging.Handler], capsys: pytest.CaptureFixture[str]
) -> None:
    model = _matmul()
    logging.getLogger().handlers[:] = []  # a library user who has not configured logging

    QuantizeStaticPass(calibration=_feeds(model), activation_type="uint16")(model)

    assert logging.getLogger().handlers == [] and capsys.readouterr().err == ""


# --- include / exclude --------------------------------------------------------------------


def _producers(model: ir.Model, node_name: str) -> list[str]:
    node = next(n for n in model.graph if n.name == node_name)
    return [v.producer().op_type if v.producer() is not None else "" for v in node.inputs if v is not None]


def test_exclude_first_node_keeps_it_float() -> None:
    model = _two_matmuls()
    feeds = _feeds(model)

    _quantize(model, feeds, exclude=("mm1",))

    assert "DequantizeLinear" not in _producers(model, "mm1")
    assert next(n for n in model.graph if n.name == "mm1").inputs[1].name == "W1"  # float weights
    assert "DequantizeLinear" in _producers(model, "mm2")


def test_exclude_node_after_a_quantized_one_reads_float() -> None:
    model = _two_matmuls()
    feeds = _feeds(model)

    _quantize(model, feeds, exclude=("mm2",))

    assert next(n for n in model.graph if n.name == "mm2").inputs[1].name == "W2"
    assert "DequantizeLinear" not in _producers(model, "mm2")


def test_op_types_limits_what_is_quantized() -> None:
    model = _conv_relu()

    _quantize(model, _feeds(model), op_types=("MatMul",))

    assert "QuantizeLinear" not in _ops(model) and "Conv" in _ops(model)


# --- pre-processing -----------------------------------------------------------------------


def test_opset_11_constant_weights_quantize_without_preprocessing() -> None:
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["W"], value=nh.from_array(weight, "W")),
         helper.make_node("Conv", ["x", "W"], ["y"], name="conv", kernel_shape=[3, 3])],
        "old", [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 4, 6, 6])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=6)
    onnx.checker.check_model(proto, full_check=True)
    model = ir.from_proto(proto)
    feeds = _feeds(model)
    reference = _outputs(model, feeds)

    _quantize(model, feeds)

    assert model.opset_imports[""] == 13
    assert "Constant" not in _ops(model) and "QuantizeLinear" in _ops(model)
    assert _initializer(model, "W_scale").shape == (4,)  # per-channel needs opset 13
    error = np.abs(_outputs(model, feeds) - reference).max()
    assert error <= STEPS * _step(reference)


# --- ranges and calibration data ----------------------------------------------------------


def test_ranges_bypass_calibration() -> None:
    model = _matmul()
    signature = _signature(model)

    pass_ = QuantizeStaticPass(ranges={"x": (-4.0, 4.0), "y": (-10.0, 12.0)})
    pass_(model)

    assert pass_.calibration_seconds is None
    np.testing.assert_allclose(_initializer(model, "x_scale"), 8 / 255, rtol=1e-6)
    np.testing.assert_allclose(_initializer(model, "y_scale"), 22 / 255, rtol=1e-6)
    assert _signature(model) == signature
    _check(model)


def test_calibration_seconds_is_set_after_calibrating() -> None:
    model = _matmul()
    pass_ = QuantizeStaticPass(calibration=_feeds(model))
    pass_(model)
    assert pass_.calibration_seconds is not None and pass_.calibration_seconds >= 0


def test_no_calibration_and_no_ranges_is_an_error() -> None:
    with pytest.raises(CalibrationDataError, match="calibration data .*or precomputed ranges"):
        QuantizeStaticPass()


def test_calibration_with_wrong_input_name_names_it() -> None:
    model = _matmul()
    data = [{"z": np.zeros((4, 16), np.float32)}]
    with pytest.raises(CalibrationDataError, match="unexpected input 'z'.*'x'"):
        QuantizeStaticPass(calibration=data)(model)


def test_calibration_with_wrong_rank_names_the_input() -> None:
    model = _matmul()
    data = [{"x": np.zeros((4, 2, 16), np.float32)}]
    with pytest.raises(CalibrationDataError, match=r"input 'x' expects float32\[N,16\].*rank 3"):
        QuantizeStaticPass(calibration=data)(model)


# --- calibration methods ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse", "moving-average"])
def test_every_calibration_method_runs(method: str) -> None:
    model = _matmul()
    feeds = _feeds(model)
    reference = _outputs(model, feeds)

    _quantize(model, feeds, method=method)

    assert "QuantizeLinear" in _ops(model)
    # Methods that clip give a narrower range than min/max, so the step is at most the
    # min/max step, give or take the histogram's bin (1/2048 of the range) at each end.
    assert _initializer(model, "y_scale") <= _step(reference) * 1.01
    error = np.abs(_outputs(model, feeds) - reference)
    assert np.sqrt((error**2).mean()) <= STEPS * _step(reference)


def _with_outliers() -> tuple[list[Feeds], list[Feeds]]:
    """Calibration data of N(0, 1) with one value of +30 and one of -30 in 262,144; a clean bulk."""
    rng = np.random.default_rng(0)
    calibration = [{"x": rng.standard_normal((4096, 16)).astype(np.float32)} for _ in range(4)]
    calibration[1]["x"][7, 3] = 30.0
    calibration[2]["x"][100, 11] = -30.0
    bulk = [{"x": rng.standard_normal((256, 16)).astype(np.float32)}]
    return calibration, bulk


@pytest.mark.parametrize(("method", "factor"), [("percentile", 1 / 3), ("entropy", 1 / 3), ("mse", 0.8)])
def test_clipping_methods_beat_minmax_on_the_bulk_with_outliers(method: str, factor: float) -> None:
    """Min/max stretches the input and output ranges over the outliers, so the bulk gets
    coarse steps. Percentile (99.99 % keeps all but ~13 values per tail) and entropy cut
    the outliers off. MSE minimizes the squared error of *all* values, the outliers'
    clipping included, so it clips less (here ~|30| -> ~18) and gains less."""
    calibration, bulk = _with_outliers()
    reference = _outputs(_matmul(), bulk)
    minmax = _quantize(_matmul(), calibration, method="minmax")
    options = {"percentile": 99.99} if method == "percentile" else {}
    clipped = _quantize(_matmul(), calibration, method=method, **options)

    def rms(model: ir.Model) -> float:
        return float(np.sqrt(((_outputs(model, bulk) - reference) ** 2).mean()))

    assert _initializer(clipped, "x_scale") < _initializer(minmax, "x_scale")
    assert rms(clipped) < factor * rms(minmax), (rms(clipped), rms(minmax))


# --- learned rounding ---------------------------------------------------------------------


def _correlated_feeds(model: ir.Model, batches: int, seed: int) -> list[Feeds]:
    """Inputs whose features are strongly correlated (as real activations are): where learned rounding pays."""
    rng = np.random.default_rng(seed)
    shape = [d if isinstance(d, int) else 32 for d in model.graph.inputs[0].shape]
    mixing = np.eye(shape[-1]) + np.random.default_rng(99).standard_normal((shape[-1], shape[-1]))  # one for all
    return [{"x": (rng.standard_normal(shape) @ mixing).astype(np.float32)} for _ in range(batches)]


def test_learned_rounding_keeps_scales_and_cuts_the_error() -> None:
    feeds = _correlated_feeds(_matmul(k=64, n=16), 8, seed=0)
    held_out = _correlated_feeds(_matmul(k=64, n=16), 4, seed=1)
    reference = _outputs(_matmul(k=64, n=16), held_out)
    nearest = _quantize(_matmul(k=64, n=16), feeds, rounding="nearest", activation_type="uint16")
    learned = _quantize(_matmul(k=64, n=16), feeds, activation_type="uint16")  # the default; 16-bit
    # activations isolate the weights' share of the error

    np.testing.assert_array_equal(_initializer(learned, "W_scale"), _initializer(nearest, "W_scale"))
    codes, rounded = _initializer(learned, "W_quantized"), _initializer(nearest, "W_quantized")
    assert codes.dtype == np.int8 and np.abs(codes.astype(int)).max() <= 127
    assert 0 < (codes != rounded).mean() and np.abs(codes.astype(int) - rounded).max() <= 2
    error = {name: float(((_outputs(m, held_out) - reference) ** 2).mean())
             for name, m in (("nearest", nearest), ("learned", learned))}
    assert error["learned"] < 0.85 * error["nearest"], error  # measured 0.75x; simulation (optimizations off)


def test_rounding_option_is_checked() -> None:
    with pytest.raises(PassOptionError, match="rounding must be nearest or learned"):
        QuantizeStaticPass(calibration=[], rounding="stochastic")  # type: ignore[arg-type]
