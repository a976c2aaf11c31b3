"""TFLite targets: real onnx2tf conversions run through the real LiteRT interpreter.

Two models are converted once per test session (session-scoped fixtures, and
the conversion cache shared by xdist workers): the demo's digits CNN (an NCHW
image input with a dynamic batch) and a small transformer encoder block built
here (a ``[1, 16, 64]`` non-image input, the shape onnx2tf would transpose).
Tolerances: float32 artifacts agree with ONNX Runtime to float rounding; fp16
weights to about 1e-2 of the output range; int8 artifacts in units of the
output's quantization scale and by top-1 agreement.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from edgeopt.cli.demo_model import ONNX_MODEL, load_data
from edgeopt.core.errors import CalibrationDataError, ModelLoadError, UnsupportedOpError
from edgeopt.core.runtime import Feeds, run_model
from edgeopt.core.target import Target
from edgeopt.data.readers import open_reader
from edgeopt.deploy.target_registry import get_target, list_targets
from edgeopt.targets import TFLiteCpuInt8Target, TFLiteNpuTarget, TFLiteTarget, onnx2tf_convert, tflite_io

_MISSING = [m for m in ("tensorflow", "onnx2tf", "ai_edge_litert") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.tflite,
    pytest.mark.skipif(bool(_MISSING), reason=f"TFLite backend not installed ({', '.join(_MISSING)}): "
                       f"{tflite_io.INSTALL_HINT}"),
]
TFLITE_TARGETS = ("tflite-cpu", "tflite-cpu-int8", "tflite-gpu", "tflite-npu")


@dataclass
class Converted:
    source: ir.Model  # as built (dynamic batch where it has one)
    model: ir.Model  # after the targets' prepare(): static shapes, cleaned up
    feeds: Feeds  # validation feeds, ONNX convention
    reference: np.ndarray  # ONNX Runtime's output on them
    artifacts: dict[str, Path]
    quantized_ahead: int  # full-integer files in the cache right after the first (float) export


@pytest.fixture(scope="session")
def tflite_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # xdist workers share the parent of their temp folders: one conversion per model for the whole run.
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "edgeopt-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEOPT_CACHE_DIR", str(root))
        yield root / "tflite"


def _export_all(source: ir.Model, feeds: Feeds, calibration: list[Feeds], out: Path) -> Converted:
    model = source.clone()
    get_target("tflite-cpu").prepare()(model)
    reference = next(iter(run_model(source, feeds).values()))
    # In compile's order: the first (float) export gets the calibration data too; it makes no int8 file.
    first = get_target("tflite-cpu").export(model, out / "tflite-cpu", calibration=calibration)
    quantized_ahead = len(list((onnx2tf_convert.cache_root() / onnx2tf_convert.cache_key(model))
                               .glob("model_int8_*.tflite")))
    artifacts = {name: get_target(name).export(model, out / name, calibration=calibration)
                 for name in TFLITE_TARGETS[1:]}
    return Converted(source, model, feeds, reference, {"tflite-cpu": first, **artifacts}, quantized_ahead)


@pytest.fixture(scope="session")
def digits(tflite_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    data = load_data()
    calibration = [{"image": data.x_train[i:i + 32]} for i in range(0, 256, 32)]
    return _export_all(ir.load(str(ONNX_MODEL)), {"image": data.x_val[:96]}, calibration,
                       tmp_path_factory.mktemp("digits"))


ENCODER_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
encoder (float[1, 16, 64] tokens) => (float[1, 16, 8] out)
{
    q = MatMul(tokens, Wq)
    k = MatMul(tokens, Wk)
    v = MatMul(tokens, Wv)
    kt = Transpose<perm = [0, 2, 1]>(k)
    raw = MatMul(q, kt)
    scores = Mul(raw, scale)
    attn = Softmax<axis = -1>(scores)
    mixed = MatMul(attn, v)
    res = Add(mixed, tokens)
    norm = LayerNormalization<axis = -1>(res, gamma, beta)
    hidden = MatMul(norm, W1)
    act = Relu(hidden)
    ffn = MatMul(act, W2)
    res2 = Add(ffn, norm)
    out = MatMul(res2, Wo)
}
"""


