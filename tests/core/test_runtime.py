"""Tests for edgeopt.core.runtime: sessions, random inputs and output comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx_ir as ir
import onnxruntime as ort
import pytest

from edgeopt.core import runtime
from edgeopt.core.errors import CalibrationDataError
from edgeopt.core.model_io import load_model, save_model
from edgeopt.core.runtime import (
    compare_outputs,
    create_session,
    model_inputs,
    random_feeds,
    run_model,
    run_session,
)

MIXED_INPUTS_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
mixed (float[N, 3] x, int64[2] idx, bool[N] mask, float16[B, N] h) => (float[N, 3] y)
{
    y = Identity(x)
}
"""

TWO_OUTPUTS_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
two (float[2, 3] x) => (float[2, 3] y, float[2, 3] z)
<float[3] b = {1.0, 2.0, 3.0}>
{
    y = Add(x, b)
    t = Mul(x, x)
    z = Softmax<axis = 1>(t)
}
"""


# --- random_feeds ------------------------------------------------------------------------


def test_random_feeds_shapes_and_dtypes() -> None:
    model = ir.from_onnx_text(MIXED_INPUTS_TEXT)

    feeds = random_feeds(model, dims={"N": 5, "B": 2})

    assert list(feeds) == ["x", "idx", "mask", "h"]
    assert feeds["x"].shape == (5, 3) and feeds["x"].dtype == np.float32
    assert feeds["idx"].shape == (2,) and feeds["idx"].dtype == np.int64
    assert feeds["mask"].shape == (5,) and feeds["mask"].dtype == np.bool_
    assert feeds["h"].shape == (2, 5) and feeds["h"].dtype == np.float16
    assert np.all((feeds["idx"] >= 0) & (feeds["idx"] < 4))
    assert np.unique(feeds["x"]).size == feeds["x"].size  # really random, not a constant fill
    np.testing.assert_array_equal(run_model(model, feeds)["y"], feeds["x"])


def test_random_feeds_symbolic_dims_default() -> None:
    model = ir.from_onnx_text(MIXED_INPUTS_TEXT)

    assert random_feeds(model)["h"].shape == (1, 1)
    assert random_feeds(model, default_dim=3, dims={"B": 2})["h"].shape == (2, 3)


def test_random_feeds_are_seeded() -> None:
    model = ir.from_onnx_text(MIXED_INPUTS_TEXT)

    first, again, other = (random_feeds(model, seed=s, dims={"N": 8}) for s in (0, 0, 1))

    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["x"], other["x"])


def _ir3_model_with_initializer_input() -> onnx.ModelProto:
    """IR 3 lists initializers among the graph inputs; they need no feed."""
    make = onnx.helper
    graph = make.make_graph(
        [make.make_node("Add", ["x", "w"], ["y"])],
        "ir3",
        [
            make.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2]),
            make.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2]),
        ],
        [make.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
        initializer=[onnx.numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "w")],
    )
    model = make.make_model(graph, opset_imports=[make.make_opsetid("", 8)], ir_version=3)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_random_feeds_skip_initializers_listed_as_inputs() -> None:
    model = ir.serde.deserialize_model(_ir3_model_with_initializer_input())

    feeds = random_feeds(model)

    assert [v.name for v in model_inputs(model)] == ["x"]
    assert list(feeds) == ["x"]
    np.testing.assert_allclose(run_model(model, feeds)["y"], feeds["x"] + [1.0, 2.0])


def test_random_feeds_reject_string_and_sequence_inputs() -> None:
    strings = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 18]>
        g (string[2] words) => (string[2] out) { out = Identity(words) }
        """
    )
    sequence = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 18]>
        g (seq(float[2]) items) => (int64 n) { n = SequenceLength(items) }
        """
    )

    with pytest.raises(CalibrationDataError, match="input 'words' has dtype .*no random data"):
        random_feeds(strings)
    with pytest.raises(CalibrationDataError, match="input 'items' has type .*made for tensors"):
        random_feeds(sequence)


# --- compare_outputs ---------------------------------------------------------------------


def _arrays(*values: float, dtype: type = np.float32) -> np.ndarray:
    return np.array(values, dtype=dtype)


def test_compare_equal_outputs() -> None:
    ref = {"y": _arrays(1.0, -2.0, 0.0), "z": _arrays(3, 4, dtype=np.int64)}

    deviation = compare_outputs(ref, {k: v.copy() for k, v in ref.items()})

    assert deviation.ok
    assert deviation.mismatches == ()
    assert deviation.max_abs == 0.0 and deviation.max_rel == 0.0
    assert deviation.worst_output == "y"


def test_compare_within_absolute_and_relative_tolerance() -> None:
    ref = {"small": _arrays(0.0, 1.0, dtype=np.float64), "big": _arrays(1000.0, dtype=np.float64)}
    got = {"small": ref["small"] + 5e-7, "big": ref["big"] + 5e-3}  # 5e-3 <= 1e-5 * 1000

    deviation = compare_outputs(ref, got, rtol=1e-5, atol=1e-6)

    assert deviation.ok
    assert deviation.max_abs == pytest.approx(5e-3)
    assert deviation.worst_output == "big"
    assert deviation.max_rel == pytest.approx(5e-7 / 1e-6)  # the near-zero element dominates
    assert not compare_outputs(ref, got, rtol=0.0, atol=1e-6).ok


def test_compare_beyond_tolerance_names_the_output() -> None:
    ref = {"y": _arrays(1.0, 2.0), "z": _arrays(1.0, 2.0)}
    got = {"y": _arrays(1.0, 2.0), "z": _arrays(1.0, 2.5)}

    deviation = compare_outputs(ref, got)

    assert not deviation.ok
    assert deviation.worst_output == "z"
    assert deviation.max_abs == pytest.approx(0.5)
    assert deviation.max_rel == pytest.approx(0.5 / (2.0 + 1e-6))
    assert len(deviation.mismatches) == 1
    assert deviation.mismatches[0].startswith("z: max abs error 0.5")


@pytest.mark.parametrize(
    ("got", "message"),
    [
        (_arrays(1.0, 2.0, 3.0), "y: float32[3] != float32[2]"),
        (_arrays(1.0, 2.0, dtype=np.float64), "y: float64[2] != float32[2]"),
        (_arrays(1.0, 2.0).reshape(1, 2), "y: float32[1, 2] != float32[2]"),
    ],
    ids=["shape", "dtype", "rank"],
)
def test_compare_shape_and_dtype_mismatch(got: np.ndarray, message: str) -> None:
    deviation = compare_outputs({"y": _arrays(1.0, 2.0)}, {"y": got})

    assert not deviation.ok
    assert deviation.mismatches == (message,)


def test_compare_missing_and_unexpected_outputs() -> None:
    ref = {"y": _arrays(1.0), "z": _arrays(2.0)}

    deviation = compare_outputs(ref, {"y": _arrays(1.0), "extra": _arrays(0.0)})

    assert deviation.mismatches == ("z: missing", "extra: unexpected output")


def test_compare_nan_and_inf() -> None:
    nan, inf = float("nan"), float("inf")
    ref = {"y": _arrays(nan, inf, -inf, 1.0)}

    assert compare_outputs(ref, {"y": _arrays(nan, inf, -inf, 1.0)}).ok
    for got in (_arrays(0.0, inf, -inf, 1.0), _arrays(nan, -inf, -inf, 1.0),
                _arrays(nan, inf, -inf, nan), _arrays(nan, inf, -inf, inf)):
        deviation = compare_outputs(ref, {"y": got})
        assert not deviation.ok, got
        assert deviation.max_abs == inf


def test_compare_exact_types() -> None:
    ints = {"i": _arrays(1, 2, dtype=np.int32)}
    bools = {"b": np.array([True, False])}
    words = {"s": np.array(["a", "b"], dtype=object)}

    assert compare_outputs(ints, {"i": _arrays(1, 2, dtype=np.int32)}).ok
    assert not compare_outputs(ints, {"i": _arrays(1, 3, dtype=np.int32)}).ok
    assert compare_outputs(bools, {"b": np.array([True, False])}).ok
    assert not compare_outputs(bools, {"b": np.array([True, True])}).ok
    assert compare_outputs(words, {"s": np.array(["a", "b"], dtype=object)}).ok
    assert not compare_outputs(words, {"s": np.array(["a", "c"], dtype=object)}).ok


def test_compare_empty_outputs() -> None:
    empty = np.zeros((0, 3), np.float32)

    assert compare_outputs({"y": empty}, {"y": empty.copy()}).ok


# --- sessions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("optimize", "level"),
    [(False, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
     (True, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)],
)
def test_create_session_optimization_level(
    optimize: bool, level: ort.GraphOptimizationLevel
) -> None:
    model = ir.from_onnx_text(TWO_OUTPUTS_TEXT)
    feeds = random_feeds(model)
    x = feeds["x"]
    expected_z = np.exp(x * x) / np.exp(x * x).sum(axis=1, keepdims=True)

    session = create_session(model, optimize=optimize)
    outputs = run_session(session, feeds)

    assert session.get_session_options().graph_optimization_level == level
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert list(outputs) == ["y", "z"]
    np.testing.assert_allclose(outputs["y"], x + [1.0, 2.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(outputs["z"], expected_z, rtol=1e-5, atol=1e-6)


def test_create_session_from_proto_and_path(tmp_path: Path) -> None:
    model = ir.from_onnx_text(TWO_OUTPUTS_TEXT)
    feeds = random_feeds(model)
    expected = run_model(model, feeds)
    path = save_model(model, tmp_path / "m.onnx")

    for source in (ir.serde.serialize_model(model), path, str(path)):
        outputs = run_session(create_session(source), feeds)
        assert compare_outputs(expected, outputs, rtol=0, atol=0).ok, source


def _matmul_model() -> ir.Model:
    proto = onnx.parser.parse_model(
        """
        <ir_version: 10, opset_import: ["" : 18]>
        matmul (float[4, 16] x) => (float[4, 16] y) { y = MatMul(x, w) }
        """
    )
    weight = np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    return ir.serde.deserialize_model(proto)


def test_run_model_with_external_tensors(tmp_path: Path) -> None:
    model = _matmul_model()
    feeds = random_feeds(model)
    expected = run_model(model, feeds)
    path = save_model(model, tmp_path / "m.onnx", external_data=True)
    loaded = load_model(path)
    assert isinstance(loaded.graph.initializers["w"].const_value, ir.ExternalTensor)

    assert compare_outputs(expected, run_model(loaded, feeds), rtol=0, atol=0).ok


def test_large_model_runs_through_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _matmul_model()
    feeds = random_feeds(model)
    expected = run_model(model, feeds)
    saved: list[bool] = []
    real_save = runtime.save_model

    def spy_save(*args, **kwargs):
        saved.append(kwargs.get("external_data"))
        return real_save(*args, **kwargs)

    monkeypatch.setattr(runtime, "PROTOBUF_LIMIT_BYTES", 1024)  # 1 KiB weight > half of it
    monkeypatch.setattr(runtime, "save_model", spy_save)

    outputs = run_model(model, feeds)

    assert saved == [True]
    assert compare_outputs(expected, outputs, rtol=0, atol=0).ok
    assert not isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)
