"""Tests for ort-npu: static-shape QDQ (u8 or u16 activations, s8 weights) and the partition table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from edgeopt.cli.demo_model import ONNX_MODEL, load_data
from edgeopt.core.errors import CalibrationDataError, PassOptionError, UnsupportedOpError
from edgeopt.core.model_io import load_model
from edgeopt.core.runtime import Feeds, run_model
from edgeopt.core.target import raise_for_issues
from edgeopt.deploy.target_registry import get_target
from edgeopt.targets import TARGETS, OrtNpuTarget
from edgeopt.targets.npu_ops import FLOAT_NOTE, NNAPI_OPS, QNN_OPS, partition


@pytest.fixture(scope="module")
def digits() -> tuple[ir.Model, list[Feeds]]:
    data = load_data()
    return load_model(ONNX_MODEL), [{"image": data.x_train[i:i + 64]} for i in range(0, 256, 64)]


@pytest.fixture(scope="module")
def artifacts(digits: tuple, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    model, calibration = digits
    out = {}
    for bits in (8, 16):
        target = OrtNpuTarget(activations=bits)  # type: ignore[arg-type]
        prepared = model.clone()
        target.prepare()(prepared)
        out[bits] = target.export(prepared, tmp_path_factory.mktemp(f"npu{bits}"), calibration=calibration)
    return out


def _zero_points(proto: onnx.ModelProto, op: str) -> list[np.ndarray]:
    arrays = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    return [arrays[n.input[2]] for n in proto.graph.node if n.op_type == op and len(n.input) > 2]


@pytest.mark.parametrize("bits", [8, 16])
def test_static_shapes_and_qdq_types(artifacts: dict[int, Path], bits: int) -> None:
    proto = onnx.load(artifacts[bits])
    onnx.checker.check_model(proto, full_check=True)

    signature = OrtNpuTarget().signature(artifacts[bits])
    assert [s.shape for s in signature.inputs] == [(1, 1, 8, 8)]
    assert [s.shape for s in signature.outputs] == [(1, 10)]
    activation = np.uint16 if bits == 16 else np.uint8
    assert {z.dtype for z in _zero_points(proto, "QuantizeLinear")} == {np.dtype(activation)}
    arrays = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in arrays
                 and arrays[n.input[0]].dtype == np.int8]
    assert len(weight_dq) == 3  # 2 Conv + 1 Gemm weights
    assert all(not arrays[n.input[2]].any() for n in weight_dq), "weights must be symmetric (zero point 0)"
    assert all(arrays[n.input[1]].size == arrays[n.input[0]].shape[0] for n in weight_dq[:2]), "per channel"


def test_accuracy_and_a16_beats_a8(digits: tuple, artifacts: dict[int, Path]) -> None:
    model, _ = digits
    data = load_data()
    expected = run_model(model, {"image": data.x_val})["logits"]
    sqnr = {}
    for bits, artifact in artifacts.items():
        got = OrtNpuTarget().run(artifact, {"image": data.x_val})["logits"]  # 360 rows, in chunks of 1
        assert got.shape == expected.shape
        assert (got.argmax(1) == data.y_val).mean() >= (expected.argmax(1) == data.y_val).mean() - 0.02
        sqnr[bits] = 10 * np.log10((expected**2).sum() / ((got - expected) ** 2).sum())
    assert sqnr[16] > sqnr[8] + 3, sqnr  # 8 more activation bits must show


def test_precision_follows_activations() -> None:
    assert OrtNpuTarget().precision == "a8w8"
    assert OrtNpuTarget(activations=16).precision == "a16w8"
    with pytest.raises(PassOptionError, match="activations must be 8 or 16"):
        OrtNpuTarget(activations=4)  # type: ignore[arg-type]
    cls = TARGETS["ort-npu"]
    assert (cls.runtime, cls.device, cls.needs_calibration) == ("onnxruntime", "npu", True)


def test_partition_table_in_artifact_and_notes(artifacts: dict[int, Path]) -> None:
    target = OrtNpuTarget()
    table = target.partition_table(artifacts[8])

    assert [p.op for p in table] == ["Conv", "Relu", "Conv", "Relu", "MaxPool", "Reshape", "Gemm"]
    assert {p.device for p in table} == {"npu"}
    assert target.notes(artifacts[8])[0] == "QNN HTP partition: 7 of 7 node(s) on the NPU; no CPU fallback"


FALLBACK_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
gelu_block (float[N, seq, 8] x) => (float[N, seq, 8] y)
{
    h = MatMul(x, W)
    half = Constant<value = float {0.5}>()
    root = Constant<value = float {0.70710677}>()
    s = Mul(h, root)
    e = Erf(s)
    one = Constant<value = float {1.0}>()
    p = Add(e, one)
    q = Mul(h, p)
    g = Mul(q, half)
    y = HardSwish(g)
}
"""


