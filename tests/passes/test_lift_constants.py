"""Tests for lift-constants: large Constant tensors become initializers."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgeopt.passes import LiftConstantsPass

_SIXTEEN = ", ".join(f"{i * 0.25:.2f}" for i in range(16))


def test_every_constant_is_lifted_by_default(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y)
        {
            b = Constant<value = float[1] {0.5}>()
            s = Constant<value_float = 2.0>()
            t = Mul(x, s)
            y = Add(t, b)
        }
        """
    )

    assert apply_pass(LiftConstantsPass(), model).modified
    assert op_counts(model) == {"Mul": 1, "Add": 1}
    assert sorted(model.graph.initializers) == ["b", "s"]
    assert model.graph.initializers["s"].const_value.numpy() == np.float32(2.0)


def test_large_constant_is_lifted_and_small_one_kept(apply_pass, op_counts):
    model = ir.from_onnx_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[16] x) => (float[16] y)
        {{
            w = Constant<value = float[16] {{{_SIXTEEN}}}>()
            b = Constant<value = float[1] {{0.5}}>()
            t = Mul(x, w)
            y = Add(t, b)
        }}
        """
    )

    result = apply_pass(LiftConstantsPass(min_elements=16), model)

    assert result.modified
    assert op_counts(model) == {"Constant": 1, "Mul": 1, "Add": 1}
    assert list(model.graph.initializers) == ["w"]
    w = model.graph.initializers["w"]
    np.testing.assert_array_equal(w.const_value.numpy(), np.arange(16, dtype=np.float32) * 0.25)
    mul = next(n for n in model.graph if n.op_type == "Mul")
    assert mul.inputs[1] is w
    assert not LiftConstantsPass(min_elements=16)(model).modified


def test_min_elements_option(apply_pass, op_counts):
    text = f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[16] x) => (float[16] y)
        {{
            w = Constant<value = float[16] {{{_SIXTEEN}}}>()
            y = Mul(x, w)
        }}
        """
    model = ir.from_onnx_text(text)
    assert not apply_pass(LiftConstantsPass(min_elements=17), model).modified
    assert op_counts(model) == {"Constant": 1, "Mul": 1}

    model = ir.from_onnx_text(text)
    assert apply_pass(LiftConstantsPass(min_elements=16), model).modified
    assert op_counts(model) == {"Mul": 1}


def test_constant_that_is_a_graph_output_stays(apply_pass, op_counts):
    model = ir.from_onnx_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[16] x) => (float[16] y, float[16] w)
        {{
            w = Constant<value = float[16] {{{_SIXTEEN}}}>()
            y = Mul(x, w)
        }}
        """
    )

    result = apply_pass(LiftConstantsPass(), model)

    assert not result.modified
    assert op_counts(model) == {"Constant": 1, "Mul": 1}
    assert len(model.graph.initializers) == 0


def test_list_valued_constants_are_lifted_too(apply_pass, op_counts):
    """``value_floats`` (and the other typed forms) become initializers with the same values."""
    model = ir.from_onnx_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[16] x) => (float[16] y)
        {{
            w = Constant<value_floats = [{_SIXTEEN}]>()
            y = Mul(x, w)
        }}
        """
    )

    assert apply_pass(LiftConstantsPass(), model).modified
    assert op_counts(model) == {"Mul": 1}
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(),
                                  np.arange(16, dtype=np.float32) * 0.25)


def test_ir3_model_is_unchanged(apply_pass, op_counts):
    """In IR < 4 every initializer must also be a graph input, which would change the signature."""
    model = ir.from_onnx_text(
        f"""
        <ir_version: 3, opset_import: ["" : 9]>
        g (float[16] x) => (float[16] y)
        {{
            w = Constant<value = float[16] {{{_SIXTEEN}}}>()
            y = Mul(x, w)
        }}
        """
    )

    result = apply_pass(LiftConstantsPass(), model)

    assert not result.modified
    assert op_counts(model) == {"Constant": 1, "Mul": 1}
    assert len(model.graph.initializers) == 0


def test_constants_in_subgraphs_are_lifted(apply_pass, op_counts):
    model = ir.from_onnx_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[16] x, bool c) => (float[16] y)
        {{
            y = If(c) <
                then_branch = then_g () => (float[16] o1) {{
                    w = Constant<value = float[16] {{{_SIXTEEN}}}>()
                    o1 = Mul(x, w)
                }},
                else_branch = else_g () => (float[16] o2) {{ o2 = Neg(x) }}
            >
        }}
        """
    )
    x = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    feeds = [{"x": x, "c": np.array(True)}, {"x": x, "c": np.array(False)}]

    result = apply_pass(LiftConstantsPass(), model, feeds)

    assert result.modified
    assert op_counts(model) == {"If": 1, "Mul": 1, "Neg": 1}
    then_branch = model.graph.node(0).attributes["then_branch"].as_graph()
    assert list(then_branch.initializers) == ["w"]
    assert not LiftConstantsPass()(model).modified


def test_constant_nodes_in_other_domains_are_left_alone(checker, op_counts):
    model = ir.from_onnx_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
        g (float[16] x) => (float[16] y)
        {{
            w = com.example.Constant<value = float[16] {{{_SIXTEEN}}}>()
            y = Mul(x, w)
        }}
        """
    )

    assert not LiftConstantsPass()(model).modified

    assert op_counts(model) == {"Constant": 1, "Mul": 1}
    assert model.graph.node(0).domain == "com.example"
    assert len(model.graph.initializers) == 0
    checker(model)  # ORT has no kernel for com.example::Constant, so no numbers here
