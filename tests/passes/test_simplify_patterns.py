"""simplify-patterns and the clean-up of exporter arithmetic, checked through ONNX Runtime."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import pytest
import torch
import torch.nn.functional as F

from edgeopt.core.runtime import random_feeds, run_model
from edgeopt.passes import InferShapesPass, SimplifyPatternsPass
from edgeopt.pipeline import cleanup


def _weights(*shape: int) -> str:
    values = np.random.default_rng(0).standard_normal(int(np.prod(shape))).astype(np.float32)
    return ", ".join(f"{v:.4f}" for v in values)


def test_pad_folds_into_conv_and_matmul_add_becomes_gemm(apply_pass, op_counts):
    model = ir.from_onnx_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 2, 6, 6] x) => (float[1, 3] y)
        <float[4, 2, 3, 3] w = {{{_weights(4, 2, 3, 3)}}}, int64[8] pads = {{0, 0, 1, 1, 0, 0, 1, 1}},
         int64[2] flat = {{1, 144}}, float[144, 3] fc = {{{_weights(144, 3)}}}, float[3] b = {{1, 2, 3}}>
        {{
            p = Pad(x, pads)
            c = Conv<kernel_shape = [3, 3]>(p, w)
            f = Reshape(c, flat)
            m = MatMul(f, fc)
            y = Add(m, b)
        }}
        """
    )

    InferShapesPass()(model)  # the rules read shapes; the clean-up preset infers them first
    assert apply_pass(SimplifyPatternsPass(), model).modified

    assert op_counts(model) == {"Conv": 1, "Reshape": 1, "Gemm": 1}
    conv = next(n for n in model.graph if n.op_type == "Conv")
    assert list(conv.attributes["pads"].as_ints()) == [1, 1, 1, 1]


def test_matmul_add_stays_when_the_addend_would_broadcast_the_result(apply_pass, op_counts):
    """Gemm broadcasts C to (M, N) only; an Add that grows the result must stay."""
    model = ir.from_onnx_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 4] x) => (float[3, 2] y)
        <float[4, 2] w = {{{_weights(4, 2)}}}, float[3, 2] c = {{{_weights(3, 2)}}}>
        {{
            m = MatMul(x, w)
            y = Add(m, c)
        }}
        """
    )

    assert not apply_pass(SimplifyPatternsPass(), model).modified
    assert op_counts(model) == {"MatMul": 1, "Add": 1}


def test_transpose_pairs_and_reshape_chains_collapse(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3, 4] x) => (float[4, 6] y)
        <int64[2] s1 = {6, 4}, int64[2] s2 = {4, 6}>
        {
            t1 = Transpose<perm = [1, 0, 2]>(x)
            t2 = Transpose<perm = [1, 0, 2]>(t1)
            r1 = Reshape(t2, s1)
            y = Reshape(r1, s2)
        }
        """
    )

    assert apply_pass(SimplifyPatternsPass(), model).modified
    assert op_counts(model) == {"Reshape": 1}


class _SamePaddingConv(torch.nn.Conv2d):
    """TensorFlow's "same" padding computed from the input's shape, as timm's Conv2dSame does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.size()[-2:]
        kh, kw = self.weight.size()[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _WindowMaskNet(torch.nn.Module):
    """Same-padded convolutions and an attention mask built from shapes, as Swin builds it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _SamePaddingConv(3, 8, 3, 2)
        self.conv2 = _SamePaddingConv(8, 8, 3, 2, groups=8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.conv2(F.relu6(self.conv1(x))))
        _, _, h, w = x.shape
        mask = torch.zeros((1, h, w))
        count = 0
        for rows in (slice(0, -2), slice(-2, None)):
            for cols in (slice(0, -2), slice(-2, None)):
                mask[:, rows, cols] = count
                count += 1
        flat = mask.reshape(1, -1)
        bias = flat.unsqueeze(1) - flat.unsqueeze(2)
        bias = bias.masked_fill(bias != 0, -100.0).masked_fill(bias == 0, 0.0)
        tokens = x.flatten(2).transpose(1, 2)
        attended = torch.softmax(tokens @ tokens.transpose(1, 2) + bias, -1) @ tokens
        return self.fc(attended.mean(1))


@pytest.fixture(scope="module")
def torchscript_export(tmp_path_factory: pytest.TempPathFactory) -> ir.Model:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("export") / "window.onnx"
    torch.onnx.export(_WindowMaskNet().eval(), (torch.randn(1, 3, 32, 32),), str(path),
                      dynamo=False, opset_version=17)
    return ir.load(path)


