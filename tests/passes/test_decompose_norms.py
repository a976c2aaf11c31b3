"""Tests for decompose-norms: ReduceL2 / ReduceSumSquare / ReduceL1 as ReduceSum and elementwise ops."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from edgeopt.core.errors import UnsupportedOpsetError
from edgeopt.core.runtime import run_model
from edgeopt.passes import PASSES, DecomposeNormsPass
from edgeopt.pipeline.runner import Pipeline


def _model(text: str) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def _ops(model: ir.Model) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph))


# The L2-normalized sentence embedding of sentence-transformers models, as torch.onnx (dynamo) writes it.
NORMALIZE_18 = """
<ir_version: 10, opset_import: ["" : 18]>
normalize (float[N, 24] x) => (float[N, 24] y, float[N, 1] norm)
{
    axes = Constant<value = int64[1] {1}>()
    norm = ReduceL2<keepdims = 1>(x, axes)
    eps = Constant<value = float {1e-12}>()
    safe = Clip(norm, eps)
    y = Div(x, safe)
}
"""


def test_l2_normalize_matches_onnxruntime_and_keeps_output_names() -> None:
    model = _model(NORMALIZE_18)
    reference = model.clone()
    x = np.random.default_rng(0).standard_normal((5, 24)).astype(np.float32) * 3

    result = DecomposeNormsPass()(model)

    assert result.modified
    ops = _ops(model)
    assert ops["ReduceL2"] == 0 and ops["ReduceSum"] == ops["Sqrt"] == ops["Mul"] == 1
    assert [v.name for v in model.graph.outputs] == ["y", "norm"]
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    expected, got = run_model(reference, {"x": x}), run_model(model, {"x": x})
    for name in ("y", "norm"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["norm"][:, 0], np.linalg.norm(x, axis=1), rtol=1e-6)


# opset 13: the norms take axes as an attribute, ReduceSum as an input; keepdims=0, several axes.
REDUCTIONS_13 = """
<ir_version: 8, opset_import: ["" : 13]>
reductions (float[2, 3, 4] x) => (float[2] l2, float[2, 1, 1] sumsq, float[3] l1, float l2all)
{
    l2 = ReduceL2<axes = [1, 2], keepdims = 0>(x)
    sumsq = ReduceSumSquare<axes = [-1, 1]>(x)
    l1 = ReduceL1<axes = [0, 2], keepdims = 0>(x)
    l2all = ReduceL2<keepdims = 0>(x)
}
"""

# opset 11: ReduceSum takes axes as an attribute too.
REDUCTIONS_11 = REDUCTIONS_13.replace('"" : 13', '"" : 11').replace("ir_version: 8", "ir_version: 6")


@pytest.mark.parametrize("text", [REDUCTIONS_13, REDUCTIONS_11], ids=["opset13", "opset11"])
def test_every_norm_reduction_matches_onnxruntime(text: str) -> None:
    model = _model(text)
    reference = model.clone()
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)

    DecomposeNormsPass()(model)

    ops = _ops(model)
    assert not {"ReduceL2", "ReduceSumSquare", "ReduceL1"} & set(ops)
    assert (ops["ReduceSum"], ops["Sqrt"], ops["Abs"], ops["Mul"]) == (4, 2, 1, 3)
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    expected, got = run_model(reference, {"x": x}), run_model(model, {"x": x})
    assert list(got) == list(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


def test_nothing_to_do_is_not_a_change_and_old_opsets_are_refused() -> None:
    relu = _model('<ir_version: 8, opset_import: ["" : 13]> g (float[2] x) => (float[2] y) { y = Relu(x) }')
    assert not DecomposeNormsPass()(relu).modified
    old = _model('<ir_version: 4, opset_import: ["" : 9]> g (float[2, 3] x) => (float[2] y) '
                 '{ y = ReduceL2<axes = [1], keepdims = 0>(x) }')
    with pytest.raises(UnsupportedOpsetError, match="opset 9 is below 11.*decompose-norms"):
        Pipeline(["decompose-norms"]).run(old)
    assert PASSES["decompose-norms"] is DecomposeNormsPass
