"""Tests for deduplicate-initializers: byte-identical weights share one tensor."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.passes import DeduplicateInitializersPass


def test_identical_weights_are_merged(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, float[2] z)
        <float[2] a = {1.0, 2.0}, float[2] b = {1.0, 2.0}>
        {
            y = Add(x, a)
            z = Mul(x, b)
        }
        """
    )

    result = apply_pass(DeduplicateInitializersPass(), model)

    assert result.modified
    assert list(model.graph.initializers) == ["a"]
    add, mul = model.graph
    assert add.inputs[1] is mul.inputs[1] is model.graph.initializers["a"]
    assert op_counts(model) == {"Add": 1, "Mul": 1}
    assert not DeduplicateInitializersPass()(model).modified


def test_negative_zero_is_not_merged_with_zero(apply_pass):
    """-0.0 == 0.0, yet 1 / -0.0 is -inf: equal values are not identical tensors."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, float[2] z)
        <float[2] pos = {0.0, 1.0}, float[2] neg = {-0.0, 1.0}>
        {
            y = Div(x, pos)
            z = Div(x, neg)
        }
        """
    )

    assert not apply_pass(DeduplicateInitializersPass(), model).modified
    assert list(model.graph.initializers) == ["pos", "neg"]


def test_same_bytes_different_dtype_are_not_merged(apply_pass):
    """int32 0 and float32 0.0 have the same four zero bytes."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x, int32[2] i) => (float[2] y, int32[2] z)
        <float[2] f = {0.0, 0.0}, int32[2] n = {0, 0}>
        {
            y = Add(x, f)
            z = Add(i, n)
        }
        """
    )

    assert not apply_pass(DeduplicateInitializersPass(), model).modified
    assert list(model.graph.initializers) == ["f", "n"]


def test_same_bytes_different_shape_are_not_merged(apply_pass):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[4] v, float[2, 2] m) => (float[4] y, float[2, 2] z)
        <float[4] flat = {1.0, 2.0, 3.0, 4.0}, float[2, 2] square = {1.0, 2.0, 3.0, 4.0}>
        {
            y = Add(v, flat)
            z = Add(m, square)
        }
        """
    )

    assert not apply_pass(DeduplicateInitializersPass(), model).modified
    assert list(model.graph.initializers) == ["flat", "square"]


def test_graph_input_initializer_is_never_merged(apply_pass):
    """``a`` is also a graph input (an overridable default): it must stay its own tensor."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x, float[2] a) => (float[2] y, float[2] z)
        <float[2] a = {1.0, 2.0}, float[2] b = {1.0, 2.0}>
        {
            y = Add(x, a)
            z = Mul(x, b)
        }
        """
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal(2).astype(np.float32)
    feeds = [{"x": x}, {"x": x, "a": rng.standard_normal(2).astype(np.float32)}]

    assert not apply_pass(DeduplicateInitializersPass(), model, feeds).modified
    assert list(model.graph.initializers) == ["a", "b"]


def test_ir3_initializers_are_never_merged(apply_pass):
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "a"], ["y"]), helper.make_node("Mul", ["x", "b"], ["z"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("y", "z")],
        [nh.from_array(np.array([1.0, 2.0], np.float32), n) for n in ("a", "b")],
    )
    model = ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    )

    assert not apply_pass(DeduplicateInitializersPass(), model).modified
    assert list(model.graph.initializers) == ["a", "b"]


def test_initializer_that_is_a_graph_output_keeps_its_name(apply_pass):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, float[2] b)
        <float[2] a = {1.0, 2.0}, float[2] b = {1.0, 2.0}>
        {
            y = Add(x, a)
        }
        """
    )

    assert not apply_pass(DeduplicateInitializersPass(), model).modified
    assert list(model.graph.initializers) == ["a", "b"]


def test_min_bytes_option(apply_pass):
    text = """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, float[2] z)
        <float[2] a = {1.0, 2.0}, float[2] b = {1.0, 2.0}>
        {
            y = Add(x, a)
            z = Mul(x, b)
        }
        """
    model = ir.from_onnx_text(text)
    assert not apply_pass(DeduplicateInitializersPass(min_bytes=9), model).modified
    assert len(model.graph.initializers) == 2

    model = ir.from_onnx_text(text)
    assert apply_pass(DeduplicateInitializersPass(min_bytes=8), model).modified
    assert len(model.graph.initializers) == 1


def test_subgraph_initializers_are_deduplicated_within_their_graph(apply_pass):
    then_branch = helper.make_graph(
        [helper.make_node("Add", ["x", "p"], ["t"]), helper.make_node("Mul", ["t", "q"], ["o1"])],
        "then", [], [helper.make_tensor_value_info("o1", TensorProto.FLOAT, [2])],
        [nh.from_array(np.array([1.0, 2.0], np.float32), n) for n in ("p", "q")],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["o2"])],
        "else", [], [helper.make_tensor_value_info("o2", TensorProto.FLOAT, [2])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [nh.from_array(np.array([1.0, 2.0], np.float32), "w")],
    )
    model = ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )
    x = np.random.default_rng(0).standard_normal(2).astype(np.float32)
    feeds = [{"x": x, "c": np.array(True)}, {"x": x, "c": np.array(False)}]

    assert apply_pass(DeduplicateInitializersPass(), model, feeds).modified

    then_graph = model.graph.node(0).attributes["then_branch"].as_graph()
    assert list(then_graph.initializers) == ["p"]
    assert list(model.graph.initializers) == ["w"]  # equal bytes, but another graph
    assert not DeduplicateInitializersPass()(model).modified
