"""Tests for eliminate-identity: Identity and inference-mode Dropout go, the signature stays."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from edgeopt.passes import EliminateIdentityPass


def _randn(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _outputs(model: ir.Model) -> list[str | None]:
    return [v.name for v in model.graph.outputs]


def test_identity_chain_is_removed(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y)
        {
            a = Relu(x)
            b = Identity(a)
            c = Identity(b)
            y = Exp(c)
        }
        """
    )

    result = apply_pass(EliminateIdentityPass(), model)

    assert result.modified
    assert op_counts(model) == {"Relu": 1, "Exp": 1}
    relu, exp = model.graph
    assert exp.inputs[0] is relu.outputs[0]
    assert not EliminateIdentityPass()(model).modified


def test_identity_producing_a_graph_output_renames_its_producer(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y)
        {
            a = Relu(x)
            b = Identity(a)
            y = Identity(b)
        }
        """
    )

    result = apply_pass(EliminateIdentityPass(), model)

    assert result.modified
    assert op_counts(model) == {"Relu": 1}
    assert model.graph.outputs[0] is model.graph.node(0).outputs[0]
    assert model.graph.outputs[0].name == "y"
    assert model.graph.outputs[0].shape == ir.Shape([2, 3])
    assert not EliminateIdentityPass()(model).modified


def test_identity_from_graph_input_to_graph_output_is_kept(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y)
        {
            y = Identity(x)
        }
        """
    )

    result = apply_pass(EliminateIdentityPass(), model)

    assert not result.modified
    assert op_counts(model) == {"Identity": 1}


def test_identity_of_an_initializer_producing_a_graph_output_is_kept(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y, float[2] w_out)
        <float[2] w = {1.0, 2.0}>
        {
            y = Add(x, w)
            w_out = Identity(w)
        }
        """
    )

    assert not apply_pass(EliminateIdentityPass(), model).modified
    assert op_counts(model) == {"Add": 1, "Identity": 1}


def test_identity_between_two_graph_outputs_is_kept(apply_pass, op_counts):
    """``t`` is itself a graph output, so it cannot also take the name ``y``."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y, float[2, 3] t)
        {
            t = Relu(x)
            y = Identity(t)
        }
        """
    )

    result = apply_pass(EliminateIdentityPass(), model)

    assert not result.modified
    assert op_counts(model) == {"Relu": 1, "Identity": 1}
    assert _outputs(model) == ["y", "t"]


def test_two_identities_of_one_value_feeding_two_outputs(apply_pass, op_counts):
    """The first takes over the producer's output; the second then must stay."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y, float[2, 3] z)
        {
            t = Relu(x)
            y = Identity(t)
            z = Identity(t)
        }
        """
    )

    result = apply_pass(EliminateIdentityPass(), model)

    assert result.modified
    assert op_counts(model) == {"Relu": 1, "Identity": 1}
    assert not EliminateIdentityPass()(model).modified


def test_identity_of_an_ir3_initializer_listed_as_input(apply_pass, op_counts):
    """``t = Identity(w)`` may go (Add reads the input ``w`` directly); ``w_out`` may not."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["t"]), helper.make_node("Add", ["x", "t"], ["y"]),
         helper.make_node("Identity", ["w"], ["w_out"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "w")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("y", "w_out")],
        [helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, -2.0])],
    )
    model = ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    )

    assert apply_pass(EliminateIdentityPass(), model).modified

    assert op_counts(model) == {"Add": 1, "Identity": 1}  # w_out = Identity(w) must stay
    w = model.graph.inputs[1]
    assert w.is_initializer() and model.graph.node(0).inputs[1] is w
    assert not EliminateIdentityPass()(model).modified


def _dropout_model(training: str, opset: int = 13) -> ir.Model:
    """x -> Dropout(x, ratio=0.5[, training]) -> Relu -> y; training is '' or an initializer."""
    inputs = "x, ratio" + (f", {training}" if training else "")
    return ir.from_onnx_text(
        f"""
        <ir_version: 10, opset_import: ["" : {opset}]>
        g (float[2, 3] x) => (float[2, 3] y)
        <float ratio = {{0.5}}, bool off = {{0}}, bool on = {{1}}>
        {{
            d = Dropout({inputs})
            y = Relu(d)
        }}
        """
    )


@pytest.mark.parametrize("training", ["", "off"], ids=["training_mode_absent", "constant_false"])
def test_inference_mode_dropout_is_removed(apply_pass, op_counts, training):
    model = _dropout_model(training)

    result = apply_pass(EliminateIdentityPass(), model)

    assert result.modified
    assert op_counts(model) == {"Relu": 1}
    assert model.graph.node(0).inputs[0] is model.graph.inputs[0]
    assert not EliminateIdentityPass()(model).modified


def test_training_mode_dropout_is_kept(apply_pass, op_counts):
    # ratio 0 keeps training-mode Dropout deterministic, so the numbers can be compared.
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 13]>
        g (float[2, 3] x) => (float[2, 3] y)
        <float ratio = {0.0}, bool on = {1}>
        {
            d = Dropout(x, ratio, on)
            y = Relu(d)
        }
        """
    )

    assert not apply_pass(EliminateIdentityPass(), model).modified
    assert op_counts(model) == {"Dropout": 1, "Relu": 1}


def test_dropout_with_training_mode_from_a_graph_input_is_kept(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 13]>
        g (float[2, 3] x, bool training) => (float[2, 3] y)
        {
            d = Dropout(x, , training)
            y = Relu(d)
        }
        """
    )
    feeds = {"x": _randn(2, 3), "training": np.array(False)}

    assert not apply_pass(EliminateIdentityPass(), model, feeds).modified
    assert op_counts(model) == {"Dropout": 1, "Relu": 1}


