"""Tests for decompose-erf: Erf as elementwise ops (A&S 7.1.26), checked against onnxruntime's Erf."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from edgeopt.core.errors import UnsupportedOpsetError
from edgeopt.core.runtime import run_model
from edgeopt.passes import PASSES, DecomposeErfPass
from edgeopt.pipeline.runner import Pipeline

# BERT's exact GELU as torch.onnx (dynamo) writes it, plus a bare Erf as a graph output.
GELU = """
<ir_version: 8, opset_import: ["" : 13]>
gelu (float[N, 64] x) => (float[N, 64] y, float[N, 64] e)
{
    root2 = Constant<value = float {1.4142135}>()
    half = Constant<value = float {0.5}>()
    one = Constant<value = float {1.0}>()
    scaled = Div(x, root2)
    e = Erf(scaled)
    shifted = Add(e, one)
    gate = Mul(half, shifted)
    y = Mul(x, gate)
}
"""


def _model(text: str) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def test_gelu_matches_onnxruntime_erf_to_float32_rounding() -> None:
    model = _model(GELU)
    reference = model.clone()
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-8, 8, 64 * 64, dtype=np.float32).reshape(64, 64),
                        rng.standard_normal((64, 64)).astype(np.float32) * 3])

    assert DecomposeErfPass()(model).modified

    ops = collections.Counter(n.op_type for n in model.graph)
    assert ops["Erf"] == 0 and ops["Exp"] == ops["Where"] == ops["Less"] == 1
    assert [v.name for v in model.graph.outputs] == ["y", "e"]
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    expected, got = run_model(reference, {"x": x}), run_model(model, {"x": x})
    np.testing.assert_allclose(got["e"], expected["e"], rtol=0, atol=5e-7)  # A&S 7.1.26: 1.5e-7, plus rounding
    np.testing.assert_allclose(got["y"], expected["y"], rtol=1e-6, atol=5e-7 * 8)
    assert np.array_equal(np.sign(got["e"]), np.sign(expected["e"]))  # odd: the sign comes back exactly


def test_nothing_to_do_is_not_a_change_and_old_opsets_are_refused() -> None:
    relu = _model('<ir_version: 8, opset_import: ["" : 13]> g (float[3] x) => (float[3] y) { y = Relu(x) }')
    assert not DecomposeErfPass()(relu).modified
    old = _model('<ir_version: 3, opset_import: ["" : 8]> g (float[3] x) => (float[3] y) { y = Relu(x) }')
    old.graph.node(0).op_type = "Erf"  # Erf-9 is the first; the model imports opset 8
    with pytest.raises(UnsupportedOpsetError, match="opset 8 is below 9.*decompose-erf"):
        Pipeline(["decompose-erf"]).run(old)
    assert PASSES["decompose-erf"] is DecomposeErfPass
