"""Tests for fold-constants: constant subexpressions become initializers, within limits."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.passes import FoldConstantsPass


def test_constant_subexpression_is_folded(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y)
        <float[2] a = {1.0, 2.0}, float[2] b = {-3.0, 0.5}>
        {
            s = Add(a, b)
            e = Exp(s)
            y = Mul(x, e)
        }
        """
    )

    result = apply_pass(FoldConstantsPass(), model)

    assert result.modified
    assert op_counts(model) == {"Mul": 1}
    mul = model.graph.node(0)
    assert mul.inputs[0] is model.graph.inputs[0]
    folded = mul.inputs[1]
    assert folded is not None and folded.is_initializer()
    np.testing.assert_allclose(folded.const_value.numpy(), np.exp([-2.0, 2.5]), rtol=1e-6)
    assert list(model.graph.initializers) == [folded.name]  # a and b went with their users
    assert not FoldConstantsPass()(model).modified


def test_nodes_fed_by_graph_inputs_are_kept(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y)
        <float[2] a = {1.0, 2.0}>
        {
            t = Relu(x)
            y = Add(t, a)
        }
        """
    )

    result = apply_pass(FoldConstantsPass(), model)

    assert not result.modified
    assert op_counts(model) == {"Relu": 1, "Add": 1}


def test_initializer_that_is_a_graph_input_stays_overridable(apply_pass, op_counts):
    """``a`` is an initializer listed as an input: a default the caller may override."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x, float[2] a) => (float[2] y)
        <float[2] a = {1.0, 2.0}, float[2] b = {3.0, 4.0}>
        {
            s = Add(a, b)
            y = Mul(x, s)
        }
        """
    )
    rng = np.random.default_rng(0)
    feeds = [
        {"x": rng.standard_normal(2).astype(np.float32)},
        {"x": rng.standard_normal(2).astype(np.float32),
         "a": rng.standard_normal(2).astype(np.float32)},
    ]

    result = apply_pass(FoldConstantsPass(), model, feeds)

    assert not result.modified
    assert op_counts(model) == {"Add": 1, "Mul": 1}
    assert set(model.graph.initializers) == {"a", "b"}


def test_ir3_initializers_listed_as_inputs_are_not_folded(apply_pass, op_counts):
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [nh.from_array(np.array([1.0, 2.0], np.float32), "a"),
         nh.from_array(np.array([3.0, 4.0], np.float32), "b")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    model = ir.serde.deserialize_model(proto)

    result = apply_pass(FoldConstantsPass(), model)

    assert not result.modified
    assert op_counts(model) == {"Add": 1, "Mul": 1}
    assert set(model.graph.initializers) == {"a", "b"}


def _add_model() -> ir.Model:
    return ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y)
        <float[2] a = {1.0, 2.0}, float[2] b = {3.0, 4.0}>
        {
            s = Add(a, b)
            y = Mul(x, s)
        }
        """
    )


def test_input_size_limit_is_respected(apply_pass, op_counts):
    model = _add_model()

    result = apply_pass(FoldConstantsPass(input_size_limit=1), model)

    assert not result.modified
    assert op_counts(model) == {"Add": 1, "Mul": 1}
    assert FoldConstantsPass(input_size_limit=2)(model).modified
    assert op_counts(model) == {"Mul": 1}


def test_output_size_limit_is_respected(apply_pass, op_counts):
    """Expand turns one element into 64: folding it would store a tensor 64 times larger."""
    text = """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[64] x) => (float[64] y)
        <float[1] a = {1.5}, int64[1] shape = {64}>
        {
            e = Expand(a, shape)
            y = Mul(x, e)
        }
        """
    model = ir.from_onnx_text(text)

    result = apply_pass(FoldConstantsPass(output_size_limit=8), model)

    assert not result.modified
    assert op_counts(model) == {"Expand": 1, "Mul": 1}

    model = ir.from_onnx_text(text)
    assert apply_pass(FoldConstantsPass(output_size_limit=64), model).modified
    assert op_counts(model) == {"Mul": 1}


def test_folded_graph_output_keeps_its_name(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, float[2] z)
        <float[2] a = {1.0, 2.0}, float[2] b = {3.0, 4.0}>
        {
            z = Add(a, b)
            y = Relu(x)
        }
        """
    )

    result = apply_pass(FoldConstantsPass(), model)

    assert result.modified
    assert op_counts(model) == {"Relu": 1}
    z = model.graph.outputs[1]
    assert z.name == "z" and z.is_initializer()
    np.testing.assert_array_equal(z.const_value.numpy(), [4.0, 6.0])
    assert not FoldConstantsPass()(model).modified


def test_constant_nodes_feed_the_folder(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y)
        {
            a = Constant<value = float[2] {1.0, 2.0}>()
            b = Constant<value_floats = [3.0, 4.0]>()
            s = Add(a, b)
            y = Mul(x, s)
        }
        """
    )

    result = apply_pass(FoldConstantsPass(), model)

    assert result.modified
    assert op_counts(model)["Add"] == 0
    assert op_counts(model)["Mul"] == 1


