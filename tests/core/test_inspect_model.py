"""Tests for edgeopt.core.inspect_model.summarize: signature, ops, parameters, bytes and MACs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from edgeopt.core.inspect_model import TensorInfo, file_size, sample_dims, summarize
from edgeopt.core.model_io import load_model, save_model
from edgeopt.core.runtime import run_model

rng = np.random.default_rng(0)


def _ir(text: str, initializers: dict[str, np.ndarray], *, check: bool = True) -> ir.Model:
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(
        onnx.numpy_helper.from_array(array, name) for name, array in initializers.items()
    )
    if check:
        onnx.checker.check_model(model, full_check=True)
    return ir.serde.deserialize_model(model)


def _f32(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# Conv with fully known shapes, MatMul with a symbolic batch, an int64 shape constant.
CONV_MATMUL_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
net (float[1, 3, 8, 8] x, float[B, 16] z) => (float[1, 4, 8, 8] y, float[B, 2, 4] w)
{
    y = Conv<kernel_shape = [3, 3], pads = [1, 1, 1, 1]>(x, W, b)
    m = MatMul(z, M)
    shape = Constant<value = int64[3] {-1, 2, 4}>()
    w = Reshape(m, shape)
}
"""


@pytest.fixture
def conv_matmul() -> ir.Model:
    return _ir(CONV_MATMUL_TEXT, {"W": _f32(4, 3, 3, 3), "b": _f32(4), "M": _f32(16, 8)})


def test_macs_conv_known_shapes_and_matmul_symbolic_batch(conv_matmul: ir.Model) -> None:
    summary = summarize(conv_matmul)

    # Conv: 1*4*8*8 = 256 outputs (padding keeps 8x8), each 3 in-channels * 3*3 kernel = 27.
    conv = 256 * 27
    # MatMul: batch B taken as 1 -> 1x8 outputs, each a dot product of length 16.
    matmul = 8 * 16
    assert summary.macs == conv + matmul == 7040
    assert summary.macs_unknown == []