def _fallback_model() -> ir.Model:
    proto = onnx.parser.parse_model(FALLBACK_TEXT)
    for index, node in enumerate(proto.graph.node):
        node.name = f"{node.op_type.lower()}_{index}"
    weight = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32) / 3
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "W"))
    return ir.serde.deserialize_model(proto)


def test_check_lists_every_fallback_and_dynamic_dim_at_once() -> None:
    assert "Erf" not in QNN_OPS and "HardSwish" in QNN_OPS and "HardSwish" not in NNAPI_OPS

    qnn = OrtNpuTarget(max_sequence_length=6).check(_fallback_model())
    nnapi = OrtNpuTarget(ep="nnapi").check(_fallback_model())

    assert [(i.node, i.op) for i in qnn] == [("x", "input"), ("x", "input"), ("erf_4", "Erf")]
    assert not any(i.fatal for i in qnn)
    raise_for_issues("ort-npu", qnn)  # nothing fatal: no error
    assert [(i.node, i.op) for i in nnapi if i.op != "input"] == [("erf_4", "Erf"), ("hardswish_9", "HardSwish")]
    assert "NNAPI has no builder for Erf" in str(nnapi[2])


def test_fallback_exports_with_its_partition_and_strict_refuses(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    calibration = [{"x": rng.standard_normal((1, 6, 8)).astype(np.float32)} for _ in range(4)]

    target = OrtNpuTarget(max_sequence_length=6)
    artifact = target.export(_fallback_model(), tmp_path / "ok", calibration=calibration)

    assert [s.shape for s in target.signature(artifact).inputs] == [(1, 6, 8)]
    cpu = [(p.node, p.op) for p in target.partition_table(artifact) if p.device == "cpu"]
    assert cpu == [("erf_4", "Erf")]
    # HardSwish has a QNN builder, but the QDQ quantizer leaves it float (DQ in, float graph output out)
    floats = [p.node for p in target.partition_table(artifact) if p.device == "npu" and p.reason == FLOAT_NOTE]
    assert floats == ["hardswish_9"]
    assert target.notes(artifact)[0].endswith(
        "on the NPU; CPU fallback: Erf; not quantized (float on the NPU): HardSwish")
    got, expected = target.run(artifact, calibration[0])["y"], run_model(_fallback_model(), calibration[0])["y"]
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()

    with pytest.raises(UnsupportedOpError, match=r"cannot run 2 node.*'erf_4' \(Erf\).*'hardswish_9' \(HardSwish\)"):
        OrtNpuTarget(ep="nnapi", strict=True, max_sequence_length=6).export(
            _fallback_model(), tmp_path / "strict", calibration=calibration)
    assert not (tmp_path / "strict").exists()


def test_sequence_length_comes_from_the_calibration_data_when_not_given(tmp_path: Path) -> None:
    calibration = [{"x": np.random.default_rng(2).standard_normal((3, 5, 8)).astype(np.float32)}]
    prepared = _fallback_model()
    OrtNpuTarget().prepare()(prepared)  # batch fixed; the sequence axis has no size yet
    assert [list(v.shape) for v in prepared.graph.inputs] == [[1, "seq", 8]]

    artifact = OrtNpuTarget().export(prepared, tmp_path, calibration=calibration)

    assert [s.shape for s in OrtNpuTarget().signature(artifact).inputs] == [(1, 5, 8)]


def test_dynamic_dim_with_no_size_and_no_name_is_an_error(tmp_path: Path) -> None:
    proto = onnx.parser.parse_model("""
    <ir_version: 10, opset_import: ["" : 17]>
    m (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }
    """)
    proto.graph.input[0].type.tensor_type.shape.dim[1].Clear()  # an unnamed, unknown dim
    model = ir.serde.deserialize_model(proto)
    with pytest.raises(PassOptionError, match=r"input 'x' axis 1 \(unnamed\) is dynamic"):
        OrtNpuTarget().export(model, tmp_path, calibration=[{"x": np.zeros((1, 4), np.float32)}])


def test_needs_calibration(digits: tuple, tmp_path: Path) -> None:
    with pytest.raises(CalibrationDataError, match="--calib DATA"):
        get_target("ort-npu").export(digits[0].clone(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_low_fidelity_advises_16_bit_activations(tmp_path: Path) -> None:
    proto = onnx.parser.parse_model("""
    <ir_version: 10, opset_import: ["" : 17]>
    m (float[1, 8] x) => (float[1, 8] y) { h = MatMul(x, W)  y = Relu(h) }
    """)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.eye(8, dtype=np.float32), "W"))
    rng = np.random.default_rng(3)
    # One outlier batch stretches the uint8 range to 0..1e4: a step of ~40 swallows the normal batch.
    calibration = [{"x": np.abs(rng.standard_normal((1, 8))).astype(np.float32)},
                   {"x": np.full((1, 8), 1e4, np.float32)}]

    notes8 = OrtNpuTarget().notes(OrtNpuTarget().export(
        ir.serde.deserialize_model(proto), tmp_path / "a8", calibration=calibration))
    notes16 = OrtNpuTarget().notes(OrtNpuTarget(activations=16).export(
        ir.serde.deserialize_model(proto), tmp_path / "a16", calibration=calibration))

    sqnr8, sqnr16 = (float(n[3].split("SQNR ")[1].split(" dB")[0]) for n in (notes8, notes16))
    assert sqnr8 < 20 < sqnr16
    assert "try activations=16 (A16W8)" in notes8[4]
    assert len(notes16) == 4  # no advice


def test_digits_fidelity_note_needs_no_advice(artifacts: dict[int, Path]) -> None:
    notes = OrtNpuTarget().notes(artifacts[8])
    assert len(notes) == 4 and float(notes[3].split("SQNR ")[1].split(" dB")[0]) > 20


def test_unquantized_nodes_pairs_around_a_folded_relu() -> None:
    """The quantizer drops the Relu after a Conv (folded into its range) and leaves Abs in float."""
    from edgeopt.passes import QuantizeStaticPass
    from edgeopt.targets.npu_ops import unquantized_nodes

    proto = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 1, 4, 4] x) => (float[1, 2, 4, 4] y)
        {
            c = Conv<pads = [1, 1, 1, 1]>(x, W)
            r = Relu(c)
            y = Abs(r)
        }
    """)
    weight = np.random.default_rng(0).standard_normal((2, 1, 3, 3)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "W"))
    float_model = ir.serde.deserialize_model(proto)
    quantized = float_model.clone()
    rng = np.random.default_rng(1)
    QuantizeStaticPass(calibration=[{"x": rng.standard_normal((1, 1, 4, 4)).astype(np.float32)} for _ in range(4)],
                       per_channel=True, weight_type="int8", activation_type="uint8")(quantized)
    assert "Relu" not in {n.op_type for n in quantized.graph}
    assert unquantized_nodes(float_model, quantized) == {2}  # Abs; Conv (and its folded Relu) are QDQ
    table = partition(float_model, "qnn", unquantized={2})
    assert [(p.op, p.device, p.reason == FLOAT_NOTE) for p in table] == [
        ("Conv", "npu", False), ("Relu", "npu", False), ("Abs", "npu", True)]
