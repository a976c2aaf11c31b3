"""fold-affine: per-channel Mul/Add after Conv, Gemm and MatMul folded into their weights."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgeopt.passes import FoldAffinePass, InferShapesPass


def _values(*shape: int, seed: int = 0) -> str:
    values = np.random.default_rng(seed).standard_normal(int(np.prod(shape))).astype(np.float32)
    return ", ".join(f"{v:.4f}" for v in values)


def test_layer_scale_and_bias_fold_into_conv_and_matmul(apply_pass, op_counts):
    model = ir.from_onnx_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 2, 5, 5] x) => (float[1, 25, 4] y)
        <float[4, 2, 3, 3] w = {{{_values(4, 2, 3, 3)}}}, float[4] b = {{{_values(4, seed=1)}}},
         float[4, 1, 1] gamma = {{{_values(4, seed=2)}}}, float[1, 4, 1, 1] beta = {{{_values(4, seed=3)}}},
         int64[3] flat = {{1, 4, 25}}, float[4, 4] fc = {{{_values(4, 4, seed=4)}}},
         float[4] scale = {{{_values(4, seed=5)}}}>
        {{
            c = Conv<kernel_shape = [3, 3], pads = [1, 1, 1, 1]>(x, w, b)
            m = Mul(c, gamma)
            a = Add(beta, m)
            r = Reshape(a, flat)
            t = Transpose<perm = [0, 2, 1]>(r)
            h = MatMul(t, fc)
            y = Mul(h, scale)
        }}
        """
    )
    InferShapesPass()(model)

    assert apply_pass(FoldAffinePass(), model).modified

    assert op_counts(model) == {"Conv": 1, "Reshape": 1, "Transpose": 1, "MatMul": 1}


def test_a_constant_that_varies_along_another_axis_stays(apply_pass, op_counts):
    model = ir.from_onnx_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 2, 5, 5] x) => (float[1, 4, 5, 5] y)
        <float[4, 2, 1, 1] w = {{{_values(4, 2, 1, 1)}}}, float[5] across = {{{_values(5, seed=1)}}}>
        {{
            c = Conv<kernel_shape = [1, 1]>(x, w)
            y = Mul(c, across)
        }}
        """
    )
    InferShapesPass()(model)

    assert not apply_pass(FoldAffinePass(), model).modified
    assert op_counts(model) == {"Conv": 1, "Mul": 1}