# A token model: MatMul over a symbolic batch and sequence; the count per sample grows with the sequence.
TOKENS_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
net (float[batch, seq, 16] x) => (float[batch, seq, 8] y)
{
    y = MatMul(x, M)
}
"""


def test_macs_at_the_sequence_length_of_a_data_sample() -> None:
    model = _ir(TOKENS_TEXT, {"M": _f32(16, 8)})
    feeds = {"x": _f32(5, 32, 16)}  # five samples of 32 tokens
    dims = sample_dims(model, feeds)
    assert dims == {"batch": 1, "seq": 32}  # axis 0 stacks samples: one sample counts
    at_sample = summarize(model, dims)
    assert at_sample.macs == 32 * 8 * 16 and at_sample.macs_dims == {"batch": 1, "seq": 32}
    one_token = summarize(model)
    assert one_token.macs == 8 * 16 and one_token.macs_dims == {"batch": 1, "seq": 1}
    # the count equals the multiply-adds numpy does for one sample
    x = feeds["x"][:1]
    assert at_sample.macs == x.shape[1] * x.shape[2] * 8


def test_signature_ops_parameters_and_weight_bytes(conv_matmul: ir.Model) -> None:
    summary = summarize(conv_matmul)

    assert summary.opsets == {"ai.onnx": 17}
    assert summary.ir_version == 10
    assert summary.inputs == [TensorInfo("x", "float", [1, 3, 8, 8]),
                              TensorInfo("z", "float", ["B", 16])]
    assert summary.outputs == [TensorInfo("y", "float", [1, 4, 8, 8]),
                               TensorInfo("w", "float", ["B", 2, 4])]
    assert summary.ops == {"Conv": 1, "MatMul": 1, "Constant": 1, "Reshape": 1}
    assert summary.nodes == 4
    # W 108 + b 4 + M 128 floats; the Constant's 3 int64 values.
    assert summary.parameters == 108 + 4 + 128 + 3
    assert summary.weight_bytes == {"float": (108 + 4 + 128) * 4, "int64": 3 * 8}
    assert summary.path is None and summary.file_bytes is None
    assert summary.as_dict()["inputs"][1] == {"name": "z", "dtype": "float", "shape": ["B", 16]}


def test_summarize_leaves_the_model_unchanged(conv_matmul: ir.Model) -> None:
    before = ir.serde.serialize_model(conv_matmul).SerializeToString()

    summarize(conv_matmul)

    assert ir.serde.serialize_model(conv_matmul).SerializeToString() == before
    assert conv_matmul.graph.inputs[1].shape is not None
    assert str(conv_matmul.graph.inputs[1].shape[0]) == "B"


@pytest.mark.parametrize(
    ("text", "initializers", "macs"),
    [
        pytest.param(  # group 2: each output sees 4/2 = 2 channels * 3*3 -> 18; 6*6*6 outputs
            """<ir_version: 10, opset_import: ["" : 17]>
            g (float[1, 4, 8, 8] x) => (float[1, 6, 6, 6] y)
            { y = Conv<kernel_shape = [3, 3], group = 2>(x, W) }""",
            {"W": _f32(6, 2, 3, 3)}, 6 * 6 * 6 * 18, id="grouped-conv"),
        pytest.param(  # transA: A is [K=5, M=2]; 2x3 outputs, each length 5
            """<ir_version: 10, opset_import: ["" : 17]>
            g (float[5, 2] a) => (float[2, 3] y)
            { y = Gemm<transA = 1>(a, W) }""",
            {"W": _f32(5, 3)}, 2 * 3 * 5, id="gemm-transA"),
        pytest.param(  # every input element scatters into 2 out-channels * 3*3 kernel
            """<ir_version: 10, opset_import: ["" : 17]>
            g (float[1, 4, 5, 5] x) => (float[1, 2, 7, 7] y)
            { y = ConvTranspose<kernel_shape = [3, 3]>(x, W) }""",
            {"W": _f32(4, 2, 3, 3)}, 4 * 5 * 5 * 2 * 9, id="conv-transpose"),
        pytest.param(  # batched MatMul: [S, 3, 4] @ [4, 5], S taken as 1
            """<ir_version: 10, opset_import: ["" : 17]>
            g (float[S, 3, 4] a) => (float[S, 3, 5] y)
            { y = MatMul(a, W) }""",
            {"W": _f32(4, 5)}, 3 * 5 * 4, id="batched-matmul"),
    ],
)
def test_macs_by_hand(text: str, initializers: dict[str, np.ndarray], macs: int) -> None:
    assert summarize(_ir(text, initializers)).macs == macs


def test_node_of_unknown_shape_is_listed_not_counted() -> None:
    text = """
    <ir_version: 10, opset_import: ["" : 17, "my.domain" : 1]>
    g (float[2, 4] x) => (float[2, 3] y, float[2, 3] v)
    {
        c = my.domain.Foo(x)
        y = MatMul(c, W)
        v = MatMul(x, W)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.node[1].name = "unknown_mm"
    model.graph.initializer.append(onnx.numpy_helper.from_array(_f32(4, 3), "W"))

    summary = summarize(ir.serde.deserialize_model(model))

    assert summary.macs == 2 * 3 * 4  # only the MatMul whose input shape is known
    assert summary.macs_unknown == ["unknown_mm"]
    assert summary.ops == {"MatMul": 2, "my.domain::Foo": 1}
    assert summary.opsets == {"ai.onnx": 17, "my.domain": 1}


def test_file_bytes_includes_external_data(tmp_path: Path, conv_matmul: ir.Model) -> None:
    path = save_model(conv_matmul, tmp_path / "net.onnx", external_data=True)
    data = tmp_path / "net.onnx.data"
    # W and M go to the data file (tiny tensors such as b may stay inline)
    assert data.is_file() and data.stat().st_size >= (108 + 128) * 4

    summary = summarize(load_model(path))

    assert summary.path == str(path)
    assert summary.file_bytes == path.stat().st_size + data.stat().st_size
    assert file_size(path) == summary.file_bytes
    assert summary.parameters == 108 + 4 + 128 + 3
    assert summary.weight_bytes == {"float": (108 + 4 + 128) * 4, "int64": 3 * 8}


def test_file_bytes_single_file(tmp_path: Path, conv_matmul: ir.Model) -> None:
    path = save_model(conv_matmul, tmp_path / "net.onnx")

    summary = summarize(load_model(path))

    assert not (tmp_path / "net.onnx.data").exists()
    assert summary.file_bytes == path.stat().st_size > (108 + 4 + 128) * 4


def test_file_bytes_counts_external_data_under_any_name(tmp_path: Path, conv_matmul: ir.Model) -> None:
    proto = ir.serde.serialize_model(conv_matmul)
    path = tmp_path / "net.onnx"
    onnx.save_model(proto, path, save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    weights = tmp_path / "weights.bin"
    assert weights.is_file()

    summary = summarize(load_model(path))

    assert summary.file_bytes == path.stat().st_size + weights.stat().st_size


def test_ir3_initializers_listed_as_inputs_are_parameters(tmp_path: Path) -> None:
    # Before IR 4 every initializer had to be a graph input too; they are still the weights.
    h = onnx.helper
    weight, bias = _f32(16, 8), _f32(8)
    graph = h.make_graph(
        [h.make_node("Gemm", ["x", "W", "b"], ["y"])], "ir3",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 16]),
         h.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [16, 8]),
         h.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [8])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8])],
        [onnx.numpy_helper.from_array(weight, "W"), onnx.numpy_helper.from_array(bias, "b")],
    )
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 9)], ir_version=3)
    onnx.checker.check_model(proto, full_check=True)
    path = tmp_path / "ir3.onnx"
    onnx.save(proto, str(path))
    x = _f32(2, 16)
    np.testing.assert_allclose(run_model(str(path), {"x": x})["y"], x @ weight + bias,
                               rtol=1e-5, atol=1e-5)

    summary = summarize(load_model(path))

    assert summary.ir_version == 3
    assert summary.inputs == [TensorInfo("x", "float", [2, 16])]
    assert summary.parameters == 16 * 8 + 8
    assert summary.weight_bytes == {"float": (16 * 8 + 8) * 4}
    assert summary.macs == 2 * 8 * 16


