"""Learned rounding: int8 codes fitted on a layer's inputs beat rounding to nearest at the layer's output."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.calibration.rounding import input_hessians, learned_codes, round_layer, weight_layers
from edgeopt.core.runtime import run_model


def _correlated_inputs(rows: int, features: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((features, features)) / np.sqrt(features)
    return rng.standard_normal((rows, features)) @ (np.eye(features) + 2 * mixing) + 0.5


def test_codes_lower_the_output_error_and_stay_in_range() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((16, 32))
    scale = np.abs(weight).max(1) / 127
    x = _correlated_inputs(4096, 32, seed=1)
    hessian = x.T @ x / len(x)
    learned = learned_codes(weight, scale, hessian)
    nearest = np.clip(np.round(weight / scale[:, None]), -127, 127)

    def output_error(codes: np.ndarray) -> float:
        return float((((weight - codes * scale[:, None]) @ x.T) ** 2).mean())

    assert learned.min() >= -127 and learned.max() <= 127 and np.array_equal(learned, np.round(learned))
    assert output_error(learned) < 0.75 * output_error(nearest)  # measured: 0.60x
    assert np.abs(learned - nearest).max() <= 2  # it re-rounds; it does not re-quantize


def test_uncorrelated_inputs_round_to_nearest() -> None:
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((8, 12))
    scale = np.abs(weight).max(1) / 127
    np.testing.assert_array_equal(learned_codes(weight, scale, np.eye(12)), np.round(weight / scale[:, None]))


def _conv_model(group: int) -> ir.Model:
    rng = np.random.default_rng(3)
    channels = 8
    weight = rng.standard_normal((channels, channels // group, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1], group=group, strides=[2, 2])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, 6, 6])], [nh.from_array(weight, "W")])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("group", [1, 2, 8], ids=["dense", "grouped", "depthwise"])
def test_conv_layout_through_onnx_runtime(group: int) -> None:
    """Streamed H on im2col patches of real activations; the codes, put back as weights, cut the
    output error measured by ONNX Runtime on held-out inputs."""
    model = _conv_model(group)
    spatially_smooth = [{"x": np.cumsum(_correlated_inputs(2 * 8 * 12 * 12, 1, seed=s).reshape(2, 8, 12, 12), 3)
                         .astype(np.float32)} for s in range(6)]
    (layer,) = weight_layers(model)
    hessians = input_hessians(model, [layer], spatially_smooth[:4])
    assert hessians["conv"].shape == (group, 8 // group * 9, 8 // group * 9)
    scale = np.abs(layer.weight).reshape(8, -1).max(1) / 127
    errors = {}
    for name, codes in (("nearest", np.round(layer.weight / scale[:, None, None, None])),
                        ("learned", round_layer(layer, scale, hessians["conv"]))):
        quantized = _conv_model(group)
        next(iter(quantized.graph)).inputs[1].const_value = ir.tensor(  # type: ignore[union-attr]
            (codes * scale[:, None, None, None]).astype(np.float32))
        errors[name] = np.mean([((run_model(quantized, f)["y"] - run_model(model, f)["y"]) ** 2).mean()
                                for f in spatially_smooth[4:]])
    assert errors["learned"] < 0.8 * errors["nearest"], errors


@pytest.mark.parametrize(("stride", "pad", "dilation"), [(1, 1, 1), (2, 1, 1), (1, 2, 2)])
def test_patches_at_chosen_positions_are_those_of_the_full_im2col(stride: int, pad: int, dilation: int) -> None:
    """Learned rounding samples output positions of large feature maps; only those patches are copied."""
    from edgeopt.core.patches import im2col, patches_at

    x = np.random.default_rng(0).standard_normal((3, 4, 11, 9)).astype(np.float32)
    args = ((3, 3), (stride, stride), (pad,) * 4, (dilation, dilation))
    full = im2col(x, *args)
    n, c, kh, kw, ho, wo = full.shape
    every = full.transpose(0, 4, 5, 1, 2, 3).reshape(n * ho * wo, c, kh, kw)
    chosen = np.random.default_rng(1).choice(n * ho * wo, 17, replace=False)
    np.testing.assert_array_equal(patches_at(x, *args, chosen), every[chosen])
    np.testing.assert_array_equal(patches_at(x, *args), every)
    # and a patch is what the convolution reads: one output of a Conv in ONNX Runtime equals its dot product
    w = np.random.default_rng(2).standard_normal((1, c, kh, kw)).astype(np.float32)
    model = ir.from_onnx_text(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3, 4, 11, 9] x, float[1, 4, 3, 3] w) => (float y) {{
            y = Conv<strides = [{stride}, {stride}], pads = [{pad}, {pad}, {pad}, {pad}],
                     dilations = [{dilation}, {dilation}]>(x, w)
        }}""")
    y = run_model(model, {"x": x, "w": w})["y"].reshape(-1)  # N, 1, Ho, Wo flattened: position order
    np.testing.assert_allclose(y[chosen], (patches_at(x, *args, chosen) * w[0]).sum((1, 2, 3)), rtol=1e-4, atol=1e-5)
