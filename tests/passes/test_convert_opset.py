"""Tests for convert-opset: the default-domain opset changes, the outputs do not."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgeopt.core.errors import UnsupportedOpsetError
from edgeopt.passes import ConvertOpsetPass

# Opset 13 changed all four: Softmax's axis semantics (coerce to 2-D -> one axis),
# Unsqueeze and ReduceSum's axes (attribute -> input), Split's split (attribute -> input).
_OPSET11_MODEL = """
    <ir_version: 6, opset_import: ["" : 11]>
    g (float[2, 3, 4] x) => (float[2, 3, 4] soft, float[2, 1, 3, 4] unsq,
                              float[2, 4] total, float[2, 1, 4] first, float[2, 2, 4] rest)
    {
        soft = Softmax<axis: int = 1>(x)
        unsq = Unsqueeze<axes: ints = [1]>(x)
        total = ReduceSum<axes: ints = [1], keepdims: int = 0>(x)
        first, rest = Split<axis: int = 1, split: ints = [1, 2]>(x)
    }
"""


def _input_count(model: ir.Model, op_type: str) -> int:
    node = next(n for n in model.graph if n.op_type == op_type)
    return len([v for v in node.inputs if v is not None])


def test_opset11_model_is_converted_to_17(apply_pass, op_counts):
    model = ir.from_onnx_text(_OPSET11_MODEL)

    result = apply_pass(ConvertOpsetPass(target_version=17), model)

    assert result.modified
    assert model.opset_imports[""] == 17
    counts = op_counts(model)
    assert counts["Unsqueeze"] == counts["ReduceSum"] == counts["Split"] == 1
    assert counts["Softmax"] == 1
    assert _input_count(model, "Unsqueeze") == 2
    assert _input_count(model, "ReduceSum") == 2
    assert _input_count(model, "Split") == 2
    assert "axes" not in next(n for n in model.graph if n.op_type == "Unsqueeze").attributes
    assert not ConvertOpsetPass(target_version=17)(model).modified


def test_model_already_at_target_is_not_modified(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y)
        {
            y = Softmax<axis: int = 1>(x)
        }
        """
    )

    result = apply_pass(ConvertOpsetPass(target_version=17), model)

    assert not result.modified
    assert model.opset_imports == {"": 17}
    assert op_counts(model) == {"Softmax": 1}


def test_subgraphs_are_converted(apply_pass):
    model = ir.from_onnx_text(
        """
        <ir_version: 6, opset_import: ["" : 11]>
        g (float[2, 3] x, bool c) => (float[2, 1, 3] y)
        {
            y = If(c) <
                then_branch = then_g () => (float[2, 1, 3] o1) {
                    o1 = Unsqueeze<axes: ints = [1]>(x)
                },
                else_branch = else_g () => (float[2, 1, 3] o2) {
                    n = Neg(x)
                    o2 = Unsqueeze<axes: ints = [1]>(n)
                }
            >
        }
        """
    )
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    feeds = [{"x": x, "c": np.array(True)}, {"x": x, "c": np.array(False)}]

    assert apply_pass(ConvertOpsetPass(target_version=17), model, feeds).modified

    unsqueezes = [
        n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == "Unsqueeze"
    ]
    assert len(unsqueezes) == 2
    assert all(len(n.inputs) == 2 and "axes" not in n.attributes for n in unsqueezes)


def test_nodes_in_other_domains_and_initializers_are_kept(apply_pass, op_counts):
    """A com.microsoft import sends the model through ONNX's converter (the fallback)."""
    model = ir.from_onnx_text(
        """
        <ir_version: 6, opset_import: ["" : 11, "com.microsoft" : 1]>
        g (float[2, 3] x) => (float[2, 1, 3] y, float[2, 3] z)
        <float[3] w = {1.0, 2.0, 3.0}>
        {
            a = Add(x, w)
            y = Unsqueeze<axes: ints = [1]>(a)
            z = com.microsoft.Gelu(x)
        }
        """
    )

    assert apply_pass(ConvertOpsetPass(target_version=17), model).modified

    assert model.opset_imports == {"": 17, "com.microsoft": 1}
    gelu = next(n for n in model.graph if n.op_type == "Gelu")
    assert gelu.domain == "com.microsoft"
    assert list(model.graph.initializers) == ["w"]
    assert [v.name for v in model.graph.inputs] == ["x"]
    assert op_counts(model)["Add"] == 1


def test_ir3_initializers_listed_as_inputs_stay_inputs(apply_pass):
    model = ir.from_onnx_text(
        """
        <ir_version: 3, opset_import: ["" : 9]>
        g (float[2, 3] x, float[3] w) => (float[2, 1, 3] y)
        <float[3] w = {1.0, 2.0, 3.0}>
        {
            a = Add(x, w)
            y = Unsqueeze<axes: ints = [1]>(a)
        }
        """
    )

    assert apply_pass(ConvertOpsetPass(target_version=17), model).modified

    assert model.opset_imports[""] == 17
    assert [v.name for v in model.graph.inputs] == ["x", "w"]
    assert model.graph.inputs[1].is_initializer()


@pytest.mark.parametrize(("opset", "target"), [(11, 40), (17, 11)])
def test_failed_conversion_raises(opset, target):
    model = ir.from_onnx_text(
        f"""
        <ir_version: 8, opset_import: ["" : {opset}]>
        g (float[2, 3] x) => (float[2, 3] y)
        {{
            y = Flatten<axis: int = 1>(x)
        }}
        """
    )

    with pytest.raises(UnsupportedOpsetError, match=f"converting opset {opset} to {target}"):
        ConvertOpsetPass(target_version=target)(model)


def test_ir_version_is_raised_to_what_the_new_opset_needs():
    model = ir.from_onnx_text(
        """
        <ir_version: 6, opset_import: ["" : 11]>
        g (float[2, 3] x) => (float[2, 3] y) { y = Relu(x) }
        """
    )
    assert ConvertOpsetPass(target_version=17)(model).modified
    assert model.ir_version == 8  # onnx.helper.VERSION_TABLE: opset 17 came with IR 8
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