def test_macs_through_computed_pads_of_a_raw_export() -> None:
    """A Pad whose pads come from Shape arithmetic (TF "same" padding, as exporters emit it)
    hides the Conv's input shape from shape inference; the MACs are still counted."""
    text = """
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[1, 2, 7, 7] x) => (float[1, 4, 3, 3] y)
    {
        s = Shape(x)
        h = Slice(s, two, three)
        odd = Mod(h, two)
        extra = Sub(two, odd)
        zeros = ConstantOfShape<value = int64[1] {0}>(six)
        pads = Concat<axis = 0>(zeros, extra, extra)
        p = Pad(x, pads)
        y = Conv<kernel_shape = [3, 3], strides = [2, 2]>(p, W)
    }
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend([
        onnx.numpy_helper.from_array(_f32(4, 2, 3, 3), "W"),
        onnx.numpy_helper.from_array(np.array([2], np.int64), "two"),
        onnx.numpy_helper.from_array(np.array([3], np.int64), "three"),
        onnx.numpy_helper.from_array(np.array([6], np.int64), "six"),
    ])
    onnx.checker.check_model(model, full_check=True)
    ir_model = ir.serde.deserialize_model(model)
    out = run_model(ir_model, {"x": _f32(1, 2, 7, 7)})
    assert out["y"].shape == (1, 4, 3, 3)  # pads [0,0,0,0, 0,0,1,1]: 8x8 in, 3x3 out

    summary = summarize(ir_model)

    assert summary.macs_unknown == []
    assert summary.macs == 4 * 3 * 3 * 2 * 3 * 3