def test_cleanup_folds_same_padding_and_mask_arithmetic_of_a_torchscript_export(
    torchscript_export, op_counts, checker
):
    model = torchscript_export
    feeds = random_feeds(model)
    expected = run_model(model, feeds)
    before = op_counts(model)
    assert before["Shape"] > 10 and before["ScatterND"] > 0 and before["Pad"] == 2  # the mess

    cleanup()(model)

    counts = op_counts(model)
    # what is left is the network itself: no shape arithmetic, no Pad, no Constant node
    assert counts == {"Conv": 2, "Clip": 2, "Reshape": 1, "Transpose": 1, "MatMul": 2,
                      "Add": 1, "Softmax": 1, "ReduceMean": 1, "Gemm": 1}
    checker(model)
    got = run_model(model, feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5)


def test_reshape_of_a_squeeze_reads_the_squeeze_input(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 6, 4] x) => (float[2, 3, 4] y, float[6, 4] z)
        <int64[1] axis = {0}, int64[3] to = {2, 3, 4}, int64[2] keep = {0, 4}>
        {
            s = Squeeze(x, axis)
            y = Reshape(s, to)
            s2 = Squeeze(x, axis)
            z = Reshape(s2, keep)
        }
        """
    )

    assert apply_pass(SimplifyPatternsPass(), model).modified

    # the first Squeeze goes; the second stays: its Reshape copies a dimension (0) of its input
    assert op_counts(model) == {"Reshape": 2, "Squeeze": 1}


def test_a_linear_between_reshapes_becomes_one_gemm(apply_pass, op_counts):
    """Window attention's projection: Reshape -> MatMul -> Add(bias first, as TorchScript writes it) -> Reshape."""
    model = ir.from_onnx_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3, 4] x) => (float[6, 5] y)
        <int64[3] s1 = {{1, 6, 4}}, float[4, 5] w = {{{_weights(4, 5)}}}, float[5] b = {{1, 2, 3, 4, 5}},
         int64[2] s2 = {{6, 5}}>
        {{
            r = Reshape(x, s1)
            m = MatMul(r, w)
            a = Add(b, m)
            y = Reshape(a, s2)
        }}
        """
    )
    InferShapesPass()(model)

    assert apply_pass(SimplifyPatternsPass(), model).modified

    assert op_counts(model) == {"Reshape": 2, "Gemm": 1}


def test_a_transpose_that_moves_only_unit_axes_merges_into_the_reshape_after_it(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 1, 1, 8] x) => (float[1, 8] y, float[1, 8, 1, 1] z, float[8, 1, 1, 1] w)
        <int64[2] flat = {1, 8}>
        {
            t = Transpose<perm = [0, 3, 1, 2]>(x)
            y = Reshape(t, flat)
            z = Transpose<perm = [0, 3, 1, 2]>(x)
            w = Transpose<perm = [3, 0, 1, 2]>(x)
        }
        """
    )

    assert apply_pass(SimplifyPatternsPass(), model).modified

    assert op_counts(model) == {"Reshape": 3}  # y's Transpose merged; z and w are reshapes now
    assert len(model.graph.initializers) == 3  # flat and two new shapes, none overwritten


def test_strided_slices_on_two_axes_become_one(apply_pass, op_counts):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 6, 6, 2] x) => (float[1, 3, 3, 2] y, float[1, 2, 6, 2] z)
        <int64[1] zero = {0}, int64[1] big = {9223372036854775807}, int64[1] one = {1}, int64[1] two = {2},
         int64[1] minus = {-3}>
        {
            r = Slice(x, zero, big, one, two)
            y = Slice(r, zero, big, two, two)
            q = Slice(x, zero, big, one, two)
            z = Slice(q, zero, big, minus, two)
        }
        """
    )
    InferShapesPass()(model)

    assert apply_pass(SimplifyPatternsPass(), model).modified

    # y's pair is merged; z's second Slice is on axis -3 (= 1) again, the same axis: a pair stays
    assert op_counts(model) == {"Slice": 3}


def test_a_residual_add_after_a_matmul_stays(apply_pass, op_counts):
    """Gemm could take the residual as C, but block finders and pruning read the residual Add."""
    model = ir.from_onnx_text(
        f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 4] x) => (float[2, 4] y)
        <float[4, 4] w = {{{_weights(4, 4)}}}>
        {{
            h = Relu(x)
            m = MatMul(h, w)
            y = Add(x, m)
        }}
        """
    )
    InferShapesPass()(model)

    assert not apply_pass(SimplifyPatternsPass(), model).modified
    assert op_counts(model) == {"Relu": 1, "MatMul": 1, "Add": 1}
