"""Static int8 of a transformer-like graph quantizes MatMul/Gemm/Gather only unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.core.model_io import load_model
from edgeopt.core.runtime import run_model
from edgeopt.passes.quantize_common import is_transformer_like
from edgeopt.quantization.quantize import QuantizeConfig, quantize_file

S, D = 8, 16


def _attention(path: Path) -> Path:
    """x -> LayerNorm -> Q, K projections -> Softmax(Q Kᵀ / 4) -> · V(x) -> + x -> y."""
    rng = np.random.default_rng(0)
    inits = {name: (rng.standard_normal((D, D)) / 4).astype(np.float32) for name in ("Wq", "Wk", "Wv")}
    inits |= {"g": np.ones(D, np.float32), "b": np.zeros(D, np.float32), "four": np.array(4.0, np.float32)}
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["h"], axis=-1, name="ln"),
        helper.make_node("MatMul", ["h", "Wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["h", "Wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["h", "Wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="kt"),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Div", ["s", "four"], ["s4"], name="scale"),
        helper.make_node("Softmax", ["s4"], ["p"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["p", "v"], ["a"], name="context"),
        helper.make_node("Add", ["a", "x"], ["y"], name="residual"),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", S, D]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "attention", vi[:1], vi[1:], [nh.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _quantized_tensors(model: ir.Model) -> set[str]:
    """Names of the float activations that get a QuantizeLinear."""
    return {str(n.inputs[0].name) for n in model.graph if n.op_type == "QuantizeLinear" and n.inputs[0] is not None}


@pytest.mark.parametrize("op_types", [(), ("all",)])
def test_transformer_default_quantizes_matmuls_only(tmp_path: Path, op_types: tuple[str, ...]) -> None:
    model_path = _attention(tmp_path / "attn.onnx")
    assert is_transformer_like(load_model(model_path))
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((4, S, D)).astype(np.float32)} for _ in range(4)]
    out = tmp_path / "q.onnx"
    result = quantize_file(model_path, out, QuantizeConfig(op_types=op_types), calibration=calib)
    quantized = load_model(out)
    quantized_tensors = _quantized_tensors(quantized)
    assert {"h", "q", "kt", "p", "v"} <= quantized_tensors  # every MatMul input, both ways
    if op_types:
        assert result.op_types == ["all"] and "s4" in quantized_tensors  # the Softmax input too
    else:
        assert result.op_types == ["MatMul", "Gemm", "Gather"] and not {"s4", "y"} & quantized_tensors
    test = {"x": rng.standard_normal((2, S, D)).astype(np.float32)}
    ref, got = run_model(load_model(model_path), test)["y"], run_model(quantized, test)["y"]
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
    assert result.score > 0.99  # cosine with the float output on the evaluation data


def test_a_cnn_is_not_transformer_like() -> None:
    model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 17]>
    cnn (float[N, 3, 8, 8] x, float[4, 3, 3, 3] W) => (float[N, 4] y)
    {
        c = Conv(x, W)
        p = GlobalAveragePool(c)
        f = Flatten(p)
        y = Softmax(f)
    }
    """)
    assert not is_transformer_like(model)


