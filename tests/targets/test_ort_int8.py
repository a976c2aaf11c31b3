"""Tests for ort-cpu-int8: static QDQ (per-channel) or dynamic int8, measured against fp32."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from edgeopt.cli.demo_model import ONNX_MODEL, load_data
from edgeopt.core.errors import CalibrationDataError, ExportError
from edgeopt.core.model_io import load_model
from edgeopt.core.runtime import Feeds, run_model
from edgeopt.deploy.target_registry import get_target
from edgeopt.targets import TARGETS, OrtCpuInt8Target


@pytest.fixture(scope="module")
def digits() -> tuple[ir.Model, list[Feeds], np.ndarray, np.ndarray]:
    data = load_data()
    calibration = [{"image": data.x_train[i:i + 64]} for i in range(0, 256, 64)]
    return load_model(ONNX_MODEL), calibration, data.x_val, data.y_val


@pytest.fixture(scope="module")
def int8_artifact(digits: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, calibration, _, _ = digits
    return OrtCpuInt8Target().export(model.clone(), tmp_path_factory.mktemp("int8"), calibration=calibration)


def _dequantize_nodes_of_weights(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """DequantizeLinear nodes of 8-bit weights: int8, or uint8 where the artifact is built for x86-avx2."""
    weights = {init.name for init in proto.graph.initializer if init.data_type in (onnx.TensorProto.INT8,
                                                                                  onnx.TensorProto.UINT8)}
    return [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]


def test_static_qdq_per_channel_int8_weights_uint8_activations(digits: tuple, int8_artifact: Path) -> None:
    model, _, x_val, y_val = digits
    proto = onnx.load(int8_artifact)
    onnx.checker.check_model(proto, full_check=True)
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}

    conv_dqs = [n for n in _dequantize_nodes_of_weights(proto) if initializers[n.input[0]].ndim == 4]
    assert len(conv_dqs) == 2, "both Conv weights must be 8-bit behind a DequantizeLinear"
    # Symmetric int8 weights; on x86 without VNNI the same values stored as uint8 with zero point 128.
    stored, offset = (np.uint8, 128) if OrtCpuInt8Target().cpu_family == "x86-avx2" else (np.int8, 0)
    for dq in conv_dqs:
        scale, zero_point = initializers[dq.input[1]], initializers[dq.input[2]]
        assert scale.shape == (initializers[dq.input[0]].shape[0],), "per-channel: one scale per output channel"
        assert initializers[dq.input[0]].dtype == stored and zero_point.dtype == stored
        assert (zero_point == offset).all(), "weights are symmetric"
        assert np.abs(initializers[dq.input[0]].astype(np.int16) - offset).max() == 127, "full int8 range"
    activation_q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert activation_q and all(initializers[n.input[2]].dtype == np.uint8 for n in activation_q)
    assert [i.type.tensor_type.elem_type for i in (*proto.graph.input, *proto.graph.output)] == [1, 1]

    target = OrtCpuInt8Target()
    got = target.run(int8_artifact, {"image": x_val})["logits"]
    expected = run_model(model, {"image": x_val})["logits"]
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.97
    assert (got.argmax(1) == y_val).mean() >= (expected.argmax(1) == y_val).mean() - 0.02


def test_notes_hold_side_by_side_medians_and_the_verdict(int8_artifact: Path) -> None:
    notes = OrtCpuInt8Target().notes(int8_artifact)

    assert notes[0] == "int8 mode: static (1 candidate(s) measured)"
    found = dict(re.findall(r"(fp32|static) ([0-9.e-]+) ms", notes[1]))
    assert set(found) == {"fp32", "static"}
    ratio = float(found["static"]) / float(found["fp32"])
    stated = re.match(r"int8 is ([0-9.]+)x (slower|faster) than fp32 on this machine", notes[2])
    assert stated is not None, notes[2]
    stated_ratio = float(stated.group(1)) if stated.group(2) == "slower" else 1 / float(stated.group(1))
    assert stated_ratio == pytest.approx(ratio, rel=0.02)  # the medians are printed to 4 digits
    assert (stated.group(2) == "slower") == (stated_ratio > 1)
    sqnr = float(re.fullmatch(r"SQNR vs fp32 on that sample: static ([0-9.]+) dB", notes[3]).group(1))  # type: ignore[union-attr]
    assert sqnr > 20


def test_static_needs_calibration_and_writes_nothing(digits: tuple, tmp_path: Path) -> None:
    model = digits[0]
    with pytest.raises(CalibrationDataError, match="--calib DATA"):
        OrtCpuInt8Target(mode="static").export(model.clone(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_slowdown_beyond_max_slowdown(digits: tuple, tmp_path: Path) -> None:
    model, calibration, _, _ = digits
    # No int8 artifact runs in 1e-6 of fp32's time: the refusal path, deterministic.
    with pytest.raises(ExportError, match=r"max_slowdown=1e-06.*Use the fp32 artifact \(ort-cpu\)"):
        OrtCpuInt8Target(max_slowdown=1e-6, latency_repeat=3).export(
            model.clone(), tmp_path / "out", calibration=calibration[:1])
    assert not (tmp_path / "out" / "model.onnx").exists()


ENCODER_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
encoder (float[N, 16, 64] x) => (float[N, 16, 64] y)
{
    h = MatMul(x, W1)
    a = Relu(h)
    o = MatMul(a, W2)
    y = Add(o, x)
}
"""