@pytest.fixture(scope="session")
def encoder(tflite_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    rng = np.random.default_rng(0)
    weights = {name: (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32) for name, shape in
               {"Wq": (64, 64), "Wk": (64, 64), "Wv": (64, 64), "W1": (64, 128), "W2": (128, 64),
                "Wo": (64, 8)}.items()}
    weights.update(scale=np.array(0.125, np.float32), gamma=np.ones(64, np.float32),
                   beta=np.zeros(64, np.float32))
    proto = onnx.parser.parse_model(ENCODER_TEXT)
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(a, n) for n, a in weights.items())
    onnx.checker.check_model(proto, full_check=True)
    calibration = [{"tokens": np.random.default_rng(seed).standard_normal((1, 16, 64)).astype(np.float32)}
                   for seed in range(1, 65)]
    feeds = {"tokens": np.random.default_rng(100).standard_normal((1, 16, 64)).astype(np.float32)}
    return _export_all(ir.serde.deserialize_model(proto), feeds, calibration, tmp_path_factory.mktemp("encoder"))


def _run(converted: Converted, name: str) -> np.ndarray:
    outputs = get_target(name).run(converted.artifacts[name], converted.feeds)
    assert list(outputs) == [v.name for v in converted.model.graph.outputs]
    return next(iter(outputs.values()))


def _top1(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.reshape(-1, a.shape[-1]).argmax(-1) == b.reshape(-1, b.shape[-1]).argmax(-1)).mean())


def test_targets_are_registered_with_device_runtime_and_precision() -> None:
    targets = {name: get_target(name) for name in TFLITE_TARGETS}

    assert set(TFLITE_TARGETS) <= set(list_targets())
    assert {t.runtime for t in targets.values()} == {"litert"}
    assert [(t.device, t.precision, t.needs_calibration) for t in targets.values()] == [
        ("cpu", "fp32", False), ("cpu", "int8-dynamic", False), ("gpu", "fp16", False), ("npu", "int8", True)]


def test_float32_digits_runs_in_litert_like_onnx(digits: Converted) -> None:
    target: Target = get_target("tflite-cpu")
    signature = target.signature(digits.artifacts["tflite-cpu"])

    (image,) = signature.inputs
    assert (image.name, image.onnx_name, image.shape, image.dtype, image.layout) == (
        "image", "image", (1, 8, 8, 1), "float32", "NHWC")  # NCHW [N, 1, 8, 8] -> static NHWC
    got = _run(digits, "tflite-cpu")
    assert got.shape == digits.reference.shape == (96, 10)  # 96 rows through a batch-1 artifact
    np.testing.assert_allclose(got, digits.reference, rtol=1e-4, atol=1e-4)


