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
