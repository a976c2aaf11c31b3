"""Tests for topological-sort: unsorted graphs, subgraphs and functions get sorted."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from edgeopt.core.runtime import run_model
from edgeopt.passes import TopologicalSortPass


def _vi(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _unsorted_model() -> ir.Model:
    """x -> Neg -> Relu -> Exp -> y, with the nodes listed last first.

    onnx.helper keeps the order it is given and ``ir.serde.deserialize_model``
    resolves the forward references; the checker rejects the result.
    """
    nodes = [
        helper.make_node("Exp", ["b"], ["y"], name="exp"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Neg", ["x"], ["a"], name="neg"),
    ]
    graph = helper.make_graph(nodes, "g", [_vi("x", [2, 3])], [_vi("y", [2, 3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def test_unsorted_graph_is_sorted_and_runs(op_counts, checker):
    model = _unsorted_model()
    # Not apply_pass: it runs the checker on the input first, which rejects this one.
    result = TopologicalSortPass()(model)

    assert result.modified
    assert [n.name for n in model.graph] == ["neg", "relu", "exp"]
    assert op_counts(model) == {"Neg": 1, "Relu": 1, "Exp": 1}
    assert [v.name for v in model.graph.inputs] == ["x"]
    assert [v.name for v in model.graph.outputs] == ["y"]
    checker(model)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(run_model(model, {"x": x})["y"], np.exp(np.maximum(-x, 0)),
                               rtol=1e-5, atol=1e-6)


def test_sorted_graph_is_not_modified(apply_pass):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y)
        {
            a = Neg(x)
            b = Relu(a)
            y = Exp(b)
        }
        """
    )
    order = list(model.graph)

    result = apply_pass(TopologicalSortPass(), model)

    assert not result.modified
    assert list(model.graph) == order


def test_second_run_is_a_no_op():
    model = _unsorted_model()
    assert TopologicalSortPass()(model).modified
    order = list(model.graph)

    assert not TopologicalSortPass()(model).modified
    assert list(model.graph) == order


def test_independent_nodes_keep_their_relative_order(apply_pass):
    """The sort is stable: nodes already in a valid order do not move."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] p, float[2] q, float[2] r)
        {
            r = Exp(x)
            p = Neg(x)
            q = Relu(x)
        }
        """
    )

    result = apply_pass(TopologicalSortPass(), model)

    assert not result.modified
    assert [n.op_type for n in model.graph] == ["Exp", "Neg", "Relu"]


def _unsorted_subgraph_and_function_model() -> ir.Model:
    then_branch = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["o1"], name="then_relu"),
         helper.make_node("Neg", ["x"], ["a"], name="then_neg")],
        "then", [], [_vi("o1", [2])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["o2"])], "else", [], [_vi("o2", [2])]
    )
    nodes = [
        helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Cast", ["s"], ["c"], to=TensorProto.BOOL),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("F", ["y"], ["z"], domain="local"),
    ]
    graph = helper.make_graph(nodes, "g", [_vi("x", [2])], [_vi("y", [2]), _vi("z", [2])])
    function = helper.make_function(
        "local", "F", ["a"], ["b"],
        [helper.make_node("Neg", ["t"], ["b"]), helper.make_node("Relu", ["a"], ["t"])],
        [helper.make_opsetid("", 17)],
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[function],
    )
    return ir.serde.deserialize_model(proto)


def test_subgraphs_and_functions_are_sorted(checker):
    model = _unsorted_subgraph_and_function_model()

    result = TopologicalSortPass()(model)

    assert result.modified
    assert [n.op_type for n in model.graph] == ["ReduceSum", "Cast", "If", "F"]
    if_node = next(n for n in model.graph if n.op_type == "If")
    then_branch = if_node.attributes["then_branch"].as_graph()
    assert [n.name for n in then_branch] == ["then_neg", "then_relu"]
    assert [n.op_type for n in model.functions[("local", "F", "")]] == ["Relu", "Neg"]
    checker(model)
    x = np.random.default_rng(0).standard_normal(2).astype(np.float32)
    outputs = run_model(model, {"x": x})
    expected_y = np.maximum(-x, 0) if x.sum() != 0 else -x
    np.testing.assert_allclose(outputs["y"], expected_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["z"], -np.maximum(expected_y, 0), rtol=1e-5, atol=1e-6)
    assert not TopologicalSortPass()(model).modified


def test_nodes_in_other_domains_are_sorted_but_not_changed(checker):
    nodes = [
        helper.make_node("Relu", ["a"], ["y"]),
        helper.make_node("Custom", ["x"], ["a"], domain="com.example", alpha=2.0),
    ]
    graph = helper.make_graph(nodes, "g", [_vi("x", [2])], [_vi("y", [2])])
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    model = ir.serde.deserialize_model(proto)

    assert TopologicalSortPass()(model).modified

    custom = model.graph.node(0)
    assert (custom.domain, custom.op_type) == ("com.example", "Custom")
    assert custom.attributes.get_float("alpha") == 2.0
    assert model.graph.node(1).inputs[0] is custom.outputs[0]
    assert [v.name for v in model.graph.outputs] == ["y"]
    checker(model)  # ORT has no kernel for com.example::Custom, so no numbers here
    assert not TopologicalSortPass()(model).modified


def test_ir3_initializers_listed_as_inputs_stay_inputs(checker):
    nodes = [helper.make_node("Relu", ["a"], ["y"]), helper.make_node("Add", ["x", "w"], ["a"])]
    graph = helper.make_graph(
        nodes, "g", [_vi("x", [2]), _vi("w", [2])], [_vi("y", [2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, -2.0])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    model = ir.serde.deserialize_model(proto)

    assert TopologicalSortPass()(model).modified

    assert [n.op_type for n in model.graph] == ["Add", "Relu"]
    assert [v.name for v in model.graph.inputs] == ["x", "w"]
    assert list(model.graph.initializers) == ["w"]
    checker(model)
    x = np.array([0.5, 0.5], np.float32)
    np.testing.assert_allclose(run_model(model, {"x": x})["y"], [1.5, 0.0], rtol=1e-5, atol=1e-6)