def _norm_then_branches(path: Path, *, rows: int = 0) -> Path:
    """(ids -> Gather(table) ->) LayerNorm -> h; y = h · W (quantized); z = Tanh(h) (a float consumer of h)."""
    rng = np.random.default_rng(2)
    inits = {"W": (rng.standard_normal((D, D)) / 4).astype(np.float32),
             "g": np.ones(D, np.float32), "b": np.zeros(D, np.float32)}
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["h"], axis=-1, name="ln"),
             helper.make_node("MatMul", ["h", "W"], ["y"], name="proj"),
             helper.make_node("Tanh", ["h"], ["z"], name="tanh")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", S, D])]
    if rows:
        # rows of very different sizes and a few outlier columns, as embedding tables have
        table = rng.standard_normal((rows, D)) * np.exp(rng.uniform(-3, 0, (rows, 1)))
        table[:, :2] *= 8
        inits["table"] = table.astype(np.float32)
        nodes.insert(0, helper.make_node("Gather", ["table", "ids"], ["x"], axis=0, name="lookup"))
        inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", S])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", S, D]) for n in ("y", "z")]
    graph = helper.make_graph(nodes, "branches", inputs, outputs, [nh.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_float_consumers_read_the_float_tensor(tmp_path: Path) -> None:
    """h is quantized for the MatMul only: the Tanh beside it computes exactly what the float model does."""
    model_path = _norm_then_branches(tmp_path / "m.onnx")
    rng = np.random.default_rng(3)
    calib = [{"x": rng.standard_normal((4, S, D)).astype(np.float32)} for _ in range(4)]
    # without SmoothQuant's Mul in between, h itself is the MatMul's quantized input
    quantize_file(model_path, tmp_path / "q.onnx", QuantizeConfig(cpu="x86-vnni", smooth=False), calibration=calib)
    quantized = load_model(tmp_path / "q.onnx")
    assert "h" in _quantized_tensors(quantized)
    tanh = next(n for n in quantized.graph if n.op_type == "Tanh")
    assert tanh.inputs[0] is not None and tanh.inputs[0].producer().op_type == "LayerNormalization"  # type: ignore[union-attr]
    test = {"x": rng.standard_normal((2, S, D)).astype(np.float32)}
    ref, got = run_model(load_model(model_path), test), run_model(quantized, test)
    np.testing.assert_array_equal(got["z"], ref["z"])
    y_error = np.abs(got["y"] - ref["y"]).max()
    assert 0 < y_error < 0.05 * np.abs(ref["y"]).max()  # the MatMul is int8, and close


def test_lookup_tables_get_a_scale_per_row(tmp_path: Path) -> None:
    rows = 2048
    model_path = _norm_then_branches(tmp_path / "m.onnx", rows=rows)
    rng = np.random.default_rng(4)
    calib = [{"ids": rng.integers(0, rows, (4, S)).astype(np.int64)} for _ in range(4)]
    quantize_file(model_path, tmp_path / "q.onnx", QuantizeConfig(cpu="x86-vnni"), calibration=calib)
    quantized = load_model(tmp_path / "q.onnx")
    gather = next(n for n in quantized.graph if n.op_type == "Gather")
    dq = gather.inputs[0].producer()  # type: ignore[union-attr]
    assert dq is not None and dq.op_type == "DequantizeLinear" and dq.attributes.get_int("axis") == 0
    codes, scale = (v.const_value.numpy() for v in dq.inputs[:2])  # type: ignore[union-attr]
    assert codes.dtype == np.int8 and scale.shape == (rows,)
    table = load_model(model_path).graph.initializers["table"].const_value.numpy()  # type: ignore[union-attr]
    dequantized = codes.astype(np.float32) * scale[:, None]
    assert np.all(np.abs(dequantized - table) <= scale[:, None] / 2 + 1e-7)
    # ORT runs the table as stored: the graph's output equals the float model fed the dequantized rows
    ids = {"ids": rng.integers(0, rows, (2, S)).astype(np.int64)}
    got = run_model(quantized, ids)["z"]
    np.testing.assert_allclose(got, np.tanh(_layer_norm(dequantized[ids["ids"]])), atol=1e-5)
    # and a scale per row beats one scale for the table (what ORT's emitter gives) by far
    def sqnr(approx: np.ndarray) -> float:
        return float(10 * np.log10((table**2).sum() / ((table - approx) ** 2).sum()))
    step = np.abs(table).max() / 127
    assert sqnr(dequantized) > sqnr(np.round(table / step) * step) + 10


def _layer_norm(x: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)


def test_static_int8_of_a_transformer_smooths_first(tmp_path: Path) -> None:
    """SmoothQuant's Mul goes in front of the MatMul only (the Tanh beside it still reads h, exactly)."""
    model_path = _norm_then_branches(tmp_path / "m.onnx")
    rng = np.random.default_rng(5)
    calib = [{"x": (rng.standard_normal((4, S, D)) * np.linspace(0.1, 8, D)).astype(np.float32)} for _ in range(4)]
    quantize_file(model_path, tmp_path / "q.onnx", QuantizeConfig(cpu="x86-vnni"), calibration=calib)
    quantized = load_model(tmp_path / "q.onnx")
    smoothing = [n for n in quantized.graph if n.op_type == "Mul"]
    assert len(smoothing) == 1 and smoothing[0].inputs[0] is not None and smoothing[0].inputs[0].name == "h"
    test = {"x": (rng.standard_normal((2, S, D)) * np.linspace(0.1, 8, D)).astype(np.float32)}
    ref, got = run_model(load_model(model_path), test), run_model(quantized, test)
    np.testing.assert_array_equal(got["z"], ref["z"])
    assert np.abs(got["y"] - ref["y"]).max() < 0.05 * np.abs(ref["y"]).max()
