"""Tests for ort-gpu: float16 weights/activations, float32 I/O, verified against float32.

No CUDA EP is installed here, so the artifact runs on ORT's CPU EP (see
``targets/ort_gpu.py``); the GPU-only claims are in the notes, not asserted.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from edgeopt.cli.demo_model import ONNX_MODEL, load_data
from edgeopt.core.errors import ExportError
from edgeopt.core.model_io import load_model
from edgeopt.core.runtime import run_model
from edgeopt.targets import TARGETS, OrtGpuTarget
from edgeopt.targets.ort_gpu import cpu_fp16_ops, providers


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[ir.Model, Path]:
    model = load_model(ONNX_MODEL)
    calibration = [{"image": load_data().x_train[:64]}]
    return model, OrtGpuTarget().export(model.clone(), tmp_path_factory.mktemp("gpu"), calibration=calibration)


def test_fp16_weights_fp32_io(exported: tuple[ir.Model, Path]) -> None:
    _, artifact = exported
    proto = onnx.load(artifact)
    onnx.checker.check_model(proto, full_check=True)

    float_weights = [i for i in proto.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT,
                                                                         onnx.TensorProto.FLOAT16)]
    assert float_weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in float_weights)
    signature = OrtGpuTarget().signature(artifact)
    assert [s.dtype for s in (*signature.inputs, *signature.outputs)] == ["float32", "float32"]
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    compute = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(compute) == 3 and all(types[n.output[0]] == onnx.TensorProto.FLOAT16 for n in compute)


def test_outputs_agree_with_fp32(exported: tuple[ir.Model, Path]) -> None:
    model, artifact = exported
    data = load_data()

    got = OrtGpuTarget().run(artifact, {"image": data.x_val})["logits"]
    expected = run_model(model, {"image": data.x_val})["logits"]

    assert got.dtype == np.float32
    # float16 keeps ~3 significant digits; logits here are O(10), so 0.05 is ~5e-3 relative.
    np.testing.assert_allclose(got, expected, atol=0.05)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.99
    assert not np.array_equal(got, expected), "no float16 rounding at all: was anything converted?"


def test_notes_record_deviation_and_cpu_emulated_ops(exported: tuple[ir.Model, Path]) -> None:
    _, artifact = exported
    notes = OrtGpuTarget().notes(artifact)

    match = re.match(r"fp16 vs fp32 on (.*): max abs error ([0-9.e-]+), cosine ([0-9.]+)", notes[0])
    assert match is not None, notes
    assert float(match.group(2)) < 0.05 and float(match.group(3)) > 0.9999
    if "CUDAExecutionProvider" not in providers():
        assert match.group(1) == "CPU EP (no CUDA EP here)"
        emulated = notes[1].rpartition(": ")[2].split(", ")
        assert emulated and all(("", op) not in cpu_fp16_ops() for op in emulated)
        assert "Conv" in emulated  # ORT's CPU EP has no float16 Conv kernel in this build


LOGSUMEXP_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
logsumexp (float[2, 4] x) => (float[2, 1] y)
{
    e = Exp(x)
    s = ReduceSum<keepdims = 1>(e, one)
    y = Log(s)
}
"""

SCALE_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
scale (float[2, 4] x) => (float[2, 4] y)
{
    h = Mul(x, k)
    y = Max(h, x)
}
"""


def _parse(text: str, **constants: np.ndarray) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in constants.items())
    return ir.serde.deserialize_model(proto)


def test_fragile_ops_stay_fp32(tmp_path: Path) -> None:
    model = _parse(LOGSUMEXP_TEXT, one=np.array([1], np.int64))
    big = [{"x": np.full((2, 4), 12.0, np.float32)}]  # exp(12) = 162755 > 65504, float16's max

    artifact = OrtGpuTarget().export(model.clone(), tmp_path, calibration=big)

    assert {n.op_type for n in onnx.load(artifact).graph.node} - {"Cast"} == {"Exp", "ReduceSum", "Log"}
    inferred = onnx.shape_inference.infer_shapes(onnx.load(artifact))
    assert onnx.TensorProto.FLOAT16 not in {v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    np.testing.assert_allclose(OrtGpuTarget().run(artifact, big[0])["y"], np.full((2, 1), 12 + np.log(4)),
                               rtol=1e-6)


def test_activation_beyond_fp16_range_is_refused(tmp_path: Path) -> None:
    model = _parse(SCALE_TEXT, k=np.array(1000.0, np.float32))
    data = [{"x": np.full((2, 4), 100.0, np.float32)}]  # h = 1e5: finite in float32, inf in float16

    with pytest.raises(ExportError, match="output 'y' overflows in float16.*add it to op_block_list"):
        OrtGpuTarget().export(model.clone(), tmp_path / "bad", calibration=data)
    assert not (tmp_path / "bad" / "model.onnx").exists()

    artifact = OrtGpuTarget(op_block_list=("Mul", "Max")).export(model.clone(), tmp_path / "ok", calibration=data)
    np.testing.assert_allclose(OrtGpuTarget().run(artifact, data[0])["y"], np.full((2, 4), 1e5), rtol=1e-6)


def test_registered_for_compile() -> None:
    cls = TARGETS["ort-gpu"]
    assert (cls.runtime, cls.device, cls.precision, cls.needs_calibration) == ("onnxruntime", "gpu", "fp16", False)
