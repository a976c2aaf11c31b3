"""Tests for convert-fp16: float16 inside, float32 graph I/O, fragile ops kept float32."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir

from edgeopt.core.runtime import compare_outputs, run_model
from edgeopt.passes import ConvertFloat16Pass
from edgeopt.passes.convert_fp16 import FRAGILE_OPS

TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
net (float[2, 16] x) => (float[2, 8] y)
{
    h = Gemm<transB = 1>(x, W, B)
    r = Relu(h)
    e = Exp(r)
    s = Softmax<axis = 1>(e)
    y = Mul(s, r)
}
"""


def _model() -> ir.Model:
    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(TEXT)
    for index, node in enumerate(proto.graph.node):
        node.name = f"{node.op_type.lower()}_{index}"
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32) * 0.3, "W"),
        onnx.numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B"),
    ])
    return ir.serde.deserialize_model(proto)


def _dtypes(model: ir.Model) -> dict[str, ir.DataType | None]:
    return {n.op_type: n.outputs[0].dtype for n in model.graph if n.op_type != "Cast"}


def test_weights_and_activations_fp16_io_fp32(checker: Callable[[ir.Model], None]) -> None:
    model = _model()
    reference = model.clone()
    x = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)

    assert ConvertFloat16Pass()(model).modified

    checker(model)
    assert [v.dtype for v in (*model.graph.inputs, *model.graph.outputs)] == [ir.DataType.FLOAT] * 2
    assert {v.dtype for v in model.graph.initializers.values()} == {ir.DataType.FLOAT16}
    dtypes = _dtypes(model)
    assert dtypes["Gemm"] == dtypes["Relu"] == dtypes["Mul"] == ir.DataType.FLOAT16
    assert dtypes["Exp"] == dtypes["Softmax"] == ir.DataType.FLOAT, "fragile ops must stay float32"
    # float16 has an 11-bit mantissa: relative error ~1e-3 per rounding, a few roundings here.
    deviation = compare_outputs(run_model(reference, {"x": x}), run_model(model, {"x": x}), rtol=1e-2, atol=1e-3)
    assert deviation.ok, deviation.mismatches
    assert deviation.max_abs > 0, "float16 rounding must show: was anything converted?"


def test_second_run_changes_nothing() -> None:
    model = _model()
    ConvertFloat16Pass()(model)
    before = onnx.printer.to_text(ir.serde.serialize_model(model))

    assert not ConvertFloat16Pass()(model).modified
    assert onnx.printer.to_text(ir.serde.serialize_model(model)) == before


def test_empty_block_list_converts_exp_and_node_block_list_keeps_a_node() -> None:
    model = _model()
    gemm = next(n for n in model.graph if n.op_type == "Gemm")

    assert gemm.name == "gemm_0"
    ConvertFloat16Pass(op_block_list=(), node_block_list=(gemm.name,))(model)

    dtypes = _dtypes(model)
    assert dtypes["Exp"] == ir.DataType.FLOAT16
    assert dtypes["Gemm"] == ir.DataType.FLOAT


def test_fragile_list_is_documented() -> None:
    import edgeopt.passes.convert_fp16 as module

    for op in FRAGILE_OPS:
        assert f"``{op}``" in (module.__doc__ or ""), f"{op} is blocked without a reason in the docstring"