def test_encoder_input_keeps_its_shape(encoder: Converted) -> None:
    signature = get_target("tflite-cpu").signature(encoder.artifacts["tflite-cpu"])

    assert [(s.shape, s.layout) for s in signature.inputs] == [((1, 16, 64), None)]  # not [1, 64, 16]
    assert [s.shape for s in signature.outputs] == [(1, 16, 8)]
    np.testing.assert_allclose(_run(encoder, "tflite-cpu"), encoder.reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", ["digits", "encoder"])
def test_gpu_artifact_has_fp16_weights_and_fp32_io(model: str, request: pytest.FixtureRequest) -> None:
    converted: Converted = request.getfixturevalue(model)
    types = tflite_io.tensor_types(converted.artifacts["tflite-gpu"])

    assert "FLOAT16" in types["constants"] and "FLOAT32" not in types["constants"]
    assert set(types["io"]) == {"FLOAT32"}
    got = _run(converted, "tflite-gpu")
    # fp16 weights (11-bit mantissa): within 1 % of the output range.
    assert np.abs(got - converted.reference).max() <= 1e-2 * np.abs(converted.reference).max()
    assert _top1(got, converted.reference) == 1.0


@pytest.mark.parametrize("model", ["digits", "encoder"])
def test_dynamic_range_int8_has_int8_weights_and_float_io(model: str, request: pytest.FixtureRequest) -> None:
    converted: Converted = request.getfixturevalue(model)
    artifact = converted.artifacts["tflite-cpu-int8"]
    types = tflite_io.tensor_types(artifact)

    assert "INT8" in types["constants"] and set(types["io"]) == {"FLOAT32"}
    assert tflite_io.float_ops(artifact), "dynamic range keeps float activations"
    assert artifact.stat().st_size < 0.5 * converted.artifacts["tflite-cpu"].stat().st_size
    got = _run(converted, "tflite-cpu-int8")
    assert np.abs(got - converted.reference).max() <= 5e-2 * np.abs(converted.reference).max()
    assert _top1(got, converted.reference) >= 0.95


@pytest.mark.parametrize("model", ["digits", "encoder"])
def test_npu_artifact_is_full_integer_with_int8_io(model: str, request: pytest.FixtureRequest) -> None:
    converted: Converted = request.getfixturevalue(model)
    artifact = converted.artifacts["tflite-npu"]
    signature = get_target("tflite-npu").signature(artifact)

    assert tflite_io.float_ops(artifact) == []
    assert set(tflite_io.tensor_types(artifact)["io"]) == {"INT8"}
    assert all(s.dtype == "int8" and s.scale and s.zero_point is not None
               for s in (*signature.inputs, *signature.outputs))
    got = _run(converted, "tflite-npu")
    scale = signature.outputs[0].scale
    assert scale is not None
    # Rounding at every layer adds up: within 6 output quantization steps, and the same top-1 mostly.
    assert np.abs(got - converted.reference).max() <= 6 * scale
    assert _top1(got, converted.reference) >= 0.9


def test_npu_digits_accuracy_close_to_fp32(digits: Converted) -> None:
    data = load_data()
    feeds = {"image": data.x_val}
    reference = next(iter(run_model(digits.source, feeds).values()))
    got = get_target("tflite-npu").run(digits.artifacts["tflite-npu"], feeds)["logits"]

    fp32, int8 = [float((x.argmax(1) == data.y_val).mean()) for x in (reference, got)]
    assert fp32 > 0.9
    assert int8 >= fp32 - 0.02, (fp32, int8)


def test_run_is_decode_of_native_run_of_encoded_feeds(digits: Converted) -> None:
    target, artifact = get_target("tflite-npu"), digits.artifacts["tflite-npu"]
    spec = target.signature(artifact).inputs[0]
    assert spec.scale is not None and spec.zero_point is not None

    native = target.encode_inputs(artifact, digits.feeds)

    expected = np.clip(np.round(digits.feeds["image"].transpose(0, 2, 3, 1) / spec.scale) + spec.zero_point,
                       -128, 127).astype(np.int8)
    np.testing.assert_array_equal(native["image"], expected)
    raw = target.run_native(artifact, native)
    assert next(iter(raw.values())).dtype == np.int8
    np.testing.assert_array_equal(target.decode_outputs(artifact, raw)["logits"],
                                  target.run(artifact, digits.feeds)["logits"])


def test_one_conversion_serves_the_float_targets(digits: Converted, encoder: Converted, tflite_cache: Path) -> None:
    for converted in (digits, encoder):
        folder = tflite_cache / onnx2tf_convert.cache_key(converted.model)
        cached = {p.read_bytes() for p in folder.glob("*.tflite")}

        floats = {a.read_bytes() for name, a in converted.artifacts.items() if name != "tflite-npu"}
        assert len(floats) == 3 and floats <= cached  # float32, float16, dynamic int8
        assert converted.quantized_ahead == 0
        # tflite-npu converts the model with its weights moved by round-weights (digits); the encoder's
        # nodes have no names, which learned rounding needs, so its NPU file comes from this conversion
        npu = converted.artifacts["tflite-npu"].read_bytes()
        assert (npu in cached) == (converted is encoder) and len(cached) == 3 + (converted is encoder)
        for artifact in converted.artifacts.values():
            assert tflite_io.read_io(artifact)["inputs"][0]["onnx_name"] == converted.model.graph.inputs[0].name
    assert "tensorflow" not in sys.modules and "onnx2tf" not in sys.modules  # converted in a subprocess


def test_export_reuses_the_cache_and_leaves_the_model_alone(digits: Converted, tmp_path: Path) -> None:
    before = hashlib.sha256(ONNX_MODEL.read_bytes()).hexdigest()
    target = get_target("tflite-gpu")

    artifact = target.export(digits.model, tmp_path)

    assert artifact.read_bytes() == digits.artifacts["tflite-gpu"].read_bytes()
    assert hashlib.sha256(ONNX_MODEL.read_bytes()).hexdigest() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model_float16.tflite"]  # no staging file left


def test_npu_needs_calibration(digits: Converted, tmp_path: Path) -> None:
    with pytest.raises(CalibrationDataError, match="target 'tflite-npu' needs calibration data"):
        get_target("tflite-npu").export(digits.model, tmp_path)
    assert not list(tmp_path.iterdir())


def test_npu_rebatches_a_many_row_calibration_file_like_ort_npu(digits: Converted, tmp_path: Path) -> None:
    # One 256-row file against the batch-1 model: re-batched to the static batch (data.readers.batches), the same
    # samples as the fixture's 32-row feeds, so the same calibration hash and the cached int8 file, not an error.
    np.savez(tmp_path / "calib.npz", image=load_data().x_train[:256])
    reader = open_reader(tmp_path / "calib.npz", digits.model)
    shape = digits.model.graph.inputs[0].shape
    assert shape is not None and shape[0] == 1

    artifact = get_target("tflite-npu").export(digits.model, tmp_path / "npu", calibration=reader)
    ort_artifact = get_target("ort-npu").export(digits.model, tmp_path / "ort", calibration=reader)

    assert artifact.read_bytes() == digits.artifacts["tflite-npu"].read_bytes()
    assert ort_artifact.is_file()
    rows = [len(f["image"]) for f in onnx2tf_convert.calibration_batches(digits.model, reader, limit=10)]
    assert rows == [1] * 10


def test_artifact_without_edgeopt_metadata_is_refused(digits: Converted, tflite_cache: Path) -> None:
    raw = next(tflite_cache.glob("*/saved_model/model_float32.tflite"))  # onnx2tf's own output
    with pytest.raises(ModelLoadError, match="no edgeopt I/O metadata"):
        tflite_io.read_io(raw)


UNSUPPORTED_TEXT = """
<ir_version: 10, opset_import: ["" : 21, "my.domain" : 1]>
bad (float[N, seq, 4] x, int32[1] like) => (float[N, seq, 4] y)
{
    c = CastLike(x, like)
    f = Cast<to = 1>(c)
    g = my.domain.Gizmo(f)
    y = Relu(g)
}
"""


def test_check_lists_every_unsupported_node_and_export_refuses(tmp_path: Path) -> None:
    proto = onnx.parser.parse_model(UNSUPPORTED_TEXT)
    for node, name in zip(proto.graph.node, ["castlike_node", "cast_node", "gizmo_node", "relu_node"], strict=True):
        node.name = name
    model = ir.serde.deserialize_model(proto)
    target = get_target("tflite-cpu")

    issues = target.check(model)

    assert [(i.node, i.op) for i in issues] == [("x", "graph input"), ("castlike_node", "CastLike"),
                                               ("gizmo_node", "my.domain::Gizmo")]
    assert "dimension 1 ('seq') is dynamic" in issues[0].message and "fix-static-shapes" in issues[0].hint
    assert "no converter for CastLike" in issues[1].message
    with pytest.raises(UnsupportedOpError, match="cannot run 3 node") as error:
        target.export(model, tmp_path / "out")
    assert "castlike_node" in str(error.value) and "gizmo_node" in str(error.value)
    assert not (tmp_path / "out").exists()



SIN_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
wavy (float[N, 16] x) => (float[N, 8] y)
{
    h = MatMul(x, W)
    s = Sin(h)
    y = Relu(s)
}
"""


def test_npu_fails_listing_the_ops_left_in_float(tflite_cache: Path, tmp_path: Path) -> None:
    # TFLite has no int8 kernel for SIN: the conversion keeps it in float, the target refuses.
    proto = onnx.parser.parse_model(SIN_TEXT)
    weight = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "W"))
    for node, name in zip(proto.graph.node, ["proj", "wave", "act"], strict=True):
        node.name = name
    source = ir.serde.deserialize_model(proto)
    model = source.clone()
    TFLiteTarget(batch_size=4).prepare()(model)  # a static batch of 4 this time
    calibration = [{"x": np.random.default_rng(seed).standard_normal((2, 16)).astype(np.float32)}
                   for seed in range(4)]

    with pytest.raises(UnsupportedOpError, match=r"1 op\(s\) stay in float after int8 conversion: SIN") as error:
        TFLiteNpuTarget(batch_size=4).export(model, tmp_path / "npu", calibration=calibration)

    assert "(ONNX node(s) 'wave')" in str(error.value)
    assert not (tmp_path / "npu").exists()
    # The same model is fine where float ops are allowed, from the same cached conversion.
    target = TFLiteCpuInt8Target(batch_size=4)
    artifact = target.export(model, tmp_path / "cpu")
    assert target.signature(artifact).inputs[0].shape == (4, 16)
    x = {"x": np.random.default_rng(9).standard_normal((6, 16)).astype(np.float32)}  # 4 + 2 padded to 4
    got = target.run(artifact, x)["y"]
    assert got.shape == (6, 8)
    np.testing.assert_allclose(got, run_model(source, x)["y"], atol=0.05)  # int8 weights: |error| of h ~1e-2


def test_prepare_fixes_batch_and_sequence_so_check_passes() -> None:
    text = """
    <ir_version: 10, opset_import: ["" : 17]>
    seq (float[N, seq, 4] x) => (float[N, seq, 4] y) { y = Relu(x) }
    """
    model = ir.serde.deserialize_model(onnx.parser.parse_model(text))
    assert [i.op for i in get_target("tflite-cpu").check(model)] == ["graph input"]  # 'seq'; the batch is fine

    TFLiteTarget(max_sequence_length=16).prepare()(model)

    assert [d for d in model.graph.inputs[0].shape] == [1, 16, 4]
    assert TFLiteTarget().check(model) == []
    x = np.random.default_rng(0).standard_normal((1, 16, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_model(model, {"x": x})["y"], np.maximum(x, 0))


def _two_subgraph_tflite(path: Path) -> Path:
    """A flatbuffer whose main graph is int8 and whose second subgraph (a WHILE body, say) has a float op."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT()
    model.version = 3
    model.buffers = [schema.BufferT(), schema.BufferT()]
    model.buffers[1].data = np.frombuffer(np.float16([1, 2]).tobytes(), np.uint8)
    codes = []
    for op in (schema.BuiltinOperator.ADD, schema.BuiltinOperator.SIN):
        code = schema.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = op, op, 1
        codes.append(code)
    model.operatorCodes = codes

    def subgraph(name: str, dtype: int, opcode: int, weight_buffer: int) -> object:
        graph = schema.SubGraphT()
        graph.name = name
        tensors = []
        for tensor_name, buffer in (("x", 0), ("w", weight_buffer), ("y", 0)):
            tensor = schema.TensorT()
            tensor.name, tensor.type, tensor.buffer, tensor.shape = tensor_name, dtype, buffer, [2]
            tensors.append(tensor)
        graph.tensors, graph.inputs, graph.outputs = tensors, [0], [2]
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = opcode, [0, 1], [2]
        graph.operators = [op]
        return graph

    model.subgraphs = [subgraph("main", schema.TensorType.INT8, 0, 0),
                       subgraph("body", schema.TensorType.FLOAT16, 1, 1)]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def test_float_ops_and_tensor_types_look_at_every_subgraph(tmp_path: Path) -> None:
    artifact = _two_subgraph_tflite(tmp_path / "two.tflite")

    assert tflite_io.float_ops(artifact) == [("SIN", "body/y")]  # the main graph's int8 ADD is not listed
    assert tflite_io.tensor_types(artifact) == {"constants": ["FLOAT16"], "io": ["INT8", "INT8"]}


def _per_channel_int8_weights(artifact: Path) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(codes, scales, channel axis) of every per-channel int8 constant of the artifact, read from its flatbuffer."""
    model, int8 = tflite_io._root(artifact), tflite_io._schema().TensorType.INT8
    found = []
    graph = model.Subgraphs(0)
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        buffer = model.Buffers(tensor.Buffer())
        quantization = tensor.Quantization()
        if tensor.Type() != int8 or buffer.DataLength() == 0 or quantization is None \
                or quantization.ScaleLength() < 2:
            continue
        codes = buffer.DataAsNumpy().view(np.int8).reshape(tensor.ShapeAsNumpy())
        found.append((codes, quantization.ScaleAsNumpy(), quantization.QuantizedDimension()))
    return found


def test_npu_artifact_holds_the_learned_int8_codes(digits: Converted) -> None:
    """TFLite requantizes the weights round-weights moved: each per-channel weight of the artifact has the scales
    max |w_c| / 127 and, channel by channel, exactly the learned codes (not the nearest ones)."""
    from edgeopt.calibration.rounding import weight_layers
    from edgeopt.passes import RoundWeightsPass

    data = load_data()
    rounded = digits.model.clone()
    RoundWeightsPass(calibration=[{"image": data.x_train[i:i + 32]} for i in range(0, 256, 32)],
                     samples=200, batch_size=1)(rounded)
    stored = _per_channel_int8_weights(digits.artifacts["tflite-npu"])
    matched = differs_from_nearest = 0
    for layer, original in zip(weight_layers(rounded), weight_layers(digits.model), strict=True):
        axis = layer.channel_axis
        per_channel = np.moveaxis(layer.weight.astype(np.float64), axis, 0).reshape(layer.weight.shape[axis], -1)
        scales = np.abs(per_channel).max(axis=1) / 127
        twin = [(c, s, d) for c, s, d in stored if s.shape == scales.shape and np.allclose(s, scales, rtol=1e-5)]
        if not twin:
            continue  # a layer TFLite stores per tensor (FullyConnected)
        codes, _, dim = twin[0]
        learned = np.round(per_channel / scales[:, None])
        tflite = np.moveaxis(codes, dim, 0).reshape(learned.shape)
        np.testing.assert_array_equal(np.sort(tflite, axis=1), np.sort(learned, axis=1))
        nearest = np.round(np.moveaxis(original.weight, axis, 0).reshape(learned.shape) / scales[:, None])
        differs_from_nearest += int((np.sort(nearest, axis=1) != np.sort(learned, axis=1)).any())
        matched += 1
    assert matched >= 2 and differs_from_nearest >= 1
