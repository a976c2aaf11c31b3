"""Tests for remove-unused: dead nodes, initializers and functions go; the signature stays."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.core.runtime import run_model
from edgeopt.passes import RemoveUnusedPass


def test_dead_chain_is_removed_in_one_run(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y)
        <float[3] w = {1.0, 2.0, 3.0}>
        {
            a = Neg(x)
            b = Mul(a, w)
            c = Exp(b)
            y = Relu(x)
        }
        """
    )

    result = apply_pass(RemoveUnusedPass(), model)

    assert result.modified
    assert op_counts(model) == {"Relu": 1}
    assert len(model.graph.initializers) == 0
    assert not RemoveUnusedPass()(model).modified


def test_unused_initializer_is_removed_but_one_listed_as_input_is_kept(apply_pass):
    """``w`` is an initializer that is also a graph input (an overridable default): kept."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x, float[2] w) => (float[2] y)
        <float[2] w = {1.0, 2.0}, float[2] unused = {3.0, 4.0}>
        {
            y = Relu(x)
        }
        """
    )

    result = apply_pass(RemoveUnusedPass(), model)

    assert result.modified
    assert list(model.graph.initializers) == ["w"]
    assert [v.name for v in model.graph.inputs] == ["x", "w"]
    assert not RemoveUnusedPass()(model).modified


def test_initializer_that_is_a_graph_output_is_kept(apply_pass):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, float[2] w)
        <float[2] w = {1.0, 2.0}>
        {
            y = Relu(x)
        }
        """
    )

    assert not apply_pass(RemoveUnusedPass(), model).modified
    assert list(model.graph.initializers) == ["w"]


def test_ir3_initializers_listed_as_inputs_are_kept(apply_pass, op_counts):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["w"], ["dead"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "w")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [nh.from_array(np.array([1.0, 2.0], np.float32), "w")],
    )
    model = ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    )

    assert apply_pass(RemoveUnusedPass(), model).modified

    assert op_counts(model) == {"Relu": 1}
    assert list(model.graph.initializers) == ["w"]
    assert [v.name for v in model.graph.inputs] == ["x", "w"]
    assert not RemoveUnusedPass()(model).modified


def test_graph_outputs_and_nodes_without_outputs_are_kept(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, float[2] z)
        {
            y = Relu(x)
            z = Neg(x)
        }
        """
    )

    assert not apply_pass(RemoveUnusedPass(), model).modified
    assert op_counts(model) == {"Relu": 1, "Neg": 1}


def test_dead_nodes_in_other_domains_are_removed_too(checker, op_counts):
    """Dead code is dead whatever its domain; a live custom node stays."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
        g (float[2] x) => (float[2] y)
        {
            live = com.example.Custom(x)
            dead = com.example.Custom(x)
            y = Relu(live)
        }
        """
    )

    assert RemoveUnusedPass()(model).modified

    assert op_counts(model) == {"Custom": 1, "Relu": 1}
    assert model.graph.node(0).outputs[0].name == "live"
    checker(model)  # ORT has no kernel for com.example::Custom, so no numbers here


def test_dead_nodes_inside_an_if_branch_are_removed(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] y)
        {
            y = If(c) <
                then_branch = then_g () => (float[2] o1) {
                    d1 = Neg(x)
                    d2 = Exp(d1)
                    o1 = Relu(x)
                },
                else_branch = else_g () => (float[2] o2) { o2 = Neg(x) }
            >
        }
        """
    )
    x = np.random.default_rng(0).standard_normal(2).astype(np.float32)
    feeds = [{"x": x, "c": np.array(True)}, {"x": x, "c": np.array(False)}]

    result = apply_pass(RemoveUnusedPass(), model, feeds)

    assert result.modified
    assert op_counts(model) == {"If": 1, "Relu": 1, "Neg": 1}
    then_branch = model.graph.node(0).attributes["then_branch"].as_graph()
    assert [n.op_type for n in then_branch] == ["Relu"]
    assert not RemoveUnusedPass()(model).modified


def test_values_used_only_by_a_removed_if_are_removed(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] y)
        <float[2] w = {1.0, 2.0}>
        {
            t = Relu(x)
            dead = If(c) <
                then_branch = then_g () => (float[2] o1) { o1 = Add(t, w) },
                else_branch = else_g () => (float[2] o2) { o2 = Neg(t) }
            >
            y = Sigmoid(x)
        }
        """
    )
    feeds = {"x": np.ones(2, np.float32), "c": np.array(True)}

    assert apply_pass(RemoveUnusedPass(), model, feeds).modified

    assert op_counts(model) == {"Sigmoid": 1}
    assert len(model.graph.initializers) == 0


def test_unused_model_local_function_is_removed(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17, "local" : 1]>
        g (float[2] x) => (float[2] y)
        {
            dead = local.Dead(x)
            y = local.Live(x)
        }

        <domain: "local", opset_import: ["" : 17]>
        Live (a) => (b)
        {
            unused = Neg(a)
            b = Relu(a)
        }

        <domain: "local", opset_import: ["" : 17]>
        Dead (a) => (b)
        {
            b = Neg(a)
        }

        <domain: "local", opset_import: ["" : 17]>
        Unused (a) => (b)
        {
            b = Exp(a)
        }
        """
    )

    result = apply_pass(RemoveUnusedPass(), model)

    assert result.modified
    assert op_counts(model) == {"Live": 1}
    assert list(model.functions) == [("local", "Live", "")]
    assert [n.op_type for n in model.functions[("local", "Live", "")]] == ["Relu"]
    assert not RemoveUnusedPass()(model).modified


def test_unused_opset_import_is_removed(apply_pass):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
        g (float[2] x) => (float[2] y)
        {
            y = Relu(x)
        }
        """
    )

    assert apply_pass(RemoveUnusedPass(), model).modified
    assert "com.example" not in model.opset_imports


_UNSORTED_DEAD = {
    # B: b = Neg(a) comes before A: a = Abs(x), so one backward sweep meets B after A.
    "chain": [
        helper.make_node("Neg", ["a"], ["b"], name="B"),
        helper.make_node("Relu", ["x"], ["y"], name="Y"),
        helper.make_node("Abs", ["x"], ["a"], name="A"),
    ],
    # A dead If reads a value produced after it, inside its branch only.
    "read_in_a_subgraph": [
        helper.make_node(
            "If", ["c"], ["b"], name="B",
            then_branch=helper.make_graph(
                [helper.make_node("Neg", ["a"], ["o1"])], "then", [],
                [helper.make_tensor_value_info("o1", TensorProto.FLOAT, [2])],
            ),
            else_branch=helper.make_graph(
                [helper.make_node("Identity", ["x"], ["o2"])], "else", [],
                [helper.make_tensor_value_info("o2", TensorProto.FLOAT, [2])],
            ),
        ),
        helper.make_node("Relu", ["x"], ["y"], name="Y"),
        helper.make_node("Abs", ["x"], ["a"], name="A"),
    ],
}


@pytest.mark.parametrize("nodes", list(_UNSORTED_DEAD.values()), ids=list(_UNSORTED_DEAD))
def test_dead_nodes_of_an_unsorted_graph_are_removed_in_one_run(checker, nodes):
    """The graph is not topologically sorted (so not checker-valid before the pass)."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )

    assert RemoveUnusedPass()(model).modified

    assert [n.name for n in model.graph] == ["Y"]
    assert not RemoveUnusedPass()(model).modified
    checker(model)
    x = np.array([-1.0, 2.0], np.float32)
    out = run_model(model, {"x": x, "c": np.array(True)})
    np.testing.assert_array_equal(out["y"], np.maximum(x, 0))