def test_nodes_in_other_domains_are_not_evaluated(apply_pass, op_counts):
    """com.microsoft::Gelu has no reference implementation: it stays, its inputs fold."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17, "com.microsoft" : 1]>
        g (float[2] x) => (float[2] y)
        <float[2] a = {1.0, 2.0}, float[2] b = {3.0, 4.0}>
        {
            s = Add(a, b)
            e = com.microsoft.Gelu(s)
            y = Mul(x, e)
        }
        """
    )

    result = apply_pass(FoldConstantsPass(), model)

    assert result.modified
    assert op_counts(model) == {"Gelu": 1, "Mul": 1}
    gelu = model.graph.node(0)
    assert gelu.domain == "com.microsoft"
    assert not FoldConstantsPass()(model).modified


def test_subgraphs_are_folded(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] y)
        <float[2] a = {1.0, 2.0}, float[2] b = {3.0, 4.0}>
        {
            y = If(c) <
                then_branch = then_g () => (float[2] o1) { s = Add(a, b)  o1 = Mul(x, s) },
                else_branch = else_g () => (float[2] o2) { o2 = Neg(x) }
            >
        }
        """
    )
    x = np.random.default_rng(0).standard_normal(2).astype(np.float32)
    feeds = [{"x": x, "c": np.array(True)}, {"x": x, "c": np.array(False)}]

    result = apply_pass(FoldConstantsPass(), model, feeds)

    assert result.modified
    assert op_counts(model) == {"If": 1, "Mul": 1, "Neg": 1}
    assert not FoldConstantsPass()(model).modified


def test_rewrite_invalid_at_the_model_opset_is_refused(apply_pass, op_counts):
    """The folder rewrites ConcatFromSequence into Unsqueeze with an axes input (opset 13+)."""
    model = ir.from_onnx_text(
        """
        <ir_version: 7, opset_import: ["" : 12]>
        g (float[2] x, float[2] w) => (float[2, 2] y)
        {
            s = SequenceConstruct(x, w)
            y = ConcatFromSequence<axis: int = 0, new_axis: int = 1>(s)
        }
        """
    )

    result = apply_pass(FoldConstantsPass(), model)

    assert not result.modified
    assert op_counts(model) == {"SequenceConstruct": 1, "ConcatFromSequence": 1}


def test_ir3_folded_values_become_constant_nodes(apply_pass, op_counts):
    """IR < 4: every initializer must be a graph input, so a folded value can't be one."""
    model = ir.from_onnx_text(
        """
        <ir_version: 3, opset_import: ["" : 9]>
        g (float[2, 3] x) => (float[2, 3] y)
        {
            a = Constant <value = float[2, 3] {1, 2, 3, 4, 5, 6}> ()
            b = Constant <value = float[2, 3] {1, 1, 1, 1, 1, 1}> ()
            s = Add(a, b)
            y = Mul(x, s)
        }
        """
    )

    assert apply_pass(FoldConstantsPass(), model).modified

    assert op_counts(model) == {"Constant": 3, "Mul": 1}  # a and b are remove-unused's
    assert len(model.graph.initializers) == 0
    mul = model.graph.node(3)
    assert mul.inputs[1].producer().op_type == "Constant"
    np.testing.assert_array_equal(mul.inputs[1].const_value.numpy(), [[2, 3, 4], [5, 6, 7]])
    assert not FoldConstantsPass()(model).modified


def test_ir3_fold_no_constant_of_the_opset_can_hold_is_refused(apply_pass, op_counts):
    """Constant-1 (before opset 9) holds float tensors only; the Cast's int64 stays computed."""
    model = ir.from_onnx_text(
        """
        <ir_version: 3, opset_import: ["" : 8]>
        g (int64[2] x) => (int64[2] y)
        {
            a = Constant <value = float[2] {1, 2}> ()
            c = Cast <to = 7> (a)
            y = Add(x, c)
        }
        """
    )

    assert not apply_pass(FoldConstantsPass(), model).modified

    assert op_counts(model) == {"Constant": 1, "Cast": 1, "Add": 1}
    assert len(model.graph.initializers) == 0
