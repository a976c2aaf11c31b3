"""Tests for infer-shapes: fills in what is missing, overwrites nothing known."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgeopt.core.shapes import _ConstantFloatChains
from edgeopt.passes import InferShapesPass


def _randn(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _values(model: ir.Model) -> dict[str, ir.Value]:
    return ir.convenience.create_value_mapping(model.graph)


def test_missing_value_info_is_filled_in(apply_pass):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 3] x) => (float[N, 3] y)
        {
            t = Relu(x)
            u = Transpose(t)
            y = Transpose(u)
        }
        """
    )
    assert _values(model)["u"].type is None

    result = apply_pass(InferShapesPass(), model)

    assert result.modified
    values = _values(model)
    assert values["t"].type == ir.TensorType(ir.DataType.FLOAT)
    assert values["t"].shape == ir.Shape(["N", 3])
    assert values["u"].shape == ir.Shape([3, "N"])
    assert len(model.graph) == 3
    assert not InferShapesPass()(model).modified


def test_graph_inputs_are_never_changed(apply_pass):
    """Inference proves ``x`` is [2, 3] (it is added to a [2, 3] tensor); the input stays."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, M] x, float[2, 3] w) => (float[2, 3] y)
        {
            y = Add(x, w)
        }
        """
    )
    x, w = model.graph.inputs

    apply_pass(InferShapesPass(), model)

    assert x.shape == ir.Shape(["N", "M"])
    assert w.shape == ir.Shape([2, 3])
    assert [v.name for v in model.graph.inputs] == ["x", "w"]


def test_declared_concrete_dim_is_not_overwritten(apply_pass):
    """``t`` is declared [2, 3]; inference alone only knows [N, 3] and must not replace the 2."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 3] x) => (float[N, 3] y)
        <float[2, 3] t, float[N, K] u>
        {
            t = Relu(x)
            u = Neg(t)
            y = Neg(x)
        }
        """
    )

    result = apply_pass(InferShapesPass(), model, {"x": _randn((2, 3))})

    assert result.modified
    values = _values(model)
    assert values["t"].shape == ir.Shape([2, 3])
    assert values["u"].shape == ir.Shape([2, 3])  # N and K, proven from t's declaration
    assert not InferShapesPass()(model).modified


def test_symbolic_dim_is_made_concrete_when_proven(apply_pass):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[A, B] y)
        {
            y = Relu(x)
        }
        """
    )

    result = apply_pass(InferShapesPass(), model)

    assert result.modified
    assert model.graph.outputs[0].shape == ir.Shape([2, 3])
    assert model.graph.outputs[0].name == "y"


def test_model_rejected_by_strict_inference_is_unchanged(checker):
    """[2, 3] + [4] cannot broadcast: strict inference fails, and the pass changes nothing.

    The checker is not run on the output: it rejects this model for the same reason.
    """
    text = """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x, float[4] w) => (float[2, 3] y)
        {
            t = Add(x, w)
            y = Relu(t)
        }
        """
    model = ir.from_onnx_text(text)
    before = ir.serde.serialize_model(model)
    with pytest.raises(Exception, match="Incompatible dimensions"):
        checker(model)

    result = InferShapesPass()(model)

    assert not result.modified
    assert _values(model)["t"].type is None
    assert ir.serde.serialize_model(model) == before


def test_declared_type_that_inference_contradicts_makes_no_change():
    """A wrong declared shape is a rejection under strict inference: nothing is merged."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y)
        <float[2, 5] t>
        {
            t = Relu(x)
            u = Neg(t)
            y = Relu(x)
        }
        """
    )

    assert not InferShapesPass()(model).modified

    values = _values(model)
    assert values["t"].shape == ir.Shape([2, 5])
    assert values["u"].type is None


def test_subgraph_values_are_inferred(apply_pass):
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x, bool c) => (float[2, 3] y)
        {
            y = If(c) <
                then_branch = then_g () => (float[2, 3] o1) { a = Neg(x)  o1 = Relu(a) },
                else_branch = else_g () => (float[2, 3] o2) { o2 = Neg(x) }
            >
        }
        """
    )
    feeds = [{"x": _randn((2, 3)), "c": np.array(flag)} for flag in (True, False)]

    result = apply_pass(InferShapesPass(), model, feeds)

    assert result.modified
    then_branch = model.graph.node(0).attributes["then_branch"].as_graph()
    a = then_branch.node(0).outputs[0]
    assert a.type == ir.TensorType(ir.DataType.FLOAT)
    assert a.shape == ir.Shape([2, 3])
    assert not InferShapesPass()(model).modified