def test_dropout_with_training_mode_from_a_constant_node_is_removed(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 13]>
        g (float[2, 3] x) => (float[2, 3] y)
        {
            off = Constant<value = bool {0}>()
            d = Dropout(x, , off)
            y = Relu(d)
        }
        """
    )

    assert apply_pass(EliminateIdentityPass(), model).modified
    assert op_counts(model) == {"Constant": 1, "Relu": 1}  # the Constant is remove-unused's
    assert not EliminateIdentityPass()(model).modified


def test_dropout_whose_mask_is_used_is_kept(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 13]>
        g (float[2, 3] x) => (float[2, 3] y, bool[2, 3] mask)
        {
            d, mask = Dropout(x)
            y = Relu(d)
        }
        """
    )

    assert not apply_pass(EliminateIdentityPass(), model).modified
    assert op_counts(model) == {"Dropout": 1, "Relu": 1}
    assert _outputs(model) == ["y", "mask"]


def test_dropout_with_an_unused_mask_is_removed(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 13]>
        g (float[2, 3] x) => (float[2, 3] y)
        {
            d, mask = Dropout(x)
            y = Relu(d)
        }
        """
    )

    assert apply_pass(EliminateIdentityPass(), model).modified
    assert op_counts(model) == {"Relu": 1}


def test_opset6_dropout_is_kept(checker, op_counts):
    """Before opset 7 Dropout defaults to training mode (is_test=0).

    ORT has no Dropout-6 kernel, so only the structure is checked.
    """
    model = ir.from_onnx_text(
        """
        <ir_version: 3, opset_import: ["" : 6]>
        g (float[2, 3] x) => (float[2, 3] y)
        {
            d = Dropout(x)
            y = Relu(d)
        }
        """
    )

    assert not EliminateIdentityPass()(model).modified
    assert op_counts(model) == {"Dropout": 1, "Relu": 1}
    checker(model)


def test_identity_in_other_domain_is_kept(checker, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
        g (float[2, 3] x) => (float[2, 3] y)
        {
            a = com.example.Identity(x)
            y = Relu(a)
        }
        """
    )

    assert not EliminateIdentityPass()(model).modified
    assert op_counts(model) == {"Identity": 1, "Relu": 1}
    assert model.graph.node(0).domain == "com.example"
    checker(model)  # ORT has no kernel for com.example::Identity, so no numbers here


def test_identities_in_an_if_body_referencing_outer_values(apply_pass, op_counts):
    """The then-branch output is an outer value's Identity: kept. The inner one goes."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] y)
        {
            t = Relu(x)
            y = If(c) <
                then_branch = then_g () => (float[2] o1) { o1 = Identity(t) },
                else_branch = else_g () => (float[2] o2) { i = Identity(t)  o2 = Neg(i) }
            >
        }
        """
    )
    x = _randn(2)
    feeds = [{"x": x, "c": np.array(True)}, {"x": x, "c": np.array(False)}]

    result = apply_pass(EliminateIdentityPass(), model, feeds)

    assert result.modified
    assert op_counts(model) == {"Relu": 1, "If": 1, "Identity": 1, "Neg": 1}
    if_node = model.graph.node(1)
    else_branch = if_node.attributes["else_branch"].as_graph()
    assert else_branch.node(0).inputs[0] is model.graph.node(0).outputs[0]
    assert not EliminateIdentityPass()(model).modified


def test_identity_producing_a_branch_output_renames_the_branch_value(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] y)
        {
            y = If(c) <
                then_branch = then_g () => (float[2] o1) { n = Neg(x)  o1 = Identity(n) },
                else_branch = else_g () => (float[2] o2) { o2 = Exp(x) }
            >
        }
        """
    )
    x = _randn(2)
    feeds = [{"x": x, "c": np.array(True)}, {"x": x, "c": np.array(False)}]

    assert apply_pass(EliminateIdentityPass(), model, feeds).modified

    assert op_counts(model) == {"If": 1, "Neg": 1, "Exp": 1}
    then_branch = model.graph.node(0).attributes["then_branch"].as_graph()
    assert [v.name for v in then_branch.outputs] == ["o1"]


def test_identities_in_a_loop_body(apply_pass, op_counts):
    """``cond_out = Identity(cond_in)`` passes a body input through: kept. ``Identity(t)`` goes."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y)
        <int64 n = {3}, bool keep_going = {1}>
        {
            t = Relu(x)
            y = Loop(n, keep_going, x) <
                body = body_g (int64 i, bool cond_in, float[2] acc) => (bool cond_out, float[2] acc_out) {
                    cond_out = Identity(cond_in)
                    u = Identity(t)
                    acc_out = Add(acc, u)
                }
            >
        }
        """
    )

    result = apply_pass(EliminateIdentityPass(), model)

    assert result.modified
    assert op_counts(model) == {"Relu": 1, "Loop": 1, "Identity": 1, "Add": 1}
    body = model.graph.node(1).attributes["body"].as_graph()
    assert body.node(0).op_type == "Identity" and body.node(0).inputs[0] is body.inputs[1]
    assert not EliminateIdentityPass()(model).modified