@pytest.fixture(scope="module")
def encoder() -> ir.Model:
    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(ENCODER_TEXT)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array((rng.standard_normal((64, 256)) / 8).astype(np.float32), "W1"),
        onnx.numpy_helper.from_array((rng.standard_normal((256, 64)) / 16).astype(np.float32), "W2"),
    ])
    return ir.serde.deserialize_model(proto)


def test_matmul_model_measures_static_and_dynamic_and_keeps_the_faster(encoder: ir.Model, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    calibration = [{"x": rng.standard_normal((4, 16, 64)).astype(np.float32)} for _ in range(2)]

    artifact = OrtCpuInt8Target(latency_repeat=10).export(encoder.clone(), tmp_path, calibration=calibration)

    notes = OrtCpuInt8Target().notes(artifact)
    medians = {k: float(v) for k, v in re.findall(r"(fp32|static|dynamic) ([0-9.]+) ms", notes[1])}
    assert set(medians) == {"fp32", "static", "dynamic"}
    sqnr = {k: float(v) for k, v in re.findall(r"(static|dynamic) ([0-9.]+) dB", notes[3])}
    accurate = [k for k in ("static", "dynamic") if sqnr[k] >= 20]
    chosen = min(accurate, key=medians.__getitem__) if accurate else max(sqnr, key=sqnr.__getitem__)
    assert notes[0] == f"int8 mode: {chosen} (2 candidate(s) measured)"
    ops = {n.op_type for n in onnx.load(artifact).graph.node}
    assert ("MatMulInteger" in ops or "DynamicQuantizeLinear" in ops) == (chosen == "dynamic")
    x = calibration[0]
    got, expected = OrtCpuInt8Target().run(artifact, x)["y"], run_model(encoder, x)["y"]
    cosine = float((got * expected).sum() / np.linalg.norm(got) / np.linalg.norm(expected))
    assert cosine > 0.99


def test_dynamic_mode_needs_no_calibration(encoder: ir.Model, tmp_path: Path) -> None:
    artifact = OrtCpuInt8Target(mode="dynamic", latency_repeat=3).export(encoder.clone(), tmp_path)

    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load(artifact).graph.node}
    assert OrtCpuInt8Target().notes(artifact)[0] == "int8 mode: dynamic (1 candidate(s) measured)"


def test_ort_format_file_runs_like_the_onnx_file(digits: tuple, tmp_path: Path) -> None:
    model, calibration, x_val, _ = digits
    target = OrtCpuInt8Target(ort_format=True, latency_repeat=3)

    artifact = target.export(model.clone(), tmp_path, calibration=calibration[:1])

    ort_file = artifact.with_suffix(".ort")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.ort"]
    assert ort_file.read_bytes()[4:8] == b"ORTM", "not an ORT-format flatbuffer"
    session = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x_val[:32]})[0]
    np.testing.assert_allclose(got, target.run(artifact, {"image": x_val[:32]})["logits"], rtol=1e-5, atol=1e-5)


def test_registered_for_compile() -> None:
    cls = TARGETS["ort-cpu-int8"]
    assert (cls.runtime, cls.device, cls.precision, cls.needs_calibration) == ("onnxruntime", "cpu", "int8", True)
    assert isinstance(get_target("ort-cpu-int8"), OrtCpuInt8Target)


def test_an_inaccurate_candidate_loses_even_when_faster(tmp_path: Path) -> None:
    proto = onnx.parser.parse_model("""
    <ir_version: 10, opset_import: ["" : 17]>
    m (float[N, 8] x) => (float[N, 8] y) { h = MatMul(x, W)  y = Relu(h) }
    """)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.eye(8, dtype=np.float32), "W"))
    rng = np.random.default_rng(3)
    # An outlier batch stretches the static uint8 range to 0..1e4: the first (timing) sample drowns in
    # it; dynamic quantization takes each input's own range and stays accurate.
    calibration = [{"x": np.abs(rng.standard_normal((1, 8))).astype(np.float32)},
                   {"x": np.full((1, 8), 1e4, np.float32)}]

    artifact = OrtCpuInt8Target(latency_repeat=3).export(
        ir.serde.deserialize_model(proto), tmp_path, calibration=calibration)

    notes = OrtCpuInt8Target().notes(artifact)
    sqnr = {k: float(v) for k, v in re.findall(r"(static|dynamic) ([0-9.]+) dB", notes[3])}
    assert sqnr["static"] < 20 <= sqnr["dynamic"]
    assert notes[0] == "int8 mode: dynamic (2 candidate(s) measured)"