def test_nodes_in_other_domains_are_left_alone(checker):
    """Inference knows nothing about ``com.example::Custom``: its output stays untyped."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
        g (float[2, 3] x) => (float[2, 3] y)
        {
            t = Relu(x)
            c = com.example.Custom<alpha: float = 2.0>(t)
            y = Neg(x)
        }
        """
    )

    assert InferShapesPass()(model).modified

    values = _values(model)
    assert values["t"].shape == ir.Shape([2, 3])
    assert values["c"].type is None
    custom = values["c"].producer()
    assert custom is not None and custom.attributes.get_float("alpha") == 2.0
    checker(model)  # ORT has no kernel for com.example::Custom, so no numbers here
    assert not InferShapesPass()(model).modified



def test_ir3_initializer_listed_as_input_keeps_its_declared_shape(apply_pass):
    """``w`` is declared [K]; its default value has 3 elements, but a caller may feed others."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["t"]), helper.make_node("Relu", ["t"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, ["K"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [3], [1.0, -2.0, 0.5])],
    )
    model = ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    )

    assert apply_pass(InferShapesPass(), model).modified

    w = model.graph.inputs[1]
    assert w.name == "w" and w.is_initializer()
    assert w.shape == ir.Shape(["K"])
    assert _values(model)["t"].type == ir.TensorType(ir.DataType.FLOAT)
    assert not InferShapesPass()(model).modified


def test_constant_float_chains_are_typed_and_shapes_still_propagate(apply_pass):
    """A codebook-like chain (constants only: Cast, Div, Floor, Gather) feeds a MatMul whose
    result is reshaped to a shape computed from shapes. The chain is left out of data
    propagation (it only costs there) yet every value gets what one data-propagating
    inference proves, and ONNX Runtime produces exactly the inferred shapes."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[B, 8] x) => (float[B, 8] z)
        <uint8[64] packed = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                              0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                              0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                              0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
         float four = {4.0}, float[4] codebook = {-1.0, -0.5, 0.5, 1.0}, int64[2] wshape = {8, 8},
         int64[1] minus_one = {-1}, int64[1] zero = {0}, int64[1] one = {1}>
        {
            f = Cast<to = 1>(packed)
            h = Div(f, four)
            q = Floor(h)
            i = Cast<to = 7>(q)
            r = Reshape(i, wshape)
            w = Gather(codebook, r)
            m = MatMul(x, w)
            s = Shape(m)
            b = Slice(s, zero, one)
            n = Concat<axis = 0>(b, minus_one)
            y = Reshape(m, n)
            z = Relu(y)
        }
        """
    )
    onnx_inferred = onnx.shape_inference.infer_shapes(ir.to_proto(model), strict_mode=True, data_prop=True)
    plain = ir.from_proto(onnx.shape_inference.infer_shapes(ir.to_proto(model), strict_mode=True))
    chains = _ConstantFloatChains.of(model.graph, plain.graph)
    assert chains.values == {"f", "h", "q", "i", "r", "w"}  # left out of data propagation
    assert [info.name for info in chains.results] == ["w"]

    apply_pass(InferShapesPass(), model)

    values = _values(model)
    expected = {info.name: info for info in onnx_inferred.graph.value_info}
    for name in ("f", "h", "q", "i", "r", "w", "m", "s", "b", "n"):
        assert ir.serde.serialize_value(values[name]).type == expected[name].type, name
    assert values["w"].shape == ir.Shape([8, 8])
    y = values["y"].shape
    assert y is not None and len(y) == 2 and y[0] == ir.SymbolicDim("B")  # only data propagation proves B
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": _randn((3, 8))})
    assert out.shape == (3, 8)
