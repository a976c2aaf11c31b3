"""Tests for fold-batchnorm: BatchNormalization folded into Conv, ConvTranspose and Gemm.

Folding precomputes ``W * s`` and ``s * (b - mean) + beta`` in float64 and rounds them
to float32 once, so outputs round differently from ORT's Conv-then-BatchNorm. With these
small layers the difference stays within the usual rtol=1e-5, atol=1e-6 (worst case
about a quarter of it), so no looser tolerance is needed.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.core.errors import UnsupportedOpsetError
from edgeopt.core.runtime import run_model
from edgeopt.passes import FoldBatchNormPass
from edgeopt.pipeline.runner import Pipeline


def _vi(
    name: str, shape: tuple[int, ...], dtype: int = TensorProto.FLOAT
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return nh.from_array(np.asarray(array, dtype=np.float32), name)


def _bn_params(channels: int, prefix: str = "bn", seed: int = 1) -> list[onnx.TensorProto]:
    rng = np.random.default_rng(seed)
    return [
        _const(f"{prefix}_scale", rng.uniform(0.5, 1.5, channels)),
        _const(f"{prefix}_bias", rng.standard_normal(channels)),
        _const(f"{prefix}_mean", rng.standard_normal(channels)),
        _const(f"{prefix}_var", rng.uniform(0.5, 1.5, channels)),
    ]


def _bn(x: str, y: str, prefix: str = "bn", **attrs: object) -> onnx.NodeProto:
    names = [x] + [f"{prefix}_{p}" for p in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", names, [y], epsilon=1e-3, **attrs)


def _model(
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    inputs: list[tuple[str, tuple[int, ...]] | onnx.ValueInfoProto],
    outputs: list[tuple[str, tuple[int, ...]]],
    *,
    opset: int = 17,
    ir_version: int = 8,
) -> ir.Model:
    graph = helper.make_graph(
        nodes, "g", [i if isinstance(i, onnx.ValueInfoProto) else _vi(*i) for i in inputs],
        [_vi(n, s) for n, s in outputs], initializers,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version
    )
    return ir.serde.deserialize_model(proto)


def _randn(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _conv_bn(*extra: onnx.NodeProto, outputs=(("y", (1, 4, 3, 3)),), **model_args) -> ir.Model:
    """x -> Conv(W) -> t -> BatchNormalization -> y, plus ``extra`` nodes."""
    inputs = model_args.pop("inputs", [("x", (1, 3, 5, 5))])
    params = model_args.pop("params", _bn_params(4))
    bn = model_args.pop("bn", _bn("t", "y"))
    return _model(
        [helper.make_node("Conv", ["x", "W"], ["t"]), bn, *extra],
        [_const("W", _randn(4, 3, 3, 3))] + params, inputs, list(outputs), **model_args,
    )


_TRAINING_BN = helper.make_node(
    "BatchNormalization", ["t", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
    ["y", "running_mean", "running_var"], training_mode=1,
)


def _conv_bn_model(*, bias: bool = True) -> ir.Model:
    inits = [_const("W", _randn(4, 3, 3, 3))] + _bn_params(4)
    inputs = ["x", "W"]
    if bias:
        inits.append(_const("B", _randn(4) + 1))
        inputs.append("B")
    return _model(
        [helper.make_node("Conv", inputs, ["t"], name="conv", pads=[1, 1, 1, 1]), _bn("t", "y")],
        inits, [("x", (1, 3, 5, 5))], [("y", (1, 4, 5, 5))],
    )


@pytest.mark.parametrize("bias", [True, False], ids=["with_bias", "without_bias"])
def test_conv_bn_is_folded(apply_pass, op_counts, bias):
    model = _conv_bn_model(bias=bias)
    initializers_before = len(model.graph.initializers)
    old_weight = model.graph.initializers["W"]

    result = apply_pass(FoldBatchNormPass(), model)

    assert result.modified
    assert op_counts(model) == {"Conv": 1}
    conv = model.graph.node(0)
    assert len(conv.inputs) == 3 and conv.inputs[2] is not None
    assert conv.inputs[1] is not old_weight and conv.inputs[1].is_initializer()
    assert conv.inputs[2].const_value.shape == ir.Shape([4])
    # New weight and bias; the old ones are left for remove-unused.
    assert len(model.graph.initializers) == initializers_before + 2
    assert not old_weight.uses()
    assert model.graph.outputs[0] is conv.outputs[0] and conv.outputs[0].name == "y"
    assert not FoldBatchNormPass()(model).modified


def test_bn_that_does_not_produce_a_graph_output_is_folded(apply_pass, op_counts):
    model = _model(
        [helper.make_node("Conv", ["x", "W"], ["t"]), _bn("t", "b"),
         helper.make_node("Relu", ["b"], ["y"])],
        [_const("W", _randn(4, 3, 1, 1))] + _bn_params(4),
        [("x", (1, 3, 4, 4))], [("y", (1, 4, 4, 4))],
    )

    assert apply_pass(FoldBatchNormPass(), model).modified

    assert op_counts(model) == {"Conv": 1, "Relu": 1}
    conv, relu = model.graph
    assert relu.inputs[0] is conv.outputs[0]


def test_conv_weight_from_a_constant_node_is_folded(apply_pass, op_counts):
    model = _model(
        [helper.make_node("Constant", [], ["W"], value=_const("W", _randn(4, 3, 3, 3))),
         helper.make_node("Conv", ["x", "W"], ["t"]), _bn("t", "y")],
        _bn_params(4), [("x", (1, 3, 5, 5))], [("y", (1, 4, 3, 3))],
    )

    assert apply_pass(FoldBatchNormPass(), model).modified

    assert op_counts(model) == {"Constant": 1, "Conv": 1}  # the Constant is remove-unused's
    conv = model.graph.node(1)
    assert conv.inputs[1].is_initializer() and conv.inputs[2].is_initializer()
    assert not FoldBatchNormPass()(model).modified


@pytest.mark.parametrize(
    ("group", "in_channels"), [(2, 4), (4, 4)], ids=["grouped", "depthwise"]
)
def test_grouped_conv_bn_is_folded(apply_pass, op_counts, group, in_channels):
    model = _model(
        [helper.make_node("Conv", ["x", "W"], ["t"], group=group), _bn("t", "y")],
        [_const("W", _randn(4, in_channels // group, 3, 3))] + _bn_params(4),
        [("x", (1, in_channels, 5, 5))], [("y", (1, 4, 3, 3))],
    )

    assert apply_pass(FoldBatchNormPass(), model).modified

    assert op_counts(model) == {"Conv": 1}
    assert model.graph.node(0).attributes.get_int("group") == group
    assert not FoldBatchNormPass()(model).modified


def test_conv1d_bn_is_folded(apply_pass, op_counts):
    model = _model(
        [helper.make_node("Conv", ["x", "W"], ["t"]), _bn("t", "y")],
        [_const("W", _randn(4, 3, 3))] + _bn_params(4),
        [("x", (2, 3, 7))], [("y", (2, 4, 5))],
    )

    assert apply_pass(FoldBatchNormPass(), model).modified
    assert op_counts(model) == {"Conv": 1}


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_bn_is_folded(apply_pass, op_counts, group):
    # ConvTranspose weights are (C_in, C_out / group, k, k): the output channel is axis 1.
    model = _model(
        [helper.make_node("ConvTranspose", ["x", "W", "B"], ["t"], group=group), _bn("t", "y")],
        [_const("W", _randn(4, 6 // group, 3, 3)), _const("B", _randn(6))] + _bn_params(6),
        [("x", (1, 4, 5, 5))], [("y", (1, 6, 7, 7))],
    )

    assert apply_pass(FoldBatchNormPass(), model).modified

    assert op_counts(model) == {"ConvTranspose": 1}
    assert not FoldBatchNormPass()(model).modified


_GEMM_BIASES = {"no_C": None, "C_M": (4,), "C_1xM": (1, 4), "C_scalar": ()}


@pytest.mark.parametrize("trans_b", [0, 1], ids=["transB0", "transB1"])
@pytest.mark.parametrize("c_shape", list(_GEMM_BIASES.values()), ids=list(_GEMM_BIASES))
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.7, 2.5)], ids=["unit", "scaled"])
def test_gemm_bn_is_folded(apply_pass, op_counts, trans_b, c_shape, alpha, beta):
    weight = _randn(4, 3) if trans_b else _randn(3, 4)
    inits = [_const("W", weight)] + _bn_params(4)
    inputs = ["x", "W"]
    if c_shape is not None:
        inits.append(_const("C", np.full(c_shape, 0.75) + _randn(*c_shape)))
        inputs.append("C")
    gemm = helper.make_node("Gemm", inputs, ["t"], transB=trans_b, alpha=alpha, beta=beta)
    model = _model([gemm, _bn("t", "y")], inits, [("x", (2, 3))], [("y", (2, 4))])

    assert apply_pass(FoldBatchNormPass(), model).modified

    assert op_counts(model) == {"Gemm": 1}
    gemm_node = model.graph.node(0)
    assert gemm_node.attributes.get_int("transB") == trans_b
    assert gemm_node.attributes.get_float("alpha") == pytest.approx(alpha)
    assert gemm_node.attributes.get_float("beta", 1.0) == 1.0  # absorbed into the new C
    assert gemm_node.outputs[0].name == "y"
    assert not FoldBatchNormPass()(model).modified


def test_shared_conv_weight_is_copied_not_changed(apply_pass, op_counts):
    model = _conv_bn(helper.make_node("Conv", ["x", "W"], ["z"]),
                     outputs=[("y", (1, 4, 3, 3)), ("z", (1, 4, 3, 3))])
    shared = model.graph.initializers["W"]
    weight = shared.const_value.numpy().copy()
    x = _randn(1, 3, 5, 5)
    z_before = run_model(model, {"x": x})["z"]

    assert apply_pass(FoldBatchNormPass(), model, {"x": x}).modified

    assert op_counts(model) == {"Conv": 2}
    first, second = model.graph
    assert second.inputs[1] is shared
    assert first.inputs[1] is not shared
    np.testing.assert_array_equal(shared.const_value.numpy(), weight)
    np.testing.assert_array_equal(run_model(model, {"x": x})["z"], z_before)  # bit-exact


_NOT_FOLDED = {
    # The Conv's output feeds a Relu too: folding would change what the Relu sees.
    "second_consumer": lambda: _conv_bn(
        helper.make_node("Relu", ["t"], ["z"]),
        outputs=[("y", (1, 4, 3, 3)), ("z", (1, 4, 3, 3))],
    ),
    "conv_output_is_a_graph_output": lambda: _conv_bn(
        outputs=[("y", (1, 4, 3, 3)), ("t", (1, 4, 3, 3))]
    ),
    "training_mode": lambda: _conv_bn(
        bn=_TRAINING_BN, inputs=[("x", (2, 3, 5, 5))], outputs=[("y", (2, 4, 3, 3))]
    ),
    "parameter_from_a_graph_input": lambda: _conv_bn(
        inputs=[("x", (1, 3, 5, 5)), ("bn_var", (4,))], params=_bn_params(4)[:3]
    ),
    # IR 3: every initializer is a graph input, so a caller may override the weights.
    "ir3_initializers_listed_as_inputs": lambda: _conv_bn(
        inputs=[("x", (1, 3, 5, 5)), ("W", (4, 3, 3, 3))]
        + [(f"bn_{p}", (4,)) for p in ("scale", "bias", "mean", "var")],
        opset=9, ir_version=3,
    ),
    "after_matmul": lambda: _model(
        [helper.make_node("MatMul", ["x", "W"], ["t"]), _bn("t", "y")],
        [_const("W", _randn(3, 4))] + _bn_params(4), [("x", (2, 3))], [("y", (2, 4))],
    ),
    "gemm_with_C_NxM": lambda: _model(
        [helper.make_node("Gemm", ["x", "W", "C"], ["t"]), _bn("t", "y")],
        [_const("W", _randn(3, 4)), _const("C", _randn(2, 4))] + _bn_params(4),
        [("x", (2, 3))], [("y", (2, 4))],
    ),
    "gemm_with_C_Nx1": lambda: _model(
        [helper.make_node("Gemm", ["x", "W", "C"], ["t"]), _bn("t", "y")],
        [_const("W", _randn(3, 4)), _const("C", _randn(2, 1))] + _bn_params(4),
        [("x", (2, 3))], [("y", (2, 4))],
    ),
}


@pytest.mark.parametrize("build", list(_NOT_FOLDED.values()), ids=list(_NOT_FOLDED))
def test_unsafe_or_unsupported_bn_is_not_folded(apply_pass, op_counts, build):
    model = build()
    counts = op_counts(model)
    assert counts["BatchNormalization"] == 1

    assert not apply_pass(FoldBatchNormPass(), model).modified

    assert op_counts(model) == counts


def test_nodes_in_other_domains_are_left_alone(checker, op_counts):
    """A com.example Conv is not ours to rewrite, nor a com.example BatchNormalization."""
    custom_conv = helper.make_node("Conv", ["x", "W"], ["t"], domain="com.example")
    custom_bn = helper.make_node(
        "BatchNormalization", ["u", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["z"],
        domain="com.example",
    )
    graph = helper.make_graph(
        [custom_conv, _bn("t", "y"), helper.make_node("Conv", ["x", "W"], ["u"]), custom_bn],
        "g", [_vi("x", (1, 3, 5, 5))], [_vi("y", (1, 4, 3, 3)), _vi("z", (1, 4, 3, 3))],
        [_const("W", _randn(4, 3, 3, 3))] + _bn_params(4),
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    model = ir.serde.deserialize_model(proto)

    assert not FoldBatchNormPass()(model).modified

    assert op_counts(model) == {"Conv": 2, "BatchNormalization": 2}
    checker(model)  # ORT has no com.example kernels, so no numbers here


def test_bn_in_an_if_branch_is_folded(apply_pass, op_counts):
    then_branch = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["t"]), _bn("t", "o1")],
        "then", [], [_vi("o1", (1, 4, 3, 3))],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["o2"])], "else", [], [_vi("o2", (1, 4, 3, 3))]
    )
    model = _model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        [_const("W", _randn(4, 3, 3, 3))] + _bn_params(4),
        [("x", (1, 3, 5, 5)), _vi("c", (), TensorProto.BOOL)], [("y", (1, 4, 3, 3))],
    )
    x = _randn(1, 3, 5, 5)
    feeds = [{"x": x, "c": np.array(True)}, {"x": x, "c": np.array(False)}]

    assert apply_pass(FoldBatchNormPass(), model, feeds).modified

    assert op_counts(model) == {"If": 1, "Conv": 2}
    then_graph = model.graph.node(0).attributes["then_branch"].as_graph()
    assert [v.name for v in then_graph.outputs] == ["o1"]
    assert len(then_graph.initializers) == 2  # folded weight and bias live in the branch
    assert not FoldBatchNormPass()(model).modified


def test_opset8_bn_is_folded_unless_spatial_is_0(apply_pass, op_counts):
    spatial = _conv_bn(bn=_bn("t", "y", spatial=1), opset=8, ir_version=4)
    assert apply_pass(FoldBatchNormPass(), spatial).modified
    assert op_counts(spatial) == {"Conv": 1}

    # spatial=0: one statistic per (channel, h, w), not per channel: not a per-channel scale.
    rng = np.random.default_rng(2)
    per_pixel = [
        _const(f"bn_{p}", rng.uniform(0.5, 1.5, (4, 3, 3))) for p in ("scale", "bias", "mean", "var")
    ]
    not_spatial = _conv_bn(bn=_bn("t", "y", spatial=0), params=per_pixel, opset=8, ir_version=4)
    assert not apply_pass(FoldBatchNormPass(), not_spatial).modified
    assert op_counts(not_spatial) == {"Conv": 1, "BatchNormalization": 1}


def _opset6_model() -> ir.Model:
    bn = helper.make_node(
        "BatchNormalization", ["t", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["y"],
        is_test=1,
    )
    return _conv_bn(bn=bn, opset=6, ir_version=4)


def test_opset6_is_refused_by_name():
    with pytest.raises(UnsupportedOpsetError, match="opset 6 is below 7.*fold-batchnorm"):
        Pipeline(["fold-batchnorm"]).run(_opset6_model())


def test_opset6_is_skipped_inside_cleanup(op_counts, checker):
    """ORT has no BatchNormalization-6 kernel, so only the structure is checked."""
    model = _opset6_model()

    result = Pipeline(["cleanup"]).run(model)

    step = next(s for s in result.steps if s.name == "fold-batchnorm")
    assert step.skipped is not None and "opset 6 is below 7" in step.skipped
    assert not step.modified
    assert op_counts(result.model) == {"Conv": 1, "BatchNormalization": 1}
    checker(result.model)


def test_new_initializer_names_do_not_clash_with_other_values(apply_pass, op_counts):
    model = _conv_bn(helper.make_node("Relu", ["x"], ["W_bnfold"]))

    assert apply_pass(FoldBatchNormPass(), model).modified
    assert op_counts(model) == {"Relu": 1, "Conv": 1}


def test_ir3_folded_weights_become_constant_nodes(apply_pass, op_counts):
    """IR < 4: every initializer must be a graph input, so new weights can't be ones."""
    params = [helper.make_node("Constant", [], [p.name], value=p) for p in _bn_params(4)]
    model = _model(
        [helper.make_node("Constant", [], ["W"], value=_const("W", _randn(4, 3, 3, 3))),
         *params, helper.make_node("Conv", ["x", "W"], ["t"]), _bn("t", "y")],
        [], [("x", (1, 3, 5, 5))], [("y", (1, 4, 3, 3))], opset=9, ir_version=3,
    )

    assert apply_pass(FoldBatchNormPass(), model).modified

    # Five old Constants are remove-unused's; two new ones hold the folded weight and bias.
    assert op_counts(model) == {"Constant": 7, "Conv": 1}
    assert len(model.graph.initializers) == 0
    conv = model.graph.node(-1)
    assert [v.producer().op_type for v in conv.inputs[1:]] == ["Constant", "Constant"]
    assert not FoldBatchNormPass()(model).modified


_WITHOUT_BN = {
    "opset6": lambda: _model(
        [helper.make_node("Conv", ["x", "W"], ["t"]), helper.make_node("Relu", ["t"], ["y"])],
        [_const("W", _randn(4, 3, 3, 3))], [("x", (1, 3, 5, 5))], [("y", (1, 4, 3, 3))],
        opset=6, ir_version=4,
    ),
    "ml_domain_only": lambda: ir.from_onnx_text(
        '<ir_version: 8, opset_import: ["ai.onnx.ml" : 1]> g (float[2] x) => (float[2] y)'
        "{ y = ai.onnx.ml.Binarizer <threshold = 0.5> (x) }"
    ),
}


@pytest.mark.parametrize("build", list(_WITHOUT_BN.values()), ids=list(_WITHOUT_BN))
def test_opset_range_is_not_enforced_without_batchnorm(apply_pass, op_counts, build):
    """No BatchNormalization, nothing to refuse: run alone, the pass changes nothing."""
    model = build()
    counts = op_counts(model)

    assert not apply_pass(FoldBatchNormPass(), model).modified  # requires() passes

    assert op_counts(model) == counts
    assert not Pipeline(["fold-batchnorm"]).run(model).steps[0].modified
