"""eliminate-neutral: x+0, x*1, zero Pad go; a neutral constant that broadcasts stays."""

from __future__ import annotations

import onnx_ir as ir

from edgeopt.passes import EliminateNeutralPass, InferShapesPass


def test_zero_bias_unit_scale_and_zero_pad_go(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3, 4, 4] x) => (float[2, 3, 4, 4] y)
        <float[3, 1, 1] zeros = {0, 0, 0}, float[1] one = {1}, int64[8] pads = {0, 0, 0, 0, 0, 0, 0, 0}>
        {
            r = Relu(x)
            a = Add(r, zeros)
            m = Mul(one, a)
            p = Pad(m, pads)
            s = Sub(p, zeros)
            y = Div(s, one)
        }
        """
    )
    InferShapesPass()(model)

    assert apply_pass(EliminateNeutralPass(), model).modified

    assert op_counts(model) == {"Relu": 1}
    assert [v.name for v in model.graph.outputs] == ["y"]


def test_neutral_constants_that_would_broadcast_or_sit_on_the_left_of_sub_stay(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[3] x) => (float[2, 3] y, float[3] z)
        <float[2, 3] zeros = {0, 0, 0, 0, 0, 0}, float[1] zero = {0}, float[3] half = {1, 1, 0.5}>
        {
            y = Add(x, zeros)
            n = Sub(zero, x)
            z = Mul(n, half)
        }
        """
    )
    InferShapesPass()(model)

    assert not apply_pass(EliminateNeutralPass(), model).modified
    assert op_counts(model) == {"Add": 1, "Sub": 1, "Mul": 1}


def test_a_reshape_to_the_same_static_shape_goes(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 8, 2, 2] x) => (float[1, 8, 2, 2] y, float[1, 8, 4] z)
        <int64[4] same = {1, 8, 2, 2}, int64[3] flat = {1, 8, 4}>
        {
            r = Relu(x)
            s = Reshape(r, same)
            y = Sigmoid(s)
            z = Reshape(r, flat)
        }
        """
    )
    InferShapesPass()(model)

    assert apply_pass(EliminateNeutralPass(), model).modified

    assert op_counts(model) == {"Relu": 1, "Sigmoid": 1, "Reshape": 1}
